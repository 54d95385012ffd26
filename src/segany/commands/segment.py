"""segany segment: masks for point and box prompts on one image."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..cli import UsageError
from ..clicks import ClickSegmenter, ZoomIn
from ..io import MAX_IMAGE_PIXELS, read_image, save_mask_png, save_png
from ..predictor import SamPredictor
from ..refine import refine_mask
from ..visualize import draw_prompts, overlay_masks
from .common import add_model_args, parse_floats, resolve_model

EXAMPLE = "segany segment photo.jpg --point 320,200 --point 100,80,0 --checkpoint sam_vit_b_01ec64.pth -o mask.png"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment an object from points and/or a box", epilog=f"example: {EXAMPLE}")
    p.add_argument("image", help="input image (any format Pillow reads)")
    p.add_argument(
        "--point",
        action="append",
        default=[],
        metavar="X,Y[,LABEL]",
        help="a point in pixels; LABEL 1 = foreground (default), 0 = background. Repeatable.",
    )
    p.add_argument("--box", metavar="X0,Y0,X1,Y1", help="a box prompt in pixels")
    p.add_argument("--multimask", action="store_true", help="predict 3 candidate masks and keep the best")
    p.add_argument("--zoom-in", action="store_true",
                   help="then segment again on a crop around the mask at the model's full input (small objects)")
    p.add_argument("--refine", action="store_true",
                   help="fit the mask's boundary to the image's edges with GrabCut (the clicks are kept)")
    p.add_argument("-o", "--output", help="output mask PNG (0/255); default: IMAGE-STEM_mask.png in the current folder")
    p.add_argument("--all-masks", action="store_true", help="with --multimask, also write every candidate")
    p.add_argument("--overlay", metavar="PNG", help="also write the mask drawn over the image")
    p.add_argument("--max-pixels", type=int, default=MAX_IMAGE_PIXELS, metavar="N",
                   help=f"refuse larger images (default {MAX_IMAGE_PIXELS:,}; a guard against decompression bombs)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    add_model_args(p)
    p.set_defaults(func=run)


def parse_prompts(args: argparse.Namespace, height: int, width: int):
    points, labels = [], []
    for text in args.point:
        values = parse_floats(text, (2, 3), "--point")
        x, y = values[0], values[1]
        label = 1 if len(values) == 2 else values[2]
        if label not in (0, 1):
            raise UsageError(f"malformed --point {text!r}: LABEL must be 0 or 1")
        if not (0 <= x < width and 0 <= y < height):
            raise UsageError(f"--point {text!r} is outside the {width}x{height} image")
        points.append((x, y))
        labels.append(int(label))
    box = None
    if args.box:
        x0, y0, x1, y1 = parse_floats(args.box, (4,), "--box")
        if x1 <= x0 or y1 <= y0:
            raise UsageError(f"--box {args.box!r} must have x1 > x0 and y1 > y0")
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise UsageError(f"--box {args.box!r} is outside the {width}x{height} image")
        box = np.array([x0, y0, x1, y1], dtype=float)
    if not points and box is None:
        raise UsageError("give at least one --point or a --box")
    coords = np.array(points, dtype=float) if points else None
    return coords, (np.array(labels) if points else None), box


def candidate_path(output: Path, i: int) -> Path:
    """Where --all-masks writes candidate i: beside the output, with _i after its stem."""
    return output.with_name(f"{output.stem}_{i}{output.suffix}")


def run(args: argparse.Namespace) -> int:
    image = read_image(args.image, max_pixels=args.max_pixels)
    h, w = image.shape[:2]
    coords, labels, box = parse_prompts(args, h, w)
    output = Path(args.output) if args.output else Path(f"{Path(args.image).stem}_mask.png")
    if output.suffix.lower() != ".png":
        raise UsageError(f"--output must be a .png file, got {output}")
    candidates = [candidate_path(output, i) for i in range(3)] if args.all_masks and args.multimask else []
    for written_to in (output, args.overlay, *candidates):
        if written_to and Path(written_to).resolve() == Path(args.image).resolve():
            raise UsageError(f"{written_to} is the input image: write the results to another file")
    if args.overlay and Path(args.overlay).resolve() in {Path(x).resolve() for x in (output, *candidates)}:
        raise UsageError(f"--overlay {args.overlay} is also a mask output: give it a name of its own")
    model = resolve_model(args)
    predictor = SamPredictor(model)
    crop = None
    if args.zoom_in:
        # Answer on the whole image, then again on the zoom-in crop around that answer, fed back.
        session = ClickSegmenter(predictor, ZoomIn())
        session.set_image(image)
        session.predict(coords, labels, box, multimask=args.multimask)
        masks, scores = session.predict(coords, labels, box, multimask=False, zoom=True)
        crop = session.view
    else:
        predictor.set_image(image)
        masks, scores, _ = predictor.predict(coords, labels, box, multimask_output=args.multimask)
    if args.refine:
        masks = np.stack([refine_mask(image, m, coords, labels) for m in masks])
    best = int(np.argmax(scores))
    save_mask_png(output, masks[best])
    written = [str(output)]
    if args.all_masks and len(masks) > 1:
        for i, m in enumerate(masks):
            path = candidate_path(output, i)
            save_mask_png(path, m)
            written.append(str(path))
    if args.overlay:
        picture = overlay_masks(image, [masks[best]], colors=np.array([[30, 144, 255]]))
        save_png(args.overlay, draw_prompts(picture, coords, labels, box))
        written.append(str(args.overlay))
    result = {
        "image": str(args.image),
        "size": [h, w],
        "scores": [round(float(s), 4) for s in scores],
        "best": best,
        "area": int(masks[best].sum()),
        **({"zoom_crop": list(crop)} if crop is not None else {}),
        **({"refined": True} if args.refine else {}),
        "outputs": written,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for i, s in enumerate(scores):
            mark = "  <- best" if i == best else ""
            print(f"mask {i}: score {s:.4f}  area {int(masks[i].sum())} px{mark}")
        if crop is not None:
            print(f"zoomed in on x {crop[0]}-{crop[2]}, y {crop[1]}-{crop[3]}")
        print("wrote " + ", ".join(written))
    return 0
