"""Labelled xarray data <-> the model's (N, T, H, W, C) tensor layout, both directions.

A :class:`DataSpec` holds everything needed to use a model on labelled data except the
weights: which variables (and vertical levels) go in and come out, their normalisation,
static inputs and calendar features, the grid, the time step, context length and lead count.
:func:`fit_spec` builds one from training data; :func:`encode_inputs` /
:func:`encode_targets` cut normalised windows; :func:`decode` turns model output back into a
labelled dataset on the input's own grid. CF attributes/encoding of the result are
:mod:`xearthformer.cf`'s job; this module produces the values, dims and coords.

Time convention: ``init_time`` is the time of the last context step; leads are 1..L steps
after it. Fixed steps give a timedelta ``lead_time``; calendar steps (months, years) give an
integer ``lead_time`` with ``units`` "months"/"years" (climpred's convention). ``valid_time``
is computed in the data's own calendar.

>>> spec = fit_spec(sst, ["sst"], context=6, lead=3)                   # doctest: +SKIP
>>> inits = init_times(sst, spec)                                      # doctest: +SKIP
>>> x = encode_inputs(sst, spec, inits)            # (N, 6, H, W, C_in)  # doctest: +SKIP
>>> fc = decode(model_output, spec, inits, like=sst)                  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import xarray as xr

from .errors import ConfigError, DataError, ShapeError

XArray = Union[xr.Dataset, xr.DataArray]

#: format version of :meth:`DataSpec.to_dict`; bump when the meaning of a field changes.
SPEC_VERSION = 1
NORMALIZATIONS = ("zscore", "anomaly", "scale", "minmax", "none")
CALENDAR_FEATURES = ("month", "dayofyear", "hour")
FIXED_UNITS = ("days", "hours", "minutes", "seconds")
CALENDAR_UNITS = ("months", "years")
_UNIT_NS = {"days": 86_400 * 10**9, "hours": 3_600 * 10**9, "minutes": 60 * 10**9,
            "seconds": 10**9}
#: variable attributes carried from the data into the spec and onto decoded output
KEPT_ATTRS = ("units", "standard_name", "long_name")


# ----------------------------------------------------------------------------------------------
# dataclasses
# ----------------------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class TimeStep:
    """A regular time step: ``n`` units, fixed (days..seconds) or calendar (months/years).

    >>> TimeStep(6, "hours").is_calendar
    False
    >>> TimeStep(1, "months").is_calendar
    True
    """

    n: int
    unit: str

    def __post_init__(self) -> None:
        if self.unit not in FIXED_UNITS + CALENDAR_UNITS:
            raise ConfigError(
                f"time step unit {self.unit!r} is unknown; expected one of "
                f"{FIXED_UNITS + CALENDAR_UNITS}."
            )
        if int(self.n) < 1:
            raise ConfigError(f"time step must be positive, got {self.n} {self.unit}.")

    @property
    def is_calendar(self) -> bool:
        """True for months/years (integer lead_time), False for fixed steps (timedelta)."""
        return self.unit in CALENDAR_UNITS

    def to_timedelta(self) -> np.timedelta64:
        """The step as ``timedelta64[ns]``; ConfigError for calendar steps."""
        if self.is_calendar:
            raise ConfigError(f"a step of {self} has no fixed length; use add_steps().")
        return np.timedelta64(int(self.n) * _UNIT_NS[self.unit], "ns")

    def __str__(self) -> str:
        return f"{self.n} {self.unit}"


@dataclass(frozen=True)
class Channel:
    """One input/output channel: a variable at one vertical level, and its normalisation.

    The normalised value is ``(x - climatology[month] - offset) / scale`` where the
    climatology term is present only for ``method="anomaly"`` (stored in
    :attr:`DataSpec.climatology`, not here).

    Attributes
    ----------
    variable : str
        Data variable name.
    level : float, int, str or None
        Value on the vertical coordinate, None for single-level variables.
    method : str
        One of ``NORMALIZATIONS``.
    offset, scale : float
        Normalisation constants (zscore: mean/std; minmax: min/(max-min); scale: given).
    attrs : dict
        ``units``, ``standard_name``, ``long_name`` of the variable.
    """

    variable: str
    level: Any = None
    method: str = "zscore"
    offset: float = 0.0
    scale: float = 1.0
    attrs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Unique channel name: ``variable`` or ``variable[level]``."""
        return self.variable if self.level is None else f"{self.variable}[{self.level}]"


def _same(a: Any, b: Any) -> bool:
    """Equality for values that may be numpy arrays or dicts of them."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return a is b or (a is not None and b is not None and np.shape(a) == np.shape(b)
                          and bool(np.array_equal(a, b)))
    return bool(a == b)


def _fields_equal(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return NotImplemented
    return all(_same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)


@dataclass(frozen=True, eq=False)
class Grid:
    """The model's grid: dimension/coordinate names and values (in the training orientation).

    Attributes
    ----------
    y, x : str
        Spatial dimension names.
    y_values, x_values : np.ndarray
        1-D coordinate values of the dims.
    lat, lon : str or None
        Latitude/longitude coordinate names (== y/x on regular grids).
    lat_values, lon_values : np.ndarray or None
        2-D (H, W) latitude/longitude on projected grids; None on regular grids.
    coord_attrs : dict
        Attributes of the y, x, lat, lon coordinates, by name.
    grid_mapping : str or None
        Name of the grid-mapping variable.
    grid_mapping_attrs : dict
        Its attributes (CF grid mapping parameters).
    """

    y: str
    x: str
    y_values: np.ndarray
    x_values: np.ndarray
    lat: str | None
    lon: str | None
    lat_values: np.ndarray | None = None
    lon_values: np.ndarray | None = None
    coord_attrs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    grid_mapping: str | None = None
    grid_mapping_attrs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def latlon(cls, lat: Sequence[float], lon: Sequence[float], lat_name: str = "lat",
               lon_name: str = "lon") -> Grid:
        """A regular latitude/longitude grid with CF coordinate attributes.

        >>> Grid.latlon(np.arange(-55, 61, 5.0), np.arange(95, 331, 5.0)).shape
        (24, 48)
        """
        attrs = {lat_name: {"standard_name": "latitude", "units": "degrees_north"},
                 lon_name: {"standard_name": "longitude", "units": "degrees_east"}}
        return cls(y=lat_name, x=lon_name, y_values=np.asarray(lat, dtype=np.float64),
                   x_values=np.asarray(lon, dtype=np.float64), lat=lat_name, lon=lon_name,
                   coord_attrs=attrs)

    @classmethod
    def xy(cls, y_values: Sequence[float], x_values: Sequence[float], y: str = "y",
           x: str = "x") -> Grid:
        """A plain (projected or pixel) y/x grid without latitude/longitude, e.g. SEVIR's
        384 x 384 1-km pixels.

        >>> Grid.xy(np.arange(384), np.arange(384)).projected
        True
        """
        return cls(y=y, x=x, y_values=np.asarray(y_values), x_values=np.asarray(x_values),
                   lat=None, lon=None)

    __eq__ = _fields_equal  # fields hold numpy arrays: compare them by value

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W)."""
        return (len(self.y_values), len(self.x_values))

    @property
    def projected(self) -> bool:
        """True when y/x are projection coordinates (lat/lon are 2-D)."""
        return self.lat != self.y or self.lon != self.x


@dataclass(frozen=True, eq=False)
class DataSpec:
    """Everything needed to use a model on labelled data, except the weights.

    Build with :func:`fit_spec`; serialise with :meth:`to_dict` (JSON-able) plus
    :meth:`arrays` (float32/bool arrays, stored as safetensors tensors by
    :mod:`xearthformer.checkpoint`); restore with :meth:`from_dict`.

    Attributes
    ----------
    inputs : tuple of Channel
        Dynamic input channels, in channel order.
    targets : tuple of Channel
        Output channels, in channel order.
    static : tuple of str
        Names of static (time-invariant) input fields; their normalised values are in
        :attr:`static_values` and are appended after the dynamic channels.
    calendar : tuple of str
        Calendar features (``CALENDAR_FEATURES``); each adds a sin and a cos channel last.
    grid : Grid
    step : TimeStep
    calendar_name : str
        CF calendar of the training time axis ("standard", "noleap", "360_day", ...).
    context, lead : int
        Number of input steps and of predicted steps.
    time_name : str
        Name of the training data's time dimension.
    vertical : str or None
        Name of the vertical dimension (levels folded into channels), if any.
    vertical_attrs : dict
        Attributes of the vertical coordinate.
    climatology : dict
        Channel name -> (12, H, W) float32 per-calendar-month climatology (``anomaly`` only).
    static_values : dict
        Static name -> (H, W) float32 normalised field (NaN filled with 0).
    land_mask : dict
        Target channel name -> (H, W) bool, True where the training data were NaN at every
        time step (land for an ocean variable); these cells are NaN in decoded output.

    Examples
    --------
    Fitted from data (the usual way):

    >>> spec = fit_spec(sst, "sst", context=12, lead=14)               # doctest: +SKIP

    Or written down from known constants (official presets), e.g. SEVIR VIL scaled by 1/255:

    >>> vil = Channel("vil", method="scale", offset=0.0, scale=255.0, attrs={"units": "1"})
    >>> spec = DataSpec(inputs=(vil,), targets=(vil,), grid=Grid.xy(range(384), range(384)),
    ...                 step=TimeStep(5, "minutes"), context=13, lead=12)
    >>> spec.input_shape, spec.target_shape
    ((13, 384, 384, 1), (12, 384, 384, 1))
    """

    inputs: tuple[Channel, ...]
    targets: tuple[Channel, ...]
    grid: Grid
    step: TimeStep
    context: int
    lead: int
    static: tuple[str, ...] = ()
    calendar: tuple[str, ...] = ()
    calendar_name: str = "standard"
    time_name: str = "time"
    vertical: str | None = None
    vertical_attrs: Mapping[str, Any] = field(default_factory=dict)
    climatology: Mapping[str, np.ndarray] = field(default_factory=dict)
    static_values: Mapping[str, np.ndarray] = field(default_factory=dict)
    land_mask: Mapping[str, np.ndarray] = field(default_factory=dict)

    __eq__ = _fields_equal  # fields hold numpy arrays: compare them by value

    # -- shapes -------------------------------------------------------------------------------
    @property
    def n_inputs(self) -> int:
        """Input channel count C_in (dynamic + static + 2 per calendar feature)."""
        return len(self.inputs) + len(self.static) + 2 * len(self.calendar)

    @property
    def n_targets(self) -> int:
        """Output channel count C_out."""
        return len(self.targets)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """(context, H, W, C_in): the model's ``input_shape``."""
        return (self.context, *self.grid.shape, self.n_inputs)

    @property
    def target_shape(self) -> tuple[int, int, int, int]:
        """(lead, H, W, C_out): the model's ``target_shape``."""
        return (self.lead, *self.grid.shape, self.n_targets)

    @property
    def input_channel_names(self) -> list[str]:
        """Names of all C_in channels in order (dynamic, static, calendar sin/cos)."""
        names = [c.name for c in self.inputs] + list(self.static)
        for feature in self.calendar:
            names += [f"{feature}_sin", f"{feature}_cos"]
        return names

    @property
    def variables(self) -> list[str]:
        """Data variables the input dataset must contain (dynamic inputs only)."""
        return list(dict.fromkeys(c.variable for c in self.inputs))

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (everything but the arrays of :meth:`arrays`)."""
        g = self.grid
        return {
            "spec_version": SPEC_VERSION,
            "inputs": [_channel_to_dict(c) for c in self.inputs],
            "targets": [_channel_to_dict(c) for c in self.targets],
            "static": list(self.static),
            "calendar": list(self.calendar),
            "grid": {
                "y": g.y, "x": g.x, "lat": g.lat, "lon": g.lon,
                "y_values": _jsonable(np.asarray(g.y_values)),
                "x_values": _jsonable(np.asarray(g.x_values)),
                "coord_attrs": _jsonable(dict(g.coord_attrs)),
                "grid_mapping": g.grid_mapping,
                "grid_mapping_attrs": _jsonable(dict(g.grid_mapping_attrs)),
            },
            "step": {"n": int(self.step.n), "unit": self.step.unit},
            "calendar_name": self.calendar_name,
            "context": int(self.context),
            "lead": int(self.lead),
            "time_name": self.time_name,
            "vertical": self.vertical,
            "vertical_attrs": _jsonable(dict(self.vertical_attrs)),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """Array-valued parts, keyed ``climatology/<channel>``, ``static/<name>``,
        ``land_mask/<channel>``, ``grid/lat``, ``grid/lon``."""
        out: dict[str, np.ndarray] = {}
        for name, a in self.climatology.items():
            out[f"climatology/{name}"] = np.ascontiguousarray(a, dtype=np.float32)
        for name, a in self.static_values.items():
            out[f"static/{name}"] = np.ascontiguousarray(a, dtype=np.float32)
        for name, a in self.land_mask.items():
            out[f"land_mask/{name}"] = np.ascontiguousarray(a, dtype=bool)
        if self.grid.lat_values is not None:
            out["grid/lat"] = np.ascontiguousarray(self.grid.lat_values, dtype=np.float64)
        if self.grid.lon_values is not None:
            out["grid/lon"] = np.ascontiguousarray(self.grid.lon_values, dtype=np.float64)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None
                  ) -> DataSpec:
        """Inverse of :meth:`to_dict` + :meth:`arrays`; ConfigError on a newer version."""
        version = int(d.get("spec_version", 0))
        if version > SPEC_VERSION:
            raise ConfigError(
                f"this DataSpec has format version {version}, newer than the {SPEC_VERSION} this "
                "xearthformer understands; upgrade xearthformer (pip install -U xearthformer)."
            )
        arrays = dict(arrays or {})

        def group(prefix: str) -> dict[str, np.ndarray]:
            return {k[len(prefix):]: np.asarray(v) for k, v in arrays.items() if k.startswith(prefix)}

        g = d["grid"]
        grid = Grid(
            y=g["y"], x=g["x"], lat=g["lat"], lon=g["lon"],
            y_values=np.asarray(g["y_values"]), x_values=np.asarray(g["x_values"]),
            lat_values=arrays.get("grid/lat"), lon_values=arrays.get("grid/lon"),
            coord_attrs=g.get("coord_attrs", {}), grid_mapping=g.get("grid_mapping"),
            grid_mapping_attrs=g.get("grid_mapping_attrs", {}),
        )
        return cls(
            inputs=tuple(_channel_from_dict(c) for c in d["inputs"]),
            targets=tuple(_channel_from_dict(c) for c in d["targets"]),
            grid=grid,
            step=TimeStep(int(d["step"]["n"]), d["step"]["unit"]),
            context=int(d["context"]),
            lead=int(d["lead"]),
            static=tuple(d.get("static", ())),
            calendar=tuple(d.get("calendar", ())),
            calendar_name=d.get("calendar_name", "standard"),
            time_name=d.get("time_name", "time"),
            vertical=d.get("vertical"),
            vertical_attrs=d.get("vertical_attrs", {}),
            climatology={k: v.astype(np.float32) for k, v in group("climatology/").items()},
            static_values={k: v.astype(np.float32) for k, v in group("static/").items()},
            land_mask={k: v.astype(bool) for k, v in group("land_mask/").items()},
        )


# ----------------------------------------------------------------------------------------------
# small helpers (JSON, channels)
# ----------------------------------------------------------------------------------------------
def _jsonable(v: Any) -> Any:
    """Plain-Python copy of attrs/values for JSON; drops what JSON cannot hold."""
    if isinstance(v, Mapping):
        out = {}
        for k, item in v.items():
            conv = _jsonable(item)
            if conv is not _DROP:
                out[str(k)] = conv
        return out
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()] if v.dtype.kind != "O" else _DROP
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return _DROP


_DROP = object()


def _channel_to_dict(c: Channel) -> dict[str, Any]:
    return {"variable": c.variable, "level": _jsonable(c.level), "method": c.method,
            "offset": float(c.offset), "scale": float(c.scale), "attrs": _jsonable(dict(c.attrs))}


def _channel_from_dict(d: Mapping[str, Any]) -> Channel:
    return Channel(variable=d["variable"], level=d.get("level"), method=d.get("method", "zscore"),
                   offset=float(d.get("offset", 0.0)), scale=float(d.get("scale", 1.0)),
                   attrs=dict(d.get("attrs", {})))


def _as_dataset(obj: XArray, spec: DataSpec | None = None) -> xr.Dataset:
    """A Dataset view of ``obj``; an unnamed/renamed DataArray takes the spec's single variable."""
    if isinstance(obj, xr.Dataset):
        return obj
    if not isinstance(obj, xr.DataArray):
        raise DataError(f"expected an xarray Dataset or DataArray, got {type(obj).__name__}.")
    name = obj.name
    if spec is not None and len(spec.variables) == 1 and name not in spec.variables:
        name = spec.variables[0]
    return obj.to_dataset(name="data" if name is None else name)


# ----------------------------------------------------------------------------------------------
# axes
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# time
# ----------------------------------------------------------------------------------------------
def _time_parts(times: np.ndarray) -> dict[str, np.ndarray]:
    """Calendar fields of datetime64 or cftime values (in their own calendar)."""
    times = np.asarray(times)
    if times.dtype.kind == "M":  # pandas directly: much cheaper than the .dt accessor
        import pandas as pd

        idx = pd.DatetimeIndex(times.ravel())
        return {"year": np.asarray(idx.year), "month": np.asarray(idx.month),
                "day": np.asarray(idx.day), "hour": np.asarray(idx.hour),
                "minute": np.asarray(idx.minute), "dayofyear": np.asarray(idx.day_of_year),
                "days_in_year": np.where(idx.is_leap_year, 366, 365)}
    dt = xr.DataArray(times, dims="t").dt
    return {"year": dt.year.values, "month": dt.month.values, "day": dt.day.values,
            "hour": dt.hour.values, "minute": dt.minute.values,
            "dayofyear": dt.dayofyear.values, "days_in_year": dt.days_in_year.values}


def _diffs_ns(times: np.ndarray) -> np.ndarray:
    import pandas as pd

    d = np.diff(np.asarray(times))
    return np.asarray(pd.to_timedelta(d)).astype("m8[ns]").astype(np.int64)


def _fmt(t: Any) -> str:
    return str(np.datetime_as_string(t, unit="s")) if isinstance(t, np.datetime64) else str(t)


def infer_step(times: Any) -> TimeStep:
    """The regular step of a time coordinate (datetime64 or cftime values).

    Calendar months/years are recognised (month lengths vary); otherwise every difference
    must be equal.

    Raises
    ------
    DataError
        Fewer than two times, non-monotonic or irregular steps (the message shows where).

    Examples
    --------
    >>> infer_step(np.array(["2000-01-16", "2000-02-15", "2000-03-16"], "M8[s]"))
    TimeStep(n=1, unit='months')
    """
    times = np.asarray(times)
    if times.dtype.kind != "M" and not (times.dtype.kind == "O" and times.size
                                        and hasattr(times.flat[0], "calendar")):
        raise DataError(
            f"time values are not dates (dtype {times.dtype}). Fix: decode them, e.g. "
            "xr.decode_cf(ds), or give the time variable CF units such as 'days since 2000-01-01'."
        )
    if times.size < 2:
        raise DataError(
            f"need at least two time steps to find the time step, found {times.size}. "
            "Fix: pass a longer record."
        )
    d = _diffs_ns(times)
    if (d <= 0).any():
        i = int(np.argmax(d <= 0))
        raise DataError(
            f"time is not increasing: step {i} goes from {_fmt(times[i])} to {_fmt(times[i + 1])}. "
            "Fix: sort by time and drop duplicates (ds.sortby('time').drop_duplicates('time'))."
        )
    if (d >= 28 * _UNIT_NS["days"]).all():  # maybe calendar months (lengths vary)
        parts = _time_parts(times)
        dm = np.diff(parts["year"] * 12 + parts["month"])
        if (dm == dm[0]).all() and dm[0] >= 1:
            k = int(dm[0])
            return TimeStep(k // 12, "years") if k % 12 == 0 else TimeStep(k, "months")
    if (d == d[0]).all():
        for unit in FIXED_UNITS:
            if d[0] % _UNIT_NS[unit] == 0:
                return TimeStep(int(d[0] // _UNIT_NS[unit]), unit)
        raise DataError(f"time step of {d[0]} ns is below one second; not supported.")
    i = int(np.argmax(d != d[0]))
    raise DataError(
        f"time steps are irregular: {_fmt(times[0])} -> {_fmt(times[1])} is "
        f"{np.timedelta64(int(d[0]), 'ns').astype('m8[s]')}, but {_fmt(times[i])} -> "
        f"{_fmt(times[i + 1])} is {np.timedelta64(int(d[i]), 'ns').astype('m8[s]')}. "
        "Fix: resample to a regular step (ds.resample(time=...).mean()) or fill the gaps."
    )


def add_steps(times: Any, step: TimeStep, k: int) -> np.ndarray:
    """``times`` shifted by ``k`` steps in their own calendar (cftime stays cftime).

    Calendar steps keep the day of month, clipped to the target month's length.

    Examples
    --------
    >>> add_steps(np.array(["2001-01-31"], "M8[s]"), TimeStep(1, "months"), 1)
    array(['2001-02-28T00:00:00'], dtype='datetime64[s]')
    """
    times = np.asarray(times)
    if not step.is_calendar:
        delta = step.to_timedelta() * int(k)
        if times.dtype.kind == "M":
            return (times + delta).astype(times.dtype)
        import datetime

        py = datetime.timedelta(microseconds=int(delta.astype("m8[us]").astype(np.int64)))
        return np.array([t + py for t in times.ravel()], dtype=object).reshape(times.shape)
    months = int(k) * step.n * (12 if step.unit == "years" else 1)
    if times.dtype.kind == "M":
        import pandas as pd

        shifted = pd.DatetimeIndex(times.ravel()) + pd.DateOffset(months=months)
        return np.asarray(shifted).astype(times.dtype).reshape(times.shape)
    return np.array([_add_months_cftime(t, months) for t in times.ravel()],
                    dtype=object).reshape(times.shape)


def _add_months_cftime(t: Any, months: int) -> Any:
    import cftime

    years, month0 = divmod(t.month - 1 + months, 12)
    year, month = t.year + years, month0 + 1
    days = cftime.datetime(year, month, 1, calendar=t.calendar,
                           has_year_zero=t.has_year_zero).daysinmonth
    return t.replace(year=year, month=month, day=min(t.day, days))


def _lead_steps(lead: int | Sequence[int]) -> np.ndarray:
    if isinstance(lead, (int, np.integer)):
        if lead < 1:
            raise ConfigError(f"lead must be >= 1, got {lead}.")
        return np.arange(1, int(lead) + 1)
    steps = np.asarray(lead, dtype=np.int64)
    if steps.ndim != 1 or steps.size == 0 or (steps < 1).any():
        raise ConfigError(f"leads must be a non-empty list of step counts >= 1, got {lead!r}.")
    return steps


def time_coords(init_times: Any, step: TimeStep, lead: int | Sequence[int]
                ) -> dict[str, xr.DataArray]:
    """``init_time``, ``lead_time`` and 2-D ``valid_time`` coordinates of a forecast.

    The one place that builds forecast time coordinates (FORECAST, TRAIN and METRICS reuse
    it). Leads are step counts 1..L (an int L) or an explicit sequence of step counts.

    Parameters
    ----------
    init_times : array-like
        datetime64 or cftime values.
    step : TimeStep
    lead : int or sequence of int

    Returns
    -------
    dict
        ``{"init_time": (init_time,), "lead_time": (lead_time,),
        "valid_time": (init_time, lead_time)}``. lead_time is ``timedelta64[ns]`` for fixed
        steps, integers with ``attrs["units"]`` "months"/"years" for calendar steps.
        valid_time is in the init times' own calendar (cftime objects stay cftime).

    Examples
    --------
    >>> c = time_coords(np.array(["2000-01-01"], "M8[ns]"), TimeStep(1, "months"), 3)
    >>> c["valid_time"].values[0, -1]
    np.datetime64('2000-04-01T00:00:00.000000000')
    """
    init = np.atleast_1d(np.asarray(init_times))
    steps = _lead_steps(lead)
    valid = np.stack([add_steps(init, step, int(s)) for s in steps], axis=1) if init.size else \
        np.empty((0, steps.size), dtype=init.dtype)
    if step.is_calendar:
        lead_values = steps * step.n
        lead_attrs = {"units": step.unit}
    else:
        lead_values = steps * step.to_timedelta()
        lead_attrs = {}
    return {
        "init_time": xr.DataArray(init, dims="init_time"),
        "lead_time": xr.DataArray(lead_values, dims="lead_time", attrs=lead_attrs),
        "valid_time": xr.DataArray(valid, dims=("init_time", "lead_time")),
    }


def _time_values(ds: xr.Dataset, ax: Axes) -> np.ndarray:
    return np.asarray(ds.indexes[ax.time]) if ax.time in ds.indexes else ds[ax.time].values


def _check_step(times: np.ndarray, spec: DataSpec) -> None:
    if np.asarray(times).size < 2:  # a one-step window (context 1): nothing to compare
        return
    step = infer_step(times)
    if step != spec.step:
        raise DataError(
            f"the data's time step is {step}, the model's is {spec.step}. Fix: resample the data "
            f"to {spec.step} (ds.resample(time=...).mean()) or use a model trained on {step} data."
        )


def init_times(obj: XArray, spec: DataSpec, init: Any = None, targets: bool = False) -> np.ndarray:
    """Init times of ``obj`` usable with ``spec``: those with a full context before them.

    Parameters
    ----------
    obj : xr.Dataset or xr.DataArray
    spec : DataSpec
    init : None, str, slice, datetime-like or sequence, optional
        Restrict to these (label selection on the time axis, e.g. ``slice("2009", "2010")``).
        None: every possible init time. A slice keeps only the usable times inside it; an
        explicit time without enough context is an error.
    targets : bool
        Also require ``spec.lead`` observed steps after each init (for training/scoring).

    Returns
    -------
    np.ndarray
        Time values (datetime64 or cftime objects), ascending.

    Raises
    ------
    DataError
        Record shorter than the context (+ lead), irregular/non-monotonic time, step differs
        from the model's, or a requested init time without enough context.

    Examples
    --------
    >>> init_times(sst, spec, init=slice("2009", "2010"))              # doctest: +SKIP
    """
    ds = _as_dataset(obj, spec)
    ax = find_axes(ds)
    times = _time_values(ds, ax)
    n = times.size
    need = spec.context + (spec.lead if targets else 0)
    what = f"context ({spec.context})" + (f" + lead ({spec.lead})" if targets else "")
    if n < need:
        raise DataError(
            f"the record has {n} time steps, shorter than the model's {what} = {need}. "
            "Fix: pass a longer record."
        )
    _check_step(times, spec)
    first, last = spec.context - 1, n - 1 - (spec.lead if targets else 0)
    if init is None:
        return times[first:last + 1]
    try:
        chosen = np.atleast_1d(ds[ax.time].sel({ax.time: init}).values)
    except KeyError as err:
        raise DataError(
            f"init time(s) {init!r} not found on the time axis, which runs from "
            f"{_fmt(times[0])} to {_fmt(times[-1])}. Fix: pick times present in the data."
        ) from err
    pos = _positions(ds, ax, chosen)
    ok = (pos >= first) & (pos <= last)
    if isinstance(init, slice):
        if not ok.any():
            raise DataError(
                f"no init time in {init!r} has a full {what}; usable init times run from "
                f"{_fmt(times[first])} to {_fmt(times[last])}."
            )
        return chosen[ok]
    if not ok.all():
        bad = chosen[~ok][0]
        raise DataError(
            f"init time {_fmt(bad)} lacks a full {what} of data around it; usable init times run "
            f"from {_fmt(times[first])} to {_fmt(times[last])}. Fix: pick a later init time or "
            "pass more data before it."
        )
    return chosen


def _positions(ds: xr.Dataset, ax: Axes, init_times: Any) -> np.ndarray:
    """Integer positions of ``init_times`` on the time axis; DataError for absent ones."""
    values = np.atleast_1d(np.asarray(init_times))
    index = ds.indexes[ax.time]
    if values.dtype.kind in "US":
        values = np.atleast_1d(ds[ax.time].sel({ax.time: values}).values)
    pos = np.asarray(index.get_indexer(values))
    if (pos < 0).any():
        bad = values[pos < 0][0]
        raise DataError(
            f"init time {_fmt(bad)} is not on the data's time axis ({_fmt(index[0])} .. "
            f"{_fmt(index[-1])}). Fix: use init_times(ds, spec) to list valid ones."
        )
    return pos


def required_time_slice(obj: XArray, spec: DataSpec, init_times: Any,
                        targets: bool = False) -> slice:
    """Integer positions on ``obj``'s time axis needed to encode ``init_times``.

    ``obj.isel(time=required_time_slice(...))`` holds every context (and target, with
    ``targets=True``) step, so a Dask chunk can load just that range.

    Examples
    --------
    >>> required_time_slice(sst, spec, inits)                           # doctest: +SKIP
    slice(0, 17, None)
    """
    ds = _as_dataset(obj, spec)
    ax = find_axes(ds)
    pos = _positions(ds, ax, init_times)
    start = int(pos.min()) - spec.context + 1
    stop = int(pos.max()) + 1 + (spec.lead if targets else 0)
    if start < 0 or stop > ds.sizes[ax.time]:
        raise DataError(
            f"init times need time positions {start}..{stop - 1}, the data has "
            f"0..{ds.sizes[ax.time] - 1}. Fix: choose init times from init_times(ds, spec)."
        )
    return slice(start, stop)


# ----------------------------------------------------------------------------------------------
# grid
# ----------------------------------------------------------------------------------------------
def _grid_from(ds: xr.Dataset, ax: Axes) -> Grid:
    coord_attrs = {}
    for name in {ax.y, ax.x, ax.lat, ax.lon} - {None}:
        if name in ds.variables:
            coord_attrs[name] = _jsonable(dict(ds[name].attrs))
    lat_values = lon_values = None
    if ax.projected and ax.lat is not None and ax.lon is not None:
        lat_values = ds[ax.lat].transpose(ax.y, ax.x).values.astype(np.float64)
        lon_values = ds[ax.lon].transpose(ax.y, ax.x).values.astype(np.float64)
    gm_attrs = dict(ds[ax.grid_mapping].attrs) if ax.grid_mapping else {}
    return Grid(
        y=ax.y, x=ax.x,
        y_values=np.asarray(ds[ax.y].values if ax.y in ds.variables else np.arange(ds.sizes[ax.y])),
        x_values=np.asarray(ds[ax.x].values if ax.x in ds.variables else np.arange(ds.sizes[ax.x])),
        lat=ax.lat, lon=ax.lon, lat_values=lat_values, lon_values=lon_values,
        coord_attrs=coord_attrs, grid_mapping=ax.grid_mapping,
        grid_mapping_attrs=_jsonable(gm_attrs),
    )


def _spacing(values: np.ndarray) -> float:
    d = np.abs(np.diff(np.asarray(values, dtype=np.float64)))
    return float(np.median(d)) if d.size else 1.0


def _match_axis(source: np.ndarray, target: np.ndarray, periodic: bool) -> np.ndarray | None:
    """Index into ``source`` of each ``target`` value, or None when one has no match.

    Tolerance: 1e-6 of the grid spacing, widened to float32 rounding of the coordinate
    values (many files store lat/lon as float32; a model fitted on float64 coordinates must
    still accept them).
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if source.size == 0:
        return None
    magnitude = float(np.abs(target).max()) if target.size else 0.0
    tol = max(1e-6 * _spacing(target), 4 * float(np.finfo(np.float32).eps) * magnitude, 1e-12)
    diff = target[:, None] - source[None, :]
    if periodic:  # longitudes: compare on the circle, so 0..360 matches -180..180
        diff = (diff + 180.0) % 360.0 - 180.0
    dist = np.abs(diff)
    index = dist.argmin(axis=1)
    if (dist[np.arange(target.size), index] > tol).any():
        return None
    return index


def _describe_axis(values: np.ndarray) -> str:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 1:
        return f"1 value ({v[0]:g})"
    return f"{v.size} values from {v[0]:g} to {v[-1]:g} (step {np.diff(v).mean():g})"


def _match_grid(ds: xr.Dataset, ax: Axes, spec: DataSpec) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (iy, ix) with ``ds.isel(y=iy, x=ix)`` == the spec grid, in spec order.

    Handles flipped axes (descending latitude), the longitude convention (0..360 vs
    -180..180, rolled) and inputs that cover a larger domain than the model's.
    """
    g = spec.grid
    if ax.projected != g.projected:
        kind = {True: "projected (y/x)", False: "regular lat/lon"}
        raise DataError(
            f"the data is on a {kind[ax.projected]} grid, the model on a {kind[g.projected]} "
            "grid. Fix: regrid the data to the model grid (e.g. with xESMF)."
        )
    iy_ix = []
    for dim, values, label in ((ax.y, g.y_values, "latitude" if not g.projected else "y"),
                               (ax.x, g.x_values, "longitude" if not g.projected else "x")):
        source = ds[dim].values if dim in ds.variables else np.arange(ds.sizes[dim])
        index = _match_axis(source, values, periodic=(label == "longitude"))
        if index is None:
            raise DataError(
                f"the data's {label} ({dim}: {_describe_axis(source)}) differs from the model's "
                f"({_describe_axis(values)}). Fix: regrid the data to the model grid, e.g. "
                f"ds.interp({dim}=<model {label} values>) or xESMF for conservative regridding."
            )
        iy_ix.append(index)
    return iy_ix[0], iy_ix[1]


def area_weights(spec: DataSpec) -> np.ndarray:
    """(H, W) float32 cell weights, cos(latitude) normalised to mean 1 (ones on projected
    grids, whose cells are near-equal in area), for latitude-weighted losses and scores.

    Examples
    --------
    >>> area_weights(spec).mean()                                       # doctest: +SKIP
    1.0
    """
    h, w = spec.grid.shape
    if spec.grid.projected:
        return np.ones((h, w), dtype=np.float32)
    weights = np.cos(np.deg2rad(np.asarray(spec.grid.y_values, dtype=np.float64)))
    weights = np.clip(weights, 0.0, None)
    weights = np.broadcast_to(weights[:, None], (h, w))
    return (weights / weights.mean()).astype(np.float32)


def target_mask(spec: DataSpec) -> np.ndarray:
    """(H, W, C_out) bool, True where a target channel has data (not land)."""
    h, w = spec.grid.shape
    planes = [~np.asarray(spec.land_mask[c.name], dtype=bool) if c.name in spec.land_mask
              else np.ones((h, w), dtype=bool) for c in spec.targets]
    return np.stack(planes, axis=-1)


# ----------------------------------------------------------------------------------------------
# spec fitting
# ----------------------------------------------------------------------------------------------
def _names(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _require_vars(ds: xr.Dataset, names: Sequence[str], role: str) -> None:
    missing = [n for n in names if n not in ds.data_vars]
    if missing:
        raise DataError(
            f"{role} variable(s) {missing} not found; the data has {sorted(map(str, ds.data_vars))}. "
            "Fix: pass a dataset holding them (or rename: ds.rename({'old': 'new'}))."
        )


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


def _channel_data(ds: xr.Dataset, ax: Axes, ch: Channel, extra: Sequence[str] = ()) -> xr.DataArray:
    """The channel as a DataArray with dims (time, *extra present, y, x) (lazy)."""
    da = ds[ch.variable]
    if ax.time not in da.dims:
        raise DataError(
            f"variable {ch.variable!r} has no time dim {ax.time!r} (dims {da.dims}); a dynamic "
            "input must vary in time. Fix: pass it as a static input instead."
        )
    if ch.level is not None:
        if ax.vertical is None or ax.vertical not in da.dims:
            raise DataError(
                f"the model needs {ch.variable!r} at level {ch.level}, but the data's "
                f"{ch.variable!r} has no vertical dim (dims {da.dims}). Fix: pass the levels."
            )
        try:
            da = da.sel({ax.vertical: ch.level})
        except KeyError as err:
            raise DataError(
                f"level {ch.level} of {ch.variable!r} is missing; the data has "
                f"{ax.vertical} = {list(ds[ax.vertical].values)}. Fix: provide that level."
            ) from err
    elif ax.vertical is not None and ax.vertical in da.dims:
        raise DataError(
            f"{ch.variable!r} has a vertical dim {ax.vertical!r} but the model uses it as a "
            f"single-level field. Fix: select one level, e.g. ds.sel({ax.vertical}=...)."
        )
    keep = [ax.time, *[e for e in extra if e in da.dims], ax.y, ax.x]
    other = [d for d in da.dims if d not in keep]
    if other:
        raise DataError(
            f"{ch.variable!r} has dims {other} that the other input variables lack. "
            "Fix: give all input variables the same extra dims."
        )
    return da.transpose(*keep)


def _extra_dims(ds: xr.Dataset, ax: Axes, variables: Sequence[str]) -> list[str]:
    skip = {ax.time, ax.y, ax.x, ax.vertical}
    extra: list[str] = []
    for v in variables:
        if v in ds.data_vars:
            extra += [str(d) for d in ds[v].dims if d not in skip and d not in extra]
    return extra


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
            lv = [_jsonable(np.asarray(v).item() if np.ndim(v) == 0 else v) for v in chosen]
        else:
            lv = [None]
        for level in lv:
            ch = Channel(var, level, method, float(params.get("offset", 0.0)),
                         float(params.get("scale", 1.0)), attrs)
            channels[ch.name] = ch
    return channels


def _fit_channels(fit: xr.Dataset, ax: Axes, channels: Mapping[str, Channel],
                  extra: Sequence[str], period: Any
                  ) -> tuple[dict[str, Channel], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Normalisation constants, climatologies and land masks of every channel."""
    # every statistic lazily first, then one compute (Dask shares the reads)
    stats: dict[str, xr.DataArray] = {}
    climatologies: dict[str, xr.DataArray] = {}
    for name, ch in channels.items():
        da = _channel_data(fit, ax, ch, extra)
        reduce_dims = [d for d in da.dims if d not in (ax.y, ax.x)]
        stats[f"{name}/count"] = da.count()
        stats[f"{name}/nan_cells"] = da.isnull().all(reduce_dims)
        if ch.method == "zscore":
            stats[f"{name}/mean"] = da.mean()
            stats[f"{name}/std"] = da.std()
        elif ch.method == "minmax":
            stats[f"{name}/min"] = da.min()
            stats[f"{name}/max"] = da.max()
        elif ch.method == "anomaly":
            months = da[ax.time].dt.month
            clim = da.groupby(months).mean([d for d in reduce_dims])
            climatologies[name] = clim
            stats[f"{name}/clim"] = clim.rename(month="clim_month")
            stats[f"{name}/std"] = (da.groupby(months) - clim).std()
    computed = xr.Dataset({k.replace("/", "__"): v.drop_vars(list(v.coords))
                           for k, v in stats.items()}).compute()

    def stat(name: str, key: str) -> np.ndarray:
        return np.asarray(computed[f"{name}__{key}"].values)

    final: dict[str, Channel] = {}
    clim_arrays: dict[str, np.ndarray] = {}
    land: dict[str, np.ndarray] = {}
    for name, ch in channels.items():
        if int(stat(name, "count")) == 0:
            raise DataError(
                f"{name} is all NaN in the fitting period {period!r}. Fix: choose another "
                "period/variable or fill the missing values."
            )
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
        if not np.isfinite(scale) or scale <= 0:
            scale = 1.0  # a constant field: keep values, only shift them
        final[name] = Channel(ch.variable, ch.level, ch.method, offset, scale, ch.attrs)
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
    ds = _as_dataset(ds)
    ax = find_axes(ds)
    inputs_v = _names(variables)
    targets_v = _names(targets) or inputs_v
    static = tuple(_names(static))
    calendar = tuple(_names(calendar))
    if not inputs_v:
        raise ConfigError("fit_spec needs at least one input variable.")
    if int(context) < 1 or int(lead) < 1:
        raise ConfigError(f"context and lead must be >= 1, got context={context}, lead={lead}.")
    bad = [c for c in calendar if c not in CALENDAR_FEATURES]
    if bad:
        raise ConfigError(f"unknown calendar feature(s) {bad}; expected {CALENDAR_FEATURES}.")
    _require_vars(ds, inputs_v, "input")
    _require_vars(ds, targets_v, "target")
    _require_vars(ds, static, "static")
    times = _time_values(ds, ax)
    step = infer_step(times)
    if times.size < context + lead:
        raise DataError(
            f"the record has {times.size} time steps, shorter than context ({context}) + lead "
            f"({lead}) = {context + lead}. Fix: pass a longer record or shorten context/lead."
        )
    fit = ds if period is None else ds.sel({ax.time: period})
    if fit.sizes[ax.time] == 0:
        raise DataError(f"period {period!r} selects no time step of the data.")
    extra = _extra_dims(ds, ax, inputs_v)

    channels = _plan_channels(ds, ax, dict.fromkeys(inputs_v + targets_v), normalization, levels)
    final, clim_arrays, land = _fit_channels(fit, ax, channels, extra, period)
    input_names = [n for v in inputs_v for n, ch in final.items() if ch.variable == v]
    target_names = [n for v in targets_v for n, ch in final.items() if ch.variable == v]
    return DataSpec(
        inputs=tuple(final[n] for n in input_names),
        targets=tuple(final[n] for n in target_names),
        grid=_grid_from(ds, ax),
        step=step,
        context=int(context),
        lead=int(lead),
        static=static,
        calendar=calendar,
        calendar_name=str(ds[ax.time].dt.calendar),
        time_name=ax.time,
        vertical=ax.vertical if any(c.level is not None for c in final.values()) else None,
        vertical_attrs=_jsonable(dict(ds[ax.vertical].attrs)) if ax.vertical else {},
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


# ----------------------------------------------------------------------------------------------
# encode
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Prepared:
    ds: xr.Dataset
    ax: Axes
    iy: np.ndarray
    ix: np.ndarray
    extra: tuple[str, ...]
    extra_sizes: tuple[int, ...]


def _prepare(obj: XArray, spec: DataSpec) -> _Prepared:
    ds = _as_dataset(obj, spec)
    ax = find_axes(ds)
    _require_vars(ds, spec.variables, "input")
    iy, ix = _match_grid(ds, ax, spec)
    extra = tuple(_extra_dims(ds, ax, spec.variables))
    return _Prepared(ds, ax, iy, ix, extra, tuple(int(ds.sizes[e]) for e in extra))


def sample_dims(obj: XArray, spec: DataSpec) -> dict[str, xr.DataArray]:
    """Extra dims of ``obj`` (not time/space/level) that encode treats as samples, in order,
    with their coordinates (an integer range when the dim has none).

    Examples
    --------
    >>> list(sample_dims(ensemble_ds, spec))                            # doctest: +SKIP
    ['member']
    """
    ds = _as_dataset(obj, spec)
    ax = find_axes(ds)
    out = {}
    for dim in _extra_dims(ds, ax, spec.variables):
        coord = ds[dim] if dim in ds.coords else xr.DataArray(np.arange(ds.sizes[dim]), dims=dim)
        out[dim] = coord.reset_coords(drop=True) if dim in ds.coords else coord
    return out


def _normalise(values: np.ndarray, ch: Channel, spec: DataSpec, months: np.ndarray) -> np.ndarray:
    """(T, *E, H, W) raw -> normalised; ``months`` (T,) are the steps' calendar months."""
    # float64 arithmetic: raw values (~290 K) minus a climatology lose digits in float32
    x = values.astype(np.float64)
    if ch.method == "anomaly":
        clim = spec.climatology[ch.name][months - 1]  # (T, H, W)
        x = x - clim.reshape(clim.shape[:1] + (1,) * (x.ndim - 3) + clim.shape[1:])
    return ((x - ch.offset) / ch.scale).astype(np.float32)


def _calendar_features(times: np.ndarray, features: Sequence[str]) -> np.ndarray:
    """(T, 2F) sin/cos of each calendar feature's phase."""
    if not features:
        return np.zeros((len(times), 0), dtype=np.float32)
    parts = _time_parts(times)
    cols = []
    for f in features:
        if f == "month":
            phase = (parts["month"] - 1) / 12.0
        elif f == "dayofyear":
            phase = (parts["dayofyear"] - 1) / parts["days_in_year"]
        else:
            phase = (parts["hour"] + parts["minute"] / 60.0) / 24.0
        cols += [np.sin(2 * np.pi * phase), np.cos(2 * np.pi * phase)]
    return np.stack(cols, axis=-1).astype(np.float32)


def _windows(prep: _Prepared, spec: DataSpec, init_times: Any, channels: Sequence[Channel],
             offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised windows (N, len(offsets), H, W, C) and the raw-finite mask, plus the
    time values of the loaded steps' (n_init, len(offsets)) window."""
    ds, ax = prep.ds, prep.ax
    pos = _positions(ds, ax, init_times)
    n_time = ds.sizes[ax.time]
    steps = pos[:, None] + offsets[None, :]
    if steps.min() < 0 or steps.max() >= n_time:
        i = int(np.argmax((steps < 0).any(1) | (steps >= n_time).any(1)))
        raise DataError(
            f"init time {_fmt(_time_values(ds, ax)[pos[i]])} needs time positions "
            f"{steps[i].min()}..{steps[i].max()}, the data has 0..{n_time - 1} "
            f"(context {spec.context}, lead {spec.lead}). Fix: choose init times from "
            "init_times(ds, spec) or pass a longer record."
        )
    needed = np.unique(steps)
    # load only the needed steps and cells (Dask/lazy backends read just these)
    sub = ds.isel({ax.time: _as_slice(needed), ax.y: _as_slice(prep.iy),
                   ax.x: _as_slice(prep.ix)})
    times = _time_values(sub, ax)
    months = _time_parts(times)["month"]
    planes, finite = [], []
    for ch in channels:
        da = _channel_data(sub, ax, ch, prep.extra)
        for k, dim in enumerate(prep.extra):
            if dim not in da.dims:
                da = da.expand_dims({dim: prep.extra_sizes[k]}, axis=1 + k)
        raw = np.asarray(da.values)
        finite.append(np.isfinite(raw))
        planes.append(_normalise(raw, ch, spec, months))
    data = np.stack(planes, axis=-1)  # (T_needed, *E, H, W, C)
    ok = np.stack(finite, axis=-1)
    where = np.searchsorted(needed, steps)  # (n_init, T_win)
    data, ok = data[where], ok[where]  # (n_init, T_win, *E, H, W, C)
    n_e = len(prep.extra)
    order = (0, *range(2, 2 + n_e), 1, *range(2 + n_e, data.ndim))
    shape = (-1, offsets.size, *data.shape[2 + n_e:])
    data = data.transpose(order).reshape(shape)
    ok = ok.transpose(order).reshape(shape)
    return np.where(ok, data, np.float32(0.0)).astype(np.float32), ok, times[where]


def _as_slice(index: np.ndarray) -> slice | np.ndarray:
    """A contiguous run of positions as a slice: cheaper for Dask and file backends than
    fancy indexing."""
    index = np.asarray(index)
    if index.size and (np.diff(index) == 1).all():
        return slice(int(index[0]), int(index[-1]) + 1)
    if index.size > 1 and (np.diff(index) == -1).all() and index[-1] > 0:
        return slice(int(index[0]), int(index[-1]) - 1, -1)
    return index


def encode_inputs(obj: XArray, spec: DataSpec, init_times: Any) -> np.ndarray:
    """Normalised input windows ending at each init time.

    Only the needed time steps are loaded (Dask-friendly). The data may have descending
    latitude, the other longitude convention (0..360 vs -180..180) or cover a larger domain
    than the model: it is reordered/cropped to the model's grid. Extra dims of the data (an
    ensemble member, an event) become independent samples: N = n_init * prod(extra sizes),
    init-major (see :func:`sample_dims`). NaN is filled with 0 (the normalised mean).
    Static fields and calendar features come last (see
    :attr:`DataSpec.input_channel_names`).

    Returns
    -------
    np.ndarray
        float32 (N, context, H, W, C_in).

    Raises
    ------
    DataError
        Missing variable, grid differs from the model's, init time without context,
        irregular time or a step other than the model's, all-NaN input.

    Examples
    --------
    >>> x = encode_inputs(sst, spec, init_times(sst, spec)[:4])          # doctest: +SKIP
    >>> x.shape                                                        # doctest: +SKIP
    (4, 12, 24, 48, 1)
    """
    prep = _prepare(obj, spec)
    _check_step(_time_values(prep.ds, prep.ax), spec)
    init = np.atleast_1d(np.asarray(init_times))
    offsets = np.arange(-spec.context + 1, 1)
    x, ok, times = _windows(prep, spec, init, spec.inputs, offsets)
    per_sample = ok.reshape(ok.shape[0], -1).any(axis=1)
    if not per_sample.all():
        i = int(np.argmax(~per_sample))
        bad = init[i // max(1, int(np.prod(prep.extra_sizes)))]
        raise DataError(
            f"the input window ending at {_fmt(bad)} is all NaN for {spec.variables}. "
            "Fix: check the data (wrong variable, fill values not decoded?) or drop that time."
        )
    n, t, h, w, _ = x.shape
    extra_planes = []
    if spec.static:
        static = np.stack([spec.static_values[s] for s in spec.static], axis=-1)
        extra_planes.append(np.broadcast_to(static, (n, t, h, w, len(spec.static))))
    if spec.calendar:
        feats = _calendar_features(times.ravel(), spec.calendar).reshape(len(init), t, -1)
        feats = np.repeat(feats, n // len(init), axis=0)  # init-major, like the samples
        extra_planes.append(np.broadcast_to(feats[:, :, None, None, :],
                                            (n, t, h, w, feats.shape[-1])))
    if extra_planes:
        x = np.concatenate([x, *extra_planes], axis=-1)
    return np.ascontiguousarray(x, dtype=np.float32)


def encode_targets(obj: XArray, spec: DataSpec, init_times: Any) -> tuple[np.ndarray, np.ndarray]:
    """Normalised target windows (the ``spec.lead`` steps after each init time) and their mask.

    Returns
    -------
    y : np.ndarray
        float32 (N, lead, H, W, C_out); NaN filled with 0.
    valid : np.ndarray
        bool, same shape, True where the observation exists (use it to mask the loss).

    Examples
    --------
    >>> y, valid = encode_targets(sst, spec, inits)                     # doctest: +SKIP
    >>> loss = (((pred - y) ** 2) * valid).sum() / valid.sum()          # doctest: +SKIP
    """
    prep = _prepare(obj, spec)
    _require_vars(prep.ds, list(dict.fromkeys(c.variable for c in spec.targets)), "target")
    _check_step(_time_values(prep.ds, prep.ax), spec)
    init = np.atleast_1d(np.asarray(init_times))
    y, ok, _ = _windows(prep, spec, init, spec.targets, np.arange(1, spec.lead + 1))
    return y, ok


# ----------------------------------------------------------------------------------------------
# decode
# ----------------------------------------------------------------------------------------------
def _to_numpy(y: Any) -> np.ndarray:
    if hasattr(y, "detach"):  # a torch tensor; no torch import needed here
        y = y.detach().float().cpu().numpy()
    return np.asarray(y, dtype=np.float32)


def decode(
    y: Any,
    spec: DataSpec,
    init_times: Any,
    lead: int | Sequence[int] | None = None,
    like: XArray | None = None,
) -> xr.Dataset:
    """Model output -> labelled forecast dataset.

    Parameters
    ----------
    y : array-like
        (N, L, H, W, C_out) normalised model output (np.ndarray or torch tensor);
        N = n_init * prod(extra sizes) as produced by :func:`encode_inputs`.
    spec : DataSpec
    init_times : array-like
        The n_init init times used to encode.
    lead : int or sequence of int, optional
        Step counts of the L leads (default 1..L).
    like : xr.Dataset or xr.DataArray, optional
        The input data: the output then uses its grid orientation, longitude convention,
        coordinate names/values and extra (sample) dims. Default: the spec's grid.

    Returns
    -------
    xr.Dataset
        One variable per target, dims ``(init_time, lead_time, *extra, [level], y, x)``,
        coords ``lead_time`` (timedelta or int + units), 2-D ``valid_time``, the grid's
        lat/lon (2-D on projected grids) and grid mapping; variable attrs from the spec;
        NaN where :attr:`DataSpec.land_mask` says.

    Raises
    ------
    ShapeError
        ``y`` does not have the shape the spec, init times and extra dims imply.

    Examples
    --------
    >>> fc = decode(model(torch.from_numpy(x)), spec, inits, like=sst)  # doctest: +SKIP
    """
    values = _to_numpy(y)
    init = np.atleast_1d(np.asarray(init_times))
    h, w = spec.grid.shape
    extra: dict[str, xr.DataArray] = sample_dims(like, spec) if like is not None else {}
    e_sizes = tuple(int(c.size) for c in extra.values())
    n_expected = init.size * int(np.prod(e_sizes, dtype=np.int64))
    if values.ndim != 5 or values.shape[0] != n_expected or values.shape[2:] != (h, w, spec.n_targets):
        sizes = dict(zip(extra, e_sizes, strict=True))
        raise ShapeError(
            f"model output has shape {values.shape}; expected ({n_expected}, L, {h}, {w}, "
            f"{spec.n_targets}) for {init.size} init times x extra dims {sizes} "
            f"on the model grid with channels {[c.name for c in spec.targets]}."
        )
    n_lead = values.shape[1]
    steps = _lead_steps(n_lead if lead is None else lead)
    if steps.size != n_lead:
        raise ShapeError(f"got {steps.size} lead steps for an output with {n_lead} leads.")
    coords = time_coords(init, spec.step, steps)
    # (n_init, *E, L, H, W, C) -> (n_init, L, *E, H, W, C)
    values = values.reshape((init.size, *e_sizes, n_lead, h, w, spec.n_targets))
    n_e = len(e_sizes)
    values = values.transpose((0, 1 + n_e, *range(1, 1 + n_e), *range(2 + n_e, values.ndim)))
    months = _time_parts(coords["valid_time"].values.ravel())["month"].reshape(init.size, n_lead)
    fields = {}
    for k, ch in enumerate(spec.targets):
        x = values[..., k].astype(np.float64) * ch.scale + ch.offset
        if ch.method == "anomaly":
            clim = spec.climatology[ch.name][months - 1]  # (n_init, L, H, W)
            x = x + clim.reshape(clim.shape[:2] + (1,) * n_e + clim.shape[2:])
        if ch.name in spec.land_mask:
            x = np.where(spec.land_mask[ch.name], np.float32(np.nan), x)
        fields[ch.name] = x.astype(np.float32)
    grid_coords, y_dim, x_dim, order_y, order_x, gm = _output_grid(spec, like)
    dims = ("init_time", "lead_time", *extra, y_dim, x_dim)
    out = xr.Dataset(coords={**coords, **extra, **grid_coords})
    for var in dict.fromkeys(c.variable for c in spec.targets):
        chans = [c for c in spec.targets if c.variable == var]
        stack = [fields[c.name][..., order_y, :][..., order_x] for c in chans]
        attrs = dict(chans[0].attrs)
        if gm is not None:
            attrs["grid_mapping"] = gm
        if chans[0].level is None:
            out[var] = xr.DataArray(stack[0], dims=dims, attrs=attrs)
        else:
            vdim = spec.vertical or "level"
            data = np.stack(stack, axis=-3)
            out[var] = xr.DataArray(data, dims=(*dims[:-2], vdim, y_dim, x_dim), attrs=attrs)
            out = out.assign_coords({vdim: xr.DataArray([c.level for c in chans], dims=vdim,
                                                        attrs=dict(spec.vertical_attrs))})
    return out


def _output_grid(spec: DataSpec, like: XArray | None
                 ) -> tuple[dict[str, Any], str, str, np.ndarray, np.ndarray, str | None]:
    """Coords, dim names and the permutation from spec order to the output's order."""
    g = spec.grid
    if like is None:
        order_y, order_x = np.arange(g.shape[0]), np.arange(g.shape[1])
        coords = {g.y: xr.DataArray(g.y_values, dims=g.y, attrs=dict(g.coord_attrs.get(g.y, {}))),
                  g.x: xr.DataArray(g.x_values, dims=g.x, attrs=dict(g.coord_attrs.get(g.x, {})))}
        if g.projected and g.lat_values is not None:
            for name, vals in ((g.lat, g.lat_values), (g.lon, g.lon_values)):
                coords[name] = xr.DataArray(vals, dims=(g.y, g.x),
                                            attrs=dict(g.coord_attrs.get(name, {})))
        gm = g.grid_mapping
        if gm is not None:
            coords[gm] = xr.DataArray(np.int32(0), attrs=dict(g.grid_mapping_attrs))
        return coords, g.y, g.x, order_y, order_x, gm
    ds = _as_dataset(like, spec)
    ax = find_axes(ds)
    iy, ix = _match_grid(ds, ax, spec)
    order_y, order_x = np.argsort(iy, kind="stable"), np.argsort(ix, kind="stable")
    cells = ds.isel({ax.y: iy[order_y], ax.x: ix[order_x]})
    coords = {}
    for name in {ax.y, ax.x, ax.lat, ax.lon} - {None}:
        if name in cells.coords:
            coords[name] = cells[name].reset_coords(drop=True).variable
    gm = ax.grid_mapping
    if gm is not None:
        coords[gm] = ds[gm].variable
    elif spec.grid.grid_mapping is not None:  # e.g. ds[variables] dropped the crs variable
        gm = spec.grid.grid_mapping
        coords[gm] = xr.Variable((), np.int32(0), dict(spec.grid.grid_mapping_attrs))
    return coords, ax.y, ax.x, order_y, order_x, gm
