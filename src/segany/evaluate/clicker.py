"""The clicks of the standard interactive-segmentation protocol (RITM, SAM): where a simulated user
clicks next, given the current prediction and the ground truth. Used by the evaluation
(:mod:`segany.evaluate.interactive`) and, optionally, by training (:mod:`segany.train.prompts`)."""

from __future__ import annotations

import cv2
import numpy as np


def _farthest_from_boundary(region: np.ndarray) -> tuple[int, int, float]:
    """(x, y, distance) of the region's pixel farthest from its boundary (the image border counts
    as boundary, as in RITM)."""
    padded = np.pad(region.astype(np.uint8), 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y), float(dist[y, x])


def next_click(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int] | None:
    """(x, y, label) at the interior point of the largest error region farthest from its
    boundary; label 1 if that region is missed object, 0 if it is wrong background. None if no error."""
    target = gt == 1
    fn = target & ~pred
    fp = (gt == 0) & pred
    best: tuple[int, np.ndarray, int] | None = None
    for label, error in ((1, fn), (0, fp)):
        if not error.any():
            continue
        count, comp, stats, _ = cv2.connectedComponentsWithStats(error.astype(np.uint8), connectivity=8)
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        area = int(stats[largest, cv2.CC_STAT_AREA])
        if best is None or area > best[0]:
            best = (area, comp == largest, label)
    if best is None:
        return None
    x, y, _ = _farthest_from_boundary(best[1])
    return x, y, best[2]


def first_click(gt: np.ndarray) -> tuple[int, int, int]:
    x, y, _ = _farthest_from_boundary(gt == 1)
    return x, y, 1
