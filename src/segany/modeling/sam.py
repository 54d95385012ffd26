"""The Segment Anything model: image encoder + prompt encoder + mask decoder."""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .fast_ops import plain_pytorch
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@functools.lru_cache(maxsize=16)
def _resize_weights(low: int, size: int, crop: int, out: int, device: torch.device) -> torch.Tensor:
    """(out, low) weights of one axis of postprocess_masks: resize low -> size, keep the first
    crop, resize crop -> out. Obtained by running exactly those interpolations on an identity."""
    with torch.inference_mode(False), torch.no_grad():
        eye = torch.eye(low, dtype=torch.float32, device=device).reshape(1, low, low, 1)
        up = F.interpolate(eye, (size, 1), mode="bilinear", align_corners=False)[:, :, :crop]
        down = F.interpolate(up, (out, 1), mode="bilinear", align_corners=False)
        return down.reshape(low, out).T.contiguous()


# Output rows (or columns) per block of a banded resize: each block reads only the few input rows
# its bilinear taps reach (~14 of 256 for 480 output rows), so the products do ~1/16 of a dense one.
RESIZE_BLOCK = 32


class _BandedResize:
    """One axis of ``postprocess_masks`` as a banded (out, low) matrix cut into row blocks.

    Block ``[o0, o1)`` of the output depends only on inputs ``[c0, c1)``; products with the
    blocks equal the dense product up to float rounding (the skipped weights are exact zeros).
    """

    def __init__(self, weights: torch.Tensor, block: int = RESIZE_BLOCK) -> None:
        self.out_size = weights.shape[0]
        self.blocks: list[tuple[int, int, int, int, torch.Tensor, torch.Tensor]] = []
        nonzero = weights != 0
        for o0 in range(0, self.out_size, block):
            o1 = min(self.out_size, o0 + block)
            used = nonzero[o0:o1].any(dim=0).nonzero()[:, 0]
            c0, c1 = int(used.min()), int(used.max()) + 1
            w = weights[o0:o1, c0:c1]
            self.blocks.append((o0, o1, c0, c1, w.contiguous(), w.T.contiguous()))
        # For cols(): every full block's columns as one window of the same width, its weights
        # zero-padded to it (nb, width, block), so that one batched product serves all blocks.
        self.block = block
        full = self.blocks[: self.out_size // block]
        width = max((c1 - c0 for _, _, c0, c1, _, _ in full), default=0)
        starts = [min(c0, weights.shape[1] - width) for _, _, c0, _, _, _ in full]
        self.window_index = (
            (torch.tensor(starts, dtype=torch.long)[:, None] + torch.arange(width)).reshape(-1).to(weights.device)
        )
        self.window_weights = weights.new_zeros((len(full), width, block))
        for j, ((_, _, c0, c1, _, w_t), start) in enumerate(zip(full, starts)):
            self.window_weights[j, c0 - start : c1 - start] = w_t

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """(..., low, C) -> (..., out, C)."""
        y = x.new_empty(*x.shape[:-2], self.out_size, x.shape[-1])
        for o0, o1, c0, c1, w, _ in self.blocks:
            y[..., o0:o1, :] = w.to(x.dtype) @ x[..., c0:c1, :]
        return y

    def rows_above(
        self, x: torch.Tensor, threshold: float, finite: bool = False, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(..., low, C) -> (..., out, C) booleans ``rows(x) > threshold``, one block at a time,
        written into ``out`` when given.

        finite: the caller knows every value of ``rows(x)`` to be finite (not NaN). On CPU a
        comparison that writes bools is not vectorised (~7x the time of a float -> bool cast of
        the same block), so for finite values ``v > t`` is taken as ``bool(relu(v - t))``: the
        same booleans, since a difference of two floats is zero only when they are equal. A NaN
        would give True there, and False in the comparison.
        """
        y = x.new_empty(*x.shape[:-2], self.out_size, x.shape[-1], dtype=torch.bool) if out is None else out
        cast = finite and math.isfinite(threshold) and x.device.type == "cpu"
        for o0, o1, c0, c1, w, _ in self.blocks:
            values = w.to(x.dtype) @ x[..., c0:c1, :]
            if cast:
                if threshold != 0:
                    values.sub_(threshold)
                y[..., o0:o1, :] = values.relu_()
            else:
                torch.gt(values, threshold, out=y[..., o0:o1, :])
        return y

    def rows_counts_above(self, x: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:
        """(..., low, C) -> (..., len(thresholds)) int32 counts of ``rows(x) > t`` for each t, one
        block at a time: the resized values are compared while in cache and never written out."""
        counts = torch.zeros(*x.shape[:-2], len(thresholds), dtype=torch.int32, device=x.device)
        # A block's count as a float32 sum of 0/1 values is exact while below 2**24.
        exact_float_sums = x.dtype == torch.float32 and RESIZE_BLOCK * x.shape[-1] < 2**24
        row_dtype = torch.int16 if x.shape[-1] < 2**15 else torch.int32
        for o0, o1, c0, c1, w, _ in self.blocks:
            y = w.to(x.dtype) @ x[..., c0:c1, :]
            step = torch.empty_like(y) if exact_float_sums else None
            for i, t in enumerate(thresholds):
                if step is not None:
                    # sign(y - t) clamped at 0 is exactly 1 where y > t, else 0 (a difference of two
                    # floats is zero only when they are equal): ~2x faster than comparing into bools.
                    above = torch.sub(y, t, out=step).sign_().clamp_(min=0)
                    counts[..., i] += above.sum((-2, -1)).to(torch.int32)
                else:
                    counts[..., i] += (y > t).sum(-1, dtype=row_dtype).sum(-1, dtype=torch.int32)
        return counts

    def rows_extent_above(self, x: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., low, C) -> which output rows (..., out) and which columns (..., C) of ``rows(x)``
        hold a value above ``threshold``, one block at a time."""
        row_max = x.new_empty(*x.shape[:-2], self.out_size)
        col_max = x.new_full((*x.shape[:-2], x.shape[-1]), float("-inf"))
        for o0, o1, c0, c1, w, _ in self.blocks:
            y = w.to(x.dtype) @ x[..., c0:c1, :]
            torch.amax(y, dim=-1, out=row_max[..., o0:o1])
            torch.maximum(col_max, y.amax(dim=-2), out=col_max)
        return row_max > threshold, col_max > threshold

    def cols(self, x: torch.Tensor) -> torch.Tensor:
        """(..., R, low) -> (..., R, out)."""
        # The full blocks as one batched product over their gathered input windows, written
        # through a (block, R, column) view of the output: ~2x faster at 1024x768 than a product
        # and a strided copy per block, whose fixed costs dominated.
        rows = x.reshape(-1, x.shape[-1])
        y = x.new_empty(rows.shape[0], self.out_size)
        nb, width, block = self.window_weights.shape
        if nb:
            windows = rows.index_select(1, self.window_index).view(rows.shape[0], nb, width).transpose(0, 1)
            out = y[:, : nb * block].view(rows.shape[0], nb, block).transpose(0, 1)
            torch.bmm(windows, self.window_weights.to(x.dtype), out=out)
        for o0, o1, c0, c1, _, w_t in self.blocks[nb:]:  # a last, partial block
            y[:, o0:o1] = rows[:, c0:c1] @ w_t.to(x.dtype)
        return y.view(*x.shape[:-1], self.out_size)


def _into(out: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return x if out is None else out.copy_(x)


@functools.lru_cache(maxsize=16)
def _banded_resize(low: int, size: int, crop: int, out: int, device: torch.device) -> _BandedResize:
    return _BandedResize(_resize_weights(low, size, crop, out, device))


class Sam(nn.Module):
    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: Sequence[float] = PIXEL_MEAN,
        pixel_std: Sequence[float] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        # Not persistent: official checkpoints do not store them.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @torch.no_grad()
    def forward(self, batched_input: list[dict[str, Any]], multimask_output: bool) -> list[dict[str, torch.Tensor]]:
        """Official batched entry point; each dict holds 'image' (3, H, W) already resized to the
        long side, 'original_size', and optional 'point_coords', 'point_labels', 'boxes',
        'mask_inputs' in the resized frame."""
        input_images = torch.stack([self.preprocess(x["image"]) for x in batched_input], dim=0)
        image_embeddings = self.image_encoder(input_images)
        outputs = []
        for record, embedding in zip(batched_input, image_embeddings):
            points = None
            if "point_coords" in record:
                points = (record["point_coords"], record["point_labels"])
            sparse, dense = self.prompt_encoder(
                points=points, boxes=record.get("boxes"), masks=record.get("mask_inputs")
            )
            low_res_masks, iou_predictions = self.mask_decoder(
                image_embeddings=embedding.unsqueeze(0),
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
            masks = self.postprocess_masks(
                low_res_masks, input_size=record["image"].shape[-2:], original_size=record["original_size"]
            )
            outputs.append(
                {
                    "masks": masks > self.mask_threshold,
                    "iou_predictions": iou_predictions,
                    "low_res_logits": low_res_masks,
                }
            )
        return outputs

    def postprocess_masks(
        self,
        masks: torch.Tensor,
        input_size: tuple[int, ...],
        original_size: tuple[int, ...],
        threshold: float | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, M, 256, 256) logits -> (B, M, H, W) logits at the original image size, or with
        ``threshold`` the boolean masks ``logits > threshold``; written into ``out`` when given.

        Upsample to the encoder's input size, crop the padding, resize to the original size (both
        bilinear). Both steps are linear and separable, so in inference they run as products with
        the composed per-axis weights, which are banded (a few bilinear taps per output): same
        values to float rounding, without the (img_size x img_size) intermediate. Thresholded, the
        rows come last and each block of rows is compared while in cache, so the full-size logits
        are never written (4.8x faster at 4000x3000, 1.2x at 640x480).
        """
        size = self.image_encoder.img_size
        h, w = int(original_size[0]), int(original_size[1])
        if (torch.is_grad_enabled() and masks.requires_grad) or plain_pytorch():
            masks = F.interpolate(masks, (size, size), mode="bilinear", align_corners=False)
            masks = masks[..., : input_size[0], : input_size[1]]
            masks = F.interpolate(masks, (h, w), mode="bilinear", align_corners=False)
            return _into(out, masks if threshold is None else masks > threshold)
        low_h, low_w = masks.shape[-2:]
        rows = _banded_resize(low_h, size, int(input_size[0]), h, masks.device)
        cols = _banded_resize(low_w, size, int(input_size[1]), w, masks.device)
        if threshold is None:
            return _into(out, cols.cols(rows.rows(masks)))
        # Each output is a convex combination of inputs (bilinear weights), so it is finite when
        # the inputs are finite and not near the float range's end; a NaN anywhere makes aminmax NaN.
        low, high = torch.aminmax(masks)
        finite = bool(-1e38 < low) and bool(high < 1e38)
        return rows.rows_above(cols.cols(masks), threshold, finite, out)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a (3, H, W) or (B, 3, H, W) image and zero-pad it to the encoder's square input."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        size = self.image_encoder.img_size
        return F.pad(x, (0, size - w, 0, size - h))
