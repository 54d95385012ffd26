"""Automatic masks as object proposals: class-agnostic mask average recall (AR@K), as the SAM paper
measures its "segment everything" output (section 7.3), computed by pycocotools' COCOeval.

The predictions are what ``segany everything --format coco`` writes (an instances document whose
images are matched to the ground truth by file name), or a COCO results list (``image_id``,
``segmentation``, ``score``) with the ground truth's image ids. Each mask's ``score`` ranks it (for
``segany everything``, its predicted IoU), so AR@K measures the masks and their ranking together.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..train.data import DataError, read_json

AREAS = ("all", "small", "medium", "large")  # COCO's ranges: < 32^2, 32^2..96^2, > 96^2 px


def _results_list(predictions: Any, gt: Any, path: str | os.PathLike) -> tuple[list[dict[str, Any]], set[int]]:
    """COCO results (with the ground truth's image ids) from either layout of the predictions."""
    gt_ids = {img["id"] for img in gt.dataset["images"]}
    if isinstance(predictions, dict) and "images" in predictions and "annotations" in predictions:
        try:
            by_name = {Path(img["file_name"]).name: img["id"] for img in gt.dataset["images"]}
            to_gt = {img["id"]: by_name.get(Path(img["file_name"]).name) for img in predictions["images"]}
            anns = [{**a, "image_id": to_gt.get(a["image_id"])} for a in predictions["annotations"]]
        except (KeyError, TypeError) as e:
            raise DataError(f"{path}: an image or annotation lacks {e}") from None
        unmatched = sorted(Path(img["file_name"]).name for img in predictions["images"] if to_gt[img["id"]] is None)
        if unmatched:
            raise DataError(f"{path}: {len(unmatched)} image(s) are not in the ground truth, e.g. {unmatched[0]}")
        images = {i for i in to_gt.values() if i is not None}
    elif isinstance(predictions, list):
        anns = predictions
        images = {a.get("image_id") for a in anns if isinstance(a, dict)}
        missing = images - gt_ids
        if missing:
            raise DataError(f"{path}: image ids not in the ground truth, e.g. {min(missing, key=str)}")
    else:
        raise DataError(f"{path} is neither a COCO instances document nor a COCO results list")
    out = []
    for a in anns:
        if not isinstance(a, dict) or "segmentation" not in a or "score" not in a:
            raise DataError(f"{path}: every prediction needs a segmentation and a score")
        try:  # polygons, uncompressed or compressed RLE -> compressed RLE at the image's size
            rle = gt.annToRLE({"image_id": a["image_id"], "segmentation": a["segmentation"]})
            score = float(a["score"])
        except (TypeError, ValueError, KeyError, IndexError) as e:
            raise DataError(f"{path}: a prediction of image {a['image_id']} is not a mask with a score ({e})") from None
        image = gt.imgs[a["image_id"]]
        if list(rle["size"]) != [image["height"], image["width"]]:
            h, w = rle["size"]
            raise DataError(f"{path}: a mask of {image.get('file_name', a['image_id'])} is {w}x{h} px, the image"
                            f" {image['width']}x{image['height']}: masks must be at the ground truth's size")
        out.append({"image_id": a["image_id"], "segmentation": rle, "score": score, "category_id": 1})
    return out, images


def evaluate_proposals(
    gt_json: str | os.PathLike, predictions_json: str | os.PathLike, max_dets: Sequence[int] = (10, 100, 1000)
) -> dict[str, Any]:
    """Class-agnostic mask AR@K over the images the predictions cover (every non-crowd ground-truth
    instance of those images is a target; crowd regions are ignored, as COCOeval does).

    Returns ``ar`` (IoU 0.50:0.95) and ``recall_50`` / ``recall_75`` keyed by K, ``ar_by_area`` at
    the largest K, and the counts of images, targets and predictions.
    """
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_doc = read_json(gt_json, "ground truth")
    if not isinstance(gt_doc, dict) or not isinstance(gt_doc.get("images"), list) or "annotations" not in gt_doc:
        raise DataError(f"{gt_json} is not a COCO instances JSON (no images / annotations)")
    predictions = read_json(predictions_json, "predictions")
    gt = COCO()
    gt.dataset = gt_doc
    # Class-agnostic: every target is of one category, so a mask may match any instance.
    gt.dataset["categories"] = [{"id": 1, "name": "object"}]
    try:
        for ann in gt.dataset["annotations"]:
            ann["category_id"] = 1
            ann.setdefault("iscrowd", 0)
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
        for ann in gt.dataset["annotations"]:  # the index holds these same dicts
            if "area" not in ann:
                ann["area"] = float(mask_utils.area(gt.annToRLE(ann)))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise DataError(f"{gt_json} is not a COCO instances JSON: an image or annotation lacks {e}") from None
    results, images = _results_list(predictions, gt, predictions_json)
    if not images:
        raise DataError(f"{predictions_json} covers no image")
    max_dets = sorted({int(k) for k in max_dets})
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results) if results else None
        if dt is None:  # COCO cannot load an empty results list: no proposal recalls nothing
            dt = COCO()
            dt.dataset = {"images": gt.dataset["images"], "annotations": [], "categories": gt.dataset["categories"]}
            dt.createIndex()
        ev = COCOeval(gt, dt, "segm")
        ev.params.imgIds = sorted(images)
        ev.params.useCats = 0
        ev.params.maxDets = max_dets
        ev.evaluate()
        ev.accumulate()
    recall = ev.eval["recall"]  # (IoU thresholds, categories, areas, max dets); -1 where nothing to recall

    def mean(values: np.ndarray) -> float | None:
        values = values[values > -1]
        return round(float(values.mean()), 4) if values.size else None

    iou_50 = int(np.argmin(np.abs(ev.params.iouThrs - 0.5)))
    iou_75 = int(np.argmin(np.abs(ev.params.iouThrs - 0.75)))
    targets = sum(1 for a in gt.dataset["annotations"] if a["image_id"] in images and not a.get("iscrowd", 0))
    return {
        "images": len(images),
        "targets": targets,
        "predictions": len(results),
        "ar": {str(k): mean(recall[:, 0, 0, m]) for m, k in enumerate(max_dets)},
        "recall_50": {str(k): mean(recall[iou_50, 0, 0, m]) for m, k in enumerate(max_dets)},
        "recall_75": {str(k): mean(recall[iou_75, 0, 0, m]) for m, k in enumerate(max_dets)},
        "ar_by_area": {name: mean(recall[:, 0, a, -1]) for a, name in enumerate(AREAS)},
    }
