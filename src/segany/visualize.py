"""Pictures for people: coloured mask overlays with outlines, and prompt markers."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .masks import mask_extent


def mask_colors(n: int, seed: int = 0) -> np.ndarray:
    """n distinct, saturated RGB colours (uint8, (n, 3))."""
    if n == 0:
        return np.zeros((0, 3), dtype=np.uint8)  # OpenCV rejects an empty image
    rng = np.random.default_rng(seed)
    hues = (np.arange(n) * 0.618033988749895 + rng.random()) % 1.0
    hsv = np.stack([hues * 179, np.full(n, 200), np.full(n, 255)], axis=1).astype(np.uint8)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]


def overlay_masks(
    image: np.ndarray,
    masks: Sequence[np.ndarray] | np.ndarray,
    colors: np.ndarray | None = None,
    alpha: float = 0.5,
    outline: int = 2,
    areas: Sequence[int] | None = None,
) -> np.ndarray:
    """Blend boolean (H, W) masks over an RGB image, each in its colour with a darker outline.

    Larger masks are drawn first so that small ones stay visible on top. ``masks`` is read one item
    at a time, once (twice without ``areas``, their pixel counts, which order the drawing), so a
    sequence that decodes on access never holds them all; each mask is blended and outlined inside
    its bounding box only.
    """
    out = image.astype(np.float32)
    n = len(masks)
    if colors is None:
        colors = mask_colors(n)
    if areas is None:
        areas = [int(np.count_nonzero(masks[i])) for i in range(n)]
    order = sorted(range(n), key=lambda i: -int(areas[i]))
    contours = {}
    for i in order:
        m = np.asarray(masks[i], dtype=bool)
        extent = mask_extent(m)
        if extent is None:
            continue
        crop, region = m[extent], out[extent]
        region[crop] = region[crop] * (1 - alpha) + np.asarray(colors[i], dtype=np.float32) * alpha
        if outline > 0:
            offset = (int(extent[1].start), int(extent[0].start))
            contours[i], _ = cv2.findContours(crop.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE, offset=offset)
    out = out.clip(0, 255).astype(np.uint8)
    for i in order:
        if i in contours:
            cv2.drawContours(out, contours[i], -1, tuple(int(c * 0.6) for c in colors[i]), outline)
    return out


def draw_prompts(
    image: np.ndarray,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
) -> np.ndarray:
    """Draw positive points green, negative points red, and a box in blue."""
    out = np.ascontiguousarray(image.copy())
    radius = max(4, round(max(image.shape[:2]) / 120))
    if box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), (40, 120, 255), max(2, radius // 2))
    if points is not None:
        for (x, y), lab in zip(points, labels if labels is not None else np.ones(len(points))):
            color = (40, 220, 40) if lab == 1 else (230, 40, 40)
            center = (int(round(x)), int(round(y)))
            cv2.circle(out, center, radius, color, -1)
            cv2.circle(out, center, radius, (255, 255, 255), max(1, radius // 4))
    return out
