"""Scoring candidate masks: low-res scoring (segany.resized_stats) vs resizing whole masks.

Times stability scores + boxes of logits shaped like real objects (24 COCO-MVal masks, blurred,
+-8 scale, in a 4:3 image's 256x256 low-res map) for several output sizes, both ways, and checks
that they agree. Prints JSON.

    PYTHONPATH=$PWD/src python bench/resized_stats.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import time

import _common
import cv2
import numpy as np
import torch


def object_logits(count: int = 24) -> torch.Tensor:
    paths = sorted((_common.DATA / "coco_mval" / "masks").glob("*.png"))[::33][:count]
    maps = []
    for path in paths:
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        mask = cv2.resize(mask, (256, 192), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
        out = np.full((256, 256), -8.0, np.float32)
        out[:192] = cv2.GaussianBlur(mask * 2 - 1, (0, 0), 2) * 8
        maps.append(out)
    return torch.as_tensor(np.stack(maps))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from segany.automatic import SamAutomaticMaskGenerator
    from segany.modeling import build_sam
    from segany.resized_stats import ResizedLogitStats

    logits = object_logits()
    generator = SamAutomaticMaskGenerator(build_sam("vit_b"), points_per_side=1)
    results = []
    for input_size, size in [((768, 1024), (768, 1024)), ((768, 1024), (480, 640)), ((768, 1024), (1536, 2048))]:
        stats = ResizedLogitStats((256, 256), 1024, input_size, size, logits.device)

        def low_res():
            return stats(logits, 0.0, 1.0)

        def full_size():
            return generator._score_and_box_full(logits, input_size, size)

        times = {"low_res": [], "full_size": []}
        with torch.inference_mode():
            for _ in range(args.repeats):
                for name, fn in (("low_res", low_res), ("full_size", full_size)):
                    start = time.perf_counter()
                    out = fn()
                    times[name].append(time.perf_counter() - start)
                    if name == "low_res":
                        fast = out
                    else:
                        slow = out
        per_mask = {k: round(1000 * float(np.median(v)) / len(logits), 3) for k, v in times.items()}
        results.append({
            "input_size": list(input_size),
            "size": list(size),
            "ms_per_mask": per_mask,
            "speedup": round(per_mask["full_size"] / per_mask["low_res"], 2),
            "max_stability_diff": float((fast[0] - slow[0]).abs().max()),
            "boxes_equal": bool(torch.equal(fast[1], slow[1])),
        })
    print(json.dumps({"masks": len(logits), "threads": args.threads, "results": results}, indent=1))


if __name__ == "__main__":
    main()
