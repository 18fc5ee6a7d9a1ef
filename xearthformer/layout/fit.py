"""Fitting a :class:`DataSpec` to training data: the channels (variables x levels), their
normalisation constants (zscore, anomaly climatology, minmax, fixed scale) from a period,
land masks, static inputs and the grid.

>>> spec = fit_spec(sst, "sst", context=12, lead=14, normalization="anomaly",
...                 period=slice("1980", "2010"))                     # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..errors import ConfigError, DataError
from .axes import Axes, XArray, find_axes
from .dataview import as_dataset, channel_data, extra_dims, require_vars, time_values
from .grid import grid_from
from .spec import CALENDAR_FEATURES, KEPT_ATTRS, NORMALIZATIONS, Channel, DataSpec, jsonable
from .timeaxis import infer_step
from .validation import check_finite


def _names(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _method_for(normalization: str | Mapping[str, Any], variable: str) -> tuple[str, dict]:
    choice = normalization.get(variable, "zscore") if isinstance(normalization, Mapping) \
        else normalization
    params: dict = {}
    if isinstance(choice, Mapping):
        params = dict(choice)
        choice = params.pop("method", "scale")
    if choice not in NORMALIZATIONS:
        raise ConfigError(
            f"normalization {choice!r} for {variable!r} is unknown; expected one of "
            f"{NORMALIZATIONS}."
        )
    if choice == "scale" and "scale" not in params:
        raise ConfigError(f"normalization 'scale' for {variable!r} needs {{'scale': ...}}.")
    return str(choice), params


def _plan_channels(ds: xr.Dataset, ax: Axes, variables: Sequence[str],
                   normalization: str | Mapping[str, Any],
                   levels: Mapping[str, Sequence[Any]] | None) -> dict[str, Channel]:
    """One channel per (variable, level), with the method and any fixed constants."""
    channels: dict[str, Channel] = {}
    for var in variables:
        method, params = _method_for(normalization, var)
        da = ds[var]
        attrs = {k: da.attrs[k] for k in KEPT_ATTRS if k in da.attrs}
        if ax.vertical is not None and ax.vertical in da.dims:
            chosen = (levels or {}).get(var, ds[ax.vertical].values)
            lv = [jsonable(np.asarray(v).item() if np.ndim(v) == 0 else v) for v in chosen]
        else:
            lv = [None]
        for level in lv:
            ch = Channel(var, level, method, float(params.get("offset", 0.0)),
                         float(params.get("scale", 1.0)), attrs)
            channels[ch.name] = ch
    return channels


def _statistics(fit: xr.Dataset, ax: Axes, channels: Mapping[str, Channel], extra: Sequence[str]
                ) -> tuple[xr.Dataset, dict[str, xr.DataArray]]:
    """Every channel's statistics (count, NaN cells, min/max, mean/std or climatology), computed."""
    stats: dict[str, xr.DataArray] = {}
    climatologies: dict[str, xr.DataArray] = {}
    for name, ch in channels.items():
        da = channel_data(fit, ax, ch, extra)
        reduce_dims = [d for d in da.dims if d not in (ax.y, ax.x)]
        stats[f"{name}/count"] = da.count()
        stats[f"{name}/nan_cells"] = da.isnull().all(reduce_dims)
        # min/max of every channel: the training range forecasts are checked against, and
        # the test for infinities and fill values before they reach a normalisation constant
        stats[f"{name}/min"] = da.min()
        stats[f"{name}/max"] = da.max()
        if ch.method == "zscore":
            stats[f"{name}/mean"] = da.mean()
            stats[f"{name}/std"] = da.std()
        elif ch.method == "anomaly":
            months = da[ax.time].dt.month
            clim = da.groupby(months).mean([d for d in reduce_dims])
            climatologies[name] = clim
            stats[f"{name}/clim"] = clim.rename(month="clim_month")
            anomalies = da.groupby(months) - clim
            stats[f"{name}/std"] = anomalies.std()
            stats[f"{name}/anomaly_min"] = anomalies.min()
            stats[f"{name}/anomaly_max"] = anomalies.max()
    computed = xr.Dataset({k.replace("/", "__"): v.drop_vars(list(v.coords)) for k, v in stats.items()})
    return computed.compute(), climatologies


def _fit_channels(fit: xr.Dataset, ax: Axes, channels: Mapping[str, Channel],
                  extra: Sequence[str], period: Any
                  ) -> tuple[dict[str, Channel], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Normalisation constants, climatologies and land masks of every channel."""
    # every statistic lazily first, then one compute (Dask shares the reads); in-memory data
    # compute at once: inf or huge values overflow in either case, and are refused below
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        stats, climatologies = _statistics(fit, ax, channels, extra)

    def stat(name: str, key: str) -> np.ndarray:
        return np.asarray(stats[f"{name}__{key}"].values)

    final: dict[str, Channel] = {}
    clim_arrays: dict[str, np.ndarray] = {}
    land: dict[str, np.ndarray] = {}
    for name, ch in channels.items():
        if int(stat(name, "count")) == 0:
            raise DataError(
                f"{name} is all NaN in the fitting period {period!r}. Fix: choose another "
                "period/variable or fill the missing values."
            )
        low, high = float(stat(name, "min")), float(stat(name, "max"))
        check_finite(np.array([low, high]), f"the training data of {name!r} (period {period!r})")
        offset, scale = ch.offset, ch.scale
        if ch.method == "zscore":
            offset, scale = float(stat(name, "mean")), float(stat(name, "std"))
        elif ch.method == "minmax":
            offset = float(stat(name, "min"))
            scale = float(stat(name, "max")) - offset
        elif ch.method == "anomaly":
            got = climatologies[name]["month"].values
            if len(got) != 12:
                raise DataError(
                    f"anomaly normalisation of {name} needs all 12 calendar months in the period "
                    f"{period!r}; found months {sorted(int(m) for m in got)}. Fix: use a period "
                    "covering whole years."
                )
            clim = stat(name, "clim").astype(np.float32)
            clim_arrays[name] = np.nan_to_num(clim, nan=0.0)  # land: no climatology needed
            offset, scale = 0.0, float(stat(name, "std"))
        elif ch.method == "none":
            offset, scale = 0.0, 1.0
        if not (np.isfinite(offset) and np.isfinite(scale)):
            raise DataError(
                f"the normalisation constants of {name!r} are not finite (offset {offset}, scale "
                f"{scale}): its training values ({low:g} .. {high:g}) overflow float arithmetic. "
                "Fix: check the data for undecoded fill values or wrong units; store it as float64 "
                "if such magnitudes are real."
            )
        if scale <= 0:
            scale = 1.0  # a constant field: keep values, only shift them
        if ch.method == "anomaly":
            bounds = (float(stat(name, "anomaly_min")) / scale, float(stat(name, "anomaly_max")) / scale)
        else:
            bounds = ((low - offset) / scale, (high - offset) / scale)
        final[name] = Channel(ch.variable, ch.level, ch.method, offset, scale, ch.attrs,
                              range=(min(bounds), max(bounds)))
        land[name] = stat(name, "nan_cells").astype(bool)

    return final, clim_arrays, land


def fit_spec(
    ds: XArray,
    variables: str | Sequence[str],
    targets: str | Sequence[str] | None = None,
    context: int = 12,
    lead: int = 12,
    normalization: str | Mapping[str, Any] = "zscore",
    period: Any = None,
    static: Sequence[str] = (),
    calendar: Sequence[str] = (),
    levels: Mapping[str, Sequence[Any]] | None = None,
) -> DataSpec:
    """Build a :class:`DataSpec` from training data.

    Parameters
    ----------
    ds : xr.Dataset or xr.DataArray
        Training data with a time axis and a lat/lon (or projected y/x) grid.
    variables : str or sequence of str
        Dynamic input variables. A variable with a vertical dim gives one channel per level.
    targets : str or sequence of str, optional
        Predicted variables (default: ``variables``).
    context, lead : int
        Input steps and predicted steps.
    normalization : str or mapping
        One of ``"zscore"`` (default), ``"anomaly"`` (minus the per-calendar-month
        climatology of ``period``, then divided by the anomalies' std), ``"minmax"``,
        ``"none"``; or a mapping variable -> method, or variable ->
        ``{"method": "scale", "offset": a, "scale": b}`` for fixed constants
        (normalised = (x - a) / b; SEVIR uses offset 0, scale 255).
    period : slice, optional
        Time slice (labels) the statistics come from; default all times.
    static : sequence of str
        Time-invariant fields of ``ds`` (land mask, orography) used as extra input channels;
        their normalised values are stored in the spec.
    calendar : sequence of str
        Calendar features (``"month"``, ``"dayofyear"``, ``"hour"``), each a sin/cos pair.
    levels : mapping, optional
        Variable -> levels to keep (default: all levels of the vertical dim).

    Returns
    -------
    DataSpec

    Raises
    ------
    DataError
        Missing variables/axes, irregular time, record shorter than context + lead,
        all-NaN variable.

    Examples
    --------
    >>> spec = fit_spec(sst, "sst", context=12, lead=14, normalization="anomaly",
    ...                 period=slice("1980", "2010"))                     # doctest: +SKIP
    """
    ds = as_dataset(ds)
    ax = find_axes(ds)
    inputs_v = _names(variables)
    targets_v = _names(targets) or inputs_v
    static = tuple(_names(static))
    calendar = tuple(_names(calendar))
    if not inputs_v:
        raise ConfigError("fit_spec needs at least one input variable.")
    if int(context) != context or int(lead) != lead or int(context) < 1 or int(lead) < 1:
        raise ConfigError(f"context and lead must be whole numbers of time steps >= 1, got "
                          f"context={context}, lead={lead}.")
    bad = [c for c in calendar if c not in CALENDAR_FEATURES]
    if bad:
        raise ConfigError(f"unknown calendar feature(s) {bad}; expected {CALENDAR_FEATURES}.")
    require_vars(ds, inputs_v, "input")
    require_vars(ds, targets_v, "target")
    require_vars(ds, static, "static")
    times = time_values(ds, ax)
    step = infer_step(times)
    if times.size < context + lead:
        raise DataError(
            f"the record has {times.size} time steps, shorter than context ({context}) + lead "
            f"({lead}) = {context + lead}. Fix: pass a longer record or shorten context/lead."
        )
    fit = ds if period is None else ds.sel({ax.time: period})
    if fit.sizes[ax.time] == 0:
        raise DataError(f"period {period!r} selects no time step of the data.")
    extra = extra_dims(ds, ax, inputs_v)

    channels = _plan_channels(ds, ax, dict.fromkeys(inputs_v + targets_v), normalization, levels)
    final, clim_arrays, land = _fit_channels(fit, ax, channels, extra, period)
    input_names = [n for v in inputs_v for n, ch in final.items() if ch.variable == v]
    target_names = [n for v in targets_v for n, ch in final.items() if ch.variable == v]
    return DataSpec(
        inputs=tuple(final[n] for n in input_names),
        targets=tuple(final[n] for n in target_names),
        grid=grid_from(ds, ax),
        step=step,
        context=int(context),
        lead=int(lead),
        static=static,
        calendar=calendar,
        calendar_name=str(ds[ax.time].dt.calendar),
        time_name=ax.time,
        vertical=ax.vertical if any(c.level is not None for c in final.values()) else None,
        vertical_attrs=jsonable(dict(ds[ax.vertical].attrs)) if ax.vertical else {},
        climatology=clim_arrays,
        static_values={s: _fit_static(ds, ax, s) for s in static},
        land_mask={n: land[n] for n in target_names},
    )


def _fit_static(ds: xr.Dataset, ax: Axes, name: str) -> np.ndarray:
    da = ds[name]
    if set(da.dims) != {ax.y, ax.x}:
        raise DataError(
            f"static input {name!r} must have exactly the grid dims ({ax.y}, {ax.x}); it has "
            f"{da.dims}. Fix: select one time/level, e.g. ds[{name!r}].isel(time=0)."
        )
    values = da.transpose(ax.y, ax.x).values.astype(np.float64)
    if not np.isfinite(values).any():
        raise DataError(f"static input {name!r} is all NaN.")
    std = np.nanstd(values)
    z = (values - np.nanmean(values)) / (std if std > 0 else 1.0)
    return np.nan_to_num(z, nan=0.0).astype(np.float32)
