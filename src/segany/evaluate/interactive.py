"""Interactive segmentation evaluation: the click protocol of RITM and SAM.

Per object: the first click at the object's interior point farthest from its boundary; each next
click at the interior point farthest from the boundary of the largest error region (positive on a
false negative, negative on a false positive), with the previous low-res logits fed back as the mask
prompt. Click 1 is ambiguous, so the model predicts 3 masks: the top-score one is used (and fed
back); the oracle (best of 3) is reported beside it. Later clicks use the single output.

Reports mIoU after 1..max_clicks clicks and NoC@85/90 (the clicks needed to reach that IoU, capped
at max_clicks, with the count of objects that never get there). Ignore pixels (value 128 in
GrabCut-style masks) count neither as object nor as background.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
from PIL import Image

from ..clicks import ClickSegmenter, ZoomIn
from ..refine import EdgeRefine, refine_mask
from .clicker import first_click, next_click
from ..io import atomic_write_bytes, read_image
from ..train.data import IGNORE, DataError, read_coco, read_folder_pairs


@dataclass(frozen=True)
class EvalObject:
    """One target: an image and a loader for its (H, W) uint8 mask (1 / 0 / IGNORE)."""

    key: str
    image_path: Path
    load_mask: Callable[[], np.ndarray]


@dataclass(frozen=True)
class EvalOptions:
    max_clicks: int = 20
    long_side: int | None = 500  # resize images (and masks) so the long side is this; None: as is
    thresholds: tuple[float, ...] = (0.85, 0.90)


def _select(keys: Sequence[str], match: str | None, limit: int | None, every: int = 1) -> list[int]:
    pattern = re.compile(match) if match else None
    chosen = [i for i, k in enumerate(keys) if pattern is None or pattern.search(k)]
    chosen = chosen[:: max(1, every)]
    return chosen[:limit] if limit else chosen


def load_folder_objects(
    images_dir: str | os.PathLike,
    masks_dir: str | os.PathLike,
    match: str | None = None,
    limit: int | None = None,
    every: int = 1,
) -> list[EvalObject]:
    """One object per mask file (or per palette index) of ``images/`` + ``masks/`` pairs."""
    records = read_folder_pairs(images_dir, masks_dir)
    records = [records[i] for i in _select([r.name for r in records], match, None, every)]
    objects = []
    for r in records:
        count = r.object_count()
        for j in range(count):
            key = r.name if count == 1 else f"{r.name}#{j}"
            objects.append(EvalObject(key, r.image_path, (lambda r=r, j=j: r.object_mask(j))))
    return objects[:limit] if limit else objects


def load_coco_objects(
    annotation_file: str | os.PathLike,
    images_dir: str | os.PathLike,
    match: str | None = None,
    limit: int | None = None,
    every: int = 1,
    min_area: float = 0.0,
) -> list[EvalObject]:
    """One object per non-crowd instance of a COCO instances JSON."""
    records = read_coco(annotation_file, images_dir, min_area=min_area)
    records = [records[i] for i in _select([r.name for r in records], match, None, every)]
    objects = []
    for r in records:
        for j in range(r.object_count()):
            objects.append(EvalObject(f"{r.name}#{j}", r.image_path, (lambda r=r, j=j: r.object_mask(j))))
    return objects[:limit] if limit else objects


# ---------------------------------------------------------------------------------------------
# Clicks and scores


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of a bool prediction with a 1/0/IGNORE mask, ignore pixels left out."""
    valid = gt != IGNORE
    target = gt == 1
    union = ((pred | target) & valid).sum()
    return float(((pred & target) & valid).sum() / union) if union else 1.0


def _resize_pair(image: np.ndarray, mask: np.ndarray, long_side: int | None):
    if long_side is None or max(image.shape[:2]) == long_side:
        return image, mask
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    mask = cv2.resize(mask, (nw, nh), interpolation=cv2.INTER_NEAREST)
    return image, mask


# ---------------------------------------------------------------------------------------------
# Methods: a SAM predictor, or click-seeded GrabCut


class SamClicker:
    """Runs the protocol with a :class:`~segany.SamPredictor`, optionally with zoom-in
    (:class:`~segany.clicks.ZoomIn`) and edge refinement of every answer (:class:`~segany.refine.EdgeRefine`;
    the next click then follows the refined mask, while the model is fed its own low-res logits)."""

    def __init__(self, predictor, zoom_in: ZoomIn | None = None, refine: EdgeRefine | None = None) -> None:
        self.segmenter = ClickSegmenter(predictor, zoom_in)
        self.refine = refine

    def set_image(self, image: np.ndarray) -> None:
        self.segmenter.set_image(image)

    def predict(self, points: np.ndarray, labels: np.ndarray, gt: np.ndarray | None = None) -> dict[str, Any]:
        masks, scores = self.segmenter.predict(points, labels)
        if self.refine is not None:
            image = self.segmenter.image
            masks = np.stack([refine_mask(image, m, points, labels, self.refine) for m in masks])
        out: dict[str, Any] = {"mask": masks[int(np.argmax(scores))]}
        if len(masks) > 1 and gt is not None:
            out["oracle_iou"] = max(iou(m, gt) for m in masks)
        return out


class GrabCutClicker:
    """OpenCV GrabCut seeded by the clicks: a disk of ``radius`` px of sure object (or background)
    around each click, the rest probable background, and the previous result as probable object."""

    def __init__(self, radius: int = 5, iterations: int = 5) -> None:
        self.radius = radius
        self.iterations = iterations

    def set_image(self, image: np.ndarray) -> None:
        self.image = np.ascontiguousarray(image[..., ::-1])  # OpenCV wants BGR
        self.previous = None

    def predict(self, points: np.ndarray, labels: np.ndarray, gt: np.ndarray | None = None) -> dict[str, Any]:
        seed = np.full(self.image.shape[:2], cv2.GC_PR_BGD, np.uint8)
        if self.previous is not None:
            seed[self.previous] = cv2.GC_PR_FGD
        for (x, y), label in zip(points, labels):
            cv2.circle(seed, (int(x), int(y)), self.radius, int(cv2.GC_FGD if label == 1 else cv2.GC_BGD), -1)
        mask = seed.copy()
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        try:
            cv2.grabCut(self.image, mask, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error:  # GMMs need samples of both classes; keep the seeds as the answer
            mask = seed
        pred = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
        self.previous = pred
        out: dict[str, Any] = {"mask": pred}
        if len(points) == 1 and gt is not None:
            out["oracle_iou"] = iou(pred, gt)
        return out


def evaluate_object(clicker, image: np.ndarray, gt: np.ndarray, options: EvalOptions) -> dict[str, Any]:
    """IoU after each click for one object."""
    image, gt = _resize_pair(image, gt, options.long_side)
    clicker.set_image(image)
    points: list[tuple[int, int]] = []
    labels: list[int] = []
    ious: list[float] = []
    oracle = None
    pred = np.zeros(gt.shape, bool)
    for k in range(options.max_clicks):
        click = first_click(gt) if k == 0 else next_click(pred, gt)
        if click is None:  # perfect: nothing left to correct
            ious.append(ious[-1])
            continue
        points.append(click[:2])
        labels.append(click[2])
        out = clicker.predict(np.array(points, dtype=float), np.array(labels), gt)
        pred = out["mask"]
        if k == 0:
            oracle = out.get("oracle_iou")
        ious.append(iou(pred, gt))
    return {"ious": ious, "oracle_iou_1": oracle}


def noc(ious: Sequence[float], threshold: float, max_clicks: int) -> int:
    for k, v in enumerate(ious, start=1):
        if v >= threshold:
            return k
    return max_clicks


def summarize(per_object: dict[str, dict[str, Any]], options: EvalOptions) -> dict[str, Any]:
    if not per_object:
        raise DataError("no objects were evaluated")
    curves = np.array([r["ious"] for r in per_object.values()])
    n = options.max_clicks
    out: dict[str, Any] = {
        "objects": len(curves),
        "max_clicks": n,
        "long_side": options.long_side,
        "miou_at_clicks": {str(k): round(float(curves[:, k - 1].mean()), 4) for k in range(1, n + 1)},
    }
    for t in options.thresholds:
        name = f"noc{int(round(t * 100))}"
        counts = [noc(r, t, n) for r in curves]
        out[name] = round(float(np.mean(counts)), 3)
        out[f"{name}_failed"] = int(sum(1 for r in curves if not (r >= t).any()))
    oracle = [r["oracle_iou_1"] for r in per_object.values() if r.get("oracle_iou_1") is not None]
    out["miou_1_top_score"] = out["miou_at_clicks"]["1"]
    out["miou_1_oracle"] = round(float(np.mean(oracle)), 4) if oracle else None
    return out


def _options_settings(options: EvalOptions) -> dict[str, Any]:
    return {"long_side": options.long_side, "thresholds": list(options.thresholds)}


def evaluate(
    clicker_or_predictor,
    objects: Sequence[EvalObject],
    options: EvalOptions = EvalOptions(),
    progress: bool = True,
    partial_path: str | os.PathLike | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the protocol on every object; with ``partial_path`` finished objects are appended there
    as JSON lines, and a rerun skips them (resume after an interruption). ``settings`` (the method,
    model, zoom-in, ...) head a new progress file; a rerun with other settings is refused rather
    than mixing the results of two methods."""
    from tqdm import tqdm

    from ..predictor import SamPredictor

    clicker = clicker_or_predictor
    if isinstance(clicker, SamPredictor):
        clicker = SamClicker(clicker)
    # As JSON reads them back (tuples become lists), to compare with a progress file's header.
    header = json.loads(json.dumps({**(settings or {}), **_options_settings(options)}))
    done: dict[str, dict[str, Any]] = {}
    if partial_path is not None and Path(partial_path).exists():
        for line in Path(partial_path).read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            if "settings" in row:
                if row["settings"] != header:
                    raise DataError(
                        f"{partial_path} holds the progress of a run with other settings ({row['settings']}); "
                        "rerun with the same settings to resume, or start afresh (--restart)"
                    )
                continue
            if len(row.get("ious", [])) == options.max_clicks:
                done[row["key"]] = row
    wanted = {o.key for o in objects}
    done = {k: v for k, v in done.items() if k in wanted}
    todo = [o for o in objects if o.key not in done]
    cache: dict[Path, np.ndarray] = {}
    handle = None
    if partial_path is not None:
        fresh = not Path(partial_path).exists() or Path(partial_path).stat().st_size == 0
        handle = open(partial_path, "a")
        if fresh:
            handle.write(json.dumps({"settings": header}) + "\n")
    try:
        bar = tqdm(todo, disable=not progress, desc="objects", dynamic_ncols=True)
        for obj in bar:
            if obj.image_path not in cache:
                cache.clear()
                cache[obj.image_path] = read_image(obj.image_path)
            gt = obj.load_mask()
            if not (gt == 1).any():
                continue
            row = {"key": obj.key, **evaluate_object(clicker, cache[obj.image_path], gt, options)}
            done[obj.key] = row
            if handle is not None:
                handle.write(json.dumps(row) + "\n")
                handle.flush()
            ious = np.array([r["ious"] for r in done.values()])
            bar.set_postfix(miou1=f"{ious[:, 0].mean():.3f}", miou_last=f"{ious[:, -1].mean():.3f}")
    finally:
        if handle is not None:
            handle.close()
    ordered = {o.key: done[o.key] for o in objects if o.key in done}
    result = summarize(ordered, options)
    result["per_object"] = {k: [round(v, 4) for v in r["ious"]] for k, r in ordered.items()}
    return result


def _legend_label(draw: Any, name: str, suffix: str, width: float) -> str:
    """``name + suffix``, the name cut short (with "...") so that the label fits in ``width`` pixels."""
    label = name + suffix
    while draw.textlength(label) > width and len(name) > 1:
        name = name[:-1]
        label = name + "..." + suffix
    return label


def plot_curve(results: dict[str, dict[str, Any]], path: str | os.PathLike, size: tuple[int, int] = (640, 440)) -> None:
    """mIoU-vs-clicks curves of one or more methods as a PNG (drawn with Pillow)."""
    from PIL import ImageDraw

    w, h = size
    left, right, top, bottom = 60, 20, 30, 50
    im = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(im)
    n = max(len(r["miou_at_clicks"]) for r in results.values())

    def xy(k: float, v: float) -> tuple[float, float]:
        return left + (k - 1) / max(1, n - 1) * (w - left - right), top + (1 - v) * (h - top - bottom)

    for v in np.linspace(0, 1, 6):
        x0, y = xy(1, v)
        d.line([(left, y), (w - right, y)], fill=(225, 225, 225))
        d.text((10, y - 6), f"{v:.1f}", fill="black")
    for k in range(1, n + 1, max(1, n // 10)):
        x, _ = xy(k, 0)
        d.text((x - 4, h - bottom + 6), str(k), fill="black")
    d.rectangle([left, top, w - right, h - bottom], outline="black")
    d.text((w // 2 - 20, h - 22), "clicks", fill="black")
    d.text((left, 8), "mIoU vs clicks", fill="black")
    palette = [(30, 100, 220), (220, 80, 30), (40, 160, 60), (150, 60, 170)]
    for i, (name, r) in enumerate(results.items()):
        color = palette[i % len(palette)]
        pts = [xy(int(k), v) for k, v in sorted(r["miou_at_clicks"].items(), key=lambda kv: int(kv[0]))]
        d.line(pts, fill=color, width=2)
        for x, y in pts:
            d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
        label = _legend_label(d, Path(name).name, f"  NoC@90 {r.get('noc90', '?')}", w - left - right - 20)
        d.text((w - right - 10 - d.textlength(label), h - bottom - 20 - 16 * i), label, fill=color)
    import io

    buf = io.BytesIO()
    im.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
