"""The image encoder's linear layers (ViT-B shapes, 64x64 tokens) through PyTorch's ``F.linear``
(MKL's sgemm) and through the oneDNN op segany uses, in fp32 on one thread: how fast this CPU runs
them, which bounds the fp32 encoder's speed-up over the official package.

    python bench/linear_shapes.py [--repeats 5] [--out linear.json]
"""

from __future__ import annotations

import _common
import torch
import torch.nn.functional as F
from _timing import median_ms

# (tokens, in, out, activation) of a ViT-B block: qkv, attention projection, MLP up (GELU), MLP down.
SHAPES = [(4096, 768, 2304, None), (4096, 768, 768, None), (4096, 768, 3072, "gelu"), (4096, 3072, 768, None)]


def main() -> None:
    p = _common.parser(__doc__)
    args = p.parse_args()
    torch.set_num_threads(args.threads or 1)
    from segany.modeling import fast_ops

    rows = []
    with torch.inference_mode():
        for tokens, fan_in, fan_out, act in SHAPES:
            x, w, b = torch.randn(tokens, fan_in), torch.randn(fan_out, fan_in) * 0.02, torch.randn(fan_out)
            flops = 2 * tokens * fan_in * fan_out
            torch_ms = median_ms(lambda: F.gelu(F.linear(x, w, b)) if act else F.linear(x, w, b), args.repeats)
            onednn_ms = median_ms(lambda: fast_ops.linear_act(x, w, b, act), args.repeats)
            rows.append(
                {
                    "shape": [tokens, fan_in, fan_out],
                    "activation": act,
                    "f_linear_ms": round(torch_ms, 2),
                    "segany_ms": round(onednn_ms, 2),
                    "f_linear_gflops": round(flops / torch_ms / 1e6, 1),
                    "segany_gflops": round(flops / onednn_ms / 1e6, 1),
                }
            )
    _common.emit({"benchmark": "linear_shapes", "cpu_bf16": fast_ops.cpu_has_bf16(), "rows": rows}, args)


if __name__ == "__main__":
    main()
