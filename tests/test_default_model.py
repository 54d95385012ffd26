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
    for beside in ("default_train.yaml", "default_log.jsonl"):
        assert (path.parent / beside).exists(), beside


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
