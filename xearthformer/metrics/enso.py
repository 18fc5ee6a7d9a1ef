"""ENSO scores: the Nino3.4 index and the C-Nino3.4 correlation skill of the Earthformer paper.

The Nino3.4 index is the area-weighted (cos latitude) mean SST anomaly over 5S-5N,
170W-120W, smoothed by a 3-month running mean. Anomalies are taken at each grid point
against a monthly climatology, then averaged, so land or missing points are simply skipped.

* ``window="centred"`` (default) labels each 3-month mean by its middle month, like NOAA's
  Oceanic Nino Index (ONI; the DJF value is January's).
* ``window="forward"`` labels it by its first month (mean of months m, m+1, m+2): the
  ICAR-ENSO label and the Earthformer protocol.
* ``protocol="icar-enso"`` reproduces the official Earthformer ICAR-ENSO index exactly: the
  input is already an anomaly on the 5-degree 24 x 48 competition grid, the box is grid
  indices lat 10-12, lon 19-29 (33 points), the mean is unweighted, the window forward.

Works on observations (dim ``time``) and forecasts (dims ``init_time``, ``lead_time`` with a
2-D ``valid_time``); for forecasts the running mean runs along ``lead_time`` and the lead
times the window cannot fill are dropped (14 leads give 12 with a 3-month window).

>>> import xearthformer.metrics as m
>>> m.nino34_weights(12).round(4).values[:3].tolist()
[0.0, 1.0397, 1.6479]
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import DataError
from ..layout.spec import coslat
from ..layout.validation import check_units
from ._common import (
    CONTROL,
    INIT,
    LEAD,
    MEMBER,
    TIME,
    VALID,
    Dims,
    find_coord,
    match_longitude,
    prepare_pair,
    reduce_dims,
    standard_time,
    time_dim,
    to_xarray,
    valid_times,
)

NINO34_LAT = (-5.0, 5.0)
NINO34_LON = (190.0, 240.0)  # 170W-120W on a 0-360 axis
ICAR_ENSO_EPS = 1e-6
_WINDOWS = ("centred", "centered", "forward", None)
_PROTOCOLS = (None, "icar-enso")
_SST_NAMES = ("sst", "tos", "analysed_sst", "SST", "surface_temperature", "ts", "t_surf")


def nino34_weights(n_leads: int = 12) -> xr.DataArray:
    """Weights ``a_l * ln(l)`` of C-Nino3.4-WM for leads ``l = 1..n_leads``.

    ``a = [1.5]*4 + [2]*7 + [3]*7 + [4]*...`` (the Tianchi AI-Earth weights), truncated to
    ``n_leads``; for 12 leads ``a = [1.5]*4 + [2]*7 + [3]``.

    Examples
    --------
    >>> nino34_weights(3).round(4).values.tolist()
    [0.0, 1.0397, 1.6479]
    """
    a = ([1.5] * 4 + [2.0] * 7 + [3.0] * 7 + [4.0] * max(0, n_leads - 18))[:n_leads]
    lead = np.arange(1, n_leads + 1)
    return xr.DataArray(np.asarray(a) * np.log(lead), dims=LEAD, name="wm_weight")


def find_sst(obj: Any) -> xr.DataArray:
    """The SST variable of a Dataset (by standard_name, then common names, then the only
    variable on a lat/lon grid); a DataArray is returned as it is."""
    obj = standard_time(to_xarray(obj))
    if isinstance(obj, xr.DataArray):
        return obj
    by_cf = [n for n, v in obj.data_vars.items()
             if v.attrs.get("standard_name") in ("sea_surface_temperature",
                                                 "sea_surface_temperature_anomaly",
                                                 "surface_temperature")]
    by_name = [n for n in _SST_NAMES if n in obj.data_vars]
    lat, lon = find_coord(obj, "latitude"), find_coord(obj, "longitude")
    gridded = [n for n, v in obj.data_vars.items() if lat in v.dims and lon in v.dims]
    for found in (by_cf, by_name, gridded):
        if len(found) == 1:
            return obj[found[0]]
    raise DataError(
        f"cannot tell which variable is SST among {list(obj.data_vars)}; expected one with "
        "standard_name 'sea_surface_temperature' or named 'sst'/'tos'. Pass ds['NAME']"
    )


def _time_layout(obj: xr.DataArray) -> tuple[list[Hashable], xr.DataArray | None, Hashable | None]:
    """(time dims, time coordinate of each value, dim to smooth along)."""
    if TIME in obj.dims:
        return [TIME], obj[TIME], TIME
    if LEAD in obj.dims:
        dims = [d for d in (INIT, LEAD) if d in obj.dims]
        return dims, valid_times(obj) if VALID in obj.coords else None, LEAD
    raise DataError(
        f"SST has dims {list(obj.dims)}; expected 'time' (observations) or "
        "'init_time'/'lead_time' (forecasts)"
    )


def _grid_names(obj: xr.DataArray) -> tuple[Hashable, Hashable]:
    lat, lon = find_coord(obj, "latitude"), find_coord(obj, "longitude")
    if lat is None or lon is None or lat not in obj.dims or lon not in obj.dims:
        raise DataError(
            f"Nino3.4 needs a regular lat/lon grid; found dims {list(obj.dims)} and coords "
            f"{list(obj.coords)}. Name the axes lat/lon or give them CF attributes"
        )
    return lat, lon


def _spacing(values: np.ndarray) -> float:
    return float(np.median(np.abs(np.diff(np.sort(values))))) if values.size > 1 else 360.0


def _box(sst: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """SST over the Nino3.4 box and its cos-latitude weights; checks the grid covers it."""
    lat, lon = _grid_names(sst)
    lats = np.asarray(sst[lat].values, dtype=float)
    lons = np.asarray(sst[lon].values, dtype=float) % 360.0
    dlat, dlon = _spacing(lats), _spacing(lons)
    tol = 1e-6
    in_lat = np.flatnonzero((lats >= NINO34_LAT[0] - tol) & (lats <= NINO34_LAT[1] + tol))
    in_lon = np.flatnonzero((lons >= NINO34_LON[0] - tol) & (lons <= NINO34_LON[1] + tol))
    # a grid covers the box when its points reach each edge to within one grid spacing
    slack = 1.001
    covers = (
        in_lat.size > 0 and in_lon.size > 0
        and lats[in_lat].min() <= NINO34_LAT[0] + dlat * slack
        and lats[in_lat].max() >= NINO34_LAT[1] - dlat * slack
        and lons[in_lon].min() <= NINO34_LON[0] + dlon * slack
        and lons[in_lon].max() >= NINO34_LON[1] - dlon * slack
    )
    if not covers:
        raise DataError(
            f"the grid (lat {lats.min():g}..{lats.max():g}, lon {sst[lon].values.min():g}.."
            f"{sst[lon].values.max():g}) does not cover the Nino3.4 box 5S-5N, 170W-120W "
            "(190E-240E) to within one grid spacing; select a domain that includes it"
        )
    # keep the box in the grid's own order (either latitude order, either lon convention)
    box = sst.isel({lat: in_lat, lon: np.sort(in_lon)})
    weights = coslat(box[lat].astype(float))
    return box, weights


def _icar_box(sst: xr.DataArray) -> xr.DataArray:
    """The official ICAR-ENSO box: grid indices lat 10-12, lon 19-29 of the 24 x 48 grid."""
    lat, lon = _grid_names(sst) if find_coord(sst, "latitude") else (sst.dims[-2], sst.dims[-1])
    if sst.sizes[lat] == 24 and sst.sizes[lon] == 72:  # uncropped file: official crop 95-330E
        sst = sst.isel({lon: slice(19, 67)})
    if sst.sizes[lat] != 24 or sst.sizes[lon] != 48:
        raise DataError(
            f"protocol='icar-enso' needs the 24 x 48 (or 24 x 72) ICAR-ENSO grid; found "
            f"{sst.sizes[lat]} x {sst.sizes[lon]}. Use protocol=None on other grids"
        )
    box = sst.isel({lat: slice(10, 13), lon: slice(19, 30)})
    if lat in box.coords and lon in box.coords:
        ok_lat = np.allclose(box[lat].values, [-5, 0, 5])
        ok_lon = np.allclose(np.asarray(box[lon].values, dtype=float) % 360, np.arange(190, 241, 5))
        if not (ok_lat and ok_lon):
            raise DataError(
                f"protocol='icar-enso' box is at lat {box[lat].values.tolist()}, lon "
                f"{box[lon].values.tolist()}; expected lat -5..5 and lon 190..240 by 5. "
                "Is this the ICAR-ENSO grid (lat -55..60, lon 0..355 or cropped 95..330)?"
            )
    return box


def _in_period(times: xr.DataArray, period: Any) -> xr.DataArray:
    if isinstance(period, slice):
        start, stop = period.start, period.stop
    else:
        start, stop = period
    mask = xr.ones_like(times, dtype=bool)
    if start is not None:
        mask &= times >= np.datetime64(pd.Period(str(start)).start_time)
    if stop is not None:
        mask &= times <= np.datetime64(pd.Period(str(stop)).end_time)
    return mask


def monthly_climatology(sst: Any, base_period: Any = None) -> xr.DataArray:
    """Monthly climatology (dim ``month`` 1..12) of an SST field over ``base_period``.

    ``base_period`` is a ``(start, stop)`` pair or a slice of dates/years, both ends
    inclusive (``("1991", "2020")``); None uses every time. Forecasts are grouped by the
    calendar month of their ``valid_time``. Lazy with Dask input.

    Examples
    --------
    >>> import pandas as pd, xarray as xr
    >>> sst = xr.DataArray(range(24), dims="time", name="sst",
    ...                    coords={"time": pd.date_range("2000-01", periods=24, freq="MS")})
    >>> monthly_climatology(sst).values[:3].tolist()   # Jan: mean of 0 and 12, ...
    [6.0, 7.0, 8.0]
    """
    sst = find_sst(sst)
    tdims, vtime, _ = _time_layout(sst)
    if vtime is None:
        raise DataError("a climatology needs times: forecasts must carry a valid_time coordinate")
    data = sst.drop_vars([c for c in sst.coords if c in (TIME, VALID)] , errors="ignore")
    data = data.assign_coords(_month=vtime.dt.month.variable)
    if base_period is not None:
        data = data.where(_in_period(vtime, base_period).variable)
    if len(tdims) > 1:  # forecasts: every (init, lead) of a calendar month together
        data = data.stack(_sample=tdims)
    clim = data.groupby("_month").mean(skipna=True).rename(_month="month")
    return clim.reindex(month=np.arange(1, 13))


def _anomalies(box: xr.DataArray, climatology: Any, base_period: Any) -> xr.DataArray:
    if climatology is not None and np.ndim(climatology) == 0 and not isinstance(
            climatology, xr.DataArray):
        return box - float(climatology)  # e.g. 0: the input already is an anomaly
    tdims, vtime, _ = _time_layout(box)
    if vtime is None:
        raise DataError(
            "anomalies need the calendar month of each value: give forecasts a valid_time "
            "coordinate, or pass climatology=0 for data that already are anomalies"
        )
    clim = monthly_climatology(box, base_period) if climatology is None else to_xarray(climatology)
    # the climatology may come from data in the other longitude convention (observations in
    # 0..360, a forecast in -180..180): the same alignment as every pair score
    clim = match_longitude(clim, box)
    if "month" not in clim.dims:
        raise DataError(f"climatology has dims {list(clim.dims)}; expected a 'month' dim (1..12)")
    shared = [d for d in clim.dims if d in box.dims]
    if shared:
        try:
            xr.align(box, clim.isel(month=0, drop=True), join="exact", exclude=set(box.dims) - set(shared))
        except ValueError as err:
            # the climatology may be a full field: cut it to the box first
            try:
                clim = clim.sel({d: box[d] for d in shared})
            except (KeyError, ValueError):
                raise DataError(
                    f"climatology grid differs from the SST grid along {shared}; expected the "
                    "same coordinates. Compute it on the same grid"
                ) from err
    # pick each value's month with a one-hot product rather than vectorised indexing, which
    # would cut Dask arrays into one chunk per time step
    clim = clim.reindex(month=np.arange(1, 13))
    if clim.chunks is not None:
        clim = clim.chunk({d: -1 for d in clim.dims})  # small: one block
    month = vtime.dt.month
    onehot = xr.DataArray(
        (np.asarray(month.values)[..., None] == np.arange(1, 13)).astype(float),
        dims=(*month.dims, "month"), coords={**{d: month[d] for d in month.dims if d in month.coords},
                                             "month": np.arange(1, 13)})
    per_value = xr.dot(onehot, clim.fillna(0.0), dim="month")
    missing = xr.dot(onehot, clim.isnull().astype(float), dim="month") > 0
    return box - per_value.where(~missing)


def _smooth(index: xr.DataArray, along: Hashable, window: str | None, months: int) -> xr.DataArray:
    if window is None or months == 1:
        return index
    if window not in _WINDOWS:
        raise DataError(f"unknown window {window!r}; expected 'centred', 'forward' or None")
    n = index.sizes[along]
    if n < months:
        raise DataError(f"a {months}-month running mean needs at least {months} steps along "
                        f"{along!r}; found {n}")
    rolled = index.rolling({along: months}, min_periods=months, center=window != "forward").mean()
    if window == "forward":
        rolled = rolled.shift({along: -(months - 1)})
    if along == LEAD:  # forecasts: drop the leads the window cannot fill
        lo = 0 if window == "forward" else (months - 1) // 2
        rolled = rolled.isel({LEAD: slice(lo, lo + n - months + 1)})
    return rolled


def nino34_index(
    sst: Any,
    climatology: Any = None,
    base_period: Any = None,
    window: str | None = "centred",
    protocol: str | None = None,
    months: int = 3,
) -> xr.DataArray:
    """Nino3.4 index of observed or forecast SST.

    Parameters
    ----------
    sst
        SST (DataArray or Dataset) on a regular lat/lon grid covering 5S-5N, 170W-120W to
        within one grid spacing; either longitude convention and latitude order.
        Observations have ``time``; forecasts ``init_time``, ``lead_time`` and ``valid_time``.
    climatology
        Monthly climatology with a ``month`` dim (1..12), per grid point or for the box
        mean; a number (0 for inputs that already are anomalies); or None to compute it
        from ``sst`` over ``base_period`` (see :func:`monthly_climatology`).
    base_period
        ``(start, stop)`` years/dates, both inclusive, for the computed climatology.
    window
        ``"centred"`` (NOAA ONI), ``"forward"`` (Earthformer/ICAR-ENSO) or None.
    protocol
        ``"icar-enso"``: the official ICAR-ENSO index (see the module docstring).
    months
        Length of the running mean.

    Returns
    -------
    xarray.DataArray
        ``nino34`` with the time dims of the input (and ``member`` etc.).

    Examples
    --------
    >>> import iris_sample_data, os, xarray as xr                     # doctest: +SKIP
    >>> ds = xr.open_dataset(os.path.join(os.path.dirname(iris_sample_data.__file__),
    ...                      "sample_data", "ostia_monthly.nc"))       # doctest: +SKIP
    >>> nino34_index(ds).sel(time="2010-01").item()                    # doctest: +SKIP
    """
    if protocol not in _PROTOCOLS:
        raise DataError(f"unknown protocol {protocol!r}; expected one of {_PROTOCOLS}")
    field = find_sst(sst)
    # the index keeps the caller's name of the time dim (find_sst calls it "time")
    time_name = time_dim(to_xarray(sst)) or TIME
    if protocol == "icar-enso":
        box = _icar_box(field)
        if climatology is not None:
            box = _anomalies(box, climatology, base_period)
        lat, lon = box.dims[-2], box.dims[-1]
        lat = find_coord(box, "latitude") or lat
        lon = find_coord(box, "longitude") or lon
        index = box.mean([lat, lon], skipna=True)
        window = "forward" if window == "centred" else window
    else:
        box, weights = _box(field)
        anom = _anomalies(box, climatology, base_period)
        lat, lon = _grid_names(box)
        w = xr.where(anom.notnull(), weights, np.nan)
        index = (anom * w).sum([lat, lon], skipna=True) / w.sum([lat, lon], skipna=True)
    _, _, along = _time_layout(index)
    index = _smooth(index, along, window, months)
    index = index.drop_vars([c for c in index.coords if c == "month"], errors="ignore")
    if time_name != TIME and TIME in index.dims:
        index = index.rename({TIME: time_name})
    index.name = "nino34"
    index.attrs = {
        "long_name": "Nino3.4 index (SST anomaly, 5S-5N 170W-120W)",
        "units": field.attrs.get("units", ""),
        "window": f"{months}-month {window}" if window else "none",
        "protocol": str(protocol),
    }
    return index


def c_nino34(
    forecast_index: Any,
    observed_index: Any,
    dim: Dims = None,
    protocol: str | None = None,
) -> xr.Dataset:
    """Correlation skill of a Nino3.4 index forecast, per lead and summarised.

    ``cor`` per lead is the Pearson correlation over ``dim`` (default: every dim but
    ``lead_time``, ``member`` and ``control``, normally ``init_time``), skipping NaN pairs.
    ``c_nino34_m`` is its mean over leads; ``c_nino34_wm`` is
    ``sum_l a_l ln(l) cor_l / L`` (see :func:`nino34_weights`), as in the Earthformer paper
    (a perfect 12-lead forecast gives 3.4059); ``l`` counts the leads 1..L in order, whatever
    their labels (a centred window labels them 2..13). ``rmse`` per lead is added for reference.
    ``protocol="icar-enso"`` adds the official 1e-6 to the correlation's denominator.
    Observed indices on ``time`` are aligned to the forecast's ``valid_time``.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> rng = np.random.default_rng(0)
    >>> obs = xr.DataArray(rng.normal(size=(20, 12)), dims=("init_time", "lead_time"))
    >>> round(float(c_nino34(obs, obs).c_nino34_wm), 4)
    3.4059
    """
    fc, obs = prepare_pair(forecast_index, observed_index)
    if LEAD not in fc.dims:
        raise DataError(f"the forecast index has dims {list(fc.dims)}; expected 'lead_time'")
    valid = fc.notnull() & obs.notnull()
    fc, obs = fc.where(valid), obs.where(valid)
    dims = reduce_dims(valid, dim, keep=(LEAD, MEMBER, CONTROL))
    fa = fc - fc.mean(dims)
    oa = obs - obs.mean(dims)
    num = (fa * oa).sum(dims)
    den = np.sqrt((fa**2).sum(dims) * (oa**2).sum(dims))
    if protocol == "icar-enso":
        cor = num / (den + ICAR_ENSO_EPS)
    elif protocol is None:
        cor = num / den.where(den > 0)
    else:
        raise DataError(f"unknown protocol {protocol!r}; expected one of {_PROTOCOLS}")
    n = fc.sizes[LEAD]
    weights = nino34_weights(n).assign_coords({LEAD: fc[LEAD]} if LEAD in fc.coords else {})
    rmse = np.sqrt(((fc - obs) ** 2).mean(dims))
    out = xr.Dataset(
        {
            "cor": cor,
            "rmse": rmse,
            "c_nino34_m": cor.mean(LEAD, skipna=False),
            "c_nino34_wm": (weights * cor).sum(LEAD, skipna=False) / n,
        }
    )
    out = out.drop_vars([c for c in out.coords if c not in out.dims and c != LEAD], errors="ignore")
    out["cor"].attrs["long_name"] = "Nino3.4 correlation skill per lead"
    out["c_nino34_m"].attrs["long_name"] = "C-Nino3.4-M (mean correlation over leads)"
    out["c_nino34_wm"].attrs["long_name"] = "C-Nino3.4-WM (sum a_l ln(l) cor_l / L)"
    return out


def nino34_skill(
    forecast_sst: Any,
    observed_sst: Any,
    climatology: Any = None,
    base_period: Any = None,
    window: str | None = "centred",
    protocol: str | None = None,
    dim: Dims = None,
    months: int = 3,
) -> xr.Dataset:
    """C-Nino3.4 skill of an SST forecast: computes both indices, then :func:`c_nino34`.

    The climatology (given, or computed from ``observed_sst`` over ``base_period``) is used
    for both, so forecast and observation anomalies share one reference. With
    ``protocol="icar-enso"`` both inputs are anomalies on the ICAR-ENSO grid (forward window).
    Observations on ``time`` are matched to the forecast's ``valid_time``.

    Examples
    --------
    >>> fc.earthformer.nino34_skill(sst).c_nino34_m   # doctest: +SKIP
    """
    observed = find_sst(observed_sst)
    forecast_field = find_sst(forecast_sst)
    check_units(observed.attrs.get("units"), forecast_field.attrs.get("units"), forecast_field.name or "sst",
                have="the observations", expected="the forecast gives")
    if protocol is None and climatology is None:
        if TIME in observed.dims or VALID in observed.coords:
            climatology = monthly_climatology(_box(observed)[0], base_period)
    kw = dict(climatology=climatology, base_period=base_period, window=window,
              protocol=protocol, months=months)
    fc_index = nino34_index(forecast_sst, **kw)
    obs_index = nino34_index(observed, **kw)
    return c_nino34(fc_index, obs_index, dim=dim, protocol=protocol)
