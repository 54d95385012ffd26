"""How well SAM's low-res mask grid can draw each object at all, by object size.

SAM predicts mask logits on a grid 4x finer than its image embedding (128 x 128 cells for a 512 px
model, 256 x 256 for the official 1024 px ones) and upsamples them bilinearly to the image. This
script asks what IoU that grid allows when its logits are near-ideal: the ground-truth mask, resized
into the model's input frame as the predictor resizes images, averaged over each cell, minus 0.5,
then taken through the predictor's own postprocessing (upsample, crop, resize, threshold at 0). The
objects and their resizing follow `segany eval interactive` (long side 500, ignore bands left out).
If an object's ceiling is far above what a model reaches, the grid is not what stops the model.

    python scripts/mask_grid_ceiling.py --sizes 512 768 1024 --output docs/default_model/mask_grid_ceiling_val.json

Quartiles are of ground-truth area as a fraction of the image, as in scripts/by_area.py. Prints one
JSON line per input size and quartile (and writes them all to --output, atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))

from by_area import area_fraction, area_quartiles

from segany.evaluate.interactive import _resize_pair, iou, load_folder_objects
from segany.io import atomic_write_bytes
from segany.train.data import DataError
from segany.transforms import ResizeLongestSide

DATA = REPO.parent / "shared" / "data" / "coco_mval"
VALIDATION = r"(0[7-9]|1[0-9])_[0-9]{12}$"


def ideal_low_res_logits(mask: np.ndarray, img_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Near-ideal low-res logits (1, 1, img_size/4, img_size/4) for a bool (H, W) mask: the mask
    resized into the model's input frame (long side img_size, antialiased), zero-padded to the square
    input, averaged over each 4 x 4 cell, minus 0.5. Also returns the input size (h, w) of the image."""
    input_size = ResizeLongestSide.get_preprocess_shape(*mask.shape, img_size)
    x = torch.from_numpy(mask.astype(np.float32))[None, None]
    x = F.interpolate(x, input_size, mode="bilinear", align_corners=False, antialias=True)
    x = F.pad(x, (0, img_size - input_size[1], 0, img_size - input_size[0]))
    return F.avg_pool2d(x, 4) - 0.5, input_size


def grid_ceiling_iou(gt: np.ndarray, img_size: int) -> float:
    """IoU with a 1/0/IGNORE mask of the mask drawn by near-ideal low-res logits at ``img_size``."""
    logits, input_size = ideal_low_res_logits(gt == 1, img_size)
    up = F.interpolate(logits, (img_size, img_size), mode="bilinear", align_corners=False)
    up = up[..., : input_size[0], : input_size[1]]
    up = F.interpolate(up, gt.shape, mode="bilinear", align_corners=False)  # SAM's postprocessing
    return iou(up[0, 0].numpy() > 0, gt)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 768, 1024], help="model input sizes (px)")
    p.add_argument("--images", type=Path, default=DATA / "images")
    p.add_argument("--masks", type=Path, default=DATA / "masks")
    p.add_argument("--match", default=VALIDATION, help="regex on file stems (default: the COCO-MVal validation split)")
    p.add_argument("--long-side", type=int, default=500, help="resize each image so its long side is this (default 500)")
    p.add_argument("--output", help="write the rows as one JSON file")
    args = p.parse_args()
    if any(s <= 0 or s % 16 for s in args.sizes):
        sys.exit("error: --sizes must be positive multiples of 16 (the patch size)")
    if not args.masks.is_dir() or not args.images.is_dir():
        sys.exit(f"error: {args.images} or {args.masks} is absent: give --images and --masks")
    try:
        objects = load_folder_objects(args.images, args.masks, match=args.match)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    if not objects:
        sys.exit(f"error: no object under {args.masks} matches {args.match!r}")
    fractions, ceilings = {}, {s: {} for s in args.sizes}
    for obj in objects:
        mask = obj.load_mask()
        fractions[obj.key] = area_fraction(mask)  # before resizing, as scripts/by_area.py
        _, gt = _resize_pair(np.zeros((*mask.shape, 3), np.uint8), mask, args.long_side)
        for size in args.sizes:
            ceilings[size][obj.key] = grid_ceiling_iou(gt, size)
    bounds, quartile_of = area_quartiles(fractions, list(fractions.values()))
    rows = []
    for size, values in ceilings.items():
        for q in range(4):
            v = np.array([iou_ for key, iou_ in values.items() if quartile_of[key] == q])
            rows.append({
                "img_size": size,
                "quartile": q + 1,
                "objects": len(v),
                "reach_85": round(float(np.mean(v >= 0.85)), 3),
                "reach_90": round(float(np.mean(v >= 0.90)), 3),
                "mean_iou": round(float(v.mean()), 4),
            })
    shown_bounds = [round(float(b), 4) for b in bounds]
    for row in rows:
        print(json.dumps(row), flush=True)
    print(json.dumps({"area_quartile_bounds": shown_bounds}))
    if args.output:
        doc = {
            "set": f"{os.path.relpath(args.masks, REPO)} matching {args.match!r}, long side {args.long_side}",
            "what": "IoU of the mask drawn by near-ideal low-res logits (scripts/mask_grid_ceiling.py)",
            "area_quartile_bounds": shown_bounds,
            "rows": rows,
        }
        atomic_write_bytes(args.output, (json.dumps(doc, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
