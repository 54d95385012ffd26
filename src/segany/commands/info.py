"""segany info: architecture and parameter counts of a checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..checkpoints import load_model
from ..modeling import count_parameters

EXAMPLE = "segany info sam_vit_b_01ec64.pth"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print a checkpoint's architecture and parameter counts", epilog=f"example: {EXAMPLE}")
    p.add_argument("checkpoint", help="a .pth/.pt/.safetensors file")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=run)


def describe(path: str) -> dict:
    model = load_model(path)
    config = model.config
    params = {
        "image_encoder": count_parameters(model.image_encoder),
        "prompt_encoder": count_parameters(model.prompt_encoder),
        "mask_decoder": count_parameters(model.mask_decoder),
    }
    params["total"] = sum(params.values())
    return {
        "checkpoint": str(path),
        "file_bytes": Path(path).stat().st_size,
        "architecture": config.name,
        "config": config.to_dict(),
        "parameters": params,
    }


def run(args: argparse.Namespace) -> int:
    info = describe(args.checkpoint)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    c = info["config"]
    print(f"checkpoint:   {info['checkpoint']} ({info['file_bytes'] / 2**20:.1f} MiB)")
    print(f"architecture: {info['architecture']}")
    print(
        f"encoder:      ViT width {c['encoder_embed_dim']}, depth {c['encoder_depth']}, "
        f"{c['encoder_num_heads']} heads, global blocks {c['encoder_global_attn_indexes']}, "
        f"window {c['window_size']}, input {c['img_size']}px, patch {c['patch_size']}"
    )
    print(f"decoder:      depth {c['decoder_depth']}, mlp {c['decoder_mlp_dim']}, {c['num_multimask_outputs']} multimask outputs")
    for part, n in info["parameters"].items():
        print(f"params {part + ':':16s}{n:>13,}")
    return 0
