"""Mask decoder of two segany versions side by side: this checkout against an earlier commit.

Each round runs one subprocess per version (alternating, so that drifts of the host hit both). A
subprocess builds a random-init model whose image encoder returns a fixed random embedding (only
the decoder side is timed), sets a 640x480 image, then times N single-point prompts as N
``predict`` calls (median per call) and as one ``predict_batch`` (best of the repeats, per prompt),
per decoder precision. Prints JSON with every round's times and the ratio of the medians over the
rounds (base / this checkout).

    python bench/decoder_ab.py --base 8d64810 --threads 1 --rounds 5
"""

from __future__ import annotations

import argparse

from _timing import in_turns, print_json, time_in_subprocess

# Runs inside each subprocess with the version's src/ first on sys.path.
TIMER = r"""
import json, statistics, sys, time, numpy as np, torch
src, model_type, threads, prompts, repeats, precisions = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6:]
sys.path.insert(0, src)
torch.set_num_threads(threads)
from segany.modeling.build import build_sam
from segany.predictor import SamPredictor
model = build_sam(model_type).eval()
grid = model.prompt_encoder.image_embedding_size
embedding = torch.randn(1, model.prompt_encoder.embed_dim, *grid, generator=torch.Generator().manual_seed(0))
model.image_encoder.forward = lambda x: embedding
rng = np.random.default_rng(0)
points = rng.uniform([0, 0], [640, 480], size=(prompts, 1, 2))
labels = np.ones((prompts, 1))
out = {}
for precision in precisions:
    predictor = SamPredictor(model, precision=precision)
    predictor.set_image(np.zeros((480, 640, 3), np.uint8))
    predictor.predict_batch(points, labels)
    batch = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.predict_batch(points, labels)
        batch.append((time.perf_counter() - start) / prompts)
    single = []
    for i in range(prompts):
        start = time.perf_counter()
        predictor.predict(points[i], labels[i])
        single.append(time.perf_counter() - start)
    out[f"{precision}_predict"] = statistics.median(single) * 1e3
    out[f"{precision}_predict_batch"] = min(batch) * 1e3
print(json.dumps(out))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the earlier commit (anything git rev-parse takes)")
    p.add_argument("--model", default="vit_b")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=4, help="timed predict_batch calls in each subprocess (best kept)")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()
    if args.prompts < 1 or args.repeats < 1:
        raise SystemExit("error: --prompts and --repeats must be at least 1")

    timer_args = (args.model, str(args.threads), str(args.prompts), str(args.repeats), *args.precisions)
    turns = in_turns(args.base, args.rounds, lambda src: time_in_subprocess(TIMER, src, *timer_args))
    result = {
        "benchmark": "mask decoder, two segany versions, random init and embedding, single-point prompts on a 640x480 image",
        "model": args.model,
        "threads": args.threads,
        "prompts": args.prompts,
        "base_commit": turns.base_commit,
        "this_commit": turns.this_commit,
        "ms_per_prompt": {
            v: [{k: round(t, 2) for k, t in r.items()} for r in runs] for v, runs in turns.rounds.items()
        },
        "median_ms_per_prompt": {v: {k: round(t, 2) for k, t in m.items()} for v, m in turns.medians().items()},
        "speedup_this_vs_base": turns.speedups(),
    }
    print_json(result, args.out)


if __name__ == "__main__":
    main()
