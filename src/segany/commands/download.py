"""segany download: fetch official checkpoints into the cache, resumable and sha256-verified."""

from __future__ import annotations

import argparse

from tqdm import tqdm

from ..checkpoints import OFFICIAL_CHECKPOINTS, cache_dir, download_checkpoint

EXAMPLE = "segany download vit_b"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download",
        help="download an official SAM checkpoint into the cache ($SEGANY_CACHE, default ~/.cache/segany)",
        epilog=f"example: {EXAMPLE}",
    )
    p.add_argument("model", choices=sorted(OFFICIAL_CHECKPOINTS), help="which official model")
    p.add_argument("--dir", default=None, help=f"target folder (default: {cache_dir()})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = OFFICIAL_CHECKPOINTS[args.model]
    with tqdm(total=spec.size, unit="B", unit_scale=True, desc=spec.filename) as bar:

        def progress(done: int, total: int) -> None:
            bar.n = done
            bar.refresh()

        path = download_checkpoint(args.model, args.dir, progress=progress)
    print(path)
    return 0
