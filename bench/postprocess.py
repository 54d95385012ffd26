"""``Sam.postprocess_masks``: low-res logits (1, 3, 256, 256) to full-size masks, thresholded (as
``predict`` returns them) and as logits, at a few image sizes. Prints JSON with medians in ms.

Compare two versions by putting the other one's ``src`` first on the path, in turns:

    git worktree add /tmp/base 8d64810
    PYTHONPATH=/tmp/base/src python bench/postprocess.py --threads 1 --out base.json
    python bench/postprocess.py --threads 1 --out new.json
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from _timing import median_ms, print_json

SIZES = [(480, 640), (768, 1024), (3000, 4000)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=50, help="timed calls per size (a tenth of them at 4000x3000)")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import segany
    from segany.modeling.build import build_sam

    model = build_sam("vit_b").eval()  # only the input size (1024) matters here
    generator = torch.Generator().manual_seed(0)
    # Smooth logits, like a decoder's, with a boundary crossing each mask.
    low = torch.nn.functional.interpolate(
        torch.randn(1, 3, 32, 32, generator=generator) * 8, (256, 256), mode="bilinear"
    )
    result: dict = {
        "benchmark": "postprocess",
        "segany": segany.__file__,
        "threads": args.threads,
        "torch": torch.__version__,
        "masks": list(low.shape),
        "ms": {},
    }
    with torch.inference_mode():
        for h, w in SIZES:
            input_size = (1024 * h // max(h, w), 1024 * w // max(h, w))
            repeats = max(3, args.repeats // 10) if h * w > 4e6 else args.repeats
            result["ms"][f"{w}x{h}"] = {
                "thresholded": round(
                    median_ms(partial(model.postprocess_masks, low, input_size, (h, w), 0.0), repeats), 3
                ),
                "logits": round(median_ms(partial(model.postprocess_masks, low, input_size, (h, w)), repeats), 3),
            }
    print_json(result, args.out, indent=1)


if __name__ == "__main__":
    main()
