"""Shared plumbing of the metrics: input coercion, observation alignment, dims, weights.

Axis finding, laziness and the cos(latitude) area weights are :mod:`xearthformer.layout`'s
(one definition each); this module adapts them to forecast/observation pairs.

Nothing here scores anything. Every public metric goes through :func:`prepare_pair` (turn
numpy/torch/xarray into aligned xarray objects) and :func:`reduce_dims` (which dims to
reduce over), so they all agree on conventions:

* observations on ``time`` are matched to a forecast's 2-D ``valid_time(init_time, lead_time)``
  (a time dim of another name, e.g. ``TIME``, is found by its CF attributes or datetimes);
* spatial coordinates must agree (differences in longitude convention are mended);
* by default every dim is reduced except ``lead_time``, ``threshold``, ``member`` and
  ``control`` (one entry per knowledge-control setting of a sweep); scores over members keep
  :data:`KEEP_OVER_MEMBERS`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any, Union

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import DataError
# axis finding and laziness are layout's; the metrics modules import them from here
from ..layout.axes import find_coord  # noqa: F401
from ..layout.dataview import is_lazy  # noqa: F401
from ..layout.spec import coslat
from ..layout.validation import check_pair

LEAD = "lead_time"
INIT = "init_time"
VALID = "valid_time"
TIME = "time"
MEMBER = "member"
THRESHOLD = "threshold"
CONTROL = "control"
KEEP_BY_DEFAULT = (LEAD, THRESHOLD, MEMBER, CONTROL)
#: dims kept by default by scores that reduce over ``member`` themselves (ensemble scores)
KEEP_OVER_MEMBERS = (LEAD, THRESHOLD, CONTROL)

XArray = Union[xr.DataArray, xr.Dataset]
Dims = Union[str, Sequence[Hashable], None]

def to_xarray(obj: Any, like: XArray | None = None) -> XArray:
    """Return ``obj`` as an xarray object; numpy arrays and torch tensors are wrapped.

    A plain array takes the dims and coords of ``like`` when the shapes match, otherwise the
    generic dims ``dim_0, dim_1, ...``.
    """
    if isinstance(obj, (xr.DataArray, xr.Dataset)):
        return obj
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # torch tensor, without importing torch
        obj = obj.detach().cpu().numpy()
    try:
        array = np.asarray(obj)
    except Exception as err:  # pragma: no cover - exotic inputs
        raise DataError(
            f"cannot use an object of type {type(obj).__name__} as data; expected an xarray "
            "DataArray/Dataset, a numpy array or a torch tensor"
        ) from err
    if isinstance(like, xr.DataArray) and like.shape == array.shape:
        return xr.DataArray(array, dims=like.dims, coords=like.coords)
    return xr.DataArray(array, dims=[f"dim_{i}" for i in range(array.ndim)])


def single_variable(obj: XArray, what: str) -> xr.DataArray:
    """The one data variable of ``obj`` (a DataArray is returned unchanged)."""
    if isinstance(obj, xr.DataArray):
        return obj
    names = list(obj.data_vars)
    if len(names) != 1:
        raise DataError(
            f"{what} is a Dataset with data variables {names}; this metric needs exactly one. "
            f"Select one first, e.g. ds[{names[0]!r}]" if names else f"{what} has no data variables"
        )
    return obj[names[0]]


def time_dim(obj: XArray) -> Hashable | None:
    """Name of the time dim of observations: ``time`` if present, else the one dim whose
    coordinate is CF-tagged as time (``standard_name`` ``time`` or ``axis`` ``T``) or holds
    datetimes (numpy or cftime), e.g. ``TIME``. None for forecasts (``init_time``/``lead_time``)
    and when there is no such dim or more than one."""
    if not isinstance(obj, (xr.DataArray, xr.Dataset)) or INIT in obj.dims or LEAD in obj.dims:
        return None
    if TIME in obj.dims:
        return TIME
    found = [
        d for d in obj.dims
        if d in obj.coords and (
            obj[d].attrs.get("standard_name") == "time"
            or obj[d].attrs.get("axis") == "T"
            or isinstance(obj.indexes.get(d), (pd.DatetimeIndex, xr.CFTimeIndex))
        )
    ]
    return found[0] if len(found) == 1 else None


def standard_time(obj: XArray) -> XArray:
    """``obj`` with its time dim (see :func:`time_dim`) renamed to ``time`` when it has
    another name (``TIME``, ``t``, ``date``...), so that every metric sees observations the
    same way. Anything else is returned as it is.

    >>> import pandas as pd, xarray as xr
    >>> da = xr.DataArray([1.0, 2.0], dims="TIME", coords={"TIME": pd.date_range("2000", periods=2)})
    >>> standard_time(da).dims
    ('time',)
    """
    name = time_dim(obj)
    taken = TIME in obj.coords or (isinstance(obj, xr.Dataset) and TIME in obj.data_vars)
    if name is None or name == TIME or taken:
        return obj
    return obj.rename({name: TIME})


def _month_number(times: xr.DataArray) -> xr.DataArray:
    """Months since year 0 (works for numpy datetimes and cftime alike)."""
    return times.dt.year * 12 + times.dt.month - 1


#: what ``obs_resample`` may be: None (refuse observations finer than a calendar-step forecast)
#: or "mean" (average them over each calendar month/year first)
OBS_RESAMPLE = (None, "mean")


def _calendar_step(forecast: XArray) -> str | None:
    """"months"/"years" for a forecast with calendar-step leads, else None."""
    if LEAD in forecast.coords:
        units = str(forecast[LEAD].attrs.get("units", ""))
        if units in ("months", "month"):
            return "months"
        if units in ("years", "year"):
            return "years"
    return None


def _periods(times: xr.DataArray, step: str) -> np.ndarray:
    months = np.asarray(_month_number(times).values)
    return months // 12 if step == "years" else months


def _finer_than(observed: XArray, step: str) -> int:
    """The most observations that fall in one calendar month (year, for yearly steps)."""
    periods = _periods(observed[TIME], step)
    return int(np.unique(periods, return_counts=True)[1].max()) if periods.size else 0


def resample_observations(observed: XArray, step: str, how: str = "mean") -> XArray:
    """Observations averaged over each calendar month (``step="months"``) or year, labelled by
    the period's start: what a monthly forecast is compared with.

    >>> import pandas as pd, xarray as xr
    >>> daily = xr.DataArray(range(59), dims="time", coords={"time": pd.date_range("2000-01-01", periods=59)})
    >>> resample_observations(daily, "months").values.tolist()
    [15.0, 44.5]
    """
    if how != "mean":
        raise DataError(f"obs_resample={how!r} is not known; expected one of {OBS_RESAMPLE}")
    return observed.resample({TIME: "MS" if step == "months" else "YS"}).mean()


def align_to_valid_time(forecast: XArray, observed: XArray, obs_resample: str | None = None) -> XArray:
    """Observations on ``time`` re-indexed onto the forecast's ``valid_time(init_time, lead_time)``.

    Exact time matches are used first. Monthly (yearly) data are matched by calendar month
    (year) where no exact match exists, since monthly means are stamped on different days by
    different producers; that fallback serves only the points that need it. Observations
    finer than a calendar-step forecast (daily observations, a monthly forecast) are refused,
    or averaged over each calendar month first with ``obs_resample="mean"``: matching one day
    of a month to a monthly value would be a silent wrong answer. Valid times without an
    observation become NaN (and are skipped by the scores); none at all is an error.
    """
    if obs_resample not in OBS_RESAMPLE:
        raise DataError(f"obs_resample={obs_resample!r} is not known; expected one of {OBS_RESAMPLE}")
    step = _calendar_step(forecast)
    if step is not None and _finer_than(observed, step) > 1:
        if obs_resample is None:
            raise DataError(
                f"the observations are finer than the forecast: up to {_finer_than(observed, step)} "
                f"values fall in one calendar {step[:-1]}, while the forecast has one per {step[:-1]}. "
                "Matching one of them to the forecast would be arbitrary. Fix: pass "
                f"obs_resample='mean' (to rmse, mse, mae, mean_bias, acc) to average them over each "
                f"{step[:-1]} first, or resample them yourself: obs.resample(time="
                f"{'MS' if step == 'months' else 'YS'!r}).mean()")
        observed = resample_observations(observed, step, obs_resample)
    valid = valid_times(forecast)
    obs_times = observed[TIME]
    index = obs_times.to_index()
    flat = valid.values.ravel()
    positions = np.asarray(index.get_indexer(flat))
    missing = positions < 0
    if missing.any() and (step is not None or _is_monthly(forecast, observed)):
        by = step or "months"
        obs_period = _periods(obs_times, by)
        if np.unique(obs_period).size == obs_period.size:  # one observation per period
            lookup = {int(m): i for i, m in enumerate(obs_period)}
            want = _periods(valid, by).ravel()
            positions[missing] = [lookup.get(int(m), -1) for m in want[missing]]
    if (positions < 0).all():
        raise DataError(
            f"none of the forecast's valid times ({flat.min()} .. {flat.max()}) is in the "
            f"observations' time axis ({index.min()} .. {index.max()}); expected observations "
            "covering the verification period. Select matching periods or check the calendars"
        )
    indexer = xr.DataArray(positions.reshape(valid.shape), dims=valid.dims)
    if valid.ndim == 2:
        # 1-D take + reshape: vectorised 2-D indexing would cut Dask arrays into tiny chunks
        picked = observed.isel({TIME: np.where(positions >= 0, positions, 0)})
        picked = picked.drop_vars(TIME, errors="ignore").coarsen({TIME: valid.shape[1]}).construct(
            {TIME: valid.dims})
    else:
        picked = observed.isel({TIME: xr.where(indexer >= 0, indexer, 0)})
    if (positions < 0).any():
        picked = picked.where(indexer >= 0)
    picked = picked.drop_vars(TIME, errors="ignore")
    coords = {d: forecast[d] for d in valid.dims if d in forecast.coords}
    # no valid_time on the result: comparing it with the forecast's (maybe lazy) one would
    # force a computation in every arithmetic operation
    return picked.assign_coords(coords)


def valid_times(forecast: XArray) -> xr.DataArray:
    """The forecast's ``valid_time`` as an in-memory (numpy) coordinate.

    Opened lazily (Zarr, ``.chunk()``) it is a Dask array; rather than compute it, rebuild it
    from the ``init_time`` and ``lead_time`` indexes when the lead is a timedelta or a
    number of months (month start of the valid month). Otherwise it is loaded (it is small).
    """
    valid = forecast[VALID]
    if valid.chunks is None:
        return valid
    if INIT in forecast.indexes and LEAD in forecast.indexes:
        init, lead = forecast[INIT], forecast[LEAD]
        if np.issubdtype(lead.dtype, np.timedelta64) and np.issubdtype(init.dtype, np.datetime64):
            return (init + lead).transpose(*valid.dims).rename(VALID)
        if lead.attrs.get("units") in ("months", "month") and np.issubdtype(init.dtype, np.datetime64):
            months = init.values.astype("datetime64[M]")[:, None] + lead.values.astype(int)[None, :]
            out = xr.DataArray(months.astype("datetime64[ns]"), dims=(INIT, LEAD),
                               coords={INIT: init, LEAD: lead}, name=VALID)
            return out.transpose(*valid.dims)
    return valid.compute()


def _is_monthly(forecast: XArray, observed: XArray) -> bool:
    """Monthly data: lead_time in months, or observations one calendar month apart."""
    if LEAD in forecast.coords and forecast[LEAD].attrs.get("units") in ("months", "month"):
        return True
    times = observed[TIME]
    if times.size < 2:
        return False
    try:
        step = np.diff(np.asarray(_month_number(times).values))
    except (AttributeError, TypeError):
        return False
    return bool(np.all(step == 1))


def _lon_convention(lon: np.ndarray) -> float:
    """Start of the longitude range: -180 for [-180, 180), 0 for [0, 360)."""
    return -180.0 if np.nanmin(lon) < 0 else 0.0


def match_longitude(obj: XArray, like: XArray) -> XArray:
    """``obj`` with its longitudes wrapped into the convention of ``like`` (and sorted)."""
    lon, lon_like = find_coord(obj, "longitude"), find_coord(like, "longitude")
    if lon is None or lon_like is None or lon not in obj.dims:
        return obj
    start = _lon_convention(np.asarray(like[lon_like].values))
    values = np.asarray(obj[lon].values, dtype=float)
    wrapped = (values - start) % 360.0 + start
    if np.array_equal(wrapped, values):
        return obj
    out = obj.assign_coords({lon: wrapped.astype(obj[lon].dtype)})
    out[lon].attrs.update(obj[lon].attrs)
    return out.sortby(lon)


def _harmonise_coords(observed: XArray, forecast: XArray) -> XArray:
    """Give ``observed`` the forecast's coordinate values where they agree to float precision,
    so that exact alignment does not fail on float32/float64 round-off."""
    updates = {}
    for dim in set(observed.dims) & set(forecast.dims):
        if dim not in observed.indexes or dim not in forecast.indexes:
            continue
        a, b = observed[dim].values, forecast[dim].values
        if a.shape == b.shape and not np.array_equal(a, b):
            if np.issubdtype(a.dtype, np.number) and np.issubdtype(b.dtype, np.number):
                if np.allclose(a, b, rtol=1e-6, atol=1e-6):
                    updates[dim] = forecast[dim]
    return observed.assign_coords(updates) if updates else observed


def prepare_pair(forecast: Any, observed: Any, obs_resample: str | None = None) -> tuple[XArray, XArray]:
    """Coerce, validate and align a forecast/observation pair.

    The pair goes through the one validation
    (:func:`xearthformer.layout.validation.check_pair`: numbers, no undecoded packing
    attributes, the same units, no +-inf or fill values), then observations on ``time`` are
    aligned to the forecast's ``valid_time`` (:func:`align_to_valid_time`, ``obs_resample``).

    Returns xarray objects with identical shared coordinates. Raises
    :class:`~xearthformer.errors.DataError` when they cannot be used or matched.
    """
    fc = to_xarray(forecast)
    obs = to_xarray(observed, like=fc)
    if isinstance(fc, xr.DataArray) and not isinstance(forecast, (xr.DataArray, xr.Dataset)):
        fc = to_xarray(forecast, like=obs)
    fc, obs = check_pair(fc, obs)
    if VALID in fc.coords and TIME not in fc.dims:
        obs = standard_time(obs)  # e.g. observations on a CF time dim named TIME
    if VALID in fc.coords and TIME in obs.dims and TIME not in fc.dims:
        obs = align_to_valid_time(fc, obs, obs_resample)
    elif VALID in fc.coords and set(obs.dims) - set(fc.dims):
        # without this, xarray would broadcast the observations against every forecast
        raise DataError(
            f"cannot match the observations (dims {list(obs.dims)}) to the forecast's "
            f"valid_time: found no time dim among {sorted(map(str, set(obs.dims) - set(fc.dims)))}. "
            "Expected a dim named 'time', or one whose coordinate holds datetimes or has "
            "standard_name='time'. Fix: obs.rename({NAME: 'time'})"
        )
    obs = _harmonise_coords(match_longitude(obs, fc), fc)
    for dim in set(fc.dims) & set(obs.dims):
        if fc.sizes[dim] != obs.sizes[dim] and not (dim in fc.indexes and dim in obs.indexes):
            raise DataError(
                f"forecast and observed have different sizes along {dim!r} "
                f"({fc.sizes[dim]} vs {obs.sizes[dim]}); expected the same grid. Regrid or "
                "select matching points first"
            )
    try:
        fc, obs = xr.align(fc, obs, join="exact")
    except ValueError as err:
        bad = [
            d for d in set(fc.dims) & set(obs.dims)
            if d in fc.indexes and d in obs.indexes and not fc.indexes[d].equals(obs.indexes[d])
        ]
        detail = ", ".join(
            f"{d}: forecast {_summary(fc[d])} vs observed {_summary(obs[d])}" for d in bad
        )
        raise DataError(
            f"forecast and observed coordinates differ ({detail or err}); expected the same "
            "grid and times. Regrid, or select the common points with xr.align(..., join='inner')"
        ) from err
    return fc, obs


def shared_variables(forecast: XArray, observed: XArray) -> None:
    """Refuse two Datasets without a common variable name: Dataset arithmetic keeps only the
    shared variables, so the score would silently be an empty Dataset."""
    if isinstance(forecast, xr.Dataset) and isinstance(observed, xr.Dataset):
        if not set(forecast.data_vars) & set(observed.data_vars):
            raise DataError(
                f"forecast variables {sorted(map(str, forecast.data_vars))} and observed "
                f"variables {sorted(map(str, observed.data_vars))} have no name in common; "
                "expected the same names. Fix: rename one (obs.rename({'old': 'new'})) or pass "
                "DataArrays, e.g. fc['sst'], obs['SST']"
            )


def _summary(coord: xr.DataArray) -> str:
    values = coord.values
    if values.size == 0:
        return "[]"
    return f"[{values[0]} .. {values[-1]}] ({values.size} values)"


def reduce_dims(obj: XArray, dim: Dims, keep: Iterable[Hashable] = KEEP_BY_DEFAULT) -> list[Hashable]:
    """The dims to reduce over: ``dim`` as a list, or by default every dim of ``obj`` except
    those in ``keep``. Unknown names raise DataError."""
    if dim is None:
        keep = set(keep)
        return [d for d in obj.dims if d not in keep]
    dims = [dim] if isinstance(dim, str) else list(dim)
    missing = [d for d in dims if d not in obj.dims]
    if missing:
        raise DataError(
            f"cannot reduce over {missing}: not dims of the data (dims are {list(obj.dims)}); "
            "pass names from that list, or dim=None for the default"
        )
    return dims


def area_weights(obj: XArray, weights: Any) -> xr.DataArray | None:
    """Weights for weighted means: None, ``"coslat"`` (cosine of latitude) or an array."""
    if weights is None:
        return None
    if isinstance(weights, str):
        if weights not in ("coslat", "cos_lat", "area"):
            raise DataError(f"unknown weights {weights!r}; expected None, 'coslat' or a DataArray")
        lat = find_coord(obj, "latitude")
        if lat is None:
            raise DataError(
                f"weights='coslat' needs a latitude coordinate; found coords {list(obj.coords)}. "
                "Add CF attributes (standard_name='latitude') or name it 'lat'/'latitude'"
            )
        return coslat(obj[lat].astype(float))
    return to_xarray(weights)


def weighted_mean(values: XArray, dims: list[Hashable], weights: xr.DataArray | None) -> XArray:
    """Mean of ``values`` over ``dims`` skipping NaN, optionally weighted."""
    if not dims:
        return values
    if weights is None:
        return values.mean(dims, skipna=True)
    # weights only where the value exists, so missing points change neither sum
    w = xr.where(values.notnull(), weights, np.nan)
    den = w.sum(dims, skipna=True)
    return (values * w).sum(dims, skipna=True) / den.where(den > 0)


def named(result: XArray, name: str) -> XArray:
    """A DataArray score renamed ``name``; a Dataset keeps one score per variable.

    Attributes inherited along the way (the variable's units, a weights coordinate's
    ``standard_name: latitude``, the forecast's ``Conventions``/``history``) describe the inputs,
    not the score, so they are replaced by a ``long_name`` saying what the score is.
    """
    out = (result.rename(name) if isinstance(result, xr.DataArray) else result).copy(deep=False)
    out.attrs = {"long_name": name} if isinstance(out, xr.DataArray) else {}
    if isinstance(out, xr.Dataset):
        for var in out.data_vars:
            out[var].attrs = {"long_name": f"{name} of {var}"}
    return out


def both_valid(forecast: XArray, observed: XArray) -> XArray:
    """Mask of points where both forecast and observation are present (not NaN)."""
    return forecast.notnull() & observed.notnull()
