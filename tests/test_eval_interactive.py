"""The interactive evaluation protocol (RITM/SAM clicks) and `segany eval interactive`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from segany.cli import main
from segany.evaluate.interactive import (
    EvalOptions,
    GrabCutClicker,
    evaluate,
    first_click,
    iou,
    load_folder_objects,
    next_click,
    noc,
    summarize,
)
from segany.train.data import IGNORE

VAL = "(0[7-9]|1[0-9])_[0-9]{12}$"


def test_first_click_is_the_deepest_interior_point():
    gt = np.zeros((50, 80), np.uint8)
    gt[10:41, 20:71] = 1  # 31 x 51 rectangle: the deepest points form the segment y = 25, x = 35..55
    x, y, label = first_click(gt)
    assert label == 1 and y == 25 and 35 <= x <= 55
    gt[10:41, 50:71] = 0  # now 31 x 30: the deepest point is the centre (34.5, 25)
    x, y, _ = first_click(gt)
    assert abs(x - 34.5) <= 1 and abs(y - 25) <= 1
    gt2 = np.zeros((40, 40), np.uint8)
    gt2[:, :10] = 1  # touches the image border: the border counts as boundary
    x, _, _ = first_click(gt2)
    assert x in (4, 5)


def test_next_click_goes_to_the_largest_error_region():
    gt = np.zeros((60, 60), np.uint8)
    gt[10:50, 10:50] = 1
    pred = gt == 1
    pred[10:50, 40:50] = False  # 400 px false negative strip
    pred[0:5, 0:20] = True  # 100 px false positive
    x, y, label = next_click(pred, gt)
    assert label == 1 and 40 <= x < 50 and 10 <= y < 50 and (x, y) != (40, 10)
    pred2 = gt == 1
    pred2[52:60, 0:60] = True  # 480 px false positive band
    x, y, label = next_click(pred2, gt)
    assert label == 0 and y >= 52
    assert next_click(gt == 1, gt) is None


def _deepest_by_brute_force(region: np.ndarray) -> tuple[int, int]:
    """The protocol's definition, computed directly: the region pixel whose squared distance to the
    nearest pixel outside it (the frame around the image included) is largest, first in row-major order."""
    outside = np.argwhere(~np.pad(region, 1)) - 1  # (y, x) of every non-region pixel and of the frame
    inside = np.argwhere(region)
    squared = ((inside[:, None, :] - outside[None, :, :]) ** 2).sum(-1).min(1)
    y, x = inside[int(np.argmax(squared))]  # argwhere is row-major, argmax takes the first maximum
    return int(x), int(y)


def test_clicks_match_the_protocol_on_random_shapes():
    """Clicks are placed inside crops around each region; they must be those of the whole image,
    with ties between equally deep pixels broken by row-major order, on shapes full of ties."""
    import cv2

    rng = np.random.default_rng(0)
    for trial in range(60):
        h, w = int(rng.integers(8, 40)), int(rng.integers(8, 40))
        gt = np.zeros((h, w), np.uint8)
        pred = np.zeros((h, w), bool)
        for target in (gt, pred):
            for _ in range(int(rng.integers(1, 4))):  # rectangles, some at the image border
                y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
                target[y0 : y0 + int(rng.integers(1, h)), x0 : x0 + int(rng.integers(1, w))] = 1
        if trial % 3 == 0:
            gt[rng.random((h, w)) < 0.05] = IGNORE
        if (gt == 1).any():
            assert first_click(gt)[:2] == _deepest_by_brute_force(gt == 1)
        # The expected next click: the largest error component of the whole frame, missed object first.
        best = None
        for label, error in ((1, (gt == 1) & ~pred), (0, (gt == 0) & pred)):
            count, comp, stats, _ = cv2.connectedComponentsWithStats(error.astype(np.uint8), connectivity=8)
            if count > 1:
                k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
                if best is None or stats[k, cv2.CC_STAT_AREA] > best[0]:
                    best = (stats[k, cv2.CC_STAT_AREA], comp == k, label)
        expected = None if best is None else (*_deepest_by_brute_force(best[1]), best[2])
        assert next_click(pred, gt) == expected, trial


def test_clicks_do_not_depend_on_where_the_object_lies():
    """OpenCV's float distances round differently at different places in an image, which picked
    different pixels among equally deep ones for these shapes in a crop and in a larger frame."""
    import cv2

    polygons = [
        [[7, 20], [35, 26], [35, 20], [21, 4]],
        [[25, 9], [0, 3], [1, 38], [23, 25], [2, 14]],
        [[28, 6], [2, 8], [0, 31]],
        [[37, 13], [36, 19], [17, 33], [5, 17]],
        [[38, 35], [7, 23], [14, 5], [34, 33], [32, 33]],
    ]
    for points in polygons:
        shape = np.zeros((40, 40), np.uint8)
        cv2.fillPoly(shape, [np.array(points, np.int32)], 1)
        x0, y0 = _deepest_by_brute_force(shape == 1)
        for top, left in ((0, 0), (30, 50), (7, 61)):
            gt = np.zeros((120, 120), np.uint8)
            gt[top : top + 40, left : left + 40] = shape
            assert first_click(gt) == (x0 + left, y0 + top, 1)
            pred = np.zeros((120, 120), bool)  # all missed: the next click is the first one
            assert next_click(pred, gt) == (x0 + left, y0 + top, 1)


def test_iou_leaves_ignore_out_and_noc_caps():
    gt = np.zeros((10, 10), np.uint8)
    gt[2:8, 2:8] = 1
    gt[0, :] = IGNORE
    pred = gt == 1
    pred[0, :] = True
    assert iou(pred, gt) == 1.0
    assert noc([0.5, 0.86, 0.95], 0.85, 20) == 2 and noc([0.5, 0.6], 0.9, 20) == 20


def test_summary_counts_and_keys():
    opts = EvalOptions(max_clicks=4)
    per = {"a": {"ious": [0.5, 0.86, 0.91, 0.95], "oracle_iou_1": 0.6},
           "b": {"ious": [0.2, 0.3, 0.4, 0.5], "oracle_iou_1": 0.7}}
    s = summarize(per, opts)
    assert list(s["miou_at_clicks"]) == ["1", "2", "3", "4"]
    assert s["miou_at_clicks"]["1"] == pytest.approx(0.35)
    assert s["noc85"] == pytest.approx((2 + 4) / 2) and s["noc85_failed"] == 1
    assert s["noc90"] == pytest.approx((3 + 4) / 2) and s["noc90_failed"] == 1
    assert s["miou_1_oracle"] == pytest.approx(0.65)


def test_grabcut_improves_with_clicks(data_dir):
    objects = load_folder_objects(data_dir / "coco_mval" / "images", data_dir / "coco_mval" / "masks", match=VAL, limit=2)
    result = evaluate(GrabCutClicker(), objects, EvalOptions(max_clicks=4, long_side=160), progress=False)
    curve = [result["miou_at_clicks"][str(k)] for k in range(1, 5)]
    assert result["objects"] == 2 and 0 <= curve[0] <= 1
    assert curve[-1] > curve[0]


def test_cli_eval_sam_with_plot_and_resume(tmp_path, data_dir, ref_checkpoint, capsys):
    d = data_dir / "coco_mval"
    out = tmp_path / "r.json"
    args = ["eval", "interactive", "--images", str(d / "images"), "--masks", str(d / "masks"), "--match", VAL,
            "--limit", "2", "--max-clicks", "3", "--long-side", "200", "--checkpoint", str(ref_checkpoint),
            "--output", str(out), "--plot", str(tmp_path / "c.png")]
    other = tmp_path / "other.json"  # another method's results, drawn beside
    other.write_text(json.dumps({"model": "other", "miou_at_clicks": {"1": 0.2, "2": 0.4, "3": 0.5}}))
    args += ["--compare", str(other)]
    # A progress file from an interrupted run: its finished object is reused, a cut line skipped.
    objects = load_folder_objects(d / "images", d / "masks", match=VAL, limit=2)
    partial = tmp_path / "r.json.partial.jsonl"
    partial.write_text(json.dumps({"key": objects[0].key, "ious": [0.123, 0.5, 0.7], "oracle_iou_1": 0.2}) + "\n{\"key\": ")
    assert main(args) == 0
    r = json.loads(out.read_text())
    assert r["objects"] == 2 and list(r["miou_at_clicks"]) == ["1", "2", "3"]
    assert r["per_object"][objects[0].key][0] == 0.123
    assert {"noc85", "noc90", "noc85_failed", "noc90_failed", "miou_1_oracle", "miou_1_top_score"} <= set(r)
    assert r["miou_1_oracle"] >= r["miou_1_top_score"] - 0.2  # oracle of the fresh object >= its top score
    assert not partial.exists()
    assert Image.open(tmp_path / "c.png").size == (640, 440)
    assert "NoC@90" in capsys.readouterr().out


def test_cli_eval_coco_and_bad_input(tmp_path, data_dir, ref_checkpoint):
    t = data_dir / "coco_tiny"
    out = tmp_path / "r.json"
    assert main(["eval", "interactive", "--coco", str(t / "annotations" / "instances_val2017.json"), "--images",
                 str(t / "val2017"), "--limit", "1", "--max-clicks", "2", "--long-side", "160", "--method", "grabcut",
                 "--output", str(out)]) == 0
    assert json.loads(out.read_text())["objects"] == 1
    assert main(["eval", "interactive", "--images", str(tmp_path), "--masks", str(tmp_path), "--output", str(out)]) == 2
    assert main(["eval", "interactive", "--images", str(t / "val2017"), "--masks", str(t / "val2017"), "--match", "(",
                 "--output", str(out)]) == 2
    photo = next((t / "val2017").iterdir())  # a photo given as the annotations
    assert main(["eval", "interactive", "--coco", str(photo), "--images", str(t / "val2017"), "--output", str(out)]) == 2


def test_cli_eval_rejects_bad_compare_files_before_evaluating(tmp_path, data_dir, capsys):
    """A --compare file is read before the run: a bad one stops it at once with one line, no traceback."""
    t = data_dir / "coco_tiny"
    out = tmp_path / "r.json"
    base = ["eval", "interactive", "--coco", str(t / "annotations" / "instances_val2017.json"), "--images",
            str(t / "val2017"), "--limit", "1", "--max-clicks", "2", "--long-side", "160", "--method", "grabcut",
            "--output", str(out)]
    not_results = tmp_path / "not_results.json"
    not_results.write_text(json.dumps({"objects": 3}))
    photo = next((t / "val2017").iterdir())
    for bad, message in [(tmp_path / "missing.json", "cannot read"), (photo, "not a JSON file"),
                         (not_results, "no miou_at_clicks")]:
        assert main([*base, "--plot", str(tmp_path / "c.png"), "--compare", str(bad)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"model": "x", "miou_at_clicks": {"1": 0.3, "2": 0.4}}))
    assert main([*base, "--compare", str(good)]) == 2  # without --plot there is nothing to draw it on
    assert "--plot" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "c.png").exists()


def test_plot_legend_labels_stay_inside_the_plot(tmp_path):
    """Checkpoint paths as curve names: the legend shows the file name, cut short to fit."""
    from PIL import ImageDraw

    from segany.evaluate.interactive import _legend_label, plot_curve

    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    assert _legend_label(draw, "default", "  NoC@90 17.9", 500) == "default  NoC@90 17.9"
    cut = _legend_label(draw, "x" * 300 + ".safetensors", "  NoC@90 17.9", 500)
    assert cut.endswith("...  NoC@90 17.9") and draw.textlength(cut) <= 500
    curve = {"miou_at_clicks": {"1": 0.3, "2": 0.5}, "noc90": 17.9}
    plot_curve({"/some/dir/" + "y" * 200 + ".safetensors": curve, "default": curve}, tmp_path / "c.png")
    pixels = np.asarray(Image.open(tmp_path / "c.png").convert("RGB"))
    assert (pixels[:, -8:] == 255).all()  # nothing drawn in the right margin beyond the frame


def test_cli_eval_on_label_maps_loads_one_object_at_a_time(tmp_path, data_dir, monkeypatch):
    """A microscopy-style folder: 16-bit images and 16-bit instance label maps. Every instance is
    an object; objects are counted and loaded one at a time, so a label map whose whole stack of
    masks is refused still evaluates (with the default model)."""
    from segany.train import data
    from segany.train.data import read_coco

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    records = read_coco(data_dir / "coco_tiny/annotations/instances_val2017.json", data_dir / "coco_tiny/val2017", min_area=2500)
    record = next(r for r in records if len(r.load_masks()) >= 3)
    image, masks = record.load()
    gray = np.asarray(Image.fromarray(image).convert("L")).astype(np.uint16) * 16 + 100
    Image.fromarray(gray).save(tmp_path / "images" / "cells.tif")
    labels = np.zeros(gray.shape, np.uint16)
    for k, m in enumerate(masks):
        labels[m == 1] = 1000 + 7 * k  # arbitrary label values
    Image.fromarray(labels).save(tmp_path / "masks" / "cells.png")
    shown = [v for v in np.unique(labels) if v]  # objects left after overlaps

    monkeypatch.setattr(data, "MAX_LABEL_MASK_BYTES", labels.size)  # the whole stack: refused
    with pytest.raises(data.DataError):
        data.read_mask_file(tmp_path / "masks" / "cells.png")
    objects = load_folder_objects(tmp_path / "images", tmp_path / "masks")
    assert [o.key for o in objects] == [f"cells#{j}" for j in range(len(shown))]
    assert all(np.array_equal(o.load_mask() == 1, labels == v) for o, v in zip(objects, shown))

    out = tmp_path / "r.json"
    assert main(["eval", "interactive", "--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
                 "--max-clicks", "2", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["objects"] == len(shown) and result["miou_at_clicks"]["2"] > 0.2
