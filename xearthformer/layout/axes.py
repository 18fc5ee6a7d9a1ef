"""Finding the time, y/x (lat/lon), vertical axes and grid mapping of labelled data.

CF attributes, read by cf-xarray, decide; :data:`COMMON_NAMES` is only an explicit
fallback when the attributes say nothing.

>>> ds = xr.Dataset(coords={"time": [0, 1], "lat": [0.0, 1.0], "lon": [0.0, 1.0]})
>>> find_axes(ds, require_time=False).x
'lon'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import xarray as xr

from ..errors import DataError

#: Either labelled type, ``xarray.Dataset`` or ``xarray.DataArray``: the type of the public
#: functions' labelled inputs and outputs.
#:
#: Examples
#: --------
#: >>> isinstance(xr.DataArray([1.0]), XArray), isinstance([1.0], XArray)
#: (True, False)
XArray = Union[xr.Dataset, xr.DataArray]


@dataclass(frozen=True)
class Axes:
    """Names of the time, spatial and vertical axes of a labelled object.

    Attributes
    ----------
    time : str or None
        Time dimension (None when the object has none, e.g. static fields).
    y, x : str
        Spatial dimensions (rows, columns). On a regular lat/lon grid these are the
        latitude/longitude dims; on a projected grid the projection coordinates.
    lat, lon : str or None
        Latitude/longitude coordinate names (equal to ``y``/``x`` on regular grids, 2-D
        coordinates on projected grids; None if a projected grid has none).
    vertical : str or None
        Vertical level dimension (pressure, height, depth...), folded into channels.
    grid_mapping : str or None
        Name of the CF grid-mapping variable, if any.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> da = xr.DataArray(np.zeros((2, 3, 4)), dims=("time", "latitude", "longitude"),
    ...                   coords={"time": pd.date_range("2000", periods=2), "latitude": [0.0, 1.0, 2.0],
    ...                           "longitude": [0.0, 1.0, 2.0, 3.0]})
    >>> find_axes(da)
    Axes(time='time', y='latitude', x='longitude', lat='latitude', lon='longitude', vertical=None, grid_mapping=None)
    """

    time: str | None
    y: str
    x: str
    lat: str | None
    lon: str | None
    vertical: str | None = None
    grid_mapping: str | None = None

    @property
    def projected(self) -> bool:
        """True when y/x are not themselves latitude/longitude."""
        return self.lat != self.y or self.lon != self.x


#: name-based fallback when CF attributes say nothing (matched case-insensitively, whole name)
COMMON_NAMES: dict[str, str] = {
    "time": r"time|times|t|date|datetime|valid_time",
    "latitude": r"lat|lats|latitude|nav_lat|xlat|lat_\d*",
    "longitude": r"lon|lons|long|longitude|nav_lon|xlong|lon_\d*",
    "Y": r"y|yc|rlat|j|south_north|northing",
    "X": r"x|xc|rlon|i|west_east|easting",
    "vertical": r"lev|levs|level|levels|plev|pressure|pressure_level|isobaric\w*|height|depth|z"
                r"|alt|altitude",
}


class _CFLookup:
    """Axis candidates: cf-xarray's reading of the CF attributes (standard_name, axis, units
    such as degrees_north, positive) first; then datetime-valued coordinates and
    :data:`COMMON_NAMES`, only when the attributes do not tell."""

    def __init__(self, obj: XArray) -> None:
        import cf_xarray  # noqa: F401  (registers .cf)

        # a coordinates-only copy: cheap for cf-xarray to scan, and never touches data
        self._coords = xr.Dataset(coords=dict(obj.coords))
        self._names = [str(n) for n in list(obj.coords) + [d for d in obj.dims if d not in obj.coords]]
        self._tables: list[dict[str, list[str]]] = []

    def tables(self):
        if not self._tables:
            table: dict[str, list[str]] = {}
            for mapping in (self._coords.cf.coordinates, self._coords.cf.axes):
                for key, names in mapping.items():
                    table.setdefault(key, []).extend(str(n) for n in names)
            self._tables.append(table)
        yield self._tables[0]
        if len(self._tables) == 1:
            import re

            guessed: dict[str, list[str]] = {key: [] for key in COMMON_NAMES}
            for name in self._names:
                values = self._coords[name] if name in self._coords.coords else None
                if values is not None and (values.dtype.kind == "M" or (
                        values.dtype.kind == "O" and values.size
                        and hasattr(values.values.flat[0], "calendar"))):
                    guessed["time"].append(name)
                for key, pattern in COMMON_NAMES.items():
                    if re.fullmatch(pattern, name, flags=re.IGNORECASE) and name not in guessed[key]:
                        guessed[key].append(name)
            self._tables.append(guessed)
        yield self._tables[1]


def _dims_listing(obj: XArray) -> str:
    return ", ".join(f"{d} ({n})" for d, n in obj.sizes.items()) or "none"


def find_axes(obj: XArray, require_time: bool = True) -> Axes:
    """Find the time, y/x (lat/lon), vertical axes and grid mapping of ``obj``.

    Uses cf-xarray: CF attributes (``axis``, ``standard_name``, units such as
    ``degrees_north``), then common names (lat/latitude/nav_lat, lon/..., time/t/...).

    Parameters
    ----------
    obj : xr.Dataset or xr.DataArray
    require_time : bool
        Raise when no time axis is found.

    Returns
    -------
    Axes

    Raises
    ------
    DataError
        No recognisable time/latitude/longitude; the message lists the dims found.

    Examples
    --------
    >>> ds = xr.Dataset(coords={"time": [0, 1], "lat": [0.0, 1.0], "lon": [0.0, 1.0]})
    >>> find_axes(ds, require_time=False).y
    'lat'
    """
    dims = set(obj.dims)
    lookup = _CFLookup(obj)

    def first(keys: Sequence[str], ndim: int | None = None) -> str | None:
        for table in lookup.tables():
            found = pick(table, keys, ndim)
            if found is not None:
                return found
        return None

    def pick(table: dict[str, list[str]], keys: Sequence[str], ndim: int | None) -> str | None:
        for key in keys:
            for name in table.get(key, []):
                if name not in obj.coords and name not in dims:
                    continue
                var_dims = obj[name].dims if name in obj.coords else (name,)
                if ndim == 1 and not (var_dims == (name,) and name in dims):
                    continue
                if ndim == 2 and len(var_dims) != 2:
                    continue
                return name
        return None

    time = first(["time", "T"], ndim=1)
    if time is None and require_time:
        raise DataError(
            f"found no time axis; dims found: {_dims_listing(obj)}. Expected a time "
            "coordinate (datetime values, or attrs axis='T' / standard_name='time'). "
            "Fix: rename your time dim to 'time' or set ds[dim].attrs['axis'] = 'T'."
        )
    lat = first(["latitude"], ndim=1)
    lon = first(["longitude"], ndim=1)
    if lat is not None and lon is not None:
        y, x = lat, lon
    else:
        lat = first(["latitude"], ndim=2)
        lon = first(["longitude"], ndim=2)
        y = first(["Y"], ndim=1)
        x = first(["X"], ndim=1)
        if (y is None or x is None) and lat is not None and lon is not None:
            y, x = obj[lat].dims
        if y is None or x is None or y == x:
            raise DataError(
                f"found no latitude/longitude (or projected y/x) axes; dims found: "
                f"{_dims_listing(obj)}. Expected 1-D lat/lon coordinates (units degrees_north/"
                "degrees_east or standard_name latitude/longitude) or y/x projection "
                "coordinates (axis='Y'/'X') with 2-D lat/lon. Fix: rename them or set those "
                "attributes."
            )
    vertical = first(["vertical", "Z"], ndim=1)
    if vertical in (time, y, x):
        vertical = None
    return Axes(time=time, y=y, x=x, lat=lat, lon=lon, vertical=vertical,
                grid_mapping=_grid_mapping_name(obj))


def find_coord(obj: XArray, kind: str) -> str | None:
    """Name of the ``kind`` (``"latitude"``, ``"longitude"`` or ``"time"``) coordinate or dim of
    ``obj``, by the same rules as :func:`find_axes` (CF attributes first, then
    :data:`COMMON_NAMES`), of any dimensionality; None when there is none. For code that needs
    one axis and must not fail without the others (the metrics on forecasts, indices...).

    Examples
    --------
    >>> find_coord(xr.Dataset(coords={"nav_lat": [0.0, 1.0]}), "latitude")
    'nav_lat'
    """
    if kind not in ("latitude", "longitude", "time"):
        raise ValueError(f"kind must be 'latitude', 'longitude' or 'time', got {kind!r}")
    for table in _CFLookup(obj).tables():
        for name in table.get(kind, []) + (table.get("T", []) if kind == "time" else []):
            if name in obj.coords or name in obj.dims:
                return name
    return None


def _grid_mapping_name(obj: XArray) -> str | None:
    """The CF grid-mapping variable: named by a ``grid_mapping`` attribute, or any variable
    carrying ``grid_mapping_name``."""
    variables = obj.variables if isinstance(obj, xr.Dataset) else obj.coords
    holders = list(obj.data_vars.values()) if isinstance(obj, xr.Dataset) else [obj]
    for holder in holders:
        name = holder.attrs.get("grid_mapping")
        if isinstance(name, str) and name in variables:
            return name
    for name, var in variables.items():
        if "grid_mapping_name" in var.attrs:
            return str(name)
    return None
