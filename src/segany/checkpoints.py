"""Reading, writing, inferring and downloading SAM checkpoints.

Checkpoints use the official state_dict layout, so the official ``sam_vit_*.pth`` files load with
``strict=True``. Files are read with ``torch.load(weights_only=True)``: no arbitrary unpickling.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

from .modeling import CONFIGS, Sam, SamConfig, build_sam


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit a SAM model."""


@dataclass(frozen=True)
class OfficialCheckpoint:
    model_type: str
    filename: str
    url: str
    size: int
    sha256: str


OFFICIAL_CHECKPOINTS: dict[str, OfficialCheckpoint] = {
    c.model_type: c
    for c in (
        OfficialCheckpoint(
            "vit_b",
            "sam_vit_b_01ec64.pth",
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
            375_042_383,
            "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        ),
        OfficialCheckpoint(
            "vit_l",
            "sam_vit_l_0b3195.pth",
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
            1_249_524_607,
            "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        ),
        OfficialCheckpoint(
            "vit_h",
            "sam_vit_h_4b8939.pth",
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
            2_564_550_879,
            "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        ),
    )
}

# Keys under which training frameworks (ours included) nest the model weights.
_NESTED_KEYS = ("model", "state_dict", "model_state_dict")


def cache_dir() -> Path:
    """Folder for downloaded checkpoints: $SEGANY_CACHE, else ~/.cache/segany."""
    return Path(os.environ.get("SEGANY_CACHE") or Path.home() / ".cache" / "segany")


# ---------------------------------------------------------------------------------------------
# Reading state dicts


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Tensors of a .pth/.pt/.safetensors file and the SamConfig stored with them, if any."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a folder, not a file: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path)
    return _read_torch(path)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"not a readable safetensors file ({e}): {path}") from None
    config = json.loads(metadata["segany_config"]) if "segany_config" in metadata else None
    return tensors, config


def _read_torch(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        # Legacy (pre-1.6) torch.save files are raw pickles starting with the protocol marker.
        if head[:1] != b"\x80":
            raise CheckpointError(f"not a PyTorch checkpoint (not a zip archive, truncated or corrupt?): {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt archives and forbidden globals
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"could not read checkpoint {path}: {message}") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"not a SAM checkpoint: {path} holds a {type(obj).__name__}, not a state dict")
    config = obj.get("config") if isinstance(obj.get("config"), Mapping) else None
    if config is not None and "model" in config and "output_dir" in config:
        # segany's training state (OUTPUT_DIR/last.pt) stores its TrainConfig: the architecture is
        # its "model", an official name or SamConfig fields.
        arch = config["model"]
        if isinstance(arch, str):
            config = CONFIGS[arch].to_dict() if arch in CONFIGS else None
        else:
            config = dict(arch) if isinstance(arch, Mapping) else None
    for key in _NESTED_KEYS:
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"not a SAM checkpoint: {path} holds no tensors")
    return tensors, dict(config) if config is not None else None


# ---------------------------------------------------------------------------------------------
# Inferring the architecture


_BLOCK_RE = re.compile(r"^image_encoder\.blocks\.(\d+)\.")
_DEC_LAYER_RE = re.compile(r"^mask_decoder\.transformer\.layers\.(\d+)\.")
_IOU_LAYER_RE = re.compile(r"^mask_decoder\.iou_prediction_head\.layers\.(\d+)\.")


def _require(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"not a SAM checkpoint: missing key {key!r}")
    return state[key]


def infer_config(state: Mapping[str, torch.Tensor]) -> SamConfig:
    """The architecture of a SAM state dict, read from its tensor shapes.

    Depth from the block count, width from the patch embedding, heads from the rel-pos width
    (head_dim), and global blocks from the rel-pos length (2*64-1 for global, 2*14-1 for windowed).
    """
    patch = _require(state, "image_encoder.patch_embed.proj.weight")
    embed_dim, _, patch_size, _ = patch.shape
    pos = state.get("image_encoder.pos_embed")
    neck = _require(state, "image_encoder.neck.0.weight")
    prompt_dim = neck.shape[0]
    depth = 1 + max((int(m.group(1)) for k in state if (m := _BLOCK_RE.match(k))), default=-1)
    if depth == 0:
        raise CheckpointError("not a SAM checkpoint: no image_encoder.blocks.* keys")
    if pos is not None:
        grid = pos.shape[1]
    else:
        grid = 1024 // patch_size
    rel0 = state.get("image_encoder.blocks.0.attn.rel_pos_h")
    use_rel_pos = rel0 is not None
    window_size = 14
    global_idx: list[int] = []
    if use_rel_pos:
        head_dim = rel0.shape[1]
        num_heads = embed_dim // head_dim
        for i in range(depth):
            length = _require(state, f"image_encoder.blocks.{i}.attn.rel_pos_h").shape[0]
            if length == 2 * grid - 1:
                global_idx.append(i)
            else:
                window_size = (length + 1) // 2
    else:
        num_heads = max(1, embed_dim // 64)
    mlp_dim = _require(state, "image_encoder.blocks.0.mlp.lin1.weight").shape[0]
    dec_depth = 1 + max((int(m.group(1)) for k in state if (m := _DEC_LAYER_RE.match(k))), default=-1)
    iou_depth = 1 + max((int(m.group(1)) for k in state if (m := _IOU_LAYER_RE.match(k))), default=-1)
    return SamConfig(
        encoder_embed_dim=embed_dim,
        encoder_depth=depth,
        encoder_num_heads=num_heads,
        encoder_global_attn_indexes=tuple(global_idx),
        window_size=window_size,
        img_size=grid * patch_size,
        patch_size=patch_size,
        mlp_ratio=mlp_dim / embed_dim,
        prompt_embed_dim=prompt_dim,
        mask_in_chans=_require(state, "prompt_encoder.mask_downscaling.3.weight").shape[0],
        decoder_depth=dec_depth,
        decoder_mlp_dim=_require(state, "mask_decoder.transformer.layers.0.mlp.lin1.weight").shape[0],
        iou_head_depth=iou_depth,
        iou_head_hidden_dim=_require(state, "mask_decoder.iou_prediction_head.layers.0.weight").shape[0],
        num_multimask_outputs=_require(state, "mask_decoder.mask_tokens.weight").shape[0] - 1,
        use_rel_pos=use_rel_pos,
        name=_official_name(embed_dim, depth, tuple(global_idx)),
    )


def _official_name(embed_dim: int, depth: int, global_idx: tuple[int, ...]) -> str:
    for name, c in CONFIGS.items():
        if (c.encoder_embed_dim, c.encoder_depth, c.encoder_global_attn_indexes) == (embed_dim, depth, global_idx):
            return name
    return "custom"


# ---------------------------------------------------------------------------------------------
# Loading into a model


def load_state_dict_strict(model: Sam, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy ``state`` into ``model`` requiring exactly the same keys and shapes, with clear errors."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches (e.g. {'; '.join(mismatched[:3])})")
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def resize_positional_weights(state: Mapping[str, torch.Tensor], config: SamConfig) -> dict[str, torch.Tensor]:
    """Fit a checkpoint's position weights to another input size or window size.

    The absolute ``pos_embed`` grid is resized bicubically, as when ViTs are fine-tuned at a new
    resolution; relative-position tables are resized linearly, the same interpolation the encoder's
    ``get_rel_pos`` applies at run time. Global-attention blocks get ``2 * embedding_size - 1`` rows,
    windowed blocks ``2 * window_size - 1``. Every other tensor is returned unchanged.
    """
    out = dict(state)
    grid = config.image_embedding_size
    pos = out.get("image_encoder.pos_embed")
    if pos is not None and tuple(pos.shape[1:3]) != (grid, grid):
        resized = F.interpolate(pos.permute(0, 3, 1, 2).float(), size=(grid, grid), mode="bicubic", align_corners=False)
        out["image_encoder.pos_embed"] = resized.permute(0, 2, 3, 1).to(pos.dtype).contiguous()
    for key, table in state.items():
        match = re.fullmatch(r"image_encoder\.blocks\.(\d+)\.attn\.rel_pos_[hw]", key)
        if match is None:
            continue
        block = int(match.group(1))
        size = grid if block in config.encoder_global_attn_indexes else config.window_size
        rows = 2 * size - 1
        if table.shape[0] != rows:
            resized = F.interpolate(table.T[None].float(), size=rows, mode="linear", align_corners=False)
            out[key] = resized[0].T.to(table.dtype).contiguous()
    return out


def load_model(
    path: str | os.PathLike,
    config: SamConfig | str | None = None,
    device: str | torch.device = "cpu",
    resize_positions: bool = False,
) -> Sam:
    """Build a SAM from a checkpoint file, inferring the architecture when ``config`` is None.

    ``resize_positions`` fits the checkpoint's position weights to ``config`` when its input or
    window size differs (see :func:`resize_positional_weights`), e.g. to fine-tune at 512 px.
    """
    state, stored_config = read_checkpoint(path)
    if isinstance(config, str):
        if config not in CONFIGS:
            raise CheckpointError(f"unknown model type {config!r}; choose one of {sorted(CONFIGS)}")
        config = CONFIGS[config]
    if config is None:
        if stored_config is not None:
            try:
                config = SamConfig.from_dict(dict(stored_config))
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"checkpoint {path} stores an invalid config: {e}") from None
        else:
            config = infer_config(state)
    model = build_sam(config)
    if resize_positions:
        state = resize_positional_weights(state, config)
    load_state_dict_strict(model, state, source=f"checkpoint {path}")
    return model.to(device).eval()


def save_model(model: Sam, path: str | os.PathLike) -> None:
    """Write a model atomically as .safetensors or .pth, with its config stored beside the tensors."""
    path = Path(path)
    config: SamConfig = getattr(model, "config", None) or infer_config(model.state_dict())
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(tmp), metadata={"segany_config": json.dumps(config.to_dict())})
    else:
        torch.save({"model": state, "config": config.to_dict()}, tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Downloading official checkpoints


class DownloadError(RuntimeError):
    """An official checkpoint could not be fetched or failed verification."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download_checkpoint(
    model_type: str,
    directory: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
    opener: Callable[..., object] | None = None,
    timeout: float = 30.0,
) -> Path:
    """Fetch an official checkpoint into the cache, resuming a partial ``.part`` file, then verify
    its sha256. A file already present and verified is returned without any network access.
    ``opener`` defaults to ``urllib.request.urlopen``."""
    opener = opener or urllib.request.urlopen
    if model_type not in OFFICIAL_CHECKPOINTS:
        raise DownloadError(f"unknown model {model_type!r}; choose one of {sorted(OFFICIAL_CHECKPOINTS)}")
    spec = OFFICIAL_CHECKPOINTS[model_type]
    folder = Path(directory) if directory is not None else cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / spec.filename
    if target.exists():
        if sha256_file(target) == spec.sha256:
            return target
        raise DownloadError(
            f"{target} exists but its sha256 does not match the official {spec.filename}; "
            "delete it and download again"
        )
    part = folder / (spec.filename + ".part")
    offset = part.stat().st_size if part.exists() else 0
    if offset < spec.size:
        request = urllib.request.Request(spec.url, headers={"Range": f"bytes={offset}-"} if offset else {})
        try:
            response = opener(request, timeout=timeout)
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise DownloadError(
                f"could not download {spec.url} ({reason}). Without network access, download "
                f"{spec.filename} elsewhere and place it at {target}"
            ) from None
        with response:  # type: ignore[attr-defined]
            status = getattr(response, "status", 200)
            mode = "ab" if offset and status == 206 else "wb"
            if mode == "wb":
                offset = 0
            with open(part, mode) as f:
                while block := response.read(1 << 20):  # type: ignore[attr-defined]
                    f.write(block)
                    offset += len(block)
                    if progress is not None:
                        progress(offset, spec.size)
    digest = sha256_file(part)
    if digest != spec.sha256:
        part.unlink()
        raise DownloadError(
            f"downloaded {spec.filename} has sha256 {digest}, expected {spec.sha256}; the partial file "
            "was removed, try again"
        )
    os.replace(part, target)
    return target
