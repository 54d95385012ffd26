"""The small model shipped in the package: present, small, and used when no model is named."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import numpy as np
from PIL import Image

import segany
from segany.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_default_model_is_packaged_and_small():
    path = segany.DEFAULT_MODEL
    assert path.exists(), "src/segany/weights/default.safetensors is missing"
    assert path.stat().st_size <= 40 * 2**20
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["segany"]
    rel = path.relative_to(REPO / "src" / "segany").as_posix()
    assert any(fnmatch.fnmatch(rel, g) for g in globs)
    for beside in ("default_train.yaml", "default_log.jsonl", "default_finetune_512.yaml", "default_finetune_512_log.jsonl",
                   "default_stage3.yaml", "default_stage3_log.jsonl", "default_best.json"):
        assert (path.parent / beside).exists(), beside


def test_default_model_matches_its_committed_configs():
    """The shipped weights are the stage-3 model: stage 2 (fine-tuned at 512 px from stage 1's best
    checkpoint) resumed in its own folder with more steps and evaluation-placed clicks. Its
    architecture is those configs', and each stage starts where the one before writes."""
    import json

    from segany.train.trainer import load_config

    weights = segany.DEFAULT_MODEL.parent
    stage1, stage2 = load_config(weights / "default_train.yaml"), load_config(weights / "default_finetune_512.yaml")
    stage3 = load_config(weights / "default_stage3.yaml")
    model = segany.load_default_model()
    assert model.image_encoder.img_size == stage2.model["img_size"] == 2 * stage1.model["img_size"]
    assert stage2.init_checkpoint == f"{stage1.output_dir}/best.safetensors"
    assert stage2.data == stage1.data  # the same training data, validation images left out
    assert stage3.output_dir == stage2.output_dir and stage3.model == stage2.model and stage3.data == stage2.data
    assert stage3.steps > stage2.steps and stage3.center_click_prob > 0 == stage2.center_click_prob
    log = [json.loads(line) for line in (weights / "default_stage3_log.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in log) == stage3.steps == json.loads((weights / "default_best.json").read_text())["step"]


def test_load_default_model_predicts(coco_photo):
    model = segany.load_default_model()
    predictor = segany.SamPredictor(model)
    image = np.asarray(Image.open(coco_photo).convert("RGB"))
    predictor.set_image(image)
    masks, scores, logits = predictor.predict(np.array([[320, 200]]), np.array([1]))
    assert masks.shape == (3, *image.shape[:2]) and np.isfinite(scores).all()
    grid = model.prompt_encoder.image_embedding_size
    assert logits.shape == (3, 4 * grid[0], 4 * grid[1])


def test_segment_with_no_model_flag_uses_the_default(tmp_path, coco_photo):
    out = tmp_path / "mask.png"
    assert main(["segment", str(coco_photo), "--point", "320,200", "-o", str(out)]) == 0
    mask = np.asarray(Image.open(out))
    assert mask.shape == Image.open(coco_photo).size[::-1] and set(np.unique(mask)) <= {0, 255}


def test_default_model_segments_unseen_objects_and_follows_clicks(data_dir):
    """The shipped weights on 8 COCO-MVal validation objects (never trained on), 5 clicks under the
    RITM/SAM protocol: measured 0.47 at click 1 and 0.72 at click 5 for the shipped 512 px model (0.40
    and 0.63 for the 256 px one before it; README "Default model"); the bounds leave room for BLAS
    rounding, not for a broken model."""
    from segany.evaluate.interactive import EvalOptions, evaluate, load_folder_objects
    from segany.predictor import SamPredictor

    mval = data_dir / "coco_mval"
    objects = load_folder_objects(mval / "images", mval / "masks", match=r"(0[7-9]|1[0-9])_[0-9]{12}$", every=30)
    assert len(objects) == 8
    result = evaluate(SamPredictor(segany.load_default_model()), objects, EvalOptions(max_clicks=5), progress=False)
    curve = result["miou_at_clicks"]
    assert curve["1"] > 0.35
    assert curve["5"] > 0.6
    assert curve["5"] > curve["1"] + 0.15
