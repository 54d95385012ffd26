"""ONNX export of SAM's prompt encoder + mask decoder (and optionally the image encoder).

The decoder keeps the signature of the official ``segment_anything.utils.onnx.SamOnnxModel`` so
that clients written for the official export (the official web demo, CVAT, label-studio backends)
run it unchanged:

    inputs   image_embeddings (1, 256, 64, 64) float32
             point_coords     (1, N, 2) float32, (x, y) in the resized frame (long side 1024)
             point_labels     (1, N) float32: 1 positive, 0 negative, 2/3 box corners, -1 padding
             mask_input       (1, 1, 256, 256) float32 low-res logits of an earlier prediction
             has_mask_input   (1,) float32, 1 to use mask_input, else 0
             orig_im_size     (2,) float32 (H, W) of the original image
    outputs  masks            (1, M, H, W) float32 logits at the original size (threshold at 0)
             iou_predictions  (1, M) float32
             low_res_masks    (1, M, 256, 256) float32 logits

N is dynamic. As in the official export, a point prompt without a box needs a padding point
(0, 0) with label -1 at the end. M is 4 (the single-mask output first, then the 3 multimask
outputs) unless ``return_single_mask``, where M = 1 and the mask is chosen the official way:
the best multimask output for one click (N <= 2 including padding), the single-mask output
for more points.
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..io import atomic_write_bytes
from ..modeling import Sam

DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
DEFAULT_OPSET = 17


class SamOnnxDecoder(nn.Module):
    """Prompt encoder + mask decoder + mask upsampling, written without data-dependent control flow."""

    def __init__(
        self, model: Sam, return_single_mask: bool = False, upsample: bool = True, matmul_upscaling: bool = True
    ) -> None:
        super().__init__()
        self.matmul_upscaling = matmul_upscaling
        self.model = model
        self.mask_decoder = model.mask_decoder
        self.img_size = model.image_encoder.img_size
        self.return_single_mask = return_single_mask
        # Without upsampling (the browser tool's variant) the outputs are only iou_predictions and
        # low_res_masks; the page upsamples the one mask it shows instead of all four.
        self.upsample = upsample

    @staticmethod
    def resize_longest_image_size(input_image_size: torch.Tensor, longest_side: int) -> torch.Tensor:
        """(2,) float (H, W) -> (2,) int64 size after resizing the long side to ``longest_side``."""
        input_image_size = input_image_size.to(torch.float32)
        scale = longest_side / torch.max(input_image_size)
        return torch.floor(scale * input_image_size + 0.5).to(torch.int64)

    def _embed_points(self, point_coords: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
        prompt_encoder = self.model.prompt_encoder
        point_coords = (point_coords + 0.5) / self.img_size
        embedding = prompt_encoder.pe_layer._pe_encoding(point_coords)
        labels = point_labels.unsqueeze(-1).expand_as(embedding)
        # Masks by label instead of torch.where on indices, so that the graph has no control flow.
        embedding = embedding * (labels != -1)
        embedding = embedding + prompt_encoder.not_a_point_embed.weight * (labels == -1)
        for i in range(prompt_encoder.num_point_embeddings):
            embedding = embedding + prompt_encoder.point_embeddings[i].weight * (labels == i)
        return embedding

    def _embed_masks(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        prompt_encoder = self.model.prompt_encoder
        embedding = has_mask_input * prompt_encoder.mask_downscaling(mask_input)
        return embedding + (1 - has_mask_input) * prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        masks = F.interpolate(masks, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        prepadded = self.resize_longest_image_size(orig_im_size, self.img_size)
        masks = masks[..., : prepadded[0], : prepadded[1]]
        h, w = orig_im_size.to(torch.int64)[0], orig_im_size.to(torch.int64)[1]
        return F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False)

    def select_masks(
        self, masks: torch.Tensor, iou_preds: torch.Tensor, num_points: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # One click (plus padding) -> best multimask output; more points -> the single-mask output.
        # A large reweight of output 0 decides it without control flow, as the official export does.
        reweight = torch.tensor([[1000] + [0] * (self.mask_decoder.num_mask_tokens - 1)], device=iou_preds.device)
        best = torch.argmax(iou_preds + (num_points - 2.5) * reweight, dim=1)
        rows = torch.arange(masks.shape[0])
        return masks[rows, best].unsqueeze(1), iou_preds[rows, best].unsqueeze(1)

    def _predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MaskDecoder.predict_masks with the output upscaling written as matrix products.

        The two stride-2, kernel-2 transposed convolutions do not overlap, so each is a MatMul
        from a pixel's channels to its 2x2 children's channels; keeping pixels as rows (channels
        last) also makes LayerNorm2d a plain LayerNormalization. Runtimes without fast
        ConvTranspose (onnxruntime-web's WASM backend) run this markedly faster; the result is
        the same up to float rounding (tests compare with the official outputs). The pixel order
        is restored once, on the final (B, M, 4H, 4W) logits.
        """
        md = self.mask_decoder
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings], dim=1)
        src = image_embeddings + dense_prompt_embeddings
        _, c, h, w = src.shape
        hs, src = md.transformer(src, image_pe, tokens)  # src: (B, H*W, C)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + md.num_mask_tokens, :]

        conv1, norm, act1, conv2, act2 = md.output_upscaling
        c1, c2 = conv1.out_channels, conv2.out_channels
        # ConvTranspose weight (in, out, 2, 2) -> (in, 2*2*out): columns ordered (dy, dx, out).
        w1 = conv1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c1)
        x = (src @ w1 + conv1.bias.repeat(4)).reshape(b, h * w * 4, c1)
        x = act1(F.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps))
        w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
        x = act2((x @ w2 + conv2.bias.repeat(4)).reshape(b, h * w * 16, c2))

        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(md.output_hypernetworks_mlps)], dim=1
        )  # (B, M, C/8)
        masks = x @ hyper_in.transpose(1, 2)  # (B, H*W*16, M), rows ordered (y, x, dy1, dx1, dy2, dx2)
        n = masks.shape[-1]
        masks = masks.reshape(b, h, w, 2, 2, 2, 2, n).permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(b, n, 4 * h, 4 * w)
        return masks, md.iou_prediction_head(iou_token_out)

    @torch.no_grad()
    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_masks(mask_input, has_mask_input)
        predict_masks = self._predict_masks if self.matmul_upscaling else self.mask_decoder.predict_masks
        low_res_masks, scores = predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        if self.return_single_mask:
            low_res_masks, scores = self.select_masks(low_res_masks, scores, point_coords.shape[1])
        if not self.upsample:
            return scores, low_res_masks
        masks = self.mask_postprocessing(low_res_masks, orig_im_size)
        return masks, scores, low_res_masks


class SamOnnxEncoder(nn.Module):
    """Image encoder with normalisation and padding inside.

    input_image (1, 3, h, w) float32 RGB in 0..255, already resized so that max(h, w) = 1024
    (h, w dynamic) -> image_embeddings (1, 256, 64, 64).
    """

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.model = model

    @torch.no_grad()
    def forward(self, input_image: torch.Tensor) -> torch.Tensor:
        return self.model.image_encoder(self.model.preprocess(input_image))


def decoder_dummy_inputs(model: Sam, num_points: int = 5) -> dict[str, torch.Tensor]:
    """Example inputs of the decoder's ONNX signature (used for tracing and tests)."""
    embed_dim = model.prompt_encoder.embed_dim
    h, w = model.prompt_encoder.image_embedding_size
    mask_h, mask_w = model.prompt_encoder.mask_input_size
    generator = torch.Generator().manual_seed(0)
    return {
        "image_embeddings": torch.randn(1, embed_dim, h, w, generator=generator),
        "point_coords": torch.randint(0, 1024, (1, num_points, 2), generator=generator).float(),
        "point_labels": torch.randint(0, 4, (1, num_points), generator=generator).float(),
        "mask_input": torch.randn(1, 1, mask_h, mask_w, generator=generator),
        "has_mask_input": torch.tensor([1.0]),
        "orig_im_size": torch.tensor([1500.0, 2250.0]),
    }


def _cpu_eval(model: Sam) -> Sam:
    """The model on CPU in eval mode, copied when it lives elsewhere so the caller's model is untouched."""
    if model.device.type != "cpu":
        model = copy.deepcopy(model).to("cpu")
    return model.eval()


def _export_bytes(module: nn.Module, args: tuple, input_names, output_names, dynamic_axes, opset: int) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter warns about tracing and its own deprecation; the graph is checked by tests.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            module,
            args,
            buf,
            dynamo=False,
            export_params=True,
            verbose=False,
            opset_version=opset,
            do_constant_folding=True,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
        )
    return buf.getvalue()


def export_decoder_bytes(
    model: Sam, opset: int = DEFAULT_OPSET, return_single_mask: bool = False, upsample: bool = True
) -> bytes:
    """The decoder as an ONNX model (bytes), official signature, dynamic number of points.

    ``upsample=False`` drops the ``masks`` output (and the two resizes behind it): the outputs are
    then ``iou_predictions`` and ``low_res_masks`` only.
    """
    if opset < 17:
        raise ValueError(f"opset must be 17 or later, got {opset}")
    model = _cpu_eval(model)
    module = SamOnnxDecoder(model, return_single_mask=return_single_mask, upsample=upsample).eval()
    inputs = decoder_dummy_inputs(model)
    dynamic_axes = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    outputs = DECODER_OUTPUTS if upsample else DECODER_OUTPUTS[1:]
    return _export_bytes(module, tuple(inputs.values()), DECODER_INPUTS, outputs, dynamic_axes, opset)


def export_encoder_bytes(model: Sam, opset: int = DEFAULT_OPSET) -> bytes:
    """The image encoder (normalise, pad, ViT) as an ONNX model (bytes)."""
    model = _cpu_eval(model)
    size = model.image_encoder.img_size
    dummy = torch.randint(0, 256, (1, 3, size * 3 // 4, size), generator=torch.Generator().manual_seed(0)).float()
    dynamic_axes = {"input_image": {2: "height", 3: "width"}}
    return _export_bytes(SamOnnxEncoder(model).eval(), (dummy,), ("input_image",), ("image_embeddings",), dynamic_axes, opset)


def quantize_onnx(model_bytes: bytes) -> bytes:
    """Dynamic (weight-only uint8) quantization with onnxruntime, as the official export does."""
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(model_bytes)
        quantize_dynamic(
            model_input=src,
            model_output=dst,
            per_channel=False,
            reduce_range=False,
            weight_type=QuantType.QUInt8,
        )
        return dst.read_bytes()


def onnx_session(model_bytes: bytes | str | os.PathLike):
    """An onnxruntime CPU session for a model given as bytes or a path."""
    import onnxruntime as ort

    if not isinstance(model_bytes, bytes):
        model_bytes = Path(model_bytes).read_bytes()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def official_prompt(
    point_coords: np.ndarray | None, point_labels: np.ndarray | None, box: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Points/box in the resized frame -> (1, N, 2) coords and (1, N) labels in the official ONNX form.

    Box corners get labels 2 and 3; without a box a padding point (0, 0) with label -1 is appended.
    """
    coords = [] if point_coords is None else [np.asarray(point_coords, dtype=np.float32).reshape(-1, 2)]
    labels = [] if point_labels is None else [np.asarray(point_labels, dtype=np.float32).reshape(-1)]
    if box is not None:
        coords.append(np.asarray(box, dtype=np.float32).reshape(2, 2))
        labels.append(np.array([2, 3], dtype=np.float32))
    else:
        coords.append(np.zeros((1, 2), dtype=np.float32))
        labels.append(np.array([-1], dtype=np.float32))
    return np.concatenate(coords)[None], np.concatenate(labels)[None]


@dataclass(frozen=True)
class QuantizationReport:
    """Agreement of the quantized decoder with fp32 on random prompts over one embedding."""

    mask_iou_mean: float
    mask_iou_min: float
    max_abs_iou_prediction_diff: float
    prompts: int
    fp32_bytes: int
    int8_bytes: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def compare_decoders(
    fp32_bytes: bytes,
    int8_bytes: bytes,
    image_embeddings: np.ndarray,
    orig_im_size: tuple[int, int] = (480, 640),
    prompts: int = 16,
    seed: int = 0,
) -> QuantizationReport:
    """Run both decoders on ``prompts`` random 1-3 point prompts; IoU of thresholded masks."""
    fp32, int8 = onnx_session(fp32_bytes), onnx_session(int8_bytes)
    rng = np.random.default_rng(seed)
    h, w = orig_im_size
    scale = 1024 / max(h, w)
    ious, score_diffs = [], []
    for _ in range(prompts):
        n = int(rng.integers(1, 4))
        pts = rng.uniform([0, 0], [w * scale, h * scale], size=(n, 2))
        coords, labels = official_prompt(pts, (rng.uniform(size=n) < 0.75).astype(np.float32))
        feeds = {
            "image_embeddings": image_embeddings.astype(np.float32),
            "point_coords": coords,
            "point_labels": labels,
            "mask_input": np.zeros((1, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array(orig_im_size, np.float32),
        }
        m32, s32, _ = fp32.run(None, feeds)
        m8, s8, _ = int8.run(None, feeds)
        for a, b in zip(m32[0] > 0, m8[0] > 0):
            ious.append(_mask_iou(a, b))
        score_diffs.append(float(np.abs(s32 - s8).max()))
    return QuantizationReport(
        mask_iou_mean=float(np.mean(ious)),
        mask_iou_min=float(np.min(ious)),
        max_abs_iou_prediction_diff=float(np.max(score_diffs)),
        prompts=prompts,
        fp32_bytes=len(fp32_bytes),
        int8_bytes=len(int8_bytes),
    )


def export_onnx(
    model: Sam,
    output: str | os.PathLike,
    *,
    quantize: bool = False,
    encoder_output: str | os.PathLike | None = None,
    opset: int = DEFAULT_OPSET,
    return_single_mask: bool = False,
    image_embeddings: np.ndarray | None = None,
) -> QuantizationReport | None:
    """Write the decoder (quantized if asked) to ``output`` and optionally the encoder.

    With ``quantize``, returns how the quantized decoder agrees with fp32, measured on
    ``image_embeddings`` (default: random embeddings with the statistics of a real one).
    """
    fp32 = export_decoder_bytes(model, opset=opset, return_single_mask=return_single_mask)
    report = None
    if quantize:
        int8 = quantize_onnx(fp32)
        if image_embeddings is None:
            image_embeddings = decoder_dummy_inputs(model)["image_embeddings"].numpy()
        report = compare_decoders(fp32, int8, image_embeddings)
        atomic_write_bytes(output, int8)
    else:
        atomic_write_bytes(output, fp32)
    if encoder_output is not None:
        atomic_write_bytes(encoder_output, export_encoder_bytes(model, opset=opset))
    return report
