"""Mask decoder of SAM: output tokens + two-way transformer + hypernetwork mask heads."""

from __future__ import annotations

import torch
from torch import nn

from .common import MLP, LayerNorm2d


def _is_batch_broadcast(x: torch.Tensor) -> bool:
    """True when every batch item of x is the same tensor (batch 1, or expanded with stride 0)."""
    return x.shape[0] == 1 or x.stride(0) == 0


class MaskDecoder(nn.Module):
    """Predicts masks and their IoU from an image embedding and prompt embeddings.

    Low-res masks are (B, M, 4H, 4W) logits for an (H, W) image embedding; M is 3 with
    multimask output and 1 without.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embeddings: (1 or B, C, H, W); sparse: (B, N, C); dense: (B, C, H, W).

        Returns masks (B, M, 4H, 4W) and iou predictions (B, M).
        """
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        selected = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, selected], iou_pred[:, selected]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All 4 mask outputs: (B, 4, 4H, 4W) logits and (B, 4) IoU predictions."""
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat([output_tokens, sparse_prompt_embeddings], dim=1)

        if image_embeddings.shape[0] == 1 and _is_batch_broadcast(dense_prompt_embeddings):
            # One image, no mask prompts: the decoder's first image-side steps are shared by all
            # prompts, so keep batch 1 and let the transformer broadcast.
            src = image_embeddings + dense_prompt_embeddings[:1]
            pos_src = image_pe
        else:
            if image_embeddings.shape[0] != b:
                image_embeddings = image_embeddings.expand(b, -1, -1, -1)
            src = image_embeddings + dense_prompt_embeddings
            pos_src = image_pe.expand(b, -1, -1, -1)
        _, c, h, w = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        if src.shape[0] != b:
            src = src.expand(b, -1, -1)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        src = src.transpose(1, 2).reshape(b, c, h, w)
        upscaled = self.output_upscaling(src)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        _, c_up, h_up, w_up = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c_up, h_up * w_up)).reshape(b, -1, h_up, w_up)
        iou_pred = self.iou_prediction_head(iou_token_out)
        return masks, iou_pred
