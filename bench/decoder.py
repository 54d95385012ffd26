"""Mask decoder: N single-point prompts, one official ``predict`` call each, against segany's
``predict`` per prompt and ``predict_batch`` for all of them, on the same embedding.

    PYTHONPATH=$PWD/src /work/main/.venv-bench/bin/python bench/decoder.py --model vit_b --prompts 64
"""

from __future__ import annotations

import _common


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--prompts", type=int, default=64)
    args = p.parse_args()
    images, paths = _common.setup(args)
    from segany import benchmark

    model, official = benchmark.paired_models(args.model, args.checkpoint, not args.no_official)
    result = {
        "benchmark": "decoder",
        "model": args.model,
        "weights": args.checkpoint or "random official-layout init (same tensors in both packages)",
        "image": paths[0],
    }
    result.update(benchmark.bench_decoder(model, official, images[0], args.prompts, args.repeats))
    _common.emit(result, args)


if __name__ == "__main__":
    main()
