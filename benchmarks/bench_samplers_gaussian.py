"""How close each sampler gets to Gaussian data with the exact (optimal) denoiser.

Data x0 ~ N(MU, diag(S^2)), MU = (1, -0.5, 0.2, 0), S = (0.5, 1, 0.1, 2); the denoiser is the
closed-form E[eps | x_t] (``tests/gaussian_toy.py``), so every error is the sampler's own. Per
sampler and step count it prints

* ``mean |z|``: the largest (over dims) error of the sample mean, in standard errors
  (tolerance 4), from ``--samples`` draws started at the exact marginal of x_{T-1};
* ``var vs exact |z|``: the same for the sample variance against the sampler's exact expected
  variance (closed forms for DDPM/DDIM; for DPM-Solver++ the exact ODE, which it only
  approximates, so this column may exceed 4 at few steps);
* ``var bias``: the sampler's exact expected variance relative to the data variance, per dim:
  the discretization bias no number of samples removes (stochastic samplers: the closed-form
  recursion; deterministic ones: their gain, measured exactly in float64 since the map is
  linear);
* the knowledge-control strength at 20 vs 50 DDIM steps (default mode) and for the official
  std-scaled shift (parity, DDPM), as the achieved mean statistic.

A benchmark, not a test::

    python benchmarks/bench_samplers_gaussian.py               # 20000 samples, ~1 min on 1 core
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tests import gaussian_toy as toy  # noqa: E402
from xearthformer.diffusion import KnowledgeControl, NoiseSchedule, make_sampler, sample  # noqa: E402

CASES = [("ddpm", 1000, {})] + [
    (name, n, opts) for n in (10, 20, 50)
    for name, opts in (("ddpm", {}), ("ddim", {}), ("ddim", {"eta": 1.0}),
                       ("dpm++2m", {}), ("dpm++2m", {"spacing": "logsnr"}))]


def expected_variance(sampler, schedule):
    ts = sampler.timesteps.numpy()
    if sampler.stochastic:
        return toy.ddpm_variance(schedule, ts)
    gain = toy.ddim_gain(schedule, ts) if sampler.name == "ddim" else toy.ode_gain(schedule, ts)
    return gain ** 2 * toy.start_variance(schedule)


def accuracy_table(schedule, n):
    print(f"| sampler | steps | mean abs z (tol 4) | var vs reference abs z | var bias vs data, "
          f"S = {', '.join(f'{v:g}' for v in toy.S)} | seconds |")
    print("|---|---|---|---|---|---|")
    for name, steps, opts in CASES:
        g = torch.Generator().manual_seed(0)
        sampler = make_sampler(name, schedule, steps, **opts)
        x = toy.marginal_start(schedule, n, g)
        t0 = time.perf_counter()
        out = sample(toy.optimal_denoiser(schedule), x, sampler,
                     lambda shape: torch.randn(shape, generator=g), progress=False)
        seconds = time.perf_counter() - t0
        mean_z, var_z = toy.moment_scores(out, toy.MU, expected_variance(sampler, schedule))
        if sampler.stochastic:
            own = toy.ddpm_variance(schedule, sampler.timesteps.numpy())
        else:
            gain = toy.measured_gain(sampler, toy.optimal_denoiser(schedule), schedule)
            own = gain ** 2 * toy.start_variance(schedule)
        bias = ", ".join(f"{b:+.1%}" for b in own / toy.S ** 2 - 1)
        label = name + "".join(f" {k}={v}" for k, v in opts.items())
        print(f"| {label} | {steps} | {np.abs(mean_z).max():.2f} | {np.abs(var_z).max():.2f} | "
              f"{bias} | {seconds:.2f} |")


def guidance_table(schedule, n):
    weights = torch.full((4,), 0.25)
    statistic = toy.optimal_statistic(schedule, weights)
    print("\n| guidance (target 1.0; data 0.175 +- 0.573) | scale | 20 steps | 50 steps |")
    print("|---|---|---|---|")
    for label, name, scales, parity in (("default, DDIM eta=0", "ddim", (0.0, 0.5, 2.0), False),
                                        ("parity (official), DDPM", "ddpm", (50.0,), True)):
        for scale in scales:
            row = []
            for steps in (20, 50):
                g = torch.Generator().manual_seed(0)
                sampler = make_sampler(name, schedule, steps)
                control = KnowledgeControl(statistic, torch.ones(n, 1), scale, parity=parity)
                out = sample(control.wrap(toy.optimal_denoiser(schedule), sampler),
                             toy.marginal_start(schedule, n, g), sampler,
                             lambda shape: torch.randn(shape, generator=g), progress=False)
                row.append(f"{float((out @ weights).mean()):.3f}")
            print(f"| {label} | {scale:g} | {row[0]} | {row[1]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--schedule", default="linear", choices=["linear", "cosine"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), schedule {args.schedule}, {args.samples} samples\n")
    schedule = NoiseSchedule(args.schedule)
    accuracy_table(schedule, args.samples)
    guidance_table(schedule, 2000)


if __name__ == "__main__":
    main()
