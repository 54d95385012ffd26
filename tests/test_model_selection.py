"""Choosing among trained checkpoints (scripts/compare_checkpoints.py) on objects that neither the
default model's training nor the COCO-MVal validation split uses."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from test_trainer import _env

from segany.train.data import COCO_ID, load_source
from segany.train.trainer import load_config

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "compare_checkpoints.py"
BY_AREA = REPO / "scripts" / "by_area.py"
CEILING = REPO / "scripts" / "mask_grid_ceiling.py"
WEIGHTS = REPO / "src" / "segany" / "weights"


def _run(*args: str, script: Path = SCRIPT, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], env=_env(), capture_output=True, text=True,
                          timeout=timeout, check=False, cwd=REPO)


def test_tuning_objects_are_held_out_from_training_and_validation(data_dir):
    sys.path.insert(0, str(REPO / "scripts"))
    from refine_tuning import tuning_objects

    objects = tuning_objects(3)
    assert len(objects) == 95
    photos = {o.key.split("#")[0] for o in objects}
    assert all(len(p) == 12 and p.isdigit() for p in photos)  # COCO ids of val2017 photos
    photos_of: dict[tuple, set[str]] = {}  # the stages share their sources: each is read once
    for name in ("default_train.yaml", "default_stage3.yaml", "default_stage4.yaml", "default_stage5.yaml", "default_stage7.yaml",
                 "default_stage8.yaml", "default_stage9.yaml"):
        cfg = load_config(WEIGHTS / name)
        trained = set()
        for source in cfg.data:
            key = (repr(source), cfg.data_root)
            if key not in photos_of:
                photos_of[key] = {m.group(1) for record in load_source(source, cfg.data_root)
                                  if (m := COCO_ID.search(record.image_path.stem))}
            trained |= photos_of[key]
        assert trained and not photos & trained, name
    val = {m.group(1) for p in (data_dir / "coco_mval" / "images").iterdir()
           if re.search(cfg.val.match, p.stem) and (m := COCO_ID.search(p.stem))}
    assert len(val) > 200 and not photos & val


def test_compare_checkpoints_runs_and_rejects_bad_files(tmp_path, data_dir):
    bad = tmp_path / "nothing.pt"
    done = _run(str(WEIGHTS / "default.safetensors"), str(bad))
    assert done.returncode == 1 and "error:" in done.stderr and "Traceback" not in done.stderr
    assert "nothing.pt" in done.stderr
    out = tmp_path / "rows.json"
    done = _run(str(WEIGHTS / "default.safetensors"), "--every", "60", "--by-area", "--output", str(out))
    assert done.returncode == 0, done.stderr[-800:]
    doc = json.loads(out.read_text())
    rows = doc["results"]
    assert len(rows) == 1 and rows[0]["objects"] == 5  # 284 held-out objects, every 60th
    quartiles = rows[0]["by_area"]  # the same 5 objects split by area, bounds from them
    assert sum(q["objects"] for q in quartiles) == 5 and len(doc["area_quartile_bounds"]) == 3
    assert [q["quartile"] for q in quartiles] == sorted(q["quartile"] for q in quartiles)
    assert all(0 <= q["reach_90"] <= q["reach_85"] <= 1 for q in quartiles)
    assert all(0 < rows[0][f"miou@{k}"] <= 1 for k in (1, 5, 20)) and 1 <= rows[0]["noc90"] <= 20

    # --img-size: the same model at another input size (position weights resized), which changes its answers.
    done = _run(str(WEIGHTS / "default.safetensors"), "--every", "60", "--img-size", "640", "--output", str(out))
    assert done.returncode == 0, done.stderr[-800:]
    resized = json.loads(out.read_text())["results"][0]
    assert resized["img_size"] == 640 and resized["objects"] == 5 and "img_size" not in rows[0]
    assert [resized[f"miou@{k}"] for k in (1, 2, 5, 10, 20)] != [rows[0][f"miou@{k}"] for k in (1, 2, 5, 10, 20)]
    done = _run(str(WEIGHTS / "default.safetensors"), "--img-size", "500")
    assert done.returncode == 1 and "--img-size 500" in done.stderr and "Traceback" not in done.stderr


def test_by_area_splits_results_by_object_size(tmp_path):
    """scripts/by_area.py: quartiles of ground-truth area (bounds from the first file), the share of
    each quartile that ever reaches 0.85 / 0.90, and a one-line error for results it cannot place."""
    from PIL import Image

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    curves = {}
    for i, side in enumerate((4, 8, 16, 24, 32, 40, 48, 56)):  # object areas grow with i: 2 per quartile
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(images / f"obj{i}.jpg")
        mask = np.zeros((64, 64), np.uint8)
        mask[:side, :side] = 255
        mask[side : side + 2, :side] = 128  # an ignore band counts as neither object nor background
        Image.fromarray(mask).save(masks / f"obj{i}.png")
        best = 0.95 if i % 2 else (0.87 if i >= 4 else 0.5)  # per quartile: one reaches 0.9; the other 0.85 from quartile 3 on
        curves[f"obj{i}"] = [0.3] * 4 + [best] * 16
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"per_object": curves}))
    out = tmp_path / "by_area.json"
    folders = ("--images", str(images), "--masks", str(masks))
    run = _run(str(results), *folders, "--output", str(out), script=BY_AREA, timeout=120)
    assert run.returncode == 0, run.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["objects"] for r in rows] == [2, 2, 2, 2]
    assert [r["reach_90"] for r in rows] == [0.5, 0.5, 0.5, 0.5]
    assert [r["reach_85"] for r in rows] == [0.5, 0.5, 1.0, 1.0]
    assert rows[0]["miou@5"] == round((0.5 + 0.95) / 2, 3) and rows[0]["miou@20"] == rows[0]["miou@5"]

    curves["elsewhere"] = [0.5] * 20
    results.write_text(json.dumps({"per_object": curves}))
    run = _run(str(results), *folders, script=BY_AREA, timeout=120)
    assert run.returncode != 0 and "1 objects of the results have no mask" in run.stderr and "Traceback" not in run.stderr


def test_mask_grid_ceiling_finds_what_the_low_res_grid_cannot_draw(tmp_path):
    """scripts/mask_grid_ceiling.py: near-ideal low-res logits draw large objects almost exactly at any
    input size, while a 5 px square is beyond a 512 px model's 128 x 128 grid and within a 1024 px one's."""
    from PIL import Image

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for i, side in enumerate((5, 8, 40, 300)):  # one object per area quartile
        Image.fromarray(np.zeros((500, 500, 3), np.uint8)).save(images / f"sq{i}.jpg")
        mask = np.zeros((500, 500), np.uint8)
        mask[100 : 100 + side, 100 : 100 + side] = 255
        mask[100 + side : 104 + side, 100 : 100 + side] = 128  # an ignore band below: neither object nor background
        Image.fromarray(mask).save(masks / f"sq{i}.png")
    out = tmp_path / "ceiling.json"
    folders = ("--images", str(images), "--masks", str(masks), "--match", "")
    run = _run("--sizes", "512", "1024", *folders, "--output", str(out), script=CEILING, timeout=120)
    assert run.returncode == 0, run.stderr
    rows = {(r["img_size"], r["quartile"]): r for r in json.loads(out.read_text())["rows"]}
    assert all(r["objects"] == 1 for r in rows.values()) and len(rows) == 8
    assert rows[512, 1]["reach_85"] == 0 and rows[512, 1]["mean_iou"] < 0.5
    assert rows[1024, 1]["reach_90"] == 1 and rows[1024, 1]["mean_iou"] > 0.95
    assert rows[512, 4]["mean_iou"] > 0.99 and rows[1024, 4]["mean_iou"] > 0.99
    assert rows[512, 3]["mean_iou"] < rows[1024, 3]["mean_iou"]

    run = _run("--sizes", "500", *folders, script=CEILING, timeout=120)
    assert run.returncode != 0 and "multiples of 16" in run.stderr and "Traceback" not in run.stderr
