"""An official-layout vit_b loads strictly and matches the official package on unseen images.

Golden outputs come from the official segment-anything 1.0 (tests/golden/make_official_vit_b.py) with
deterministic random weights; the two COCO-MVal images are used by no other fixture.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from golden.official_weights import SUBSAMPLE, cases, official_layout_state_dict, state_dict_digest
from segany import SamPredictor, sam_model_registry
from segany.checkpoints import load_model
from segany.io import read_image

GOLDEN = Path(__file__).parent / "golden" / "official_vit_b.npz"


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN)


@pytest.fixture(scope="module")
def vit_b_checkpoint(reference_dir, golden, tmp_path_factory):
    import torch

    layout = json.loads((reference_dir / "official_state_dict_layouts.json").read_text())
    state = official_layout_state_dict(layout["vit_b"])
    assert state_dict_digest(state) == str(golden["state_digest"]), "weight generator drifted: regenerate golden"
    path = tmp_path_factory.mktemp("vit_b") / "sam_vit_b_random.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def vit_b(vit_b_checkpoint):
    return load_model(vit_b_checkpoint)


def test_vit_b_checkpoint_loads_strict_and_is_detected(vit_b, vit_b_checkpoint):
    assert vit_b.config.name == "vit_b"
    registry_model = sam_model_registry["vit_b"](checkpoint=str(vit_b_checkpoint))
    assert registry_model.config == vit_b.config


@pytest.mark.parametrize("index", [0, 1])
def test_vit_b_matches_official_package(vit_b, golden, data_dir, index):
    names = json.loads(str(golden["images"]))
    image = read_image(data_dir / "coco_mval" / "images" / names[f"img{index}"])
    predictor = SamPredictor(vit_b)
    predictor.set_image(image)

    features = predictor.get_image_embedding().numpy().ravel()[golden["feature_index"]]
    rel = np.abs(features - golden[f"img{index}_features_sample"]).max() / float(golden[f"img{index}_features_absmax"])
    assert rel < 1e-4, rel

    h, w = image.shape[:2]
    for case, kwargs in cases(h, w).items():
        args = {k: np.array(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        masks, iou, logits = predictor.predict(**args)
        key = f"img{index}_{case}"
        _check(key, masks, iou, logits, golden)
        if case == "point":
            masks, iou, logits = predictor.predict(
                point_coords=np.array([[w * 0.5, h * 0.5], [w * 0.7, h * 0.3]]),
                point_labels=np.array([1, 1]),
                mask_input=logits[np.argmax(iou)][None],
                multimask_output=False,
            )
            _check(f"{key}_feedback", masks, iou, logits, golden)


def _check(key, masks, iou, logits, golden):
    ref_masks = np.unpackbits(golden[f"{key}_masks"], axis=-1, count=masks.shape[-1]).astype(bool)
    assert masks.shape == ref_masks.shape, key
    assert np.abs(logits[:, ::SUBSAMPLE, ::SUBSAMPLE] - golden[f"{key}_logits"]).max() < 1e-3, key
    assert np.abs(iou - golden[f"{key}_iou"]).max() < 1e-4, key
    assert (masks != ref_masks).mean() <= 1e-3, key
