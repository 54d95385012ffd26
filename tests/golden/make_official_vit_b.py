"""Write tests/golden/official_vit_b.npz: outputs of the OFFICIAL segment-anything 1.0 package for a
vit_b with deterministic random weights (official layout) on two COCO-MVal images that no fixture uses.

Run in an environment that has the official package (never a segany dependency):
    .venv-bench/bin/python tests/golden/make_official_vit_b.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from official_weights import IMAGES, SUBSAMPLE, cases, official_layout_state_dict, state_dict_digest  # noqa: E402

def main() -> None:
    from segment_anything import SamPredictor, sam_model_registry

    layout = json.loads((REPO.parent / "shared/fixtures/reference_sam/official_state_dict_layouts.json").read_text())
    state = official_layout_state_dict(layout["vit_b"])
    sam = sam_model_registry["vit_b"]()
    sam.load_state_dict(state, strict=True)
    sam.eval()
    predictor = SamPredictor(sam)
    out: dict[str, np.ndarray] = {"state_digest": np.array(state_dict_digest(state))}
    feature_idx = np.random.default_rng(0).choice(256 * 64 * 64, 20_000, replace=False)
    out["feature_index"] = feature_idx
    spec = {}
    for i, name in enumerate(IMAGES):
        image = np.array(Image.open(REPO.parent / "shared/data/coco_mval/images" / name).convert("RGB"))
        predictor.set_image(image)
        features = predictor.get_image_embedding().numpy().ravel()
        out[f"img{i}_features_sample"] = features[feature_idx]
        out[f"img{i}_features_absmax"] = np.array(np.abs(features).max())
        h, w = image.shape[:2]
        for case, kwargs in cases(h, w).items():
            args = {k: np.array(v) if isinstance(v, list) else v for k, v in kwargs.items()}
            masks, iou, logits = predictor.predict(**args)
            key = f"img{i}_{case}"
            out[f"{key}_masks"] = np.packbits(masks, axis=-1)
            out[f"{key}_iou"] = iou
            out[f"{key}_logits"] = logits[:, ::SUBSAMPLE, ::SUBSAMPLE]
            # Feed the best logits back as a mask prompt, as an interactive tool does.
            if case == "point":
                best = logits[np.argmax(iou)][None]
                masks, iou, logits = predictor.predict(
                    point_coords=np.array([[w * 0.5, h * 0.5], [w * 0.7, h * 0.3]]),
                    point_labels=np.array([1, 1]), mask_input=best, multimask_output=False)
                out[f"{key}_feedback_masks"] = np.packbits(masks, axis=-1)
                out[f"{key}_feedback_iou"] = iou
                out[f"{key}_feedback_logits"] = logits[:, ::SUBSAMPLE, ::SUBSAMPLE]
            print(key, masks.shape, "mask fraction", float(masks.mean()), "iou", iou)
        spec[f"img{i}"] = name
    out["images"] = np.array(json.dumps(spec))
    np.savez_compressed(HERE / "official_vit_b.npz", **out)
    print("wrote", HERE / "official_vit_b.npz", "torch", torch.__version__)


if __name__ == "__main__":
    main()
