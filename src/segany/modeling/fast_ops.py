"""Inference kernels for the image encoder: oneDNN linear layers and block-wise rel-pos attention.

Both are exact re-orderings of the reference computation (fp32 results agree to ~1e-6 relative) and
fall back to plain PyTorch whenever their preconditions do not hold (autograd, non-CPU devices,
dtypes oneDNN does not take, PyTorch builds without the op). On GPUs the rel-pos attention takes
the form named by ``GPU_ATTENTION``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Private but long-standing op (what torch.compile's CPU backend emits for nn.Linear); on AVX-512
# CPUs (Zen 4) it is ~2x faster than the MKL sgemm behind F.linear, on AVX2 ones about as fast
# (bench/linear_shapes.py), and it can fuse the GELU.
_ONEDNN_LINEAR = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
_onednn_linear_ok: dict[torch.dtype, bool] = {}  # per dtype, decided on first use by comparing with F.linear

# Score elements (queries x keys) per attention chunk: 1M fp32 = 4 MiB, sized to stay in cache.
ATTENTION_CHUNK_ELEMENTS = 1 << 20

# How rel-pos attention runs off the CPU (GPUs): "explicit" is the reference arithmetic (two batched
# products around a softmax, as the official code does); "augmented" folds the bias into the q.k
# product, so that SDPA's fused kernels run with no mask and no (N, N) bias is ever written; "mask"
# gives SDPA the dense bias as its attention mask. On an H100 (ViT-H, bench/gpu.py) explicit was the
# fastest: bf16 54 ms against 83 (augmented) and 80 (mask); the widened heads (up to 208 channels,
# v padded alike) cost more than the N x N scores they save at these sizes.
GPU_ATTENTION = "explicit"
GPU_ATTENTION_KINDS = ("augmented", "mask", "explicit")


@dataclass(frozen=True)
class CpuKernels:
    """Which of several equivalent CPU inference kernels run (each set agrees with the reference
    arithmetic to ~1e-6). The best set depends on the CPU: ``bench/cpu_kernels.py`` times the
    encoder with each set side by side.

    fused_gelu: the exact GELU as oneDNN's post-op of the linear before it; else the linear, then
        PyTorch's GELU in place (oneDNN's erf post-op is slower than PyTorch's without AVX-512).
    mlp_rows: run each encoder MLP block (linear, GELU, linear) on blocks of this many tokens, so
        that a block's hidden activations (rows x 4C) stay in cache between its two products; 0:
        each product over all tokens.
    global_attention: "onednn", two oneDNN products around a softmax per block of query rows; or
        "sdpa", PyTorch's fused CPU attention per block (bias as its mask, online softmax).
    bf16_global_attention: how bfloat16 global attention runs: "same" as ``global_attention``; or
        "widened", PyTorch's fused attention over all heads at once with the bias folded into the
        score product (:func:`augmented_attention`), so that no bias and no score matrix is written.
    upscale_tokens: the mask decoder's upscaling (both convolutions, norm, GELUs and the mask
        products) runs on blocks of this many image tokens per prompt: 256 keep a block's
        activations (~0.75 MiB) within a 1 MiB L2 cache; larger blocks make fewer, larger products.
    onednn_min_rows: linears over fewer rows (tokens) than this run through ``F.linear``. oneDNN's
        op costs ~20-40 us a call before any arithmetic (it takes the weight unpacked), more than a
        whole 7-row product of the mask decoder's prompt tokens through MKL.
    mkl_fp32_features: fp32 linears without an activation whose inputs have at least this many
        features run through ``F.linear``, whose MKL sgemm is the faster there (on an Intel Xeon, ~8-10%
        for ViT-B's 768 and 3072 features; oneDNN by 2-10% for the mask decoder's 128 and 256; on
        Zen 4 MKL was ~2x slower); None: all through oneDNN.
    """

    fused_gelu: bool = True
    mlp_rows: int = 0
    global_attention: str = "onednn"
    bf16_global_attention: str = "same"
    upscale_tokens: int = 256
    onednn_min_rows: int = 0
    mkl_fp32_features: int | None = None


# Measured on an AMD Zen 4 (AVX-512 with bf16), an AMD Zen 3 (AVX2 only; docs/bench/*-cpu-avx2/)
# and an Intel Xeon with AMX (docs/bench/*-cpu-amx/): there, the score products are ~10x cheaper in
# bfloat16 than the softmax and bias around them, which PyTorch's fused attention mostly avoids.
AVX512_KERNELS = CpuKernels()
AVX2_KERNELS = CpuKernels(fused_gelu=False, mlp_rows=256, global_attention="sdpa")
# On the AMX Xeon (2 MiB of L2 per core) the upscaling ran ~10% faster in blocks of 1024 tokens than 256.
# There MKL's sgemm ran ViT-B's fp32 linears ~10% faster than oneDNN (bench/linear_shapes.py; equal
# with the GELU fused; oneDNN was faster for 256 input features) and any linear of fewer than 256
# rows faster, in fp32 and in bf16.
AMX_KERNELS = CpuKernels(
    bf16_global_attention="widened", upscale_tokens=1024, onednn_min_rows=256, mkl_fp32_features=512
)
# Set to force one set (benchmarks, tests); None: chosen from the CPU's capability.
CPU_KERNELS: CpuKernels | None = None


def cpu_kernels() -> CpuKernels:
    """The kernel set for this CPU: :data:`CPU_KERNELS` if set, else by ATen's vector capability
    and, on AVX-512 CPUs, whether the CPU has AMX tiles."""
    if CPU_KERNELS is not None:
        return CPU_KERNELS
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return AVX2_KERNELS
    return AMX_KERNELS if cpu_has_amx() else AVX512_KERNELS


@functools.cache
def cpu_has_amx() -> bool:
    """Whether the CPU has AMX bfloat16 tiles (Intel Sapphire Rapids and later), from the kernel's
    CPU flags; False where they cannot be read (non-Linux systems)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    except OSError:
        pass
    return False


def plain_pytorch() -> bool:
    """True while tracing, exporting or compiling: graphs need the plain ops, not these kernels."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def _inference_only(*tensors: torch.Tensor) -> bool:
    if plain_pytorch():
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return None


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype ``x`` is computed in: CPU autocast's dtype while it is on, else ``x.dtype``."""
    return _autocast_dtype(x) or x.dtype


def contiguous(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A contiguous copy of ``x`` in ``dtype``, written in one pass (``x.to(dtype).contiguous()``
    can take two, and ``x.to(dtype, memory_format=...)`` may return a strided view)."""
    if dtype == x.dtype:
        return x.contiguous()
    return torch.empty(x.shape, dtype=dtype, device=x.device).copy_(x)


def _check_onednn_linear(dtype: torch.dtype = torch.float32) -> bool:
    """Whether oneDNN's fused linear runs in ``dtype`` here and agrees with ``F.linear``: decided
    once per dtype by a tiny probe. bfloat16 primitives need a CPU with bf16 instructions (AVX-512
    BF16 or AMX); on others (e.g. AVX2-only CPUs) oneDNN cannot create them and the caller falls
    back to plain PyTorch."""
    if dtype not in _onednn_linear_ok:
        ok = False
        if _ONEDNN_LINEAR is not None and torch.backends.mkldnn.is_available():
            try:
                gen = torch.Generator().manual_seed(0)
                with torch.autocast("cpu", enabled=False):
                    x, w, b = (torch.randn(s, generator=gen).to(dtype) for s in ((3, 5, 16), (8, 16), (8,)))
                    got = _ONEDNN_LINEAR(x, w, b, "gelu", [], "none").float()
                    want = F.gelu(F.linear(x.float(), w.float(), b.float()))
                tol = 1e-5 if dtype == torch.float32 else 5e-2
                ok = bool(torch.allclose(got, want, atol=tol, rtol=tol))
            except (RuntimeError, NotImplementedError):
                ok = False
        _onednn_linear_ok[dtype] = ok
    return _onednn_linear_ok[dtype]


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bfloat16 (oneDNN's bf16 kernels run here: AVX-512 BF16, AMX, or
    AVX-512 cores on which oneDNN converts in registers). Without them, as on AVX2-only CPUs,
    PyTorch emulates bfloat16 element by element: ~25x slower than fp32 for the ViT-B encoder."""
    return _check_onednn_linear(torch.bfloat16)


_ACTIVATIONS = {None: (lambda y: y, "none", ""), "gelu": (F.gelu, "gelu", "none"), "relu": (F.relu, "relu", "")}


def linear(x: torch.Tensor, layer: nn.Module, activation: str | None = None) -> torch.Tensor:
    """``layer(x)`` followed by ``activation`` (None, "gelu" (exact) or "relu"), fused through
    oneDNN on CPU inference with an nn.Linear; plain PyTorch otherwise."""
    if isinstance(layer, nn.Linear):
        return linear_act(x, layer.weight, layer.bias, activation)
    if x.dtype != torch.float32:
        x = x.float()  # dynamically quantized int8 layers take fp32 activations only
    return _ACTIVATIONS[activation][0](layer(x))


def _onednn_preferred(
    kernels: CpuKernels, dtype: torch.dtype, rows: int, features: int, activation: str | None
) -> bool:
    """Whether a CPU linear of ``rows`` x ``features`` inputs runs through oneDNN in this kernel set
    (else F.linear)."""
    if rows < kernels.onednn_min_rows:
        return False
    mkl = kernels.mkl_fp32_features
    return mkl is None or dtype != torch.float32 or activation is not None or features < mkl


def linear_act(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str | None = None
) -> torch.Tensor:
    """``activation(x @ weight.T + bias)`` for a (out, in) weight, as ``F.linear``; fused through
    oneDNN on CPU inference, plain PyTorch otherwise."""
    act, attr, algorithm = _ACTIVATIONS[activation]
    if x.device.type == "cpu":
        dtype = compute_dtype(x)
        kernels = cpu_kernels()
        if (
            _onednn_preferred(kernels, dtype, x.numel() // max(x.shape[-1], 1), x.shape[-1], activation)
            and dtype in (torch.float32, torch.bfloat16)
            and weight.dtype in (torch.float32, torch.bfloat16)
            and _inference_only(x, weight)
            and _check_onednn_linear(dtype)
        ):
            x, weight = x.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
            if activation == "gelu" and not kernels.fused_gelu:
                return torch.ops.aten.gelu_(_ONEDNN_LINEAR(x, weight, bias, "none", [], ""))
            return _ONEDNN_LINEAR(x, weight, bias, attr, [], algorithm)
        elif weight.dtype != x.dtype and _autocast_dtype(x) is None:  # F.linear wants one dtype; the fused op casts
            x, weight = x.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
    return act(F.linear(x, weight, bias))


def mlp(x: torch.Tensor, lin1: nn.Module, lin2: nn.Module) -> torch.Tensor:
    """``lin2(gelu(lin1(x)))`` (exact GELU) over the last dimension of ``x``; on CPU inference with
    plain fp32 linears, in blocks of ``cpu_kernels().mlp_rows`` tokens where that is set."""
    rows = cpu_kernels().mlp_rows
    blockwise = (
        rows > 0
        and x.device.type == "cpu"
        and isinstance(lin1, nn.Linear)
        and isinstance(lin2, nn.Linear)
        and compute_dtype(x) == torch.float32
        and lin1.weight.dtype == lin2.weight.dtype == torch.float32
        and _inference_only(x, lin1.weight, lin2.weight)
    )
    if not blockwise or x.numel() // x.shape[-1] <= rows:
        return linear(linear(x, lin1, "gelu"), lin2)
    tokens = x.reshape(-1, x.shape[-1])
    out = tokens.new_empty((tokens.shape[0], lin2.out_features))
    for r0 in range(0, tokens.shape[0], rows):
        out[r0 : r0 + rows] = linear(linear(tokens[r0 : r0 + rows], lin1, "gelu"), lin2)
    return out.reshape(*x.shape[:-1], lin2.out_features)


def rel_pos_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor | None,
    rel_w: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """softmax(scale * q @ k^T + bias) @ v with SAM's decomposed relative-position bias.

    q, k, v: (BH, H*W, C). rel_h: (BH, H, W, H) and rel_w: (BH, H, W, W), the per-query terms of
    the bias ``bias[(y, x), (ky, kx)] = rel_h[y, x, ky] + rel_w[y, x, kx]`` (None: no bias).

    On CPU inference the (H*W) x (H*W) bias is never materialised: queries are processed in blocks
    of about ATTENTION_CHUNK_ELEMENTS scores, each block building its slice of the bias, scores,
    softmax and output while they are in cache. Elsewhere SDPA takes the full bias as its mask.
    """
    bh, n, _ = q.shape
    if rel_h is None or rel_w is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    h, w = rel_h.shape[1], rel_h.shape[2]
    if q.device.type != "cpu" and not plain_pytorch():
        if GPU_ATTENTION == "augmented":
            return augmented_attention(q, k, v, rel_h, rel_w, scale)
        if GPU_ATTENTION == "explicit":
            return explicit_attention(q, k, v, rel_h, rel_w, scale)
    if q.device.type != "cpu" or not _inference_only(q, k, v, rel_h, rel_w):
        bias = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(bh, n, n)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=scale)

    dtype = compute_dtype(q)
    with torch.autocast("cpu", enabled=False):  # explicit dtypes: no casts between the steps
        return _blockwise_attention(q.to(dtype), k.to(dtype), v.to(dtype), rel_h.to(dtype), rel_w.to(dtype), scale)


def augmented_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor, scale: float
) -> torch.Tensor:
    """Rel-pos attention as plain attention over widened heads: with q' = [scale * q, rel_h, rel_w]
    and k' = [k, onehot(ky), onehot(kx)], q'.k' = scale * q.k + rel_h[ky] + rel_w[kx] exactly, so
    SDPA runs without a mask (flash / memory-efficient kernels). The widening is H + W channels
    (28 for 14x14 windows, 128 for a 64x64 global block), padded to a multiple of 8."""
    bh, n, d = q.shape
    h, w = rel_h.shape[1], rel_h.shape[2]
    dtype = q.dtype
    pad = (-(d + h + w)) % 8
    parts_q = [q * scale, rel_h.reshape(bh, n, h).to(dtype), rel_w.reshape(bh, n, w).to(dtype)]
    parts_k = [k, _key_position_onehots(h, w, dtype, q.device).expand(bh, n, h + w)]
    if pad:
        zeros = q.new_zeros(bh, n, pad)
        parts_q.append(zeros)
        parts_k.append(zeros)
    q2, k2 = torch.cat(parts_q, dim=-1), torch.cat(parts_k, dim=-1)
    # Flash kernels want one head size for q, k and v: v is widened with zeros and cut back after.
    # And (batch, heads, tokens, channels) inputs: on CPU, 3-D ones take the unfused math path.
    v2 = F.pad(v, (0, q2.shape[-1] - d))
    return F.scaled_dot_product_attention(q2[None], k2[None], v2[None], scale=1.0)[0, ..., :d]


def _key_position_onehots(h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(h*w, h+w): for key (ky, kx), one-hot ky in the first h columns and one-hot kx in the last w,
    so that [rel_h, rel_w] . onehots = rel_h[ky] + rel_w[kx]."""
    onehot_h = torch.eye(h, dtype=dtype, device=device).repeat_interleave(w, dim=0)
    onehot_w = torch.eye(w, dtype=dtype, device=device).repeat(h, 1)
    return torch.cat([onehot_h, onehot_w], dim=1)


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor, scale: float
) -> torch.Tensor:
    """The reference arithmetic: scores = scale * q @ k^T, plus the bias broadcast from its two
    factors, softmax, @ v. Writes the (BH, N, N) scores once."""
    bh, n, _ = q.shape
    h, w = rel_h.shape[1], rel_h.shape[2]
    scores = (q * scale) @ k.transpose(-2, -1)
    scores = (scores.view(bh, h, w, h, w) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).view(bh, n, n)
    return scores.softmax(dim=-1).to(v.dtype) @ v


def _blockwise_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor, scale: float
) -> torch.Tensor:
    bh, n, _ = q.shape
    h, w = rel_h.shape[1], rel_h.shape[2]
    groups = max(1, ATTENTION_CHUNK_ELEMENTS // (n * n))  # many small windows per step
    rows = h if groups > 1 else max(1, ATTENTION_CHUNK_ELEMENTS // (w * n))  # or a few query rows
    if groups > 1 and q.dtype == torch.bfloat16:
        return _widened_window_attention(q * scale, k, v, rel_h, rel_w, groups)
    if groups == 1 and q.dtype == torch.bfloat16 and cpu_kernels().bf16_global_attention == "widened":
        return augmented_attention(q, k, v, rel_h, rel_w, scale)
    out = torch.empty(bh, n, v.shape[-1], dtype=q.dtype, device=q.device)
    if groups == 1 and cpu_kernels().global_attention == "sdpa":
        # PyTorch's fused CPU attention, per head and block of query rows: its online softmax never
        # writes the block's scores out, only the block's slice of the bias is built.
        for g in range(bh):
            k_g, v_g = k[g, None, None], v[g, None, None]  # (1, 1, N, C)
            for r0 in range(0, h, rows):
                r1 = min(h, r0 + rows)
                bias = (rel_h[g, r0:r1, :, :, None] + rel_w[g, r0:r1, :, None, :]).reshape(1, 1, (r1 - r0) * w, n)
                q_block = q[g, None, None, r0 * w : r1 * w]
                out[g, r0 * w : r1 * w] = F.scaled_dot_product_attention(q_block, k_g, v_g, attn_mask=bias, scale=scale)[0, 0]
        return out
    q_scaled = q * scale
    if groups == 1 and _check_onednn_linear(q.dtype):
        # Global attention, one head at a time: the two products through oneDNN (~2.5x MKL's bmm
        # here). k and v are laid out once per head as the (out, in) "weights" of the products.
        for g in range(bh):
            k_g, v_t = k[g].contiguous(), v[g].t().contiguous()  # oneDNN is very slow on strided operands
            for r0 in range(0, h, rows):
                r1 = min(h, r0 + rows)
                bias = (rel_h[g, r0:r1, :, :, None] + rel_w[g, r0:r1, :, None, :]).reshape((r1 - r0) * w, n)
                scores = _ONEDNN_LINEAR(q_scaled[g, r0 * w : r1 * w], k_g, None, "none", [], "").add_(bias)
                probs = torch.softmax(scores, dim=-1)
                out[g, r0 * w : r1 * w] = _ONEDNN_LINEAR(probs, v_t, None, "none", [], "")
        return out
    k_t = k.transpose(1, 2).contiguous()
    for g0 in range(0, bh, groups):
        g1 = min(bh, g0 + groups)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            bias = rel_h[g0:g1, r0:r1, :, :, None] + rel_w[g0:g1, r0:r1, :, None, :]
            scores = torch.baddbmm(bias.reshape(g1 - g0, (r1 - r0) * w, n), q_scaled[g0:g1, r0 * w : r1 * w], k_t[g0:g1])
            probs = torch.softmax(scores, dim=-1)
            torch.bmm(probs, v[g0:g1], out=out[g0:g1, r0 * w : r1 * w])
    return out


def _widened_window_attention(
    q_scaled: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor, groups: int
) -> torch.Tensor:
    """Windowed attention with the bias folded into the score product, as in
    :func:`augmented_attention`: [q * scale, rel_h, rel_w] . [k, onehot(ky), onehot(kx)].

    For bfloat16 windows (14 x 14) this is ~1.6x faster than adding the broadcast bias: the bias
    sum over tiny trailing dimensions costs more than 28 extra channels in the product, which
    accumulates in fp32 and rounds once. In fp32 the extra channels cost as much as they save.
    """
    bh, n, _ = q_scaled.shape
    h, w = rel_h.shape[1], rel_h.shape[2]
    dtype = q_scaled.dtype
    onehots_t = _key_position_onehots(h, w, dtype, k.device).t()  # (h+w, n)
    keys_t = torch.cat([k.transpose(1, 2), onehots_t.expand(bh, h + w, n)], 1)
    queries = torch.cat([q_scaled, rel_h.reshape(bh, n, h), rel_w.reshape(bh, n, w)], -1)
    out = torch.empty(bh, n, v.shape[-1], dtype=dtype, device=q_scaled.device)
    for g0 in range(0, bh, groups):
        g1 = min(bh, g0 + groups)
        probs = torch.softmax(torch.bmm(queries[g0:g1], keys_t[g0:g1]), dim=-1)
        torch.bmm(probs, v[g0:g1], out=out[g0:g1])
    return out
