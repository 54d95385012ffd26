"""Image encoder of two segany versions side by side: this checkout against an earlier commit.

Each round runs one subprocess per version (alternating, so that drifts of the host hit both) that
builds a random-init model, runs the encoder once to warm up and then times it per precision on
one (1, 3, S, S) input. Prints JSON with every round's best-of-N seconds and the per-precision
ratio of the medians (base / this checkout).

    python bench/encoder_ab.py --base d33a0df --model vit_b --threads 1 --rounds 2
"""

from __future__ import annotations

import argparse

from _timing import in_turns, print_json, time_in_subprocess

# Runs inside each subprocess with the version's src/ first on sys.path.
TIMER = r"""
import json, sys, time, torch
src, model_type, threads, repeats, precisions = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
sys.path.insert(0, src)
torch.set_num_threads(threads)
from segany.modeling.build import build_sam
from segany.predictor import SamPredictor
model = build_sam(model_type).eval()
size = model.image_encoder.img_size
x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
out = {}
for precision in precisions:
    predictor = SamPredictor(model, precision=precision)  # its encoder call, as set_image runs it
    def run():
        with torch.inference_mode():
            predictor._encode(x)
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    out[precision] = min(times)
print(json.dumps(out))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the earlier commit (anything git rev-parse takes)")
    p.add_argument("--model", default="vit_b")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="timed runs per precision in each subprocess (best kept)")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()

    timer_args = (args.model, str(args.threads), str(args.repeats), *args.precisions)
    turns = in_turns(args.base, args.rounds, lambda src: time_in_subprocess(TIMER, src, *timer_args))
    result = {
        "benchmark": "image encoder forward, two segany versions, random init, one input",
        "model": args.model,
        "threads": args.threads,
        "base_commit": turns.base_commit,
        "this_commit": turns.this_commit,
        "seconds": {v: [{k: round(t, 3) for k, t in r.items()} for r in runs] for v, runs in turns.rounds.items()},
        "speedup_this_vs_base": turns.speedups(),
    }
    print_json(result, args.out)


if __name__ == "__main__":
    main()
