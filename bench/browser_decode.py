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
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
SHARED = REPO.parent / "shared"


def stats(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    return {"median_ms": round(float(np.median(a)), 2), "p90_ms": round(float(np.percentile(a, 90)), 2),
            "mean_ms": round(float(a.mean()), 2), "n": int(a.size)}


def native_decode(model, image_path: str, n: int) -> dict:
    """The same decoder graph the page runs, in onnxruntime for Python (1 thread), same prompts."""
    import onnxruntime as ort

    from segany import SamPredictor
    from segany.export.onnx import export_decoder_bytes, official_prompt
    from segany.io import read_image

    predictor = SamPredictor(model)
    image = read_image(image_path)
    predictor.set_image(image)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(export_decoder_bytes(model, upsample=False), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    h, w = image.shape[:2]
    times = []
    for i in range(n + 5):
        point = predictor.transform.apply_coords(rng.uniform([0, 0], [w, h], size=(1, 2)), (h, w))
        coords, labels = official_prompt(point, np.ones(1))
        feeds = {
            "image_embeddings": predictor.get_image_embedding().numpy(),
            "point_coords": coords,
            "point_labels": labels,
            "mask_input": np.zeros((1, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
        }
        start = time.perf_counter()
        session.run(None, feeds)
        if i >= 5:
            times.append((time.perf_counter() - start) * 1000)
    return stats(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(SHARED / "fixtures/reference_sam/ref_small.pth"))
    parser.add_argument("--image", default=str(SHARED / "data/coco_tiny/val2017/000000010764.jpg"))
    parser.add_argument("-n", type=int, default=50)
    parser.add_argument("--variants", default="threads=1,threads=2,variant=full,variant=int8,decoder=server")
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
        results["native_onnxruntime_1_thread"] = native_decode(model, args.image, args.n)
    browser = next((r for r in results["runs"] if r.get("query") == "threads=1" and "per_click" in r), None)
    if browser:
        ratio = browser["per_click"]["median_ms"] / results["native_onnxruntime_1_thread"]["median_ms"]
        results["browser_1_thread_over_native"] = round(ratio, 2)
    results["load_average"] = [round(x, 2) for x in os.getloadavg()]
    results["cpu_count"] = os.cpu_count()
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
