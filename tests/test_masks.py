"""Mask utilities on real object masks (COCO-MVal) and on inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from segany.masks import (
    batched_nms,
    box_iou,
    build_all_layer_point_grids,
    build_point_grid,
    clean_mask,
    decode_rle,
    encode_rle,
    encode_rle_batch,
    generate_crop_boxes,
    is_box_near_crop_edge,
    logits_to_boxes,
    mask_areas,
    masks_to_boxes,
    masks_to_uncompressed_rle,
    nms,
    remove_small_regions,
    rle_area,
    stability_score,
    uncompressed_rle_to_coco,
)


@pytest.fixture(scope="module")
def real_masks(data_dir):
    """Eight real object masks from COCO-MVal, resized (nearest) to 320x240."""
    paths = sorted((data_dir / "coco_mval" / "masks").glob("*.png"))[::97][:8]
    out = np.stack([np.asarray(Image.open(p).convert("L").resize((320, 240), Image.NEAREST)) > 127 for p in paths])
    assert out.any(axis=(1, 2)).all()
    return out


def test_rle_round_trip_and_batch_encoding(real_masks):
    batch = encode_rle_batch(real_masks)
    for mask, rle in zip(real_masks, batch):
        assert rle == encode_rle(mask)
        assert isinstance(rle["counts"], str)
        np.testing.assert_array_equal(decode_rle(rle), mask)
        assert rle_area(rle) == int(mask.sum())
    assert encode_rle_batch(np.zeros((0, 4, 5), dtype=bool)) == []


def test_uncompressed_rle_matches_pycocotools(real_masks):
    masks = np.concatenate([real_masks, np.zeros_like(real_masks[:1]), np.ones_like(real_masks[:1])])
    rles = masks_to_uncompressed_rle(torch.as_tensor(masks))
    for mask, rle in zip(masks, rles):
        h, w = mask.shape
        assert rle["size"] == [h, w]
        assert sum(rle["counts"]) == h * w
        assert rle_area(rle) == int(mask.sum())
        np.testing.assert_array_equal(decode_rle(rle), mask)
        assert uncompressed_rle_to_coco(rle) == encode_rle(mask)
    # A mask starting with foreground begins with an empty run of zeros.
    assert rles[-1]["counts"][0] == 0


def test_boxes_and_areas(real_masks):
    masks = np.concatenate([real_masks, np.zeros_like(real_masks[:1])])
    boxes = masks_to_boxes(torch.as_tensor(masks))
    for mask, box in zip(masks, boxes.tolist()):
        if not mask.any():
            assert box == [0, 0, 0, 0]
            continue
        ys, xs = np.nonzero(mask)
        assert box == [xs.min(), ys.min(), xs.max(), ys.max()]
    assert mask_areas(torch.as_tensor(masks)).tolist() == [int(m.sum()) for m in masks]
    # Batched over extra leading dimensions too.
    assert masks_to_boxes(torch.as_tensor(masks).reshape(3, 3, *masks.shape[1:])).shape == (3, 3, 4)


def test_logits_to_boxes_equals_boxes_of_thresholded_logits(real_masks):
    rng = np.random.default_rng(0)
    # Smooth logits around real object shapes, plus one all-negative map (an empty mask).
    logits = torch.as_tensor(real_masks.astype(np.float32) * 4 - 2 + rng.normal(0, 1.5, real_masks.shape).astype(np.float32))
    logits = torch.cat([logits, torch.full_like(logits[:1], -3.0)])
    for threshold in (0.0, 1.0, -1.0):
        assert torch.equal(logits_to_boxes(logits, threshold), masks_to_boxes(logits > threshold))
    assert logits_to_boxes(logits.reshape(3, 3, *logits.shape[1:]), 0.0).shape == (3, 3, 4)


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    """The textbook sequential algorithm, as an oracle."""
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    iou = box_iou(torch.as_tensor(boxes), torch.as_tensor(boxes)).numpy()
    kept: list[int] = []
    for i in order:
        if all(iou[k, i] <= thresh for k in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("thresh", [0.3, 0.7, 1.0])
def test_nms_equals_greedy_algorithm(seed, thresh):
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 200, size=(300, 2))
    wh = rng.integers(1, 120, size=(300, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    # Quantised scores create ties, which must be visited in index order.
    scores = np.round(rng.random(300) * 20) / 20
    keep = nms(torch.as_tensor(boxes), torch.as_tensor(scores, dtype=torch.float32), thresh)
    assert keep.tolist() == greedy_nms(boxes, scores.astype(np.float32), thresh)
    if thresh == 1.0:
        assert len(keep) == len(boxes)


def test_batched_nms_keeps_categories_apart():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert batched_nms(boxes, scores, None, 0.5).tolist() == [0]
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 1]), 0.5).tolist() == [0, 2]
    assert nms(torch.zeros((0, 4)), torch.zeros(0), 0.5).tolist() == []


def test_stability_score():
    logits = torch.full((2, 10, 10), -5.0)
    logits[0, :4] = 5.0  # 40 px well above both cut-offs
    logits[0, 4:5] = 0.5  # 10 px only above the low cut-off
    logits[1, :5] = 5.0
    score = stability_score(logits, 0.0, 1.0)
    assert score.tolist() == pytest.approx([40 / 50, 1.0])


def test_small_holes_and_islands(real_masks):
    mask = real_masks[0].copy()
    ys, xs = np.nonzero(mask)
    cy, cx = int(np.median(ys)), int(np.median(xs))
    holed = mask.copy()
    holed[cy - 2 : cy + 2, cx - 2 : cx + 2] = False  # a 16 px hole, inside the object
    assert mask[cy - 2 : cy + 2, cx - 2 : cx + 2].all()
    filled, changed = remove_small_regions(holed, 50, "holes")
    assert changed
    np.testing.assert_array_equal(filled[cy - 2 : cy + 2, cx - 2 : cx + 2], True)

    islands = mask.copy()
    far = np.argwhere(~np.pad(mask, 6, constant_values=False)[:-12, :-12] & ~mask)
    y, x = far[len(far) // 2]
    islands[y : y + 3, x : x + 3] = True  # 9 px island
    cleaned, changed = remove_small_regions(islands, 50, "islands")
    assert changed and not cleaned[y : y + 3, x : x + 3].any()
    np.testing.assert_array_equal(cleaned & ~islands, False)

    untouched, changed = remove_small_regions(mask, 1, "islands")
    assert not changed and (untouched == mask).all()
    # Every island small: the largest one stays.
    two = np.zeros((20, 20), bool)
    two[1:3, 1:3] = True
    two[10:13, 10:13] = True
    kept, changed = remove_small_regions(two, 100, "islands")
    assert changed and kept.sum() == 9 and kept[10:13, 10:13].all()
    both, changed = clean_mask(holed | islands, 50)
    assert changed and both[cy - 2 : cy + 2, cx - 2 : cx + 2].all() and not both[y : y + 3, x : x + 3].any()
    with pytest.raises(ValueError):
        remove_small_regions(mask, 10, "spots")


def test_point_grids():
    np.testing.assert_allclose(build_point_grid(2), [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])
    grids = build_all_layer_point_grids(32, 2, 2)
    assert [len(g) for g in grids] == [32 * 32, 16 * 16, 8 * 8]
    assert grids[0].min() == 1 / 64 and grids[0].max() == 1 - 1 / 64


def test_crop_boxes_for_a_640x480_image():
    boxes, layers = generate_crop_boxes((480, 640), 1, 512 / 1500)
    # Layer 1: overlap int(512/1500 * 480) = 163; crops ceil((163 + 640) / 2) = 402 wide, 322 high.
    assert boxes == [[0, 0, 640, 480], [0, 0, 402, 322], [0, 159, 402, 480], [239, 0, 640, 322], [239, 159, 640, 480]]
    assert layers == [0, 1, 1, 1, 1]
    boxes, layers = generate_crop_boxes((480, 640), 2, 512 / 1500)
    assert layers.count(2) == 16
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480


def test_box_near_crop_edge():
    crop, image = [0, 0, 320, 240], [0, 0, 640, 480]
    boxes = torch.tensor([[10, 10, 100, 100], [10, 10, 310, 100], [300, 10, 330, 100]])
    # The first touches only image edges, the second the crop's right edge (x1 = 310, within 20).
    assert is_box_near_crop_edge(boxes, crop, image).tolist() == [False, True, True]
