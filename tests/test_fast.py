"""The fast inference paths: each must agree with the plain computation it replaces."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segany import SamPredictor
from segany.benchmark import mask_iou
from segany.modeling import fast_ops
from segany.modeling.common import MLPBlock
from segany.modeling.image_encoder import decomposed_rel_pos_bias, decomposed_rel_pos_terms
from segany.modeling.sam import _banded_resize

POINT_CASES = ["img0_point1", "img0_points_pos_neg", "img0_box", "img1_point1", "img1_points_pos_neg", "img1_box"]
# Every CPU kernel set runs on any CPU (only their speed differs): each test below that takes
# ``kernels`` checks all of them, whichever this machine would choose.
KERNEL_SETS = {
    "avx512_kernels": fast_ops.AVX512_KERNELS,
    "avx2_kernels": fast_ops.AVX2_KERNELS,
    "amx_kernels": fast_ops.AMX_KERNELS,
}


def _record_calls(monkeypatch, name: str) -> list:
    """Wrap ``fast_ops.<name>`` so that each call appends its first argument's shape to the returned list."""
    calls = []
    original = getattr(fast_ops, name)

    def recorded(*args):
        calls.append(args[0].shape)
        return original(*args)

    monkeypatch.setattr(fast_ops, name, recorded)
    return calls


@pytest.fixture(params=list(KERNEL_SETS))
def kernels(request, monkeypatch):
    monkeypatch.setattr(fast_ops, "CPU_KERNELS", KERNEL_SETS[request.param])
    return KERNEL_SETS[request.param]


@pytest.mark.parametrize(("size", "heads", "chunk"), [((64, 64), 3, 1 << 14), ((14, 14), 50, 1 << 18), ((9, 12), 2, 300)])
def test_blockwise_attention_matches_sdpa_with_full_bias(monkeypatch, kernels, size, heads, chunk):
    """Global (query-row blocks), windowed (groups of windows) and non-square grids, small chunks."""
    monkeypatch.setattr(fast_ops, "ATTENTION_CHUNK_ELEMENTS", chunk)
    gen = torch.Generator().manual_seed(0)
    n, dim = size[0] * size[1], 16
    q, k, v = (torch.randn(heads, n, dim, generator=gen) for _ in range(3))
    rel_pos_h = torch.randn(2 * size[0] - 1, dim, generator=gen) * 0.3
    rel_pos_w = torch.randn(2 * size[1] - 1, dim, generator=gen) * 0.3
    scale = dim**-0.5
    bias = decomposed_rel_pos_bias(q, rel_pos_h, rel_pos_w, size)
    expected = torch.softmax(scale * q @ k.transpose(1, 2) + bias, dim=-1) @ v
    rel_h, rel_w = decomposed_rel_pos_terms(q, rel_pos_h, rel_pos_w, size)
    with torch.inference_mode():
        got = fast_ops.rel_pos_attention(q, k, v, rel_h, rel_w, scale)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _assert_bf16_attention_beats_the_reference_arithmetic(size, heads, seed):
    """rel_pos_attention on random bf16 inputs (64 channels) against the fp32 result: at least as
    close on average as explicit_attention run in bf16, and within 0.07 everywhere. Returns it."""
    gen = torch.Generator().manual_seed(seed)
    n, dim = size[0] * size[1], 64
    q, k, v = (torch.randn(heads, n, dim, generator=gen).bfloat16() for _ in range(3))
    rel_pos_h = (torch.randn(2 * size[0] - 1, dim, generator=gen) * 0.3).bfloat16()
    rel_pos_w = (torch.randn(2 * size[1] - 1, dim, generator=gen) * 0.3).bfloat16()
    scale = dim**-0.5
    rel_h, rel_w = decomposed_rel_pos_terms(q, rel_pos_h, rel_pos_w, size)
    bias = (rel_h.float()[:, :, :, :, None] + rel_w.float()[:, :, :, None, :]).reshape(heads, n, n)
    expected = torch.softmax(scale * q.float() @ k.float().transpose(1, 2) + bias, dim=-1) @ v.float()
    with torch.inference_mode():
        got = fast_ops.rel_pos_attention(q, k, v, rel_h, rel_w, scale)
        explicit = fast_ops.explicit_attention(q, k, v, rel_h, rel_w, scale)
    assert got.dtype == torch.bfloat16
    error, reference_error = (got.float() - expected).abs(), (explicit.float() - expected).abs()
    assert error.mean() <= reference_error.mean()
    assert error.max() < 0.07
    return got


@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_bf16_global_attention_of_the_amx_set_is_as_accurate_as_the_reference_arithmetic(monkeypatch, size):
    """With AMX_KERNELS, bfloat16 global attention (one block of all queries) runs as PyTorch's
    fused attention over heads widened with the bias factors. On bf16 inputs it must be at least as
    close to the fp32 result as the reference arithmetic (explicit_attention) run in bf16."""
    monkeypatch.setattr(fast_ops, "CPU_KERNELS", fast_ops.AMX_KERNELS)
    calls = _record_calls(monkeypatch, "augmented_attention")
    got = _assert_bf16_attention_beats_the_reference_arithmetic(size, heads=3, seed=2)
    assert calls == [got.shape] and got.shape == (3, size[0] * size[1], 64)


@pytest.mark.parametrize("size", [(14, 14), (9, 12)])
def test_bf16_windowed_attention_is_as_accurate_as_the_reference_arithmetic(size):
    """bfloat16 windows take the widened product (bias folded into q.k, accumulated in fp32). On
    bf16 inputs it must be at least as close to the fp32 result as the reference arithmetic
    (explicit_attention) run in bf16."""
    _assert_bf16_attention_beats_the_reference_arithmetic(size, heads=40, seed=1)


def test_encoder_token_stream_is_contiguous(ref_model):
    """The (B, H, W, C) stream leaves the patch embedding contiguous: LayerNorm and the residual
    adds run several times slower on the conv's channels-first strides."""
    tokens = ref_model.image_encoder.patch_embed(torch.zeros(1, 3, 64, 64))
    assert tokens.shape[-1] == ref_model.image_encoder.patch_embed.proj.out_channels
    assert tokens.is_contiguous()


@pytest.mark.parametrize("kind", ["augmented", "explicit"])
@pytest.mark.parametrize("size", [(14, 14), (9, 12), (8, 8)])
def test_gpu_attention_forms_match_the_bias_and_its_gradients(size, kind):
    """The GPU forms (bias folded into widened heads; the explicit reference arithmetic) give the
    biased attention and the same gradients for q, k, v and the rel-pos tables, as training on a
    GPU needs."""
    gen = torch.Generator().manual_seed(1)
    n, dim, heads = size[0] * size[1], 10, 3
    leaves = [torch.randn(heads, n, dim, generator=gen, requires_grad=True) for _ in range(3)]
    tables = [(torch.randn(2 * s - 1, dim, generator=gen) * 0.3).requires_grad_() for s in size]
    scale = dim**-0.5

    def grads(fn):
        q, k, v = leaves
        out = fn(q, k, v)
        out.backward(torch.ones_like(out) * torch.linspace(-1, 1, out.numel()).reshape(out.shape))
        result = [out.detach()] + [t.grad.clone() for t in (*leaves, *tables)]
        for t in (*leaves, *tables):
            t.grad = None
        return result

    def reference(q, k, v):
        bias = decomposed_rel_pos_bias(q, *tables, size)
        return torch.softmax(scale * q @ k.transpose(1, 2) + bias, dim=-1) @ v

    def augmented(q, k, v):
        form = fast_ops.augmented_attention if kind == "augmented" else fast_ops.explicit_attention
        return form(q, k, v, *decomposed_rel_pos_terms(q, *tables, size), scale)

    for got, expected in zip(grads(augmented), grads(reference)):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_cpu_kernels_follow_the_cpu_unless_forced(monkeypatch):
    monkeypatch.setattr(fast_ops, "CPU_KERNELS", None)
    monkeypatch.setattr(fast_ops, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert fast_ops.cpu_kernels() == fast_ops.AVX512_KERNELS
    monkeypatch.setattr(fast_ops, "cpu_has_amx", lambda: True)
    assert fast_ops.cpu_kernels() == fast_ops.AMX_KERNELS
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert fast_ops.cpu_kernels() == fast_ops.AVX2_KERNELS
    monkeypatch.setattr(fast_ops, "CPU_KERNELS", fast_ops.AVX512_KERNELS)
    assert fast_ops.cpu_kernels() == fast_ops.AVX512_KERNELS


@pytest.mark.parametrize("tokens", [(2, 7, 5), (3,)])
def test_blockwise_mlp_matches_the_mlp_block(monkeypatch, kernels, tokens):
    """The encoder MLP in blocks of tokens (5 rows: 70 tokens end in a partial block; 3 tokens fit
    in one) gives the module's output; with autograd it runs as the module does and keeps gradients."""
    monkeypatch.setattr(fast_ops, "CPU_KERNELS", dataclasses.replace(kernels, mlp_rows=5))
    block = MLPBlock(48, 192)
    x = torch.randn(*tokens, 48)
    expected = block(x)
    with torch.inference_mode():
        got = fast_ops.mlp(x, block.lin1, block.lin2)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    x.requires_grad_()
    fast_ops.mlp(x, block.lin1, block.lin2).sum().backward()
    assert x.grad is not None and block.lin1.weight.grad is not None


def test_each_cpu_kernel_set_gives_the_official_embedding(ref_model, reference_arrays, kernels):
    """The fixture model (two global-attention blocks, two windowed) with either kernel set."""
    predictor = SamPredictor(ref_model)
    predictor.set_image(reference_arrays["img0"])
    got, ref = predictor.get_image_embedding().numpy(), reference_arrays["img0_features"]
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4


@pytest.mark.parametrize("activation", [None, "gelu", "relu"])
def test_fused_linear_matches_torch(kernels, activation):
    layer = torch.nn.Linear(48, 96)
    x = torch.randn(2, 7, 5, 48)
    reference = {None: lambda y: y, "gelu": F.gelu, "relu": F.relu}[activation](layer(x))
    with torch.inference_mode():
        got = fast_ops.linear(x, layer, activation)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = fast_ops.linear(x, layer, activation)
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), reference, rtol=0.05, atol=0.05)


@pytest.mark.parametrize(("rows", "features", "activation", "dtype", "onednn"), [
    (7, 64, None, torch.float32, False),  # prompt tokens: below onednn_min_rows
    (300, 512, None, torch.float32, False),  # fp32, no activation, wide inputs: MKL
    (300, 64, None, torch.float32, True),  # narrow inputs: oneDNN
    (300, 512, "gelu", torch.float32, True),  # the GELU fused
    (7, 64, "gelu", torch.bfloat16, False),
    (300, 512, None, torch.bfloat16, True),
])
def test_linear_runs_where_its_kernel_set_says(monkeypatch, rows, features, activation, dtype, onednn):
    """The AMX set sends linears of few rows, and fp32 ones without an activation on wide inputs, to
    F.linear (MKL), the rest to oneDNN; the AVX-512 set sends all to oneDNN. F.linear's results are
    its own, bit for bit."""
    if not fast_ops._check_onednn_linear(dtype):
        pytest.skip(f"oneDNN has no {dtype} linear on this CPU")
    calls = _record_calls(monkeypatch, "_ONEDNN_LINEAR")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, features, generator=gen).to(dtype)
    w, b = (torch.randn(32, features, generator=gen) / features**0.5).to(dtype), torch.randn(32).to(dtype)
    act = {None: lambda y: y, "gelu": F.gelu}[activation]
    for kernels, expect_onednn in ((fast_ops.AMX_KERNELS, onednn), (fast_ops.AVX512_KERNELS, True)):
        calls.clear()
        monkeypatch.setattr(fast_ops, "CPU_KERNELS", kernels)
        with torch.inference_mode():
            got = fast_ops.linear_act(x, w, b, activation)
        assert len(calls) == int(expect_onednn)
        reference = act(F.linear(x, w, b))
        if expect_onednn:
            tol = 1e-5 if dtype == torch.float32 else 2e-2
            torch.testing.assert_close(got, reference, rtol=tol, atol=tol)
        else:
            assert torch.equal(got, reference)


def test_fused_linear_keeps_autograd():
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8, requires_grad=True)
    fast_ops.linear(x, layer, "gelu").sum().backward()
    assert x.grad is not None and layer.weight.grad is not None


@pytest.mark.parametrize(
    ("input_size", "original_size"),
    [((768, 1024), (480, 640)), ((1024, 683), (1500, 1000)), ((1024, 1024), (300, 300)), ((577, 1024), (97, 172))],
)
def test_matrix_postprocess_matches_two_interpolations(ref_model, input_size, original_size):
    low = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(1)) * 8
    size = ref_model.image_encoder.img_size
    expected = F.interpolate(low, (size, size), mode="bilinear", align_corners=False)
    expected = expected[..., : input_size[0], : input_size[1]]
    expected = F.interpolate(expected, original_size, mode="bilinear", align_corners=False)
    with torch.inference_mode():
        got = ref_model.postprocess_masks(low, input_size, original_size)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-4
    assert torch.equal(got > 0, expected > 0)
    for threshold in (0.0, 1.5):  # thresholded block by block, rows last: the same masks
        with torch.inference_mode():
            masks = ref_model.postprocess_masks(low, input_size, original_size, threshold)
        assert masks.dtype == torch.bool and torch.equal(masks, expected > threshold)
    plain = ref_model.postprocess_masks(low.clone().requires_grad_(), input_size, original_size, 0.0)
    assert plain.dtype == torch.bool and torch.equal(plain, expected > 0)


def test_thresholded_postprocess_keeps_ties_and_nan_as_the_comparison_does(ref_model):
    """Thresholded masks come from a float -> bool cast of relu(logits - t) when the logits are
    finite: exact zeros, ties and negative zeros must stay False, and NaN logits must not turn True."""
    size = ref_model.image_encoder.img_size
    low = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2)) * 8
    low[:, :, 60:120] = 0.0  # resized values exactly 0: a tie with the default threshold
    low[:, 1, 130:150] = -0.0
    rows = _banded_resize(256, size, 768, 480, low.device)
    cols = _banded_resize(256, size, 1024, 640, low.device)
    by_cols = cols.cols(low)
    assert (rows.rows(by_cols)[:, :, 160:290] == 0).all()  # input rows 60-120 -> output rows ~150-300
    for threshold in (0.0, 1.5, -2.0):
        reference = rows.rows(by_cols) > threshold  # the same block products, compared
        assert torch.equal(rows.rows_above(by_cols, threshold, finite=True), reference)
        with torch.inference_mode():
            masks = ref_model.postprocess_masks(low, (768, 1024), (480, 640), threshold)
        assert torch.equal(masks, reference)
    with_nan = low.clone()
    with_nan[0, 2, 10:14, 10:14] = float("nan")
    with torch.inference_mode():
        masks = ref_model.postprocess_masks(with_nan, (768, 1024), (480, 640), 0.0)
    resized = rows.rows(cols.cols(with_nan))
    assert torch.isnan(resized).any() and torch.equal(masks, resized > 0)  # NaN: False, as compared


@pytest.fixture(scope="module")
def fp32_predictor(ref_model, reference_arrays):
    p = SamPredictor(ref_model)
    p.set_image(reference_arrays["img0"])
    return p


def test_predict_batch_shares_image_work_without_changing_results(fp32_predictor):
    """Many prompts in one call (image side computed once, broadcast) equal one call per prompt."""
    h, w = fp32_predictor.original_size
    rng = np.random.default_rng(0)
    points = np.stack([rng.uniform(0, w, 6), rng.uniform(0, h, 6)], -1)
    labels = np.ones((6, 1))
    masks, iou, logits = fp32_predictor.predict_batch(points[:, None], labels)
    for i, pt in enumerate(points):
        m, s, lg = fp32_predictor.predict(pt[None], labels[i])
        assert np.abs(lg - logits[i]).max() < 1e-4
        assert np.abs(s - iou[i]).max() < 1e-5
        assert (m != masks[i]).mean() < 1e-4


@pytest.mark.parametrize("tokens", [1000, 4096])
def test_decoder_upscaling_blocks_do_not_change_the_logits(monkeypatch, fp32_predictor, tokens):
    """CpuKernels.upscale_tokens only sets how many image tokens each upscaling block holds (an
    uneven last block included): the logits are those of the default 256."""
    h, w = fp32_predictor.original_size
    points = np.array([[[w * 0.3, h * 0.6]], [[w * 0.7, h * 0.2]]])
    labels = np.ones((2, 1))
    monkeypatch.setattr(fast_ops, "CPU_KERNELS", fast_ops.AVX512_KERNELS)
    _, _, want = fp32_predictor.predict_batch(points, labels, return_logits=True)
    monkeypatch.setattr(fast_ops, "CPU_KERNELS", dataclasses.replace(fast_ops.AVX512_KERNELS, upscale_tokens=tokens))
    _, _, got = fp32_predictor.predict_batch(points, labels, return_logits=True)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("return_logits", [False, True])
def test_predict_batch_chunks_write_the_outputs_of_single_calls(fp32_predictor, return_logits):
    """Over DECODER_CHUNK prompts the chunks are decoded into the outputs in place: with mask inputs
    and an uneven last chunk, each prompt gets what its own call gives, masks or logits."""
    from segany.predictor import DECODER_CHUNK

    n = 2 * DECODER_CHUNK + 1
    h, w = fp32_predictor.original_size
    rng = np.random.default_rng(1)
    points = np.stack([rng.uniform(0, w, n), rng.uniform(0, h, n)], -1)[:, None]
    labels = np.ones((n, 1))
    feedback = rng.normal(0, 8, size=(n, 1, 256, 256)).astype(np.float32)
    masks, iou, logits = fp32_predictor.predict_batch(
        points, labels, mask_input=feedback, multimask_output=False, return_logits=return_logits
    )
    assert masks.shape == (n, 1, h, w) and masks.dtype == (np.float32 if return_logits else bool)
    for i in (0, DECODER_CHUNK, n - 1):  # one prompt of each chunk
        m, s, lg = fp32_predictor.predict(
            points[i], labels[i], mask_input=feedback[i], multimask_output=False, return_logits=return_logits
        )
        assert np.abs(lg - logits[i]).max() < 1e-4 and np.abs(s - iou[i]).max() < 1e-5
        if return_logits:
            assert np.abs(m - masks[i]).max() < 1e-3
        else:
            assert (m != masks[i]).mean() < 1e-4


def _run_case(predictor, spec, arrays):
    kwargs = {"multimask_output": spec["multimask_output"]}
    if "point_coords" in spec:
        kwargs["point_coords"] = np.array(spec["point_coords"])
        kwargs["point_labels"] = np.array(spec["point_labels"])
    if "box" in spec:
        kwargs["box"] = np.array(spec["box"])
    return predictor.predict(**kwargs)[0]


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_masks_agree_with_fp32(ref_model, reference_arrays, manifest, precision):
    if not fast_ops.cpu_has_bf16():
        # Emulated bf16 would take minutes here, and the product never runs it on such a CPU.
        pytest.skip("this CPU has no bfloat16 instructions: see test_fast_precisions_on_a_cpu_without_bf16")
    fast = {name: SamPredictor(ref_model, precision=precision) for name in ("img0", "img1")}
    exact = {name: SamPredictor(ref_model) for name in ("img0", "img1")}
    for name in fast:
        fast[name].set_image(reference_arrays[name])
        exact[name].set_image(reference_arrays[name])
        assert fast[name].get_image_embedding().dtype == torch.float32
        # Reduced precision really ran: the embedding is close to, but not exactly, fp32's.
        diff = (fast[name].get_image_embedding() - exact[name].get_image_embedding()).abs().max()
        assert 0 < diff < 0.1 * exact[name].get_image_embedding().abs().max()
    for case in POINT_CASES:
        spec = manifest["predictor_cases"][case]
        got = _run_case(fast[spec["image"]], spec, reference_arrays)
        ref = _run_case(exact[spec["image"]], spec, reference_arrays)
        for a, b in zip(got, ref):
            assert b.any()
            assert mask_iou(a, b) >= 0.97, (case, mask_iou(a, b))


def test_fast_precisions_on_a_cpu_without_bf16(ref_model, reference_arrays, manifest, monkeypatch):
    """Without bfloat16 instructions (AVX2-only CPUs) emulated bf16 is ~25x slower than fp32:
    "bf16" runs as fp32 with a warning, "int8" keeps its int8 layers and runs the rest in fp32."""
    monkeypatch.setattr("segany.predictor.cpu_has_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no bfloat16 instructions.*running fp32 instead"):
        bf16 = SamPredictor(ref_model, precision="bf16")
    assert bf16.precision == "fp32" and bf16.decoder_dtype == torch.float32
    int8 = SamPredictor(ref_model, precision="int8")
    assert int8.precision == "int8" and int8.reduced_dtype == int8.decoder_dtype == torch.float32
    exact = SamPredictor(ref_model)
    for predictor in (bf16, int8, exact):
        predictor.set_image(reference_arrays["img0"])
    assert torch.equal(bf16.get_image_embedding(), exact.get_image_embedding())
    diff = (int8.get_image_embedding() - exact.get_image_embedding()).abs().max()
    assert 0 < diff < 0.1 * exact.get_image_embedding().abs().max()  # the int8 layers did run
    for case in POINT_CASES:
        spec = manifest["predictor_cases"][case]
        if spec["image"] != "img0":
            continue
        got, ref = _run_case(int8, spec, reference_arrays), _run_case(exact, spec, reference_arrays)
        for a, b in zip(got, ref):
            assert b.any()
            assert mask_iou(a, b) >= 0.97, (case, mask_iou(a, b))


def test_fused_linear_falls_back_where_onednn_lacks_the_dtype(monkeypatch):
    """oneDNN cannot build bf16 kernels on CPUs without bf16 instructions: linear_act then runs
    plain PyTorch instead of failing ("could not create a primitive descriptor")."""
    monkeypatch.setattr(fast_ops, "_onednn_linear_ok", {torch.bfloat16: False})
    x, w, b = torch.randn(5, 16), torch.randn(8, 16), torch.randn(8)
    with torch.inference_mode():
        got = fast_ops.linear_act(x.bfloat16(), w.bfloat16(), b.bfloat16(), "gelu")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = fast_ops.linear_act(x, w, b, "gelu")
    want = F.gelu(F.linear(x.bfloat16(), w.bfloat16(), b.bfloat16()))
    assert got.dtype == autocast.dtype == torch.bfloat16
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(autocast, want)
    assert not fast_ops.cpu_has_bf16()


def test_reduced_precision_leaves_the_model_unchanged(ref_model):
    before = {k: v.clone() for k, v in ref_model.state_dict().items()}
    SamPredictor(ref_model, precision="int8")
    after = ref_model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert type(ref_model.image_encoder.blocks[0].attn.qkv) is torch.nn.Linear


def test_unknown_precision_is_rejected(ref_model):
    with pytest.raises(ValueError, match="precision must be one of"):
        SamPredictor(ref_model, precision="fp8")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="torch.compile needs a C++ compiler")
def test_compiled_encoder_matches_eager(ref_model, reference_arrays, fp32_predictor):
    compiled = SamPredictor(ref_model, compile=True)
    compiled.set_image(reference_arrays["img0"])
    ref = fp32_predictor.get_image_embedding()
    rel = (compiled.get_image_embedding() - ref).abs().max() / ref.abs().max()
    assert rel < 1e-4


def test_bench_command_prints_a_table(ref_checkpoint, capsys, monkeypatch):
    from segany.cli import main

    for where in ("segany.predictor", "segany.benchmark"):  # the bf16 rows, emulated where the CPU lacks bf16
        monkeypatch.setattr(f"{where}.cpu_has_bf16", lambda: True)

    argv = ["bench", "--checkpoint", str(ref_checkpoint), "--step", "decoder", "everything", "--prompts", "5"]
    argv += ["--points-per-side", "3"]
    assert main(argv + ["--repeats", "1", "--no-official"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("segany bench: custom, ") and "official package off" in out[0]
    assert out[1].split() == ["step", "segany", "official", "speed-up"]
    per_prompt = next(line for line in out if line.startswith("predict, per prompt"))
    assert float(per_prompt.split()[3]) > 0 and per_prompt.split()[-1] == "-"
    assert any(line.startswith("5 prompts: predict_batch vs 5 calls") for line in out)
    with_mask = next(line for line in out if line.startswith("predict with a mask prompt, per prompt"))
    assert float(with_mask.split()[7]) > 0 and with_mask.split()[-1] == "-"
    fast = next(line for line in out if line.startswith("predict, per prompt, bf16 decoder"))
    assert float(fast.split()[5]) > 0
    agreement = next(line for line in out if line.strip().startswith("bf16_mask_iou_vs_fp32:"))
    assert json.loads(agreement.split(":", 1)[1])["min"] >= 0.97
    everything = next(line for line in out if line.startswith("everything, 3x3 points"))
    assert float(everything.split()[3]) > 0 and everything.split()[-1] == "-"


def test_bench_command_rejects_bad_numbers(ref_checkpoint, capsys):
    from segany.cli import main

    assert main(["bench", "--checkpoint", str(ref_checkpoint), "--repeats", "0"]) == 2
    assert "--repeats, --prompts and --points-per-side must be at least 1" in capsys.readouterr().err


def test_match_records_pairs_the_same_masks(ref_model, reference_arrays):
    from segany.automatic import SamAutomaticMaskGenerator
    from segany.benchmark import match_records

    params = dict(points_per_side=4, pred_iou_thresh=0.5, stability_score_thresh=0.0, box_nms_thresh=1.0)
    params["output_mode"] = "coco_rle"
    records = SamAutomaticMaskGenerator(ref_model, **params).generate(reference_arrays["img0"])
    assert len(records) > 3
    same = match_records(records, records[::-1])  # order does not matter, masks do
    assert same["matched"] == same["official"] == same["ours"] == len(records)
    assert same["max_field_diff"]["predicted_iou"] == 0.0
    fewer = match_records(records[1:], records)
    assert fewer["matched"] == len(records) - 1


def test_malloc_tuning_applies_once_and_can_be_turned_off():
    import os
    import subprocess
    import sys

    code = "from segany._memory import tune_malloc; print(tune_malloc(), tune_malloc())"
    env = dict(os.environ)
    env.pop("SEGANY_MALLOC_TUNING", None)
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.split()
    env["SEGANY_MALLOC_TUNING"] = "0"
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.split()
    assert off == ["False", "False"]
    if sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION"):
        assert on == ["True", "True"]


def test_bench_reports_bf16_as_not_timed_without_cpu_bf16(ref_checkpoint, capsys, monkeypatch):
    from segany.cli import main

    for where in ("segany.predictor", "segany.benchmark"):
        monkeypatch.setattr(f"{where}.cpu_has_bf16", lambda: False)
    argv = ["bench", "--checkpoint", str(ref_checkpoint), "--step", "encoder", "--precision", "fp32", "bf16"]
    assert main(argv + ["--repeats", "1", "--no-official"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert float(next(line for line in out if line.startswith("set_image, fp32")).split()[2]) > 0
    assert next(line for line in out if line.startswith("set_image, bf16")).split()[2:] == ["-", "-", "-"]
    assert any(line.strip().startswith("bf16: not timed, runs as fp32 here") for line in out)
