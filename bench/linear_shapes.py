"""The image encoder's linear layers (ViT-B shapes, 64x64 tokens) and the mask decoder's prompt-token
ones (7 rows) through PyTorch's ``F.linear`` (MKL's sgemm) and through oneDNN's fused op, in fp32 on
one thread: how fast this CPU runs them, which bounds the fp32 encoder's speed-up over the official
package, and which of the two segany's kernel set picks for each (``segany_uses``).

    python bench/linear_shapes.py [--repeats 5] [--out linear.json]
"""

from __future__ import annotations

import functools

import _common
import torch
import torch.nn.functional as F
from _timing import median_ms

# (tokens, in, out, activation) of a ViT-B block: qkv, attention projection, MLP up (GELU), MLP down.
SHAPES = [(4096, 768, 2304, None), (4096, 768, 768, None), (4096, 768, 3072, "gelu"), (4096, 3072, 768, None)]
# The mask decoder: its prompt tokens' attention projections (7 rows for one point) and, in training,
# the image side of a batch of 16 masks at 32x32 tokens (the default model at 512 px).
SHAPES += [(7, 256, 256, None), (7, 256, 128, None), (16384, 256, 128, None), (16384, 256, 256, None)]


def _f_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, act: str | None) -> torch.Tensor:
    y = F.linear(x, w, b)
    return F.gelu(y) if act else y


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
            repeats = args.repeats if tokens > 64 else 200 * args.repeats  # the small ones take microseconds
            torch_ms = median_ms(functools.partial(_f_linear, x, w, b, act), repeats)
            onednn_ms = median_ms(functools.partial(fast_ops._ONEDNN_LINEAR, x, w, b, act or "none", [], "none" if act else ""), repeats)
            onednn = fast_ops._onednn_preferred(fast_ops.cpu_kernels(), torch.float32, tokens, fan_in, act)
            rows.append(
                {
                    "shape": [tokens, fan_in, fan_out],
                    "activation": act,
                    "f_linear_ms": round(torch_ms, 4),
                    "onednn_ms": round(onednn_ms, 4),
                    "f_linear_gflops": round(flops / torch_ms / 1e6, 1),
                    "onednn_gflops": round(flops / onednn_ms / 1e6, 1),
                    "segany_uses": "onednn" if onednn else "f_linear",
                }
            )
    kernels = fast_ops.cpu_kernels()
    _common.emit({"benchmark": "linear_shapes", "cpu_bf16": fast_ops.cpu_has_bf16(), "kernel_set": repr(kernels), "rows": rows}, args)


if __name__ == "__main__":
    main()
