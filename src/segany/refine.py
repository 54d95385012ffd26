"""Edge refinement: a mask's boundary fitted to the image's edges with GrabCut.

A small model's masks are right about *what* the object is long before they are right about *where*
its boundary runs: the mask decoder predicts on a grid 4x coarser than its input, and a model trained
on a thousand masks places edges loosely. Refinement hands the last few pixels to a classic method
that is good at exactly that (Rother et al., "GrabCut", SIGGRAPH 2004; OpenCV's implementation):

- pixels farther than ``band`` from the mask's boundary keep their label (sure object / background);
- inside the band, GrabCut relabels each pixel from colour models of the object and of its
  surroundings (Gaussian mixtures learned on a region around the object) and a contrast-sensitive
  smoothness term that makes the boundary follow image edges;
- every click is a sure label (a disk of ``click_radius`` x the long side), so it holds after refinement.

The band is a fraction of the image's long side, so it covers the same part of the picture at any
resolution. The work is confined to the mask's box grown by the band and some context, and a region
larger than ``max_side`` px is refined at that size and scaled back (GrabCut costs about 0.7 s per
megapixel and iteration on one core): 0.1-0.4 s a mask on a 640x424 photo, by the mask's size, and
0.6 s for the same object on that photo upscaled to 2560x1696. GrabCut's answer depends on the resolution it sees, so the same object can come
out somewhat differently at different image sizes.

Refinement is a post-process of the mask shown to the user: an interactive session still feeds the
model its own low-res logits back. GrabCut trusts colour: it tightens a loose mask, but it also cuts
into a good one (it lowers the IoU of slightly coarsened ground-truth masks), so it suits small
models such as the default one; with a model whose edges are already good, leave it off (numbers in
the README, "Interactive evaluation").

Measured under the RITM/SAM click protocol in the README (``segany eval interactive --refine``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class EdgeRefine:
    """GrabCut edge refinement settings (defaults chosen on held-out COCO val2017 objects at 500 px)."""

    band: float = 0.032  # half-width of the relabelled band around the boundary, x the image's long side
    iterations: int = 3  # GrabCut iterations (colour-model re-estimations)
    click_radius: float = 0.01  # radius of a click's sure disk, x the image's long side
    context: float = 3.0  # the colour models see the mask's box grown by the band and this x the band
    max_side: int = 512  # larger regions are refined at this long side and scaled back

    def __post_init__(self) -> None:
        if not 0 < self.band <= 0.5:
            raise ValueError(f"band must be in (0, 0.5] (a fraction of the image's long side), got {self.band}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if not 0 <= self.click_radius <= 0.1:
            raise ValueError(f"click_radius must be in [0, 0.1] (a fraction of the long side), got {self.click_radius}")
        if self.context < 0:
            raise ValueError(f"context must be >= 0, got {self.context}")
        if self.max_side < 16:
            raise ValueError(f"max_side must be >= 16, got {self.max_side}")


def refine_mask(
    image: np.ndarray,
    mask: np.ndarray,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    config: EdgeRefine = EdgeRefine(),
) -> np.ndarray:
    """Fit the boundary of ``mask`` to the edges of ``image``.

    image: (H, W, 3) uint8 RGB. mask: (H, W) bool (or logits: > 0 is object).
    points: (N, 2) clicks (x, y) in pixels, labels: (N,) 1 object / 0 background; they are kept.
    Returns an (H, W) bool mask. An empty mask comes back unchanged; one that leaves GrabCut nothing
    to decide, or too few pixels of a class to learn from, comes back unchanged but for the clicks'
    disks. Seeds the calling thread's OpenCV RNG (GrabCut's k-means), so that answers are repeatable.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} and image {image.shape[:2]} differ in size")
    obj = np.ascontiguousarray(mask > 0 if mask.dtype != bool else mask, dtype=np.uint8)  # RLE decodes to Fortran order
    h, w = obj.shape
    long_side = max(h, w)
    points = np.zeros((0, 2)) if points is None else np.asarray(points, dtype=float).reshape(-1, 2)
    labels = np.zeros(0, int) if labels is None else np.asarray(labels).reshape(-1)
    if len(points) != len(labels):
        raise ValueError(f"{len(points)} points but {len(labels)} labels")
    if not obj.any():
        return obj.astype(bool)

    band = max(1, round(config.band * long_side))
    radius = round(config.click_radius * long_side)

    def with_clicks(target: np.ndarray, x0: int = 0, y0: int = 0, sure: int = 1, away: int = 0) -> np.ndarray:
        for (x, y), label in zip(points, labels):
            cv2.circle(target, (round(x) - x0, round(y) - y0), radius, sure if label == 1 else away, -1)
        return target

    # Everything happens in the mask's box grown by the band and some context (the colour models are
    # local), so the cost follows the object's size, not the image's.
    bx, by, bw, bh = cv2.boundingRect(obj)
    grow = band + round(config.context * band)
    x0, y0 = max(0, bx - grow), max(0, by - grow)
    x1, y1 = min(w, bx + bw + grow), min(h, by + bh + grow)
    region_obj = obj[y0:y1, x0:x1]
    # Euclidean distance to the mask's boundary, outside and inside (the image's edge is not a boundary).
    outside = cv2.distanceTransform(1 - region_obj, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    inside = cv2.distanceTransform(region_obj, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    region_seed = np.where(
        region_obj > 0,
        np.where(inside > band, cv2.GC_FGD, cv2.GC_PR_FGD),
        np.where(outside <= band, cv2.GC_PR_BGD, cv2.GC_BGD),
    ).astype(np.uint8)
    with_clicks(region_seed, x0, y0, cv2.GC_FGD, cv2.GC_BGD)
    out = obj.astype(bool)

    region = np.ascontiguousarray(image[y0:y1, x0:x1, ::-1])  # OpenCV wants BGR
    scale = min(1.0, config.max_side / max(region.shape[:2]))
    if scale < 1.0:
        size = (max(1, round(region.shape[1] * scale)), max(1, round(region.shape[0] * scale)))
        region = cv2.resize(region, size, interpolation=cv2.INTER_AREA)
        work = cv2.resize(region_seed, size, interpolation=cv2.INTER_NEAREST)
    else:
        work = region_seed.copy()
    is_fg = (work == cv2.GC_FGD) | (work == cv2.GC_PR_FGD)
    unsure = (work == cv2.GC_PR_FGD) | (work == cv2.GC_PR_BGD)
    if is_fg.all() or not is_fg.any() or not unsure.any():
        return with_clicks(out.view(np.uint8)).view(bool)
    bgd_model, fgd_model = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut seeds its mixtures with k-means on OpenCV's (per-thread) RNG: same input, same answer
    try:
        cv2.grabCut(region, work, None, bgd_model, fgd_model, config.iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # too few samples of a class for its mixture model: keep the mask
        return with_clicks(out.view(np.uint8)).view(bool)
    answer = (work == cv2.GC_FGD) | (work == cv2.GC_PR_FGD)
    if scale < 1.0:  # back to full resolution, with smooth edges; sure labels hold there
        answer = cv2.resize(answer.astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR) > 0.5
        sure = (region_seed == cv2.GC_FGD) | (region_seed == cv2.GC_BGD)
        answer[sure] = region_seed[sure] == cv2.GC_FGD
    out[y0:y1, x0:x1] = answer
    return with_clicks(out.view(np.uint8)).view(bool)
