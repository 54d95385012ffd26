"""segany everything: automatic masks for an image or a folder of images.

Resumable: an image whose outputs all exist is skipped, and every file is written atomically,
so an interrupted run leaves no partial file and the next run carries on. Unreadable images are
reported and skipped; the run fails only when no image could be processed.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import DEFAULT_MODEL
from ..cli import UsageError
from ..io import MAX_IMAGE_PIXELS, ImageReadError, read_image
from .common import add_model_args, resolve_model

EXAMPLE = "segany everything photos/ --output masks/ --format coco --checkpoint sam_vit_b_01ec64.pth --overlay"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
FORMATS = ("sa1b", "coco", "png")
PARTS_DIR = ".segany_parts"  # per-image results of a --format coco run, merged at the end
COCO_FILE = "instances.json"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "everything",
        help="segment everything: automatic masks for an image or a folder",
        description=(
            "Automatic masks from a grid of point prompts. Writes per image: <stem>.json (SA-1B "
            "layout, --format sa1b), <stem>.png (label map, 0 = background, --format png), or one "
            f"{COCO_FILE} for all images (--format coco); with --overlay also <stem>_overlay.jpg. "
            "Images whose outputs exist are skipped, so an interrupted run can simply be restarted."
        ),
        epilog=f"example: {EXAMPLE}",
    )
    p.add_argument("input", help="an image, or a folder of images (not recursive)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (created if needed)")
    p.add_argument("--format", choices=FORMATS, default="sa1b", help="output format (default: sa1b)")
    p.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.jpg pictures")
    p.add_argument("--points-per-side", type=int, default=32, metavar="N", help="grid points per side (default 32)")
    p.add_argument("--points-per-batch", type=int, default=64, metavar="N", help="prompts decoded at once (default 64)")
    p.add_argument("--pred-iou-thresh", type=float, default=0.88, metavar="T", help="default 0.88")
    p.add_argument("--stability-score-thresh", type=float, default=0.95, metavar="T", help="default 0.95")
    p.add_argument("--box-nms-thresh", type=float, default=0.7, metavar="T", help="default 0.7")
    p.add_argument("--crop-layers", type=int, default=0, metavar="N", help="extra crop layers (default 0)")
    p.add_argument("--crop-nms-thresh", type=float, default=0.7, metavar="T", help="default 0.7")
    p.add_argument("--crop-points-downscale", type=int, default=1, metavar="F",
                   help="points per side shrink by F per crop layer (default 1)")
    p.add_argument("--min-region-area", type=int, default=0, metavar="PX",
                   help="fill holes / drop islands smaller than this (default 0: off)")
    p.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="fp32",
                   help="encoder and decoder precision (default fp32, the official masks; bf16 is the fast mode on GPUs and CPUs with bf16 instructions, int8 on other CPUs)")
    p.add_argument("--max-pixels", type=int, default=MAX_IMAGE_PIXELS, metavar="N",
                   help=f"refuse larger images (default {MAX_IMAGE_PIXELS:,}; a guard against decompression bombs)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_model_args(p)
    p.set_defaults(func=run)


@dataclass
class Job:
    path: Path
    image_id: int
    outputs: list[Path]


def list_images(input_path: Path) -> list[Path]:
    if not input_path.exists():
        raise UsageError(f"input not found: {input_path}")
    if input_path.is_file():
        return [input_path]
    images = sorted(p for p in input_path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UsageError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {input_path}")
    stems: dict[str, Path] = {}
    for image in images:
        if image.stem in stems:
            raise UsageError(f"two images share the name {image.stem!r} ({stems[image.stem].name}, {image.name})")
        stems[image.stem] = image
    return images


def check_args(args: argparse.Namespace) -> None:
    if args.points_per_side < 1 or args.points_per_batch < 1:
        raise UsageError("--points-per-side and --points-per-batch must be >= 1")
    if args.crop_layers < 0 or args.crop_points_downscale < 1 or args.min_region_area < 0:
        raise UsageError("--crop-layers and --min-region-area must be >= 0, --crop-points-downscale >= 1")
    if args.points_per_side // args.crop_points_downscale**args.crop_layers < 1:
        raise UsageError("--crop-points-downscale leaves no points in the last crop layer")
    for name in ("box_nms_thresh", "crop_nms_thresh", "stability_score_thresh"):
        value = getattr(args, name)
        if not 0.0 <= value <= 1.0:
            raise UsageError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
    if args.pred_iou_thresh != args.pred_iou_thresh:
        raise UsageError("--pred-iou-thresh must be a number")


def plan(images: list[Path], output: Path, args: argparse.Namespace) -> list[Job]:
    jobs = []
    for index, image in enumerate(images):
        if args.format == "sa1b":
            outputs = [output / f"{image.stem}.json"]
        elif args.format == "png":
            outputs = [output / f"{image.stem}.png"]
        else:
            outputs = [output / PARTS_DIR / f"{image.stem}.json"]
        if args.overlay:
            outputs.append(output / f"{image.stem}_overlay.jpg")
        jobs.append(Job(image, index + 1, outputs))
    return jobs


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..automatic import SamAutomaticMaskGenerator
    from ..writers import coco_instances_document, sa1b_document, write_json, write_label_png, write_overlay

    check_args(args)
    input_path, output = Path(args.input), Path(args.output)
    images = list_images(input_path)
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output must be a folder, got a file: {output}")
    jobs = plan(images, output, args)
    todo = [job for job in jobs if not all(p.exists() for p in job.outputs)]
    done_before = len(jobs) - len(todo)
    failed: list[tuple[Path, str]] = []
    masks_written = 0

    def make_generator() -> SamAutomaticMaskGenerator:
        return SamAutomaticMaskGenerator(
            resolve_model(args),
            points_per_side=args.points_per_side,
            points_per_batch=args.points_per_batch,
            pred_iou_thresh=args.pred_iou_thresh,
            stability_score_thresh=args.stability_score_thresh,
            box_nms_thresh=args.box_nms_thresh,
            crop_n_layers=args.crop_layers,
            crop_nms_thresh=args.crop_nms_thresh,
            crop_n_points_downscale_factor=args.crop_points_downscale,
            min_mask_region_area=args.min_region_area,
            output_mode="coco_rle",
            precision=args.precision,
        )

    generator = None
    if todo and not (args.checkpoint or args.model):
        # Unlike `segment`, no silent default: under the official filters the small shipped model keeps
        # almost no masks, and an empty result would read as "nothing in the photo".
        raise UsageError(
            "no model given: pass --checkpoint PATH or --model NAME (the small shipped model,"
            f" --checkpoint {DEFAULT_MODEL}, needs lower filters: --pred-iou-thresh 0.2"
            " --stability-score-thresh 0.03)"
        )
    if todo:
        output.mkdir(parents=True, exist_ok=True)
        progress = tqdm(todo, desc="everything", unit="image", file=sys.stderr)
        for job in progress:
            try:
                image = read_image(job.path, max_pixels=args.max_pixels)
            except ImageReadError as e:
                if input_path.is_file():
                    raise  # a single bad image is bad input: one-line error, exit code 2
                failed.append((job.path, str(e)))
                progress.write(f"skipped: {e}", file=sys.stderr)
                continue
            if generator is None:  # loaded only once an image needs it
                generator = make_generator()
            height, width = image.shape[:2]
            records = generator.generate(image)
            masks_written += len(records)
            if args.format == "png":
                write_label_png(job.outputs[0], records, height, width)
            else:
                doc = sa1b_document(records, image_id=job.image_id, file_name=job.path.name, height=height, width=width)
                write_json(job.outputs[0], doc)
            if args.overlay:
                write_overlay(job.outputs[-1], image, records)
            progress.set_postfix(masks=len(records))

    succeeded = len(todo) - len(failed)
    coco_path = None
    if args.format == "coco":
        parts = [job.outputs[0] for job in jobs if job.outputs[0].exists()]
        if parts:
            docs = [json.loads(p.read_text()) for p in parts]
            coco_path = output / COCO_FILE
            write_json(coco_path, coco_instances_document(docs))

    summary = {
        "images": len(jobs),
        "processed": succeeded,
        "already_done": done_before,
        "failed": [{"image": str(p), "error": e} for p, e in failed],
        "masks": masks_written,
        "output": str(coco_path or output),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{succeeded} image(s) processed, {done_before} already done, {len(failed)} failed; "
            f"{masks_written} masks written to {summary['output']}"
        )
        for p, e in failed:
            print(f"  failed: {e}", file=sys.stderr)
    if succeeded + done_before == 0:
        return 1
    return 0
