"""How the defaults of segany.refine.EdgeRefine were chosen, and what refinement does to good masks.

Tuning set: COCO tiny val2017 instances of at least 2,500 px, without the 12 photos that COCO-MVal
also holds (10 of its training split, which the default model trained on, and 2 of its validation
split); every 5th object (57). The click protocol is `segany eval interactive`'s at long side 500,
20 clicks, with the default model. (Before 2026-11-27 only the 2 validation photos were left out: the
65 objects of docs/default_model/refine_tuning.json include 7 on training photos.)

    python scripts/refine_tuning.py grid --band 0.02 0.032 0.048 --click-radius 0.006 0.01 [--zoom-in]
    python scripts/refine_tuning.py truth      # ground-truth masks shrunk 8x and scaled back, refined

Each result is printed as one JSON line. Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from segany import SamPredictor, load_default_model
from segany.clicks import ZoomIn
from segany.evaluate.clicker import first_click
from segany.evaluate.interactive import (
    EvalOptions,
    SamClicker,
    _resize_pair,
    evaluate,
    iou,
    load_coco_objects,
    load_folder_objects,
)
from segany.io import read_image
from segany.refine import EdgeRefine, refine_mask
from segany.train.data import COCO_ID

DATA = REPO.parent / "shared" / "data"
VAL = r"(0[7-9]|1[0-9])_[0-9]{12}$"


def tuning_objects(every: int = 5, min_area: float = 2500):
    """Every Nth held-out object of at least ``min_area`` px: on no photo of COCO-MVal, whose training
    split the default model trains on and whose validation split the README reports (COCO-MVal's
    photos are COCO's)."""
    mval_photos = {m.group(1) for f in (DATA / "coco_mval" / "images").iterdir() if (m := COCO_ID.search(f.stem))}
    objects = load_coco_objects(DATA / "coco_tiny/annotations/instances_val2017.json", DATA / "coco_tiny/val2017",
                                min_area=min_area)
    return [o for o in objects if o.key.split("#")[0] not in mval_photos][::every]


def summary_row(result: dict, clicks: tuple[int, ...] = (1, 5, 10, 20)) -> dict:
    """The headline numbers of an `evaluate` result as one flat JSON row."""
    m = result["miou_at_clicks"]
    return {
        "objects": result["objects"], **{f"miou@{k}": m[str(k)] for k in clicks},
        "noc85": result["noc85"], "noc85_failed": result["noc85_failed"],
        "noc90": result["noc90"], "noc90_failed": result["noc90_failed"],
    }


def grid(args: argparse.Namespace) -> None:
    objects = tuning_objects(args.every)
    predictor = SamPredictor(load_default_model())
    options = EvalOptions(max_clicks=20, long_side=500)
    settings = [None] + [EdgeRefine(band=b, click_radius=r) for b in args.band for r in args.click_radius]
    for refine in settings:
        t0 = time.time()
        result = evaluate(SamClicker(predictor, ZoomIn() if args.zoom_in else None, refine), objects, options,
                          progress=False)
        print(json.dumps({
            "band": refine.band if refine else None, "click_radius": refine.click_radius if refine else None,
            "zoom_in": args.zoom_in, **summary_row(result), "seconds": round(time.time() - t0),
        }), flush=True)


def truth(args: argparse.Namespace) -> None:
    d = DATA / "coco_mval"
    objects = load_folder_objects(d / "images", d / "masks", match=VAL)[:: args.every_truth]
    before, after = [], []
    for obj in objects:
        image, gt = _resize_pair(read_image(obj.image_path), obj.load_mask(), 500)
        target = (gt == 1).astype(np.float32)
        h, w = target.shape
        small = cv2.resize(target, (max(1, w // 8), max(1, h // 8)), interpolation=cv2.INTER_AREA)
        coarse = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
        click = first_click(gt)
        refined = refine_mask(image, coarse, np.array([click[:2]]), np.array([1]), EdgeRefine())
        before.append(iou(coarse, gt))
        after.append(iou(refined, gt))
    before, after = np.array(before), np.array(after)
    print(json.dumps({"objects": len(before), "coarse_miou": round(float(before.mean()), 4),
                      "refined_miou": round(float(after.mean()), 4),
                      "improved": int((after > before).sum()), "worse": int((after < before).sum())}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    g = sub.add_parser("grid", help="the click protocol on the tuning set, per setting")
    g.add_argument("--band", type=float, nargs="+", default=[EdgeRefine.band])
    g.add_argument("--click-radius", type=float, nargs="+", default=[EdgeRefine.click_radius])
    g.add_argument("--zoom-in", action="store_true")
    g.add_argument("--every", type=int, default=5)
    t = sub.add_parser("truth", help="refine ground-truth masks made coarse")
    t.add_argument("--every-truth", type=int, default=10)
    args = p.parse_args()
    if not DATA.exists():
        sys.exit(f"{DATA} is absent: this script needs the shared data beside the repository")
    grid(args) if args.what == "grid" else truth(args)


if __name__ == "__main__":
    main()
