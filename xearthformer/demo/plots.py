"""Figures of ``xearthformer demo``: forecast/observed/error maps, the Nino3.4 plot, storm frames.

Matplotlib is used through ``matplotlib.figure.Figure`` (no pyplot global state, no GUI
backend), so the demo runs headless.

>>> plot_maps(fc["surface_temperature"], sst["surface_temperature"], "maps.png")   # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _lead_label(lead: Any) -> str:
    if np.issubdtype(np.asarray(lead).dtype, np.timedelta64):
        return f"{int(np.asarray(lead) / np.timedelta64(1, 'm'))} min"
    return f"{int(lead)} month{'s' if int(lead) != 1 else ''}"


def plot_maps(fc: xr.DataArray, obs: xr.DataArray, path: str | os.PathLike[str],
              init_index: int = 0, leads: tuple[int, ...] = (0, -1)) -> Path:
    """Forecast, observed and error maps of one init time at a few leads (rows).

    Parameters
    ----------
    fc : xr.DataArray
        Forecast ``(init_time, lead_time, lat, lon)`` with 2-D ``valid_time``.
    obs : xr.DataArray
        Observations on ``time``.
    path : path-like
        PNG to write.
    init_index : int
        Which init time.
    leads : tuple of int
        Positions on ``lead_time`` (one row each).
    """
    one = fc.isel(init_time=init_index)
    ydim, xdim = one.dims[-2], one.dims[-1]
    fig = _figure(13, 2.3 * len(leads) + 0.6)
    axes = fig.subplots(len(leads), 3, squeeze=False)
    units = fc.attrs.get("units", "")
    for row, k in enumerate(leads):
        f = one.isel(lead_time=k)
        valid = f["valid_time"].values
        o = obs.sel(time=valid, method="nearest")  # monthly stamps differ by hours
        err = f.values - o.values
        lo = np.nanmin([np.nanmin(f.values), np.nanmin(o.values)])
        hi = np.nanmax([np.nanmax(f.values), np.nanmax(o.values)])
        emax = float(np.nanmax(np.abs(err))) or 1.0
        x, y = f[xdim].values, f[ydim].values
        panels = ((f.values, "forecast", "viridis", lo, hi), (o.values, "observed", "viridis", lo, hi),
                  (err, "forecast - observed", "RdBu_r", -emax, emax))
        for col, (data, title, cmap, vmin, vmax) in enumerate(panels):
            ax = axes[row, col]
            mesh = ax.pcolormesh(x, y, data, cmap=cmap, vmin=vmin, vmax=vmax, shading="auto")
            fig.colorbar(mesh, ax=ax, orientation="horizontal", pad=0.25, label=units)
            ax.set_title(f"{title}, lead {_lead_label(f['lead_time'].values)}, valid "
                         f"{str(valid)[:10]}", fontsize=8)
            ax.set_xlabel(xdim, fontsize=7)
            ax.set_ylabel(ydim, fontsize=7)
            ax.tick_params(labelsize=7)
    init = str(one["init_time"].values)[:10]
    fig.suptitle(f"xearthformer demo: forecast from init {init}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def plot_nino34(observed: xr.DataArray, forecasts: dict[str, xr.DataArray], held_out_start: Any,
                path: str | os.PathLike[str], leads: tuple[int, ...] = (1, 3, 6)) -> Path:
    """Nino3.4 index: observed, and each forecast at a few leads against valid time.

    Parameters
    ----------
    observed : xr.DataArray
        Observed index on ``time``.
    forecasts : dict
        Name -> index ``(init_time, lead_time)`` with 2-D ``valid_time``.
    held_out_start : datetime-like
        Start of the held-out period (shaded).
    path : path-like
        PNG to write.
    leads : tuple of int
        Lead step counts to draw (those present).
    """
    fig = _figure(9, 4)
    ax = fig.add_subplot()
    ax.plot(observed["time"].values, observed.values, "k-", lw=2, label="observed")
    styles = {0: "-", 1: "--", 2: ":"}
    for j, (name, index) in enumerate(forecasts.items()):
        lead_values = index["lead_time"].values
        steps = (lead_values / np.timedelta64(1, "m")).astype(int) \
            if np.issubdtype(lead_values.dtype, np.timedelta64) else lead_values.astype(int)
        for i, lead in enumerate(leads):
            pos = np.flatnonzero(steps == lead)
            if pos.size == 0:
                continue
            sel = index.isel(lead_time=int(pos[0]))
            ax.plot(sel["valid_time"].values, sel.values, styles.get(j, "-."), marker="o", ms=3,
                    color=f"C{i}", label=f"{name}, lead {lead}")
    ax.axvspan(np.datetime64(held_out_start), observed["time"].values[-1], color="0.9", zorder=0,
               label="held-out year")
    ax.axhline(0.0, color="0.5", lw=0.5)
    ax.set_ylabel(f"Nino3.4 SST anomaly ({observed.attrs.get('units', '')})")
    ax.set_title("Nino3.4 (box partly covered: the data span 5S-4.4N); anomalies w.r.t. the "
                 "training climatology", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def plot_storm_frames(fc: xr.DataArray, obs: xr.DataArray, path: str | os.PathLike[str],
                      init_index: int = 0) -> Path:
    """Observed (top) and forecast (bottom) storm frames of one init time, every lead."""
    one = fc.isel(init_time=init_index)
    n = one.sizes["lead_time"]
    fig = _figure(1.9 * n, 4.2)
    axes = fig.subplots(2, n, squeeze=False)
    for k in range(n):
        f = one.isel(lead_time=k)
        o = obs.sel(time=f["valid_time"].values, method="nearest")
        for row, (data, name) in enumerate(((o.values, "observed"), (f.values, "forecast"))):
            ax = axes[row, k]
            ax.imshow(np.clip(data, 0, 255), vmin=0, vmax=255, cmap="turbo", origin="lower")
            ax.set_title(f"{name} +{_lead_label(f['lead_time'].values)}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path
