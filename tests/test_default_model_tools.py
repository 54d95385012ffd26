"""The shipped default model has a smaller embedding grid than the official models; the ONNX
export and the server follow the model's own sizes rather than the official 64x64 / 256x256."""

from __future__ import annotations

import base64

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from segany import SamPredictor, load_default_model  # noqa: E402
from segany.export.onnx import compare_decoders, export_decoder_bytes, official_prompt, onnx_session, quantize_onnx  # noqa: E402
from segany.io import read_image  # noqa: E402
from segany.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return load_default_model()


@pytest.fixture(scope="module")
def predictor(model, coco_photo):
    p = SamPredictor(model)
    p.set_image(read_image(coco_photo))
    return p


def test_default_model_is_not_the_official_grid(model):
    # Guards the premise of this file: if the default becomes 64x64, these tests prove less.
    assert model.prompt_encoder.mask_input_size != (256, 256)


def test_onnx_decoder_follows_the_model_sizes(model, predictor):
    session = onnx_session(export_decoder_bytes(model))
    h, w = predictor.original_size
    points = np.array([[w * 0.5, h * 0.5], [w * 0.2, h * 0.3]])
    labels = np.array([1, 0])
    _, _, logits = predictor.predict(points, labels, multimask_output=False)
    coords, onnx_labels = official_prompt(predictor.transform.apply_coords(points, (h, w)), labels.astype(np.float32))
    mh, mw = model.prompt_encoder.mask_input_size
    masks, iou, low = session.run(None, {
        "image_embeddings": predictor.features.numpy(),
        "point_coords": coords,
        "point_labels": onnx_labels,
        "mask_input": np.zeros((1, 1, mh, mw), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array([h, w], np.float32),
    })
    assert low.shape[-2:] == (mh, mw) and masks.shape[-2:] == (h, w)
    assert np.abs(low[0, 0] - logits[0]).max() < 1e-3


def test_quantization_report_on_default_model(model, predictor):
    fp32 = export_decoder_bytes(model)
    report = compare_decoders(fp32, quantize_onnx(fp32), predictor.features.numpy(), predictor.original_size,
                              prompts=4, img_size=model.image_encoder.img_size)
    assert 0.0 <= report.mask_iou_min <= report.mask_iou_mean <= 1.0


def test_server_mask_prompts_follow_the_model_sizes(model, predictor, coco_photo):
    with TestClient(create_app(model)) as client, open(coco_photo, "rb") as f:
        image_id = client.post("/api/images", files={"file": (coco_photo.name, f, "image/jpeg")}).json()["image_id"]
        h, w = predictor.original_size
        first = client.post(f"/api/images/{image_id}/segment",
                            json={"points": [[w // 2, h // 2]], "labels": [1], "return_logits": True})
        assert first.status_code == 200, first.text
        best = first.json()["masks"][0]
        mh, mw = model.prompt_encoder.mask_input_size
        assert len(base64.b64decode(best["low_res_logits"])) == mh * mw * 4
        for mask_input in ({"logits": best["low_res_logits"]}, {"rle": best["rle"]}):
            r = client.post(f"/api/images/{image_id}/segment",
                            json={"points": [[w // 2, h // 2]], "labels": [1], "mask_input": mask_input})
            assert r.status_code == 200, r.text
        wrong = base64.b64encode(np.zeros(256 * 256, "<f4").tobytes()).decode()
        r = client.post(f"/api/images/{image_id}/segment",
                        json={"points": [[5, 5]], "labels": [1], "mask_input": {"logits": wrong}})
        assert r.status_code == 422 and f"{mh}*{mw}" in r.json()["error"]
