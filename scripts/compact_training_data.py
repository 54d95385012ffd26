"""A compact copy of a training config's data, small enough to travel to a GPU machine.

The device machine takes at most 64 MiB of files with each command, and the COCO-MVal photos alone
are 129 MB. This writes exactly the images a config trains on (its sources with their include /
exclude / exclude_ids filters applied) under a new data root, and a config that reads them:

- folder sources: the image re-encoded as JPEG at ``--long-side`` (the training input size, so the
  loader's own resize is nearly a no-op) and its mask resized with nearest neighbour, so that the
  128 ignore band and palette indices keep their values;
- COCO sources: each image re-encoded at its own size under its own file name (the annotations stay
  valid unchanged), and the annotations of those images alone;
- the validation images the trainer reads (the first ``val.limit`` of ``val.match``), under ``val/``
  in the new root: a separate folder, so that no filter is needed to keep them out of training;
- ``config.yaml``: the input config with ``data_root`` set to the new root, the applied filters
  dropped and ``val`` pointed at ``val/``. A config that trains on an image of its own validation
  split (the same stem or COCO photo) is refused before anything is written.

    python scripts/compact_training_data.py src/segany/weights/default_stage3.yaml .carry/data
    segany train .carry/data/config.yaml          # or carry .carry to a GPU machine and run it there
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import yaml
from PIL import Image

from segany.evaluate.interactive import load_folder_objects
from segany.train.data import MASK_SUFFIXES, DataError, _by_stem, load_source
from segany.train.trainer import ConfigError, load_config, validation_leaks


def save_image(src: Path, dst: Path, long_side: int | None, quality: int) -> tuple[int, int]:
    """``src`` as RGB at ``dst`` (its suffix picks the format), shrunk to ``long_side`` if given."""
    with Image.open(src) as im:
        im = im.convert("RGB")
        if long_side and max(im.size) > long_side:
            scale = long_side / max(im.size)
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.save(dst, quality=quality) if dst.suffix.lower() in (".jpg", ".jpeg") else im.save(dst)
        return im.size


def save_mask(src: Path, dst: Path, size: tuple[int, int]) -> None:
    with Image.open(src) as im:
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.resize(size, Image.NEAREST).save(dst)


def write_coco_subset(src: Path, dst: Path, file_names: set[str]) -> None:
    """The COCO annotations of ``src`` for the images named ``file_names`` only, so that the copy,
    read without the source's filters, gives exactly the filtered records."""
    data = json.loads(src.read_text())
    data["images"] = [im for im in data["images"] if Path(im["file_name"]).name in file_names]
    ids = {im["id"] for im in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(data))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="a training YAML")
    p.add_argument("out", help="the new data root")
    p.add_argument("--long-side", type=int, default=512, help="long side of the folder-source images")
    p.add_argument("--quality", type=int, default=80, help="JPEG quality")
    args = p.parse_args()

    try:
        cfg = load_config(args.config)
        root, out = Path(cfg.data_root), Path(args.out)
        sources = [(source, load_source(source, root)) for source in cfg.data]
        if cfg.val is not None:
            leaks = validation_leaks([r for _, records in sources for r in records], cfg)
            if leaks:
                raise SystemExit(f"error: {args.config} trains on {len(leaks)} validation image(s), e.g. {', '.join(leaks[:3])}")
            # The objects the trainer validates on, chosen as it chooses them.
            val_objects = load_folder_objects(root / cfg.val.images, root / cfg.val.masks, match=cfg.val.match, limit=cfg.val.limit)
    except (ConfigError, DataError) as e:
        raise SystemExit(f"error: {e}") from None
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"error: {out} is not empty")
    for source, records in sources:
        # Masks paired by stem as the loader pairs them (read_folder_pairs), the folder listed once.
        mask_of = _by_stem(root / source.masks, MASK_SUFFIXES) if source.kind == "folder" else {}
        for record in records:
            stem = record.image_path.stem
            if source.kind == "folder":
                size = save_image(record.image_path, out / source.images / f"{stem}.jpg", args.long_side, args.quality)
                save_mask(mask_of[stem], out / source.masks / f"{stem}.png", size)
            elif source.kind == "coco":
                save_image(record.image_path, out / source.images / record.image_path.name, None, args.quality)
            else:
                raise SystemExit(f"error: {source.kind!r} sources are not handled here")
        if source.kind == "coco":
            write_coco_subset(root / source.annotations, out / source.annotations, {r.image_path.name for r in records})
        print(f"{source.kind} {source.images}: {len(records)} images")
    new = dataclasses.replace(
        cfg,
        data_root=str(out),
        data=[dataclasses.replace(d, include=None, exclude=None, exclude_ids_from=None, exclude_ids_include=None) for d in cfg.data],
    )
    if cfg.val is not None:
        v = cfg.val
        images = list(dict.fromkeys(o.image_path for o in val_objects))
        mask_of = _by_stem(root / v.masks, MASK_SUFFIXES)
        for image in images:
            size = save_image(image, out / "val" / v.images / f"{image.stem}.jpg", args.long_side, args.quality)
            save_mask(mask_of[image.stem], out / "val" / v.masks / f"{image.stem}.png", size)
        print(f"val {v.images}: {len(images)} images")
        new = dataclasses.replace(new, val=dataclasses.replace(v, images=f"val/{v.images}", masks=f"val/{v.masks}"))
    (out / "config.yaml").write_text(
        f"# {args.config} on the compact data written by scripts/compact_training_data.py\n"
        + yaml.safe_dump(new.to_dict(), sort_keys=False)
    )
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {total / 2**20:.1f} MiB; config {out / 'config.yaml'}")


if __name__ == "__main__":
    sys.exit(main())
