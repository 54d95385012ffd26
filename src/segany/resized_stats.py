"""Stability scores and boxes of mask logits *as they will be* after postprocessing's bilinear
resizes, computed from the low-res logits without building the full-size maps.

Automatic mask generation scores every candidate mask at full image size (official algorithm):
stability = #(logits > t + offset) / #(logits > t - offset), and a box of #(logits > t). The
resize from (h, w) low-res logits to the image is linear and separable, and each output pixel is a
convex combination of a small window of low-res values (at most a few rows times a few columns).
Output pixels that share their row window and their column window form a *block*; a block whose
window minimum is clearly above a threshold is above it everywhere, one whose window maximum is
clearly below is below it everywhere, and only the remaining *mixed* blocks (along mask edges) are
evaluated pixel by pixel, with the same composed weights as ``Sam.postprocess_masks``.

The counts equal those of the full-size logits except for pixels within float rounding (~1e-6) of
a threshold; ``tests/test_automatic.py`` compares them with the full computation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .modeling.sam import _resize_weights

# Window extrema are compared with a threshold +- this margin (relative to the logits' magnitude),
# far above the rounding of a convex combination of float32 values.
_MARGIN = 1e-4
# Mixed blocks are evaluated as (P, Q) patches padded to the longest group, at ~20 ns per value on
# CPU, against ~2-3 ns per output pixel for resizing whole maps with the banded products. Above this
# many patch values per output pixel, resizing everything is cheaper: blurry logits (the 512 px
# default model's, enlarged 8x onto a 1024x768 photo: ~0.15 values per pixel, 2.9 ms per mask
# against 2.8 ms resized whole) take the full-size path; sharp object logits (~0.01-0.05: 0.7-1.1 ms
# against 2.4-2.7 ms at that scale) stay here.
MAX_MIXED_VALUES_PER_PIXEL = 0.1
# The first masks of a batch are measured first: when they need more than PROBE_MARGIN times the
# limit (noise-like or blurry logits: a model's masks are alike in this), the whole batch takes the
# full-size path without measuring the rest. Which path a batch takes changes the time, not the result.
PROBE_MASKS = 8
PROBE_MARGIN = 1.25


@dataclass
class _Axis:
    """One axis of the resize, output indices grouped by their low-res window."""

    start: torch.Tensor  # (G,) first low-res index of each group's window
    index: torch.Tensor  # (G, W) low-res indices of each group's window (clamped at the far edge)
    first: torch.Tensor  # (G,) first output index of each group
    count: torch.Tensor  # (G,) output indices in each group (they are consecutive)
    weights: torch.Tensor  # (G, P, W) weights of each group's outputs (zero-padded) over its window
    valid: torch.Tensor  # (G, P) which of the P slots are real outputs
    window: int  # W: the longest window

    @classmethod
    def from_weights(cls, weights: torch.Tensor) -> "_Axis":
        """weights: (out, low) with each row's nonzeros consecutive (a resize's interpolation)."""
        out, low = weights.shape
        nonzero = weights != 0
        idx = torch.arange(low, device=weights.device)
        lo = torch.where(nonzero, idx, low).amin(dim=1)
        hi = torch.where(nonzero, idx, -1).amax(dim=1)
        # Group outputs by the start of their window (consecutive, since windows move monotonically);
        # a group's window runs from that start to the furthest end among its outputs.
        change = torch.ones(out, dtype=torch.bool, device=weights.device)
        change[1:] = lo[1:] != lo[:-1]
        # An edge group can be much longer than the rest (at the border the clamped taps share one
        # start: 13 outputs against 8 for an 8x enlargement): split such groups to the typical length,
        # since every group's outputs are padded to the longest one.
        first = change.nonzero().squeeze(1)
        length = torch.diff(first, append=torch.tensor([out], device=weights.device))
        typical = int(length.median())
        long_group = length > typical + 1  # not the alternating n, n+1 of a fractional scale
        if long_group.any():
            group = torch.cumsum(change.long(), 0) - 1
            offset = torch.arange(out, device=weights.device) - first[group]
            change |= long_group[group] & (offset % typical == 0)
            first = change.nonzero().squeeze(1)
        start = lo[first]
        count = torch.diff(first, append=torch.tensor([out], device=weights.device))
        group = torch.cumsum(change.long(), 0) - 1
        end = torch.zeros(len(first), dtype=hi.dtype, device=weights.device).scatter_reduce(0, group, hi, "amax")
        window = int((end - start).max()) + 1
        slots = int(count.max())
        p = torch.arange(slots, device=weights.device)
        valid = p[None, :] < count[:, None]
        rows = (first[:, None] + p[None, :]).clamp(max=out - 1)  # (G, P)
        span = start[:, None] + torch.arange(window, device=weights.device)[None, :]  # (G, W)
        index = span.clamp(max=low - 1)
        w = weights[rows[:, :, None], index[:, None, :]]  # (G, P, W)
        # Clamped duplicate columns at the far edge must not count twice.
        w = w.masked_fill((span > low - 1)[:, None, :], 0.0).masked_fill(~valid[:, :, None], 0.0)
        return cls(start, index, first, count, w, valid, window)


class ResizedLogitStats:
    """Stability scores and boxes of resized logits, for one (low-res shape, input size, size).

    ``img_size``: the encoder's square input; ``input_size``: the (h, w) of the resized image in it;
    ``size``: the (H, W) that the logits are resized to (the image or crop).
    """

    def __init__(
        self,
        low_shape: tuple[int, int],
        img_size: int,
        input_size: tuple[int, int],
        size: tuple[int, int],
        device: torch.device,
    ) -> None:
        self.rows = _Axis.from_weights(_resize_weights(low_shape[0], img_size, int(input_size[0]), int(size[0]), device))
        self.cols = _Axis.from_weights(_resize_weights(low_shape[1], img_size, int(input_size[1]), int(size[1]), device))
        self.output_pixels = int(size[0]) * int(size[1])
        # Blocks pay off when the logits are enlarged; for an output smaller than the encoder's frame
        # resizing everything is as cheap or cheaper (`bench/resized_stats.py`: 0.8-1.0x at 1024x768 -> 640x480).
        # Callers check this before calling.
        self.enlarges = self.output_pixels >= int(input_size[0]) * int(input_size[1])
        self.row_counts = self.rows.count.double()  # (Gr,)
        self.col_counts = self.cols.count.double()  # (Gc,)

    def _pixels(self, blocks: torch.Tensor) -> torch.Tensor:
        """(K, Gr, Gc) bool blocks -> (K,) int64 output pixels they cover."""
        return ((blocks.double() @ self.col_counts) @ self.row_counts).round().long()

    def _window_extrema(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, h, w) -> per-block min and max over each block's window, (K, Gr, Gc) each.

        Windows are taken W long from each group's start (a superset of a shorter window), which
        only makes the bounds looser."""
        def extrema(x: torch.Tensor, axis: _Axis) -> tuple[torch.Tensor, torch.Tensor]:
            # Sliding extrema along dim 1 from contiguous shifted slices, then the groups' rows.
            n = x.shape[1]
            padded = torch.cat([x, x[:, -1:].expand(-1, axis.window - 1, *x.shape[2:])], dim=1)
            lo = hi = x
            for i in range(1, axis.window):
                shifted = padded[:, i : i + n]
                lo, hi = torch.minimum(lo, shifted), torch.maximum(hi, shifted)
            return lo.index_select(1, axis.start), hi.index_select(1, axis.start)

        row_lo, row_hi = extrema(logits, self.rows)  # (K, Gr, w)
        # Columns: the same along dim 1 of the transposed maps.
        lo, _ = extrema(row_lo.transpose(1, 2).contiguous(), self.cols)
        _, hi = extrema(row_hi.transpose(1, 2).contiguous(), self.cols)
        return lo.transpose(1, 2), hi.transpose(1, 2)

    def _values_per_pixel(self, mixed: torch.Tensor) -> float:
        """Patch values that the mixed blocks (K, Gr, Gc) need, per output pixel of the K masks."""
        values = int(mixed.sum()) * self.rows.weights.shape[1] * self.cols.weights.shape[1]
        return values / (len(mixed) * self.output_pixels)

    def _block_values(self, logits: torch.Tensor, k: torch.Tensor, g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Exact resized values of blocks (k, g, h): (M, P, Q), padding slots hold NaN."""
        rr, cc = self.rows.index[g], self.cols.index[h]  # (M, Wr), (M, Wc)
        patch = logits[k[:, None, None], rr[:, :, None], cc[:, None, :]]  # (M, Wr, Wc)
        values = self.rows.weights[g] @ patch @ self.cols.weights[h].transpose(1, 2)  # (M, P, Q)
        valid = self.rows.valid[g][:, :, None] & self.cols.valid[h][:, None, :]
        return values.masked_fill(~valid, float("nan"))

    @torch.no_grad()
    def __call__(
        self, logits: torch.Tensor, threshold: float, offset: float
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(K, h, w) low-res logits -> stability scores (K,) and XYXY int64 boxes (K, 4) of the
        resized logits thresholded at ``threshold`` (as ``stability_score`` and ``logits_to_boxes``).

        Returns None when the mixed blocks' patches would hold more than ``MAX_MIXED_VALUES_PER_PIXEL``
        values per output pixel (blurry or noise-like logits), where computing the full-size logits is cheaper."""
        device = logits.device
        logits = logits.float()
        margin = _MARGIN * (1.0 + logits.abs().amax(dim=(1, 2)))[:, None, None]
        thresholds = (threshold + offset, threshold - offset, threshold)
        parts = []
        for piece in (slice(0, PROBE_MASKS), slice(PROBE_MASKS, None)):
            if len(logits[piece]) == 0:
                continue
            lo, hi = self._window_extrema(logits[piece])
            sure = [lo > t + margin[piece] for t in thresholds]
            mixed = torch.zeros_like(sure[0])
            for t, s in zip(thresholds, sure):
                mixed |= (hi > t - margin[piece]) & ~s
            parts.append((sure, mixed))
            probe = piece.start == 0 and len(logits) > PROBE_MASKS
            if probe and self._values_per_pixel(mixed) > PROBE_MARGIN * MAX_MIXED_VALUES_PER_PIXEL:
                return None
        sure = [torch.cat([p[0][i] for p in parts]) for i in range(3)]
        mixed = torch.cat([p[1] for p in parts])
        # Decided before listing the mixed blocks: nonzero() over noise-like maps costs more than
        # the rest of the work.
        if self._values_per_pixel(mixed) > MAX_MIXED_VALUES_PER_PIXEL:
            return None
        k, g, h = mixed.nonzero(as_tuple=True)
        values = self._block_values(logits, k, g, h)  # NaN compares False: padding never counts

        counts = []
        for t, s in zip(thresholds[:2], sure[:2]):
            whole = self._pixels(s & ~mixed)
            part = (values > t).sum(dim=(1, 2), dtype=torch.int32).long()  # int32: ~1.6x faster than the default int64 sum
            counts.append(whole.index_add(0, k, part))
        stability = counts[0] / counts[1]

        # Boxes at `threshold`: rows and columns with any pixel above it.
        s = sure[2] & ~mixed
        above = values > threshold  # (M, P, Q)
        big = torch.iinfo(torch.int64).max
        rows_first, rows_last = self.rows.first, self.rows.first + self.rows.count - 1
        cols_first, cols_last = self.cols.first, self.cols.first + self.cols.count - 1
        row_on, col_on = s.any(dim=2), s.any(dim=1)  # (K, Gr), (K, Gc)
        top = torch.where(row_on, rows_first, big).amin(dim=1)
        bottom = torch.where(row_on, rows_last, -1).amax(dim=1)
        left = torch.where(col_on, cols_first, big).amin(dim=1)
        right = torch.where(col_on, cols_last, -1).amax(dim=1)
        p = torch.arange(above.shape[1], device=device)
        q = torch.arange(above.shape[2], device=device)
        pix_rows = torch.where(above.any(dim=2), rows_first[g][:, None] + p, -1)  # (M, P)
        pix_cols = torch.where(above.any(dim=1), cols_first[h][:, None] + q, -1)  # (M, Q)
        bottom = bottom.scatter_reduce(0, k, pix_rows.amax(dim=1), "amax")
        right = right.scatter_reduce(0, k, pix_cols.amax(dim=1), "amax")
        top = top.scatter_reduce(0, k, torch.where(pix_rows >= 0, pix_rows, big).amin(dim=1), "amin")
        left = left.scatter_reduce(0, k, torch.where(pix_cols >= 0, pix_cols, big).amin(dim=1), "amin")
        boxes = torch.stack([left, top, right, bottom], dim=1)
        empty = bottom < 0
        boxes = boxes.masked_fill(empty[:, None], 0)
        return stability, boxes
