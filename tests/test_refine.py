"""Edge refinement with GrabCut (segany.refine), in the click protocol, the CLI and the server."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

import segany
from segany.cli import main
from segany.evaluate.interactive import EvalOptions, SamClicker, evaluate, iou, load_folder_objects
from segany.io import read_image
from segany.refine import EdgeRefine, refine_mask

VAL = "(0[7-9]|1[0-9])_[0-9]{12}$"


@pytest.fixture(scope="module")
def default_predictor():
    return segany.SamPredictor(segany.load_default_model())


@pytest.fixture(scope="module")
def val_objects(data_dir):
    d = data_dir / "coco_mval"
    return load_folder_objects(d / "images", d / "masks", match=VAL)


def _textured_scene(size: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy orange disk on a noisy blue-grey background, and its true mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    truth = (xx - size * 0.5) ** 2 + (yy - size * 0.45) ** 2 < (size * 0.28) ** 2
    image = np.where(truth[..., None], [210, 120, 40], [70, 90, 110]).astype(float)
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def test_a_loose_mask_snaps_to_the_object_and_far_pixels_keep_their_label():
    image, truth = _textured_scene()
    size = truth.shape[0]
    loose = cv2.dilate(truth.astype(np.uint8), np.ones((13, 13), np.uint8)) > 0  # 6 px too wide all round
    loose[:, : size // 2 - 40] &= truth[:, : size // 2 - 40]  # ... and a wrong dent on the left: still loose
    config = EdgeRefine(band=0.04)  # 10 px at 240
    out = refine_mask(image, loose, config=config)
    assert iou(loose, truth) < 0.9 and iou(out, truth) > 0.97
    # Farther than the band from the input's boundary, nothing changes.
    band = round(config.band * size)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
    core = cv2.erode(loose.astype(np.uint8), k) > 0
    far_out = cv2.dilate(loose.astype(np.uint8), k) == 0
    assert out[core].all() and not out[far_out].any()


def test_clicks_are_sure_labels():
    image, truth = _textured_scene()
    inside = (120, 108)  # (x, y) in the disk, whose colour says "object"
    out = refine_mask(image, truth, np.array([inside]), np.array([0]), EdgeRefine(band=0.04, click_radius=0.02))
    r = round(0.02 * 240)
    assert not out[inside[1] - r + 1 : inside[1] + r, inside[0]].any()  # the negative click's disk is background
    assert out[truth].mean() > 0.95  # and the rest of the object stays


def test_large_regions_are_refined_at_max_side_and_agree_with_full_resolution():
    image, truth = _textured_scene(size=600, seed=1)
    loose = cv2.dilate(truth.astype(np.uint8), np.ones((25, 25), np.uint8)) > 0
    full = refine_mask(image, loose, config=EdgeRefine(band=0.04))
    small = refine_mask(image, loose, config=EdgeRefine(band=0.04, max_side=200))
    assert iou(full, truth) > 0.97 and iou(small, truth) > 0.95
    assert small.shape == truth.shape


def test_degenerate_and_bad_input():
    image, truth = _textured_scene(size=64)
    empty = np.zeros_like(truth)
    assert not refine_mask(image, empty, np.array([[10, 10]]), np.array([1])).any()  # nothing to refine
    everything = np.ones_like(truth)
    assert refine_mask(image, everything).all()  # no background to learn from: kept
    fortran = np.asfortranarray(truth)  # as pycocotools decodes RLE
    assert (refine_mask(image, fortran, np.array([[10, 10]]), np.array([1])) == refine_mask(image, truth, np.array([[10, 10]]), np.array([1]))).all()
    logits = np.where(truth, 5.0, -5.0).astype(np.float32)
    assert (refine_mask(image, logits) == refine_mask(image, truth)).all()  # logits: > 0 is the object
    with pytest.raises(ValueError, match="differ in size"):
        refine_mask(image, truth[:-1])
    with pytest.raises(ValueError, match="uint8 RGB"):
        refine_mask(image[..., 0], truth)
    with pytest.raises(ValueError, match="labels"):
        refine_mask(image, truth, np.array([[1, 2]]), np.array([1, 0]))
    for bad in ({"band": 0}, {"iterations": 0}, {"click_radius": -1}, {"max_side": 4}, {"context": -1}):
        with pytest.raises(ValueError):
            EdgeRefine(**bad)


def test_refinement_helps_the_default_model_on_coco_mval(val_objects, default_predictor):
    """The small default model places boundaries loosely; refined answers of a click session are
    closer to the ground truth after a few clicks (the effect the README's table measures)."""
    objects = val_objects[5::40]  # 6 objects, one per 40
    options = EvalOptions(max_clicks=5, long_side=500)
    plain = evaluate(SamClicker(default_predictor), objects, options, progress=False)
    refined = evaluate(SamClicker(default_predictor, refine=EdgeRefine()), objects, options, progress=False)
    # Per object it can go either way (GrabCut trusts colour); on average it is a clear gain.
    assert refined["miou_at_clicks"]["5"] > plain["miou_at_clicks"]["5"] + 0.02


def test_cli_eval_refine_settings_and_bad_input(tmp_path, data_dir, ref_checkpoint):
    d = data_dir / "coco_mval"
    out = tmp_path / "r.json"
    base = ["eval", "interactive", "--images", str(d / "images"), "--masks", str(d / "masks"), "--match", VAL,
            "--limit", "1", "--max-clicks", "2", "--long-side", "200", "--checkpoint", str(ref_checkpoint),
            "--output", str(out)]
    assert main(base + ["--refine", "--refine-band", "0.05"]) == 0
    r = json.loads(out.read_text())
    assert r["refine"]["band"] == 0.05 and r["model"].endswith("+refine")
    assert main(base + ["--refine", "--method", "grabcut"]) == 2
    assert main(base + ["--refine", "--refine-band", "0"]) == 2
    assert main(base + ["--refine-band", "0.05"]) == 2  # a setting without --refine is a mistake, not ignored
    # The progress file of an interrupted refined run is not resumed without --refine.
    partial = tmp_path / "r.json.partial.jsonl"
    partial.write_text(json.dumps({"settings": {"method": "sam", "refine": {"band": 0.05}}}) + "\n")
    assert main(base) == 2


def test_cli_segment_refine(tmp_path, coco_photo, capsys):
    plain, refined = tmp_path / "plain.png", tmp_path / "refined.png"
    prompt = ["--point", "320,200"]
    assert main(["segment", str(coco_photo), *prompt, "-o", str(plain)]) == 0
    capsys.readouterr()
    assert main(["segment", str(coco_photo), *prompt, "--refine", "-o", str(refined), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    a, b = (np.asarray(Image.open(p)) > 0 for p in (plain, refined))
    assert r["refined"] is True and b.sum() == r["area"]
    assert b[200, 320] and (a != b).any() and iou(b, a) > 0.5  # the same object, outlined anew
    expected = refine_mask(read_image(coco_photo), a, np.array([[320.0, 200.0]]), np.array([1]))
    assert (b == expected).all()

