"""Model configurations and builders.

`vit_b`, `vit_l` and `vit_h` are exactly the official SAM architectures; any other ViT size is a
:class:`SamConfig` away.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .transformer import TwoWayTransformer


@dataclass(frozen=True)
class SamConfig:
    """Architecture of a SAM model. Field names match the reference fixture's manifest."""

    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    img_size: int = 1024
    patch_size: int = 16
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3
    layernorm_eps: float = 1e-6
    use_rel_pos: bool = True
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_global_attn_indexes", tuple(self.encoder_global_attn_indexes))
        if self.encoder_embed_dim % self.encoder_num_heads:
            raise ValueError("encoder_num_heads must divide encoder_embed_dim")
        if self.img_size % self.patch_size:
            raise ValueError("patch_size must divide img_size")
        bad = [i for i in self.encoder_global_attn_indexes if not 0 <= i < self.encoder_depth]
        if bad:
            raise ValueError(f"global attention indexes {bad} outside 0..{self.encoder_depth - 1}")

    @property
    def image_embedding_size(self) -> int:
        return self.img_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["encoder_global_attn_indexes"] = list(self.encoder_global_attn_indexes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SamConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown SamConfig fields: {sorted(unknown)}")
        return cls(**d)


CONFIGS: dict[str, SamConfig] = {
    "vit_b": SamConfig(768, 12, 12, (2, 5, 8, 11), name="vit_b"),
    "vit_l": SamConfig(1024, 24, 16, (5, 11, 17, 23), name="vit_l"),
    "vit_h": SamConfig(1280, 32, 16, (7, 15, 23, 31), name="vit_h"),
}


def build_sam(config: SamConfig | str) -> Sam:
    """A randomly initialised SAM of the given architecture, in eval mode."""
    if isinstance(config, str):
        try:
            config = CONFIGS[config]
        except KeyError:
            raise ValueError(f"unknown model type {config!r}; choose one of {sorted(CONFIGS)}") from None
    grid = config.image_embedding_size
    image_encoder = ImageEncoderViT(
        img_size=config.img_size,
        patch_size=config.patch_size,
        embed_dim=config.encoder_embed_dim,
        depth=config.encoder_depth,
        num_heads=config.encoder_num_heads,
        mlp_ratio=config.mlp_ratio,
        out_chans=config.prompt_embed_dim,
        qkv_bias=True,
        use_rel_pos=config.use_rel_pos,
        window_size=config.window_size,
        global_attn_indexes=config.encoder_global_attn_indexes,
        layernorm_eps=config.layernorm_eps,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=config.prompt_embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(config.img_size, config.img_size),
        mask_in_chans=config.mask_in_chans,
    )
    mask_decoder = MaskDecoder(
        transformer_dim=config.prompt_embed_dim,
        transformer=TwoWayTransformer(
            depth=config.decoder_depth,
            embedding_dim=config.prompt_embed_dim,
            num_heads=config.decoder_num_heads,
            mlp_dim=config.decoder_mlp_dim,
        ),
        num_multimask_outputs=config.num_multimask_outputs,
        iou_head_depth=config.iou_head_depth,
        iou_head_hidden_dim=config.iou_head_hidden_dim,
    )
    sam = Sam(image_encoder, prompt_encoder, mask_decoder)
    sam.config = config  # type: ignore[assignment]
    return sam.eval()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
