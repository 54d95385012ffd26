"""ONNX export: the official decoder signature, parity with PyTorch and the official golden outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from segany import SamPredictor  # noqa: E402
from segany.cli import main  # noqa: E402
from segany.export.onnx import (  # noqa: E402
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    compare_decoders,
    export_decoder_bytes,
    export_encoder_bytes,
    official_prompt,
    onnx_session,
    quantize_onnx,
)

CASES = ["img0_point1", "img0_points_pos_neg", "img0_box", "img0_box_and_point", "img0_mask_feedback",
         "img1_point1", "img1_points_pos_neg", "img1_box_and_point", "img1_mask_feedback"]


@pytest.fixture(scope="module")
def decoder_bytes(ref_model) -> bytes:
    return export_decoder_bytes(ref_model)


@pytest.fixture(scope="module")
def session(decoder_bytes):
    return onnx_session(decoder_bytes)


def feeds_for(spec: dict, arrays, predictor: SamPredictor) -> dict[str, np.ndarray]:
    size = predictor.original_size
    coords = predictor.transform.apply_coords(np.array(spec["point_coords"]), size) if "point_coords" in spec else None
    box = predictor.transform.apply_boxes(np.array(spec["box"]), size) if "box" in spec else None
    point_coords, point_labels = official_prompt(coords, spec.get("point_labels"), box)
    mask_input = arrays[spec["mask_input"]][None] if "mask_input" in spec else np.zeros((1, 1, 256, 256), np.float32)
    return {
        "image_embeddings": predictor.get_image_embedding().numpy(),
        "point_coords": point_coords,
        "point_labels": point_labels,
        "mask_input": mask_input.astype(np.float32),
        "has_mask_input": np.array([1.0 if "mask_input" in spec else 0.0], np.float32),
        "orig_im_size": np.array(size, np.float32),
    }


def test_signature_is_the_official_one(session, decoder_bytes):
    import onnx

    model = onnx.load_from_string(decoder_bytes)
    assert [i.name for i in session.get_inputs()] == list(DECODER_INPUTS)
    assert [o.name for o in session.get_outputs()] == list(DECODER_OUTPUTS)
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 17
    point_dims = {i.name: i.shape for i in session.get_inputs()}
    assert isinstance(point_dims["point_coords"][1], str) and isinstance(point_dims["point_labels"][1], str)


@pytest.mark.parametrize("case", CASES)
def test_onnxruntime_matches_pytorch_and_official(session, predictors, reference_arrays, manifest, case):
    spec = manifest["predictor_cases"][case]
    predictor = predictors[spec["image"]]
    masks, scores, low_res = session.run(None, feeds_for(spec, reference_arrays, predictor))
    assert masks.shape == (1, 4, *predictor.original_size) and low_res.shape == (1, 4, 256, 256)
    # The 4 outputs are [single-mask, multimask x3]; the official answer picks one side.
    picked = slice(1, 4) if spec["multimask_output"] else slice(0, 1)
    kwargs = {k: np.array(spec[k]) for k in ("point_coords", "point_labels", "box") if k in spec}
    if "mask_input" in spec:
        kwargs["mask_input"] = reference_arrays[spec["mask_input"]]
    torch_masks, torch_iou, torch_logits = predictor.predict(multimask_output=spec["multimask_output"], **kwargs)
    assert np.abs(low_res[0, picked] - torch_logits).max() < 1e-3
    assert np.abs(scores[0, picked] - torch_iou).max() < 1e-4
    assert np.abs(low_res[0, picked] - reference_arrays[f"{case}_low_res_logits"]).max() < 1e-3
    assert ((masks[0, picked] > 0) != torch_masks).mean() <= 1e-3


def test_dynamic_number_of_points(session, predictors, ref_model):
    predictor = predictors["img0"]
    rng = np.random.default_rng(0)
    for n in (1, 4, 9):
        pts = rng.uniform(0, 400, size=(n, 2))
        labels = rng.integers(0, 2, size=n)
        coords, onnx_labels = official_prompt(predictor.transform.apply_coords(pts, predictor.original_size), labels)
        feeds = {
            "image_embeddings": predictor.get_image_embedding().numpy(),
            "point_coords": coords,
            "point_labels": onnx_labels,
            "mask_input": np.zeros((1, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array(predictor.original_size, np.float32),
        }
        _, _, low_res = session.run(None, feeds)
        _, _, torch_logits = predictor.predict(pts, labels, multimask_output=True)
        assert np.abs(low_res[0, 1:] - torch_logits).max() < 1e-3


def test_return_single_mask_follows_the_official_rule(ref_model, predictors, reference_arrays, manifest):
    single = onnx_session(export_decoder_bytes(ref_model, return_single_mask=True))
    full = onnx_session(export_decoder_bytes(ref_model))
    for case in ("img0_point1", "img0_points_pos_neg"):
        spec = manifest["predictor_cases"][case]
        feeds = feeds_for(spec, reference_arrays, predictors[spec["image"]])
        masks, scores, low = single.run(None, feeds)
        _, all_scores, all_low = full.run(None, feeds)
        assert masks.shape[1] == 1 and scores.shape == (1, 1)
        # One click (2 points with padding): best of the multimask outputs; more points: output 0.
        expected = 1 + int(np.argmax(all_scores[0, 1:])) if feeds["point_coords"].shape[1] <= 2 else 0
        assert np.abs(low[0, 0] - all_low[0, expected]).max() < 1e-4


def test_browser_variant_has_no_full_size_output(ref_model, predictors, reference_arrays, manifest):
    lowres = onnx_session(export_decoder_bytes(ref_model, upsample=False))
    assert [o.name for o in lowres.get_outputs()] == ["iou_predictions", "low_res_masks"]
    spec = manifest["predictor_cases"]["img1_point1"]
    feeds = feeds_for(spec, reference_arrays, predictors["img1"])
    feeds = {k: v for k, v in feeds.items() if k in {i.name for i in lowres.get_inputs()}}
    _, low = lowres.run(None, feeds)
    assert np.abs(low[0, 1:] - reference_arrays["img1_point1_low_res_logits"]).max() < 1e-3


def test_quantized_decoder_reports_agreement(decoder_bytes, predictors):
    int8 = quantize_onnx(decoder_bytes)
    assert len(int8) < len(decoder_bytes) / 2
    report = compare_decoders(decoder_bytes, int8, predictors["img0"].get_image_embedding().numpy(), prompts=6)
    assert 0.5 < report.mask_iou_mean <= 1.0 and report.mask_iou_min <= report.mask_iou_mean
    assert report.prompts == 6 and report.int8_bytes == len(int8)


def test_encoder_export_matches_pytorch(ref_model, predictors, reference_arrays):
    encoder = onnx_session(export_encoder_bytes(ref_model))
    predictor = predictors["img1"]
    resized = predictor.transform.apply_image(reference_arrays["img1"]).astype(np.float32)
    (features,) = encoder.run(None, {"input_image": resized.transpose(2, 0, 1)[None]})
    torch_features = predictor.get_image_embedding().numpy()
    assert np.abs(features - torch_features).max() / np.abs(torch_features).max() < 1e-4


def test_cli_export_onnx(tmp_path, ref_checkpoint, capsys):
    out, encoder = tmp_path / "decoder.onnx", tmp_path / "encoder.onnx"
    args = ["export-onnx", "--checkpoint", str(ref_checkpoint), "--output", str(out), "--quantize", "--json"]
    assert main([*args, "--encoder", str(encoder)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["encoder"] == str(encoder)
    assert [o.name for o in onnx_session(encoder).get_outputs()] == ["image_embeddings"]
    assert out.stat().st_size == result["quantization"]["int8_bytes"]
    assert 0.5 < result["quantization"]["mask_iou_mean"] <= 1.0
    session = onnx_session(out)
    assert [o.name for o in session.get_outputs()] == list(DECODER_OUTPUTS)


def test_cli_export_onnx_bad_input(tmp_path, ref_checkpoint, capsys):
    assert main(["export-onnx", "--checkpoint", str(ref_checkpoint), "--output", str(tmp_path / "x.txt")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    assert main(["export-onnx", "--checkpoint", str(ref_checkpoint), "-o", str(tmp_path / "x.onnx"), "--opset", "11"]) == 2
    assert main(["export-onnx", "--checkpoint", str(tmp_path / "missing.pth"), "-o", str(tmp_path / "x.onnx")]) == 2


def test_matmul_upscaling_equals_the_transposed_convolutions(ref_model):
    """The export's rewrite of output_upscaling (MatMul + LayerNorm, channels last) is exact."""
    import torch

    from segany.export.onnx import SamOnnxDecoder, decoder_dummy_inputs

    inputs = decoder_dummy_inputs(ref_model, num_points=4)
    inputs["orig_im_size"] = torch.tensor([300.0, 500.0])
    rewritten = SamOnnxDecoder(ref_model, matmul_upscaling=True)(*inputs.values())
    reference = SamOnnxDecoder(ref_model, matmul_upscaling=False)(*inputs.values())
    for a, b in zip(rewritten, reference):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= 1e-5 * max(1.0, b.abs().max().item())
