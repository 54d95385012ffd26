"""Per-click decode latency in a real browser (headless Debian chromium + onnxruntime-web WASM).

Starts `segany serve` in-process with a model (default: the fixture model ../shared/fixtures/
reference_sam/ref_small.pth, whose decoder has the size of every official SAM decoder), opens the
page, uploads an image and times N decodes at random points, for the WASM decoder and the server
fallback side by side. Prints JSON. Target: median <= 50 ms per click in the browser.

    python bench/browser_decode.py [--checkpoint PATH] [--image PATH] [-n 50]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
SHARED = REPO.parent / "shared"


def stats(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    return {"median_ms": round(float(np.median(a)), 2), "p90_ms": round(float(np.percentile(a, 90)), 2),
            "mean_ms": round(float(a.mean()), 2), "n": int(a.size)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(SHARED / "fixtures/reference_sam/ref_small.pth"))
    parser.add_argument("--image", default=str(SHARED / "data/coco_tiny/val2017/000000010764.jpg"))
    parser.add_argument("-n", type=int, default=50)
    parser.add_argument("--variants", default="threads=1,threads=2,decoder=server")
    args = parser.parse_args()
    if not shutil.which("node") or not Path("/usr/bin/chromium").exists():
        print(json.dumps({"skipped": "node or /usr/bin/chromium is missing"}))
        return 0
    import torch

    from segany import load_model
    from segany.serve.app import BackgroundServer, create_app

    torch.set_num_threads(2)
    model = load_model(args.checkpoint)
    results = {"checkpoint": args.checkpoint, "image": args.image, "target_median_ms": 50, "runs": []}
    with BackgroundServer(create_app(model)) as url:
        for query in args.variants.split(","):
            out = subprocess.run(
                ["node", str(REPO / "bench/browser_decode.mjs"), url, args.image, str(args.n), query],
                capture_output=True, text=True, timeout=600, cwd=REPO,
            )
            if out.returncode != 0:
                results["runs"].append({"query": query, "error": out.stderr.strip().splitlines()[-1:]})
                continue
            raw = json.loads(out.stdout.strip().splitlines()[-1])
            run = {k: raw[k] for k in ("query", "decoder", "size", "isolated", "cores")}
            run["per_click"] = stats(raw["total"])
            if raw["run"] and raw["run"][0] is not None:
                run["session_run"] = stats(raw["run"])
            results["runs"].append(run)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
