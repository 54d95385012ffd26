"""segany's two CPU kernel sets side by side (``fast_ops.AVX512_KERNELS`` and ``AVX2_KERNELS``:
GELU fused into oneDNN's linear or not, the encoder MLP in blocks of tokens or not, global attention
through oneDNN products or PyTorch's fused attention), on the fp32 image encoder and the fp32 mask
decoder, with the same weights and image: which set this CPU should run, and that both agree.

    python bench/cpu_kernels.py --model vit_b --threads 1 --repeats 3 [--prompts 16] [--out kernels.json]
"""

from __future__ import annotations

import dataclasses
import statistics

import _common
import numpy as np
import torch


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--prompts", type=int, default=16, help="single-point predict calls per decoder round")
    args = p.parse_args()
    images, paths = _common.setup(args)
    from segany import SamPredictor, benchmark
    from segany.modeling import fast_ops

    model, _ = benchmark.paired_models(args.model, args.checkpoint, with_official=False)
    sets = {"avx512_kernels": fast_ops.AVX512_KERNELS, "avx2_kernels": fast_ops.AVX2_KERNELS}
    predictor = SamPredictor(model)
    image = predictor.transform.apply_image(images[0])
    x = model.preprocess(torch.as_tensor(image).permute(2, 0, 1)[None].float())
    points = benchmark.grid_points(images[0].shape, int(np.ceil(np.sqrt(args.prompts))))[: args.prompts]

    def with_kernels(kernels: fast_ops.CpuKernels, fn):
        def run():
            fast_ops.CPU_KERNELS = kernels
            try:
                return fn()
            finally:
                fast_ops.CPU_KERNELS = None

        return run

    with torch.inference_mode():
        features = {name: with_kernels(k, lambda: model.image_encoder(x))() for name, k in sets.items()}
        predictor.set_image(images[0])

        def predict_each():
            return [predictor.predict(pt[None], np.ones(1), return_logits=True) for pt in points]

        answers = {name: with_kernels(k, predict_each)() for name, k in sets.items()}
        encoder_times = benchmark.interleaved(
            {name: with_kernels(k, lambda: model.image_encoder(x)) for name, k in sets.items()}, args.repeats
        )
        decoder_times = benchmark.interleaved({name: with_kernels(k, predict_each) for name, k in sets.items()}, args.repeats)

    a, b = features.values()
    logits_a = np.stack([m for m, _, _ in answers["avx512_kernels"]])
    logits_b = np.stack([m for m, _, _ in answers["avx2_kernels"]])
    base = statistics.median(encoder_times["avx512_kernels"])
    dec_base = statistics.median(decoder_times["avx512_kernels"])
    result = {
        "benchmark": "cpu_kernels",
        "model": args.model,
        "image": paths[0],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "chosen_here": next(name for name, k in sets.items() if k == fast_ops.cpu_kernels()),
        "sets": {name: dataclasses.asdict(k) for name, k in sets.items()},
        "encoder_max_rel_diff": float((a - b).abs().max() / a.abs().max()),
        "decoder_max_logit_diff": float(np.abs(logits_a - logits_b).max()),
        "encoder": {name: benchmark.summary(t) for name, t in encoder_times.items()},
        "decoder_per_prompt_ms": {name: round(statistics.median(t) / len(points) * 1000, 2) for name, t in decoder_times.items()},
        "encoder_speedup_avx2_over_avx512_set": round(base / statistics.median(encoder_times["avx2_kernels"]), 3),
        "decoder_speedup_avx2_over_avx512_set": round(dec_base / statistics.median(decoder_times["avx2_kernels"]), 3),
    }
    _common.emit(result, args)


if __name__ == "__main__":
    main()
