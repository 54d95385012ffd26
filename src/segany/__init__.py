"""segany: the Segment Anything model, predictor and tooling."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from .automatic import SamAutomaticMaskGenerator
from .checkpoints import CheckpointError, download_checkpoint, load_model, save_model
from .modeling import CONFIGS, Sam, SamConfig, build_sam
from .predictor import ImageEmbedding, SamPredictor
from .transforms import ResizeLongestSide

__version__ = "0.1.0"


def _build_registered(model_type: str, checkpoint: str | Path | None = None) -> Sam:
    if checkpoint is None:
        return build_sam(model_type)
    return load_model(checkpoint, config=model_type)


# Same names as the official package: sam_model_registry["vit_b"](checkpoint="sam_vit_b_01ec64.pth").
sam_model_registry = {
    "default": partial(_build_registered, "vit_h"),
    "vit_h": partial(_build_registered, "vit_h"),
    "vit_l": partial(_build_registered, "vit_l"),
    "vit_b": partial(_build_registered, "vit_b"),
}
build_sam_vit_h = sam_model_registry["vit_h"]
build_sam_vit_l = sam_model_registry["vit_l"]
build_sam_vit_b = sam_model_registry["vit_b"]

__all__ = [
    "CONFIGS",
    "CheckpointError",
    "ImageEmbedding",
    "ResizeLongestSide",
    "Sam",
    "SamAutomaticMaskGenerator",
    "SamConfig",
    "SamPredictor",
    "build_sam",
    "download_checkpoint",
    "load_model",
    "sam_model_registry",
    "save_model",
]
