"""Prompt simulation for training, as in the SAM paper (appendix A, "Training algorithm").

Per ground-truth mask, 11 iterations: a first prompt (with equal chance a uniform foreground
point or the noisy ground-truth box), then 8 rounds of one point sampled uniformly from the error
region of the previous prediction (positive on false negatives, negative on false positives), and
2 rounds that add no point and only feed the previous mask back, one at a random position and one
at the end. The previous low-res logits (unthresholded) are the mask prompt of every later round.

All coordinates are (x, y) in the model's input frame; ``gt`` masks hold 1 = object, 0 =
background, 255 = ignore (never sampled, never counted as an error).

Optionally (``center_prob`` > 0) some clicks are placed as the evaluation protocol places them
(:mod:`segany.evaluate.clicker`, as RITM's iterative training does): the first at the object's
interior point farthest from its boundary, a corrective one at the centre of the largest error region.
"""

from __future__ import annotations

import numpy as np
import torch

from ..evaluate.clicker import first_click, next_click
from .data import IGNORE

FIRST, POINT, MASK = "first", "point", "mask"


def interaction_schedule(rng: np.random.Generator, point_rounds: int = 8, mask_rounds: int = 2) -> list[str]:
    """The kinds of the 1 + point_rounds + mask_rounds iterations, e.g. 11 for the paper's 8 + 2.

    One mask-only round lands at a random position after the first prompt, the last at the end.
    """
    rounds = [POINT] * point_rounds
    for _ in range(max(0, mask_rounds - 1)):
        rounds.insert(int(rng.integers(0, len(rounds) + 1)), MASK)
    if mask_rounds > 0:
        rounds.append(MASK)
    return [FIRST] + rounds


def _uniform_picks(region: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One pixel drawn uniformly from each (H, W) bool region of a (B, H, W) batch, on its device.

    Returns coords (B, 2) float (x, y) and found (B,) bool (False for an empty region). Only the
    per-mask pixel counts travel to the host: the draws are ``rng.integers(0, count)`` in batch
    order, skipping empty regions, so the points are those of picking from ``np.nonzero`` (row-major)
    on the CPU, whatever the device.
    """
    flat = region.flatten(1)
    counts = flat.sum(1).tolist()
    ranks = [int(rng.integers(0, c)) if c > 0 else -1 for c in counts]
    found = torch.tensor([r >= 0 for r in ranks], device=region.device)
    # The k-th pixel of a row (k from 1) is where its running count first reaches k.
    wanted = torch.tensor([max(r, 0) + 1 for r in ranks], dtype=torch.int32, device=region.device)
    running = flat.to(torch.int32).cumsum(1, dtype=torch.int32)
    index = torch.searchsorted(running, wanted[:, None]).squeeze(1).clamp_(max=flat.shape[1] - 1)
    width = region.shape[-1]
    coords = torch.stack([index % width, index // width], dim=1).float()
    return coords, found


def _centred(rng: np.random.Generator, count: int, center_prob: float) -> np.ndarray:
    """Which of ``count`` clicks follow the evaluation clicker (drawn only when ``center_prob`` > 0,
    so that runs without it draw the same random numbers as before it existed)."""
    if center_prob <= 0.0:
        return np.zeros(count, bool)
    return rng.random(count) < center_prob


def _host_rows(x: torch.Tensor, rows: np.ndarray) -> np.ndarray:
    """``x[rows]`` on the host, in one transfer (one wait on a GPU, not one per mask)."""
    return x[torch.from_numpy(rows).to(x.device)].cpu().numpy()


def foreground_points(gt: torch.Tensor, rng: np.random.Generator, center_prob: float = 0.0) -> torch.Tensor:
    """(B, H, W) masks -> (B, 2) points drawn uniformly from each object's pixels, or, with
    probability ``center_prob`` per mask, its interior point farthest from the boundary."""
    centred = _centred(rng, len(gt), center_prob)
    coords, found = _uniform_picks(gt == 1, rng)
    if not bool(found.all()):
        raise ValueError("cannot sample a foreground point from an empty mask")
    rows = np.flatnonzero(centred)
    if len(rows):
        clicks = [first_click(g) for g in _host_rows(gt, rows)]
        coords[torch.from_numpy(rows).to(coords.device)] = torch.tensor(
            [c[:2] for c in clicks], dtype=coords.dtype, device=coords.device
        )
    return coords


def mask_boxes(gt: torch.Tensor) -> torch.Tensor:
    """(B, H, W) masks -> (B, 4) tight XYXY boxes of the object pixels (x1, y1 inclusive)."""
    obj = gt == 1
    height, width = gt.shape[-2:]
    cols = obj.any(dim=1)  # (B, W)
    rows = obj.any(dim=2)  # (B, H)
    xs = torch.arange(width, device=gt.device)
    ys = torch.arange(height, device=gt.device)
    x0 = torch.where(cols, xs, width).amin(1)
    x1 = torch.where(cols, xs, -1).amax(1)
    y0 = torch.where(rows, ys, height).amin(1)
    y1 = torch.where(rows, ys, -1).amax(1)
    if bool((x1 < 0).any()):
        raise ValueError("cannot box an empty mask")
    return torch.stack([x0, y0, x1, y1], dim=1).float()


def noisy_boxes(
    gt: torch.Tensor, rng: np.random.Generator, noise_std: float = 0.1, max_noise: float = 20.0
) -> torch.Tensor:
    """Ground-truth boxes with each coordinate moved by N(0, (noise_std * side)^2), clipped to
    +-max_noise pixels and to the image frame."""
    boxes = mask_boxes(gt).cpu().numpy()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    sides = np.stack([w, h, w, h], axis=1)
    noise = np.clip(rng.normal(size=boxes.shape) * noise_std * sides, -max_noise, max_noise)
    boxes = boxes + noise
    height, width = gt.shape[-2:]
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width - 1)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height - 1)
    x0, x1 = np.minimum(boxes[:, 0], boxes[:, 2]), np.maximum(boxes[:, 0], boxes[:, 2])
    y0, y1 = np.minimum(boxes[:, 1], boxes[:, 3]), np.maximum(boxes[:, 1], boxes[:, 3])
    return torch.from_numpy(np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)).to(gt.device)


def error_points(
    pred: torch.Tensor, gt: torch.Tensor, rng: np.random.Generator, center_prob: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """One corrective click per mask, uniform over the error region of a (B, H, W) bool prediction,
    or, with probability ``center_prob`` per mask, at the evaluation clicker's point (the centre of
    the largest error region).

    Returns coords (B, 2) and labels (B,): 1 on a false negative, 0 on a false positive, and -1
    (a "not a point" placeholder the prompt encoder ignores) where the prediction has no error.
    """
    centred = _centred(rng, len(gt), center_prob)
    fn = (gt == 1) & ~pred
    fp = (gt == 0) & pred
    coords, found = _uniform_picks(fn | fp, rng)
    x, y = coords[:, 0].long(), coords[:, 1].long()
    on_fn = fn[torch.arange(len(gt), device=gt.device), y, x]
    labels = torch.where(found, on_fn.long(), torch.full_like(on_fn, -1, dtype=torch.long))
    coords = torch.where(found[:, None], coords, torch.zeros_like(coords))
    rows = np.flatnonzero(centred)
    if len(rows):
        clicks = [next_click(p, g) for p, g in zip(_host_rows(pred, rows), _host_rows(gt, rows))]
        placed = [(i, c) for i, c in zip(rows.tolist(), clicks) if c is not None]  # None: no error, placeholder stays
        if placed:
            at = torch.tensor([i for i, _ in placed], device=coords.device)
            coords[at] = torch.tensor([c[:2] for _, c in placed], dtype=coords.dtype, device=coords.device)
            labels[at] = torch.tensor([c[2] for _, c in placed], dtype=labels.dtype, device=labels.device)
    return coords, labels


__all__ = [
    "FIRST",
    "IGNORE",
    "MASK",
    "POINT",
    "error_points",
    "foreground_points",
    "interaction_schedule",
    "mask_boxes",
    "noisy_boxes",
]
