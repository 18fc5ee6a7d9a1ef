"""The one validation of labelled data: what every entry point (training, forecasting, ensembles,
the metrics, the archive command) checks, and the one message for each problem.

Each check runs at the root of the data path that needs it, so no entry point can skip it:

* **variables** (:func:`check_variable`, from :func:`~xearthformer.layout.dataview.channel_data`
  for training and forecasting and from :func:`check_pair` for the metrics): a numeric dtype;
  no packing attributes left undecoded (``scale_factor``, ``add_offset``, ``_FillValue``,
  ``missing_value`` still in ``attrs`` mean the file was read with ``mask_and_scale=False``, so
  fill values and packed integers would be taken as data); units that match
  (:func:`check_units`: CF units parsed by ``cf_units``, so ``K`` and ``kelvin`` are one unit
  and ``degC`` data for a ``K`` model is refused with the conversion).
* **values** (:func:`check_finite`): NaN means missing (land, gaps) and stays so; +-inf and
  magnitudes >= :data:`FILL_MAGNITUDE` (an undecoded fill value such as netCDF's 9.97e36, or
  an overflow) are refused in every window a model reads and in the training statistics.
* **range** (:func:`check_range`): forecast inputs must lie within the training minimum and
  maximum (kept in the spec, in normalised units), widened on each side by ``margin`` times
  their distance (:data:`DEFAULT_RANGE_MARGIN`). Real extremes pass; fill values and data in
  other units without a ``units`` attribute (degC for a K model) do not.
* **time** (:func:`check_time_index`, :func:`init_labels`, :func:`check_calendar`): times are
  dates without a time zone; init times may be ``datetime.date`` (midnight) but not
  time-zone aware; the data's calendar suits the model's step.
* **grids** (:func:`check_same_grid`): the files of one archive share one grid.

Irregular time steps are :func:`xearthformer.layout.timeaxis.infer_step`'s, grid matching is
:func:`xearthformer.layout.grid.match_grid`'s; both raise :class:`~xearthformer.errors.DataError`
with what was found and the fix, as every check here does.

>>> check_units("kelvin", "K", "t2m")          # one unit, two spellings: passes
>>> unit_conversion("degC", "K")
'K = degC + 273.15'
"""

from __future__ import annotations

import datetime as _dt
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import DataError
from .spec import Channel, DataSpec
from .timeaxis import format_time

#: magnitudes from this on are fill values or overflows, never data (netCDF's default float
#: fill is 9.97e36, CMIP's missing value 1e20 is refused through its ``missing_value`` attribute)
FILL_MAGNITUDE = 1e30
#: attributes that xarray moves into ``encoding`` when it decodes a variable
PACKING_ATTRS = ("scale_factor", "add_offset", "_FillValue", "missing_value")
#: forecast inputs may lie this many training ranges beyond the training min/max (each side)
DEFAULT_RANGE_MARGIN = 1.0
#: calendars that agree on every date they share (CF names)
CALENDAR_GROUPS: tuple[frozenset[str], ...] = (
    frozenset({"standard", "gregorian", "proleptic_gregorian"}),
    frozenset({"noleap", "365_day"}),
    frozenset({"all_leap", "366_day"}),
    frozenset({"360_day"}),
    frozenset({"julian"}),
)
#: units tried when a forecast input is out of range, to suggest what the data may be in
_SUGGESTED_UNITS = ("K", "degC", "degF", "Pa", "hPa", "m", "km", "cm", "mm", "m s-1", "km h-1",
                    "kg m-2 s-1", "mm h-1", "mm day-1", "1", "%", "kg kg-1", "g kg-1")


# ----------------------------------------------------------------------------------------------
# variables: dtype, packing, units
# ----------------------------------------------------------------------------------------------
def check_dtype(da: xr.DataArray, name: Hashable) -> None:
    """Refuse a variable that does not hold numbers (strings, dates, complex, objects).

    >>> check_dtype(xr.DataArray(["a"]), "sst")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xearthformer.errors.DataError: variable 'sst' holds <U1 values; expected numbers ...
    """
    if np.dtype(da.dtype).kind not in "biuf":
        raise DataError(
            f"variable {name!r} holds {np.dtype(da.dtype)} values; expected numbers "
            "(float or integer). Fix: pass the numeric variable, or decode it (xr.decode_cf)."
        )


def check_packing(da: xr.DataArray, name: Hashable) -> None:
    """Refuse a variable whose packing attributes were not decoded.

    xarray decodes ``scale_factor``/``add_offset``/``_FillValue``/``missing_value`` into
    ``encoding`` when it opens a file; still in ``attrs`` they mean the file was read with
    ``mask_and_scale=False`` (or ``decode_cf=False``): fill values would be taken as data and
    packed integers would not be scaled.
    """
    left = [a for a in PACKING_ATTRS if a in da.attrs]
    if left:
        raise DataError(
            f"variable {name!r} still carries the packing attribute(s) {left} (e.g. "
            f"{left[0]}={da.attrs[left[0]]!r}): it was read without decoding, so fill values "
            "and packed integers would be taken as data. Fix: open the file decoded (the default "
            "of xr.open_dataset; drop mask_and_scale=False/decode_cf=False) or decode it: "
            "ds = xr.decode_cf(ds)."
        )


def _unit(text: Any) -> Any:
    """``text`` parsed as a CF (UDUNITS) unit, or None when it is missing or unparseable."""
    if text is None or not str(text).strip():
        return None
    import cf_units

    try:
        unit = cf_units.Unit(str(text).strip())
    except ValueError:
        return None
    return None if unit.is_unknown() or unit.is_no_unit() else unit


def _plain(text: Any) -> str:
    return "".join(str(text).split()).lower()


def units_equal(a: Any, b: Any) -> bool:
    """True when two units attributes name the same unit (``K`` and ``kelvin``; ``m/s`` and
    ``m s-1``); texts that are not CF units compare as case- and space-insensitive strings.

    >>> units_equal("K", "kelvin"), units_equal("degC", "K"), units_equal("dBZ", "dbz")
    (True, False, True)
    """
    ua, ub = _unit(a), _unit(b)
    if ua is None or ub is None:
        return _plain(a) == _plain(b)
    return bool(ua == ub)


def _number(x: float) -> str:
    return f"{x:.6g}"


def unit_conversion(got: Any, want: Any) -> str | None:
    """How to convert values in ``got`` to ``want`` as text (``"K = degC + 273.15"``), or None
    when the two are not convertible (or not CF units).

    >>> unit_conversion("mm h-1", "m h-1")
    'm h-1 = 0.001 * mm h-1'
    """
    ua, ub = _unit(got), _unit(want)
    if ua is None or ub is None or not ua.is_convertible(ub) or ua == ub:
        return None
    offset = float(ua.convert(0.0, ub))
    factor = float(ua.convert(1.0, ub)) - offset
    scaled = got if np.isclose(factor, 1.0, rtol=1e-12) else f"{_number(factor)} * {got}"
    if abs(offset) < 1e-12 * max(1.0, abs(factor)):
        return f"{want} = {scaled}"
    return f"{want} = {scaled} {'+' if offset > 0 else '-'} {_number(abs(offset))}"


def check_units(got: Any, want: Any, variable: Hashable, *, have: str = "the data",
                expected: str = "the model was trained on") -> None:
    """Refuse ``got`` units where ``want`` are needed; passes when either is missing (the
    range check then catches data in other units) or both name one unit.

    >>> check_units("degC", "K", "t2m")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xearthformer.errors.DataError: 't2m' of the data is in 'degC', but the model was trained on ...
    """
    if got is None or want is None or not str(got).strip() or not str(want).strip():
        return
    if units_equal(got, want):
        return
    how = unit_conversion(got, want)
    fix = (f"convert it ({how})" if how else
           f"convert it to {want!r}, or check that it is the same quantity")
    raise DataError(
        f"{variable!r} of {have} is in {str(got)!r}, but {expected} {variable!r} in {str(want)!r}. "
        f"Fix: {fix}, e.g. ds[{str(variable)!r}] = <converted>; set attrs['units'] = "
        f"{str(want)!r} only if the two are really the same unit."
    )


def check_variable(da: xr.DataArray, name: Hashable, units: Any = None, **unit_roles: str) -> None:
    """The checks of one variable that need no data: dtype, packing, units against ``units``
    (the model's; None skips). ``unit_roles`` go to :func:`check_units` (``have``, ``expected``).
    """
    check_dtype(da, name)
    check_packing(da, name)
    check_units(da.attrs.get("units"), units, name, **unit_roles)


# ----------------------------------------------------------------------------------------------
# values: infinities, fill values, the training range
# ----------------------------------------------------------------------------------------------
def check_finite(values: Any, what: str, times: Any = None) -> None:
    """Refuse +-inf and magnitudes >= :data:`FILL_MAGNITUDE` in ``values``; NaN passes.

    Parameters
    ----------
    values : array-like
        Raw values; when ``times`` is given its first axis is time.
    what : str
        What the values are (named in the message).
    times : array-like, optional
        Time of each index of the first axis, to say where the first bad value is.

    >>> check_finite(np.array([1.0, np.nan]), "sst")
    >>> check_finite(np.array([1.0, np.inf]), "sst")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xearthformer.errors.DataError: sst holds 1 infinite or fill-like value(s) (inf)...
    """
    v = np.asarray(values)
    if v.dtype.kind not in "fc" or v.size == 0:
        return
    with np.errstate(invalid="ignore"):
        bad = np.abs(v) >= FILL_MAGNITUDE  # inf included; NaN compares False
    if not bad.any():
        return
    first = np.unravel_index(int(np.argmax(bad)), bad.shape)
    value = v[first]
    where = ""
    if times is not None and v.ndim >= 1:
        where = f", first at {format_time(np.asarray(times)[first[0]])}"
    raise DataError(
        f"{what} holds {int(bad.sum())} infinite or fill-like value(s) ({value:g}{where}). NaN "
        f"marks missing data; +-inf and |x| >= {FILL_MAGNITUDE:g} are undecoded fill values or "
        "overflows, never data. Fix: open the file decoded (drop mask_and_scale=False) or mark them "
        "missing: ds = ds.where(np.isfinite(ds) & (abs(ds) < 1e30))."
    )


def _raise_if_not_finite(block: np.ndarray, what: str) -> np.ndarray:
    check_finite(block, what)
    return block


def finite_checked(obj: Any, what: str) -> Any:
    """``obj`` (DataArray or Dataset) with :func:`check_finite` applied: at once to in-memory
    variables, when computed to Dask-backed ones (each block is checked as it is read)."""
    if isinstance(obj, xr.Dataset):
        return obj.assign({name: finite_checked(var, f"{what} {name!r}")
                           for name, var in obj.data_vars.items()})
    if not isinstance(obj, xr.DataArray) or np.dtype(obj.dtype).kind not in "fc":
        return obj
    if obj.chunks is None:
        check_finite(obj.values, what)
        return obj
    checked = obj.data.map_blocks(_raise_if_not_finite, what, dtype=obj.dtype)
    return obj.copy(data=checked)


def training_range(lo: float, hi: float, margin: float) -> tuple[float, float]:
    """The accepted interval of normalised inputs: ``[lo, hi]`` widened on each side by
    ``margin`` times its width (at least 1 normalised unit wide, so that a field constant in
    training still accepts small departures).

    >>> training_range(-2.0, 3.0, 1.0)
    (-7.0, 8.0)
    """
    width = max(float(hi) - float(lo), 1.0)
    return float(lo) - margin * width, float(hi) + margin * width


def _raw(ch: Channel, value: float) -> str:
    """A normalised value in the channel's own units (anomaly channels stay anomalies)."""
    raw = float(ch.denormalise(np.float64(value))) if ch.method != "anomaly" else float(value * ch.scale)
    return _number(raw)


def _units_hint(ch: Channel, lo_raw: float, hi_raw: float, bounds: tuple[float, float]) -> str:
    """A guess at the units the data are in, when converting from them would fit."""
    want = ch.attrs.get("units")
    target = _unit(want)
    if target is None or ch.method == "anomaly":
        return ""
    allowed = [float(ch.denormalise(np.float64(b))) for b in bounds]
    for name in _SUGGESTED_UNITS:
        unit = _unit(name)
        if unit is None or unit == target or not unit.is_convertible(target):
            continue
        lo, hi = (float(unit.convert(v, target)) for v in (lo_raw, hi_raw))
        if allowed[0] <= min(lo, hi) and max(lo, hi) <= allowed[1]:
            return (f" The values would fit if they were in {name!r}: convert them "
                    f"({unit_conversion(name, want)}) or give the variable its units attribute.")
    return ""


def check_range(values: np.ndarray, ch: Channel, margin: float | None, times: Any = None,
                what: str = "the forecast input") -> None:
    """Refuse normalised ``values`` of channel ``ch`` outside its training range widened by
    ``margin`` (see :func:`training_range`); NaN is ignored. Passes when ``margin`` is None or
    the channel has no stored range (a bundle written before ranges were stored).

    Parameters
    ----------
    values : np.ndarray
        Normalised values, NaN where missing; when ``times`` is given its first axis is time.
    ch : Channel
        The model's channel (``range`` holds the normalised training min/max).
    margin : float or None
        Widening of the range on each side, in multiples of its width.
    times : array-like, optional
        Time of each index of the first axis (named in the message).
    what : str
        What the values are.
    """
    if margin is None or ch.range is None:
        return
    v = np.asarray(values)
    if v.size == 0:
        return
    with warnings.catch_warnings():  # an all-NaN input gives NaN, and nothing to check
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = float(np.nanmin(v)), float(np.nanmax(v))
    lo_ok, hi_ok = training_range(*ch.range, float(margin))
    if not (np.isfinite(low) and np.isfinite(high)) or (lo_ok <= low and high <= hi_ok):
        return
    with np.errstate(invalid="ignore"):
        outside = (v < lo_ok) | (v > hi_ok)
    first = np.unravel_index(int(np.argmax(outside)), outside.shape)
    where = f", first at {format_time(np.asarray(times)[first[0]])}" if times is not None else ""
    units = ch.attrs.get("units")
    unit_text = f" {units}" if units else ""
    kind = " (anomalies)" if ch.method == "anomaly" else ""
    lo_raw = float(ch.denormalise(np.float64(low))) if ch.method != "anomaly" else low * ch.scale
    hi_raw = float(ch.denormalise(np.float64(high))) if ch.method != "anomaly" else high * ch.scale
    hint = _units_hint(ch, lo_raw, hi_raw, (lo_ok, hi_ok))
    if not hint and max(abs(lo_raw), abs(hi_raw)) >= 1e15:
        hint = " Values this large are usually undecoded fill values: open the file decoded."
    raise DataError(
        f"{what} {ch.name!r}{kind} has {int(outside.sum())} value(s) outside what the model was "
        f"trained on: it ranges {_number(lo_raw)} .. {_number(hi_raw)}{unit_text}{where}; training "
        f"ranged {_raw(ch, ch.range[0])} .. {_raw(ch, ch.range[1])}{unit_text}, and inputs are "
        f"accepted within {_raw(ch, lo_ok)} .. {_raw(ch, hi_ok)} (the range widened by "
        f"range_margin={margin:g} times its width on each side).{hint} Fix: check the units and "
        "fill values of the data; if these values are real, pass a larger range_margin (None "
        "skips the check)."
    )


# ----------------------------------------------------------------------------------------------
# time
# ----------------------------------------------------------------------------------------------
def _tz(value: Any) -> Any:
    return getattr(value, "tzinfo", None) if not isinstance(value, np.datetime64) else None


def check_time_index(values: Any, name: Hashable = "time") -> None:
    """Refuse a time coordinate that is time-zone aware (CF times carry no zone).

    ``values`` is a pandas index or an array of times.
    """
    tz = getattr(values, "tz", None)
    if tz is None:
        arr = np.asarray(values)
        if arr.dtype.kind == "O" and arr.size and _tz(arr.flat[0]) is not None:
            tz = _tz(arr.flat[0])
    if tz is not None:
        raise DataError(
            f"the time coordinate {name!r} is time-zone aware ({tz}); CF times carry no zone (UTC "
            f"by convention), and forecasts are labelled so. Fix: convert it to UTC without a zone: "
            f"ds = ds.assign_coords({name}=ds.indexes[{str(name)!r}].tz_convert(None))."
        )


def _init_label(value: Any) -> Any:
    if isinstance(value, _dt.date) and not isinstance(value, _dt.datetime):
        return f"{value.isoformat()}T00:00:00"  # midnight, exact on datetime64 and cftime axes
    tz = _tz(value)
    if tz is None and isinstance(value, str) and any(c in value[10:] for c in "+Z") and value[:1].isdigit():
        try:
            tz = pd.Timestamp(value).tzinfo
        except (ValueError, TypeError):
            tz = None
    if tz is not None:
        utc = pd.Timestamp(value).tz_convert("UTC").tz_localize(None)
        raise DataError(
            f"init time {value!r} is time-zone aware; the data's time axis carries no zone (CF: "
            f"UTC). Fix: pass it in UTC without a zone, e.g. {format_time(utc)!r} "
            "(pd.Timestamp(t).tz_convert(None))."
        )
    return value


def init_labels(init: Any) -> Any:
    """Init-time selections as labels the time axis understands: ``datetime.date`` values
    become midnight; time-zone aware values are refused with their UTC equivalent. Slices
    and sequences are converted item by item; anything else is returned as it is.

    >>> init_labels(_dt.date(2009, 1, 2))
    '2009-01-02T00:00:00'
    """
    if init is None:
        return None
    if isinstance(init, slice):
        return slice(_init_label(init.start) if init.start is not None else None,
                     _init_label(init.stop) if init.stop is not None else None, init.step)
    if isinstance(init, pd.DatetimeIndex):
        return [_init_label(v) for v in init] if init.tz is not None else init
    if isinstance(init, (list, tuple)):
        return [_init_label(v) for v in init]
    if isinstance(init, np.ndarray) and init.dtype.kind == "O":
        return np.array([_init_label(v) for v in init.ravel()], dtype=object).reshape(init.shape)
    return _init_label(init)


def same_calendar(a: str, b: str) -> bool:
    """True when two CF calendar names agree on every date (``standard`` = ``gregorian`` =
    ``proleptic_gregorian`` for modern dates; ``noleap`` = ``365_day``...).

    >>> same_calendar("standard", "proleptic_gregorian"), same_calendar("noleap", "360_day")
    (True, False)
    """
    a, b = str(a).lower(), str(b).lower()
    return a == b or any(a in g and b in g for g in CALENDAR_GROUPS)


def check_calendar(calendar: str, spec: DataSpec) -> None:
    """Refuse data in a calendar other than the model's when its step is a fixed length (days,
    hours...): the calendars then disagree on which dates exist and on the year's length (the
    day-of-year features, leap days). Monthly and yearly steps work in any calendar."""
    if spec.step.is_calendar or same_calendar(calendar, spec.calendar_name):
        return
    raise DataError(
        f"the data use the {calendar!r} calendar, the model the {spec.calendar_name!r} calendar, "
        f"with a fixed step of {spec.step}: the two disagree on which dates exist. Fix: convert "
        f"the data: ds = ds.convert_calendar({spec.calendar_name!r}) (xarray)."
    )


# ----------------------------------------------------------------------------------------------
# grids of the files of one archive
# ----------------------------------------------------------------------------------------------
def _describe(values: np.ndarray) -> str:
    v = np.asarray(values)
    if v.size == 0:
        return "no values"
    if v.dtype.kind in "iuf":
        return f"{v.size} values {float(v.min()):g} .. {float(v.max()):g}"
    return f"{v.size} values"


def check_same_grid(reference: xr.Dataset, other: xr.Dataset, reference_name: str, other_name: str,
                    time: Hashable | None = None) -> None:
    """Refuse ``other`` (one file of an archive) when its non-time dimension coordinates differ
    from ``reference``'s (the first file), naming the file and the coordinate."""
    for dim in reference.dims:
        if dim == time or dim not in reference.coords:
            continue
        if dim not in other.dims:
            raise DataError(
                f"{other_name} has no {dim!r} dimension, which {reference_name} has (its dims: "
                f"{list(other.dims)}). Fix: leave it out of --input or make the files agree."
            )
        a = np.asarray(reference[dim].values)
        b = np.asarray(other[dim].values) if dim in other.coords else np.arange(other.sizes[dim])
        same = a.shape == b.shape and (
            np.allclose(a, b, rtol=1e-6, atol=0.0) if a.dtype.kind in "iuf" and b.dtype.kind in "iuf"
            else bool(np.array_equal(a, b)))
        if not same:
            raise DataError(
                f"{other_name} is on another grid than {reference_name}: {dim} has {_describe(b)} "
                f"there and {_describe(a)} in {reference_name}. Fix: regrid that file to the others' "
                "grid or leave it out of --input."
            )


# ----------------------------------------------------------------------------------------------
# forecast/observation pairs (the metrics)
# ----------------------------------------------------------------------------------------------
def _variables(obj: Any) -> Mapping[Hashable, xr.DataArray]:
    if isinstance(obj, xr.Dataset):
        return dict(obj.data_vars)
    if isinstance(obj, xr.DataArray):
        return {obj.name if obj.name is not None else "data": obj}
    return {}


def check_pair(forecast: Any, observed: Any) -> tuple[Any, Any]:
    """The metrics' validation of a forecast/observation pair (xarray objects).

    Each side's variables: numeric dtype and no undecoded packing attributes; the units of
    the variables both sides share (for Datasets: by name; DataArrays: the two arrays) must
    be one unit; +-inf and fill-like values are refused (at once for in-memory data, when
    computed for Dask-backed data: the returned objects carry that check).

    Returns
    -------
    tuple
        ``(forecast, observed)``, Dask-backed variables wrapped with the value check.
    """
    fc_vars, obs_vars = _variables(forecast), _variables(observed)
    for side, variables in (("forecast", fc_vars), ("observed", obs_vars)):
        for name, var in variables.items():
            check_dtype(var, name)
            check_packing(var, name)
    if isinstance(forecast, xr.Dataset) and isinstance(observed, xr.Dataset):
        pairs: Sequence[tuple[Hashable, xr.DataArray, xr.DataArray]] = [
            (n, fc_vars[n], obs_vars[n]) for n in fc_vars if n in obs_vars]
    elif isinstance(forecast, (xr.Dataset, xr.DataArray)) and isinstance(observed, (xr.Dataset, xr.DataArray)) \
            and len(fc_vars) == 1 and len(obs_vars) == 1:
        (name, a), (_, b) = next(iter(fc_vars.items())), next(iter(obs_vars.items()))
        pairs = [(name, a, b)]
    else:
        pairs = []
    for name, a, b in pairs:
        check_units(b.attrs.get("units"), a.attrs.get("units"), name, have="the observations",
                    expected="the forecast gives")
    return finite_checked(forecast, "the forecast"), finite_checked(observed, "the observations")
