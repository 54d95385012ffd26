"""Predictor behaviour beyond the golden cases: batches of images, BGR input, torch input, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segany import ResizeLongestSide, SamPredictor


def test_embed_images_batch_matches_single(ref_model, reference_arrays):
    predictor = SamPredictor(ref_model)
    images = [reference_arrays["img0"], reference_arrays["img1"]]
    embeddings = predictor.embed_images(images, batch_size=2)
    for name, emb in zip(("img0", "img1"), embeddings):
        ref = reference_arrays[f"{name}_features"]
        assert np.abs(emb.features.numpy() - ref).max() / np.abs(ref).max() < 1e-4
        assert emb.original_size == reference_arrays[name].shape[:2]
        assert emb.input_size == tuple(reference_arrays[f"{name}_input_size"])
    # A stored embedding answers prompts exactly like a freshly set image.
    predictor.set_embedding(embeddings[1])
    masks, iou, logits = predictor.predict(np.array([[179.0, 320.0]]), np.array([1]))
    assert np.abs(logits - reference_arrays["img1_point1_low_res_logits"]).max() < 1e-3
    assert (masks != reference_arrays["img1_point1_masks"]).mean() <= 1e-3


def test_bgr_and_torch_inputs_agree(ref_model, reference_arrays):
    image = reference_arrays["img0"]
    rgb = SamPredictor(ref_model)
    rgb.set_image(image)
    bgr = SamPredictor(ref_model)
    bgr.set_image(np.ascontiguousarray(image[..., ::-1]), image_format="BGR")
    assert torch.equal(rgb.features, bgr.features)

    transform = ResizeLongestSide(1024)
    tensor = torch.as_tensor(image).permute(2, 0, 1)[None].float()
    resized = transform.apply_image_torch(tensor)
    assert max(resized.shape[-2:]) == 1024
    via_torch = SamPredictor(ref_model)
    via_torch.set_torch_image(resized, image.shape[:2])
    # Antialiased torch resizing differs from PIL's only slightly.
    rel = (via_torch.features - rgb.features).abs().max() / rgb.features.abs().max()
    assert rel < 0.1


def test_predict_batch_points_equals_single_calls(ref_model, reference_arrays):
    predictor = SamPredictor(ref_model)
    predictor.set_image(reference_arrays["img0"])
    coords = np.array([[[320.0, 240.0]], [[100.0, 400.0]], [[600.0, 50.0]]])
    labels = np.ones((3, 1), dtype=int)
    masks, iou, logits = predictor.predict_batch(coords, labels, multimask_output=True)
    assert masks.shape == (3, 3, 480, 640) and iou.shape == (3, 3)
    for i in range(3):
        m, s, l = predictor.predict(coords[i], labels[i], multimask_output=True)
        assert np.abs(l - logits[i]).max() < 1e-4
        assert np.abs(s - iou[i]).max() < 1e-5


def test_errors(ref_model):
    predictor = SamPredictor(ref_model)
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(np.array([[1.0, 1.0]]), np.array([1]))
    with pytest.raises(ValueError, match="uint8"):
        predictor.set_image(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="image_format"):
        predictor.set_image(np.zeros((10, 10, 3), dtype=np.uint8), image_format="HSV")
