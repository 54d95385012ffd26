"""Shared setup of the side-by-side benchmarks: arguments, images from ../shared/data, JSON output."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
DATA = REPO.parent / "shared" / "data"
# Fixed COCO val2017 photos (640x480 / 480x640 and similar), the same for every run.
DEFAULT_IMAGES = ["000000005001.jpg", "000000010764.jpg", "000000020992.jpg", "000000025603.jpg"]


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="vit_b", help="vit_b | vit_l | vit_h")
    p.add_argument("--checkpoint", help="weights for both packages (default: the official random init)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--images", nargs="*", help="image paths (default: COCO photos from ../shared/data)")
    p.add_argument("--no-official", action="store_true", help="time segany only")
    p.add_argument("--out", help="also write the JSON here")
    return p


def setup(args: argparse.Namespace):
    from segany.io import read_image

    if args.threads:
        torch.set_num_threads(args.threads)
    paths = args.images or [str(DATA / "coco_tiny" / "val2017" / name) for name in DEFAULT_IMAGES]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise SystemExit(f"error: images not found: {missing} (the shared data sits beside the repo)")
    return [read_image(p) for p in paths], paths


def scale_decoder_outputs(model: torch.nn.Module) -> None:
    """Random decoders give near-zero logits and IoU predictions: scale the hypernetwork outputs x300
    and the IoU head x20 (+0.8 bias), like the test fixture, so that the official filters (IoU >= 0.88,
    stability >= 0.95) keep masks and NMS has work to do."""
    decoder = model.mask_decoder
    with torch.no_grad():
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(300)
            mlp.layers[-1].bias.mul_(300)
        decoder.iou_prediction_head.layers[-1].weight.mul_(20)
        decoder.iou_prediction_head.layers[-1].bias.mul_(20).add_(0.8)


def emit(result: dict, args: argparse.Namespace) -> None:
    from segany.benchmark import dumps, environment

    result["environment"] = environment()
    text = dumps(result)
    print(text)
    if args.out:
        from segany.io import atomic_write_bytes

        atomic_write_bytes(args.out, (text + "\n").encode())
