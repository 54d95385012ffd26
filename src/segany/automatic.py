"""Automatic mask generation ("segment everything"), drop-in compatible with the official
``segment_anything.SamAutomaticMaskGenerator``.

A grid of single-point prompts is decoded over the whole image (and optionally over a pyramid
of overlapping crops); masks are kept when the model's IoU prediction and their stability are
high enough and they are not cut by a crop edge; duplicates are removed by box NMS within each
crop, then across crops (smaller crops win), then optionally after small holes and islands are
cleaned up.

The results are those of the official algorithm, computed differently:

* the decoder runs through :class:`segany.batched_decoder.SharedImageMaskDecoder`, which does
  the prompt-independent work once per image and folds projections into the few prompt tokens;
* masks are filtered by predicted IoU *before* their logits are upsampled, and prompts with no
  surviving mask skip the upscaling convolutions altogether;
* on CPU, prompts go through the decoder a few at a time and logits are resized in 8 MiB
  chunks, so that each step works in cache rather than streaming hundreds of MiB;
* survivors are scored (stability) and boxed from their low-res logits where the masks are
  smooth and enlarged (:mod:`segany.resized_stats`: only blocks along mask edges are resized
  pixel by pixel), or from upsampled chunks otherwise, and filtered as tensors on the model's device; only their
  256x256 logits are kept, and full-size masks are rebuilt once, for the masks that survive NMS.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from .batched_decoder import SharedImageMaskDecoder
from .masks import (
    _boxes_from_rows_cols,
    batched_nms,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    clean_mask,
    encode_rle_batch,
    generate_crop_boxes,
    is_box_near_crop_edge,
    logits_to_boxes,
    mask_areas,
    masks_to_boxes,
    masks_to_uncompressed_rle,
    nms,
    stability_score,
)
from .modeling import Sam
from .modeling.fast_ops import plain_pytorch
from .modeling.sam import _banded_resize
from .predictor import ImageEmbedding, SamPredictor
from .resized_stats import ResizedLogitStats

OutputMode = Literal["binary_mask", "uncompressed_rle", "coco_rle"]
OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")

# Upsampled logits are produced in chunks of at most this many floats (8 MiB): each chunk is
# resized, thresholded and counted while it is in cache (~3x faster than 128 MiB chunks here).
_UPSAMPLE_CHUNK_ELEMENTS = 2**21
# Prompts decoded at once on CPU (see _decode_batch).
_CPU_DECODE_CHUNK_PROMPTS = 4
# Masks scored at once from their low-res logits (see resized_stats).
_STATS_CHUNK_MASKS = 64
# Column-resized logits scored at full size at once (_score_and_box_full): 4M floats, 16 masks
# of a 1024-wide image, whose blocks of 32 output rows (2 MiB) are counted in cache.
_FULL_STATS_CHUNK_ELEMENTS = 2**22
# Final full-size masks are built, cleaned, measured and encoded this many pixels (bytes) at a
# time, so that a large image's masks never sit in memory all at once: 140 masks of a 48-megapixel
# aerial photo are 6.7 GB as bool arrays.
_FINAL_CHUNK_PIXELS = 256 << 20


@dataclass
class _CropResult:
    """Masks kept in one crop, in NMS order. Logits stay low-res until the final masks are built."""

    crop_box: list[int]  # XYXY in the image
    input_size: tuple[int, int]  # the crop's size after resizing for the encoder
    low_res_logits: torch.Tensor  # (K, 256, 256)
    iou_preds: torch.Tensor  # (K,)
    stability: torch.Tensor  # (K,)
    boxes: torch.Tensor  # (K, 4) int64 XYXY in the image
    points: np.ndarray  # (K, 2) float64 (x, y) in the image


class SamAutomaticMaskGenerator:
    """Generates masks for a whole image from a grid of point prompts.

    Arguments are those of the official generator (defaults chosen for SAM ViT-H):

    - ``points_per_side``: grid points per side (``points_per_side**2`` prompts); ``None`` when
      ``point_grids`` gives the points.
    - ``points_per_batch``: prompts decoded together (memory vs. speed).
    - ``pred_iou_thresh``: keep masks whose predicted IoU is above this (0 disables).
    - ``stability_score_thresh``, ``stability_score_offset``: keep masks whose IoU between the
      masks thresholded at +/- offset around the mask threshold is at least this (0 disables).
    - ``box_nms_thresh``: box IoU above which a lower-scoring mask in the same crop is dropped.
    - ``crop_n_layers``: extra layers of crops; layer i has 2**i x 2**i crops.
    - ``crop_nms_thresh``: box IoU for removing duplicates between crops (smaller crops win).
    - ``crop_overlap_ratio``: overlap of layer-1 crops as a fraction of the short image side.
    - ``crop_n_points_downscale_factor``: layer i uses ``points_per_side / factor**i`` points.
    - ``point_grids``: explicit (n, 2) grids in [0, 1], one per crop layer.
    - ``min_mask_region_area``: fill holes and remove islands smaller than this (pixels), then
      rerun NMS; 0 disables.
    - ``output_mode``: ``"binary_mask"`` ((H, W) bool arrays), ``"uncompressed_rle"`` or
      ``"coco_rle"`` (COCO RLE with str counts).
    - ``precision``: how the image encoder and mask decoder run (see :class:`SamPredictor`); ``"fp32"`` gives the
      official masks, ``"bf16"`` is the fast mode on GPUs and bf16-capable CPUs.
    """

    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: OutputMode = "binary_mask",
        precision: str = "fp32",
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"unknown output_mode {output_mode!r}; choose one of {', '.join(OUTPUT_MODES)}")
        if points_per_batch < 1:
            raise ValueError("points_per_batch must be >= 1")
        if crop_n_layers < 0:
            raise ValueError("crop_n_layers must be >= 0")
        if points_per_side is not None:
            if points_per_side < 1:
                raise ValueError("points_per_side must be >= 1")
            self.point_grids = build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        else:
            self.point_grids = [np.asarray(g, dtype=np.float64).reshape(-1, 2) for g in point_grids]
            if len(self.point_grids) < crop_n_layers + 1:
                raise ValueError(f"point_grids needs one grid per crop layer ({crop_n_layers + 1})")
        self.predictor = SamPredictor(model, precision=precision)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        # Encoder outputs of the last image's crops, so that generate() on the same image again
        # (e.g. with other thresholds set on this object) skips the encoder.
        self._image_key: tuple | None = None
        self._embeddings: dict[tuple[int, ...], ImageEmbedding] = {}

    @property
    def model(self) -> Sam:
        return self.predictor.model

    # -- public -----------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Masks for an (H, W, 3) uint8 RGB image, as records with the official fields:

        ``segmentation`` (per ``output_mode``), ``area`` (pixels), ``bbox`` (XYWH),
        ``predicted_iou``, ``point_coords`` ([[x, y]]), ``stability_score``, ``crop_box`` (XYWH).
        """
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got shape {image.shape} dtype {image.dtype}")
        height, width = image.shape[:2]
        key = (image.shape, hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).digest())
        if key != self._image_key:
            self._image_key, self._embeddings = key, {}
        crop_boxes, layers = generate_crop_boxes((height, width), self.crop_n_layers, self.crop_overlap_ratio)
        crops = [self._process_crop(image, box, layer) for box, layer in zip(crop_boxes, layers)]

        # Per mask: which crop, and its row inside that crop's result.
        crop_of = torch.cat([torch.full((len(c.iou_preds),), i, dtype=torch.int64) for i, c in enumerate(crops)])
        row_of = torch.cat([torch.arange(len(c.iou_preds)) for c in crops])
        boxes = torch.cat([c.boxes for c in crops])
        if len(crops) > 1:
            # Duplicates between crops: prefer the mask from the smaller crop.
            areas = torch.tensor([(c.crop_box[2] - c.crop_box[0]) * (c.crop_box[3] - c.crop_box[1]) for c in crops])
            scores = (1 / areas)[crop_of].to(boxes.device)
            keep = batched_nms(boxes, scores, None, self.crop_nms_thresh).cpu()
            crop_of, row_of, boxes = crop_of[keep], row_of[keep], boxes[keep.to(boxes.device)]

        iou_preds = torch.cat([c.iou_preds for c in crops])
        stability = torch.cat([c.stability for c in crops])
        points = np.concatenate([c.points for c in crops]) if crops else np.zeros((0, 2))
        flat = self._flat_index(crops, crop_of, row_of)
        iou_preds, stability = iou_preds[flat.to(iou_preds.device)], stability[flat.to(stability.device)]
        points = points[flat.numpy()]
        crop_xyxy = torch.tensor([crops[i].crop_box for i in crop_of.tolist()], dtype=torch.int64).reshape(-1, 4)

        segmentations, areas, boxes, keep = self._final_masks(crops, crop_of, row_of, boxes, (height, width))
        if keep is not None:  # NMS after the small-region clean-up
            iou_preds, stability = iou_preds[keep.to(iou_preds.device)], stability[keep.to(stability.device)]
            points, crop_xyxy = points[keep.numpy()], crop_xyxy[keep]
        return self._records(segmentations, areas, boxes, iou_preds, stability, points, crop_xyxy)

    # -- steps ------------------------------------------------------------------------------

    def _process_crop(self, image: np.ndarray, crop_box: list[int], layer: int) -> _CropResult:
        x0, y0, x1, y1 = crop_box
        height, width = image.shape[:2]
        crop = image[y0:y1, x0:x1]
        crop_size = crop.shape[:2]
        model, predictor, device = self.model, self.predictor, self.predictor.device
        cached = self._embeddings.get(tuple(crop_box))
        if cached is None:
            predictor.set_image(crop)
            self._embeddings[tuple(crop_box)] = predictor.get_embedding()
        else:
            predictor.set_embedding(cached)
        decoder = SharedImageMaskDecoder(model, predictor.features, dtype=predictor.decoder_dtype)
        input_size = tuple(predictor.input_size)

        points = self.point_grids[layer] * np.array(crop_size)[None, ::-1]  # (P, 2) float64 (x, y)
        coords = torch.as_tensor(predictor.transform.apply_coords(points, crop_size), dtype=torch.float, device=device)
        offset = torch.tensor([x0, y0, x0, y0], device=device)

        stats = ResizedLogitStats(model.prompt_encoder.mask_input_size, model.image_encoder.img_size, input_size, crop_size, device)
        logits_parts, iou_parts, stab_parts, box_parts, point_parts = [], [], [], [], []
        for start in range(0, len(points), self.points_per_batch):
            batch = coords[start : start + self.points_per_batch, None, :]
            labels = torch.ones(batch.shape[:2], dtype=torch.int, device=device)
            sparse, _ = model.prompt_encoder(points=(batch, labels), boxes=None, masks=None)
            low_res, iou, prompts = self._decode_batch(decoder, sparse)
            if len(iou) == 0:
                continue
            prompt_of_mask = start + prompts

            stab, boxes = self._score_and_box(low_res, input_size, crop_size, stats)
            ok = torch.ones_like(iou, dtype=torch.bool)
            if self.stability_score_thresh > 0.0:
                ok &= stab >= self.stability_score_thresh
            boxes = boxes + offset
            # Masks touching a crop edge that is not an image edge were probably cut off.
            ok &= ~is_box_near_crop_edge(boxes, crop_box, [0, 0, width, height])
            logits_parts.append(low_res[ok])
            iou_parts.append(iou[ok])
            stab_parts.append(stab[ok])
            box_parts.append(boxes[ok])
            point_parts.append(prompt_of_mask[ok].cpu())
        predictor.reset_image()

        if logits_parts:
            low_res, iou, stab, boxes = (torch.cat(p) for p in (logits_parts, iou_parts, stab_parts, box_parts))
            prompt_of_mask = torch.cat(point_parts)
        else:
            size = model.prompt_encoder.mask_input_size
            low_res = torch.zeros((0, *size), device=device)
            iou, stab = torch.zeros(0, device=device), torch.zeros(0, device=device)
            boxes = torch.zeros((0, 4), dtype=torch.int64, device=device)
            prompt_of_mask = torch.zeros(0, dtype=torch.int64)
        keep = nms(boxes, iou, self.box_nms_thresh)
        keep_cpu = keep.cpu()
        return _CropResult(
            crop_box=list(crop_box),
            input_size=input_size,
            low_res_logits=low_res[keep],
            iou_preds=iou[keep],
            stability=stab[keep],
            boxes=boxes[keep],
            points=points[prompt_of_mask[keep_cpu].numpy()] + np.array([x0, y0]),
        )

    def _decode_batch(
        self, decoder: SharedImageMaskDecoder, sparse: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode a batch of point prompts; keep the masks whose predicted IoU passes.

        Returns their low-res logits (K, 256, 256), IoU predictions (K,) and prompt indices (K,),
        prompt-major like the official order. On CPU the prompts go through the decoder a few at
        a time, so that their per-prompt image tokens (4 MiB each for a 64x64 grid) stay in cache.
        """
        step = _CPU_DECODE_CHUNK_PROMPTS if sparse.device.type == "cpu" else len(sparse)
        logits, ious, prompt_ids = [], [], []
        for start in range(0, len(sparse), step):
            batch = sparse[start : start + step]
            if self.pred_iou_thresh > 0.0:
                # The mask tokens' last attention and the upscaling run only for prompts that pass.
                iou, prompts, hyper, image_tokens = decoder.decode_confident(batch, self.pred_iou_thresh)
                keep = iou > self.pred_iou_thresh
            else:
                iou, hyper, image_tokens = decoder.decode_tokens(batch, multimask_output=True)
                keep = torch.ones_like(iou, dtype=torch.bool)
                prompts = torch.arange(len(batch), device=iou.device)
            if len(prompts) == 0:
                continue
            kept = keep[prompts]
            logits.append(decoder.upscale_masks(image_tokens, hyper)[kept])
            ious.append(iou[prompts][kept])
            prompt_ids.append((start + prompts).repeat_interleave(kept.sum(dim=1)))
        if not logits:
            empty = torch.zeros(0, device=sparse.device)
            return empty.reshape(0, *decoder.model.prompt_encoder.mask_input_size), empty, empty.long()
        return torch.cat(logits), torch.cat(ious), torch.cat(prompt_ids)

    def _upsample(
        self, low_res: torch.Tensor, input_size: tuple[int, int], size: tuple[int, ...], threshold: float | None = None
    ):
        """Yield (start, logits) chunks of (k, H, W) logits at ``size`` for (K, 256, 256) low-res logits:
        :meth:`Sam.postprocess_masks` (banded resize products), a cache-sized chunk at a time. With
        ``threshold``, the chunks are the boolean masks ``logits > threshold``."""
        chunk = max(1, _UPSAMPLE_CHUNK_ELEMENTS // (int(size[0]) * int(size[1])))
        for start in range(0, len(low_res), chunk):
            x = low_res[start : start + chunk, None]
            yield start, self.model.postprocess_masks(x, input_size, tuple(size), threshold)[:, 0]

    def _score_and_box(
        self,
        low_res: torch.Tensor,
        input_size: tuple[int, int],
        crop_size: tuple[int, ...],
        stats: ResizedLogitStats,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stability scores (K,) and boxes (K, 4) in the crop of the upsampled masks."""
        threshold = self.model.mask_threshold
        stab_parts, box_parts = [], []
        for start in range(0, len(low_res), _STATS_CHUNK_MASKS):
            chunk = low_res[start : start + _STATS_CHUNK_MASKS]
            result = stats(chunk, threshold, self.stability_score_offset) if stats.enlarges else None
            if result is None:  # shrinking resize or noise-like logits: full-size logits are cheaper
                result = self._score_and_box_full(chunk, input_size, crop_size, self.stability_score_thresh)
            stab_parts.append(result[0])
            box_parts.append(result[1])
        if not stab_parts:
            return low_res.new_zeros(0), torch.zeros((0, 4), dtype=torch.int64, device=low_res.device)
        return torch.cat(stab_parts), torch.cat(box_parts)

    def _score_and_box_full(
        self, low_res: torch.Tensor, input_size: tuple[int, int], crop_size: tuple[int, ...], min_stability: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`_score_and_box` from every pixel of the upsampled logits. Boxes are computed
        only for masks with stability >= ``min_stability`` (the others are dropped by the caller;
        their boxes are zero).

        The columns are resized first; then each block of output rows is resized, compared and
        counted while it is in cache, so the full-size logits are never written (1.2-1.7x faster
        than writing them and scoring them, at 640x480 and 1024x768)."""
        threshold, offset = self.model.mask_threshold, self.stability_score_offset
        if plain_pytorch():
            return self._score_and_box_full_plain(low_res, input_size, crop_size, min_stability)
        img_size = self.model.image_encoder.img_size
        low_h, low_w = low_res.shape[-2:]
        rows = _banded_resize(low_h, img_size, int(input_size[0]), int(crop_size[0]), low_res.device)
        cols = _banded_resize(low_w, img_size, int(input_size[1]), int(crop_size[1]), low_res.device)
        stab_parts, box_parts = [], []
        chunk = max(1, _FULL_STATS_CHUNK_ELEMENTS // (low_h * int(crop_size[1])))
        for start in range(0, len(low_res), chunk):
            resized_cols = cols.cols(low_res[start : start + chunk])  # (k, low_h, W)
            counts = rows.rows_counts_above(resized_cols, (threshold + offset, threshold - offset))
            stab = counts[:, 0] / counts[:, 1]
            boxes = torch.zeros((len(stab), 4), dtype=torch.int64, device=low_res.device)
            boxed = stab >= min_stability
            if boxed.any():
                subset = resized_cols if boxed.all() else resized_cols[boxed]
                boxes[boxed] = _boxes_from_rows_cols(*rows.rows_extent_above(subset, threshold))
            stab_parts.append(stab)
            box_parts.append(boxes)
        if not stab_parts:
            return low_res.new_zeros(0), torch.zeros((0, 4), dtype=torch.int64, device=low_res.device)
        return torch.cat(stab_parts), torch.cat(box_parts)

    def _score_and_box_full_plain(
        self, low_res: torch.Tensor, input_size: tuple[int, int], crop_size: tuple[int, ...], min_stability: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_score_and_box_full` from the upsampled logits, with plain PyTorch ops."""
        threshold = self.model.mask_threshold
        stab_parts, box_parts = [], []
        for _, logits in self._upsample(low_res, input_size, crop_size):
            stab = stability_score(logits, threshold, self.stability_score_offset)
            boxed = stab >= min_stability
            boxes = torch.zeros((len(logits), 4), dtype=torch.int64, device=logits.device)
            if boxed.any():
                boxes[boxed] = logits_to_boxes(logits[boxed], threshold)
            stab_parts.append(stab)
            box_parts.append(boxes)
        if not stab_parts:
            return low_res.new_zeros(0), torch.zeros((0, 4), dtype=torch.int64, device=low_res.device)
        return torch.cat(stab_parts), torch.cat(box_parts)

    @staticmethod
    def _flat_index(crops: list[_CropResult], crop_of: torch.Tensor, row_of: torch.Tensor) -> torch.Tensor:
        starts = torch.tensor([0] + [len(c.iou_preds) for c in crops], dtype=torch.int64).cumsum(0)
        return starts[crop_of] + row_of

    def _full_size_masks(
        self, crops: list[_CropResult], crop_of: torch.Tensor, row_of: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """(M, H, W) bool masks in the image for the kept (crop, row) pairs, in that order."""
        device = self.predictor.device
        masks = torch.zeros((len(crop_of), *size), dtype=torch.bool, device=device)
        for i, crop in enumerate(crops):
            where = (crop_of == i).nonzero().squeeze(1)
            if len(where) == 0:
                continue
            x0, y0, x1, y1 = crop.crop_box
            low_res = crop.low_res_logits[row_of[where].to(device)]
            target = where.to(device)
            size_in_crop = (y1 - y0, x1 - x0)
            for start, part in self._upsample(low_res, crop.input_size, size_in_crop, self.model.mask_threshold):
                masks[target[start : start + len(part)], y0:y1, x0:x1] = part
        return masks

    def _final_masks(
        self,
        crops: list[_CropResult],
        crop_of: torch.Tensor,
        row_of: torch.Tensor,
        boxes: torch.Tensor,
        size: tuple[int, int],
    ) -> tuple[list[Any], list[int], torch.Tensor, torch.Tensor | None]:
        """Segmentations (per ``output_mode``), areas and XYXY boxes of the kept masks, built at full
        size a chunk at a time (``_FINAL_CHUNK_PIXELS``). With ``min_mask_region_area``, each mask
        is cleaned (small holes filled, small islands dropped) and NMS runs again preferring the
        masks that needed no change, as the official generator does: then ``keep`` gives the
        surviving masks' indices, in that NMS's order, and the outputs are for those only."""
        clean = self.min_mask_region_area > 0
        chunk = max(1, _FINAL_CHUNK_PIXELS // max(1, size[0] * size[1]))
        segmentations: list[Any] = []
        areas: list[int] = []
        box_parts: list[torch.Tensor] = []
        unchanged: list[bool] = []
        for start in range(0, len(crop_of), chunk):
            part = slice(start, start + chunk)
            masks = self._full_size_masks(crops, crop_of[part], row_of[part], size)
            if clean:
                cleaned = []
                for mask in masks.cpu().numpy():
                    new_mask, changed = clean_mask(mask, self.min_mask_region_area)
                    cleaned.append(new_mask)
                    unchanged.append(not changed)
                masks = torch.as_tensor(np.stack(cleaned), device=masks.device)
                box_parts.append(masks_to_boxes(masks))
            areas.extend(mask_areas(masks).tolist())
            segmentations.extend(self._encode(masks))
            del masks
        if not clean or not segmentations:
            return segmentations, areas, boxes, None
        boxes = torch.cat(box_parts)
        scores = torch.tensor(unchanged, dtype=torch.float, device=boxes.device)
        keep = nms(boxes, scores, max(self.box_nms_thresh, self.crop_nms_thresh)).cpu()
        order = keep.tolist()
        return [segmentations[i] for i in order], [areas[i] for i in order], boxes[keep.to(boxes.device)], keep

    def _encode(self, masks: torch.Tensor) -> list[Any]:
        """(M, H, W) bool masks as the records' segmentations."""
        if self.output_mode == "coco_rle":
            return encode_rle_batch(masks)
        if self.output_mode == "uncompressed_rle":
            return masks_to_uncompressed_rle(masks)
        return list(masks.cpu().numpy())

    def _records(
        self,
        segmentations: list[Any],
        areas: list[int],
        boxes: torch.Tensor,
        iou_preds: torch.Tensor,
        stability: torch.Tensor,
        points: np.ndarray,
        crop_boxes: torch.Tensor,
    ) -> list[dict[str, Any]]:
        bboxes = box_xyxy_to_xywh(boxes).tolist()
        crops = box_xyxy_to_xywh(crop_boxes).tolist()
        ious = iou_preds.tolist()
        stabs = stability.tolist()
        return [
            {
                "segmentation": segmentations[i],
                "area": areas[i],
                "bbox": bboxes[i],
                "predicted_iou": ious[i],
                "point_coords": [points[i].tolist()],
                "stability_score": stabs[i],
                "crop_box": crops[i],
            }
            for i in range(len(segmentations))
        ]
