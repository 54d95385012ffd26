"""Image encoder (``set_image``) of segany in every precision against the official fp32, side by side.

    PYTHONPATH=$PWD/src /work/main/.venv-bench/bin/python bench/encoder.py --model vit_b --repeats 3
"""

from __future__ import annotations

import _common


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--precisions", nargs="*", default=["fp32", "bf16", "int8"])
    p.add_argument("--memory", action="store_true", help="also measure peak RSS of vit_h encoding (subprocess)")
    args = p.parse_args()
    images, paths = _common.setup(args)
    from segany import benchmark

    model, official = benchmark.paired_models(args.model, args.checkpoint, not args.no_official)
    result = {
        "benchmark": "encoder",
        "model": args.model,
        "weights": args.checkpoint or "random official-layout init (same tensors in both packages)",
        "images": paths,
    }
    result.update(benchmark.bench_encoder(model, official, images, args.precisions, args.repeats))
    if args.memory:
        del model, official
        probes = ["fp32", "bf16"] + (["official"] if benchmark.official_package() and not args.no_official else [])
        result["memory"] = [benchmark.peak_rss_encode("vit_h", p) for p in probes]
    _common.emit(result, args)


if __name__ == "__main__":
    main()
