"""Argument helpers shared by commands."""

from __future__ import annotations

import argparse

import torch

from ..checkpoints import OFFICIAL_CHECKPOINTS, cache_dir, load_model
from ..cli import UsageError
from ..modeling import Sam


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--checkpoint", metavar="PATH", help="a .pth/.pt/.safetensors SAM checkpoint (default: the small model shipped with segany)")
    group.add_argument(
        "--model",
        metavar="NAME",
        help=f"an official model from the cache ({', '.join(OFFICIAL_CHECKPOINTS)}); see 'segany download'",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def pick_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"bad --device {name!r}: {e}") from None


def resolve_model(args: argparse.Namespace) -> Sam:
    """Load the model named by --checkpoint or --model, else the small default shipped in the package."""
    device = pick_device(args.device)
    if args.checkpoint:
        return load_model(args.checkpoint, device=device)
    if args.model:
        if args.model not in OFFICIAL_CHECKPOINTS:
            raise UsageError(f"unknown --model {args.model!r}; choose one of {', '.join(OFFICIAL_CHECKPOINTS)}")
        path = cache_dir() / OFFICIAL_CHECKPOINTS[args.model].filename
        if not path.exists():
            raise UsageError(f"{path} not found; run 'segany download {args.model}' or place the file there by hand")
        return load_model(path, config=args.model, device=device)
    from .. import load_default_model

    return load_default_model(device=device)


def parse_floats(text: str, count: tuple[int, ...], what: str) -> list[float]:
    parts = text.split(",")
    if len(parts) not in count:
        raise UsageError(f"malformed {what} {text!r}: expected {' or '.join(map(str, count))} comma-separated numbers")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise UsageError(f"malformed {what} {text!r}: not a number") from None
    if any(v != v or v in (float("inf"), float("-inf")) for v in values):
        raise UsageError(f"malformed {what} {text!r}: numbers must be finite")
    return values
