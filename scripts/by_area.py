"""Where interactive results fail, by object size.

Splits the objects of `segany eval interactive` results (the `per_object` IoU curves of its
`--output` JSON) into quartiles of ground-truth mask area, as a fraction of the image, and prints per
quartile and results file: the share of objects that ever reach IoU 0.85 and 0.90 within the clicks,
and mIoU after 5 and 20 clicks. The quartile bounds come from the objects of the first file; every
file is split by them, so the rows compare like with like.

    python scripts/by_area.py docs/default_model/default_val.json docs/default_model/stage7_val.json \\
        [--images ../shared/data/coco_mval/images --masks ../shared/data/coco_mval/masks] [--output by_area.json]

Prints one JSON line per quartile and file (and writes them all to --output, atomically).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from segany.evaluate.interactive import load_folder_objects
from segany.io import atomic_write_bytes
from segany.train.data import DataError

DATA = REPO.parent / "shared" / "data" / "coco_mval"


def area_fraction(mask: np.ndarray) -> float:
    """Object pixels / image pixels of a 1/0/IGNORE mask (ignore bands count as neither)."""
    return float((mask == 1).sum()) / mask.size


def area_fractions(images: Path, masks: Path, keys: set[str]) -> dict[str, float]:
    """:func:`area_fraction` of each object in ``keys``."""
    return {obj.key: area_fraction(obj.load_mask()) for obj in load_folder_objects(images, masks) if obj.key in keys}


def area_quartiles(fractions: dict[str, float], bounds_from: list[float]) -> tuple[np.ndarray, dict[str, int]]:
    """The quartile bounds of the area fractions ``bounds_from``, and the quartile (0-3) they put
    each object of ``fractions`` in."""
    bounds = np.quantile(bounds_from, [0.25, 0.5, 0.75])
    return bounds, {k: int(np.searchsorted(bounds, f, side="right")) for k, f in fractions.items()}


def rows_for(name: str, per_object: dict[str, list[float]], quartile_of: dict[str, int]) -> list[dict]:
    rows = []
    for q in range(4):
        curves = [np.asarray(c) for k, c in per_object.items() if quartile_of.get(k) == q]
        if not curves:
            continue
        rows.append({
            "results": name,
            "quartile": q + 1,
            "objects": len(curves),
            "reach_85": round(float(np.mean([c.max() >= 0.85 for c in curves])), 3),
            "reach_90": round(float(np.mean([c.max() >= 0.90 for c in curves])), 3),
            "miou@5": round(float(np.mean([c[min(4, len(c) - 1)] for c in curves])), 3),
            "miou@20": round(float(np.mean([c[min(19, len(c) - 1)] for c in curves])), 3),
        })
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="segany eval interactive --output JSON files")
    p.add_argument("--images", type=Path, default=DATA / "images")
    p.add_argument("--masks", type=Path, default=DATA / "masks")
    p.add_argument("--output", help="write the rows as one JSON file")
    args = p.parse_args()
    results = {}
    for path in args.results:
        try:
            results[path] = json.loads(Path(path).read_text())["per_object"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            sys.exit(f"error: {path} is not a segany eval interactive results file ({exc})")
    if not args.masks.is_dir() or not args.images.is_dir():
        sys.exit(f"error: {args.images} or {args.masks} is absent: give --images and --masks of the evaluated objects")
    keys = set().union(*(r.keys() for r in results.values()))
    try:
        fractions = area_fractions(args.images, args.masks, keys)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    missing = keys - fractions.keys()
    if missing:
        sys.exit(f"error: {len(missing)} objects of the results have no mask under {args.masks}, e.g. {min(missing)}")
    bounds, quartile_of = area_quartiles(fractions, [fractions[k] for k in results[args.results[0]]])
    rows = []
    for path, per_object in results.items():
        rows.extend(rows_for(path, per_object, quartile_of))
    shown_bounds = [round(float(b), 4) for b in bounds]
    for row in rows:
        print(json.dumps(row), flush=True)
    print(json.dumps({"area_quartile_bounds": shown_bounds}))
    if args.output:
        doc = {"area_quartile_bounds": shown_bounds, "rows": rows}
        atomic_write_bytes(args.output, (json.dumps(doc, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
