"""Validation stays out of training: the trainer's check, and the compact data copy for GPU machines
(scripts/compact_training_data.py), on real COCO-MVal and COCO tiny files."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_trainer import _env, tiny_config, write_config

from segany.cli import main
from segany.train.data import COCO_ID, load_source, read_mask_file
from segany.train.trainer import load_config, validation_leaks

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "compact_training_data.py"
VAL = r"(0[7-9]|1[0-9])_[0-9]{12}$"


def shared_photo(data_dir: Path) -> tuple[str, str]:
    """A training stem (index 00-06) and a validation stem (07+) of COCO-MVal on the same COCO photo."""
    stems = sorted(p.stem for p in (data_dir / "coco_mval" / "images").iterdir())
    val = {COCO_ID.search(s).group(1): s for s in stems if re.search(VAL, s)}
    for s in stems:
        if not re.search(VAL, s) and COCO_ID.search(s).group(1) in val:
            return s, val[COCO_ID.search(s).group(1)]
    raise AssertionError("COCO-MVal has photos shared by its splits (29 of them)")


def test_validation_leaks_finds_the_same_image_and_the_same_photo(tmp_path, data_dir):
    train_stem, val_stem = shared_photo(data_dir)
    val = {"images": "coco_mval/images", "masks": "coco_mval/masks", "match": f"^{val_stem}$"}
    source = {"kind": "folder", "images": "coco_mval/images", "masks": "coco_mval/masks"}

    def leaks(include: str, **extra) -> list[str]:
        cfg = load_config(write_config(tmp_path / "c.yaml", tiny_config(
            data_dir, tmp_path / "run", data=[{**source, "include": include, **extra}], val=val)))
        return validation_leaks([r for d in cfg.data for r in load_source(d, cfg.data_root)], cfg)

    assert leaks(f"^{val_stem}$") == [val_stem]  # the validation image itself
    assert leaks(f"^{train_stem}$") == [train_stem]  # another object of the same COCO photo
    assert leaks(f"^({train_stem}|{val_stem})$", exclude_ids_from="coco_mval/images", exclude_ids_include=VAL) == []
    assert leaks("^airplane0[0-2]_") == []


def test_train_refuses_a_config_that_trains_on_its_validation(tmp_path, data_dir, capsys):
    cfg = tiny_config(data_dir, tmp_path / "run", val={"images": "coco_mval/images", "masks": "coco_mval/masks",
                                                      "match": "^airplane0[2-5]_"})
    assert main(["train", str(write_config(tmp_path / "c.yaml", cfg))]) == 2
    err = capsys.readouterr().err
    assert "validation images too" in err and "airplane02_" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "last.pt").exists()


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], check=False, capture_output=True, text=True,
                          env=_env(), cwd=REPO, timeout=300)


def test_compact_copy_trains_on_the_same_images_and_keeps_validation_apart(tmp_path, data_dir):
    train_stem, _ = shared_photo(data_dir)
    category = re.sub(r"\d+$", "", train_stem.rsplit("_", 1)[0])  # e.g. "apple": its COCO-MVal objects
    cfg = tiny_config(
        data_dir, tmp_path / "run",
        data=[
            {"kind": "folder", "images": "coco_mval/images", "masks": "coco_mval/masks", "include": f"^{category}0[0-6]_",
             "exclude_ids_from": "coco_mval/images", "exclude_ids_include": VAL},
            {"kind": "coco", "images": "coco_tiny/train2017", "annotations": "coco_tiny/annotations/instances_train2017.json",
             "include": "^0000000(08193|24577)$"},
        ],
        val={"images": "coco_mval/images", "masks": "coco_mval/masks", "match": VAL, "limit": 3},
    )
    config = write_config(tmp_path / "c.yaml", cfg)
    out = tmp_path / "compact"
    done = run_script(str(config), str(out), "--long-side", "256")
    assert done.returncode == 0, done.stderr

    original, copy = load_config(config), load_config(out / "config.yaml")
    assert copy.data_root == str(out) and copy.model == original.model and copy.steps == original.steps
    assert all(d.include is None and d.exclude_ids_from is None for d in copy.data)
    for before, after in zip(original.data, copy.data):
        old = {r.name: r for r in load_source(before, original.data_root)}
        new = {r.name: r for r in load_source(after, copy.data_root)}
        assert set(new) == set(old) and new
        for name in sorted(new)[:3]:
            image, masks = new[name].load()  # sizes agree, else load() raises
            _, old_masks = old[name].load()
            if after.kind == "folder":
                assert max(image.shape[:2]) == 256
                assert set(np.unique(masks)) <= set(np.unique(old_masks))
                assert masks.mean() == pytest.approx(old_masks.mean(), abs=0.02)
            else:  # COCO images keep their size and name, so that the annotations still fit
                assert new[name].image_path.name == old[name].image_path.name
                assert image.shape[:2] == old_masks.shape[1:] and (masks == old_masks).all()
    assert train_stem not in {r.name for r in load_source(copy.data[0], copy.data_root)}  # shares val_stem's photo

    # The validation the trainer reads, in its own folder: the first `limit` objects of the split.
    val_dir = out / copy.val.images
    assert copy.val.images == "val/coco_mval/images" and copy.val.match == VAL
    expected = sorted(p.stem for p in (data_dir / "coco_mval" / "masks").iterdir() if re.search(VAL, p.stem))[:3]
    assert sorted(p.stem for p in val_dir.iterdir()) == expected
    assert read_mask_file(out / copy.val.masks / f"{expected[0]}.png").any()
    assert validation_leaks([r for d in copy.data for r in load_source(d, copy.data_root)], copy) == []

    again = run_script(str(config), str(out))
    assert again.returncode != 0 and "is not empty" in again.stderr and "Traceback" not in again.stderr


def test_compact_copy_refuses_a_config_that_trains_on_its_validation(tmp_path, data_dir):
    cfg = tiny_config(data_dir, tmp_path / "run", val={"images": "coco_mval/images", "masks": "coco_mval/masks",
                                                      "match": "^airplane0[2-5]_"})
    done = run_script(str(write_config(tmp_path / "c.yaml", cfg)), str(tmp_path / "compact"))
    assert done.returncode != 0 and "validation image(s)" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "compact").exists()


def test_next_stage_gpu_config_is_stage3_on_the_compact_copy():
    """docs/default_model/next_stage_gpu.yaml (for a GPU session) trains what stage 3 trained, read from
    the compact copy the script writes: the same folders, validation apart, the same recipe, with
    the interaction and schedule of stage 7 (trained on CPU; stages 8 and 9, the shipped default, repeat it)."""
    stage3 = load_config(REPO / "src" / "segany" / "weights" / "default_stage3.yaml")
    gpu = load_config(REPO / "docs" / "default_model" / "next_stage_gpu.yaml")
    fields = [(d.kind, d.images, d.masks, d.annotations) for d in stage3.data]
    assert [(d.kind, d.images, d.masks, d.annotations) for d in gpu.data] == fields
    assert all(d.include is None and d.exclude_ids_from is None for d in gpu.data)
    assert gpu.val.images == f"val/{stage3.val.images}" and gpu.val.match == stage3.val.match
    assert gpu.model == stage3.model and gpu.augment == stage3.augment and gpu.loss == stage3.loss
    assert gpu.center_click_prob == stage3.center_click_prob and gpu.init_checkpoint == "src/segany/weights/default.safetensors"
    assert gpu.lr_decay_steps[-1] < gpu.steps
    stage7 = load_config(REPO / "src" / "segany" / "weights" / "default_stage7.yaml")
    recipe = ("point_rounds", "mask_rounds", "grad_rounds", "steps", "batch_size", "lr", "lr_decay_steps")
    assert [getattr(gpu, f) for f in recipe] == [getattr(stage7, f) for f in recipe]
