"""Knowledge control on the trained tiny storms PreDiff: does the ensemble reach its target?

Issue 12's criteria, on the bundle that ``xearthformer demo --case storms --ensemble`` trains
(``storms_prediff.xef``) and the demo's held-out storms (``--inits`` init times spread over the
test part, ``--members`` members). The control statistic is the future mean intensity (the
official one: mean VIL over the 6 target frames). When the bundle has no alignment network for
it, one is trained first on the demo's training part (``xef.train_alignment``; the result is
saved next to the model as ``*_control.xef`` and reused).

For each sampler (DDIM eta 0 and DPM-Solver++(2M), ``--steps`` steps) and guidance strength
(``--scales``; the bundle's default when not given), guided by the alignment network or
(``--via decoded``) by the statistic of the decoded x0 prediction, the ensemble is drawn with no control and
with ``control={"n": k}`` for k in ``--n`` (default -2 -1 0 1 2), every case from the same keys.
Per case:

* the achieved statistic per init: the mean intensity of the ensemble's future (the mean over
  members of each member's mean intensity), against the (clipped) target mu + n sigma;
* monotone: the mean achieved statistic over inits increases strictly with n;
* within 25 %: the fraction of inits whose achieved statistic lies within 25 % of the target
  (|achieved - target| <= 0.25 |target|), for |n| <= 2 (goal: >= 80 %);
* CRPS (pooled over pixels, inits and leads) and its change against no control (goal for n = 0:
  at most +5 %), and the ensemble-mean CSI at 74 (VIL code).

A benchmark, not a test::

    python benchmarks/bench_control.py --model xearthformer-demo/storms_prediff.xef
    python benchmarks/bench_control.py --quick        # trains a few-step model: smoke test only
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

import xearthformer as xef  # noqa: E402
from xearthformer import metrics  # noqa: E402
from xearthformer.checkpoint import bundle_digest, load, save  # noqa: E402
from xearthformer.demo import machine  # noqa: E402
from xearthformer.demo.storms_control import init_targets, spread_inits  # noqa: E402
from xearthformer.forecast import ensemble  # noqa: E402

DIMS = ["init_time", "lead_time", "y", "x"]
STAT = "mean_intensity"
GOAL_WITHIN, GOAL_FRACTION, GOAL_CRPS = 0.25, 0.80, 0.05


def demo_data(quick: bool, seed: int):
    from xearthformer.demo.storms import held_out_inits, storms_data

    ds, split = storms_data(quick, seed)
    return ds, split, held_out_inits(ds, split)


def sample_inits(ds, window: slice, n: int) -> np.ndarray:
    times = ds["time"].sel(time=window).values
    if n > times.size:
        raise SystemExit(f"--inits {n}: the test part has only {times.size} init times")
    return spread_inits(times, n)


def with_alignment(model_path: Path, ds, split: int, epochs: int, quick: bool, device: str):
    """The bundle with an alignment network for the mean intensity (trained and saved if absent)."""
    from xearthformer.models.prediff.knowledge import find_entry
    from xearthformer.models.prediff.statistics import statistic

    model = load(model_path)
    try:
        find_entry(model.model, statistic(STAT))
        return model, model_path, None
    except xef.ConfigError:
        pass
    cached = model_path.with_name(model_path.stem + "_control.xef")
    if cached.exists():
        again = load(cached)
        if again.metadata.get("control_base_sha256") == bundle_digest(model):
            return again, cached, None
    t0 = time.perf_counter()
    model = xef.train_alignment(model, ds.isel(time=slice(0, split)), STAT, epochs=1 if quick else epochs,
                                batch_size=8, val=None, device=device, progress=True,
                                steps_per_epoch=2 if quick else None)
    seconds = time.perf_counter() - t0
    model.metadata["control_base_sha256"] = bundle_digest(load(model_path))
    save(model, cached)
    return model, cached, seconds


def achieved(ens, obs_mean=None) -> np.ndarray:
    """The mean intensity of the ensemble's future per init: (init_time,)."""
    return ens.mean(["member", "lead_time", "y", "x"]).values.astype(np.float64)


def run_case(ds, model, inits, members: int, seed: int, sampler: str, steps: int, control, device: str) -> dict:
    t0 = time.perf_counter()
    kw = {} if control is None else {"control": control}
    ens = ensemble(ds, model, members=members, seed=seed, init=inits, device=device, progress=False,
                   sampler=sampler, steps=steps, **kw)
    seconds = time.perf_counter() - t0
    vil = ens["vil"].load().transpose("init_time", "lead_time", "member", "y", "x")
    obs = ds["vil"]
    out = {"achieved": achieved(vil).tolist(), "seconds": seconds,
           "crps": float(metrics.crps(vil, obs, dim=DIMS)),
           "csi74": float(metrics.csi(vil.mean("member"), obs, thresholds=[74], dim=DIMS).squeeze())}
    if control is not None:
        # one target per init when mu depends on the context: the attrs hold none, ask the guidance
        out["target"] = init_targets(ds, model, inits, [control])[0].tolist()
    return out


def summarise(cases: dict, ns: list[float]) -> dict:
    free = cases["none"]
    rows = []
    for n in ns:
        c = cases[n]
        a, target = np.asarray(c["achieved"]), np.asarray(c["target"])
        within = np.abs(a - target) <= GOAL_WITHIN * np.abs(target)
        rows.append({"n": n, "target": float(target.mean()), "achieved_mean": float(a.mean()),
                     "achieved_min": float(a.min()), "achieved_max": float(a.max()),
                     "within_25pct": float(within.mean()), "crps": c["crps"],
                     "crps_change": c["crps"] / free["crps"] - 1, "csi74": c["csi74"], "seconds": c["seconds"]})
    means = [r["achieved_mean"] for r in rows]
    monotone = bool(all(b > a for a, b in zip(means, means[1:])))
    small = [r for r in rows if abs(r["n"]) <= 2]
    zero = [r for r in rows if r["n"] == 0]
    return {"rows": rows, "free": {"achieved_mean": float(np.mean(free["achieved"])), "crps": free["crps"],
                                   "csi74": free["csi74"], "seconds": free["seconds"]},
            "monotone": monotone,
            "within_goal": bool(all(r["within_25pct"] >= GOAL_FRACTION for r in small)),
            "crps_goal": bool(zero and zero[0]["crps_change"] <= GOAL_CRPS)}


def table(results: list[dict]) -> str:
    lines = ["| sampler | steps | scale | n | target (mean) | achieved (mean, min-max) | within 25 % | CRPS | vs none | CSI-74 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        s = res["summary"]
        head = (f"| {res['sampler']} | {res['steps']} | {res['scale']:g} ({res.get('via', 'alignment')}, "
                f"{res.get('norm', 'l2')}, {res.get('conditioning', 'none')})")
        lines.append(f"{head} | none | - | {s['free']['achieved_mean']:.2f} | - | {s['free']['crps']:.3f} | - | "
                     f"{s['free']['csi74']:.3f} |")
        for r in s["rows"]:
            lines.append(f"{head} | {r['n']:+g} | {r['target']:.2f} | {r['achieved_mean']:.2f} "
                         f"({r['achieved_min']:.2f}-{r['achieved_max']:.2f}) | {100 * r['within_25pct']:.0f} % | "
                         f"{r['crps']:.3f} | {100 * r['crps_change']:+.1f} % | {r['csi74']:.3f} |")
        lines.append(f"{head} | monotone: {s['monotone']}, >= 80 % within 25 %: {s['within_goal']}, "
                     f"n=0 CRPS within +5 %: {s['crps_goal']} | | | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, help="storms_prediff.xef from xearthformer demo --case storms --ensemble")
    p.add_argument("--quick", action="store_true", help="train a few-step model first (smoke test only)")
    p.add_argument("--inits", type=int, default=32)
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--samplers", nargs="+", default=["ddim", "dpm++2m"])
    p.add_argument("--n", nargs="+", type=float, default=[-2, -1, 0, 1, 2])
    p.add_argument("--scales", nargs="+", type=float, default=None,
                   help="guidance strengths to try (default: the alignment network's own, or the decoded default)")
    p.add_argument("--align-epochs", type=int, default=40)
    p.add_argument("--via", choices=["alignment", "decoded"], default="alignment",
                   help="follow the alignment network (PreDiff) or the statistic of the decoded x0")
    p.add_argument("--norm", choices=["l2", "squared"], default="l2",
                   help="the error norm of the guidance (control key 'norm')")
    p.add_argument("--conditioning", choices=["none", "context"], default="none",
                   help="mu/sigma of the n targets: climatological, or conditioned on the context's own mean "
                        "intensity (re-estimated on the demo's training part with xef.control_stats)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("bench_control.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ds, split, window = demo_data(args.quick, args.seed)
    if args.model is None:
        if not args.quick:
            raise SystemExit("--model storms_prediff.xef is needed (xearthformer demo --case storms --ensemble), "
                             "or --quick")
        from xearthformer.demo.storms_ensemble import train_ensemble_model

        tmp = Path(tempfile.mkdtemp(prefix="bench_control_"))
        save(train_ensemble_model(ds.isel(time=slice(0, split)), tmp, quick=True, device=args.device),
             tmp / "storms_prediff.xef")
        args.model = tmp / "storms_prediff.xef"
        args.inits, args.members, args.steps = min(args.inits, 4), min(args.members, 2), min(args.steps, 3)
    model, path, align_seconds = with_alignment(args.model, ds, split, args.align_epochs, args.quick, args.device)
    if args.conditioning != "none":
        model = xef.control_stats(model, ds.isel(time=slice(0, split)), STAT, conditioning=args.conditioning)
    from xearthformer.models.prediff.knowledge import find_entry
    from xearthformer.models.prediff.statistics import statistic

    entry, _ = find_entry(model.model, statistic(STAT))
    from xearthformer.models.prediff.knowledge import DEFAULT_DECODED_SCALE

    # the default strength of what is measured: the network's own, or that of decoded guidance
    scales = args.scales or [float(entry["guide_scale"]) if args.via == "alignment" else DEFAULT_DECODED_SCALE]
    inits = sample_inits(ds, window, args.inits)
    conditioned = entry["stats"]["conditioning"]
    slope = f", slope {entry['stats']['slope'][0]:.3f} on the context mean" if conditioned == "context" else ""
    print(f"{len(inits)} inits x {args.members} members; alignment {entry['name']!r} "
          f"(mu {entry['stats']['mu'][0]:.2f}, sigma {entry['stats']['sigma'][0]:.2f}{slope}; conditioning "
          f"{conditioned}); {machine()}")
    results = []
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for sampler in args.samplers:
        for scale in scales:
            cases = {"none": run_case(ds, model, inits, args.members, args.seed, sampler, args.steps, None,
                                      args.device)}
            for n in args.n:
                cases[n] = run_case(ds, model, inits, args.members, args.seed, sampler, args.steps,
                                    {"n": n, "scale": scale, "via": args.via, "norm": args.norm}, args.device)
            results.append({"sampler": sampler, "steps": args.steps, "scale": scale, "via": args.via,
                            "conditioning": conditioned, "norm": args.norm,
                            "summary": summarise(cases, args.n), "cases": {str(k): v for k, v in cases.items()}})
            print(table(results[-1:]), flush=True)
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "python": platform.python_version(), "torch": torch.__version__,
              "load_average_1min": [load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else None],
              "model": str(args.model), "bundle_sha256": bundle_digest(model), "alignment_train_seconds": align_seconds,
              "inits": len(inits), "members": args.members, "quick": args.quick, "results": results}
    if not args.quick:
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(table(results) + "\n")
    print("\n" + table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
