"""Shared fixtures. Data from ../shared is never copied into the repo; tests that need it skip."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "fixtures" / "reference_sam"
DATA = SHARED / "data"

# Import the package from this checkout (also in git worktrees beside an editable install).
sys.path.insert(0, str(REPO / "src"))

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared fixtures/data sit beside the repo as ../shared)")
    return path


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return _need(REFERENCE)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _need(DATA)


@pytest.fixture(scope="session")
def manifest(reference_dir: Path) -> dict:
    return json.loads((reference_dir / "manifest.json").read_text())


@pytest.fixture(scope="session")
def reference_arrays(reference_dir: Path):
    return np.load(reference_dir / "predictor_arrays.npz")


@pytest.fixture(scope="session")
def ref_model(reference_dir: Path):
    from segany import load_model

    return load_model(reference_dir / "ref_small.pth")


@pytest.fixture(scope="session")
def predictors(ref_model, reference_arrays):
    """Predictors of the fixture model with each reference image set (read-only: do not re-set)."""
    from segany import SamPredictor

    out = {}
    for name in ("img0", "img1"):
        p = SamPredictor(ref_model)
        p.set_image(reference_arrays[name])
        out[name] = p
    return out


@pytest.fixture(scope="session")
def ref_checkpoint(reference_dir: Path) -> Path:
    return reference_dir / "ref_small.pth"


@pytest.fixture(scope="session")
def coco_photo(data_dir: Path) -> Path:
    """A real photo never used to make the fixtures."""
    return _need(data_dir / "coco_tiny" / "val2017" / "000000010764.jpg")
