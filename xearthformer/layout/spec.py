"""The :class:`DataSpec` and its parts (:class:`Channel`, :class:`Grid`): everything needed
to use a model on labelled data except the weights, with its JSON + arrays serialisation,
and the per-cell arrays derived from it (area weights, target mask).

>>> vil = Channel("vil", method="scale", offset=0.0, scale=255.0)
>>> DataSpec(inputs=(vil,), targets=(vil,), grid=Grid.xy(range(4), range(4)),
...          step=TimeStep(5, "minutes"), context=3, lead=2).input_shape
(3, 4, 4, 1)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from .timeaxis import TimeStep


#: format version of :meth:`DataSpec.to_dict`; bump when the meaning of a field changes.
SPEC_VERSION = 1
NORMALIZATIONS = ("zscore", "anomaly", "scale", "minmax", "none")
CALENDAR_FEATURES = ("month", "dayofyear", "hour")
#: variable attributes carried from the data into the spec and onto decoded output
KEPT_ATTRS = ("units", "standard_name", "long_name")


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
    range : tuple of float or None
        (min, max) of the *normalised* training values (anomalies for ``method="anomaly"``),
        which forecasting inputs must not leave by much
        (:func:`xearthformer.layout.validation.check_range`); None in specs fitted before
        ranges were kept.

    Examples
    --------
    >>> import numpy as np
    >>> sst = Channel("sst", offset=290.0, scale=2.0, attrs={"units": "K"})
    >>> float(sst.normalise(294.0)), float(sst.denormalise(np.float32(2.0)))
    (2.0, 294.0)
    >>> Channel("t", level=850).name
    't[850]'
    """

    variable: str
    level: Any = None
    method: str = "zscore"
    offset: float = 0.0
    scale: float = 1.0
    attrs: Mapping[str, Any] = field(default_factory=dict)
    range: tuple[float, float] | None = None

    @property
    def name(self) -> str:
        """Unique channel name: ``variable`` or ``variable[level]``."""
        return self.variable if self.level is None else f"{self.variable}[{self.level}]"

    def normalise(self, values: Any, climatology: Any = None, dtype: Any = np.float64) -> np.ndarray:
        """Raw values -> normalised float32: ``(x - climatology - offset) / scale``.

        ``climatology`` (broadcastable to ``values``) is needed for, and only used by,
        ``method="anomaly"``. The arithmetic runs in ``dtype``: float64 by default, because raw
        values (~290 K) minus a climatology lose digits in float32; the papers' evaluation
        protocols scale in float32 (``dtype=np.float32``), as the official code does.

        >>> round(float(Channel("vil", method="scale", scale=255.0).normalise(np.float32(51.0))), 6)
        0.2
        """
        x = np.asarray(values).astype(dtype)
        if self.method == "anomaly":
            x = x - self._climatology(climatology).astype(dtype)
        return ((x - dtype(self.offset)) / dtype(self.scale)).astype(np.float32)

    def denormalise(self, values: Any, climatology: Any = None, dtype: Any = np.float64) -> np.ndarray:
        """Inverse of :meth:`normalise`, in ``dtype`` (callers cast once, after any masking).

        >>> round(float(Channel("vil", method="scale", scale=255.0).denormalise(np.float32(0.2))), 4)
        51.0
        """
        x = np.asarray(values).astype(dtype) * dtype(self.scale) + dtype(self.offset)
        if self.method == "anomaly":
            x = x + self._climatology(climatology).astype(dtype)
        return x

    def _climatology(self, climatology: Any) -> np.ndarray:
        if climatology is None:
            raise ConfigError(f"channel {self.name!r} is normalised as an anomaly; its climatology "
                              "(DataSpec.climatology) is needed to convert it.")
        return np.asarray(climatology)


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

    Examples
    --------
    >>> import numpy as np
    >>> grid = Grid.latlon(np.arange(-55, 61, 5.0), np.arange(95, 331, 5.0))
    >>> grid.shape, grid.y, grid.lat
    ((24, 48), 'lat', 'lat')
    >>> Grid.xy(range(384), range(384)).lat is None                 # a pixel grid
    True
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
                "y_values": jsonable(np.asarray(g.y_values)),
                "x_values": jsonable(np.asarray(g.x_values)),
                "coord_attrs": jsonable(dict(g.coord_attrs)),
                "grid_mapping": g.grid_mapping,
                "grid_mapping_attrs": jsonable(dict(g.grid_mapping_attrs)),
            },
            "step": {"n": int(self.step.n), "unit": self.step.unit},
            "calendar_name": self.calendar_name,
            "context": int(self.context),
            "lead": int(self.lead),
            "time_name": self.time_name,
            "vertical": self.vertical,
            "vertical_attrs": jsonable(dict(self.vertical_attrs)),
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
def jsonable(v: Any) -> Any:
    """Plain-Python copy of attrs/values for JSON; drops what JSON cannot hold."""
    if isinstance(v, Mapping):
        out = {}
        for k, item in v.items():
            conv = jsonable(item)
            if conv is not _DROP:
                out[str(k)] = conv
        return out
    if isinstance(v, np.ndarray):
        return [jsonable(x) for x in v.tolist()] if v.dtype.kind != "O" else _DROP
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return _DROP


_DROP = object()


def _channel_to_dict(c: Channel) -> dict[str, Any]:
    out = {"variable": c.variable, "level": jsonable(c.level), "method": c.method,
           "offset": float(c.offset), "scale": float(c.scale), "attrs": jsonable(dict(c.attrs))}
    if c.range is not None:  # absent (not null) when unknown: old readers see the old layout
        out["range"] = [float(c.range[0]), float(c.range[1])]
    return out


def _channel_from_dict(d: Mapping[str, Any]) -> Channel:
    bounds = d.get("range")
    if bounds is not None and (not isinstance(bounds, (list, tuple)) or len(bounds) != 2):
        raise ConfigError(f"channel {d.get('variable')!r}: range must be [min, max], got {bounds!r}.")
    return Channel(variable=d["variable"], level=d.get("level"), method=d.get("method", "zscore"),
                   offset=float(d.get("offset", 0.0)), scale=float(d.get("scale", 1.0)),
                   attrs=dict(d.get("attrs", {})),
                   range=None if bounds is None else (float(bounds[0]), float(bounds[1])))


def coslat(lat: Any) -> Any:
    """Cell-area weights of latitudes in degrees: cos(latitude), clipped at 0 (a value just
    beyond a pole must not weigh negatively). Works on numpy and xarray alike: the one
    definition of area weights for losses (:func:`area_weights`) and scores (``metrics``).

    Examples
    --------
    >>> coslat(np.array([0.0, 60.0, 90.0])).round(3).tolist()
    [1.0, 0.5, 0.0]
    """
    return np.clip(np.cos(np.deg2rad(lat * 1.0)), 0.0, None)


def area_weights(spec: DataSpec) -> np.ndarray:
    """(H, W) float32 cell weights, :func:`coslat` normalised to mean 1 (ones on projected
    grids, whose cells are near-equal in area), for latitude-weighted losses and scores.

    Examples
    --------
    >>> area_weights(spec).mean()                                       # doctest: +SKIP
    1.0
    """
    h, w = spec.grid.shape
    if spec.grid.projected:
        return np.ones((h, w), dtype=np.float32)
    weights = coslat(np.asarray(spec.grid.y_values, dtype=np.float64))
    weights = np.broadcast_to(weights[:, None], (h, w))
    return (weights / weights.mean()).astype(np.float32)


def target_mask(spec: DataSpec) -> np.ndarray:
    """(H, W, C_out) bool, True where a target channel has data (not land).

    Examples
    --------
    Fitted on SST with a land point (NaN at every time):

    >>> import numpy as np, pandas as pd, xarray as xr
    >>> from xearthformer.layout import fit_spec
    >>> values = np.arange(24.0).reshape(6, 2, 2)
    >>> values[:, 0, 0] = np.nan
    >>> sst = xr.DataArray(values, dims=("time", "lat", "lon"), name="sst",
    ...                    coords={"time": pd.date_range("2000-01", periods=6, freq="MS"),
    ...                            "lat": [0.0, 1.0], "lon": [10.0, 11.0]})
    >>> target_mask(fit_spec(sst, "sst", context=2, lead=1))[..., 0].tolist()
    [[False, True], [True, True]]
    """
    h, w = spec.grid.shape
    planes = [~np.asarray(spec.land_mask[c.name], dtype=bool) if c.name in spec.land_mask
              else np.ones((h, w), dtype=bool) for c in spec.targets]
    return np.stack(planes, axis=-1)
