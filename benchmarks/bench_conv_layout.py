"""Memory layout of the stem and head convolutions: forward + backward time, one process.

The SEVIR stem (``initial_encoder``) and head (``final_decoder`` + ``dec_final_proj``) at
13x128x128, batch ``B``, in ``model.train()``: the input gradient-free, the parameters' gradients
computed. Three layouts, interleaved run by run:

* current: the (B * T, C, H, W) view of the channels-last grid (NHWC strides: oneDNN runs the
  convolutions channels-last already), NCHW weights;
* NCHW: that input made contiguous in NCHW first (what an NCHW model would do);
* channels_last: input and convolution weights explicitly ``torch.channels_last``.

A benchmark, not a test::

    python benchmarks/bench_conv_layout.py --threads 1 --batch 1 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import xearthformer.nn.layers as layers  # noqa: E402
from xearthformer.models.earthformer.network import Earthformer  # noqa: E402


def _per_frame_as(fmt: torch.memory_format):  # noqa: ANN202
    def per_frame(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        b, t, h, w, c = x.shape
        y = block(x.reshape(b * t, h, w, c).permute(0, 3, 1, 2).contiguous(memory_format=fmt))
        return y.permute(0, 2, 3, 1).reshape(b, t, h, w, -1)
    return per_frame


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Earthformer.from_preset("sevir", input_shape=(13, 128, 128, 1)).train()
    x = torch.randn(args.batch, 13, 128, 128, 1)
    top = torch.randn(args.batch, 12, *model.mem_shapes[0][1:])  # the decoder's output grid

    def step() -> None:
        model.zero_grad(set_to_none=True)
        (model.initial_encoder(x).sum() + model.dec_final_proj(model.final_decoder(top)).sum()).backward()

    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    variants = {"current": (layers._per_frame, torch.contiguous_format),
                "NCHW": (_per_frame_as(torch.contiguous_format), torch.contiguous_format),
                "channels_last": (_per_frame_as(torch.channels_last), torch.channels_last)}
    runs: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.repeats + 1):  # the first round warms up
        names = list(variants)[r % 3:] + list(variants)[:r % 3]
        for name in names:
            per_frame, weight_format = variants[name]
            layers._per_frame = per_frame
            for conv in convs:
                conv.weight.data = conv.weight.data.contiguous(memory_format=weight_format)
            t0 = time.perf_counter()
            step()
            if r:
                runs[name].append(time.perf_counter() - t0)
    print(f"sevir 13x128x128 stem + head, forward + backward, batch {args.batch}, {args.threads} thread(s), "
          f"load average {os.getloadavg()}")
    for name, times in runs.items():
        print(f"  {name}: median {statistics.median(times):.3f} s, best {min(times):.3f} s "
              f"({', '.join(f'{t:.3f}' for t in times)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
