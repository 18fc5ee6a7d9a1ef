"""``xearthformer demo`` SST case: OSTIA monthly mean SST from the ``iris-sample-data`` package
(2006-04 to 2010-09, 5S-4.4N, all longitudes, land NaN), coarsened 3x3 to 1.67 deg x 2.5 deg.

A small Earthformer learns 6 -> 6 month windows (anomalies from the training climatology) on
the months before the held-out last year, then forecasts every init time from the last
training month on. The demo writes a CF-1.8 NetCDF of the forecasts, maps (forecast,
observed, error), a Nino3.4 plot (forecast vs observed vs persistence) and prints RMSE and
anomaly correlation per lead against persistence and climatology on the held-out year,
whatever they are.

>>> run_sst(Path("xef-demo"))                                       # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

SST = "surface_temperature"
CONTEXT, LEAD = 6, 6
COARSEN = {"latitude": 3, "longitude": 3}
HELD_OUT_MONTHS = 12
MIN_VERIFYING = 3


def load_sst() -> xr.Dataset:
    """The OSTIA sample, coarsened 3x3 (mean over ocean cells; all-land cells stay NaN)."""
    from ..data.samples import open_ostia

    ds = open_ostia().load()
    coarse = ds.coarsen(COARSEN).mean(keep_attrs=True)
    coarse.attrs["comment"] = ("OSTIA monthly SST from iris-sample-data, coarsened 3x3 "
                               "(0.56x0.83 deg -> 1.67x2.5 deg) by xearthformer demo")
    return coarse


def baselines(obs: xr.DataArray, fc: xr.DataArray, clim: xr.DataArray) -> dict[str, xr.DataArray]:
    """Baselines on the forecast's (init_time, lead_time) axes: persistence (the observation
    at init time for every lead), anomaly persistence (the init-time anomaly added to the
    valid month's climatology) and climatology (the training-period mean of the valid month)."""
    from .baselines import anomaly_persistence, climatology_at_valid, persistence

    base = persistence(obs, fc)
    return {"persistence": base, "anomaly_persistence": anomaly_persistence(obs, fc, clim),
            "climatology": climatology_at_valid(clim, fc).transpose(*base.dims)}


def skill_table(obs: xr.DataArray, forecasts: dict[str, xr.DataArray], clim_at_valid: xr.DataArray
                ) -> list[dict[str, Any]]:
    """RMSE and ACC per lead (cos-lat weighted, ocean only) for every forecast, on leads with
    at least ``MIN_VERIFYING`` verifying init times."""
    from .. import metrics

    first = next(iter(forecasts.values()))
    def months(t: xr.DataArray) -> xr.DataArray:  # monthly means are stamped on varying days/hours
        return t.dt.year * 12 + t.dt.month

    n_verifying = (months(first["valid_time"]) <= int(months(obs["time"])[-1])).sum("init_time")
    rows = []
    scores = {name: (metrics.rmse(f, obs, weights="coslat"),
                     metrics.acc(f, obs, weights="coslat", climatology=clim_at_valid))
              for name, f in forecasts.items()}
    for k, lead in enumerate(first["lead_time"].values):
        n = int(n_verifying[k])
        if n < MIN_VERIFYING:
            continue
        row: dict[str, Any] = {"lead": int(lead), "n": n}
        for name, (rmse, acc) in scores.items():
            row[f"rmse_{name}"] = float(rmse.isel(lead_time=k))
            row[f"acc_{name}"] = float(acc.isel(lead_time=k))
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]], names: list[str]) -> str:
    """The skill rows as a Markdown table (ACC of a zero-anomaly forecast is undefined: n/a)."""
    head = "| lead (months) | n | " + " | ".join(f"RMSE {n} (K)" for n in names) + " | " + \
        " | ".join(f"ACC {n}" for n in names) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(names))]
    for r in rows:
        rm = " | ".join(f"{r[f'rmse_{n}']:.3f}" for n in names)
        ac = " | ".join("n/a" if not np.isfinite(r[f"acc_{n}"]) else f"{r[f'acc_{n}']:.2f}" for n in names)
        lines.append(f"| {r['lead']} | {r['n']} | {rm} | {ac} |")
    return "\n".join(lines)


def run_sst(out: Path, epochs: int | None = None, quick: bool = False, seed: int = 0,
            device: str = "auto") -> dict[str, Any]:
    """The SST demo; returns the skill rows and output paths."""
    from .. import metrics
    from ..checkpoint import save
    from ..training.data import roll_augment
    from ..training.labelled import train
    from .plots import plot_maps, plot_nino34

    ds = load_sst()
    times = ds["time"].values
    split = len(times) - HELD_OUT_MONTHS
    train_ds = ds.isel(time=slice(0, split))
    print(f"OSTIA monthly SST: {len(times)} months {str(times[0])[:7]}..{str(times[-1])[:7]}, "
          f"grid {ds.sizes['latitude']}x{ds.sizes['longitude']} after 3x3 coarsening "
          f"(1.67 x 2.5 deg); training on {str(times[0])[:7]}..{str(times[split - 1])[:7]}, "
          f"held out {str(times[split])[:7]}..{str(times[-1])[:7]}")
    epochs = epochs if epochs is not None else (1 if quick else 12)
    # 31 training windows of one 3.5-year record are easily memorised; random longitude rolls
    # and sign flips of the anomalies make the model learn transferable dynamics instead.
    print("training: 6 -> 6 month windows, anomalies from the training climatology, "
          "augmented by random longitude rolls and anomaly sign flips")
    forecaster = train(
        train_ds, preset="small", variables=[SST], context=CONTEXT, lead=LEAD, epochs=epochs,
        batch_size=4, val=None, device=device, checkpoint_dir=out / "checkpoints", seed=seed,
        lr=2e-3, warmup=0.1, normalization="anomaly", progress=True,
        augment=roll_augment(flip_sign=True), steps_per_epoch=2 if quick else None)
    save(forecaster, out / "sst_model.xef")

    # init times: from the last training month to the second-last month, so every target
    # lies in the held-out year and every input is an observation available at init time
    fc = ds.earthformer.forecast(forecaster, init=slice(times[split - 1], times[-2]), progress=False)
    fc_path = out / "sst_forecast.nc"
    fc.to_netcdf(fc_path)

    obs = ds[SST]
    clim = train_ds[SST].groupby("time.month").mean("time")
    model_fc = fc[SST].load()
    base = baselines(obs, model_fc, clim)
    forecasts = {"earthformer": model_fc, **base}
    rows = skill_table(obs, forecasts, base["climatology"])
    names = list(forecasts)
    table = format_table(rows, names)
    print(f"\nSkill on the held-out year ({str(times[split])[:7]}..{str(times[-1])[:7]}), "
          "ocean points, cos(lat)-weighted; ACC = uncentred anomaly correlation w.r.t. the "
          "training-period climatology:\n")
    print(table)
    (out / "skill.md").write_text(table + "\n")

    nino = {name: metrics.nino34_index(f, climatology=clim, window=None) for name, f in forecasts.items()
            if name in ("earthformer", "persistence")}
    nino_obs = metrics.nino34_index(obs, climatology=clim, window=None)
    maps = plot_maps(model_fc, obs, out / "sst_maps.png")
    nino_png = plot_nino34(nino_obs, nino, times[split], out / "nino34.png")
    return {"rows": rows, "forecast": fc_path, "maps": maps, "nino34": nino_png,
            "model": out / "sst_model.xef"}
