"""Deterministic random weights in an official checkpoint layout, shared by the golden-output
generator (run with the official package) and the tests (run with segany)."""

from __future__ import annotations

import hashlib
import math

import torch

IMAGES = ["airplane05_000000005477.jpg", "apple00_000000429281.jpg"]
SUBSAMPLE = 4  # low-res logits are stored at [::4, ::4] to keep the file small


def cases(h: int, w: int) -> dict[str, dict]:
    cx, cy = w * 0.5, h * 0.5
    return {
        "point": dict(point_coords=[[cx, cy]], point_labels=[1], multimask_output=True),
        "points": dict(point_coords=[[cx, cy], [w * 0.2, h * 0.8]], point_labels=[1, 0], multimask_output=False),
        "box": dict(box=[w * 0.25, h * 0.2, w * 0.75, h * 0.85], multimask_output=False),
        "box_point": dict(box=[w * 0.1, h * 0.1, w * 0.6, h * 0.7], point_coords=[[w * 0.3, h * 0.4]],
                          point_labels=[0], multimask_output=True),
    }


_EMBEDDINGS = ("point_embeddings", "not_a_point_embed", "no_mask_embed", "iou_token", "mask_tokens")


def official_layout_state_dict(layout: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors for every key of ``layout``, drawn in sorted key order from one generator.

    Scales follow common inits (1/sqrt(fan_in) weights, LayerNorm weights near 1) so activations
    stay O(1) through depth and the decoder yields non-trivial masks.
    """
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key in sorted(layout):
        shape = layout[key]
        x = torch.randn(shape, generator=g, dtype=torch.float32)
        leaf = key.rsplit(".", 2)
        if key.endswith("positional_encoding_gaussian_matrix") or any(e in key for e in _EMBEDDINGS):
            pass
        elif len(shape) == 1 and key.endswith("weight"):  # LayerNorm scale
            x = 1.0 + 0.1 * x
        elif key.endswith("bias"):
            x = 0.02 * x
        elif "rel_pos" in key or key.endswith("pos_embed"):
            x = 0.1 * x
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
            if "output_upscaling" in leaf[0] and len(shape) == 4:  # ConvTranspose2d: (in, out, k, k)
                fan_in = shape[0]
            x = x / math.sqrt(fan_in)
        state[key] = x
    return state


def state_dict_digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()
