"""segany's CPU kernel sets side by side (``fast_ops.AVX512_KERNELS``, ``AVX2_KERNELS`` and
``AMX_KERNELS``: GELU fused into oneDNN's linear or not, the encoder MLP in blocks of tokens or not,
global attention through oneDNN products or PyTorch's fused attention, bfloat16 global attention
with the bias folded into a widened score product or not), on the image encoder (fp32, or under
bfloat16 autocast with ``--precision bf16``) and the fp32 mask decoder, with the same weights and
image: which set this CPU should run, and that they agree.

    python bench/cpu_kernels.py --model vit_b --threads 1 --repeats 3 [--prompts 16] [--out kernels.json]
    python bench/cpu_kernels.py --model vit_b --threads 1 --precision bf16 --prompts 0
"""

from __future__ import annotations

import dataclasses
import statistics

import _common
import numpy as np
import torch


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--prompts", type=int, default=16, help="single-point predict calls per decoder round (0: none)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="the encoder's precision")
    args = p.parse_args()
    images, paths = _common.setup(args)
    from segany import SamPredictor, benchmark
    from segany.modeling import fast_ops

    model, _ = benchmark.paired_models(args.model, args.checkpoint, with_official=False)
    sets = {"avx512_kernels": fast_ops.AVX512_KERNELS, "avx2_kernels": fast_ops.AVX2_KERNELS, "amx_kernels": fast_ops.AMX_KERNELS}
    predictor = SamPredictor(model)
    image = predictor.transform.apply_image(images[0])
    x = model.preprocess(torch.as_tensor(image).permute(2, 0, 1)[None].float())
    points = benchmark.grid_points(images[0].shape, int(np.ceil(np.sqrt(args.prompts))))[: args.prompts] if args.prompts > 0 else []

    def with_kernels(kernels: fast_ops.CpuKernels, fn):
        def run():
            fast_ops.CPU_KERNELS = kernels
            try:
                return fn()
            finally:
                fast_ops.CPU_KERNELS = None

        return run

    if args.precision == "bf16" and not fast_ops.cpu_has_bf16():
        raise SystemExit("error: --precision bf16: this CPU has no bfloat16 instructions (see README)")

    def encode():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            return model.image_encoder(x).float()

    with torch.inference_mode():
        features = {name: with_kernels(k, encode)() for name, k in sets.items()}
        encoder_times = benchmark.interleaved({name: with_kernels(k, encode) for name, k in sets.items()}, args.repeats)
        answers, decoder_times = {}, {}
        if len(points):
            predictor.set_image(images[0])

            def predict_each():
                return [predictor.predict(pt[None], np.ones(1), return_logits=True) for pt in points]

            answers = {name: np.stack([m for m, _, _ in with_kernels(k, predict_each)()]) for name, k in sets.items()}
            decoder_times = benchmark.interleaved({name: with_kernels(k, predict_each) for name, k in sets.items()}, args.repeats)

    base_features = features["avx512_kernels"]
    base = statistics.median(encoder_times["avx512_kernels"])
    others = [name for name in sets if name != "avx512_kernels"]
    result = {
        "benchmark": "cpu_kernels",
        "model": args.model,
        "encoder_precision": args.precision,
        "image": paths[0],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_has_amx": fast_ops.cpu_has_amx(),
        "chosen_here": next(name for name, k in sets.items() if k == fast_ops.cpu_kernels()),
        "sets": {name: dataclasses.asdict(k) for name, k in sets.items()},
        "encoder_max_rel_diff_vs_avx512_set": {
            name: float((features[name] - base_features).abs().max() / base_features.abs().max()) for name in others
        },
        "encoder": {name: benchmark.summary(t) for name, t in encoder_times.items()},
        "encoder_speedup_over_avx512_set": {
            name: round(base / statistics.median(encoder_times[name]), 3) for name in others
        },
    }
    if decoder_times:
        dec_base = statistics.median(decoder_times["avx512_kernels"])
        result["decoder_max_logit_diff_vs_avx512_set"] = {
            name: float(np.abs(answers[name] - answers["avx512_kernels"]).max()) for name in others
        }
        result["decoder_per_prompt_ms"] = {
            name: round(statistics.median(t) / len(points) * 1000, 2) for name, t in decoder_times.items()
        }
        result["decoder_speedup_over_avx512_set"] = {
            name: round(dec_base / statistics.median(decoder_times[name]), 3) for name in others
        }
    _common.emit(result, args)


if __name__ == "__main__":
    main()
