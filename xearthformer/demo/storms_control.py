"""``xearthformer demo --case storms --ensemble --control``: knowledge control of the storms ensemble.

After the ensemble case (:mod:`.storms_ensemble`) has trained its tiny PreDiff, an alignment
network learns the future mean intensity (mean VIL over the 6 target frames, the official
statistic) on the same training part (``xef.train_alignment``), with mu/sigma conditioned on
the context's own mean intensity (``conditioning="context"``: mu a least-squares line in it,
sigma the residual spread). Then :data:`CONTROL_INITS` test inits spread over the test part are
drawn again under ``control={"n": k, "via": "decoded"}`` for k in -4, -2, 0, 2, 4 (targets
mu(context) + k sigma, one per init; a ``control`` dim), as the PreDiff paper's figure. The
guidance follows the statistic of the decoded forecast: on this tiny model the alignment
network's gradient does not steer the members (``benchmarks/README.md``). It writes

* ``storms_control.nc``: the controlled ensembles (CF-1.8, ``control`` dim);
* ``storms_control_frames.png``: the truth and the ensemble mean under each control, one init;
* ``storms_control.md`` / ``.json``: per control the requested target, the achieved statistic
  (the ensemble's future mean intensity, mean and range over the inits), the fraction of inits
  within 25 % of the target, CRPS and ensemble-mean CSI-M (pooled), next to the free ensemble.

>>> run_storms_control(Path("xef-demo"), model, ds, split)          # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from ..data.sevir import SEVIR_THRESHOLDS

if TYPE_CHECKING:
    from ..models.base import Forecaster

CONTROL_FILE = "storms_control.nc"
CONTROLLED_MODEL = "storms_prediff_control.xef"
SWEEP = (-4, -2, 0, 2, 4)
STATISTIC = "mean_intensity"
ALIGN_EPOCHS = 40
#: how the sweep is guided (the default strength of decoded guidance, see benchmarks/README.md)
CONTROL_OPTIONS = {"via": "decoded"}
#: what the stored mu/sigma are conditioned on
CONDITIONING = "context"
#: the sweep's test inits, members and sampler steps (unless --steps): decoded guidance costs a
#: VAE-decoder backward pass per step, so the sweep is smaller than the free ensemble
CONTROL_INITS, CONTROL_MEMBERS, CONTROL_STEPS = 8, 4, 10
SCORE_DIMS = ["init_time", "lead_time", "y", "x"]
WITHIN = 0.25


def controlled_model(model: Forecaster, train_ds: xr.Dataset, out: Path, quick: bool, seed: int,
                     device: str) -> Forecaster:
    """``model`` with an alignment network for the future mean intensity (trained now if absent)."""
    from ..checkpoint import save
    from ..errors import ConfigError
    from ..models.prediff.knowledge import find_entry
    from ..models.prediff.statistics import statistic
    from ..training.alignment import train_alignment

    try:
        find_entry(model.model, statistic(STATISTIC))
        return model
    except ConfigError:
        pass
    t0 = time.perf_counter()
    model = train_alignment(model, train_ds, STATISTIC, epochs=1 if quick else ALIGN_EPOCHS, batch_size=8,
                            val=None, device=device, seed=seed, progress=True, conditioning=CONDITIONING,
                            steps_per_epoch=2 if quick else None)
    print(f"alignment network (future mean intensity) trained in {time.perf_counter() - t0:.0f} s")
    save(model, out / CONTROLLED_MODEL)
    return model


def spread_inits(times: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` of the init ``times``, evenly spread over them (the first and last included).

    >>> spread_inits(np.arange(10), 4)
    array([0, 3, 6, 9])
    """
    return times[np.unique(np.linspace(0, times.size - 1, min(n, times.size)).round().astype(int))]


def init_targets(ds: xr.Dataset, model: Forecaster, inits: Any, controls: list[Any]) -> list[np.ndarray]:
    """The (clipped) physical target of each init under each control: one (init,) array per
    control (targets differ by init when they depend on the context)."""
    import torch

    from .. import layout
    from ..models.prediff.knowledge import prepare_guidance

    x = torch.from_numpy(layout.encode_inputs(ds, model.spec, inits))
    return [prepare_guidance(model, c).targets(x)[:, 0].numpy() for c in controls]


def control_rows(sweep: xr.DataArray, free: xr.DataArray, targets: list[np.ndarray], obs: xr.DataArray
                 ) -> list[dict[str, Any]]:
    """One row per control (and one for the free ensemble): target (mean over inits, and per
    init), achieved statistic, scores. ``targets``: one array per control, one target per init."""
    from .. import metrics

    thresholds = list(SEVIR_THRESHOLDS)

    def scores(ens: xr.DataArray) -> dict[str, Any]:
        achieved = ens.mean(["member", "lead_time", "y", "x"]).values.astype(float)  # per init
        csi = metrics.csi(ens.mean("member"), obs, thresholds=thresholds, dim=SCORE_DIMS).values
        return {"achieved": achieved, "crps": float(metrics.crps(ens, obs, dim=SCORE_DIMS)),
                "csi_m": float(np.nanmean(np.asarray(csi, dtype=float)))}

    rows = []
    base = scores(free)
    rows.append({"control": "none", "target": None, "achieved_mean": float(base["achieved"].mean()),
                 "achieved_min": float(base["achieved"].min()), "achieved_max": float(base["achieved"].max()),
                 "within": None, "crps": base["crps"], "csi_m": base["csi_m"]})
    for label, target in zip(sweep["control"].values, targets):
        s = scores(sweep.sel(control=label))
        a, target = s["achieved"], np.asarray(target, dtype=float)
        rows.append({"control": str(label), "target": float(target.mean()), "targets": target.tolist(),
                     "achieved_mean": float(a.mean()),
                     "achieved_min": float(a.min()), "achieved_max": float(a.max()),
                     "within": float(np.mean(np.abs(a - target) <= WITHIN * np.abs(target))),
                     "crps": s["crps"], "csi_m": s["csi_m"]})
    return rows


def control_table(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`control_rows` as a Markdown table."""
    lines = ["| control | target mean VIL (mean over inits) | achieved (mean over inits, min-max) | inits within 25 % "
             "| CRPS | CSI-M |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        target = "-" if r["target"] is None else f"{r['target']:.2f}"
        within = "-" if r["within"] is None else f"{100 * r['within']:.0f} %"
        lines.append(f"| {r['control']} | {target} | {r['achieved_mean']:.2f} ({r['achieved_min']:.2f}-"
                     f"{r['achieved_max']:.2f}) | {within} | {r['crps']:.2f} | {r['csi_m']:.3f} |")
    return "\n".join(lines)


def plot_control_sweep(sweep: xr.DataArray, obs: xr.DataArray, init_index: int) -> Any:
    """Frame strip: the truth, then the ensemble mean under each control (rows), by lead (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    one = sweep.isel(init_time=init_index)
    mean = one.mean("member")
    truth = obs.sel(time=one["valid_time"].values)
    n_rows, n_cols = 1 + sweep.sizes["control"], one.sizes["lead_time"]
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.6 * n_cols + 1, 1.6 * n_rows), squeeze=False,
                             constrained_layout=True)
    rows = [("truth", truth.values)] + [(str(c), mean.sel(control=c).values) for c in sweep["control"].values]
    im = None
    for i, (label, frames) in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            im = ax.imshow(frames[j], vmin=0, vmax=255, cmap="turbo", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
            if i == 0:
                ax.set_title(f"+{(j + 1) * 5} min", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.6, label="VIL code")
    fig.suptitle(f"knowledge control of the future mean intensity, init "
                 f"{str(one['init_time'].values)[:16]} (ensemble means)", fontsize=9)
    return fig


def run_storms_control(out: Path, model: Forecaster, ds: xr.Dataset, split: int, *, quick: bool = False,
                       seed: int = 0, device: str = "auto", members: int = 8,
                       sampling: dict[str, Any] | None = None) -> dict[str, Any]:
    """The control sweep of the storms ensemble demo; returns the rows and output paths."""
    from .storms import held_out_inits
    from .storms_ensemble import busiest_init

    sampling = {k: v for k, v in (sampling or {}).items() if v is not None}
    sampling.setdefault("steps", CONTROL_STEPS)
    members = min(members, CONTROL_MEMBERS)
    model = controlled_model(model, ds.isel(time=slice(0, split)), out, quick, seed, device)
    controls = [{"n": k, **CONTROL_OPTIONS} for k in SWEEP]
    inits = spread_inits(ds["time"].sel(time=held_out_inits(ds, split)).values, CONTROL_INITS)
    targets = init_targets(ds, model, inits, controls)
    kw = {"members": members, "seed": seed, "init": inits, "device": device, "progress": True, **sampling}
    t0 = time.perf_counter()
    free = ds.earthformer.ensemble(model, **kw)
    sweep = ds.earthformer.ensemble(model, control=controls, **kw)
    seconds = time.perf_counter() - t0
    path = out / CONTROL_FILE
    sweep.to_netcdf(path)
    obs = ds["vil"]
    order = ("control", "init_time", "lead_time", "member", "y", "x")
    vil = sweep["vil"].load().transpose(*order)
    free_vil = free["vil"].load().transpose(*order[1:])
    rows = control_rows(vil, free_vil, targets, obs)
    table = control_table(rows)
    n_init = vil.sizes["init_time"]
    print(f"\nknowledge control of the future mean intensity ({n_init} test inits x {members} members; "
          f"targets mu + n sigma of the training period, mu conditioned on the context's mean intensity; guided "
          f"by the decoded forecast, {sampling['steps']} steps):\n")
    print(table)
    (out / "storms_control.md").write_text(table + "\n")
    info = {"members": members, "init_times": n_init, "seed": seed, **sampling, "sample_seconds": round(seconds, 1),
            "guide_scale": float(sweep.attrs["control_guide_scale"]), "mu": sweep.attrs.get("control_mu"),
            "sigma": sweep.attrs.get("control_sigma"), "conditioning": sweep.attrs.get("control_stats_conditioning"),
            "mu_slope": sweep.attrs.get("control_mu_slope"), "via": sweep.attrs.get("control_via")}
    (out / "storms_control.json").write_text(json.dumps({"rows": rows, **info}, indent=1) + "\n")
    fig = plot_control_sweep(vil, obs, busiest_init(free_vil.mean("member"), obs))
    frames = out / "storms_control_frames.png"
    fig.savefig(frames, dpi=100)
    return {"rows": rows, "ensemble": path, "frames": frames, **info}
