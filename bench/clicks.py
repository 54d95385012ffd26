"""The evaluation clicker on training masks: ``next_click`` (crops around each region) against the
same protocol computed on the whole frame, as it was before 2026-11-27, on the (prediction, truth)
pairs of a training config's 512 px frames.

Training with ``center_click_prob`` places about a hundred of these clicks per step of 16 images
on the CPU, between the GPU's decoder rounds. The pairs come from the shipped default model:
per sampled mask, the clicks of the protocol (first click, then corrections) for ``--rounds``
rounds, each answer fed back as the mask prompt.

    python bench/clicks.py --images-sampled 24 --rounds 6 --out clicks.json
"""

from __future__ import annotations

import argparse
import time

import _common
import cv2
import numpy as np
import torch


def full_frame_next_click(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int] | None:
    """The protocol on the whole frame (the implementation before crops), as the baseline."""
    best = None
    for label, error in ((1, (gt == 1) & ~pred), (0, (gt == 0) & pred)):
        if not error.any():
            continue
        _, comp, stats, _ = cv2.connectedComponentsWithStats(error.astype(np.uint8), connectivity=8)
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        area = int(stats[largest, cv2.CC_STAT_AREA])
        if best is None or area > best[0]:
            best = (area, comp == largest, label)
    if best is None:
        return None
    padded = np.pad(best[1].astype(np.uint8), 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y), best[2]


def click_pairs(config: str, images: int, rounds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from segany import SamPredictor, load_default_model
    from segany.evaluate.clicker import first_click, next_click
    from segany.train.data import InteractiveDataset, load_source
    from segany.train.losses import upsample_logits
    from segany.train.trainer import load_config

    cfg = load_config(config)
    cfg.data_root = str(_common.DATA)
    records = [r for source in cfg.data for r in load_source(source, cfg.data_root)]
    model = load_default_model()
    size = model.image_encoder.img_size
    dataset = InteractiveDataset(records, size, cfg.max_masks, cfg.augment)
    predictor = SamPredictor(model)
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(images):
        sample = dataset.sample(int(rng.integers(0, len(dataset))), rng)
        if len(sample.masks) == 0:
            continue
        predictor.set_torch_image(sample.image[None], (size, size))
        for gt in sample.masks.numpy():
            clicks = [first_click(gt)]
            logits = None
            for _ in range(rounds):
                coords = np.array([c[:2] for c in clicks], float)
                labels = np.array([c[2] for c in clicks])
                _, _, low_res = predictor.predict(coords, labels, mask_input=logits, multimask_output=False)
                logits = low_res[:1]
                pred = upsample_logits(torch.from_numpy(low_res[None]), size)[0, 0].numpy() > 0
                pairs.append((pred, gt))
                click = next_click(pred, gt)
                if click is None:
                    break
                clicks.append(click)
    return pairs


def timed(fn, pairs, repeats: int) -> tuple[float, list]:
    best, out = float("inf"), []
    for _ in range(repeats):
        t = time.perf_counter()
        out = [fn(p, g) for p, g in pairs]
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(_common.REPO / "src/segany/weights/default_stage9.yaml"))
    p.add_argument("--images-sampled", type=int, default=24)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()
    if not _common.DATA.exists():
        raise SystemExit(f"error: {_common.DATA} is absent: the shared data sits beside the repository")
    from segany.evaluate.clicker import next_click

    pairs = click_pairs(args.config, args.images_sampled, args.rounds, args.seed)
    full_s, full = timed(full_frame_next_click, pairs, args.repeats)
    crop_s, crop = timed(next_click, pairs, args.repeats)
    result = {
        "benchmark": "clicks",
        "config": args.config,
        "pairs": len(pairs),
        "frame": list(pairs[0][1].shape) if pairs else None,
        "same_clicks": sum(a == b for a, b in zip(full, crop)),
        "ms_per_click": {"full_frame": round(full_s / len(pairs) * 1e3, 3), "segany": round(crop_s / len(pairs) * 1e3, 3)},
        "speedup": round(full_s / crop_s, 2),
        "opencv_threads": cv2.getNumThreads(),
    }
    _common.emit(result, args)


if __name__ == "__main__":
    main()
