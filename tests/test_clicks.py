"""Click sessions with mask feedback, and RITM's zoom-in (segany.clicks)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import segany
from segany.cli import main
from segany.clicks import BACKGROUND_LOGIT, ClickSegmenter, ZoomIn, object_crop
from segany.evaluate.interactive import EvalOptions, SamClicker, evaluate, load_folder_objects
from segany.masks import box_iou

VAL = "(0[7-9]|1[0-9])_[0-9]{12}$"


@pytest.fixture(scope="module")
def default_predictor():
    return segany.SamPredictor(segany.load_default_model())


@pytest.fixture(scope="module")
def photo(coco_photo):
    return np.asarray(Image.open(coco_photo).convert("RGB"))


def test_object_crop_grows_the_box_and_stays_inside():
    mask = np.zeros((300, 400), bool)
    mask[50:60, 100:150] = True  # box 50 x 10
    zoom = ZoomIn(expansion=1.4, min_crop=30)
    x0, y0, x1, y1 = object_crop(mask, np.zeros((0, 2)), zoom)
    assert (x1 - x0, y1 - y0) == (70, 30)  # 50 * 1.4, and 10 * 1.4 raised to the minimum
    assert (x0 + x1) / 2 == pytest.approx(125, abs=1) and (y0 + y1) / 2 == pytest.approx(55, abs=1)
    # A positive click outside the mask joins the box; a box at the border is moved inside, not cut.
    x0, y0, x1, y1 = object_crop(mask, np.array([[380.0, 55.0]]), zoom)
    assert (x0, x1) == (400 - round((381 - 100) * 1.4), 400)
    corner = np.zeros((300, 400), bool)
    corner[0:10, 0:10] = True
    assert object_crop(corner, np.zeros((0, 2)), ZoomIn(min_crop=100)) == (0, 0, 100, 100)
    assert object_crop(corner, np.zeros((0, 2)), ZoomIn(min_crop=1000)) == (0, 0, 400, 300)
    assert float(box_iou(torch.tensor([[0, 0, 10, 10]]), torch.tensor([[5, 0, 15, 10]]))[0, 0]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        ZoomIn(skip_clicks=0)


def test_without_zoom_it_is_the_predictor_feedback_loop(default_predictor, photo):
    points = np.array([[320, 200], [300, 260], [350, 180]], float)
    labels = np.array([1, 0, 1])
    seg = ClickSegmenter(default_predictor)
    seg.set_image(photo)
    got = [seg.predict(points[: k + 1], labels[: k + 1]) for k in range(3)]
    predictor = segany.SamPredictor(default_predictor.model)
    predictor.set_image(photo)
    previous = None
    for k, (masks, scores) in enumerate(got):
        want, want_scores, low = predictor.predict(points[: k + 1], labels[: k + 1], mask_input=previous,
                                                   multimask_output=k == 0)
        np.testing.assert_array_equal(masks, want)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-6)
        previous = low[int(np.argmax(want_scores))][None]
    assert len(got[0][0]) == 3 and len(got[1][0]) == 1
    # Known only by its size, an image needs embeddings from elsewhere (embed=...).
    with pytest.raises(ValueError, match="needs embed"):
        ClickSegmenter(default_predictor).set_image_size(*photo.shape[:2])


def test_reprojected_mask_prompt_matches_the_models_own(default_predictor, photo):
    """The full answer, re-projected into a view's low-res frame, is the model's own low-res mask
    where the view is the whole image: the frames line up (resize, padding, 4x grid)."""
    seg = ClickSegmenter(default_predictor)
    seg.set_image(photo)
    seg.predict(np.array([[320, 200]]), np.array([1]))
    own = seg._low_res
    seg._low_res_view = None  # as if the answer came from another view: re-project it
    reprojected = seg._mask_prompt(_full(photo))[0]
    h, w = default_predictor.input_size
    valid = (slice(0, h // 4), slice(0, w // 4))
    agree = ((own[valid] > 0) == (reprojected[valid] > 0)).mean()
    assert agree > 0.98 and (own[valid] > 0).mean() > 0.01
    np.testing.assert_allclose(reprojected[h // 4 + 2 :], BACKGROUND_LOGIT, atol=1e-4)  # the padding


def _full(image: np.ndarray) -> tuple[int, int, int, int]:
    return 0, 0, image.shape[1], image.shape[0]


def test_zoom_in_answers_on_a_crop_and_keeps_it(default_predictor, photo, monkeypatch):
    encoded: list[tuple[int, int]] = []
    real_set_image = default_predictor.set_image
    monkeypatch.setattr(default_predictor, "set_image", lambda im, *a: (encoded.append(im.shape[:2]), real_set_image(im, *a)))
    zoom = ZoomIn(min_crop=64)
    seg = ClickSegmenter(default_predictor, zoom_in=zoom)
    seg.set_image(photo)
    assert encoded == [photo.shape[:2]]
    points, labels = np.array([[320.0, 200.0]]), np.array([1])
    masks, _ = seg.predict(points, labels)  # the first click: whole image, 3 candidates
    assert len(masks) == 3 and len(encoded) == 1
    first = seg.logits > 0
    crop = object_crop(first, points, zoom)
    assert crop != _full(photo)
    # The second click is answered on the crop around the first answer; outside it: background.
    x0, y0, x1, y1 = crop
    inside = np.array([[(x0 + x1) / 2 + 1, (y0 + y1) / 2 + 1]])
    points, labels = np.vstack([points, inside]), np.array([1, 1])
    (mask,), _ = seg.predict(points, labels)
    assert encoded[-1] == (y1 - y0, x1 - x0) and default_predictor.original_size == (y1 - y0, x1 - x0)
    outside = np.ones(mask.shape, bool)
    outside[y0:y1, x0:x1] = False
    assert not mask[outside].any() and (seg.logits[outside] == BACKGROUND_LOGIT).all()
    # A negative click far outside the crop does not move it (no new encoding).
    before = len(encoded)
    far = np.array([[5.0, 5.0]]) if x0 > 10 and y0 > 10 else np.array([[photo.shape[1] - 5.0, photo.shape[0] - 5.0]])
    seg.predict(np.vstack([points, far]), np.array([1, 1, 0]))
    if float(box_iou(torch.tensor([object_crop(seg.logits > 0, points, zoom)]), torch.tensor([crop]))[0, 0]) >= zoom.recompute_iou:
        assert len(encoded) == before
    # A positive click outside the crop makes a new crop that holds it.
    seg.reset()
    seg.predict(points[:1], labels[:1])
    away = np.array([[photo.shape[1] - 3.0, photo.shape[0] - 3.0]])
    seg.predict(np.vstack([points[:1], away]), np.array([1, 1]))
    new = seg._crop
    assert new[0] <= away[0, 0] < new[2] and new[1] <= away[0, 1] < new[3]


def test_zoom_in_helps_on_small_objects(data_dir, default_predictor):
    """On the smallest COCO-MVal validation objects the default model sees a few 16 px patches;
    zoom-in gives them the encoder's whole input and so a better mask after a few clicks."""
    d = data_dir / "coco_mval"
    objects = load_folder_objects(d / "images", d / "masks", match=VAL)
    fraction = {o.key: float((o.load_mask() == 1).mean()) for o in objects[::3]}
    small = [o for o in objects if 0.003 < fraction.get(o.key, 1.0) < 0.01][:4]  # 0.3-1% of the image
    assert len(small) == 4
    options = EvalOptions(max_clicks=4, long_side=500)
    plain = evaluate(SamClicker(default_predictor), small, options, progress=False)
    zoomed = evaluate(SamClicker(default_predictor, ZoomIn()), small, options, progress=False)
    assert plain["miou_at_clicks"]["1"] == zoomed["miou_at_clicks"]["1"]  # click 1 is never zoomed
    assert zoomed["miou_at_clicks"]["4"] > plain["miou_at_clicks"]["4"] + 0.05


def test_cli_zoom_in_settings_and_bad_input(tmp_path, data_dir, ref_checkpoint):
    d = data_dir / "coco_mval"
    out = tmp_path / "r.json"
    base = ["eval", "interactive", "--images", str(d / "images"), "--masks", str(d / "masks"), "--match", VAL,
            "--limit", "1", "--max-clicks", "2", "--long-side", "200", "--checkpoint", str(ref_checkpoint),
            "--output", str(out)]
    assert main(base + ["--zoom-in", "--zoom-min-crop", "50"]) == 0
    r = json.loads(out.read_text())
    assert r["zoom_in"]["min_crop"] == 50 and r["model"].endswith("+zoom-in")
    assert main(base + ["--zoom-in", "--method", "grabcut"]) == 2
    assert main(base + ["--zoom-in", "--zoom-expansion", "0.5"]) == 2
    # The progress file of an interrupted zoom-in run is not resumed by a run without zoom-in.
    partial = tmp_path / "r.json.partial.jsonl"
    partial.write_text(json.dumps({"settings": {"method": "sam", "zoom_in": {"min_crop": 50}}}) + "\n")
    assert main(base) == 2
    assert main(base + ["--restart"]) == 0 and "zoom_in" not in json.loads(out.read_text())


def test_cli_segment_zoom_in(tmp_path, coco_photo, capsys):
    """`segany segment --zoom-in`: the whole-image answer, then a second one on a crop around it."""
    out = tmp_path / "m.png"
    for prompt in (["--point", "320,200"], ["--box", "250,130,400,260", "--multimask"]):
        assert main(["segment", str(coco_photo), *prompt, "--zoom-in", "-o", str(out), "--json"]) == 0
        r = json.loads(capsys.readouterr().out)
        x0, y0, x1, y1 = r["zoom_crop"]
        h, w = r["size"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h and (x1 - x0) * (y1 - y0) < h * w
        mask = np.asarray(Image.open(out)) > 0
        assert mask.sum() == r["area"] > 0 and len(r["scores"]) == 1
        outside = np.ones_like(mask)
        outside[y0:y1, x0:x1] = False
        assert not mask[outside].any()
