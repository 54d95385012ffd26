"""Promptable segmentation on one image: embed once, then answer prompts in milliseconds.

Drop-in compatible with the official ``segment_anything.SamPredictor``; also answers many prompts
in one call (:meth:`SamPredictor.predict_batch`) and embeds batches of images
(:meth:`SamPredictor.embed_images`).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ._memory import tune_malloc
from .batched_decoder import SharedImageMaskDecoder
from .modeling import Sam
from .modeling.fast_ops import cpu_has_bf16
from .transforms import ResizeLongestSide


@dataclass(frozen=True)
class ImageEmbedding:
    """An image's encoder output with the sizes needed to map masks back to it."""

    features: torch.Tensor  # (1, 256, 64, 64)
    original_size: tuple[int, int]  # (H, W) of the original image
    input_size: tuple[int, int]  # (h, w) after resizing to the long side


PRECISIONS = ("fp32", "bf16", "int8")
# Prompts per mask-decoder pass on CPU: each prompt carries (64*64, 256) image activations; a few
# at a time stay in cache, many at once are slower per prompt than one by one.
DECODER_CHUNK = 4


class SamPredictor:
    """Embed an image once, then answer prompts.

    precision: how the model runs. "fp32" (default) matches the official outputs to 1e-4; "bf16"
    runs the image encoder under bfloat16 autocast (CPU or GPU); "int8" (CPU only) uses a dynamically
    quantized int8 copy of its linear layers, with bfloat16 attention. With "bf16" and "int8" the
    mask decoder's image-side tensors and products are bfloat16 as well (prompts without a mask
    input; see :class:`SharedImageMaskDecoder`); the prompt encoder, the decoder's prompt tokens,
    IoU predictions and returned logits stay fp32. compile: wrap the encoder in ``torch.compile``
    (slow first call).

    On a CPU without bfloat16 instructions (no AVX-512 BF16 or AMX, e.g. AVX2-only CPUs) PyTorch
    only emulates bfloat16, ~25x slower than fp32, so there "bf16" runs as "fp32" (with a warning;
    ``precision`` then reads "fp32") and "int8" keeps its int8 linear layers with everything else
    in fp32 (``reduced_dtype`` is the type the fast precisions use for the rest).

    On CPU, the first predictor of a process raises glibc malloc's mmap/trim thresholds so that
    the decoder's large temporary tensors are reused rather than page-faulted afresh
    (``segany._memory``; ``SEGANY_MALLOC_TUNING=0`` turns this off).
    """

    def __init__(self, sam_model: Sam, precision: str = "fp32", compile: bool = False) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.model = sam_model
        self.reduced_dtype = torch.bfloat16
        if sam_model.device.type == "cpu":
            tune_malloc()  # reuse freed decoder buffers instead of page-faulting fresh ones (see _memory)
            if precision != "fp32" and not cpu_has_bf16():
                self.reduced_dtype = torch.float32
                if precision == "bf16":
                    warnings.warn(
                        "precision='bf16': this CPU has no bfloat16 instructions (AVX-512 BF16 or AMX), so bfloat16 "
                        "would be emulated, far slower than fp32; running fp32 instead (precision='int8' is "
                        "the fast mode on this CPU)",
                        stacklevel=2,
                    )
                    precision = "fp32"
        self.precision = precision
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        self._encoder = _fast_encoder(sam_model.image_encoder, precision)
        if compile:
            self._encoder = torch.compile(self._encoder)
        self.reset_image()

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed images -> (B, 256, 64, 64) fp32 embeddings."""
        if self.precision == "fp32" or self.reduced_dtype == torch.float32:
            return self._encoder(images)
        with torch.autocast(images.device.type, dtype=self.reduced_dtype):
            features = self._encoder(images)
        return features.float()

    # -- images -----------------------------------------------------------------------------

    def _prepare_image(self, image: np.ndarray, image_format: str) -> torch.Tensor:
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got shape {image.shape} dtype {image.dtype}")
        if image_format != self.model.image_format:
            image = image[..., ::-1]
        resized = self.transform.apply_image(np.ascontiguousarray(image))
        return torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]

    @torch.no_grad()
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Compute and cache the embedding of an (H, W, 3) uint8 image."""
        input_image = self._prepare_image(image, image_format)
        self.set_torch_image(input_image, image.shape[:2])

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        """Embed a (1, 3, h, w) image already resized so that max(h, w) = img_size."""
        size = self.model.image_encoder.img_size
        if (
            transformed_image.ndim != 4
            or transformed_image.shape[1] != 3
            or max(*transformed_image.shape[2:]) != size
        ):
            raise ValueError(f"set_torch_image expects a (1, 3, h, w) tensor with long side {size}")
        self.reset_image()
        self.original_size = tuple(int(s) for s in original_image_size)
        self.input_size = tuple(int(s) for s in transformed_image.shape[-2:])
        input_image = self.model.preprocess(transformed_image)
        self.features = self._encode(input_image)
        self.is_image_set = True

    @torch.no_grad()
    def embed_images(
        self, images: Sequence[np.ndarray], image_format: str = "RGB", batch_size: int = 4
    ) -> list[ImageEmbedding]:
        """Embeddings for many images, encoded ``batch_size`` at a time. Use with :meth:`set_embedding`."""
        out: list[ImageEmbedding] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            prepared = [self._prepare_image(im, image_format) for im in chunk]
            batch = torch.cat([self.model.preprocess(p) for p in prepared], dim=0)
            features = self._encode(batch)
            for im, p, f in zip(chunk, prepared, features):
                out.append(ImageEmbedding(f[None], tuple(im.shape[:2]), tuple(p.shape[-2:])))
        return out

    def set_embedding(self, embedding: ImageEmbedding) -> None:
        """Use a precomputed embedding instead of running the encoder."""
        self.reset_image()
        self.features = embedding.features.to(self.device)
        self.original_size = embedding.original_size
        self.input_size = embedding.input_size
        self.is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        """The cached (1, 256, 64, 64) embedding of the current image."""
        self._require_image()
        return self.features

    def get_embedding(self) -> ImageEmbedding:
        self._require_image()
        return ImageEmbedding(self.features, self.original_size, self.input_size)

    def reset_image(self) -> None:
        self.is_image_set = False
        self.features = None
        self.orig_h = self.orig_w = self.input_h = self.input_w = None
        self.original_size = None
        self.input_size = None
        self._dense_pe = None
        self._shared_decoder: SharedImageMaskDecoder | None = None

    def _image_pe(self) -> torch.Tensor:
        # Depends only on the prompt encoder: computed once per image instead of once per prompt.
        if self._dense_pe is None:
            self._dense_pe = self.model.prompt_encoder.get_dense_pe()
        return self._dense_pe

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")

    # -- prompts ----------------------------------------------------------------------------

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one prompt, in original-image pixel coordinates.

        point_coords (N, 2) as (x, y); point_labels (N,) with 1 foreground, 0 background;
        box (4,) XYXY; mask_input (1, 256, 256) low-res logits of an earlier prediction.
        Returns masks (C, H, W), IoU predictions (C,), low-res logits (C, 256, 256), C = 3 or 1.
        """
        self._require_image()
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be supplied with point_coords")
            point_coords = np.asarray(point_coords)
            point_labels = np.asarray(point_labels)
            if point_coords.ndim != 2 or point_coords.shape[1] != 2 or len(point_labels) != len(point_coords):
                raise ValueError("point_coords must be (N, 2) and point_labels (N,)")
            point_coords, point_labels = point_coords[None], point_labels[None]
        if box is not None:
            box = np.asarray(box).reshape(1, 4)
        if mask_input is not None:
            mask_input = np.asarray(mask_input)[None]
        coords, labels, box_t, mask_t = self._prompt_tensors(point_coords, point_labels, box, mask_input)
        masks, iou, low_res = self.predict_torch(coords, labels, box_t, mask_t, multimask_output, return_logits)
        return masks[0].cpu().numpy(), iou[0].float().cpu().numpy(), low_res[0].float().cpu().numpy()

    def _prompt_tensors(
        self,
        point_coords: np.ndarray | None,
        point_labels: np.ndarray | None,
        boxes: np.ndarray | None,
        mask_input: np.ndarray | None,
    ) -> tuple[torch.Tensor | None, ...]:
        """Batched prompts in original-image pixels -> tensors in the encoder's frame:
        coords (B, N, 2), labels (B, N), boxes (B, 4), mask_input (B, 1, h, w)."""
        coords = labels = box_t = mask_t = None
        if point_coords is not None:
            coords = torch.as_tensor(
                self.transform.apply_coords(np.asarray(point_coords), self.original_size), dtype=torch.float, device=self.device
            )
            labels = torch.as_tensor(np.asarray(point_labels), dtype=torch.int, device=self.device)
        if boxes is not None:
            box_t = torch.as_tensor(
                self.transform.apply_boxes(np.asarray(boxes), self.original_size), dtype=torch.float, device=self.device
            ).reshape(-1, 4)
        if mask_input is not None:
            mask_t = torch.as_tensor(np.asarray(mask_input), dtype=torch.float, device=self.device)
        return coords, labels, box_t, mask_t

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prompts already in the resized frame: coords (B, N, 2), labels (B, N), boxes (B, 4),
        mask_input (B, 1, 256, 256). Returns masks (B, C, H, W), IoU (B, C), logits (B, C, 256, 256)."""
        self._require_image()
        inputs = (point_coords, point_labels, boxes, mask_input)
        batch = next((t.shape[0] for t in inputs if t is not None), 1)
        chunk = DECODER_CHUNK if self.device.type == "cpu" else batch
        if batch <= chunk:
            return self._predict_chunk(*inputs, multimask_output, return_logits)
        # The later chunks write into the outputs (concatenating 64 prompts' masks and logits at
        # 1024x768 would copy ~200 MB); the first chunk's results give their types and shapes.
        first = self._predict_chunk(
            *(t[:chunk] if t is not None else None for t in inputs), multimask_output, return_logits
        )
        outputs = tuple(x.new_empty((batch, *x.shape[1:])) for x in first)
        for out, x in zip(outputs, first):
            out[:chunk] = x
        for i in range(chunk, batch, chunk):
            part = (t[i : i + chunk] if t is not None else None for t in inputs)
            self._predict_chunk(*part, multimask_output, return_logits, out=tuple(o[i : i + chunk] for o in outputs))
        return outputs  # type: ignore[return-value]

    def _predict_chunk(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
        return_logits: bool,
        out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks, IoU predictions and low-res logits of a chunk of prompts, written into ``out``
        (three tensors of the chunk's shapes) when given."""
        masks_out, iou_out, low_res_out = out if out is not None else (None, None, None)
        points = (point_coords, point_labels) if point_coords is not None else None
        if not torch.is_grad_enabled():
            # Factored decoding (see batched_decoder): the image side is the shared embedding plus a
            # few rows per prompt; a mask input's embedding enters as rows too, computed there.
            if points is None and boxes is None and mask_input is not None:  # a mask alone: no sparse tokens
                sparse = mask_input.new_empty((len(mask_input), 0, self.model.prompt_encoder.embed_dim))
            else:
                sparse, _ = self.model.prompt_encoder(points=points, boxes=boxes, masks=None)
            decoder = self._shared_image_decoder()
            iou_predictions, hyper, image = decoder.decode_tokens(sparse, multimask_output, mask_inputs=mask_input)
            low_res_masks = decoder.upscale_masks(image, hyper, out=low_res_out)
        else:
            sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
            low_res_masks, iou_predictions = self._full_decoder(sparse, dense, multimask_output)
            if low_res_out is not None:
                low_res_masks = low_res_out.copy_(low_res_masks)
        threshold = None if return_logits else self.model.mask_threshold
        masks = self.model.postprocess_masks(
            low_res_masks, self.input_size, self.original_size, threshold, out=masks_out
        )
        if iou_out is not None:
            iou_predictions = iou_out.copy_(iou_predictions)
        return masks, iou_predictions, low_res_masks

    @property
    def decoder_dtype(self) -> torch.dtype:
        """The type of the mask decoder's image-side products: bfloat16 in the fast precisions
        (where the CPU computes in it)."""
        return torch.float32 if self.precision == "fp32" else self.reduced_dtype

    def _shared_image_decoder(self) -> SharedImageMaskDecoder:
        if self._shared_decoder is None:
            self._shared_decoder = SharedImageMaskDecoder(self.model, self.features, dtype=self.decoder_dtype)
        return self._shared_decoder

    def _full_decoder(
        self, sparse: torch.Tensor, dense: torch.Tensor, multimask_output: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.mask_decoder(
            image_embeddings=self.features,
            image_pe=self._image_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    def predict_batch(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Many prompts in one call, in original-image coordinates.

        point_coords (B, N, 2), point_labels (B, N), boxes (B, 4), mask_input (B, 1, 256, 256); any
        subset, with one B. Returns masks (B, C, H, W), IoU (B, C), logits (B, C, 256, 256).
        """
        self._require_image()
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be supplied with point_coords")
            point_coords = np.asarray(point_coords, dtype=float)
            if point_coords.ndim != 3 or point_coords.shape[2] != 2:
                raise ValueError("point_coords must be (B, N, 2)")
        coords, labels, box_t, mask_t = self._prompt_tensors(point_coords, point_labels, boxes, mask_input)
        masks, iou, low_res = self.predict_torch(coords, labels, box_t, mask_t, multimask_output, return_logits)
        return masks.cpu().numpy(), iou.float().cpu().numpy(), low_res.float().cpu().numpy()


def _fast_encoder(encoder: torch.nn.Module, precision: str) -> torch.nn.Module:
    """The encoder module to run for a precision: the model's own, or an int8 copy of it."""
    if precision != "int8":
        return encoder
    if encoder.pos_embed is not None and encoder.pos_embed.device.type != "cpu":
        raise ValueError("precision='int8' runs on CPU only; use 'bf16' on GPU")
    # Dynamic quantization replaces modules, so it runs on a copy of the module tree that shares every
    # tensor with the model (quantize_dynamic(inplace=False) would deep-copy all fp32 weights first:
    # +2.4 GiB of peak memory for vit_h). The model itself is left as is.
    # (torch.ao's eager quantization warns that it is deprecated in favour of torchao.)
    shared = {id(t): t for t in (*encoder.parameters(), *encoder.buffers())}
    tree = copy.deepcopy(encoder, memo=shared)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(tree, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
