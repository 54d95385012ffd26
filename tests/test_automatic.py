"""Automatic mask generation: parity with the official generate() on its golden outputs."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from pycocotools import mask as mask_utils

from segany import SamPredictor
from segany.automatic import SamAutomaticMaskGenerator
from segany.batched_decoder import SharedImageMaskDecoder
from segany.benchmark import mask_iou
from segany.masks import build_point_grid, decode_rle, logits_to_boxes, stability_score
from segany.resized_stats import ResizedLogitStats

CONFIGS = ["amg_grid16_nms_off", "amg_grid16_default_filters", "amg_grid8_crop1"]


@pytest.fixture(scope="module")
def amg_reference(reference_dir):
    with gzip.open(reference_dir / "amg_outputs.json.gz", "rt") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def img0(reference_arrays):
    return reference_arrays["img0"]


@pytest.fixture(scope="module")
def generator(ref_model):
    """One generator for the module: it keeps img0's embeddings between generate() calls."""
    return SamAutomaticMaskGenerator(ref_model)


def configure(generator: SamAutomaticMaskGenerator, **params) -> SamAutomaticMaskGenerator:
    """Set a configuration on an existing generator, as its constructor would."""
    fresh = SamAutomaticMaskGenerator(generator.model, **params)
    for name, value in vars(fresh).items():
        if name not in ("predictor", "_image_key", "_embeddings"):
            setattr(generator, name, value)
    return generator


def _rle_bytes(rle: dict) -> dict:
    return {"size": rle["size"], "counts": rle["counts"].encode("ascii")}


def match_one_to_one(ours: list[dict], reference: list[dict], min_iou: float = 0.99) -> dict[int, int]:
    """reference index -> our index, one to one, for masks with IoU >= min_iou.

    Records should come in the same order, so each reference mask is first compared with ours at
    its own position; only the others are searched among all of ours (pycocotools IoU on RLEs).
    """
    ours_rle = [_rle_bytes(r["segmentation"]) for r in ours]
    matches: dict[int, int] = {}
    taken: set[int] = set()
    for j, ref in enumerate(reference):
        ref_rle = [_rle_bytes(ref["segmentation"])]
        if j < len(ours) and mask_utils.iou([ours_rle[j]], ref_rle, [0])[0][0] >= min_iou and j not in taken:
            matches[j] = j
            taken.add(j)
            continue
        ious = np.asarray(mask_utils.iou(ours_rle, ref_rle, [0])).ravel()
        for i in np.argsort(-ious):
            if ious[i] < min_iou:
                break
            if i not in taken:
                matches[j] = int(i)
                taken.add(int(i))
                break
    return matches


def test_reference_has_the_three_configurations(amg_reference):
    assert sorted(amg_reference) == sorted(CONFIGS)
    # Only the default-filter run is empty, and that is what its masks' stability predicts.
    stabilities = [m["stability_score"] for m in amg_reference["amg_grid16_nms_off"]["masks"]]
    assert len(stabilities) > 500 and max(stabilities) < 0.95
    assert amg_reference["amg_grid16_default_filters"]["masks"] == []


@pytest.mark.parametrize("config", CONFIGS)
def test_generate_matches_official(generator, img0, amg_reference, config):
    spec = amg_reference[config]
    assert spec["image"] == "img0"
    reference = spec["masks"]
    ours = configure(generator, output_mode="coco_rle", **spec["params"]).generate(img0)

    assert abs(len(ours) - len(reference)) <= 0.01 * len(reference)
    if not reference:
        assert ours == []
        return
    matches = match_one_to_one(ours, reference)
    assert len(matches) >= 0.99 * len(reference), f"{len(matches)} of {len(reference)} reference masks matched"
    # Records come in the same order (NMS output order: decreasing predicted IoU).
    assert sum(i == j for j, i in matches.items()) >= 0.99 * len(reference)

    for j, i in matches.items():
        got, want = ours[i], reference[j]
        assert got["segmentation"]["size"] == want["segmentation"]["size"] == list(img0.shape[:2])
        assert got["area"] == int(mask_utils.area(_rle_bytes(got["segmentation"])))
        assert abs(got["area"] - want["area"]) <= max(2, 0.001 * want["area"])
        assert np.abs(np.subtract(got["bbox"], want["bbox"])).max() <= 1
        assert got["predicted_iou"] == pytest.approx(want["predicted_iou"], abs=1e-4)
        assert got["stability_score"] == pytest.approx(want["stability_score"], abs=1e-3)
        assert got["point_coords"] == want["point_coords"]
        assert got["crop_box"] == want["crop_box"]
        assert isinstance(got["area"], int) and all(isinstance(v, int) for v in got["bbox"] + got["crop_box"])


@pytest.fixture(scope="module")
def predictor0(ref_model, img0):
    predictor = SamPredictor(ref_model)
    predictor.set_image(img0)
    return predictor


def _grid_prompts(model, predictor, image, batched, monkeypatch, every=1):
    """Sparse and dense embeddings of single-point prompts on a 4x4 grid (every ``every``-th point);
    ``batched`` makes the shared-image decoder take its batched (GPU) form of the per-prompt products."""
    import segany.batched_decoder as batched_decoder

    if batched:
        monkeypatch.setattr(batched_decoder, "_per_prompt", lambda x: False)
    points = build_point_grid(4)[::every] * np.array([[image.shape[1], image.shape[0]]])
    coords = torch.as_tensor(predictor.transform.apply_coords(points, image.shape[:2]), dtype=torch.float)[:, None]
    labels = torch.ones(coords.shape[:2], dtype=torch.int)
    with torch.no_grad():
        return model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)


@pytest.mark.parametrize(("multimask", "batched"), [(True, False), (False, False), (True, True)])
def test_shared_image_decoder_equals_mask_decoder(ref_model, img0, predictor0, multimask, batched, monkeypatch):
    """Both forms of the per-prompt products: one prompt at a time (CPU) and batched (GPUs)."""
    predictor = predictor0
    sparse, dense = _grid_prompts(ref_model, predictor, img0, batched, monkeypatch, every=2)
    with torch.no_grad():
        want_masks, want_iou = ref_model.mask_decoder(
            predictor.features, ref_model.prompt_encoder.get_dense_pe(), sparse, dense, multimask
        )
    decoder = SharedImageMaskDecoder(ref_model, predictor.features)
    iou, hyper, image_tokens = decoder.decode_tokens(sparse, multimask_output=multimask)
    masks = decoder.upscale_masks(image_tokens, hyper)
    assert iou.shape == want_iou.shape and masks.shape == want_masks.shape
    torch.testing.assert_close(iou, want_iou, atol=1e-5, rtol=1e-5)
    scale = want_masks.abs().max()
    assert (masks - want_masks).abs().max() <= 1e-5 * scale
    assert ((masks > 0) != (want_masks > 0)).float().mean() < 1e-4


@pytest.mark.parametrize("depth", [1, 3])
def test_shared_image_decoder_any_depth(depth):
    """The factored form accumulates rows block by block: decoders of other depths than the
    official 2 (random weights, LayerNorm weights and biases perturbed so that the norms' gains and
    shifts matter) give the module's masks too."""
    from segany.modeling import SamConfig, build_sam

    torch.manual_seed(depth)
    config = SamConfig(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
                       window_size=4, img_size=256, decoder_depth=depth, decoder_mlp_dim=256)
    model = build_sam(config).eval()
    with torch.no_grad():
        for module in model.mask_decoder.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    features = torch.randn(1, 256, 16, 16)
    coords = torch.rand(5, 2, 2) * 256
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(points=(coords, torch.ones(5, 2, dtype=torch.int)), boxes=None, masks=None)
        want_masks, want_iou = model.mask_decoder(features, model.prompt_encoder.get_dense_pe(), sparse, dense, True)
    decoder = SharedImageMaskDecoder(model, features)
    iou, hyper, image = decoder.decode_tokens(sparse, multimask_output=True)
    assert image.factored is not None
    assert image.factored.rows.shape[1] == sum(8 * (5 + sparse.shape[1]) + 1 + (i > 0) for i in range(depth))
    masks = decoder.upscale_masks(image, hyper)
    torch.testing.assert_close(iou, want_iou, atol=1e-5, rtol=1e-5)
    assert (masks - want_masks).abs().max() <= 1e-5 * want_masks.abs().max()


@pytest.mark.parametrize("batched", [False, True])
def test_mask_inputs_decode_as_the_module(ref_model, img0, predictor0, batched, monkeypatch):
    """A mask input's embedding ends in a 1x1 convolution from 16 channels, so its image tokens are
    factored from the start (the embedding's bias folded into the shared side, 16 rows per prompt):
    the module's IoUs and masks, fed each prompt's first answer back."""
    sparse, _ = _grid_prompts(ref_model, predictor0, img0, batched, monkeypatch, every=2)
    decoder = SharedImageMaskDecoder(ref_model, predictor0.features)
    _, hyper, image = decoder.decode_tokens(sparse, multimask_output=False)
    mask_inputs = decoder.upscale_masks(image, hyper)  # (B, 1, 256, 256) low-res logits
    pe = ref_model.prompt_encoder.get_dense_pe()
    with torch.no_grad():
        _, dense = ref_model.prompt_encoder(points=None, boxes=None, masks=mask_inputs)
        want_masks, want_iou = ref_model.mask_decoder(predictor0.features, pe, sparse, dense, True)
    iou, hyper, image = decoder.decode_tokens(sparse, multimask_output=True, mask_inputs=mask_inputs)
    assert image.factored is not None and image.factored.basis is not decoder.basis
    masks = decoder.upscale_masks(image, hyper)
    torch.testing.assert_close(iou, want_iou, atol=1e-5, rtol=1e-5)
    assert (masks - want_masks).abs().max() <= 1e-5 * want_masks.abs().max()
    assert ((masks > 0) != (want_masks > 0)).float().mean() < 1e-4
    # The prompt encoder's dense embeddings give the same through the unfactored path.
    iou_dense, hyper_dense, image_dense = decoder.decode_tokens(sparse, multimask_output=True, dense_embeddings=dense)
    assert image_dense.factored is None
    torch.testing.assert_close(iou_dense, iou, atol=1e-5, rtol=1e-5)
    masks_dense = decoder.upscale_masks(image_dense, hyper_dense)
    assert (masks_dense - want_masks).abs().max() <= 1e-5 * want_masks.abs().max()
    with pytest.raises(ValueError, match="not both"):
        decoder.decode_tokens(sparse, dense_embeddings=dense, mask_inputs=mask_inputs)


@pytest.mark.parametrize("batched", [False, True])
def test_factored_image_tokens_are_the_image_tokens(ref_model, img0, predictor0, batched, monkeypatch):
    """Prompts without a mask input carry their image tokens as scale * (src * gain) + rows^T cols
    + shift, from which the later projections and the upscaling are computed: that sum must be
    the image tokens the blocks produced."""
    sparse, _ = _grid_prompts(ref_model, predictor0, img0, batched, monkeypatch, every=3)
    decoder = SharedImageMaskDecoder(ref_model, predictor0.features)
    _, _, image = decoder.decode_tokens(sparse, multimask_output=True)
    factored = image.factored
    layers = ref_model.mask_decoder.transformer.layers
    gain = torch.stack([layer.norm4.weight for layer in layers]).prod(dim=0)
    # Each block adds its h*n attention rows (n = 5 output tokens + the prompt's), a mean row and,
    # after the first, a shift row.
    heads = layers[0].cross_attn_image_to_token.num_heads
    assert factored.rows.shape[1] == sum(heads * (5 + sparse.shape[1]) + 1 + (i > 0) for i in range(len(layers)))
    src = decoder.src[0]
    rebuilt = factored.scale * (src * gain) + factored.rows.transpose(1, 2) @ factored.cols + factored.shift
    # On CPU only the factored form is computed (the norms' statistics come from it); the batched
    # (GPU) form and the dense path form each prompt's tokens block by block, as the module does.
    assert (image.tokens is None) != batched
    _, dense = _grid_prompts(ref_model, predictor0, img0, batched, monkeypatch, every=3)
    _, _, own = decoder.decode_tokens(sparse, multimask_output=True, dense_embeddings=dense)
    assert own.factored is None
    scale = own.tokens.abs().max()
    assert (rebuilt - own.tokens).abs().max() <= 1e-5 * scale
    if batched:
        assert (rebuilt - image.tokens).abs().max() <= 1e-5 * scale


def test_norm_statistics_from_the_factored_tokens(ref_model, img0, predictor0, monkeypatch):
    """The norms' mean and 1/std computed from the factored form (SharedNormStats) equal those of
    the formed tokens, and so do the outputs."""
    sparse, _ = _grid_prompts(ref_model, predictor0, img0, False, monkeypatch, every=3)
    decoder = SharedImageMaskDecoder(ref_model, predictor0.features)
    iou, hyper, image = decoder.decode_tokens(sparse, multimask_output=True)
    assert decoder._norm_stats is not None and image.tokens is None
    formed = SharedImageMaskDecoder(ref_model, predictor0.features)
    monkeypatch.setattr(formed, "_shared_norm_stats", lambda: None)
    iou_formed, hyper_formed, image_formed = formed.decode_tokens(sparse, multimask_output=True)
    assert image_formed.tokens is not None
    # The factored rows carry each block's -mean * rstd and rstd; the scale, the product of the rstds.
    for part in ("scale", "rows", "cols"):
        want = getattr(image_formed.factored, part)
        assert (getattr(image.factored, part) - want).abs().max() <= 2e-6 * want.abs().max(), part
    torch.testing.assert_close(iou, iou_formed, atol=1e-5, rtol=1e-5)
    masks, want_masks = decoder.upscale_masks(image, hyper), formed.upscale_masks(image_formed, hyper_formed)
    assert (masks - want_masks).abs().max() <= 1e-5 * want_masks.abs().max()
    # Only two-block fp32 decoders use it.
    assert SharedImageMaskDecoder(ref_model, predictor0.features, dtype=torch.bfloat16)._shared_norm_stats() is None


@pytest.mark.parametrize("batched", [False, True])
def test_decode_confident_keeps_the_prompts_that_pass(ref_model, img0, predictor0, batched, monkeypatch):
    """IoU first, mask tokens only for prompts with an IoU prediction above the threshold: the same
    IoUs, hypernetwork weights and image tokens as decoding everything, for exactly those prompts."""
    sparse, _ = _grid_prompts(ref_model, predictor0, img0, batched, monkeypatch)
    decoder = SharedImageMaskDecoder(ref_model, predictor0.features)
    iou_all, hyper_all, image_all = decoder.decode_tokens(sparse, multimask_output=True)
    best = iou_all.max(dim=1).values.sort().values
    middle = len(best) // 2
    threshold = float(best[middle - 1] + best[middle]) / 2  # about half pass; no prompt within rounding of it
    iou, prompts, hyper, image = decoder.decode_confident(sparse, threshold)
    want = (iou_all > threshold).any(dim=1).nonzero().squeeze(1)
    assert 0 < len(want) < len(sparse)
    assert torch.equal(prompts, want)
    torch.testing.assert_close(iou, iou_all, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(hyper, hyper_all[want], atol=1e-5, rtol=1e-5)  # other batch shapes: other rounding
    for part in ("scale", "rows", "cols"):
        torch.testing.assert_close(getattr(image.factored, part), getattr(image_all.factored, part)[want], atol=1e-6, rtol=1e-6)
    # Nothing passes: no mask tokens are decoded at all.
    iou, prompts, hyper, image = decoder.decode_confident(sparse, float(iou_all.max()) + 1.0)
    assert len(prompts) == 0 and hyper.shape == (0, 3, hyper_all.shape[-1]) and len(image) == 0


@pytest.mark.parametrize("batched", [False, True])
def test_bf16_shared_image_decoder_agrees_with_fp32(ref_model, img0, predictor0, batched, monkeypatch):
    """The fast decoder (bf16 image side): fp32 outputs, masks at IoU >= 0.97 with the fp32 module's."""
    sparse, dense = _grid_prompts(ref_model, predictor0, img0, batched, monkeypatch)
    with torch.no_grad():
        want_masks, want_iou = ref_model.mask_decoder(
            predictor0.features, ref_model.prompt_encoder.get_dense_pe(), sparse, dense, True
        )
    decoder = SharedImageMaskDecoder(ref_model, predictor0.features, dtype=torch.bfloat16)
    iou, hyper, image_tokens = decoder.decode_tokens(sparse, multimask_output=True)
    masks = decoder.upscale_masks(image_tokens, hyper)
    assert image_tokens.tokens.dtype == torch.bfloat16
    assert iou.dtype == masks.dtype == torch.float32 and masks.shape == want_masks.shape
    assert not torch.equal(masks, want_masks)  # reduced precision really ran
    assert (iou - want_iou).abs().max() < 0.02
    ious = [mask_iou(a, b) for a, b in zip((masks > 0).flatten(0, 1).numpy(), (want_masks > 0).flatten(0, 1).numpy())]
    assert min(ious) >= 0.97, min(ious)


def test_fast_precisions_decode_in_bf16(ref_model, monkeypatch):
    monkeypatch.setattr("segany.predictor.cpu_has_bf16", lambda: True)  # as on a CPU with bf16 instructions
    assert SamPredictor(ref_model).decoder_dtype == torch.float32
    assert SamPredictor(ref_model, precision="bf16").decoder_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be"):
        SharedImageMaskDecoder(ref_model, torch.zeros(1, 256, 64, 64), dtype=torch.float16)


def test_upsampling_equals_the_official_interpolations(ref_model, img0):
    import torch.nn.functional as F

    generator = SamAutomaticMaskGenerator(ref_model, points_per_side=2)
    torch.manual_seed(0)
    low_res = torch.randn(3, 256, 256) * 5
    # The last two: an image whose long side is the encoder's input size (no second resize).
    cases = [((768, 1024), (480, 640)), ((1024, 683), (1500, 1000)), ((1024, 1024), (64, 64)),
             ((768, 1024), (768, 1024)), ((1024, 1024), (1024, 1024))]
    for input_size, size in cases:
        want = F.interpolate(low_res[:, None], (1024, 1024), mode="bilinear", align_corners=False)
        want = want[..., : input_size[0], : input_size[1]]
        want = F.interpolate(want, size, mode="bilinear", align_corners=False)[:, 0]
        with torch.inference_mode():
            got = torch.cat([x for _, x in generator._upsample(low_res, input_size, size)])
        # Banded products with the composed weights: equal up to float rounding.
        assert (got - want).abs().max() < 1e-4, input_size
        assert torch.equal(got > 0, want > 0), input_size


def _object_maps(data_dir) -> list[np.ndarray]:
    """24 COCO-MVal objects as 256x256 low-res logits (blurred, +-8 scale) in the top 192 rows (a 4:3 image)."""
    import cv2

    paths = sorted((data_dir / "coco_mval" / "masks").glob("*.png"))[::33][:24]
    maps = []
    for path in paths:
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        mask = cv2.resize(mask, (256, 192), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
        out = np.full((256, 256), -8.0, np.float32)
        out[:192] = cv2.GaussianBlur(mask * 2 - 1, (0, 0), 2) * 8
        maps.append(out)
    return maps


@pytest.fixture(scope="module")
def object_logits(data_dir):
    """Low-res logits shaped like real masks (:func:`_object_maps`), plus an empty and a full map."""
    maps = _object_maps(data_dir) + [np.full((256, 256), -8.0, np.float32), np.full((256, 256), 8.0, np.float32)]
    return torch.as_tensor(np.stack(maps))


@pytest.mark.parametrize(
    "input_size, size",
    [((768, 1024), (768, 1024)), ((768, 1024), (480, 640)), ((768, 1024), (1500, 2000)), ((1024, 683), (333, 222))],
)
def test_resized_stats_equal_full_size_computation(ref_model, object_logits, input_size, size):
    generator = SamAutomaticMaskGenerator(ref_model, points_per_side=2)
    full = torch.cat([x for _, x in generator._upsample(object_logits, input_size, size)])
    stats = ResizedLogitStats((256, 256), ref_model.image_encoder.img_size, input_size, size, object_logits.device)
    for threshold, offset in [(0.0, 1.0), (0.5, 2.0)]:
        stability, boxes = stats(object_logits, threshold, offset)
        want = stability_score(full, threshold, offset)
        assert torch.equal(stability.isnan(), want.isnan())
        assert torch.allclose(stability.nan_to_num(), want.nan_to_num(), atol=1e-6)
        assert torch.equal(boxes, logits_to_boxes(full, threshold))
    # Noise-like logits (most blocks on an edge) are left to the full computation.
    assert stats(torch.randn(2, 256, 256) * 3, 0.0, 1.0) is None


def test_blurry_logits_are_scored_at_full_size(data_dir):
    """The shipped 512 px model's masks, enlarged 8x onto a 1024x768 photo, have wide bands near the
    thresholds: scored block by block from the low-res logits they cost no less than resizing them
    whole (2.9 against 2.8 ms per mask, measured with the stage-4 model; 6.9 against 1.8 ms before
    the edge groups were split), so the low-res scoring leaves them to the full-size path; sharp
    object logits at the same scale (0.7-1.1 against 2.4-2.7 ms) stay on the low-res path."""
    import cv2

    from segany import load_default_model

    model = load_default_model()
    image = cv2.cvtColor(cv2.imread(str(data_dir / "coco_tiny" / "val2017" / "000000005001.jpg")), cv2.COLOR_BGR2RGB)
    image = cv2.resize(image, (1024, 768), interpolation=cv2.INTER_LINEAR)
    predictor = SamPredictor(model)
    predictor.set_image(image)
    points = build_point_grid(4) * np.array([[1024, 768]])
    coords = torch.as_tensor(predictor.transform.apply_coords(points, image.shape[:2]), dtype=torch.float)[:, None]
    with torch.no_grad():
        sparse, _ = model.prompt_encoder(points=(coords, torch.ones(coords.shape[:2], dtype=torch.int)), boxes=None, masks=None)
    decoder = SharedImageMaskDecoder(model, predictor.features)
    _, hyper, image_tokens = decoder.decode_tokens(sparse, multimask_output=True)
    logits = decoder.upscale_masks(image_tokens, hyper).flatten(0, 1)  # (48, 128, 128)
    low_res = model.prompt_encoder.mask_input_size
    stats = ResizedLogitStats(low_res, model.image_encoder.img_size, tuple(predictor.input_size), (768, 1024), logits.device)
    assert stats.enlarges
    assert stats(logits, model.mask_threshold, 1.0) is None
    # The masks that would go to full size even alone, first: the probe of the first 8 decides, and
    # the other 40 are not measured.
    alone = [stats(logits[i : i + 1], model.mask_threshold, 1.0) is None for i in range(len(logits))]
    assert sum(alone) >= 8
    order = sorted(range(len(logits)), key=lambda i: not alone[i])
    measured = []
    window_extrema = stats._window_extrema
    stats._window_extrema = lambda x: measured.append(len(x)) or window_extrema(x)
    assert stats(logits[order], model.mask_threshold, 1.0) is None
    assert measured == [8]
    measured.clear()
    assert stats(logits[order[:8]], model.mask_threshold, 1.0) is None and measured == [8]
    # Real object shapes, sharp at this scale, are still scored from the low-res logits.
    objects = torch.as_tensor(np.stack([cv2.resize(m, low_res[::-1], interpolation=cv2.INTER_AREA)
                                        for m in _object_maps(data_dir)]))
    assert stats(objects, model.mask_threshold, 1.0) is not None


@pytest.mark.parametrize(
    "input_size, size",
    [((768, 1024), (768, 1024)), ((768, 1024), (480, 640)), ((1024, 683), (1500, 1000)), ((1024, 1024), (64, 64))],
)
def test_full_size_scores_equal_the_official_formulas(ref_model, object_logits, monkeypatch, input_size, size):
    """Stability and boxes counted block by block (never writing the full-size logits) against the
    official computation: both interpolations, then the stability score and box of the whole map."""
    import torch.nn.functional as F

    import segany.automatic

    monkeypatch.setattr(segany.automatic, "_FULL_STATS_CHUNK_ELEMENTS", 2**20)  # several chunks
    generator = SamAutomaticMaskGenerator(ref_model, points_per_side=2)
    torch.manual_seed(0)
    logits = torch.cat([object_logits, torch.randn(4, 256, 256) * 3])  # objects, empty, full, noise
    want = F.interpolate(logits[:, None], (1024, 1024), mode="bilinear", align_corners=False)
    want = want[..., : input_size[0], : input_size[1]]
    want = F.interpolate(want, size, mode="bilinear", align_corners=False)[:, 0]
    for offset in (1.0, 2.0):
        generator.stability_score_offset = offset
        with torch.inference_mode():
            stability, boxes = generator._score_and_box_full(logits, input_size, size)
        want_stability = stability_score(want, 0.0, offset)
        assert torch.equal(stability.isnan(), want_stability.isnan())
        # Pixels within float rounding of a threshold may count differently: a few in millions.
        assert torch.allclose(stability.nan_to_num(), want_stability.nan_to_num(), atol=2e-5)
        assert torch.equal(boxes, logits_to_boxes(want, 0.0))


def test_banded_counts_equal_comparisons_at_ties():
    """rows_counts_above counts ``rows(x) > t`` exactly, on the float path (sign of y - t) and on
    the boolean one, including values exactly at a threshold."""
    from segany.modeling.sam import _banded_resize

    torch.manual_seed(0)
    x = torch.randn(5, 256, 300) * 3
    x[:, :, :40] = 1.0  # constant columns: their resized values sit exactly at threshold 1.0 or within rounding of it
    x[:, :, 40:60] = -1.0
    x[1] = 0.0
    resize = _banded_resize(256, 1024, 768, 480, torch.device("cpu"))
    y = resize.rows(x)
    assert (y == 1.0).any() and (y == -1.0).any()
    thresholds = (1.0, -1.0, 0.0)
    want = torch.stack([(y > t).sum((-2, -1)) for t in thresholds], dim=-1).int()
    assert torch.equal(resize.rows_counts_above(x, thresholds), want)
    assert torch.equal(resize.rows_counts_above(x.double(), thresholds), want)  # the boolean path


def test_full_size_scores_box_only_the_stable_masks(ref_model, object_logits):
    """The full-size path boxes only masks that pass the stability filter (the rest are dropped):
    same stability scores, the same boxes for those masks, zero boxes for the others."""
    generator = SamAutomaticMaskGenerator(ref_model, points_per_side=2)
    logits = torch.cat([object_logits, torch.randn(4, 256, 256) * 3])  # objects and noise
    input_size, size = (768, 1024), (480, 640)
    with torch.inference_mode():
        stab_all, boxes_all = generator._score_and_box_full(logits, input_size, size)
        stab, boxes = generator._score_and_box_full(logits, input_size, size, min_stability=0.9)
    stable = stab_all >= 0.9
    assert 0 < int(stable.sum()) < len(logits)
    assert torch.equal(stab.nan_to_num(-1), stab_all.nan_to_num(-1))
    assert torch.equal(boxes[stable], boxes_all[stable])
    assert not boxes[~stable].any()


def small_run(generator, img0, **kwargs):
    params = dict(points_per_side=4, pred_iou_thresh=0.5, stability_score_thresh=0.0, box_nms_thresh=1.0)
    params.update(kwargs)
    return configure(generator, **params).generate(img0)


def test_output_modes_agree(generator, img0):
    binary = small_run(generator, img0, output_mode="binary_mask")
    uncompressed = small_run(generator, img0, output_mode="uncompressed_rle")
    coco = small_run(generator, img0, output_mode="coco_rle")
    assert len(binary) == len(uncompressed) == len(coco) > 3
    for b, u, c in zip(binary, uncompressed, coco):
        mask = b["segmentation"]
        assert mask.dtype == np.bool_ and mask.shape == img0.shape[:2]
        np.testing.assert_array_equal(decode_rle(u["segmentation"]), mask)
        np.testing.assert_array_equal(decode_rle(c["segmentation"]), mask)
        assert isinstance(c["segmentation"]["counts"], str)
        assert b["area"] == u["area"] == c["area"] == int(mask.sum())
        ys, xs = np.nonzero(mask)
        assert b["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
        for key in ("predicted_iou", "stability_score", "point_coords", "crop_box", "bbox"):
            assert b[key] == u[key] == c[key]
    # Records are sorted by predicted IoU (the NMS order) and pass the IoU filter.
    ious = [r["predicted_iou"] for r in binary]
    assert ious == sorted(ious, reverse=True) and min(ious) > 0.5


@pytest.mark.parametrize("output_mode", ["coco_rle", "binary_mask"])
@pytest.mark.parametrize("min_region", [0, 400])
def test_final_masks_in_chunks(generator, img0, monkeypatch, output_mode, min_region):
    """Full-size masks are built, cleaned and encoded a few at a time (bounded memory for large
    images): two masks per chunk gives the records of one chunk for all, clean-up's NMS included."""
    import segany.automatic as automatic

    kwargs = dict(output_mode=output_mode, min_mask_region_area=min_region)
    whole = small_run(generator, img0, **kwargs)
    monkeypatch.setattr(automatic, "_FINAL_CHUNK_PIXELS", 2 * img0.shape[0] * img0.shape[1] + 5)
    chunked = small_run(generator, img0, **kwargs)
    assert len(whole) > 4 and len(chunked) == len(whole)
    for a, b in zip(whole, chunked):
        assert a.keys() == b.keys()
        for key in a:
            if output_mode == "binary_mask" and key == "segmentation":
                np.testing.assert_array_equal(a[key], b[key])
            else:
                assert a[key] == b[key], key


def test_explicit_point_grid_equals_points_per_side(generator, img0):
    by_side = small_run(generator, img0, output_mode="coco_rle")
    by_grid = small_run(
        generator, img0, output_mode="coco_rle", points_per_side=None, point_grids=[build_point_grid(4)]
    )
    assert by_side == by_grid


def test_embeddings_are_reused_only_for_the_same_image(generator, img0):
    small_run(generator, img0)
    cached = generator._embeddings[(0, 0, img0.shape[1], img0.shape[0])]
    small_run(generator, img0)
    assert generator._embeddings[(0, 0, img0.shape[1], img0.shape[0])] is cached
    flipped = np.ascontiguousarray(img0[:, ::-1])
    small_run(generator, flipped)
    assert generator._embeddings[(0, 0, img0.shape[1], img0.shape[0])] is not cached


def test_bad_arguments(ref_model):
    with pytest.raises(ValueError, match="exactly one"):
        SamAutomaticMaskGenerator(ref_model, points_per_side=8, point_grids=[build_point_grid(8)])
    with pytest.raises(ValueError, match="exactly one"):
        SamAutomaticMaskGenerator(ref_model, points_per_side=None)
    with pytest.raises(ValueError, match="output_mode"):
        SamAutomaticMaskGenerator(ref_model, output_mode="polygons")
    with pytest.raises(ValueError, match="crop layer"):
        SamAutomaticMaskGenerator(ref_model, points_per_side=None, point_grids=[build_point_grid(4)], crop_n_layers=1)
    with pytest.raises(ValueError, match="uint8"):
        SamAutomaticMaskGenerator(ref_model, points_per_side=2).generate(np.zeros((8, 8), np.uint8))
