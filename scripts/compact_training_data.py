"""A compact copy of a training config's data, small enough to travel to a GPU machine.

The device machine takes at most 64 MiB of files with each command, and the COCO-MVal photos alone
are 129 MB. This writes exactly the images a config trains on (its sources with their include /
exclude / exclude_ids filters applied) under a new data root:

- folder sources: the image re-encoded as JPEG at ``--long-side`` (the training input size, so the
  loader's own resize is nearly a no-op) and its mask resized with nearest neighbour, so that the
  128 ignore band and palette indices keep their values;
- COCO sources: the image re-encoded at its own size (the annotations stay valid unchanged) and the
  annotations file copied;
- the first ``val.limit`` validation images and masks, the ones the trainer's validation reads.

    python scripts/compact_training_data.py src/segany/weights/default_stage3.yaml .carry/data
    # then train with data_root: .carry/data and the filters dropped (they were applied here)
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

from PIL import Image

from segany.train.data import load_source
from segany.train.trainer import load_config


def find_by_stem(folder: Path, stem: str) -> Path:
    hits = [p for p in folder.iterdir() if p.stem == stem]
    if len(hits) != 1:
        raise SystemExit(f"error: expected one file named {stem}.* in {folder}, found {len(hits)}")
    return hits[0]


def save_jpeg(src: Path, dst: Path, long_side: int | None, quality: int) -> tuple[int, int]:
    with Image.open(src) as im:
        im = im.convert("RGB")
        if long_side and max(im.size) > long_side:
            scale = long_side / max(im.size)
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.save(dst.with_suffix(".jpg"), quality=quality)
        return im.size


def save_mask(src: Path, dst: Path, size: tuple[int, int]) -> None:
    with Image.open(src) as im:
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.resize(size, Image.NEAREST).save(dst.with_suffix(".png"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="a training YAML")
    p.add_argument("out", help="the new data root")
    p.add_argument("--long-side", type=int, default=512, help="long side of the folder-source images")
    p.add_argument("--quality", type=int, default=80, help="JPEG quality")
    p.add_argument("--no-val", action="store_true", help="leave the validation images out")
    args = p.parse_args()

    cfg = load_config(args.config)
    root, out = Path(cfg.data_root), Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"error: {out} is not empty")
    for source in cfg.data:
        records = load_source(source, root)
        for record in records:
            stem = record.image_path.stem
            if source.kind == "folder":
                size = save_jpeg(record.image_path, out / source.images / stem, args.long_side, args.quality)
                save_mask(find_by_stem(root / source.masks, stem), out / source.masks / stem, size)
            elif source.kind == "coco":
                save_jpeg(record.image_path, out / source.images / record.image_path.stem, None, args.quality)
            else:
                raise SystemExit(f"error: {source.kind!r} sources are not handled here")
        if source.kind == "coco":
            (out / source.annotations).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / source.annotations, out / source.annotations)
        print(f"{source.kind} {source.images}: {len(records)} images")
    if cfg.val is not None and not args.no_val:
        v = cfg.val
        stems = sorted(q.stem for q in (root / v.images).iterdir() if not v.match or re.search(v.match, q.stem))
        for stem in stems[: v.limit or None]:
            size = save_jpeg(find_by_stem(root / v.images, stem), out / v.images / stem, args.long_side, args.quality)
            save_mask(find_by_stem(root / v.masks, stem), out / v.masks / stem, size)
        print(f"val {v.images}: {len(stems[: v.limit or None])} images")
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {total / 2**20:.1f} MiB")


if __name__ == "__main__":
    sys.exit(main())
