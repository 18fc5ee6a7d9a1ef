"""Reference forecasts the demos score against, on a forecast's (init_time, lead_time) axes.

>>> ref = persistence(obs, fc)                                      # doctest: +SKIP
"""

from __future__ import annotations

import xarray as xr


def persistence(obs: xr.DataArray, fc: xr.DataArray) -> xr.DataArray:
    """The observation at init time, repeated for every lead, on the forecast's axes
    (``init_time``, ``lead_time``, ``valid_time``)."""
    at_init = obs.sel(time=fc["init_time"].values).rename(time="init_time")
    at_init = at_init.assign_coords(init_time=fc["init_time"].values)
    out = at_init.expand_dims(lead_time=fc["lead_time"].values, axis=1)
    return out.assign_coords(lead_time=fc["lead_time"], valid_time=fc["valid_time"])


def climatology_at_valid(clim: xr.DataArray, fc: xr.DataArray) -> xr.DataArray:
    """A monthly climatology (dim ``month``) at each of the forecast's valid times."""
    out = clim.sel(month=fc["valid_time"].dt.month).drop_vars("month")
    return out.assign_coords(valid_time=fc["valid_time"])


def anomaly_persistence(obs: xr.DataArray, fc: xr.DataArray, clim: xr.DataArray) -> xr.DataArray:
    """The anomaly at init time (w.r.t. the monthly ``clim``), kept for every lead, added to the
    valid month's climatology."""
    base = persistence(obs, fc)
    init_clim = clim.sel(month=fc["init_time"].dt.month).drop_vars("month")
    return (base - init_clim + climatology_at_valid(clim, fc)).transpose(*base.dims)
