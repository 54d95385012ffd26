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


def test_mask_prompts_decode_folded_like_the_module(ref_model, reference_arrays):
    """Prompts with mask inputs take the folded decoder (per-prompt image tokens from the first
    block): the same logits and IoUs as the official module, for a batch of different masks."""
    predictor = SamPredictor(ref_model)
    predictor.set_image(reference_arrays["img0"])
    rng = np.random.default_rng(0)
    coords = rng.uniform(50, 400, size=(3, 2, 2))
    labels = np.array([[1, 0], [1, 1], [0, 1]])
    masks = rng.normal(0, 8, size=(3, 1, 256, 256)).astype(np.float32)
    masks[0] = reference_arrays["img0_mask_feedback_mask_input"]
    for multimask in (True, False):
        _, iou, logits = predictor.predict_batch(coords, labels, mask_input=masks, multimask_output=multimask)
        c, lab, _, m = predictor._prompt_tensors(coords, labels, None, masks)
        sparse, dense = ref_model.prompt_encoder(points=(c, lab), boxes=None, masks=m)
        with torch.no_grad():
            want_logits, want_iou = ref_model.mask_decoder(
                predictor.features, ref_model.prompt_encoder.get_dense_pe(), sparse, dense, multimask
            )
        scale = float(want_logits.abs().max())
        assert np.abs(logits - want_logits.numpy()).max() < 1e-5 * scale
        assert np.abs(iou - want_iou.numpy()).max() < 1e-5
    # A mask alone (no points or box): no sparse tokens, the same answer as the module.
    _, iou, logits = predictor.predict_batch(mask_input=masks, multimask_output=False)
    m = torch.as_tensor(masks)
    sparse, dense = ref_model.prompt_encoder(points=None, boxes=None, masks=m)
    with torch.no_grad():
        want_logits, want_iou = ref_model.mask_decoder(
            predictor.features, ref_model.prompt_encoder.get_dense_pe(), sparse, dense, False
        )
    assert sparse.shape == (3, 0, sparse.shape[-1])
    assert np.abs(logits - want_logits.numpy()).max() < 1e-5 * float(want_logits.abs().max())
    assert np.abs(iou - want_iou.numpy()).max() < 1e-5
    # The bf16 decoder agrees with fp32 on the masks.
    fast = SamPredictor(ref_model, precision="bf16")
    fast.set_embedding(predictor.get_embedding())
    got, _, _ = fast.predict_batch(coords, labels, mask_input=masks, multimask_output=False)
    exact, _, _ = predictor.predict_batch(coords, labels, mask_input=masks, multimask_output=False)
    inter, union = (got & exact).sum(axis=(1, 2, 3)), (got | exact).sum(axis=(1, 2, 3))
    assert (inter / np.maximum(union, 1)).min() > 0.97


def test_errors(ref_model):
    predictor = SamPredictor(ref_model)
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(np.array([[1.0, 1.0]]), np.array([1]))
    with pytest.raises(ValueError, match="uint8"):
        predictor.set_image(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="image_format"):
        predictor.set_image(np.zeros((10, 10, 3), dtype=np.uint8), image_format="HSV")
