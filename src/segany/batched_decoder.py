"""SAM's mask decoder for many prompts on one image, without repeating prompt-independent work.

The official decoder copies the image embedding once per prompt and runs every projection on
each copy. For a grid of hundreds of point prompts on one image (automatic mask generation)
most of that work is redundant:

* In the first two-way block the image side has not been updated yet, so its key, value and
  query projections are the same for every prompt: they are computed once per image.
* Each block adds a low-rank update to the image tokens (attention weights over the ~7 prompt
  tokens of each head) and renormalises them. So a prompt's image tokens after any block are
  ``scale * src' + rows^T cols + shift``: the shared embedding with a per-token scale, plus a few
  dozen rows per block (:class:`FactoredTokens`). A linear map of them (the later blocks' key,
  query and value projections, the first upscaling convolution) is then the map of the shared
  embedding, computed once per image, plus a product with those few rows per prompt.
* A mask input's embedding ends in a 1x1 convolution from a few channels (16 in SAM), so its
  image tokens are factored from the start too: a second shared embedding (the features plus that
  convolution's bias) and those channels as rows.
* Dense mask embeddings given directly have image tokens of their own from the start. Their
  blocks fold each projection into the few tokens instead (``(X W^T) q = X (W q)``, and
  ``softmax(s) (X W^T) = (softmax(s) X) W^T``): ``tokens x heads`` columns per image token
  instead of the projection width.
* A block's norm needs only each image token's mean and variance. For prompts without a mask, on
  CPU, they are computed from the factored form (:class:`SharedNormStats`: products of the few
  token rows with each other and with the shared embedding), so the tokens are never formed.
* The final token-to-image attention only matters for the IoU token and the mask tokens that
  are returned; :meth:`SharedImageMaskDecoder.decode_confident` runs it for the IoU token first
  and for the mask tokens only of the prompts whose predicted IoU passes a threshold.
* The upscaling convolutions (kernel 2, stride 2) are per-pixel matrix products; they run in a
  channels-last layout, only for prompts that still have a mask worth keeping.

The results equal :class:`segany.modeling.MaskDecoder` up to float rounding (the sums are
re-associated); ``tests/test_automatic.py`` checks this against the module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .modeling import Sam
from .modeling.common import LayerNorm2d
from .modeling.fast_ops import cpu_kernels, linear_act
from .modeling.transformer import Attention


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, h*c) -> (B, h, N, c)."""
    b, n, d = x.shape
    return x.reshape(b, n, num_heads, d // num_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, h, N, c) -> (B, N, h*c)."""
    b, h, n, c = x.shape
    return x.transpose(1, 2).reshape(b, n, h * c)


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.stack, without copying a single tensor that is already contiguous."""
    if len(tensors) == 1 and tensors[0].is_contiguous():
        return tensors[0].unsqueeze(0)
    return torch.stack(tensors)


def _cat_times(parts: list[torch.Tensor], factor: torch.Tensor) -> torch.Tensor:
    """``torch.cat(parts, dim=1) * factor``, each part multiplied straight into its rows of the
    result (one pass over the ~4 MiB of factored rows per prompt instead of two)."""
    out = parts[0].new_empty((parts[0].shape[0], sum(p.shape[1] for p in parts), *parts[0].shape[2:]))
    start = 0
    for part in parts:
        torch.mul(part, factor, out=out[:, start : start + part.shape[1]])
        start += part.shape[1]
    return out


def _per_prompt(x: torch.Tensor) -> bool:
    """Per-prompt products on CPU, where each prompt's image tokens then stay in cache; one
    batched product elsewhere (on a GPU, a kernel launch per prompt would cost more than the math)."""
    return x.device.type == "cpu"


def _head_weights(linear: nn.Linear, num_heads: int) -> torch.Tensor:
    """A projection's weight (h*c, C) split per head: (h, c, C)."""
    d, c_in = linear.weight.shape
    return linear.weight.reshape(num_heads, d // num_heads, c_in)


@dataclass(frozen=True)
class BlockUpdate:
    """One two-way block's image-side step, per prompt: the block's output image tokens are
    ``norm(x + weights^T token_out)`` for its input tokens x; the norm's per-token ``mean`` and
    ``rstd`` (1 / std) are kept."""

    weights: torch.Tensor  # (B, h*n, N) image->token attention weights, as the tokens' rows
    token_out: torch.Tensor  # (B, h*n, C) what each weight row adds to the image tokens
    mean: torch.Tensor  # (B, N, 1)
    rstd: torch.Tensor  # (B, N, 1)


@dataclass(frozen=True)
class FactoredTokens:
    """Per-prompt image tokens in factored form:

        x = scale * (src * gain) + rows^T cols + shift

    with the image's shared embedding ``src`` (N, C) and ``gain`` (C,) the product of the weights of
    the norms applied so far (both known per image, so products with ``src * gain`` are computed
    once, in ``basis``); ``scale`` (B, N, 1) the product of the norms' per-token 1/std; and per
    prompt a few rows (B, K, N) and columns (B, K, C): a mask input's embedding channels, if any,
    then each block's attention rows, its mean and a shift row."""

    scale: torch.Tensor  # (B, N, 1)
    rows: torch.Tensor  # (B, K, N)
    cols: torch.Tensor  # (B, K, C)
    shift: torch.Tensor | None  # (C,), None for zero
    basis: SharedBasis  # the shared embedding and its products

    @staticmethod
    def after_first(update: BlockUpdate, norm: nn.LayerNorm, basis: SharedBasis) -> FactoredTokens:
        """The tokens after the first block, whose input is the shared embedding itself."""
        b, _, n = update.weights.shape
        unchanged = FactoredTokens(
            scale=torch.ones_like(update.rstd),
            rows=update.weights.new_zeros((b, 0, n)),
            cols=update.token_out.new_zeros((b, 0, update.token_out.shape[-1])),
            shift=None,
            basis=basis,
        )
        return unchanged.after(update, norm)

    def after(self, update: BlockUpdate, norm: nn.LayerNorm) -> FactoredTokens:
        """The tokens after one more block: norm(x + weights^T token_out)."""
        b, _, n = self.rows.shape
        dtype = self.rows.dtype
        # x + w^T t - mean = scale * src' + [rows; w; -mean; 1]^T [cols; t; 1; shift], then * rstd and * gain.
        rows = [self.rows, update.weights, -update.mean.transpose(1, 2)]
        cols = [self.cols, update.token_out, self.cols.new_ones((b, 1, self.cols.shape[-1]))]
        if self.shift is not None:
            rows.append(self.rows.new_ones((b, 1, n)))
            cols.append(self.shift.expand(b, 1, -1))
        rstd = update.rstd
        return FactoredTokens(
            scale=self.scale * rstd,
            rows=_cat_times(rows, rstd.transpose(1, 2)),
            cols=torch.cat(cols, dim=1).mul_(norm.weight.to(dtype)),
            shift=norm.bias.to(dtype),
            basis=self.basis,
        )

    def select(self, index: torch.Tensor | slice) -> FactoredTokens:
        return FactoredTokens(self.scale[index], self.rows[index], self.cols[index], self.shift, self.basis)

    def scores(self, q: torch.Tensor, weight: torch.Tensor, src_t: torch.Tensor, pos_t: torch.Tensor) -> torch.Tensor:
        """Scores (B, h*n, N) of per-head queries q (B, h, n, c) against the projected tokens
        W_h (x + pos): ``weight`` (h, c, C) the projection per head, ``src_t`` (h, c, N) the
        projection of src * gain and ``pos_t`` (h, c, N) that of the positional encoding."""
        b, h, n, c = q.shape
        q_by_head = q.transpose(0, 1).reshape(h, b * n, c)
        # Both terms combined in the (h, B, n, N) layout of the per-head products, then reordered
        # to (B, h*n, N) once (a copy only when B > 1).
        terms = torch.bmm(q_by_head, pos_t).view(h, b, n, -1)
        terms.addcmul_(torch.bmm(q_by_head, src_t).view(h, b, n, -1), self.scale.transpose(1, 2).unsqueeze(0))
        out = terms.transpose(0, 1).reshape(b, h * n, -1)
        q_full = torch.einsum("bhnc,hcd->bhnd", q, weight).reshape(b, h * n, -1)  # (B, h*n, C)
        out = out.baddbmm_(torch.bmm(q_full, self.cols.transpose(1, 2)), self.rows)
        if self.shift is not None:
            out = out.add_((q_full @ self.shift).unsqueeze(-1))
        return out

    def pooled(self, weights: torch.Tensor, weight: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """Attention outputs (B, h, n, c) sum_i weights[., i] W_h x_i for per-head weights
        (B, h*n, N) whose rows sum to one: ``weight`` (h, c, C) the value projection per head
        (without its bias) and ``src`` (h, N, c) the projection of src * gain."""
        b, _, n_image = weights.shape
        h, c, _ = weight.shape
        n = weights.shape[1] // h
        scaled = weights * self.scale.transpose(1, 2)  # (B, h*n, N)
        if _per_prompt(scaled):  # a product per prompt instead of reordering the weights to (h, B*n, N)
            out = torch.stack([torch.bmm(scaled[i].view(h, n, n_image), src) for i in range(b)])  # (B, h, n, c)
        else:
            scaled = scaled.reshape(b, h, n, n_image).transpose(0, 1).reshape(h, b * n, n_image)
            out = torch.bmm(scaled, src).reshape(h, b, n, c).transpose(0, 1)
        on_rows = torch.bmm(weights, self.rows.transpose(1, 2)).reshape(b, h, n, -1)  # (B, h, n, K)
        cols = torch.einsum("bkd,hcd->bhkc", self.cols, weight)  # (B, h, K, c)
        out = out + torch.matmul(on_rows, cols)
        if self.shift is not None:
            out = out + torch.einsum("hcd,d->hc", weight, self.shift).unsqueeze(1)
        return out

    def project(self, src_out: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The per-token linear map x W^T + bias (B, N, D): ``src_out`` (N, D) = (src * gain) W^T."""
        b = self.rows.shape[0]
        cols = torch.matmul(self.cols, weight.T)  # (B, K, D)
        if self.shift is not None:
            bias = bias + weight @ self.shift
        out = src_out.new_empty((b, *src_out.shape))
        if _per_prompt(src_out):
            for i in range(b):
                torch.addcmul(bias, src_out, self.scale[i], out=out[i])
                out[i].addmm_(self.rows[i].T, cols[i])
            return out
        return torch.baddbmm(torch.addcmul(bias, src_out, self.scale), self.rows.transpose(1, 2), cols)


@dataclass(frozen=True)
class ImageTokens:
    """A batch of prompts' image tokens after the two-way blocks, as :meth:`SharedImageMaskDecoder.decode_tokens`
    returns them for :meth:`SharedImageMaskDecoder.upscale_masks`: ``tokens`` (B, N, C), and the
    same tokens in factored form, except for prompts given as dense mask embeddings. ``tokens`` is
    None where only the factored form was computed (on CPU, prompts without a mask input: see
    :class:`SharedNormStats`)."""

    tokens: torch.Tensor | None  # (B, N, C)
    factored: FactoredTokens | None = None

    def __post_init__(self) -> None:
        if self.tokens is None and self.factored is None:
            raise ValueError("image tokens need the tokens or their factored form")

    def __len__(self) -> int:
        return self.tokens.shape[0] if self.tokens is not None else self.factored.rows.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[1] if self.tokens is not None else self.factored.rows.shape[2]

    @property
    def device(self) -> torch.device:
        return self.tokens.device if self.tokens is not None else self.factored.rows.device

    def select(self, index: torch.Tensor | slice) -> ImageTokens:
        """The prompts at ``index`` (a slice or an index tensor)."""
        tokens = None if self.tokens is None else self.tokens[index]
        return ImageTokens(tokens, None if self.factored is None else self.factored.select(index))


@dataclass(frozen=True)
class SharedBasis:
    """Per-image products of one shared embedding ``src`` (N, C) with every projection that
    factored image tokens need, each at the gain of the norms before it: the key/value projections
    of each block's token->image attention (``t2i``), the query projection of each block's
    image->token attention (``i2t``), the final attention's, and the first upscaling convolution's
    map (``up1``, (N, D))."""

    src: torch.Tensor  # (N, C)
    t2i: dict[int, _SharedProjections]
    i2t: dict[int, _SharedProjections]
    final: _SharedProjections
    up1: torch.Tensor  # (N, D)


@dataclass(frozen=True)
class _SharedProjections:
    """Per-image products of the shared embedding (src * gain, for the gain of the norms before
    an attention) with that attention's key (or query) and value projections, per head."""

    key_weight: torch.Tensor  # (h, c, C) the key (or query) projection per head
    key_src_t: torch.Tensor  # (h, c, N)
    key_pos_t: torch.Tensor  # (h, c, N): the positional encoding's
    value_weight: torch.Tensor | None = None  # (h, c, C)
    value_src: torch.Tensor | None = None  # (h, N, c)


def _shared_projections(x: torch.Tensor, pos: torch.Tensor, attn: Attention, keys: bool, dtype: torch.dtype) -> _SharedProjections:
    """Per-image products for one attention of the shared embedding at a norm gain, ``x`` (N, C), and
    of the positional encoding ``pos`` (N, C): its key and value projections for token->image
    attention (``keys``), its query projection for image->token attention."""
    heads = attn.num_heads
    key = attn.k_proj if keys else attn.q_proj

    def by_head_t(y: torch.Tensor) -> torch.Tensor:  # (N, h*c) -> (h, c, N)
        return y.reshape(y.shape[0], heads, -1).permute(1, 2, 0).to(dtype).contiguous()

    key_weight = _head_weights(key, heads).to(dtype)
    key_src_t, key_pos_t = by_head_t(x @ key.weight.T), by_head_t(pos @ key.weight.T)
    if not keys:
        return _SharedProjections(key_weight, key_src_t, key_pos_t)
    value = x @ attn.v_proj.weight.T
    return _SharedProjections(
        key_weight,
        key_src_t,
        key_pos_t,
        value_weight=_head_weights(attn.v_proj, heads).to(dtype),
        value_src=value.reshape(value.shape[0], heads, -1).transpose(0, 1).to(dtype).contiguous(),
    )


def _token_rows(attn: Attention, tokens: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Image->token attention's values per head v (B, h, n, c) of the tokens (B, n, C), and what each
    attention weight row adds to the image tokens, ``token_out`` (B, h*n, C): row (h, j) is
    v[h, j] W_o,h^T + b_o / h (each head's weights sum to one, so the bias is added once)."""
    b, n, _ = tokens.shape
    heads = attn.num_heads
    v = _heads(attn.v_proj(tokens), heads)  # (B, h, n, c)
    w_out = attn.out_proj.weight.reshape(-1, heads, v.shape[-1]).transpose(0, 1)  # (h, C, c)
    token_out = torch.einsum("bhnc,hdc->bhnd", v, w_out).reshape(b, heads * n, -1)  # (B, h*n, C)
    return v, (token_out + attn.out_proj.bias / heads).to(dtype).contiguous()


class SharedNormStats:
    """Per-token mean and 1/std of the image tokens before each norm of a two-block decoder, for
    prompts whose image side starts as the shared embedding, without forming the tokens.

    Block 1's tokens are y1 = a + w1^T t1 (a the shared embedding (N, C), w1 (M, N) the attention
    weights, t1 (M, C) the rows they add, M = heads x tokens); block 2's are y2 = x1 + w2^T t2 with
    x1 = g1 * (y1 - mean1) * rstd1 + b1 (block 1's norm). With ``c`` marking vectors centred over the
    channels, ``|y1c|^2 = |ac|^2 + w1 . (2 t1 ac + G1 w1)`` for ``G1 = t1c t1c^T`` (M, M), and
    ``|y2c|^2 = |x1c|^2 + w2 . (2 t2c x1 + G2 w2)``, where ``|x1c|^2`` and ``t2c x1`` expand the same
    way through block 1's rows. Each row of t is v W_o,h^T + b_o/h (v: a head's 16 values), so its
    products with the embedding are those of v with ``a W_o`` (N, h*c), computed once per image.
    Per prompt this is four (M, M) x (M, N) products instead of forming two (N, C) token maps and
    normalising them (~25% less time on one CPU core; statistics within ~3e-7 relative)."""

    def __init__(self, src: torch.Tensor, layers: nn.ModuleList) -> None:
        if len(layers) != 2:
            raise ValueError("SharedNormStats is for two-block decoders")
        first, second = layers
        out1, out2 = first.cross_attn_image_to_token.out_proj, second.cross_attn_image_to_token.out_proj
        self.heads = first.cross_attn_image_to_token.num_heads
        self.channels = src.shape[1]
        self.eps = (first.norm4.eps, second.norm4.eps)
        g1, b1 = first.norm4.weight, first.norm4.bias
        self.g1, self.b1 = g1, b1
        self.a_mean = src.mean(dim=1)  # (N,)
        ac = src - self.a_mean[:, None]
        self.ac_sq = (ac * ac).sum(dim=1)
        # (N, h*c) products for t . u = v . (u W_o,h) + (b_o / h) . u, stored per head as (h, c, N).
        self.u1, self.ub1 = self._per_head(ac @ out1.weight), ac @ out1.bias  # t1 . ac
        d_ac = ac * (g1 * g1)
        self.u1_d, self.ub1_d = self._per_head(d_ac @ out1.weight), d_ac @ out1.bias  # t1 . (g1^2 ac)
        self.s_d, self.sq_d = d_ac.sum(dim=1), (ac * d_ac).sum(dim=1)
        g_ac = ac * g1
        self.u2_g, self.ub2_g = self._per_head(g_ac @ out2.weight), g_ac @ out2.bias  # t2 . (g1 ac)
        self.s_g = g_ac.sum(dim=1)
        b1c = b1 - b1.mean()
        self.gb = g1 * b1c
        self.a_gb = ac @ self.gb
        self.b1c_sq = (b1c * b1c).sum()
        self.b1_mean = b1.mean()

    def _per_head(self, u: torch.Tensor) -> torch.Tensor:
        """(N, h*c) -> (h, c, N)."""
        return u.reshape(u.shape[0], self.heads, -1).permute(1, 2, 0).contiguous()

    @staticmethod
    def _dot_rows(v: torch.Tensor, u: torch.Tensor, ub: torch.Tensor) -> torch.Tensor:
        """(B, h*n, N) products of the rows t = v W_o,h^T + b_o/h with N vectors, from their products
        with W_o (``u``, (h, c, N)) and with b_o (``ub``, (N,))."""
        b, h, n, _ = v.shape
        out = v.new_empty((b, h, n, u.shape[-1]))
        for i in range(b):  # per prompt: a batched product with u broadcast would copy u per prompt
            torch.bmm(v[i], u, out=out[i])
        return out.reshape(b, h * n, -1).add_(ub / h)

    def first(self, v: torch.Tensor, t: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """Block 1 from its values v (B, h, n, c), rows t (B, M, C) and weights w (B, M, N): mean and
        rstd (B, N, 1), and what block 2 needs of it."""
        t_mean = t.mean(dim=2)  # (B, M)
        tc = t - t_mean[..., None]
        mean = torch.bmm(t_mean[:, None], w)[:, 0].add_(self.a_mean)
        z = self._dot_rows(v, self.u1, self.ub1).baddbmm_(torch.bmm(tc, tc.transpose(1, 2)), w, beta=2.0)
        var = z.mul_(w).sum(dim=1).add_(self.ac_sq).div_(self.channels)
        rstd = var.clamp_(min=0).add_(self.eps[0]).rsqrt_()
        return mean[..., None], rstd[..., None], (v, tc, t_mean, w, rstd)

    def second(self, state: tuple, v: torch.Tensor, t: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Block 2 from block 1's ``state`` and this block's v, t, w (as in :meth:`first`)."""
        v1, t1c, t1_mean, w1, r1 = state
        c, g1 = self.channels, self.g1

        def on_w1(x: torch.Tensor) -> torch.Tensor:  # (B, M) -> (B, N): sum_k w1[k, n] x[k]
            return torch.bmm(x[:, None], w1)[:, 0]

        gz_mean = on_w1(t1c @ g1).add_(self.s_g).mul_(r1).div_(c)  # mean of g1 * z1, z1 = (y1 - mean1) rstd1
        t_mean = t.mean(dim=2)
        tc = t - t_mean[..., None]
        mean = torch.bmm(t_mean[:, None], w)[:, 0].add_(gz_mean).add_(self.b1_mean)
        # |x1c|^2 = sum (g1 z1)^2 - C mean(g1 z1)^2 + 2 (g1 z1) . b1c + |b1c|^2
        tda = self._dot_rows(v1, self.u1_d, self.ub1_d).sub_(t1_mean[..., None] * self.s_d)  # t1c . (g1^2 ac)
        z1 = tda.baddbmm_(torch.bmm(t1c * (g1 * g1), t1c.transpose(1, 2)), w1, beta=2.0)
        gz_sq = z1.mul_(w1).sum(dim=1).add_(self.sq_d).mul_(r1 * r1)
        cross_b = on_w1(t1c @ self.gb).add_(self.a_gb).mul_(r1)
        x_sq = gz_sq.sub_(c * gz_mean * gz_mean).add_(2 * cross_b).add_(self.b1c_sq)
        # t2c . x1 = rstd1 (t2c . (g1 ac) + (t2c diag(g1) t1c^T) w1) + t2c . b1
        t2g = self._dot_rows(v, self.u2_g, self.ub2_g).sub_(t_mean[..., None] * self.s_g)
        t2x = t2g.baddbmm_(torch.bmm(tc * g1, t1c.transpose(1, 2)), w1).mul_(r1[:, None]).add_((tc @ self.b1)[..., None])
        z2 = t2x.baddbmm_(torch.bmm(tc, tc.transpose(1, 2)), w, beta=2.0)
        var = z2.mul_(w).sum(dim=1).add_(x_sq).div_(c)
        rstd = var.clamp_(min=0).add_(self.eps[1]).rsqrt_()
        return mean[..., None], rstd[..., None]


class SharedImageMaskDecoder:
    """Mask decoding of a batch of sparse prompts against one fixed image embedding.

    Build once per image with the encoder features (1, C, H, W); then :meth:`decode_tokens`
    gives IoU predictions for a batch of prompts cheaply, and :meth:`upscale_masks` the low-res
    mask logits for the prompts that need them. Prompts without a mask use the decoder's no-mask
    embedding, as in automatic mask generation; :meth:`decode_tokens` also takes mask prompts,
    as low-res masks (factored like the others) or as dense embeddings (whose image tokens are then
    per prompt from the first block on).

    dtype: the type of the image-side tensors and their products. ``torch.bfloat16`` halves their
    memory traffic and runs the products as bf16 matmuls (fp32 accumulation); the prompt tokens,
    IoU predictions and returned logits stay fp32. Default fp32: the official results.
    """

    @torch.no_grad()
    def __init__(self, model: Sam, features: torch.Tensor, dtype: torch.dtype = torch.float32) -> None:
        if features.ndim != 4 or features.shape[0] != 1:
            raise ValueError(f"features must be (1, C, H, W), got {tuple(features.shape)}")
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
        self.dtype = dtype
        self.model = model
        decoder = model.mask_decoder
        self.decoder = decoder
        self.transformer = decoder.transformer
        upscaling = decoder.output_upscaling
        if not (
            len(upscaling) == 5
            and isinstance(upscaling[0], nn.ConvTranspose2d)
            and isinstance(upscaling[1], LayerNorm2d)
            and isinstance(upscaling[3], nn.ConvTranspose2d)
            and upscaling[0].kernel_size == upscaling[0].stride == (2, 2)
            and upscaling[3].kernel_size == upscaling[3].stride == (2, 2)
        ):
            raise ValueError("unexpected mask decoder upscaling layout")

        _, _, h, w = features.shape
        self.grid = (h, w)
        self.features = features
        dense = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        src = (features + dense).flatten(2).transpose(1, 2).contiguous()  # (1, N, C)
        self.src = src
        pos = model.prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2).contiguous()  # (1, N, C)
        self.pos = self.pos_fp32 = pos

        # First block: the image tokens are the same for every prompt until its last step.
        first = self.transformer.layers[0]
        src_pos = self.src + self.pos
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        # Keys and queries are stored (h, c, N): the products with a few tokens then read rows of N.
        self.first_k_t = _heads(t2i.k_proj(src_pos), t2i.num_heads)[0].transpose(1, 2).contiguous()  # (h, c, N)
        self.first_v = _heads(t2i.v_proj(self.src), t2i.num_heads)[0].contiguous()  # (h, N, c)
        self.first_q_t = _heads(i2t.q_proj(src_pos), i2t.num_heads)[0].transpose(1, 2).contiguous()  # (h, c, N)
        self.src, self.pos = self.src.to(dtype), self.pos.to(dtype)
        self.first_k_t, self.first_v, self.first_q_t = (t.to(dtype) for t in (self.first_k_t, self.first_v, self.first_q_t))

        # Upscaling convolutions as per-pixel linear maps: weight (2*2*C_out, C_in), rows ordered (dy, dx, out).
        conv1, norm, act1, conv2, act2 = upscaling
        if not (isinstance(act1, nn.GELU) and isinstance(act2, nn.GELU) and act1.approximate == act2.approximate == "none"):
            raise ValueError("unexpected mask decoder upscaling activations (exact GELU expected)")
        self._up1_weight = conv1.weight.permute(2, 3, 1, 0).reshape(-1, conv1.in_channels)  # fp32, for the bases
        self.up1_w = self._up1_weight.to(dtype).contiguous()
        self.up1_b = conv1.bias.repeat(4).to(dtype)
        self.up_norm = norm
        self.up2_w = conv2.weight.permute(2, 3, 1, 0).reshape(-1, conv2.in_channels).to(dtype).contiguous()
        self.up2_b = conv2.bias.repeat(4).to(dtype)

        # Prompts without a mask input: products of the shared embedding with every later
        # projection (see FactoredTokens); with a mask input, those of the embedding plus the mask
        # embedding's bias, built on first use.
        self.basis = self._basis(src[0], first_block=False)
        self._norm_stats: SharedNormStats | None = None
        self._mask_basis: SharedBasis | None = None
        mask_out = model.prompt_encoder.mask_downscaling[-1]
        # The mask embedding ends in a 1x1 convolution from a few channels: its output is low-rank per token.
        self._mask_factored = isinstance(mask_out, nn.Conv2d) and mask_out.kernel_size == (1, 1) and mask_out.bias is not None

    def _basis(self, src: torch.Tensor, first_block: bool) -> SharedBasis:
        """The products of the shared embedding ``src`` (N, C), fp32. ``first_block``: also the
        first block's (needed when the tokens are factored from the start, as with a mask input)."""
        layers, dtype, pos = self.transformer.layers, self.dtype, self.pos_fp32[0]
        gains = [torch.ones_like(layers[0].norm4.weight)]  # gains[i]: product of the norm weights of blocks < i
        for layer in layers:
            gains.append(gains[-1] * layer.norm4.weight)
        x = [src * gain for gain in gains]  # (N, C) each
        blocks = range(0 if first_block else 1, len(layers))
        return SharedBasis(
            src=src.to(dtype),
            t2i={i: _shared_projections(x[i], pos, layers[i].cross_attn_token_to_image, True, dtype) for i in blocks},
            i2t={i: _shared_projections(x[i], pos, layers[i].cross_attn_image_to_token, False, dtype) for i in blocks},
            final=_shared_projections(x[-1], pos, self.transformer.final_attn_token_to_image, True, dtype),
            up1=(x[-1] @ self._up1_weight.T).to(dtype),
        )

    def _shared_norm_stats(self) -> SharedNormStats | None:
        """The norms' statistics for prompts without a mask (fp32 two-block decoders), built on first use."""
        if self._norm_stats is None and self.dtype == torch.float32 and len(self.transformer.layers) == 2:
            self._norm_stats = SharedNormStats(self.src[0], self.transformer.layers)
        return self._norm_stats

    def _mask_tokens(self, mask_inputs: torch.Tensor) -> tuple[FactoredTokens, torch.Tensor]:
        """Factored image tokens (rank = the mask embedding's last input channels) and the
        materialised ones (B, N, C) of prompts with low-res mask inputs (B, 1, 4H, 4W)."""
        downscaling = self.model.prompt_encoder.mask_downscaling
        last = downscaling[-1]
        if self._mask_basis is None:
            src = (self.features + last.bias.reshape(1, -1, 1, 1)).flatten(2)[0].T  # (N, C)
            self._mask_basis = self._basis(src, first_block=True)
        basis = self._mask_basis
        hidden = downscaling[:-1](mask_inputs)  # (B, k, H, W)
        if hidden.shape[-2:] != self.grid:
            raise ValueError(f"mask inputs {tuple(mask_inputs.shape)} do not fit a {self.grid} grid")
        b = hidden.shape[0]
        rows = hidden.flatten(2).to(self.dtype)  # (B, k, N)
        cols = last.weight.reshape(last.out_channels, -1).T.to(self.dtype).expand(b, -1, -1)  # (B, k, C)
        factored = FactoredTokens(torch.ones_like(rows[:, :1].transpose(1, 2)), rows, cols, None, basis)
        tokens = torch.baddbmm(basis.src.expand(b, -1, -1), rows.transpose(1, 2), cols)
        return factored, tokens

    # -- attention pieces -------------------------------------------------------------------

    @staticmethod
    def _tokens_to_shared_image(attn: Attention, q_in: torch.Tensor, k_t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Token queries (B, n, C) attending to image keys (h, c, N) and values (h, N, c) shared by
        all prompts. Written out as two products: CPU SDPA is ~3-10x slower for a few queries
        against thousands of keys with head size 16."""
        b, n, _ = q_in.shape
        q = _heads(attn.q_proj(q_in), attn.num_heads)  # (B, h, n, c)
        q = q.transpose(0, 1).reshape(attn.num_heads, b * n, -1)  # (h, B*n, c)
        weights = torch.bmm((q * (1.0 / math.sqrt(q.shape[-1]))).to(k_t.dtype), k_t).softmax(dim=-1)  # (h, B*n, N)
        out = torch.bmm(weights, v).to(q.dtype)  # (h, B*n, c)
        out = out.reshape(attn.num_heads, b, n, -1).transpose(0, 1)  # (B, h, n, c)
        return attn.out_proj(_merge_heads(out))

    @staticmethod
    def _tokens_to_image(
        attn: Attention, q_in: torch.Tensor, image: torch.Tensor, image_pos: torch.Tensor
    ) -> torch.Tensor:
        """Token queries (B, n, C) attending to per-prompt image tokens: keys from ``image_pos``
        (B, N, C) = image + positional encoding, values from ``image`` (B, N, C)."""
        b, n, _ = q_in.shape
        heads = attn.num_heads
        q = _heads(attn.q_proj(q_in), heads)  # (B, h, n, c)
        scale = 1.0 / math.sqrt(q.shape[-1])
        # Scores q . (W_k x + b_k): the b_k term is constant over image tokens, so softmax drops it.
        q_in_image_space = torch.einsum("bhnc,hcd->bhnd", q, _head_weights(attn.k_proj, heads)) * scale
        q_in_image_space = q_in_image_space.reshape(b, heads * n, -1).to(image.dtype)
        if _per_prompt(image):
            pooled = []
            for i in range(b):
                weights = linear_act(q_in_image_space[i], image_pos[i], None).softmax(dim=-1)  # (h*n, N)
                pooled.append(weights @ image[i])  # (h*n, C)
            pooled_all = _stack(pooled)
        else:
            pooled_all = torch.bmm(torch.bmm(q_in_image_space, image_pos.transpose(1, 2)).softmax(dim=-1), image)
        # softmax(s) (W_v x + b_v) = W_v (softmax(s) x) + b_v since the weights sum to one.
        pooled_t = pooled_all.to(q.dtype).reshape(b, heads, n, -1)
        values = torch.einsum("bhnd,hcd->bhnc", pooled_t, _head_weights(attn.v_proj, heads))
        values = values + attn.v_proj.bias.reshape(heads, 1, -1)
        return attn.out_proj(_merge_heads(values))

    @staticmethod
    def _tokens_to_factored_image(
        attn: Attention, q_in: torch.Tensor, image: FactoredTokens, projections: _SharedProjections
    ) -> torch.Tensor:
        """Token queries (B, n, C) attending to factored image tokens (keys from image + positional
        encoding, values from image), from the shared embedding's precomputed ``projections``."""
        heads = attn.num_heads
        q = _heads(attn.q_proj(q_in), heads)  # (B, h, n, c)
        dtype = projections.key_src_t.dtype
        # The key bias adds the same q . b_k to all of a query's scores: softmax drops it.
        scores = image.scores((q * (1.0 / math.sqrt(q.shape[-1]))).to(dtype), projections.key_weight, projections.key_src_t, projections.key_pos_t)
        assert projections.value_weight is not None and projections.value_src is not None
        values = image.pooled(scores.softmax(dim=-1), projections.value_weight, projections.value_src).to(q.dtype)
        values = values + attn.v_proj.bias.reshape(heads, 1, -1)  # the weights sum to one
        return attn.out_proj(_merge_heads(values))

    @staticmethod
    def _image_to_tokens_update(
        attn: Attention,
        weights_t: torch.Tensor,
        tokens: torch.Tensor,
        image: torch.Tensor,
        norm: nn.LayerNorm,
        overwrite: bool = False,
    ) -> tuple[torch.Tensor, BlockUpdate]:
        """Finish image->token attention from its weights (B, h*n, N) (softmax over each head's n
        tokens): norm(image + attention), and the step in factored form. ``image`` may be (1, N, C)
        (shared) or (B, N, C). The weights stay in the layout their scores were computed in; the
        products read them transposed (no (N, h*n) copy). overwrite: ``image`` holds per-prompt
        tokens no longer needed, so the sums are accumulated into it (on CPU) instead of a copy of it."""
        b = tokens.shape[0]
        # out_proj(concat_h w_h v_h) = sum_h w_h (v_h W_o,h^T): fold the output projection into the tokens.
        _, token_out = _token_rows(attn, tokens, image.dtype)
        if not _per_prompt(image):
            updated = torch.baddbmm(image.expand(b, -1, -1), weights_t.transpose(1, 2), token_out)
        elif overwrite:
            for i in range(b):
                image[i].addmm_(weights_t[i].T, token_out[i])
            updated = image
        else:
            shared = image.shape[0] == 1
            # Written in place into one buffer: stacking per-prompt results would copy 4 MiB per prompt.
            updated = image.new_empty((b, *image.shape[1:]))
            for i in range(b):
                torch.addmm(image[0 if shared else i], weights_t[i].T, token_out[i], out=updated[i])
        normed, mean, rstd = torch.native_layer_norm(updated, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        return normed, BlockUpdate(weights_t, token_out, mean.to(image.dtype), rstd.to(image.dtype))

    # -- the two-way transformer --------------------------------------------------------------

    def _transformer(
        self,
        sparse_embeddings: torch.Tensor,
        dense_embeddings: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, ImageTokens]:
        """The two-way blocks for a batch of prompts: tokens (B, n, C) after the last block, the
        token positional embeddings (B, n, C) and the updated image tokens (B, N, C), with every
        block's update in factored form for prompts without a mask input (for which, on CPU, only
        the factored form is computed).

        dense_embeddings: (B, C, H, W) mask-prompt embeddings. Each prompt's image tokens then differ
        from the first block on, so that block runs per prompt too, folded like the later ones.
        mask_inputs: (B, 1, 4H, 4W) low-res masks instead, whose embedding is low-rank per token: the
        image tokens are then factored from the start."""
        decoder, transformer = self.decoder, self.transformer
        b = sparse_embeddings.shape[0]
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_embeddings], dim=1)
        n = tokens.shape[1]

        queries, token_pe = tokens, tokens
        if mask_inputs is not None and dense_embeddings is not None:
            raise ValueError("give dense_embeddings or mask_inputs, not both")
        shared = dense_embeddings is None and mask_inputs is None
        factored: FactoredTokens | None = None
        if shared:
            image: torch.Tensor = self.src  # (1, N, C) until the first block's last step
        elif mask_inputs is not None:
            if len(mask_inputs) != b:
                raise ValueError(f"{len(mask_inputs)} mask inputs for {b} prompts")
            factored, image = self._mask_tokens(mask_inputs)
        else:
            if dense_embeddings.shape[0] != b or dense_embeddings.shape[-2:] != self.grid:
                raise ValueError(f"dense embeddings {tuple(dense_embeddings.shape)} do not fit {b} prompts on a {self.grid} grid")
            image = (self.features + dense_embeddings).flatten(2).transpose(1, 2).to(self.dtype).contiguous()  # (B, N, C)
        # Prompts without a mask on CPU: the norms' statistics from the factored form (no token maps).
        stats = self._shared_norm_stats() if shared and _per_prompt(self.src) else None
        first_state: tuple = ()
        for index, layer in enumerate(transformer.layers):
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(queries, queries, queries)
            else:
                q = queries + token_pe
                queries = queries + layer.self_attn(q, q, queries)
            queries = layer.norm1(queries)

            t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
            first_shared = index == 0 and shared
            if first_shared:
                attended = self._tokens_to_shared_image(t2i, queries + token_pe, self.first_k_t, self.first_v)
            elif factored is not None:
                attended = self._tokens_to_factored_image(t2i, queries + token_pe, factored, factored.basis.t2i[index])
            else:
                image_pos = image + self.pos
                attended = self._tokens_to_image(t2i, queries + token_pe, image, image_pos)
            queries = layer.norm2(queries + attended)
            queries = layer.norm3(queries + layer.mlp(queries))

            k = _heads(i2t.k_proj(queries + token_pe), i2t.num_heads)  # (B, h, n, c)
            scale = 1.0 / math.sqrt(k.shape[-1])
            heads = i2t.num_heads
            # Image->token attention weights as (B, h*n, N): softmax over each head's n tokens.
            if first_shared:
                # Shared image queries (h, c, N) against every prompt's tokens.
                k_scaled = (k * scale).to(self.dtype)  # (B, h, n, c)
                if _per_prompt(k_scaled):  # written as (B, h, n, N) a prompt at a time: no reorder
                    scores = k_scaled.new_empty((b, heads, n, self.first_q_t.shape[-1]))
                    for i in range(b):
                        torch.bmm(k_scaled[i], self.first_q_t, out=scores[i])
                else:
                    k_by_head = k_scaled.transpose(0, 1).reshape(heads, b * n, -1)
                    scores = torch.bmm(k_by_head, self.first_q_t).reshape(heads, b, n, -1).transpose(0, 1)
                weights_t = scores.softmax(dim=2).reshape(b, heads * n, -1)
            elif factored is not None:
                # (W_q x + b_q) . k with x = image + pe, from the factored image tokens.
                projections = factored.basis.i2t[index]
                scores = factored.scores((k * scale).to(self.dtype), projections.key_weight, projections.key_src_t, projections.key_pos_t)
                bias = torch.einsum("hc,bhnc->bhn", i2t.q_proj.bias.reshape(heads, -1), k).reshape(b, -1, 1) * scale
                scores = scores.add_(bias.to(self.dtype))
                weights_t = scores.reshape(b, heads, n, -1).softmax(dim=2).reshape(b, heads * n, -1)
            else:
                # (W_q x + b_q) . k = x . (W_q^T k) + b_q . k, with x = image + pe.
                k_in_image_space = torch.einsum("bhnc,hcd->bhnd", k, _head_weights(i2t.q_proj, heads)) * scale
                k_in_image_space = k_in_image_space.reshape(b, heads * n, -1).to(self.dtype)
                bias = torch.einsum("hc,bhnc->bhn", i2t.q_proj.bias.reshape(heads, -1), k).reshape(b, -1, 1) * scale
                bias = bias.to(self.dtype)
                if _per_prompt(image):
                    per_prompt = []
                    for i in range(b):
                        scores = linear_act(k_in_image_space[i], image_pos[i], None).add_(bias[i])  # (h*n, N)
                        per_prompt.append(scores.reshape(heads, n, -1).softmax(dim=1).reshape(heads * n, -1))
                    weights_t = _stack(per_prompt)
                else:
                    scores = torch.baddbmm(bias, k_in_image_space, image_pos.transpose(1, 2))  # (B, h*n, N)
                    weights_t = scores.reshape(b, heads, n, -1).softmax(dim=2).reshape(b, heads * n, -1)
            if stats is not None:
                v, token_out = _token_rows(i2t, queries, self.dtype)
                if index == 0:
                    mean, rstd, first_state = stats.first(v, token_out, weights_t)
                else:
                    mean, rstd = stats.second(first_state, v, token_out, weights_t)
                update = BlockUpdate(weights_t, token_out, mean, rstd)
            else:
                # After the first shared block the image tokens are this call's own per-prompt buffer.
                image, update = self._image_to_tokens_update(i2t, weights_t, queries, image, layer.norm4, overwrite=not first_shared)
            if shared and factored is None:
                factored = FactoredTokens.after_first(update, layer.norm4, self.basis)
            elif factored is not None:
                factored = factored.after(update, layer.norm4)
        return queries, token_pe, ImageTokens(None if stats is not None else image, factored)

    def _final_tokens(
        self, queries: torch.Tensor, token_pe: torch.Tensor, image: ImageTokens, image_pos: torch.Tensor | None, rows: list[int]
    ) -> torch.Tensor:
        """The final token->image attention for the token rows ``rows`` only: (B, len(rows), C).
        Attention is per token row, so any subset gives the same rows as the whole. ``image_pos``:
        the image tokens + positional encoding, not needed for factored tokens."""
        final = self.transformer.final_attn_token_to_image
        q_sel = queries[:, rows]
        if image.factored is not None:
            attended = self._tokens_to_factored_image(final, q_sel + token_pe[:, rows], image.factored, image.factored.basis.final)
        else:
            assert image_pos is not None
            attended = self._tokens_to_image(final, q_sel + token_pe[:, rows], image.tokens, image_pos)
        return self.transformer.norm_final_attn(q_sel + attended)

    def _image_pos(self, image: ImageTokens) -> torch.Tensor | None:
        return None if image.factored is not None else image.tokens + self.pos

    def _mask_ids(self, multimask_output: bool) -> list[int]:
        return list(range(1, self.decoder.num_mask_tokens)) if multimask_output else [0]

    def _hyper(self, mask_tokens: torch.Tensor, mask_ids: list[int]) -> torch.Tensor:
        """Hypernetwork weights (B, M, C/8) from the final mask tokens (B, M, C)."""
        mlps = self.decoder.output_hypernetworks_mlps
        return torch.stack([mlps[i](mask_tokens[:, j]) for j, i in enumerate(mask_ids)], dim=1)

    # -- public -----------------------------------------------------------------------------

    @torch.no_grad()
    def decode_tokens(
        self,
        sparse_embeddings: torch.Tensor,
        multimask_output: bool = True,
        dense_embeddings: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, ImageTokens]:
        """Run the two-way transformer for a batch of prompts.

        sparse_embeddings: (B, n_prompt, C) from the prompt encoder. For prompts with a mask, either
        ``mask_inputs`` (B, 1, 4H, 4W), the low-res masks themselves (faster: their embedding is
        low-rank per token when the prompt encoder's mask embedding ends in a 1x1 convolution, as
        the official one does), or ``dense_embeddings`` (B, C, H, W) from the prompt encoder; neither
        for prompts without a mask (the no-mask embedding).
        Returns IoU predictions (B, M), hypernetwork weights (B, M, C/8) and the updated image
        tokens (B prompts of N x C) to pass to :meth:`upscale_masks`; M = 3 with multimask output, else 1.
        """
        if mask_inputs is not None and not self._mask_factored:
            dense_embeddings, mask_inputs = self.model.prompt_encoder.mask_downscaling(mask_inputs), None
        queries, token_pe, image = self._transformer(sparse_embeddings, dense_embeddings, mask_inputs)
        mask_ids = self._mask_ids(multimask_output)
        # Only the IoU token and the returned mask tokens are used after the final attention.
        out = self._final_tokens(queries, token_pe, image, self._image_pos(image), [0] + [1 + i for i in mask_ids])
        iou = self.decoder.iou_prediction_head(out[:, 0])[:, mask_ids]
        return iou, self._hyper(out[:, 1:], mask_ids), image

    @torch.no_grad()
    def decode_confident(
        self, sparse_embeddings: torch.Tensor, min_iou: float, multimask_output: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, ImageTokens]:
        """:meth:`decode_tokens` for prompts filtered by predicted IoU, as automatic mask
        generation does: the IoU token's final attention runs for every prompt, the mask tokens'
        only for the prompts with some IoU prediction above ``min_iou``.

        Returns IoU predictions (B, M) of all prompts, the indices (K,) of the prompts kept, and
        their hypernetwork weights (K, M, C/8) and image tokens (K prompts).
        """
        queries, token_pe, image = self._transformer(sparse_embeddings)
        mask_ids = self._mask_ids(multimask_output)
        image_pos = self._image_pos(image)
        iou_token = self._final_tokens(queries, token_pe, image, image_pos, [0])[:, 0]
        iou = self.decoder.iou_prediction_head(iou_token)[:, mask_ids]
        prompts = (iou > min_iou).any(dim=1).nonzero().squeeze(1)
        if len(prompts) == 0:
            hyper = iou.new_zeros((0, len(mask_ids), self.up2_w.shape[0] // 4))
            return iou, prompts, hyper, image.select(slice(0, 0))
        if len(prompts) < len(iou):  # gather the kept prompts (4 MiB of image tokens each); none to gather if all pass
            queries, token_pe = queries[prompts], token_pe[prompts]
            image_pos = None if image_pos is None else image_pos[prompts]
            image = image.select(prompts)
        mask_tokens = self._final_tokens(queries, token_pe, image, image_pos, [1 + i for i in mask_ids])
        return iou, prompts, self._hyper(mask_tokens, mask_ids), image

    @torch.no_grad()
    def upscale_masks(self, image: ImageTokens, hyper: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Low-res mask logits (B, M, 4H, 4W) from updated image tokens (B prompts) and
        hypernetwork weights (B, M, C/8), written into ``out`` when given."""
        b, m = len(image), hyper.shape[1]
        h, w = self.grid
        if image.device.type == "cpu":  # as _per_prompt
            masks = self._upscaled_in_blocks(image, hyper)
        else:
            masks = self._upscaled(image, hyper)
        # Columns are ordered (y, x, dy1, dx1, dy2, dx2): pixel (4y + 2dy1 + dy2, 4x + 2dx1 + dx2).
        # Two 5-D reorders, one per upscaling step, are ~3x faster than one 8-D permute.
        x = masks.reshape(b * m, h, w, 2, 2, 4).permute(0, 1, 3, 2, 4, 5)  # (y, dy1, x, dx1, (dy2, dx2))
        x = x.reshape(b * m, 2 * h, 2 * w, 2, 2).permute(0, 1, 3, 2, 4)  # (Y, dy2, X, dx2)
        if out is not None:
            out.view(b * m, 2 * h, 2, 2 * w, 2).copy_(x)
            return out
        return x.reshape(b, m, 4 * h, 4 * w)

    def _upscaled_in_blocks(self, image: ImageTokens, hyper: torch.Tensor) -> torch.Tensor:
        """The upscaling and the hypernetwork products as (B, M, N*16) fp32 logits, columns ordered
        (token, dy1, dx1, dy2, dx2), a prompt and a block of image tokens at a time (as many as
        ``CpuKernels.upscale_tokens``): each block goes through both convolutions, the norm, the
        activations and the mask products while it is in cache (all prompts at once stream ~50 MiB
        per prompt through memory)."""
        b, m, c2 = hyper.shape
        n = image.num_tokens
        c1 = self.up_norm.weight.shape[0]
        norm = self.up_norm
        factored = image.factored
        if factored is not None:
            cols = torch.matmul(factored.cols, self.up1_w.T)  # (B, K, 4*c1)
            bias = self.up1_b if factored.shift is None else self.up1_b + self.up1_w @ factored.shift
            src_out = factored.basis.up1  # (N, 4*c1)
        hyper = hyper.to(self.up2_w.dtype)
        masks = torch.empty((b, m, n * 16), dtype=torch.float32, device=hyper.device)
        block = cpu_kernels().upscale_tokens
        for i in range(b):
            for start in range(0, n, block):
                end = min(n, start + block)
                if factored is not None:
                    x = torch.addcmul(bias, src_out[start:end], factored.scale[i, start:end])
                    x.addmm_(factored.rows[i, :, start:end].T, cols[i])  # (T, 4*c1)
                else:
                    x = linear_act(image.tokens[i, start:end], self.up1_w, self.up1_b)
                x = F.layer_norm(x.reshape(-1, c1), (c1,), norm.weight, norm.bias, norm.eps)
                x = linear_act(torch.ops.aten.gelu_(x), self.up2_w, self.up2_b, "gelu")  # (4T, 4*c2)
                masks[i, :, start * 16 : end * 16] = hyper[i] @ x.reshape(-1, c2).T
        return masks

    def _upscaled(self, image: ImageTokens, hyper: torch.Tensor) -> torch.Tensor:
        """As :meth:`_upscaled_in_blocks`, all prompts and tokens at once (one kernel per step on a GPU)."""
        b = len(image)
        c1 = self.up_norm.weight.shape[0]
        if image.factored is not None:
            x = image.factored.project(image.factored.basis.up1, self.up1_w, self.up1_b).reshape(-1, self.up1_w.shape[0])  # (B*N, 4*c1)
        else:
            tokens = image.tokens
            x = linear_act(tokens.reshape(-1, tokens.shape[-1]), self.up1_w, self.up1_b)  # (B*N, 4*c1)
        x = F.gelu(F.layer_norm(x.reshape(-1, c1), (c1,), self.up_norm.weight, self.up_norm.bias, self.up_norm.eps))
        x = linear_act(x, self.up2_w, self.up2_b, "gelu")  # (B*N*4, 4*c2)
        c2 = hyper.shape[-1]
        x = x.reshape(b, -1, c2)
        return torch.bmm(hyper.to(x.dtype), x.transpose(1, 2)).float()  # (B, M, N*16)
