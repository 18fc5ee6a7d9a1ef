"""How close the memory planner's estimate is to the memory an inference pass really takes.

For each case, a fresh subprocess builds the network, runs one warm-up sample, then measures the
peak growth of its resident set (sampled every 0.5 ms from ``/proc/self/statm``) over one
``torch.inference_mode`` forward of a batch, and divides by the batch: the measured bytes per
sample. The estimate is the network's ``inference_bytes_per_sample()`` (the number
:func:`xearthformer.memory.plan_batch` plans with), and the generic default
(:func:`xearthformer.memory.activation_bytes` of a network without one) beside it. Linux only.

    python benchmarks/bench_memory.py                 # the table of benchmarks/README.md
    python benchmarks/bench_memory.py --batch 8 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

CASES = [  # family, preset, input (T, H, W, C), target
    ("earthformer", "tiny", (6, 32, 32, 1), (6, 32, 32, 1)),
    ("earthformer", "tiny", (4, 64, 64, 3), (2, 64, 64, 1)),
    ("earthformer", "small", (6, 32, 64, 1), (6, 32, 64, 1)),
    ("earthformer", "small", (12, 48, 96, 2), (12, 48, 96, 2)),
    ("earthformer", "enso", (12, 24, 48, 1), (14, 24, 48, 1)),
    ("earthformer", "sevir", (13, 96, 96, 1), (12, 96, 96, 1)),
    # PreDiff: one (sample, member) pair = encode, one denoiser pass (a 1-step DDIM), decode
    ("prediff", "tiny", (7, 48, 48, 1), (6, 48, 48, 1)),
    ("prediff", "tiny", (4, 30, 30, 2), (3, 30, 30, 2)),
    ("prediff", "sevirlr", (7, 64, 64, 1), (6, 64, 64, 1)),
    ("prediff", "sevirlr", (7, 128, 128, 1), (6, 128, 128, 1)),
]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _measure(family: str, preset: str, shape_in: tuple, shape_out: tuple, batch: int, threads: int) -> dict:
    import torch

    from xearthformer.memory import activation_bytes
    from xearthformer.models import registry

    torch.set_num_threads(threads)
    net = registry.build(family, preset, input_shape=tuple(shape_in), target_shape=tuple(shape_out)).eval()
    x = torch.randn(batch, *shape_in)
    run = net
    if net.stochastic:  # one member per sample and one denoiser evaluation (a 1-step DDIM)
        keys = torch.arange(batch).reshape(batch, 1)

        def run(x):
            return net.predict(x, keys=keys[:len(x)], sampler="ddim", steps=1, progress=False)
    peak, stop = [0], [False]

    def watch() -> None:
        while not stop[0]:
            peak[0] = max(peak[0], _rss())
            time.sleep(0.0005)

    with torch.inference_mode():
        run(x[:1])
        base = _rss()
        peak[0] = base
        watcher = threading.Thread(target=watch)
        watcher.start()
        run(x)
        stop[0] = True
        watcher.join()
    measured = max(peak[0], _rss()) - base
    default = activation_bytes(_Bare(net), tuple(shape_in), tuple(shape_out))
    return {"measured": measured / batch, "estimate": net.inference_bytes_per_sample(), "default": default}


class _Bare:
    """The network without its own estimate (for the default)."""

    def __init__(self, net) -> None:
        self.parameters = net.parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--family", default=None, help="only this family's cases")
    parser.add_argument("--case", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case is not None:
        print(json.dumps(_measure(*CASES[args.case], args.batch, args.threads)))
        return
    print(f"batch {args.batch}, {args.threads} torch thread(s); MiB per sample")
    print("| family | preset | input -> target | measured | estimate | estimate / measured | default | "
          "default / measured |")
    print("|---|---|---|---|---|---|---|---|")
    for i, (family, preset, shape_in, shape_out) in enumerate(CASES):
        if args.family and family != args.family:
            continue
        out = subprocess.run([sys.executable, __file__, "--case", str(i), "--batch", str(args.batch),
                              "--threads", str(args.threads)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        mib = 2**20
        print(f"| {family} | {preset} | {shape_in} -> {shape_out} | {r['measured'] / mib:.1f} | {r['estimate'] / mib:.1f} | "
              f"{r['estimate'] / r['measured']:.2f} | {r['default'] / mib:.1f} | {r['default'] / r['measured']:.2f} |")


if __name__ == "__main__":
    main()
