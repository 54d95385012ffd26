"""segany export-onnx: the decoder (official ONNX signature) and optionally the image encoder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..cli import UsageError
from .common import add_model_args, resolve_model

EXAMPLE = "segany export-onnx --checkpoint sam_vit_b_01ec64.pth --output sam_decoder.onnx --quantize"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-onnx",
        help="export the prompt encoder + mask decoder to ONNX (the official SamOnnxModel signature)",
        epilog=f"example: {EXAMPLE}",
    )
    add_model_args(p)
    p.add_argument("-o", "--output", required=True, help="decoder .onnx file to write")
    p.add_argument("--quantize", action="store_true", help="dynamic uint8 quantization; reports agreement with fp32")
    p.add_argument("--encoder", metavar="ONNX", help="also export the image encoder to this file")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 17 or later (default: 17)")
    p.add_argument(
        "--return-single-mask",
        action="store_true",
        help="output only the official choice of mask (default: all 4 masks, single-mask output first)",
    )
    p.add_argument("--image", metavar="PATH", help="measure quantization agreement on this image's embedding")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise UsageError(f"export-onnx needs the 'onnx' extra ({e.name} is missing): pip install 'segany[onnx]'")
    for path in (args.output, args.encoder):
        if path and Path(path).suffix.lower() != ".onnx":
            raise UsageError(f"output files must end in .onnx, got {path}")
    if args.opset < 17:
        raise UsageError(f"--opset must be 17 or later, got {args.opset}")
    if args.image and not args.quantize:
        raise UsageError("--image only makes sense with --quantize")
    from ..export.onnx import export_onnx

    embeddings = None
    if args.image:
        from ..io import read_image
        from ..predictor import SamPredictor

        image = read_image(args.image)
    model = resolve_model(args)
    if args.image:
        predictor = SamPredictor(model)
        predictor.set_image(image)
        embeddings = predictor.get_image_embedding().cpu().numpy()
    report = export_onnx(
        model,
        args.output,
        quantize=args.quantize,
        encoder_output=args.encoder,
        opset=args.opset,
        return_single_mask=args.return_single_mask,
        image_embeddings=embeddings,
    )
    result = {"decoder": args.output, "encoder": args.encoder, "quantized": args.quantize, "opset": args.opset}
    if report is not None:
        result["quantization"] = report.to_dict()
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"wrote {args.output}" + (f" and {args.encoder}" if args.encoder else ""))
    if report is not None:
        print(
            f"quantized vs fp32 over {report.prompts} prompts: mask IoU mean {report.mask_iou_mean:.4f} "
            f"(min {report.mask_iou_min:.4f}), max |IoU-prediction diff| {report.max_abs_iou_prediction_diff:.4f}, "
            f"size {report.int8_bytes / 2**20:.1f} MiB vs {report.fp32_bytes / 2**20:.1f} MiB"
        )
    return 0
