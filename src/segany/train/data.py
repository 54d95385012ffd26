"""Training data: readers for three layouts and the augmentations of the default model.

Every reader returns :class:`ImageRecord` objects: an image path plus a function that loads its
object masks as an (N, H, W) uint8 array with 1 = object, 0 = background and :data:`IGNORE` = pixels
left out of the loss and of IoU (the 128 band of GrabCut-style masks, palette index 255).

Layouts:

- SA-1B: ``sa_*.jpg`` with a ``sa_*.json`` beside it holding ``annotations[*].segmentation`` as COCO RLE.
- COCO instances JSON: polygons and RLE; crowd annotations are skipped.
- Folder pairs: ``images/`` + ``masks/`` paired by file stem (extension and its case do not matter);
  binary (0/255 or 0/1) or grayscale masks with 128 = ignore, or palette masks with one object per index.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from ..io import HIGH_DEPTH_MODES, read_image
from ..masks import decode_rle
from ..modeling.sam import PIXEL_MEAN

IGNORE = 255
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
MASK_SUFFIXES = {".png", ".bmp", ".tif", ".tiff", ".gif", ".jpg", ".jpeg"}


class DataError(ValueError):
    """A data folder or annotation file is missing or malformed."""


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The JSON document at ``path``; a missing, unreadable or non-JSON file is a DataError naming ``what``."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise DataError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"{what} {path} is not a JSON file") from None


@dataclass
class ImageRecord:
    """One training image and a loader for its object masks ((N, H, W) uint8, 1/0/IGNORE); for
    mask files also loaders of one object and of the count, which need not build every mask."""

    image_path: Path
    load_masks: Callable[[], np.ndarray] = field(repr=False)
    name: str = ""
    load_object: Callable[[int], np.ndarray] | None = field(default=None, repr=False)  # (1, H, W)
    count_objects: Callable[[], int] | None = field(default=None, repr=False)

    def object_mask(self, index: int) -> np.ndarray:
        """(H, W) uint8 mask of one object."""
        return self.load_object(index)[0] if self.load_object is not None else self.load_masks()[index]

    def object_count(self) -> int:
        return self.count_objects() if self.count_objects is not None else len(self.load_masks())

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(self.image_path)
        masks = self.load_masks()
        if masks.shape[1:] != image.shape[:2]:
            raise DataError(f"mask size {masks.shape[1:]} differs from image size {image.shape[:2]}: {self.image_path}")
        return image, masks


# ---------------------------------------------------------------------------------------------
# Mask files


# Pillow modes of integer label images (16- and 32-bit): one object per value.
LABEL_MODES = tuple(mode for mode in HIGH_DEPTH_MODES if mode != "F")


def read_mask_file(path: str | os.PathLike, index: int | None = None) -> np.ndarray:
    """(N, H, W) uint8 objects of one mask file; with ``index``, only that object, (1, H, W).

    Palette ("P") images give one object per index other than 0 (background) and 255 (ignore);
    16- and 32-bit integer images are instance label maps (as microscopy tools write them): one
    object per non-zero value, in increasing order, no ignore value; other images are read as 8-bit
    grayscale: 128 is ignore, any other non-zero value is the object.
    """
    with Image.open(path) as im:
        if im.mode == "F":
            raise DataError(f"{path}: a floating-point image is not a mask (give 8-bit binary, palette or integer label masks)")
        if (label_image := _label_image(im)) is not None:
            labels, ignore = label_image
            values = _label_values(labels, ignore)
            if index is not None:
                if not 0 <= index < len(values):
                    raise DataError(f"{path}: no object {index} (it holds {len(values)})")
                values = [values[index]]
            return _label_masks(labels, values, ignore, path)
        gray = np.asarray(im.convert("L"))
    if index not in (None, 0):
        raise DataError(f"{path}: no object {index} (a binary mask holds one)")
    out = (gray > 0).astype(np.uint8)
    out[gray == 128] = IGNORE
    return out[None]


def count_mask_objects(path: str | os.PathLike) -> int:
    """How many objects :func:`read_mask_file` finds in a mask file, without building their masks."""
    with Image.open(path) as im:
        if (label_image := _label_image(im)) is not None:
            return len(_label_values(*label_image))
    return 1


# Object masks are one byte per pixel each: a label map of thousands of instances would need
# gigabytes as a stack, so it is refused with a message instead of exhausting memory (one object
# at a time, ``read_mask_file(path, index)``, works at any count).
MAX_LABEL_MASK_BYTES = 1 << 30


def _label_image(im: Image.Image) -> tuple[np.ndarray, int | None] | None:
    """The labels and ignore value of a palette (255 = ignore) or integer label image; None for
    8-bit grayscale masks."""
    if im.mode == "P":
        return np.asarray(im), 255
    if im.mode in LABEL_MODES:
        return np.asarray(im), None
    return None


def _label_values(labels: np.ndarray, ignore_value: int | None) -> list[int]:
    return [int(v) for v in np.unique(labels) if v != 0 and v != ignore_value]


def _label_masks(labels: np.ndarray, values: list[int], ignore_value: int | None, path: str | os.PathLike) -> np.ndarray:
    """(N, H, W) uint8 objects of a label image, one per value of ``values``; pixels of
    ``ignore_value`` are IGNORE in every object."""
    if len(values) * labels.size > MAX_LABEL_MASK_BYTES:
        raise DataError(
            f"{path}: {len(values)} objects at {labels.shape[1]}x{labels.shape[0]} would take "
            f"{len(values) * labels.size / 2**30:.1f} GiB as object masks (limit {MAX_LABEL_MASK_BYTES / 2**30:.0f} GiB); "
            "split the image into tiles"
        )
    if not values:
        return np.zeros((0, *labels.shape), np.uint8)
    out = np.stack([labels == v for v in values]).astype(np.uint8)
    if ignore_value is not None:
        out[:, labels == ignore_value] = IGNORE
    return out


def _by_stem(folder: Path, suffixes: set[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."):
            if p.stem in found:
                raise DataError(f"two files with stem {p.stem!r} in {folder}: {found[p.stem].name}, {p.name}")
            found[p.stem] = p
    return found


def read_folder_pairs(images_dir: str | os.PathLike, masks_dir: str | os.PathLike) -> list[ImageRecord]:
    """Records for ``images/`` + ``masks/`` paired by stem; images without a mask are skipped."""
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            raise DataError(f"not a folder: {d}")
    images = _by_stem(images_dir, IMAGE_SUFFIXES)
    masks = _by_stem(masks_dir, MASK_SUFFIXES)
    stems = sorted(set(images) & set(masks))
    if not stems:
        raise DataError(f"no image in {images_dir} has a mask with the same stem in {masks_dir}")
    return [
        ImageRecord(
            images[s],
            partial(read_mask_file, masks[s]),
            name=s,
            load_object=partial(read_mask_file, masks[s]),
            count_objects=partial(count_mask_objects, masks[s]),
        )
        for s in stems
    ]


# ---------------------------------------------------------------------------------------------
# COCO instances JSON and SA-1B


def _decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons
        rles = mask_utils.frPyObjects(segmentation, height, width)
        return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    if isinstance(segmentation, dict):
        return decode_rle(segmentation)
    raise DataError(f"unknown segmentation type {type(segmentation).__name__}")


def _annotation_masks(annotations: Sequence[dict], height: int, width: int) -> np.ndarray:
    if not annotations:
        return np.zeros((0, height, width), np.uint8)
    return np.stack([_decode_segmentation(a["segmentation"], height, width) for a in annotations]).astype(np.uint8)


def read_coco(
    annotation_file: str | os.PathLike,
    images_dir: str | os.PathLike,
    min_area: float = 0.0,
    image_filter: Callable[[str], bool] | None = None,
) -> list[ImageRecord]:
    """Records for a COCO instances JSON: every non-crowd instance of at least ``min_area`` pixels."""
    annotation_file, images_dir = Path(annotation_file), Path(images_dir)
    data = read_json(annotation_file, "COCO annotations")
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise DataError(f"{annotation_file} is not a COCO instances JSON (no 'images'/'annotations')")
    per_image: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        if a.get("iscrowd", 0) or a.get("area", 1) < min_area:
            continue
        per_image.setdefault(a["image_id"], []).append(a)
    records = []
    for info in data["images"]:
        anns = per_image.get(info["id"])
        if not anns or (image_filter is not None and not image_filter(info["file_name"])):
            continue
        path = images_dir / info["file_name"]
        h, w = info["height"], info["width"]
        records.append(ImageRecord(path, partial(_annotation_masks, anns, h, w), name=Path(path).stem))
    return records


def read_sa1b(folder: str | os.PathLike) -> list[ImageRecord]:
    """Records for the SA-1B layout: each image with a JSON of the same stem beside it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"not a folder: {folder}")
    images = _by_stem(folder, IMAGE_SUFFIXES)
    records = []
    for stem, path in images.items():
        ann = folder / f"{stem}.json"
        if ann.exists():
            records.append(ImageRecord(path, partial(_read_sa1b_masks, ann), name=stem))
    if not records:
        raise DataError(f"no SA-1B image/JSON pairs in {folder}")
    return records


def _read_sa1b_masks(path: Path) -> np.ndarray:
    data = read_json(path, "SA-1B annotation")
    try:
        info = data["image"]
        height, width = info["height"], info["width"]
    except (KeyError, TypeError) as e:
        raise DataError(f"{path} is not an SA-1B annotation JSON ({type(e).__name__}: {e})") from None
    return _annotation_masks(data.get("annotations", []), height, width)


# ---------------------------------------------------------------------------------------------
# Data sources from a config


@dataclass
class DataSource:
    """One dataset in a training config. ``kind``: "folder", "coco" or "sa1b".

    ``include``/``exclude`` are regexes on the image stem; ``exclude_ids_from`` names a folder
    whose stems' COCO ids (the 12-digit number in the name) are dropped here: keeps validation
    images out of training when the same photo appears in both splits.
    """

    kind: str
    images: str
    masks: str | None = None
    annotations: str | None = None
    include: str | None = None
    exclude: str | None = None
    exclude_ids_from: str | None = None
    exclude_ids_include: str | None = None


COCO_ID = re.compile(r"(\d{12})")


def coco_ids(folder: str | os.PathLike, include: str | None = None) -> set[str]:
    pattern = re.compile(include) if include else None
    ids = set()
    for p in Path(folder).iterdir():
        if pattern is not None and not pattern.search(p.stem):
            continue
        m = COCO_ID.search(p.stem)
        if m:
            ids.add(m.group(1))
    return ids


def load_source(source: DataSource, root: str | os.PathLike = ".") -> list[ImageRecord]:
    root = Path(root)
    images = root / source.images
    if source.kind == "folder":
        if source.masks is None:
            raise DataError("a 'folder' data source needs 'masks'")
        records = read_folder_pairs(images, root / source.masks)
    elif source.kind == "coco":
        if source.annotations is None:
            raise DataError("a 'coco' data source needs 'annotations'")
        records = read_coco(root / source.annotations, images)
    elif source.kind == "sa1b":
        records = read_sa1b(images)
    else:
        raise DataError(f"unknown data source kind {source.kind!r} (folder, coco or sa1b)")
    if source.include:
        records = [r for r in records if re.search(source.include, r.name)]
    if source.exclude:
        records = [r for r in records if not re.search(source.exclude, r.name)]
    if source.exclude_ids_from:
        banned = coco_ids(root / source.exclude_ids_from, source.exclude_ids_include)
        records = [r for r in records if not ((m := COCO_ID.search(r.name)) and m.group(1) in banned)]
    return records


# ---------------------------------------------------------------------------------------------
# Augmentation and the training dataset


@dataclass
class AugmentConfig:
    """Augmentations. ``scale_range`` multiplies the long side before crop/pad (1, 1 = plain
    resize + pad; (0.1, 2.0) = large-scale jitter); ``copy_paste_prob`` pastes objects of another
    image; ``color_jitter`` is the max relative change of brightness, contrast and saturation."""

    hflip_prob: float = 0.5
    scale_range: tuple[float, float] = (1.0, 1.0)
    color_jitter: float = 0.0
    copy_paste_prob: float = 0.0
    copy_paste_max_objects: int = 3
    min_mask_pixels: int = 16


@dataclass
class Sample:
    """image (3, S, S) float 0..255, padded with the pixel mean; masks (M, S, S) uint8 1/0/IGNORE,
    padding = IGNORE."""

    image: torch.Tensor
    masks: torch.Tensor


def _resize(image: np.ndarray, masks: np.ndarray, long_side: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    nh, nw = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
    image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    if len(masks):
        masks = np.stack([cv2.resize(m, (nw, nh), interpolation=cv2.INTER_NEAREST) for m in masks])
    else:
        masks = np.zeros((0, nh, nw), np.uint8)
    return image, masks


def _crop_or_pad(image: np.ndarray, masks: np.ndarray, size: int, rng: np.random.Generator):
    h, w = image.shape[:2]
    y0 = int(rng.integers(0, h - size + 1)) if h > size else 0
    x0 = int(rng.integers(0, w - size + 1)) if w > size else 0
    image = image[y0 : y0 + size, x0 : x0 + size]
    masks = masks[:, y0 : y0 + size, x0 : x0 + size]
    h, w = image.shape[:2]
    out_image = np.zeros((size, size, 3), np.uint8)
    out_image[:h, :w] = image
    out_masks = np.full((len(masks), size, size), IGNORE, np.uint8)
    out_masks[:, :h, :w] = masks
    valid = np.zeros((size, size), bool)
    valid[:h, :w] = True
    return out_image, out_masks, valid


def _color_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    x = image.astype(np.float32)
    b, c, s = 1 + rng.uniform(-strength, strength, size=3)
    x = x * b
    x = (x - x.mean()) * c + x.mean()
    gray = x.mean(axis=2, keepdims=True)
    x = (x - gray) * s + gray
    return np.clip(x, 0, 255).astype(np.uint8)


class InteractiveDataset(torch.utils.data.Dataset):
    """Training samples for promptable segmentation. Randomness comes from the generator passed
    to :meth:`sample`, so a run is reproducible from (seed, step) and resumes exactly."""

    def __init__(
        self, records: Sequence[ImageRecord], img_size: int, max_masks: int = 64, augment: AugmentConfig | None = None
    ) -> None:
        if not records:
            raise DataError("no training images")
        self.records = list(records)
        self.img_size = img_size
        self.max_masks = max_masks
        self.augment = augment or AugmentConfig()

    def __len__(self) -> int:
        return len(self.records)

    def _view(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One augmented (image, masks, valid) in the S x S frame."""
        aug = self.augment
        image, masks = self.records[index].load()
        if rng.random() < aug.hflip_prob:
            image, masks = image[:, ::-1].copy(), masks[:, :, ::-1].copy()
        lo, hi = aug.scale_range
        scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else lo
        image, masks = _resize(image, masks, max(8, int(round(self.img_size * scale))))
        image, masks, valid = _crop_or_pad(image, masks, self.img_size, rng)
        if aug.color_jitter > 0:
            image = _color_jitter(image, aug.color_jitter, rng)
        return image, masks, valid

    def sample(self, index: int, rng: np.random.Generator) -> Sample:
        aug = self.augment
        image, masks, valid = self._view(index, rng)
        if aug.copy_paste_prob > 0 and len(self.records) > 1 and rng.random() < aug.copy_paste_prob:
            other = int(rng.integers(0, len(self.records) - 1))
            other += other >= index
            src_image, src_masks, _ = self._view(other, rng)
            objects = [i for i in range(len(src_masks)) if (src_masks[i] == 1).sum() >= aug.min_mask_pixels]
            if objects:
                count = int(rng.integers(1, min(aug.copy_paste_max_objects, len(objects)) + 1))
                chosen = rng.choice(objects, size=count, replace=False)
                pasted = src_masks[chosen] == 1
                region = pasted.any(axis=0) & valid
                image = np.where(region[..., None], src_image, image)
                # Pasted objects occlude what lies under them.
                masks = np.where(region[None] & (masks != IGNORE), 0, masks).astype(np.uint8)
                new = (pasted & region[None]).astype(np.uint8)
                new[:, ~valid] = IGNORE
                masks = np.concatenate([masks, new])
        keep = [i for i in range(len(masks)) if (masks[i] == 1).sum() >= aug.min_mask_pixels]
        if len(keep) > self.max_masks:
            keep = sorted(rng.choice(keep, size=self.max_masks, replace=False).tolist())
        masks = masks[keep] if keep else np.zeros((0, self.img_size, self.img_size), np.uint8)
        # Pad with the pixel mean: zero after normalisation, as the model's own preprocess pads.
        padded = np.where(valid[..., None], image.astype(np.float32), np.float32(PIXEL_MEAN))
        return Sample(
            image=torch.from_numpy(np.ascontiguousarray(padded)).permute(2, 0, 1),
            masks=torch.from_numpy(np.ascontiguousarray(masks)),
        )

    def __getitem__(self, index: int) -> Sample:
        return self.sample(index, np.random.default_rng(index))
