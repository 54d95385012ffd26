"""Losses of SAM training: focal + dice (20:1) on the mask, MSE on the IoU prediction.

For an ambiguous prompt (a single point, 3 outputs) only the output with the lowest mask loss is
trained; the IoU head learns every output's actual IoU, so that its ranking is meaningful.
Pixels marked IGNORE (255) in the ground truth count for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import IGNORE


@dataclass(frozen=True)
class LossWeights:
    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


def upsample_logits(low_res: torch.Tensor, size: int) -> torch.Tensor:
    """(B, M, h, w) low-res logits -> (B, M, size, size), as the model's postprocessing does."""
    return F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Sigmoid focal loss per mask: logits/target/valid (B, M, H, W) -> (B, M), mean over valid pixels."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return (loss * valid).flatten(2).sum(-1) / valid.flatten(2).sum(-1).clamp(min=1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice per mask: (B, M, H, W) -> (B, M)."""
    prob = logits.sigmoid() * valid
    target = target * valid
    inter = (prob * target).flatten(2).sum(-1)
    total = prob.flatten(2).sum(-1) + target.flatten(2).sum(-1)
    return 1 - (2 * inter + 1) / (total + 1)


def mask_iou(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """IoU of thresholded (B, M, H, W) logits with (B, H, W) uint8 ground truth -> (B, M)."""
    valid = (gt != IGNORE).unsqueeze(1)
    target = (gt == 1).unsqueeze(1)
    pred = logits > 0
    inter = (pred & target & valid).flatten(2).sum(-1).float()
    union = ((pred | target) & valid).flatten(2).sum(-1).float()
    return inter / union.clamp(min=1)


@dataclass
class LossOutput:
    total: torch.Tensor  # scalar
    focal: torch.Tensor  # scalar, of the trained outputs
    dice: torch.Tensor
    iou_mse: torch.Tensor
    iou: torch.Tensor  # (B,) actual IoU of the trained output per mask (no grad)
    chosen: torch.Tensor  # (B,) index of the trained output


def interactive_loss(
    low_res_logits: torch.Tensor, iou_pred: torch.Tensor, gt: torch.Tensor, weights: LossWeights = LossWeights()
) -> LossOutput:
    """low_res_logits (B, M, h, w), iou_pred (B, M), gt (B, S, S) uint8 with M = 1 or 3."""
    logits = upsample_logits(low_res_logits.float(), gt.shape[-1])
    valid = (gt != IGNORE).unsqueeze(1).float()
    target = (gt == 1).unsqueeze(1).float().expand_as(logits)
    valid = valid.expand_as(logits)
    focal = focal_loss(logits, target, valid, weights.focal_alpha, weights.focal_gamma)
    dice = dice_loss(logits, target, valid)
    per_output = weights.focal * focal + weights.dice * dice  # (B, M)
    chosen = per_output.detach().argmin(dim=1)
    rows = torch.arange(len(chosen), device=chosen.device)
    with torch.no_grad():
        actual_iou = mask_iou(logits, gt)
    iou_mse = F.mse_loss(iou_pred.float(), actual_iou, reduction="none").mean(dim=1)
    total = per_output[rows, chosen].mean() + weights.iou * iou_mse.mean()
    return LossOutput(
        total=total,
        focal=focal[rows, chosen].mean().detach(),
        dice=dice[rows, chosen].mean().detach(),
        iou_mse=iou_mse.mean().detach(),
        iou=actual_iou[rows, chosen],
        chosen=chosen,
    )
