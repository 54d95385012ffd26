"""Prompt simulation and losses of SAM training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segany.train.data import IGNORE
from segany.train.losses import interactive_loss, mask_iou
from segany.train.prompts import (
    FIRST,
    MASK,
    POINT,
    error_points,
    foreground_points,
    interaction_schedule,
    mask_boxes,
    noisy_boxes,
)


def test_schedule_is_11_iterations_with_two_mask_rounds():
    seen_positions = set()
    for seed in range(50):
        s = interaction_schedule(np.random.default_rng(seed))
        assert len(s) == 11 and s[0] == FIRST and s[-1] == MASK
        assert s.count(POINT) == 8 and s.count(MASK) == 2
        seen_positions.add(s.index(MASK))
    assert len(seen_positions) > 4  # the first mask-only round moves around


def _blob(h=100, w=120):
    gt = torch.zeros((2, h, w), dtype=torch.uint8)
    gt[0, 20:60, 30:90] = 1
    gt[1, 50:90, 10:40] = 1
    gt[1, 0:5] = IGNORE
    return gt


def test_foreground_points_lie_on_the_object():
    gt = _blob()
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = foreground_points(gt, rng).long()
        for b in range(2):
            assert gt[b, p[b, 1], p[b, 0]] == 1


def test_noisy_boxes_noise_scale_and_cap():
    gt = torch.zeros((1, 600, 600), dtype=torch.uint8)
    gt[0, 100:500, 200:260] = 1  # 60 wide, 400 tall
    tight = mask_boxes(gt)[0]
    assert tight.tolist() == [200, 100, 259, 499]
    rng = np.random.default_rng(0)
    d = torch.stack([noisy_boxes(gt, rng)[0] - tight for _ in range(400)])
    assert d.abs().max() <= 20 + 1e-4
    assert 0.07 * 59 < d[:, 0].std() < 0.13 * 59  # std 10% of the width
    assert (d[:, 1].abs() == 20).float().mean() > 0.3  # 10% of 399 px is clipped at 20 px often


def test_error_points_sign_and_placement():
    gt = _blob()
    pred = torch.zeros((2, 100, 120), dtype=torch.bool)
    pred[0] = gt[0] == 1
    pred[0, 20:30, 30:90] = False  # false negatives only
    pred[1] = gt[1] == 1
    pred[1, 0:5] = True  # only over the ignore band: not an error
    pred[1, 10:12, 100:110] = True  # false positives
    rng = np.random.default_rng(0)
    for _ in range(10):
        c, lab = error_points(pred, gt, rng)
        x, y = c.long().T
        assert lab[0] == 1 and gt[0, y[0], x[0]] == 1 and not pred[0, y[0], x[0]]
        assert lab[1] == 0 and pred[1, y[1], x[1]] and gt[1, y[1], x[1]] == 0
    c, lab = error_points(gt == 1, gt, rng)
    assert (lab == -1).all()  # nothing to correct


def test_centred_clicks_follow_the_evaluation_clicker():
    """center_click_prob: the clicks the evaluation places (RITM's iterative training), mixed
    per mask with the paper's uniform ones; 0 leaves the paper's sampling and its random stream as they were."""
    from segany.evaluate.clicker import first_click, next_click

    gt = _blob()
    pred = torch.zeros((2, 100, 120), dtype=torch.bool)
    pred[0] = gt[0] == 1
    pred[0, 20:30, 30:90] = False  # a missed band
    pred[1] = gt[1] == 1
    pred[1, 10:12, 100:110] = True  # wrong background
    c, lab = error_points(pred, gt, np.random.default_rng(0), center_prob=1.0)
    for b in range(2):
        x, y, label = next_click(pred[b].numpy(), gt[b].numpy())
        assert c[b].tolist() == [x, y] and lab[b] == label
    assert lab.tolist() == [1, 0] and c[0, 1] == 24.0  # the middle row of the 10-row band (rows 20-29)
    p = foreground_points(gt, np.random.default_rng(0), center_prob=1.0)
    assert [p[b].tolist() for b in range(2)] == [list(first_click(gt[b].numpy())[:2]) for b in range(2)]
    c, lab = error_points(gt == 1, gt, np.random.default_rng(0), center_prob=1.0)
    assert (lab == -1).all()  # nothing to correct
    c, lab = error_points(torch.stack([pred[0], gt[1] == 1]), gt, np.random.default_rng(0), center_prob=1.0)
    assert lab.tolist() == [1, -1] and c[0].tolist() == [next_click(pred[0].numpy(), gt[0].numpy())[0], 24.0]
    assert c[1].tolist() == [0.0, 0.0]  # the placeholder of a mask with nothing to correct
    # Mixed: over many draws both kinds occur; at 0 the stream is exactly the uniform sampler's.
    draws = {tuple(error_points(pred, gt, np.random.default_rng(s), center_prob=0.5)[0][0].tolist()) for s in range(40)}
    assert (float(next_click(pred[0].numpy(), gt[0].numpy())[0]), 24.0) in draws and len(draws) > 5
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    assert torch.equal(error_points(pred, gt, a, center_prob=0.0)[0], error_points(pred, gt, b)[0])
    assert a.random() == b.random()


def test_loss_takes_min_of_three_and_trains_iou_on_actual_iou():
    gt = torch.zeros((1, 64, 64), dtype=torch.uint8)
    gt[0, 16:48, 16:48] = 1
    good = torch.where(gt[0] == 1, 10.0, -10.0)
    bad = -good
    low = torch.nn.functional.interpolate(torch.stack([bad, good, bad])[None], size=(16, 16), mode="area")
    out = interactive_loss(low, torch.tensor([[0.0, 1.0, 0.0]]), gt)
    assert out.chosen.tolist() == [1]
    assert out.iou.item() > 0.95
    assert out.iou_mse.item() < 0.01  # predicted IoUs equal the actual ones (~1, 0, 0)
    single = interactive_loss(low[:, :1], torch.tensor([[0.0]]), gt)
    assert single.total > 10 * out.total


def test_ignore_pixels_do_not_count():
    gt = torch.zeros((1, 32, 32), dtype=torch.uint8)
    gt[0, 8:24, 8:24] = 1
    logits = torch.where(gt == 1, 5.0, -5.0)[:, None].float()
    logits_wrong = logits.clone()
    logits_wrong[..., 0:4, :] = 5.0  # wrong, but only where we will ignore
    gt_ignored = gt.clone()
    gt_ignored[0, 0:4, :] = IGNORE
    assert mask_iou(logits_wrong, gt_ignored).item() == pytest.approx(1.0)
    a = interactive_loss(logits_wrong, torch.ones(1, 1), gt_ignored).total
    b = interactive_loss(logits, torch.ones(1, 1), gt_ignored).total
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


def _reference_error_points(pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator):
    """The plain per-mask definition: a uniform index into np.nonzero of the error region."""
    coords, labels = np.zeros((len(gt), 2), np.float32), np.full(len(gt), -1)
    for b in range(len(gt)):
        fn, fp = (gt[b] == 1) & ~pred[b], (gt[b] == 0) & pred[b]
        ys, xs = np.nonzero(fn | fp)
        if len(ys):
            i = int(rng.integers(0, len(ys)))
            coords[b] = xs[i], ys[i]
            labels[b] = int(fn[ys[i], xs[i]])
    return coords, labels


def test_batched_picks_equal_picking_from_nonzero_with_the_same_generator():
    """The batched sampler draws the same points as indexing np.nonzero, from the same generator
    stream, so training runs stay reproducible whatever the device; boxes are the tight boxes."""
    gen = np.random.default_rng(5)
    gt = gen.integers(0, 2, size=(12, 37, 29)).astype(np.uint8)
    gt[3] = 0  # an empty object
    gt[4, :5] = 255  # an ignore band
    pred = gen.random((12, 37, 29)) < 0.3
    pred[7] = gt[7] == 1  # no error
    ref_c, ref_l = _reference_error_points(pred, gt, np.random.default_rng(9))
    rng = np.random.default_rng(9)
    c, lab = error_points(torch.from_numpy(pred), torch.from_numpy(gt), rng)
    assert np.array_equal(c.numpy(), ref_c) and np.array_equal(lab.numpy(), ref_l)
    assert lab[7] == -1 and lab[3] in (0, -1)
    # The generator is left where the reference leaves it.
    reference_rng = np.random.default_rng(9)
    _reference_error_points(pred, gt, reference_rng)
    assert rng.random() == reference_rng.random()
    full = torch.from_numpy(gt[[0, 1, 2, 5]])
    boxes = mask_boxes(full)
    for b, mask in enumerate(full.numpy()):
        ys, xs = np.nonzero(mask == 1)
        assert boxes[b].tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]
