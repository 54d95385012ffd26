"""Automatic mask generation: segany vs. the official segment-anything, side by side.

Runs ``SamAutomaticMaskGenerator.generate`` of both packages on the same weights and image in one
process, checks that the outputs are the same masks (one-to-one matching at mask IoU >= 0.99),
and prints one JSON object with wall and CPU times and the speed-up. segany runs once before and
once after the official package; its time is the mean of the two. The official package is
only imported when installed (``pip install -e ".[bench]"``); without it only segany is timed.

    PYTHONPATH=$PWD/src python bench/amg.py                       # fixture model, img0, 32x32 points
    PYTHONPATH=$PWD/src python bench/amg.py --random-vit-b --image photo.jpg
    PYTHONPATH=$PWD/src python bench/amg.py --config permissive --points-per-side 16

Weights: ``--checkpoint`` (any official-layout SAM checkpoint; default the test fixture
``ref_small.pth``, a small random-weight ViT whose decoder is the full SAM decoder), or
``--random-vit-b``: a random-init ViT-B whose hypernetwork outputs are scaled x300 and IoU head
x20 (+0.8 bias) like the fixture, so that the filters act on its masks; or ``--default-model``:
segany's shipped trained model (512 px input), the one model here whose masks look like real ones
(random weights give noise-like masks, which take segany's slower scoring path).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import _common

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "fixtures" / "reference_sam"

CONFIGS = {
    # The official defaults (tuned for ViT-H).
    "default": {},
    # Loose filters so that many masks reach NMS and the post-processing is exercised.
    "permissive": {"pred_iou_thresh": 0.5, "stability_score_thresh": 0.0},
    # The filters of the fixture's "nms_off" run: hundreds of masks reach the output.
    "nms_off": {"pred_iou_thresh": 0.5, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0},
    # No IoU filter (for models with a weak IoU head, e.g. the default model), stability and NMS on.
    "no_iou_filter": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.9},
    # Crops and small-region clean-up.
    "crops": {"pred_iou_thresh": 0.5, "stability_score_thresh": 0.0, "crop_n_layers": 1,
              "crop_n_points_downscale_factor": 2, "min_mask_region_area": 100},
}


def load_weights(args: argparse.Namespace) -> tuple[dict[str, torch.Tensor], str]:
    from segany.checkpoints import read_checkpoint
    from segany.modeling import build_sam

    if args.random_vit_b:
        torch.manual_seed(0)
        model = build_sam("vit_b")
        _common.scale_decoder_outputs(model)
        return {k: v.clone() for k, v in model.state_dict().items()}, "random vit_b (seed 0, decoder outputs scaled)"
    if args.default_model:
        from segany import DEFAULT_MODEL

        state, _ = read_checkpoint(DEFAULT_MODEL)
        return state, "segany default model (trained, 512 px input)"
    state, _ = read_checkpoint(args.checkpoint)
    return state, str(args.checkpoint)


def load_image(args: argparse.Namespace) -> tuple[np.ndarray, str]:
    if args.image:
        from segany.io import read_image

        return read_image(args.image), str(args.image)
    arrays = np.load(REFERENCE / "predictor_arrays.npz")
    return arrays["img0"], "fixture img0 (coco_tiny val2017 000000005001.jpg)"


def build_ours(state):
    from segany.checkpoints import infer_config, load_state_dict_strict
    from segany.modeling import build_sam

    config = infer_config(state)
    model = build_sam(config)
    load_state_dict_strict(model, state)
    return model.eval(), config


def build_official(state, config):
    from segany.benchmark import official_sam

    model = official_sam(config)
    model.load_state_dict(state)
    return model


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(REFERENCE / "ref_small.pth"))
    parser.add_argument("--random-vit-b", action="store_true", help="random ViT-B weights (see above)")
    parser.add_argument(
        "--default-model", action="store_true", help="segany's trained default model (smooth, real masks)"
    )
    parser.add_argument("--image", help="an image file (default: the fixture's img0, 640x480)")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-official", action="store_true")
    parser.add_argument(
        "--precision", choices=["fp32", "bf16", "int8"], default="fp32",
        help="segany's precision (the official package runs fp32); fp32 gives the official masks",
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from segany.automatic import SamAutomaticMaskGenerator
    from segany.benchmark import match_records

    state, weights = load_weights(args)
    image, image_name = load_image(args)
    params = {"points_per_side": args.points_per_side, **CONFIGS[args.config], "output_mode": "coco_rle"}
    ours_model, config = build_ours(state)

    result: dict = {
        "benchmark": "automatic mask generation, generate() on one image",
        "weights": weights,
        "encoder": {"embed_dim": config.encoder_embed_dim, "depth": config.encoder_depth},
        "image": image_name,
        "image_size": list(image.shape[:2]),
        "params": params,
        "threads": args.threads,
        "segany_precision": args.precision,
        "torch": torch.__version__,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
    }
    def run_ours():  # a fresh generator each time: a generator reuses the embeddings of its last image
        return SamAutomaticMaskGenerator(ours_model, **params, precision=args.precision).generate(image)

    ours, wall, cpu = timed(run_ours)
    result["segany"] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "masks": len(ours)}

    try:
        official_pkg = importlib.import_module("segment_anything")
    except ImportError:
        official_pkg = None
    if official_pkg is None or args.skip_official:
        result["official"] = None if official_pkg is None else "skipped"
    else:
        official_model = build_official(state, config)
        official_generator = official_pkg.SamAutomaticMaskGenerator(official_model, **params)
        official, o_wall, o_cpu = timed(lambda: official_generator.generate(image))
        result["official"] = {"wall_s": round(o_wall, 2), "cpu_s": round(o_cpu, 2), "masks": len(official)}
        # segany again after the official's minutes, so that machine drift (this host's speed varies by
        # tens of percent over minutes) weighs on both sides: the speed-up uses the mean of both runs.
        _, wall2, cpu2 = timed(run_ours)
        wall, cpu = (wall + wall2) / 2, (cpu + cpu2) / 2
        result["segany"].update(
            wall_s=round(wall, 2), cpu_s=round(cpu, 2), runs_wall_s=[result["segany"]["wall_s"], round(wall2, 2)]
        )
        result["speedup_wall"] = round(o_wall / wall, 2)
        result["speedup_cpu"] = round(o_cpu / cpu, 2)
        result["identity"] = match_records(ours, official)
    print(json.dumps(result, indent=1))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
