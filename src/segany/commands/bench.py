"""segany bench: time the encoder and decoder (and the official package beside them, if installed)."""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import torch

from ..cli import UsageError
from ..io import read_image
from ..predictor import PRECISIONS

EXAMPLE = "segany bench --model-type vit_b --image photo.jpg --precision fp32 bf16 --repeats 3"
STEPS = ("encoder", "decoder", "everything")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="time set_image and predict; side by side with segment_anything when it is installed",
        epilog=f"example: {EXAMPLE}",
        description="Weights are random (official layout) unless --checkpoint is given; the official package, "
        "when importable, gets the same weights and images, and calls alternate so load hits both alike.",
    )
    p.add_argument("--model-type", default="vit_b", choices=("vit_b", "vit_l", "vit_h"), help="architecture of the random weights (ignored with --checkpoint)")
    p.add_argument("--checkpoint", metavar="PATH", help="weights (default: random, same for both packages)")
    p.add_argument("--image", action="append", default=[], metavar="PATH", help="image(s) (default: a synthetic 640x480)")
    p.add_argument(
        "--step", nargs="+", default=["encoder", "decoder"], choices=STEPS,
        help="what to time (everything: automatic masks, minutes per image for the official package)",
    )
    p.add_argument("--points-per-side", type=int, default=32, help="grid of the everything step")
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=PRECISIONS, help="encoder precisions")
    p.add_argument("--prompts", type=int, default=64, help="point prompts for the decoder step")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (medians are reported)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-official", action="store_true", help="do not time segment_anything even if installed")
    p.add_argument("--json", action="store_true", help="print the full results as JSON")
    p.set_defaults(func=run)


def synthetic_image(height: int = 480, width: int = 640) -> np.ndarray:
    """A deterministic photo stand-in: smooth gradients with a few flat shapes."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // (width + height)], -1)
    image[height // 4 : height // 2, width // 5 : width // 2] = (200, 40, 40)
    image[(yy - 3 * height // 4) ** 2 + (xx - 3 * width // 4) ** 2 < (height // 6) ** 2] = (30, 160, 60)
    return image.astype(np.uint8)


def _row(name: str, ours: float | None, theirs: float | None, unit: str = "s") -> str:
    scale = 1000.0 if unit == "ms" else 1.0

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v * scale:.3f} {unit}" if unit == "s" else f"{v * scale:.1f} {unit}"

    ratio = f"{theirs / ours:.2f}x" if ours and theirs else "-"
    return f"{name:34s} {fmt(ours):>12s} {fmt(theirs):>12s} {ratio:>9s}"


def run(args: argparse.Namespace) -> int:
    from .. import benchmark

    if args.repeats < 1 or args.prompts < 1 or args.points_per_side < 1:
        raise UsageError("--repeats, --prompts and --points-per-side must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    images = [read_image(path) for path in args.image] or [synthetic_image()]
    model, official = benchmark.paired_models(args.model_type, args.checkpoint, not args.no_official)
    results: dict = {"model_type": model.config.name, "weights": args.checkpoint or "random"}
    if "encoder" in args.step:
        results["encoder"] = benchmark.bench_encoder(model, official, images, args.precision, args.repeats)
    if "decoder" in args.step:
        results["decoder"] = benchmark.bench_decoder(model, official, images[0], args.prompts, args.repeats)
    if "everything" in args.step:
        results["everything"] = benchmark.bench_everything(
            model, official, images[0], args.points_per_side, args.repeats
        )
    results["environment"] = benchmark.environment()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0

    def med(section: str, key: str) -> float | None:
        t = results.get(section, {}).get("times", {}).get(key)
        return statistics.median(t["runs"]) if t else None

    env = results["environment"]
    print(
        f"segany bench: {results['model_type']}, {results['weights']} weights, torch {env['torch']}, "
        f"{env['threads']} threads, official package {'on' if official is not None else 'off'}"
    )
    print(f"{'step':34s} {'segany':>12s} {'official':>12s} {'speed-up':>9s}")
    if "encoder" in results:
        base = med("encoder", "official_fp32")
        for p in args.precision:
            print(_row(f"set_image, {p}", med("encoder", f"segany_{p}"), base))
        if official is not None:
            print(_row("set_image, official bf16 autocast", None, med("encoder", "official_bf16_autocast")))
        for key, why in results["encoder"].get("not_run", {}).items():
            print(f"  {key}: not timed, {why}")
        for key, value in results["encoder"]["agreement"].items():
            print(f"  {key}: {json.dumps(value)}")
    if "decoder" in results:
        n = results["decoder"]["num_prompts"]
        base = med("decoder", "official_predict_each")
        each = med("decoder", "segany_predict_each")
        batch = med("decoder", "segany_predict_batch")
        print(_row("predict, per prompt", each and each / n, base and base / n, "ms"))
        print(_row(f"{n} prompts: predict_batch vs {n} calls", batch, base))
        mask_each, mask_base = med("decoder", "segany_predict_mask_each"), med("decoder", "official_predict_mask_each")
        print(_row("predict with a mask prompt, per prompt", mask_each and mask_each / n, mask_base and mask_base / n, "ms"))
        if "bf16_mask_iou_vs_fp32" in results["decoder"]:
            fast_each = med("decoder", "segany_bf16_predict_each")
            print(_row("predict, per prompt, bf16 decoder", fast_each and fast_each / n, base and base / n, "ms"))
            print(_row(f"{n} prompts, batch, bf16 decoder", med("decoder", "segany_bf16_predict_batch"), base))
            print(f"  bf16_mask_iou_vs_fp32: {json.dumps(results['decoder']['bf16_mask_iou_vs_fp32'])}")
    if "everything" in results:
        everything = results["everything"]
        side = everything["params"]["points_per_side"]
        print(_row(f"everything, {side}x{side} points", med("everything", "segany_generate"), med("everything", "official_generate")))
        if "identity" in everything:
            same = everything["identity"]
            print(f"  same masks (IoU >= 0.99): {same['matched']} of {same['official']} official, {same['ours']} segany")
    return 0
