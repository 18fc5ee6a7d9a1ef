"""CF-1.8 encoding of forecast datasets (deterministic and ensemble).

:func:`to_cf` turns the labelled output of :func:`xearthformer.layout.decode` into a dataset
that follows CF-1.8 and the names the verification ecosystem already expects:

* ``init_time`` (standard_name ``forecast_reference_time``),
* ``lead_time`` (standard_name ``forecast_period``): a timedelta written in a plural unit
  ("hours", "days"...) for fixed steps, an integer with units "months"/"years" for calendar
  steps,
* ``valid_time(init_time, lead_time)`` (standard_name ``time``), in the data's own calendar,
* ``member`` (int, standard_name ``realization``) for ensembles,
* the input's own spatial dims and coordinates.

xskillscore (``member_dim="member"``) and cf-xarray then work with no renaming;
:func:`to_climpred`, :func:`to_weatherbench2`, :func:`to_pysteps` and :func:`to_earth2studio`
give the layouts those tools prefer.
Coordinates that describe where the *input* came from (Iris writes ``forecast_period`` and
``forecast_reference_time`` on analyses) are dropped by :func:`drop_provenance`, so they never
collide with the forecast's own.

>>> fc = to_cf(decoded, source="xearthformer tiny model")      # doctest: +SKIP
>>> fc.to_netcdf("fc.nc")          # passes compliance-checker --test cf:1.8   # doctest: +SKIP
>>> open_forecast("fc.nc").lead_time.dtype                      # doctest: +SKIP
dtype('<m8[ns]')
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import xarray as xr

from ._version import __version__
from .errors import DataError
from .layout.decoding import MEMBER_ATTRS

#: names of the forecast coordinates and their CF attributes
FORECAST_COORDS: dict[str, dict[str, str]] = {
    "init_time": {"standard_name": "forecast_reference_time", "long_name": "forecast initialisation time"},
    "lead_time": {"standard_name": "forecast_period", "long_name": "forecast lead time"},
    "valid_time": {"standard_name": "time", "long_name": "valid time of the forecast"},
    "member": dict(MEMBER_ATTRS),
}
#: standard names that only the forecast's own coordinates may carry
_RESERVED_STANDARD_NAMES = {attrs["standard_name"]: name for name, attrs in FORECAST_COORDS.items()}
#: attributes never copied to a forecast (compliance-checker would try to download the
#: vocabulary it names; the others describe a file, not the data)
_DROP_ATTRS = ("standard_name_vocabulary",)
CONVENTIONS = "CF-1.8"
# seconds per plural CF unit, largest first: the first that divides every offset is used
_UNITS = (("days", 86400), ("hours", 3600), ("minutes", 60), ("seconds", 1))
_INT32_MAX = 2**31 - 1


# ----------------------------------------------------------------------------------------------
# provenance clean-up
# ----------------------------------------------------------------------------------------------
def drop_provenance(obj: xr.Dataset | xr.DataArray, keep: tuple[Hashable, ...] = ()
                    ) -> xr.Dataset | xr.DataArray:
    """Drop variables that would collide with a forecast's own time/member coordinates.

    Removes every non-dimension coordinate (and data variable) that is named like a forecast
    coordinate (``init_time``, ``lead_time``, ``valid_time``, ``member``) or like one of
    their standard names (``forecast_reference_time``, ``forecast_period``, ``time``,
    ``realization``), or carries one of those standard names, plus the bounds variables
    those name. Such variables describe where an
    input came from (Iris writes ``forecast_period``/``forecast_reference_time`` on analyses);
    they are not part of a forecast made from it. Dimension coordinates and ``keep`` stay.

    Parameters
    ----------
    obj : xr.Dataset or xr.DataArray
    keep : tuple of str
        Names never dropped (the forecast's own coordinates when cleaning a forecast).

    Returns
    -------
    xr.Dataset or xr.DataArray
        A shallow copy without those variables.

    Examples
    --------
    >>> ds = xr.Dataset(coords={"time": [0, 1], "forecast_period": 0})
    >>> list(drop_provenance(ds).coords)
    ['time']
    """
    variables = obj.variables if isinstance(obj, xr.Dataset) else obj.coords
    drop: set[Hashable] = set()
    for name, var in variables.items():
        if name in keep or name in obj.dims:
            continue
        if (name in FORECAST_COORDS or name in _RESERVED_STANDARD_NAMES
                or var.attrs.get("standard_name") in _RESERVED_STANDARD_NAMES):
            drop.add(name)
            bounds = var.attrs.get("bounds")
            if bounds is not None and bounds in variables:
                drop.add(bounds)
    return obj.drop_vars(sorted(drop, key=str)) if drop else obj


# ----------------------------------------------------------------------------------------------
# time encoding helpers
# ----------------------------------------------------------------------------------------------
def _offsets_seconds(values: np.ndarray, reference: Any) -> np.ndarray:
    """Seconds between ``values`` (datetime64 or cftime objects) and ``reference``."""
    if np.issubdtype(values.dtype, np.datetime64):
        return (values - reference).astype("timedelta64[s]").astype(np.int64)
    flat = [(v - reference) for v in values.ravel()]
    secs = [d.days * 86400 + d.seconds + (d.microseconds / 1e6) for d in flat]
    return np.asarray(secs, dtype=np.float64).reshape(values.shape)


def _plural_unit(seconds: np.ndarray) -> str:
    """Largest CF unit (days..seconds) in which every offset is a whole number."""
    secs = np.asarray(seconds, dtype=np.float64).ravel()
    for unit, size in _UNITS:
        if np.all(np.mod(secs, size) == 0):
            return unit
    return "seconds"


def _number_dtype(values: np.ndarray) -> str:
    """int32 when the encoded numbers are whole and fit (CF-1.8 has no int64), else float64."""
    v = np.asarray(values, dtype=np.float64)
    if np.all(np.isfinite(v)) and np.all(v == np.round(v)) and np.all(np.abs(v) <= _INT32_MAX):
        return "int32"
    return "float64"


def _format_reference(reference: Any) -> str:
    if isinstance(reference, np.datetime64):
        return str(np.datetime_as_string(reference.astype("datetime64[s]"), unit="s")).replace("T", " ")
    return reference.strftime("%Y-%m-%d %H:%M:%S")


def time_encoding(*coords: xr.DataArray) -> dict[str, Any]:
    """Shared CF encoding (``units``, ``calendar``, ``dtype``) for datetime coordinates.

    The reference is the earliest value of all ``coords``; the unit the largest of
    days/hours/minutes/seconds that keeps every value whole; the calendar that of the values
    (cftime objects keep theirs: ``noleap``, ``360_day``...).

    Examples
    --------
    >>> t = xr.DataArray(np.array(["2000-01-01T06", "2000-01-02"], "M8[ns]"))
    >>> time_encoding(t)["units"]
    'hours since 2000-01-01 06:00:00'
    """
    values = [np.asarray(c.values) for c in coords]
    flat = np.concatenate([v.ravel() for v in values])
    if flat.size == 0:
        raise DataError("cannot encode an empty time coordinate; expected at least one init time.")
    if np.issubdtype(flat.dtype, np.datetime64):
        reference = flat.min()
        calendar = "proleptic_gregorian"
    else:
        reference = min(flat)
        calendar = getattr(reference, "calendar", None) or "standard"
    offsets = _offsets_seconds(flat, reference)
    unit = _plural_unit(offsets)
    numbers = offsets / dict(_UNITS)[unit]
    return {"units": f"{unit} since {_format_reference(reference)}", "calendar": calendar,
            "dtype": _number_dtype(numbers)}


def _lead_encoding(lead: xr.DataArray) -> dict[str, Any]:
    """Encoding of a timedelta ``lead_time`` in its plural unit ("hours", "days"...)."""
    seconds = np.asarray(lead.values).astype("timedelta64[s]").astype(np.int64)
    unit = _plural_unit(seconds)
    return {"units": unit, "dtype": _number_dtype(seconds / dict(_UNITS)[unit])}


# ----------------------------------------------------------------------------------------------
# to_cf
# ----------------------------------------------------------------------------------------------
def _clean_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if k not in _DROP_ATTRS}


def _history_line(history: str | None) -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{stamp}: {history or 'forecast'} (xearthformer {__version__})"


def to_cf(
    ds: xr.Dataset,
    *,
    source: str | None = None,
    history: str | None = None,
    institution: str | None = None,
    title: str | None = None,
    like: xr.Dataset | xr.DataArray | None = None,
) -> xr.Dataset:
    """Make a forecast dataset CF-1.8 compliant (names, attributes and on-disk encoding).

    Parameters
    ----------
    ds : xr.Dataset
        A forecast with dims ``init_time``, ``lead_time`` (timedelta, or integer with
        ``units`` "months"/"years"), optionally ``member``, plus spatial dims, and a 2-D
        ``valid_time`` coordinate (as :func:`xearthformer.layout.decode` returns it).
    source : str, optional
        Global ``source`` (default: "xearthformer <version>").
    history : str, optional
        What produced the data; a time-stamped line is appended to any existing ``history``
        (of ``ds`` or else of ``like``).
    institution, title : str, optional
        Global attributes; ``institution`` defaults to that of ``like`` when known.
    like : xr.Dataset or xr.DataArray, optional
        The input the forecast was made from: its ``institution``/``history`` carry over;
        nothing else of its provenance does.

    Returns
    -------
    xr.Dataset
        A shallow copy with CF attributes and encodings; data values are untouched (lazy
        data stay lazy).

    Raises
    ------
    DataError
        ``init_time`` or ``lead_time`` is missing.

    Examples
    --------
    >>> fc = to_cf(decoded, source="xearthformer small model trained on OISST")  # doctest: +SKIP
    >>> fc.init_time.attrs["standard_name"]                                      # doctest: +SKIP
    'forecast_reference_time'
    """
    missing = [n for n in ("init_time", "lead_time") if n not in ds.dims]
    if missing:
        raise DataError(
            f"a forecast needs dims init_time and lead_time; {missing} missing from dims "
            f"{list(ds.dims)}. Build forecasts with xearthformer.forecast.forecast or "
            "xearthformer.layout.decode."
        )
    out = drop_provenance(ds, keep=tuple(FORECAST_COORDS))
    assert isinstance(out, xr.Dataset)
    out = out.copy(deep=False)
    if "member" in out.dims and "member" not in out.coords:
        out = out.assign_coords(member=np.arange(out.sizes["member"], dtype=np.int32))

    for name in list(out.variables):
        out[name].attrs = _clean_attrs(out[name].attrs)
        if "grid_mapping_name" in out[name].attrs:
            # a grid mapping carried as a coordinate is listed in `coordinates`, and CF then
            # wants it described
            out[name].attrs.setdefault("long_name", "coordinate reference system")
    for name, attrs in FORECAST_COORDS.items():
        if name in out.variables:
            out[name].attrs.update(attrs)

    # time coordinates share one reference/unit/calendar; integer (calendar) leads keep units
    times = [out[n] for n in ("init_time", "valid_time") if n in out.variables]
    enc = time_encoding(*times)
    for coord in times:
        coord.encoding = {**enc}
    lead = out["lead_time"]
    if np.issubdtype(lead.dtype, np.timedelta64):
        lead.attrs.pop("units", None)
        lead.encoding = _lead_encoding(lead)
    else:
        if "units" not in lead.attrs:
            raise DataError(
                "an integer lead_time needs a 'units' attribute (e.g. 'months'); found "
                f"attrs {dict(lead.attrs)}. Calendar-step leads come from layout.time_coords."
            )
        out["lead_time"] = lead.astype(np.int32)
        out["lead_time"].attrs.update(lead.attrs)
    if "member" in out.coords and np.issubdtype(out["member"].dtype, np.integer):
        member_attrs = out["member"].attrs
        out["member"] = out["member"].astype(np.int32)
        out["member"].attrs.update(member_attrs)
    # CF forbids _FillValue on coordinate variables (they never hold missing values)
    for name in out.coords:
        out[name].encoding["_FillValue"] = None

    like_attrs = dict(getattr(like, "attrs", {}) or {})
    attrs = _clean_attrs(ds.attrs)
    for key in ("Conventions", "title", "source", "featureType"):
        attrs.pop(key, None)
    attrs["Conventions"] = CONVENTIONS
    attrs["title"] = title or ds.attrs.get("title") or "xearthformer forecast"
    if source is None:
        source = f"xearthformer {__version__}"
    attrs["source"] = source
    inst = institution or ds.attrs.get("institution") or like_attrs.get("institution")
    if inst:
        attrs["institution"] = inst
    previous = ds.attrs.get("history") or like_attrs.get("history")
    line = _history_line(history)
    attrs["history"] = f"{previous}\n{line}" if previous else line
    out.attrs = attrs
    return out


# ----------------------------------------------------------------------------------------------
# reading, and the layouts other tools prefer
# ----------------------------------------------------------------------------------------------
def open_forecast(path: str | os.PathLike[str], **kwargs: Any) -> xr.Dataset:
    """Open a forecast written by xearthformer (NetCDF file or Zarr store), lead_time decoded.

    Parameters
    ----------
    path : str or path-like
        ``*.zarr`` (or a directory holding ``zarr.json``/``.zgroup``) opens with
        :func:`xarray.open_zarr`; anything else with :func:`xarray.open_dataset`.
    **kwargs
        Passed on to the opener.

    Examples
    --------
    >>> fc = open_forecast("out.zarr")                               # doctest: +SKIP
    """
    kwargs.setdefault("decode_timedelta", True)
    p = os.fspath(path)
    is_zarr = p.rstrip("/").endswith(".zarr") or (
        os.path.isdir(p) and any(os.path.exists(os.path.join(p, f)) for f in ("zarr.json", ".zgroup"))
    )
    if is_zarr:
        return xr.open_zarr(p, **kwargs)
    return xr.open_dataset(p, **kwargs)


def _lead_steps(lead: xr.DataArray) -> tuple[np.ndarray, str]:
    """Integer lead steps and their unit (climpred wants ints + a units attribute)."""
    if np.issubdtype(lead.dtype, np.timedelta64):
        seconds = np.asarray(lead.values).astype("timedelta64[s]").astype(np.int64)
        unit = _plural_unit(seconds)
        return (seconds // dict(_UNITS)[unit]).astype(np.int64), unit
    return np.asarray(lead.values).astype(np.int64), str(lead.attrs["units"])


def to_climpred(fc: xr.Dataset) -> xr.Dataset:
    """Rename a CF forecast to climpred's layout: dims ``init``, ``lead`` (integer with a
    ``units`` attribute) and ``member``; ``valid_time`` is dropped (climpred adds its own).

    Examples
    --------
    >>> hind = to_climpred(fc)            # climpred.HindcastEnsemble(hind)  # doctest: +SKIP
    """
    steps, unit = _lead_steps(fc["lead_time"])
    out = fc.drop_vars([v for v in ("valid_time",) if v in fc.variables])
    out = out.assign_coords(lead_time=steps).rename({"init_time": "init", "lead_time": "lead"})
    out["lead"].attrs = {"units": unit, "long_name": "lead"}
    return out


def to_weatherbench2(fc: xr.Dataset) -> xr.Dataset:
    """Rename a CF forecast to WeatherBench 2's layout: ``time`` (init),
    ``prediction_timedelta`` (timedelta), ``latitude``/``longitude``; ``valid_time`` dropped.

    Raises
    ------
    DataError
        Calendar-step (integer) leads: WeatherBench 2 needs a timedelta lead.

    Examples
    --------
    >>> wb2 = to_weatherbench2(fc)                                      # doctest: +SKIP
    """
    if not np.issubdtype(fc["lead_time"].dtype, np.timedelta64):
        raise DataError(
            f"WeatherBench 2 needs a timedelta lead_time; found integer leads in "
            f"{fc['lead_time'].attrs.get('units')!r}. Use to_climpred for calendar steps."
        )
    out = fc.drop_vars([v for v in ("valid_time",) if v in fc.variables])
    renames: dict[Hashable, str] = {"init_time": "time", "lead_time": "prediction_timedelta"}
    for name in out.coords:
        sn = out[name].attrs.get("standard_name")
        if sn in ("latitude", "longitude") and name in out.dims and name != sn and sn not in out.variables:
            renames[name] = sn
    return out.rename(renames)


# ----------------------------------------------------------------------------------------------
# ensemble ecosystem: pysteps, earth2studio
# ----------------------------------------------------------------------------------------------
#: standard names that mark a grid's y and x axes (first match wins)
_Y_NAMES = ("latitude", "projection_y_coordinate", "grid_latitude")
_X_NAMES = ("longitude", "projection_x_coordinate", "grid_longitude")
#: pysteps' ensemble coordinate (pysteps.io.exporters and its xarray nowcasts): members from 1
PYSTEPS_MEMBER_ATTRS = {"long_name": "ensemble member", "standard_name": "realization", "units": ""}


def _grid_dims(fc: xr.Dataset) -> tuple[Hashable, Hashable] | None:
    """The (y, x) dims of a forecast, found by their coordinates' standard names."""
    found: dict[str, Hashable] = {}
    for dim in fc.dims:
        sn = fc[dim].attrs.get("standard_name") if dim in fc.coords else None
        for axis, names in (("y", _Y_NAMES), ("x", _X_NAMES)):
            if sn in names and axis not in found:
                found[axis] = dim
    return (found["y"], found["x"]) if len(found) == 2 else None


def _renamed_grid(fc: xr.Dataset, y: str, x: str, tool: str) -> xr.Dataset:
    """``fc`` with its grid dims called ``y`` and ``x`` (coordinates keep their names and values)."""
    if y in fc.dims and x in fc.dims:
        return fc
    dims = _grid_dims(fc)
    if dims is None:
        raise DataError(
            f"{tool} needs the grid dims named {y!r}/{x!r}; found dims {list(fc.dims)} and no "
            f"coordinates with standard_name latitude/longitude or projection_y/x_coordinate. "
            f"Fix: rename them first, e.g. fc.rename({{'row': {y!r}, 'col': {x!r}}})")
    return fc.rename_dims({dims[0]: y, dims[1]: x}) if dims != (y, x) else fc


def _timedelta_leads(fc: xr.Dataset, tool: str) -> None:
    if "lead_time" not in fc.dims or "init_time" not in fc.dims:
        raise DataError(f"{tool}: expected a forecast with init_time and lead_time dims (xearthformer."
                        f"forecast.ensemble or cf.to_cf output); found dims {list(fc.dims)}")
    if not np.issubdtype(fc["lead_time"].dtype, np.timedelta64):
        raise DataError(f"{tool} needs timedelta lead times; found integer leads in "
                        f"{fc['lead_time'].attrs.get('units')!r}. Use to_climpred for calendar steps.")


def to_pysteps(ens: xr.Dataset, init: Any = None) -> xr.Dataset:
    """One nowcast of an ensemble in pysteps' layout: ``(ens_number, time, y, x)``.

    pysteps holds one nowcast per dataset: its exporters (``pysteps.io.exporters``) and its
    xarray nowcasts write the members along ``ens_number`` (int, counted from 1,
    standard_name ``realization``), the valid times along ``time`` (long_name "forecast
    time", attribute ``stepsize`` in seconds), the grid along ``y``/``x``, and name the field
    in the dataset attribute ``precip_var``. So this selects one init time (``init``, or the
    only one), makes ``valid_time`` the ``time`` dim (``lead_time`` stays as a coordinate on
    it, the init as the scalar ``init_time``), numbers member ``m`` as ``ens_number = m + 1``
    (the xearthformer index stays in the coordinate ``member``), and renames latitude/
    longitude (or projection) grid dims to ``y``/``x``, their coordinates kept.

    Parameters
    ----------
    ens : xr.Dataset
        An ensemble (``member`` dim) from :func:`xearthformer.forecast.ensemble`, with one
        data variable (pick one first: ``ens[["rain"]]``) and timedelta lead times.
    init : datetime-like, optional
        The init time to convert (default: the only one).

    Returns
    -------
    xr.Dataset
        Dims ``(ens_number, time, ..., y, x)``; attributes as ``ens`` plus ``precip_var``.

    Raises
    ------
    DataError
        No ``member`` dim, several data variables, several init times and no ``init``,
        integer (calendar) leads, or no recognisable grid dims.

    Examples
    --------
    >>> ens = radar.earthformer.ensemble(model, members=8, init="2019-06-02T12:00")  # doctest: +SKIP
    >>> nowcast = to_pysteps(ens)                                    # doctest: +SKIP
    >>> nowcast.vil.dims                                             # doctest: +SKIP
    ('ens_number', 'time', 'y', 'x')
    >>> arr = nowcast[nowcast.attrs["precip_var"]].values   # pysteps' (members, T, H, W)  # doctest: +SKIP
    """
    if "member" not in ens.dims:
        raise DataError("to_pysteps converts an ensemble (a 'member' dim); this dataset has dims "
                        f"{list(ens.dims)}. Make one with ds.earthformer.ensemble(model, members=N).")
    _timedelta_leads(ens, "pysteps")
    names = list(ens.data_vars)
    if len(names) != 1:
        raise DataError(f"pysteps holds one field per dataset; this ensemble has {names}. "
                        f"Pick one first, e.g. to_pysteps(ens[[{names[0]!r}]]).")
    if init is None:
        if ens.sizes["init_time"] != 1:
            raise DataError(f"pysteps holds one nowcast (one init time) per dataset; this ensemble has "
                            f"{ens.sizes['init_time']}. Pick one: to_pysteps(ens, init=ens.init_time[0]).")
        one = ens.isel(init_time=0)
    else:
        one = ens.sel(init_time=init)
        if "init_time" in one.dims:
            raise DataError(f"init={init!r} selects {one.sizes['init_time']} init times; give one.")
    step = np.diff(one["lead_time"].values) if one.sizes["lead_time"] > 1 else one["lead_time"].values
    time_attrs = {"long_name": "forecast time", "standard_name": "time",
                  "stepsize": int(step[0] / np.timedelta64(1, "s"))}
    out = (one.assign_coords(time=("lead_time", one["valid_time"].values, time_attrs))
           .swap_dims(lead_time="time").drop_vars("valid_time"))
    member = out["member"]
    out = out.rename(member="ens_number").assign_coords(
        ens_number=("ens_number", member.values.astype(np.int64) + 1, dict(PYSTEPS_MEMBER_ATTRS)),
        member=("ens_number", member.values, {"long_name": "xearthformer member index"}))
    out = _renamed_grid(out, "y", "x", "pysteps")
    out = out.transpose("ens_number", "time", ..., "y", "x")
    out.attrs["precip_var"] = names[0]
    return out


def to_earth2studio(fc: xr.Dataset) -> xr.Dataset:
    """A forecast or ensemble in earth2studio's layout: ``(ensemble, time, lead_time, lat, lon)``.

    earth2studio's ensemble workflow (``earth2studio.run.ensemble``) writes each variable with
    the coordinates ``ensemble`` (members counted from 0), ``time`` (the init time),
    ``lead_time`` (timedelta64), then ``lat``/``lon``. This renames ``member`` -> ``ensemble``
    (same indices), ``init_time`` -> ``time``, latitude/longitude grid dims -> ``lat``/``lon``
    (by standard_name; a grid already called so, or a projected y/x grid, is left as it is) and
    puts the dims in that order; ``valid_time(time, lead_time)`` stays as a coordinate. A
    deterministic forecast (no ``member``) gets the same renames without ``ensemble``.

    Raises
    ------
    DataError
        Integer (calendar) leads: earth2studio's ``lead_time`` is a timedelta.

    Examples
    --------
    >>> e2s = to_earth2studio(ens)                                  # doctest: +SKIP
    >>> e2s.t2m.dims                                                # doctest: +SKIP
    ('ensemble', 'time', 'lead_time', 'lat', 'lon')
    """
    _timedelta_leads(fc, "earth2studio")
    out = fc.rename({"init_time": "time", **({"member": "ensemble"} if "member" in fc.dims else {})})
    dims = _grid_dims(out)
    if dims is not None and all(out[d].attrs.get("standard_name") in ("latitude", "longitude") for d in dims):
        out = out.rename({d: n for d, n in zip(dims, ("lat", "lon")) if d != n})
    first = ("ensemble",) if "ensemble" in out.dims else ()
    grid = ("lat", "lon") if {"lat", "lon"} <= set(out.dims) else (dims or ())
    return out.transpose(*first, "time", "lead_time", ..., *grid)
