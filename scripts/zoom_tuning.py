"""How the settings of segany.clicks.ZoomIn were chosen for the default model.

Zoom-in answers later clicks on a crop around the current mask, resized to the model's input. Its
settings came from RITM (a 200 px minimum crop, boxes grown 1.4x), whose models see 400 px inputs
of whole images; the default model sees 512 px and fails mostly on small objects (README, "Default
model"), which a smaller minimum crop magnifies more.

Tuning set: COCO tiny val2017 instances of at least ``--min-area`` px (500: COCO's small objects
included), on no photo of COCO-MVal (whose training split the default model trained on and whose
validation split the README reports), every ``--every``-th. The click protocol is `segany eval
interactive`'s at long side 500, 20 clicks, with the shipped default model.

    python scripts/zoom_tuning.py --min-crop 200 120 80 --expansion 1.4 1.8 [--jobs 2] [--out rows.jsonl]

Each setting is printed as one JSON line (and appended to ``--out``); "min_crop": null is the
network alone on the whole image. Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))

from refine_tuning import DATA, summary_row, tuning_objects


def run_setting(setting: tuple[int | None, float | None], min_area: float, every: int) -> dict:
    """The protocol on the tuning set with one zoom-in setting (None: no zoom-in), on one thread."""
    import torch

    from segany import SamPredictor, load_default_model
    from segany.clicks import ZoomIn
    from segany.evaluate.interactive import EvalOptions, SamClicker, evaluate

    torch.set_num_threads(1)
    min_crop, expansion = setting
    zoom = None if min_crop is None else ZoomIn(min_crop=min_crop, expansion=expansion)
    objects = tuning_objects(every, min_area)
    start = time.time()
    result = evaluate(SamClicker(SamPredictor(load_default_model()), zoom), objects, EvalOptions(max_clicks=20, long_side=500),
                      progress=False)
    return {"min_crop": min_crop, "expansion": expansion, "min_area": min_area, **summary_row(result),
            "seconds": round(time.time() - start)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--min-crop", type=int, nargs="+", default=[200])
    p.add_argument("--expansion", type=float, nargs="+", default=[1.4])
    p.add_argument("--no-baseline", action="store_true", help="skip the run without zoom-in")
    p.add_argument("--min-area", type=float, default=500.0)
    p.add_argument("--every", type=int, default=4)
    p.add_argument("--jobs", type=int, default=1, help="settings run at once, one thread each")
    p.add_argument("--out", help="also append each JSON line here")
    args = p.parse_args()
    if not DATA.exists():
        sys.exit(f"{DATA} is absent: this script needs the shared data beside the repository")
    if any(c < 1 for c in args.min_crop) or any(e < 1 for e in args.expansion) or args.every < 1 or args.jobs < 1:
        sys.exit("error: --min-crop, --every and --jobs must be >= 1 and --expansion >= 1")
    settings = [] if args.no_baseline else [(None, None)]
    settings += [(c, e) for c in args.min_crop for e in args.expansion]
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_setting, s, args.min_area, args.every) for s in settings]
        for future in futures:
            line = json.dumps(future.result())
            print(line, flush=True)
            if args.out:
                with open(args.out, "a", encoding="utf-8") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
