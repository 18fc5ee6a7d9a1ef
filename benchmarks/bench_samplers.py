"""Samplers on the trained tiny storms PreDiff: CRPS, ensemble-mean RMSE and time per member.

Issue 11, point 8: the bundle that ``xearthformer demo --case storms --ensemble`` trains
(``storms_prediff.xef``), on the demo's held-out storms, ``--inits`` init times spread evenly over
the test part x ``--members`` members x ``--seeds`` seeds, for DDPM with the full 1000 steps (the
official sampler, the reference) against DDIM (eta 0) and DPM-Solver++(2M) at 10, 20 and 50
steps. Every case draws member m of init t from the same key (seed, t, m), so the cases start
from the same noise and their differences are the samplers' own. Per case:

* CRPS (plain, pooled over pixels, inits and leads; mean over seeds, with the standard deviation
  over seeds), and its change relative to DDPM-1000;
* RMSE of the ensemble mean and the spread/skill ratio (means over seeds);
* seconds per member (wall time of the ensemble calls / (seeds x inits x members)), and the
  speed-up over DDPM-1000; the cases take turns seed by seed, so load drift hits all alike;
* whether it meets the goal: <= 20 model evaluations, CRPS within 2 % of DDPM-1000 or within the
  seed spread (the larger standard deviation over seeds of the two) if that is larger, at >= 30x
  less time.

Every sampler here makes one denoiser evaluation per step. A benchmark, not a test::

    python benchmarks/bench_samplers.py --model xearthformer-demo/storms_prediff.xef
    python benchmarks/bench_samplers.py --inits 8 --members 4 --seeds 2   # a smaller protocol
    python benchmarks/bench_samplers.py --quick          # trains a few-step model: smoke test only

``--reference-steps`` and ``--steps`` change the reference DDPM and the fast samplers' steps.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from xearthformer import metrics  # noqa: E402
from xearthformer.checkpoint import bundle_digest, load  # noqa: E402
from xearthformer.demo import machine  # noqa: E402
from xearthformer.demo.storms import held_out_inits, storms_data  # noqa: E402
from xearthformer.forecast import ensemble  # noqa: E402

FAST = ("ddim", "dpm++2m")
DIMS = ["init_time", "lead_time", "y", "x"]
GOAL_EVALS, GOAL_CRPS, GOAL_SPEEDUP = 20, 0.02, 30.0


def spread_inits(ds, split: int, n: int) -> np.ndarray:
    """``n`` init times spread evenly over the test part (neighbours 5 min apart are alike)."""
    window = ds["time"].sel(time=held_out_inits(ds, split)).values
    if n > window.size:
        raise SystemExit(f"--inits {n}: the test part has only {window.size} init times")
    return window[np.unique(np.linspace(0, window.size - 1, n).round().astype(int))]


def run_case(ds, model, inits, members: int, seed: int, sampler: str, steps: int, device: str) -> dict:
    t0 = time.perf_counter()
    ens = ensemble(ds, model, members=members, seed=seed, init=inits, device=device, progress=False,
                   sampler=sampler, steps=steps)["vil"].load()
    seconds = time.perf_counter() - t0
    obs = ds["vil"]
    ss = metrics.spread_skill(ens, obs, dim=DIMS)
    return {"crps": float(metrics.crps(ens, obs, dim=DIMS)),
            "rmse": float(metrics.rmse(ens.mean("member"), obs, dim=DIMS)),
            "spread_skill": float(ss.ratio), "seconds": seconds}


def summarise(runs: dict, n_members_total: int) -> list[dict]:
    """One row per case; the first case of ``runs`` is the reference."""
    ref = next(iter(runs.values()))
    ref_crps = np.array([r["crps"] for r in ref])
    ref_seconds = sum(r["seconds"] for r in ref)
    rows = []
    for (name, steps), rs in runs.items():
        crps = np.array([r["crps"] for r in rs])
        seconds = sum(r["seconds"] for r in rs)
        sd = float(crps.std(ddof=1)) if crps.size > 1 else float("nan")
        sd_ref = float(ref_crps.std(ddof=1)) if ref_crps.size > 1 else float("nan")
        change = float(crps.mean() / ref_crps.mean() - 1)
        tolerance = max(GOAL_CRPS * ref_crps.mean(), np.nan_to_num(max(sd, sd_ref)))
        speedup = ref_seconds / seconds
        rows.append({
            "sampler": name, "steps": steps, "model_evaluations": steps,
            "crps_mean": float(crps.mean()), "crps_sd_over_seeds": sd, "crps_per_seed": crps.tolist(),
            "crps_change_vs_reference": change,
            "rmse_ensemble_mean": float(np.mean([r["rmse"] for r in rs])),
            "spread_skill": float(np.mean([r["spread_skill"] for r in rs])),
            "seconds_per_member": seconds / n_members_total, "speedup_vs_reference": speedup,
            "meets_goal": bool(steps <= GOAL_EVALS and abs(crps.mean() - ref_crps.mean()) <= tolerance
                               and speedup >= GOAL_SPEEDUP),
        })
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| sampler | steps (= model evaluations) | CRPS (mean +- sd over seeds) | vs reference (first row) | "
             "ens-mean RMSE | spread/skill | s per member | speed-up | goal |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['crps_mean']:.3f} +- {r['crps_sd_over_seeds']:.3f} | "
                     f"{r['crps_change_vs_reference']:+.1%} | {r['rmse_ensemble_mean']:.2f} | "
                     f"{r['spread_skill']:.2f} | {r['seconds_per_member']:.4f} | "
                     f"{r['speedup_vs_reference']:.1f}x | {'yes' if r['meets_goal'] else 'no'} |")
    return "\n".join(lines)


def quick_model(out: Path, seed: int):
    """A PreDiff trained for a few steps on the demo's --quick storms (pipeline check only)."""
    from xearthformer.demo.storms_ensemble import train_ensemble_model

    ds, split = storms_data(quick=True, seed=seed)
    return train_ensemble_model(ds.isel(time=slice(0, split)), out, quick=True, seed=seed, device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="xearthformer-demo/storms_prediff.xef",
                        help="the bundle of `xearthformer demo --case storms --ensemble`")
    parser.add_argument("--inits", type=int, default=32)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the demo's storms (its --seed)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None,
                        help="where to write the results (default benchmarks/bench_samplers.json; --quick: none)")
    parser.add_argument("--reference-steps", type=int, default=1000, help="DDPM steps of the reference")
    parser.add_argument("--steps", default="10,20,50", help="steps of the fast samplers (comma-separated)")
    parser.add_argument("--fast", default=",".join(FAST),
                        help="the samplers compared with the reference (default ddim,dpm++2m; add ddpm for "
                             "ancestral sampling at few steps)")
    parser.add_argument("--quick", action="store_true",
                        help="a few-step model, 4 inits x 2 members x 2 seeds, DDPM-50 vs 5/10 steps: a smoke test")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.inits, args.members, args.seeds, args.reference_steps = 4, 2, 2, 50
        args.steps = "5,10" if args.steps == "10,20,50" else args.steps
    cases = [("ddpm", args.reference_steps)] + [(name, int(n)) for n in args.steps.split(",")
                                                 for name in args.fast.split(",")]
    if args.quick:
        tmp = tempfile.TemporaryDirectory()
        model = quick_model(Path(tmp.name), args.data_seed)
        model_name, digest = "(quick, few training steps)", None
    else:
        model = load(args.model)
        model_name, digest = args.model, bundle_digest(model)
    ds, split = storms_data(quick=args.quick, seed=args.data_seed)
    inits = spread_inits(ds, split, args.inits)
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"{machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {args.device}; "
          f"{inits.size} inits x {args.members} members x {args.seeds} seeds; load {load_before[0]:.1f}\n",
          flush=True)
    runs: dict = {case: [] for case in cases}
    for seed in range(args.seeds):
        for sampler, steps in cases:
            r = run_case(ds, model, inits, args.members, seed, sampler, steps, args.device)
            runs[(sampler, steps)].append(r)
            print(f"seed {seed} {sampler}-{steps}: CRPS {r['crps']:.3f}, {r['seconds']:.1f} s", flush=True)
    rows = summarise(runs, args.seeds * inits.size * args.members)
    text = table(rows)
    load_after = os.getloadavg()
    print("\n" + text)
    print(f"\nload average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    path = args.json or (None if args.quick else str(Path(__file__).with_name("bench_samplers.json")))
    if path:
        record = {"benchmark": "bench_samplers.py", "started_utc": started.isoformat(timespec="seconds"),
                  "machine": machine(), "platform": platform.platform(), "torch": torch.__version__,
                  "threads": torch.get_num_threads(), "device": args.device,
                  "load_average_before": load_before, "load_average_after": load_after,
                  "model": model_name, "bundle_sha256": digest,
                  "inits": [str(t) for t in inits], "members": args.members, "seeds": args.seeds,
                  "reference": f"ddpm-{args.reference_steps}",
                  "goal": {"max_model_evaluations": GOAL_EVALS, "crps_within": GOAL_CRPS,
                           "or_within_seed_sd": True, "min_speedup": GOAL_SPEEDUP},
                  "results": rows, "table": text}
        Path(path).write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
