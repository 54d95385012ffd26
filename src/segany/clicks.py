"""Click-by-click segmentation of one object, with optional zoom-in.

:class:`ClickSegmenter` keeps the state of an interactive session: every answer is fed back as the
next mask prompt (the low-res logits of the chosen mask), as in SAM's training and evaluation.

Zoom-in (Sofiiuk et al., "Reviving Iterative Training with Mask Guidance for Interactive
Segmentation", 2021, the RITM "ZoomIn"): after the first clicks, the object is segmented again on
a crop around the current mask, resized to the model's full input. A small object then gets the
encoder's whole resolution instead of a few 16 px patches. The crop is the box of the current mask
and the positive clicks, grown by ``expansion`` (at least ``min_crop`` px a side); it is kept while
the positive clicks stay inside it and the new box overlaps it (IoU >= ``recompute_iou``), so the
encoder runs again only when the object's extent changes. Outside the crop the answer is background.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .masks import box_iou
from .predictor import ImageEmbedding, SamPredictor

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, end exclusive

# Logit given to pixels outside a zoomed crop (and to the padding of a re-projected mask prompt):
# clearly background, of the order of what the model itself predicts far from an object.
BACKGROUND_LOGIT = -20.0
# Embeddings kept per image (the whole image and the latest crops): an object's crop changes a few
# times at most, and going back to an earlier one should not run the encoder again.
MAX_CACHED_VIEWS = 8


@dataclass(frozen=True)
class ZoomIn:
    """RITM's zoom-in settings (their defaults)."""

    skip_clicks: int = 1  # the first this-many clicks are answered on the whole image
    expansion: float = 1.4  # crop side = this x the object box side ...
    min_crop: int = 200  # ... but at least this many pixels
    recompute_iou: float = 0.5  # a new crop when the object box overlaps the current one less than this

    def __post_init__(self) -> None:
        if self.skip_clicks < 1:
            raise ValueError("zoom-in needs a first answer on the whole image: skip_clicks must be >= 1")
        if self.expansion < 1.0:
            raise ValueError(f"expansion must be >= 1, got {self.expansion}")
        if self.min_crop < 1:
            raise ValueError(f"min_crop must be >= 1, got {self.min_crop}")


def object_crop(mask: np.ndarray, positives: np.ndarray, zoom: ZoomIn) -> Box:
    """The zoom-in crop for a (H, W) bool mask and (N, 2) positive clicks (x, y): their box, grown
    about its centre by ``zoom.expansion`` (sides at least ``zoom.min_crop``), moved inside the image."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    px = np.clip(np.round(positives[:, 0]).astype(int), 0, w - 1) if len(positives) else np.zeros(0, int)
    py = np.clip(np.round(positives[:, 1]).astype(int), 0, h - 1) if len(positives) else np.zeros(0, int)
    xs, ys = np.concatenate([xs, px]), np.concatenate([ys, py])
    box = []
    for lo, hi, size in ((xs.min(), xs.max() + 1, w), (ys.min(), ys.max() + 1, h)):
        side = min(size, max(int(round((hi - lo) * zoom.expansion)), zoom.min_crop))
        start = int(round((lo + hi - side) / 2))
        start = min(max(start, 0), size - side)
        box.append((start, start + side))
    (x0, x1), (y0, y1) = box
    return x0, y0, x1, y1


def _inside(points: np.ndarray, box: Box) -> np.ndarray:
    x, y = points[:, 0], points[:, 1]
    return (x >= box[0]) & (x < box[2]) & (y >= box[1]) & (y < box[3])


class ClickSegmenter:
    """Answers the growing click list of one object, feeding each answer back as a mask prompt.

    >>> seg = ClickSegmenter(SamPredictor(model), zoom_in=ZoomIn())
    >>> seg.set_image(image)
    >>> masks, scores = seg.predict(np.array([[320, 200]]), np.array([1]))     # 3 candidates
    >>> masks, scores = seg.predict(np.array([[320, 200], [300, 260]]), np.array([1, 0]))  # 1 mask

    The first prediction of an object is ambiguous and returns 3 candidates (the top-score one is
    kept); later ones return one mask. Clicks are (x, y) pixels of the image given to ``set_image``.
    The session sets the predictor's image (the whole image or a crop): give it a predictor of its own.

    embed: where the embeddings of the whole image and its crops come from, ``embed(view)`` for a
    view box (x0, y0, x1, y1); e.g. a server's cache shared by many sessions. By default the session
    runs the encoder itself and keeps up to ``MAX_CACHED_VIEWS`` embeddings per image.
    """

    def __init__(
        self,
        predictor: SamPredictor,
        zoom_in: ZoomIn | None = None,
        embed: Callable[[Box], ImageEmbedding] | None = None,
    ) -> None:
        self.predictor = predictor
        self.zoom_in = zoom_in
        self.embed = embed
        self.image: np.ndarray | None = None
        self._size: tuple[int, int] | None = None  # (H, W) of the current image
        self._embeddings: dict[Box, ImageEmbedding] = {}

    def set_image(self, image: np.ndarray) -> None:
        """A new (H, W, 3) uint8 RGB image: embeds it and starts a new object."""
        self.image = np.ascontiguousarray(image)
        self._start(self.image.shape[:2])

    def set_image_size(self, height: int, width: int) -> None:
        """A new image known only by its size, for a session whose embeddings come from ``embed``
        (which crops and encodes the image itself): no pixels are needed here."""
        if self.embed is None:
            raise ValueError("set_image_size needs embed=...: without it the session encodes the image itself")
        self.image = None
        self._start((int(height), int(width)))

    def _start(self, size: tuple[int, int]) -> None:
        self._size = size
        self._embeddings = {}
        self._view = None
        self._show(self._full_box())
        self.reset()

    def reset(self) -> None:
        """Start a new object on the same image."""
        self._logits: np.ndarray | None = None  # (H, W) logits of the current answer
        self._low_res: np.ndarray | None = None  # its low-res logits, in the frame of the view it came from
        self._low_res_view: Box | None = None
        self._crop: Box | None = None

    @property
    def logits(self) -> np.ndarray | None:
        """(H, W) float32 logits of the current answer (> 0 is object), None before the first click."""
        return self._logits

    def _full_box(self) -> Box:
        h, w = self._size
        return 0, 0, w, h

    def _show(self, view: Box) -> None:
        """Point the predictor at the crop ``view`` of the image, embedding it once per image."""
        if view == self._view:
            return
        if self.embed is not None:
            self.predictor.set_embedding(self.embed(view))
        elif view not in self._embeddings:
            x0, y0, x1, y1 = view
            self.predictor.set_image(np.ascontiguousarray(self.image[y0:y1, x0:x1]))
            if len(self._embeddings) >= MAX_CACHED_VIEWS:  # drop the oldest crop, keep the whole image
                del self._embeddings[next(k for k in self._embeddings if k != self._full_box())]
            self._embeddings[view] = self.predictor.get_embedding()
        else:
            self.predictor.set_embedding(self._embeddings[view])
        self._view = view

    def _choose_view(self, points: np.ndarray, labels: np.ndarray, box: np.ndarray | None, zoom: bool | None) -> Box:
        config = self.zoom_in or ZoomIn()
        if zoom is None:
            zoom = self.zoom_in is not None and len(points) > config.skip_clicks
        if not zoom or self._logits is None:
            return self._full_box()
        mask = self._logits > 0
        if not mask.any():
            return self._full_box()
        # The crop holds the positive clicks and the box's corners as well as the mask.
        extent = points[labels == 1]
        if box is not None:
            corners = np.array([box[:2], np.maximum(box[:2], box[2:] - 1)])  # the box's first and last pixels
            extent = np.vstack([extent, corners])
        crop = object_crop(mask, extent, config)
        keep = (
            self._crop is not None
            and _inside(extent, self._crop).all()
            and float(box_iou(torch.tensor([crop]), torch.tensor([self._crop]))[0, 0]) >= config.recompute_iou
        )
        if not keep:
            self._crop = crop
        return self._crop

    def _mask_prompt(self, view: Box) -> np.ndarray | None:
        """(1, h, w) low-res logits of the current answer in ``view``'s input frame."""
        if self._logits is None:
            return None
        if view == self._low_res_view:
            return self._low_res[None]
        # Re-project the full-size answer: crop, resize like the image, pad, shrink to the low-res grid.
        x0, y0, x1, y1 = view
        crop = torch.from_numpy(np.ascontiguousarray(self._logits[y0:y1, x0:x1]))[None, None]
        size = self.predictor.model.image_encoder.img_size
        h, w = self.predictor.transform.get_preprocess_shape(y1 - y0, x1 - x0, size)
        canvas = torch.full((1, 1, size, size), BACKGROUND_LOGIT)
        canvas[..., :h, :w] = F.interpolate(crop, (h, w), mode="bilinear", align_corners=False)
        low = F.interpolate(canvas, self.predictor.model.prompt_encoder.mask_input_size, mode="bilinear",
                            align_corners=False, antialias=True)
        return low[0].numpy()

    def predict(
        self,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None = None,
        multimask: bool | None = None,
        zoom: bool | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """All clicks so far, (N, 2) (x, y) and (N,) labels (1 object, 0 background), and/or a box
        (4,) XYXY -> masks (C, H, W) bool and their predicted IoUs (C,). The top-score mask becomes
        the current answer.

        multimask: 3 candidates (C = 3) or one; by default 3 for an object's first prediction only.
        zoom: answer on the zoom-in crop of the current answer (True), on the whole image (False),
        or as the ``zoom_in`` settings say (None: after ``skip_clicks`` clicks; never without them).
        """
        if self._size is None:
            raise RuntimeError("set_image(...) must come before predict(...)")
        points = np.zeros((0, 2)) if points is None else np.asarray(points, dtype=float).reshape(-1, 2)
        labels = np.zeros(0, int) if labels is None else np.asarray(labels).reshape(-1)
        box = None if box is None else np.asarray(box, dtype=float).reshape(4)
        if len(labels) != len(points) or (len(points) == 0 and box is None):
            raise ValueError("predict needs clicks with one label each, or a box")
        first = self._logits is None
        view = self._choose_view(points, labels, box, zoom)
        mask_input = self._mask_prompt(view)
        self._show(view)
        x0, y0, x1, y1 = view
        keep = _inside(points, view)  # clicks outside a crop (negatives only) say nothing inside it
        shifted_box = None
        if box is not None:
            shifted_box = np.clip(box - (x0, y0, x0, y0), 0, (x1 - x0, y1 - y0, x1 - x0, y1 - y0))
        logits, scores, low_res = self.predictor.predict(
            points[keep] - (x0, y0) if keep.any() else None,
            labels[keep] if keep.any() else None,
            shifted_box,
            mask_input=mask_input,
            multimask_output=first if multimask is None else multimask,
            return_logits=True,
        )
        top = int(np.argmax(scores))
        self._low_res, self._low_res_view = low_res[top], view
        if view == self._full_box():
            full = logits
        else:
            full = np.full((len(logits), *self._size), BACKGROUND_LOGIT, np.float32)
            full[:, y0:y1, x0:x1] = logits
        self._logits = full[top].astype(np.float32, copy=False)
        return full > self.predictor.model.mask_threshold, scores

    @property
    def view(self) -> Box:
        """The crop (x0, y0, x1, y1) the last answer came from; the whole image without zoom."""
        return self._low_res_view if self._low_res_view is not None else self._full_box()
