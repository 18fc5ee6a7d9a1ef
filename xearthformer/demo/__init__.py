"""``xearthformer demo``: train on real SST (or synthetic storms) and forecast, in minutes on a CPU.

- :mod:`.sst` -- the SST case (default): OSTIA monthly SST, 6 -> 6 months, skill against
  persistence and climatology on a held-out year
- :mod:`.storms` -- the storms case (``--case storms``): synthetic storm cells on the SEVIR
  0-255 VIL scale, a 6 -> 6 frame nowcast scored by CSI at the SEVIR thresholds
- :mod:`.storms_ensemble` -- ``--case storms --ensemble``: a tiny PreDiff ensemble of the same
  storms, scored by CRPS, ensemble-mean CSI and spread/skill against the deterministic case
- :mod:`.storms_control` -- ``--ensemble --control``: the knowledge-control sweep of that ensemble
- :mod:`.baselines` -- the reference forecasts both cases score against (persistence...)
- :mod:`.plots` -- their figures

This module is the command itself (``add_demo_arguments`` / ``run_demo``, see
:mod:`xearthformer.cli`).

>>> from xearthformer.cli import main
>>> main(["demo", "--output", "xef-demo"])                          # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from ..errors import ConfigError


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``xearthformer demo``."""
    parser.add_argument("--output", default="xearthformer-demo", help="output folder (default: xearthformer-demo)")
    parser.add_argument("--case", choices=["sst", "storms"], default="sst",
                        help="sst: real OSTIA SST (default); storms: synthetic storm nowcasting")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: per case)")
    parser.add_argument("--quick", action="store_true",
                        help="a few training steps only (a smoke test of the whole pipeline)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--ensemble", action="store_true",
                        help="storms only: train a tiny PreDiff and score its ensemble (CRPS, CSI, spread/skill)")
    parser.add_argument("--members", type=int, default=None,
                        help="--ensemble: ensemble size (default 16; --quick: 2)")
    parser.add_argument("--sampler", default=None, help="--ensemble: ddpm, ddim or dpm++2m (default: the model's)")
    parser.add_argument("--steps", type=int, default=None, help="--ensemble: sampling steps (default: the model's)")
    parser.add_argument("--control", action="store_true",
                        help="--ensemble: add the knowledge-control sweep n in -4, -2, 0, 2, 4 of the future "
                             "mean intensity (an alignment network is trained first)")


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit code."""
    # Idle OpenMP threads must not spin: on a shared machine spinning makes training ~10x slower.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.control and not args.ensemble:
        raise ConfigError("--control steers the PreDiff ensemble: use it with --case storms --ensemble.")
    if args.ensemble and args.case != "storms":
        raise ConfigError(f"--ensemble needs --case storms (got --case {args.case}); the SST case has "
                          "no ensemble demo.")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.case == "storms" and args.ensemble:
        from .storms_ensemble import run_storms_ensemble

        run_storms_ensemble(out, epochs=args.epochs, quick=args.quick, seed=args.seed, device=args.device,
                            members=args.members, sampling={"sampler": args.sampler, "steps": args.steps},
                            control=args.control)
    elif args.case == "storms":
        from .storms import run_storms

        run_storms(out, epochs=args.epochs, quick=args.quick, seed=args.seed, device=args.device)
    else:
        from .sst import run_sst

        run_sst(out, epochs=args.epochs, quick=args.quick, seed=args.seed, device=args.device)
    print(f"\ndone in {time.perf_counter() - t0:.0f} s on {machine()}; outputs in {out}/")
    return 0


def machine() -> str:
    """A one-line description of this computer: usable cores and CPU model."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cores} CPU cores ({model})"
