"""Writing automatic-mask records: SA-1B per-image JSON, COCO instances JSON, PNG label maps and
overlay pictures. Every file is written atomically (a reader never sees a partial file).

Records are those of :meth:`segany.automatic.SamAutomaticMaskGenerator.generate`, in any
output mode (binary masks, uncompressed or COCO RLE).
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from .io import atomic_write_bytes, save_png
from .masks import decode_rle, encode_rle, mask_extent, uncompressed_rle_to_coco
from .visualize import overlay_masks

ANNOTATION_FIELDS = ("bbox", "area", "predicted_iou", "stability_score", "crop_box", "point_coords")


def to_coco_rle(segmentation: Any) -> dict[str, Any]:
    """A record's segmentation (bool array, uncompressed or COCO RLE) -> COCO RLE with str counts."""
    if isinstance(segmentation, dict):
        if isinstance(segmentation.get("counts"), list):
            return uncompressed_rle_to_coco(segmentation)
        counts = segmentation["counts"]
        counts = counts.decode("ascii") if isinstance(counts, bytes) else counts
        return {"size": list(segmentation["size"]), "counts": counts}
    return encode_rle(np.asarray(segmentation, dtype=bool))


def to_mask(segmentation: Any) -> np.ndarray:
    """A record's segmentation (bool array, uncompressed or COCO RLE) -> (H, W) bool."""
    if isinstance(segmentation, dict):
        return decode_rle(segmentation)
    return np.asarray(segmentation, dtype=bool)


def _json_number(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_json_number(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _annotation(record: dict[str, Any], annotation_id: int) -> dict[str, Any]:
    ann: dict[str, Any] = {"id": annotation_id, "segmentation": to_coco_rle(record["segmentation"])}
    for key in ANNOTATION_FIELDS:
        ann[key] = _json_number(record[key])
    return ann


def sa1b_document(
    records: Sequence[dict[str, Any]], *, image_id: int, file_name: str, height: int, width: int, first_id: int = 1
) -> dict[str, Any]:
    """The SA-1B per-image layout: ``{"image": {...}, "annotations": [...]}``."""
    return {
        "image": {"image_id": image_id, "width": int(width), "height": int(height), "file_name": file_name},
        "annotations": [_annotation(r, first_id + i) for i, r in enumerate(records)],
    }


def write_json(path: str | os.PathLike, document: Any) -> None:
    atomic_write_bytes(path, json.dumps(document, separators=(",", ":")).encode("utf-8"))


def write_sa1b(
    path: str | os.PathLike,
    records: Sequence[dict[str, Any]],
    *,
    image_id: int,
    file_name: str,
    height: int,
    width: int,
) -> None:
    write_json(path, sa1b_document(records, image_id=image_id, file_name=file_name, height=height, width=width))


def coco_instances_document(images: Iterable[dict[str, Any]], category_name: str = "object") -> dict[str, Any]:
    """COCO instances JSON from SA-1B per-image documents (see :func:`sa1b_document`).

    Every mask becomes an instance of one class-agnostic category; ``score``, ``predicted_iou``,
    ``stability_score``, ``point_coords`` and ``crop_box`` are kept on each annotation.
    """
    out_images, annotations = [], []
    for doc in images:
        info = doc["image"]
        out_images.append(
            {"id": info["image_id"], "file_name": info["file_name"], "width": info["width"], "height": info["height"]}
        )
        for ann in doc["annotations"]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": info["image_id"],
                    "category_id": 1,
                    "segmentation": ann["segmentation"],
                    "area": ann["area"],
                    "bbox": ann["bbox"],
                    "iscrowd": 0,
                    "score": ann["predicted_iou"],
                    "predicted_iou": ann["predicted_iou"],
                    "stability_score": ann["stability_score"],
                    "point_coords": ann["point_coords"],
                    "crop_box": ann["crop_box"],
                }
            )
    return {
        "info": {"description": "segany automatic masks"},
        "images": out_images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": category_name, "supercategory": category_name}],
    }


class RecordMasks(Sequence[np.ndarray]):
    """The records' masks as (H, W) bool arrays, decoded when accessed: writers that go through
    the masks one at a time never hold them all (140 masks of a 48-megapixel photo are 6.7 GB)."""

    def __init__(self, records: Sequence[dict[str, Any]]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        return to_mask(self.records[index]["segmentation"])

    def areas(self) -> list[int]:
        """Pixel counts: the records' ``area`` where given, else counted."""
        return [int(r["area"]) if "area" in r else int(np.count_nonzero(self[i])) for i, r in enumerate(self.records)]


def label_map(records: Sequence[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """(H, W) label image: 0 is background, k is the k-th record (1-based).

    Larger masks are painted first, so where masks overlap the smaller one shows. uint8 when
    there are fewer than 256 records, else uint16. Masks are decoded one at a time.
    """
    dtype = np.uint8 if len(records) < 256 else np.uint16
    if len(records) >= 65536:
        raise ValueError(f"too many masks for a 16-bit label map: {len(records)}")
    labels = np.zeros((height, width), dtype=dtype)
    masks = RecordMasks(records)
    areas = masks.areas()
    for index in sorted(range(len(masks)), key=lambda i: -areas[i]):
        mask = masks[index]
        extent = mask_extent(mask)
        if extent is not None:
            labels[extent][mask[extent]] = index + 1
    return labels


def write_label_png(path: str | os.PathLike, records: Sequence[dict[str, Any]], height: int, width: int) -> None:
    save_png(path, label_map(records, height, width))


def overlay_picture(image: np.ndarray, records: Sequence[dict[str, Any]]) -> np.ndarray:
    """The image with every mask in its own colour and outlined."""
    masks = RecordMasks(records)
    return overlay_masks(image, masks, areas=masks.areas())


def write_overlay(path: str | os.PathLike, image: np.ndarray, records: Sequence[dict[str, Any]]) -> None:
    """Save :func:`overlay_picture` as PNG, or JPEG when ``path`` ends in .jpg/.jpeg."""
    picture = overlay_picture(image, records)
    if str(path).lower().endswith((".jpg", ".jpeg")):
        buf = io.BytesIO()
        Image.fromarray(picture).save(buf, format="JPEG", quality=90)
        atomic_write_bytes(path, buf.getvalue())
    else:
        save_png(path, picture)
