"""``xearthformer demo --case storms --ensemble``: a PreDiff ensemble nowcast of synthetic storms.

The same storms, split and test init times as the deterministic storms case
(:mod:`xearthformer.demo.storms`). A tiny PreDiff (frame VAE + latent cuboid-attention
denoiser) is trained on the training part; on the test inits it draws an ensemble, which is
written as CF-1.8 NetCDF, drawn as a frame strip (context, truth, ensemble mean, three
members, as in the PreDiff paper's figures) and scored against the deterministic Earthformer
(reused from the output folder when a ``storms_model.xef`` is there) and persistence, on every
:data:`INIT_STRIDE`-th test init:

* CRPS of the ensemble (plain, not "fair"), against the MAE of the point forecasts: the CRPS of
  a point forecast is its MAE, so the numbers compare directly;
* RMSE (of the ensemble mean for the ensemble);
* CSI of the ensemble mean (and of each point forecast) at the SEVIR thresholds;
* the spread/skill ratio of the ensemble (1 for a statistically consistent ensemble).

Every score is pooled over pixels, init times and leads.

>>> run_storms_ensemble(Path("xef-demo"))                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from ..data.sevir import SEVIR_THRESHOLDS
from .baselines import persistence
from .storms import CONTEXT, LEAD, MODEL_FILE, SIZE, VIL_SCALE, held_out_inits, storms_data, train_storms_model

if TYPE_CHECKING:
    from ..models.base import Forecaster

ENSEMBLE_FILE = "storms_ensemble.nc"
PREDIFF_FILE = "storms_prediff.xef"
MEMBERS, QUICK_MEMBERS = 8, 2
# every 3rd test init (15 min apart: neighbouring 5-min inits are nearly the same case), so the
# ensemble samples in minutes on a CPU; all three forecasts are scored on these same inits
INIT_STRIDE = 3
# the tiny PreDiff's training budget, aimed at 10 minutes on 2 CPU cores. The first budget
# (2 x 25 VAE, 3 x 30 denoiser batches) was sized on a VM loaded 6-10, where it took 15 min;
# on the same VM unloaded it took 56 s and left both networks far from trained
VAE_EPOCHS, VAE_BATCH, VAE_STEPS = 6, 4, 40
DENOISER_EPOCHS, DENOISER_BATCH, DENOISER_STEPS = 20, 4, 40
# --quick: two sampler steps (a smoke test; one denoiser evaluation costs 0.05-0.2 s per member on a CPU)
QUICK_STEPS = 2
PREDIFF_PRESET = "tiny"
SCORE_DIMS = ["init_time", "lead_time", "y", "x"]


def train_ensemble_model(train_ds: xr.Dataset, out: Path, epochs: int | None = None, quick: bool = False,
                         seed: int = 0, device: str = "auto") -> Forecaster:
    """Train the tiny PreDiff on the storms' training part (``xef.train_prediff``): the VAE for
    :data:`VAE_EPOCHS` epochs of :data:`VAE_STEPS` batches, then the denoiser for ``epochs``
    (default :data:`DENOISER_EPOCHS`) of :data:`DENOISER_STEPS`; ``quick``: 2 batches each."""
    from ..training import train_prediff

    return train_prediff(
        train_ds, preset=PREDIFF_PRESET, variables=["vil"], context=CONTEXT, lead=LEAD,
        val=0.2, device=device, checkpoint_dir=out / "checkpoints_prediff", seed=seed,
        normalization=VIL_SCALE, progress=True,
        vae_epochs=1 if quick else VAE_EPOCHS, vae_batch_size=VAE_BATCH,
        vae_steps_per_epoch=2 if quick else VAE_STEPS,
        epochs=epochs if epochs is not None else (1 if quick else DENOISER_EPOCHS),
        batch_size=DENOISER_BATCH, steps_per_epoch=2 if quick else DENOISER_STEPS)


def deterministic_model(train_ds: xr.Dataset, out: Path, quick: bool, seed: int, device: str) -> Forecaster:
    """The deterministic storms Earthformer: the one in ``out`` when it fits, else trained now.

    A bundle from a ``--quick`` run (a few training steps) is not reused by a full run."""
    from ..checkpoint import load

    path = out / MODEL_FILE
    if path.is_file():
        model = load(path)
        steps = model.metadata.get("training", {}).get("config", {}).get("steps_per_epoch")
        fits = model.context == CONTEXT and model.lead == LEAD and tuple(model.spec.grid.shape) == SIZE
        if fits and (quick or steps is None):
            print(f"reusing the deterministic Earthformer in {path}")
            return model
        print(f"{path} does not fit this run (other shapes, or a --quick model): training a new one")
    return train_storms_model(train_ds, out, None, quick, seed, device)


def skill_rows(ens: xr.DataArray, points: dict[str, xr.DataArray], obs: xr.DataArray) -> list[dict[str, Any]]:
    """Scores of the ensemble ``ens`` (with ``member``) and of point forecasts on the same inits,
    pooled over :data:`SCORE_DIMS`; one dict per forecast."""
    from .. import metrics

    thresholds = list(SEVIR_THRESHOLDS)
    mean = ens.mean("member")
    spread = metrics.spread_skill(ens, obs, dim=SCORE_DIMS)
    rows = [{"forecast": f"PreDiff ensemble ({ens.sizes['member']} members)",
             "crps": float(metrics.crps(ens, obs, dim=SCORE_DIMS)),
             "rmse": float(metrics.rmse(mean, obs, dim=SCORE_DIMS)),
             "csi": metrics.csi(mean, obs, thresholds=thresholds, dim=SCORE_DIMS).values,
             "spread": float(spread.spread), "spread_skill": float(spread.ratio)}]
    for name, fc in points.items():
        rows.append({"forecast": name, "crps": float(metrics.mae(fc, obs, dim=SCORE_DIMS)),
                     "rmse": float(metrics.rmse(fc, obs, dim=SCORE_DIMS)),
                     "csi": metrics.csi(fc, obs, thresholds=thresholds, dim=SCORE_DIMS).values,
                     "spread": None, "spread_skill": None})
    for row in rows:
        values = np.asarray(row.pop("csi"), dtype=float)
        row.update({f"csi_{t}": float(v) for t, v in zip(thresholds, values)})
        row["csi_m"] = float(np.nanmean(values))
    return rows


def skill_table(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`skill_rows` as a Markdown table."""
    head = ("| forecast | CRPS (MAE for point forecasts) | RMSE | "
            + " | ".join(f"CSI-{t}" for t in SEVIR_THRESHOLDS) + " | CSI-M | spread/skill |")
    lines = [head, "|" + "---|" * (len(SEVIR_THRESHOLDS) + 5)]
    for r in rows:
        ratio = "n/a" if r["spread_skill"] is None else f"{r['spread_skill']:.2f}"
        lines.append(f"| {r['forecast']} | {r['crps']:.2f} | {r['rmse']:.2f} | "
                     + " | ".join(f"{r[f'csi_{t}']:.3f}" for t in SEVIR_THRESHOLDS)
                     + f" | {r['csi_m']:.3f} | {ratio} |")
    return "\n".join(lines)


def busiest_init(fc: xr.DataArray, obs: xr.DataArray) -> int:
    """Position of the init time of ``fc`` whose observed future holds the most VIL (the
    figure's case: an init with little going on shows little)."""
    future = obs.sel(time=fc["valid_time"])  # (init_time, lead_time, y, x)
    return int(np.argmax(future.sum([d for d in future.dims if d != "init_time"]).values))


def run_storms_ensemble(out: Path, epochs: int | None = None, quick: bool = False, seed: int = 0,
                        device: str = "auto", members: int | None = None,
                        sampling: dict[str, Any] | None = None, control: bool = False) -> dict[str, Any]:
    """The storms ensemble demo; returns the skill rows, timings and output paths.

    Parameters
    ----------
    out : Path
        Output folder (a ``storms_model.xef`` there is reused as the deterministic model).
    epochs : int, optional
        Denoiser training epochs (default :data:`DENOISER_EPOCHS`).
    quick : bool
        A few training steps and fewer frames: a smoke test of the pipeline, not a result.
    seed : int
        Seed of the data, the training and the ensemble.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``...
    members : int, optional
        Ensemble size (default :data:`MEMBERS`, ``--quick``: :data:`QUICK_MEMBERS`).
    sampling : dict, optional
        Sampling options for the family (``sampler``, ``steps``); default: the bundle's own
        (``--quick``: :data:`QUICK_STEPS` steps).
    control : bool
        Then also run the knowledge-control sweep (:mod:`.storms_control`); its results are
        under the key ``"control"``.
    """
    from ..checkpoint import save
    from ..metrics import plot_members
    from . import machine

    members = members if members is not None else (QUICK_MEMBERS if quick else MEMBERS)
    sampling = {k: v for k, v in (sampling or {}).items() if v is not None}
    if quick:
        sampling.setdefault("steps", QUICK_STEPS)
    ds, split = storms_data(quick, seed)
    train_ds = ds.isel(time=slice(0, split))
    print(f"synthetic storms: {ds.sizes['time']} frames of {SIZE[0]}x{SIZE[1]} (5 min, 2 km); training "
          f"on the first {split}, testing on the last {ds.sizes['time'] - split}")
    t0 = time.perf_counter()
    model = train_ensemble_model(train_ds, out, epochs, quick, seed, device)
    train_seconds = time.perf_counter() - t0
    save(model, out / PREDIFF_FILE)
    print(f"PreDiff trained in {train_seconds:.0f} s")

    inits = ds["time"].sel(time=held_out_inits(ds, split)).values[::INIT_STRIDE]
    t0 = time.perf_counter()
    ens = ds.earthformer.ensemble(model, members=members, seed=seed, init=inits, device=device,
                                  progress=True, **sampling)
    sample_seconds = time.perf_counter() - t0
    ens_path = out / ENSEMBLE_FILE
    ens.to_netcdf(ens_path)
    # the deterministic model comes last: a run of the deterministic case alongside this one
    # can still provide it
    det = deterministic_model(train_ds, out, quick, seed, device)
    fc = ds.earthformer.forecast(det, init=inits, device=device, progress=False)

    obs = ds["vil"]
    ens_vil = ens["vil"].load().transpose("init_time", "lead_time", "member", "y", "x")
    det_vil = fc["vil"].load()
    rows = skill_rows(ens_vil, {"Earthformer": det_vil, "persistence": persistence(obs, det_vil)}, obs)
    n_init = ens_vil.sizes["init_time"]
    table = skill_table(rows)
    print(f"\nskill on the test part ({n_init} init times x {LEAD} leads x {SIZE[0]}x{SIZE[1]} pixels, "
          f"pooled; CSI of the ensemble mean; events are value >= threshold):\n")
    print(table)
    (out / "storms_ensemble_skill.md").write_text(table + "\n")
    sample_info = {"machine": machine(), "load_average": list(os.getloadavg()),
                   "members": members, "init_times": n_init, "seed": seed, **sampling,
                   "train_seconds": round(train_seconds, 1), "sample_seconds": round(sample_seconds, 1),
                   "seconds_per_member": round(sample_seconds / (members * n_init), 4)}
    (out / "storms_ensemble_skill.json").write_text(json.dumps({"rows": rows, **sample_info}, indent=1) + "\n")

    pick = busiest_init(det_vil, obs)
    fig = plot_members(ens_vil, observed=obs, context=obs, init_index=pick, members=3, vmin=0, vmax=255)
    fig.suptitle(f"PreDiff ensemble, init {str(ens_vil['init_time'].values[pick])[:16]}", fontsize=9)
    frames = out / "storms_ensemble_frames.png"
    fig.savefig(frames, dpi=100)
    print(f"\n{members} members x {n_init} inits sampled in {sample_seconds:.0f} s "
          f"({sample_info['seconds_per_member']:.3f} s per member)")
    result = {"rows": rows, "ensemble": ens_path, "frames": frames, "model": out / PREDIFF_FILE,
              **sample_info}
    if control:
        from .storms_control import run_storms_control

        result["control"] = run_storms_control(out, model, ds, split, quick=quick, seed=seed, device=device,
                                               members=members, sampling=sampling)
    return result
