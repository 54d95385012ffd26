"""Annotation export formats of the server: COCO instances JSON, SA-1B JSON, and an index PNG.

Kept deliberately small: each writer takes plain records (image info + annotations holding COCO
RLE) so that it can be swapped for :mod:`segany.writers` once that module lands, without
touching the API.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..masks import decode_rle


@dataclass
class Annotation:
    """One saved object: a COCO compressed RLE at the image's size, a label and where it came from."""

    id: int
    label: str
    segmentation: dict[str, Any]  # {"size": [H, W], "counts": str}
    score: float | None = None
    stability_score: float | None = None
    point_coords: list[list[float]] = field(default_factory=list)
    point_labels: list[int] = field(default_factory=list)
    box: list[float] | None = None
    source: str = "click"

    @property
    def area(self) -> int:
        return int(mask_utils.area(_rle_bytes(self.segmentation)))

    @property
    def bbox(self) -> list[float]:
        """XYWH, as COCO and SA-1B store it."""
        return [float(v) for v in mask_utils.toBbox(_rle_bytes(self.segmentation))]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "segmentation": self.segmentation,
            "area": self.area,
            "bbox": self.bbox,
            "score": self.score,
            "stability_score": self.stability_score,
            "point_coords": self.point_coords,
            "point_labels": self.point_labels,
            "box": self.box,
            "source": self.source,
        }


@dataclass
class ImageInfo:
    id: int
    file_name: str
    width: int
    height: int


def _rle_bytes(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def coco_json(items: list[tuple[ImageInfo, list[Annotation]]]) -> dict[str, Any]:
    """COCO instances JSON; one category per distinct label, in order of first use."""
    categories: dict[str, int] = {}
    images, annotations = [], []
    next_id = 1
    for info, anns in items:
        images.append({"id": info.id, "file_name": info.file_name, "width": info.width, "height": info.height})
        for ann in anns:
            category_id = categories.setdefault(ann.label, len(categories) + 1)
            record = {
                "id": next_id,
                "image_id": info.id,
                "category_id": category_id,
                "segmentation": ann.segmentation,
                "area": ann.area,
                "bbox": ann.bbox,
                "iscrowd": 0,
            }
            if ann.score is not None:
                record["score"] = ann.score
            annotations.append(record)
            next_id += 1
    return {
        "info": {"description": "segany annotations"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name, "supercategory": ""} for name, i in categories.items()],
    }


def sa1b_json(info: ImageInfo, anns: list[Annotation]) -> dict[str, Any]:
    """One image in the SA-1B layout (the per-image JSON of the Segment Anything dataset)."""
    return {
        "image": {"image_id": info.id, "file_name": info.file_name, "width": info.width, "height": info.height},
        "annotations": [
            {
                "id": ann.id,
                "segmentation": ann.segmentation,
                "bbox": ann.bbox,
                "area": ann.area,
                "predicted_iou": ann.score,
                "stability_score": ann.stability_score,
                "point_coords": ann.point_coords,
                "crop_box": [0, 0, info.width, info.height],
                "label": ann.label,
            }
            for ann in anns
        ],
    }


def index_png(info: ImageInfo, anns: list[Annotation]) -> bytes:
    """A PNG whose pixel value is the 1-based index of the object (later objects on top).

    8-bit with a colour palette (so it is also viewable) up to 255 objects, 16-bit grey beyond.
    """
    dtype = np.uint8 if len(anns) <= 255 else np.uint16
    index = np.zeros((info.height, info.width), dtype=dtype)
    for i, ann in enumerate(anns, start=1):
        index[decode_rle(ann.segmentation)] = i
    if dtype == np.uint8:
        picture = Image.frombytes("P", (info.width, info.height), index.tobytes())
        rng = np.random.default_rng(0)
        palette = rng.integers(64, 256, size=(256, 3), dtype=np.uint8)
        palette[0] = 0
        picture.putpalette(palette.reshape(-1).tolist())
    else:
        picture = Image.fromarray(index.astype(np.int32)).convert("I;16")
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()
