"""segany eval interactive: mIoU@k and NoC@85/90 under the RITM/SAM click protocol."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ..cli import UsageError
from ..refine import EdgeRefine
from .common import add_model_args, resolve_model

EXAMPLE = (
    "segany eval interactive --images coco_mval/images --masks coco_mval/masks "
    "--match '(0[7-9]|1[0-9])_[0-9]{12}$' --max-clicks 20 --output results.json --plot curve.png"
)

EXAMPLE_AUTOMATIC = (
    "segany everything coco_tiny/val2017 -o everything --format coco && segany eval automatic "
    "--coco coco_tiny/annotations/instances_val2017.json --predictions everything/instances.json"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model", epilog=f"example: {EXAMPLE}")
    kinds = p.add_subparsers(dest="eval_kind", metavar="KIND", parser_class=type(p))
    kinds.required = True
    q = kinds.add_parser("interactive", help="click-based interactive segmentation (mIoU@k, NoC@85/90)",
                         epilog=f"example: {EXAMPLE}")
    q.add_argument("--images", required=True, help="image folder")
    source = q.add_mutually_exclusive_group(required=True)
    source.add_argument("--masks", help="mask folder paired with --images by file stem (128 = ignore)")
    source.add_argument("--coco", metavar="JSON", help="COCO instances JSON: every non-crowd instance is an object")
    q.add_argument("--max-clicks", type=int, default=20)
    q.add_argument("--long-side", type=int, default=500, help="resize images so the long side is this (0: as is)")
    q.add_argument("--match", metavar="REGEX", help="only image stems matching this regex")
    q.add_argument("--limit", type=int, help="evaluate at most this many objects")
    q.add_argument("--every", type=int, default=1, help="take every N-th image (subsample)")
    q.add_argument("--method", choices=("sam", "grabcut"), default="sam", help="the model, or click-seeded GrabCut")
    q.add_argument("--zoom-in", action="store_true",
                   help="after the first click, segment a crop around the object at full model resolution (RITM)")
    q.add_argument("--zoom-min-crop", type=int, default=200, metavar="PX", help="smallest zoom-in crop side")
    q.add_argument("--zoom-expansion", type=float, default=1.4, metavar="X", help="zoom-in crop = object box x this")
    q.add_argument("--refine", action="store_true",
                   help="fit each answer's boundary to the image's edges with GrabCut (segany.refine)")
    q.add_argument("--refine-band", type=float, metavar="FRACTION",
                   help=f"with --refine: half-width of the band GrabCut may relabel, x the long side (default {EdgeRefine.band})")
    q.add_argument("--output", required=True, help="results JSON (per-object IoUs inside)")
    q.add_argument("--plot", metavar="PNG", help="also draw the mIoU-vs-clicks curve")
    q.add_argument("--compare", metavar="JSON", action="append", default=[],
                   help="another results JSON to draw on the same plot (repeatable)")
    q.add_argument("--restart", action="store_true", help="ignore the progress file of an interrupted run")
    add_model_args(q)
    q.set_defaults(func=run)
    a = kinds.add_parser("automatic", help="automatic masks as object proposals (class-agnostic mask AR@K)",
                         epilog=f"example: {EXAMPLE_AUTOMATIC}")
    a.add_argument("--coco", metavar="JSON", required=True, help="ground truth: COCO instances JSON")
    a.add_argument("--predictions", metavar="JSON", required=True,
                   help="`segany everything --format coco` output (instances.json; images matched by file name),"
                        " or a COCO results list with the ground truth's image ids")
    a.add_argument("--max-dets", type=int, nargs="+", default=[10, 100, 1000], metavar="K",
                   help="AR at these numbers of top-scored masks per image (default 10 100 1000)")
    a.add_argument("--output", help="also write the results as JSON")
    a.set_defaults(func=run_automatic)


def read_results(path: str) -> dict:
    """A results JSON written by `segany eval interactive`, for --compare."""
    from ..train.data import DataError, read_json

    try:
        data = read_json(path, "--compare")
    except DataError as e:
        raise UsageError(str(e)) from None
    curve = data.get("miou_at_clicks") if isinstance(data, dict) else None
    if not isinstance(curve, dict) or not curve or not all(
        str(k).isdigit() and isinstance(v, (int, float)) for k, v in curve.items()
    ):
        raise UsageError(f"--compare {path} is not a results file of `segany eval interactive` (no miou_at_clicks)")
    return data


def run(args: argparse.Namespace) -> int:
    from ..clicks import ZoomIn
    from ..evaluate.interactive import EvalOptions, GrabCutClicker, SamClicker, evaluate, load_coco_objects
    from ..evaluate.interactive import load_folder_objects
    from ..evaluate.interactive import plot_curve
    from ..io import atomic_write_bytes
    from ..predictor import SamPredictor
    from ..train.data import DataError

    if args.max_clicks < 1:
        raise UsageError("--max-clicks must be at least 1")
    if args.compare and not args.plot:
        raise UsageError("--compare draws other results on the plot: give --plot PNG too")
    # Read before the run, so a bad file stops it at once and not after an hour of evaluation.
    compared = {}
    for other in args.compare:
        data = read_results(other)
        compared[data.get("model", Path(other).stem)] = data
    output = Path(args.output)
    try:
        if args.masks:
            objects = load_folder_objects(args.images, args.masks, args.match, args.limit, args.every)
        else:
            objects = load_coco_objects(args.coco, args.images, args.match, args.limit, args.every)
    except DataError as e:
        raise UsageError(str(e)) from None
    except __import__("re").error as e:
        raise UsageError(f"bad --match regex: {e}") from None
    if not objects:
        raise UsageError("no objects to evaluate (check --match/--limit)")
    zoom_in = None
    if args.zoom_in:
        if args.method == "grabcut":
            raise UsageError("--zoom-in applies to --method sam only")
        try:
            zoom_in = ZoomIn(expansion=args.zoom_expansion, min_crop=args.zoom_min_crop)
        except ValueError as e:
            raise UsageError(f"bad zoom-in setting: {e}") from None
    refine = None
    if args.refine_band is not None and not args.refine:
        raise UsageError("--refine-band needs --refine")
    if args.refine:
        if args.method == "grabcut":
            raise UsageError("--refine applies to --method sam only")
        try:
            refine = EdgeRefine() if args.refine_band is None else EdgeRefine(band=args.refine_band)
        except ValueError as e:
            raise UsageError(f"bad refine setting: {e}") from None
    if args.method == "grabcut":
        clicker = GrabCutClicker()
        model_name = "grabcut"
    else:
        model = resolve_model(args)
        clicker = SamClicker(SamPredictor(model), zoom_in, refine)
        model_name = args.checkpoint or args.model or "default"
        if zoom_in is not None:
            model_name += " +zoom-in"
        if refine is not None:
            model_name += " +refine"
    options = EvalOptions(max_clicks=args.max_clicks, long_side=args.long_side or None)
    partial = output.with_name(output.name + ".partial.jsonl")
    if args.restart:
        partial.unlink(missing_ok=True)
    settings = {"method": args.method, "model": model_name,
                "zoom_in": dataclasses.asdict(zoom_in) if zoom_in is not None else None,
                "refine": dataclasses.asdict(refine) if refine is not None else None}
    try:
        result = evaluate(clicker, objects, options, progress=True, partial_path=partial, settings=settings)
    except DataError as e:
        raise UsageError(str(e)) from None
    result = {"method": args.method, "model": model_name, **result}
    if zoom_in is not None:
        result["zoom_in"] = dataclasses.asdict(zoom_in)
    if refine is not None:
        result["refine"] = dataclasses.asdict(refine)
    atomic_write_bytes(output, json.dumps(result, indent=1).encode())
    partial.unlink(missing_ok=True)
    if args.plot:
        plot_curve({model_name: result, **compared}, args.plot)
    m = result["miou_at_clicks"]
    shown = " ".join(f"@{k}={m[str(k)]:.3f}" for k in (1, 5, 10, 20) if str(k) in m)
    print(f"{result['objects']} objects  mIoU {shown}  NoC@85 {result['noc85']} ({result['noc85_failed']} never)  "
          f"NoC@90 {result['noc90']} ({result['noc90_failed']} never)  1-click oracle {result['miou_1_oracle']}")
    print(f"wrote {output}" + (f", {args.plot}" if args.plot else ""))
    return 0


def run_automatic(args: argparse.Namespace) -> int:
    from ..evaluate.proposals import evaluate_proposals
    from ..io import atomic_write_bytes
    from ..train.data import DataError

    if any(k < 1 for k in args.max_dets):
        raise UsageError("--max-dets must be positive")
    try:
        result = evaluate_proposals(args.coco, args.predictions, args.max_dets)
    except DataError as e:
        raise UsageError(str(e)) from None
    result = {"ground_truth": str(args.coco), "predictions": str(args.predictions), **result}
    if args.output:
        atomic_write_bytes(args.output, json.dumps(result, indent=1).encode())
    ar = "  ".join(f"AR@{k} {v}" for k, v in result["ar"].items())
    areas = "  ".join(f"{k} {v}" for k, v in result["ar_by_area"].items() if k != "all")
    print(f"{result['images']} images, {result['targets']} objects, {result['predictions']} masks  {ar}  "
          f"(at {max(args.max_dets)}: {areas}; recall@0.5 {result['recall_50'][str(max(args.max_dets))]})")
    if args.output:
        print(f"wrote {args.output}")
    return 0
