"""The clicks of the standard interactive-segmentation protocol (RITM, SAM): where a simulated user
clicks next, given the current prediction and the ground truth. Used by the evaluation
(:mod:`segany.evaluate.interactive`) and, optionally, by training (:mod:`segany.train.prompts`).

Every step runs inside the bounding box of the region it measures: a training step places about a
hundred of these clicks on 512 px masks, most of whose pixels are far from any error. The depth of a
pixel is compared as the exact squared distance (an integer), so that among equally deep pixels the
first in row-major order wins whatever the crop (OpenCV's float distances round differently at
different places in an image).
"""

from __future__ import annotations

import cv2
import numpy as np

from ..masks import mask_extent


def _deepest_pixel(region: np.ndarray, y0: int = 0, x0: int = 0) -> tuple[int, int, float]:
    """(x, y, distance) of the pixel of a (h, w) bool region farthest from its boundary, the region
    being a crop at (y0, x0) that holds all of it (the image border counts as boundary, as in RITM);
    the first in row-major order among equally far ones."""
    # The one-pixel zero frame around the crop is nearer to every region pixel than anything outside
    # it, so the crop's distances are those of the whole image (and the image border is boundary).
    padded = np.pad(region.astype(np.uint8), 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    # Squared distances between pixels are integers: rounding removes OpenCV's float noise, which
    # would otherwise break ties between equally deep pixels differently from one crop to another.
    squared = np.rint(np.square(dist, dtype=np.float64))
    y, x = np.unravel_index(int(np.argmax(squared)), squared.shape)
    return int(x) + x0, int(y) + y0, float(np.sqrt(squared[y, x]))


def _farthest_from_boundary(region: np.ndarray) -> tuple[int, int, float]:
    """(x, y, distance) of a (H, W) bool region's pixel farthest from its boundary."""
    extent = mask_extent(region)
    if extent is None:
        raise ValueError("cannot place a click in an empty region")
    return _deepest_pixel(region[extent], extent[0].start, extent[1].start)


def _largest_component(error: np.ndarray) -> tuple[int, np.ndarray, int, int] | None:
    """The largest 8-connected region of a (H, W) bool error mask (the first in raster order of
    their first pixels among equally large ones) as (area, its crop, crop top, crop left); None if
    there is no error."""
    extent = mask_extent(error)
    if extent is None:
        return None
    _, labels, stats, _ = cv2.connectedComponentsWithStats(error[extent].astype(np.uint8), connectivity=8)
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    left, top, width, height, area = (int(v) for v in stats[k])
    return area, labels[top : top + height, left : left + width] == k, extent[0].start + top, extent[1].start + left


def next_click(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int] | None:
    """(x, y, label) at the interior point of the largest error region farthest from its
    boundary; label 1 if that region is missed object, 0 if it is wrong background. None if no error.
    A missed region wins a tie in area."""
    target = gt == 1
    best: tuple[tuple[int, np.ndarray, int, int], int] | None = None
    for label, error in ((1, target & ~pred), (0, (gt == 0) & pred)):
        found = _largest_component(error)
        if found is not None and (best is None or found[0] > best[0][0]):
            best = (found, label)
    if best is None:
        return None
    (_, region, y0, x0), label = best
    x, y, _ = _deepest_pixel(region, y0, x0)
    return x, y, label


def first_click(gt: np.ndarray) -> tuple[int, int, int]:
    """(x, y, 1) at the object's interior point farthest from its boundary."""
    x, y, _ = _farthest_from_boundary(gt == 1)
    return x, y, 1
