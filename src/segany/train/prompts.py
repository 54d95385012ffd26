"""Prompt simulation for training, as in the SAM paper (appendix A, "Training algorithm").

Per ground-truth mask, 11 iterations: a first prompt (with equal chance a uniform foreground
point or the noisy ground-truth box), then 8 rounds of one point sampled uniformly from the error
region of the previous prediction (positive on false negatives, negative on false positives), and
2 rounds that add no point and only feed the previous mask back, one at a random position and one
at the end. The previous low-res logits (unthresholded) are the mask prompt of every later round.

All coordinates are (x, y) in the model's input frame; ``gt`` masks hold 1 = object, 0 =
background, 255 = ignore (never sampled, never counted as an error).
"""

from __future__ import annotations

import numpy as np
import torch

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


def _uniform_pick(region: np.ndarray, rng: np.random.Generator) -> tuple[float, float] | None:
    ys, xs = np.nonzero(region)
    if len(ys) == 0:
        return None
    i = int(rng.integers(0, len(ys)))
    return float(xs[i]), float(ys[i])


def foreground_points(gt: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """(B, H, W) masks -> (B, 2) points drawn uniformly from each object's pixels."""
    out = np.zeros((gt.shape[0], 2), np.float32)
    for b, mask in enumerate(gt.cpu().numpy()):
        point = _uniform_pick(mask == 1, rng)
        if point is None:
            raise ValueError("cannot sample a foreground point from an empty mask")
        out[b] = point
    return torch.from_numpy(out).to(gt.device)


def mask_boxes(gt: torch.Tensor) -> torch.Tensor:
    """(B, H, W) masks -> (B, 4) tight XYXY boxes of the object pixels (x1, y1 inclusive)."""
    out = np.zeros((gt.shape[0], 4), np.float32)
    for b, mask in enumerate(gt.cpu().numpy()):
        ys, xs = np.nonzero(mask == 1)
        out[b] = (xs.min(), ys.min(), xs.max(), ys.max())
    return torch.from_numpy(out).to(gt.device)


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
    pred: torch.Tensor, gt: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One corrective click per mask, uniform over the error region of a (B, H, W) bool prediction.

    Returns coords (B, 2) and labels (B,): 1 on a false negative, 0 on a false positive, and -1
    (a "not a point" placeholder the prompt encoder ignores) where the prediction has no error.
    """
    pred_np, gt_np = pred.cpu().numpy(), gt.cpu().numpy()
    coords = np.zeros((len(gt_np), 2), np.float32)
    labels = np.full(len(gt_np), -1, np.int64)
    for b in range(len(gt_np)):
        fn = (gt_np[b] == 1) & ~pred_np[b]
        fp = (gt_np[b] == 0) & pred_np[b]
        point = _uniform_pick(fn | fp, rng)
        if point is not None:
            coords[b] = point
            labels[b] = int(fn[int(point[1]), int(point[0])])
    return torch.from_numpy(coords).to(gt.device), torch.from_numpy(labels).to(gt.device)


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
