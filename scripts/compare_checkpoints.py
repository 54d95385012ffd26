"""Choose among training candidates without looking at the COCO-MVal validation split.

Runs `segany eval interactive`'s click protocol (network alone, long side 500, 20 clicks) for each
checkpoint on the held-out tuning set of `scripts/refine_tuning.py`: COCO tiny val2017 instances of
at least 2,500 px, which no training config uses, without the 12 photos that COCO-MVal also holds
(training or validation). The default takes every 3rd object (95).

    python scripts/compare_checkpoints.py src/segany/weights/default.safetensors runs/a/last.pt runs/b/last.pt \\
        --output docs/default_model/stage4_candidates.json

--img-size S runs every checkpoint at input size S instead of its own, its position weights resized
(as `init_checkpoint` does in training): how a model does at another resolution before any training.

--by-area adds to each row the share of objects that ever reach IoU 0.85 / 0.90 and mIoU@5 / @20 per
quartile of object area (as scripts/by_area.py does for validation results).

Prints one JSON line per checkpoint and writes them all to --output (atomically). Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))

from by_area import area_fraction, area_quartiles, rows_for
from refine_tuning import DATA, summary_row, tuning_objects

from segany import SamPredictor
from segany.checkpoints import CheckpointError, load_model
from segany.evaluate.interactive import EvalOptions, SamClicker, evaluate
from segany.io import atomic_write_bytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="model files (.safetensors, .pth, a run's last.pt)")
    p.add_argument("--every", type=int, default=3, help="every Nth object of the tuning set (default 3)")
    p.add_argument("--img-size", type=int, help="run each model at this input size (px, a multiple of its patch size)")
    p.add_argument("--by-area", action="store_true", help="also split each result by quartile of object area")
    p.add_argument("--output", help="write the results as one JSON file")
    args = p.parse_args()
    if not DATA.exists():
        sys.exit(f"error: {DATA} is absent: this script needs the shared data beside the repository")
    # Every checkpoint is read before the first evaluation, so a bad path fails in seconds, not minutes in.
    models = {}
    for path in args.checkpoints:
        try:
            models[path] = load_model(path)
            if args.img_size is not None and args.img_size != models[path].config.img_size:
                config = dataclasses.replace(models[path].config, img_size=args.img_size)
                models[path] = load_model(path, config, resize_positions=True)
        except CheckpointError as exc:
            sys.exit(f"error: {exc}")
        except ValueError as exc:  # an input size the architecture cannot take
            sys.exit(f"error: --img-size {args.img_size}: {exc}")
    objects = tuning_objects(args.every)
    options = EvalOptions(max_clicks=20, long_side=500)
    if args.by_area:
        fractions = {obj.key: area_fraction(obj.load_mask()) for obj in objects}
        bounds, quartile_of = area_quartiles(fractions, list(fractions.values()))
    rows = []
    for path, model in models.items():
        t0 = time.time()
        result = evaluate(SamClicker(SamPredictor(model)), objects, options, progress=False)
        size = {"img_size": args.img_size} if args.img_size is not None else {}
        row = {"checkpoint": path, **size, **summary_row(result, (1, 2, 5, 10, 20)), "seconds": round(time.time() - t0)}
        if args.by_area:
            row["by_area"] = [{k: v for k, v in r.items() if k != "results"} for r in rows_for(path, result["per_object"], quartile_of)]
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.output:
        doc = {"set": f"COCO tiny val2017, instances >= 2,500 px, no COCO-MVal photo, every {args.every} (scripts/refine_tuning.py)",
               "protocol": "network alone, long side 500, 20 clicks", "results": rows}
        if args.by_area:
            doc["area_quartile_bounds"] = [round(float(b), 4) for b in bounds]
        atomic_write_bytes(args.output, json.dumps(doc, indent=1).encode())


if __name__ == "__main__":
    main()
