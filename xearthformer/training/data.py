"""Training windows from labelled data: the time split and lazy (or cached) window sources.

The record is split by time at one instant: training windows (context + lead steps) lie
entirely before it, validation windows entirely after it, so no window straddles the split
and no validation value reaches the training windows or the normalisation statistics.

Windows are encoded by :func:`xearthformer.layout.encode_inputs` / ``encode_targets``
batch by batch from the (Dask/Zarr-backed) dataset, loading only the time steps a batch
needs; small in-memory data are encoded once and kept (``cache``).

>>> split = split_by_time(ds, val=0.2)                             # doctest: +SKIP
>>> src = XarrayWindows(split.train_data, spec, inits)            # doctest: +SKIP
>>> x, y, mask = src.get(np.array([0, 3]))                         # doctest: +SKIP
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from .. import layout
from ..errors import DataError, XEarthformerWarning


@dataclass(frozen=True)
class TimeSplit:
    """The training and validation parts of a record.

    Attributes
    ----------
    train_data, val_data : xr.Dataset or None
        Time subsets (``val_data`` None without validation).
    train_period, val_period : slice
        Label slices of the two periods (first and last time of each part).
    """

    train_data: xr.Dataset
    val_data: xr.Dataset | None
    train_period: slice
    val_period: slice | None


def _time_index(ds: xr.Dataset, time: str, when: Any) -> int:
    """Position of the first time >= ``when`` (labels, partial date strings, cftime)."""
    index = ds.indexes[time]
    try:
        start = index.slice_indexer(when, None).start
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(
            f"val={when!r} is not a time on the {time!r} axis ({index[0]} .. {index[-1]}); "
            "expected a fraction in (0, 1) such as 0.2, a start date such as '2009-10', a "
            "slice, or None."
        ) from err
    return 0 if start is None else int(start)


#: the share of the record that ``val="auto"`` validates on
AUTO_VAL_FRACTION = 0.2


def _auto_start(n: int, window: int | None) -> int | None:
    """Start of the validation period of ``val="auto"`` (None: no validation)."""
    n_val = max(1, int(round(AUTO_VAL_FRACTION * n)))
    if window is None:
        return n - n_val if n - n_val > 0 else None
    n_val = max(n_val, window)                     # at least one validation window
    return n - n_val if n - n_val >= window else None


def split_by_time(ds: xr.Dataset, val: Any = "auto", time: str | None = None,
                  window: int | None = None) -> TimeSplit:
    """Split ``ds`` into a training and a later validation period.

    Parameters
    ----------
    ds : xr.Dataset
    val : "auto", float, str, datetime-like, slice or None
        ``"auto"`` (default): the last 20 % of the time steps, widened to one ``window`` when
        that is shorter; no validation (with a warning) when the record cannot hold a training
        and a validation window. A fraction in (0, 1): the last ``val`` of the time steps; a
        time label: validation starts there; a slice: the validation period (training =
        everything before its start); None or 0: no validation.
    time : str, optional
        Time dimension (default: found with :func:`xearthformer.layout.find_axes`).
    window : int, optional
        Steps of one window (context + lead), for ``"auto"``.

    Returns
    -------
    TimeSplit

    Examples
    --------
    >>> s = split_by_time(ds, val="2009-10")                          # doctest: +SKIP
    >>> s.train_period                                                # doctest: +SKIP
    slice('2006-04-16', '2009-09-16', None)
    """
    time = time or layout.find_axes(ds).time
    n = ds.sizes[time]
    if isinstance(val, str) and val == "auto":
        start = _auto_start(n, window)
        if start is None and window is not None and n < window:  # not even one window: the
            return TimeSplit(ds, None, _period(ds, time, 0, n), None)  # spec fit says so
        if start is None:
            warnings.warn(
                f"the record has {n} time steps: too few for a training and a validation window "
                f"(context + lead = {window} steps each), so training runs without validation (no "
                "best epoch, no early stopping). Pass val=... to choose a validation period.",
                XEarthformerWarning, stacklevel=3)
            return TimeSplit(ds, None, _period(ds, time, 0, n), None)
        return TimeSplit(ds.isel({time: slice(0, start)}), ds.isel({time: slice(start, n)}),
                         _period(ds, time, 0, start), _period(ds, time, start, n))
    if val is None or (isinstance(val, (int, float)) and not isinstance(val, bool) and val == 0):
        return TimeSplit(ds, None, _period(ds, time, 0, n), None)
    stop = None
    if isinstance(val, float) or (isinstance(val, int) and not isinstance(val, bool)):
        if not 0.0 < float(val) < 1.0:
            raise DataError(f"val={val!r}: a validation fraction must lie in (0, 1); pass e.g. 0.2, "
                            "a start date such as '2009-10', a slice, or None.")
        start = n - max(1, int(round(float(val) * n)))
    elif isinstance(val, slice):
        start = _time_index(ds, time, val.start)
        stop = n if val.stop is None else int(ds.indexes[time].slice_indexer(None, val.stop).stop)
    else:
        start = _time_index(ds, time, val)
    if start <= 0 or start >= n:
        raise DataError(f"val={val!r} leaves {'no training' if start <= 0 else 'no validation'} "
                        f"period in a record of {n} steps ({_label(ds, time, 0)} to "
                        f"{_label(ds, time, n - 1)}); choose a split inside the record.")
    stop = n if stop is None else stop
    return TimeSplit(ds.isel({time: slice(0, start)}), ds.isel({time: slice(start, stop)}),
                     _period(ds, time, 0, start), _period(ds, time, start, stop))


def _label(ds: xr.Dataset, time: str, i: int) -> Any:
    return ds[time].values[i]


def _period(ds: xr.Dataset, time: str, start: int, stop: int) -> slice:
    return slice(_label(ds, time, start), _label(ds, time, stop - 1))


def samples_per_init(ds: xr.Dataset, spec: layout.DataSpec) -> int:
    """Samples each init time gives (the product of the extra 'sample' dims, e.g. members)."""
    return int(math.prod(len(c) for c in layout.sample_dims(ds, spec).values()))


class XarrayWindows:
    """A :class:`~xearthformer.training.loop.WindowSource` over labelled data.

    Window ``i`` is init time ``i // E``, extra sample ``i % E`` (``E`` from
    :func:`samples_per_init`), in :func:`xearthformer.layout.encode_inputs`' order.

    Parameters
    ----------
    ds : xr.Dataset
        Data holding every context and target step of ``inits``.
    spec : DataSpec
    inits : array-like
        Init times (from :func:`xearthformer.layout.init_times` with ``targets=True``).
    cache : bool
        Encode every window once and keep them in memory (small data); otherwise encode
        each batch when asked, loading only the time steps it needs (Dask/Zarr data).
    keep : np.ndarray, optional
        (n_init, samples per init) bool: the windows to use (default all), e.g. those
        :func:`xearthformer.layout.valid_windows` finds data in.

    Examples
    --------
    >>> src = XarrayWindows(ds, spec, layout.init_times(ds, spec, targets=True))  # doctest: +SKIP
    >>> len(src)                                                                # doctest: +SKIP
    31
    """

    def __init__(self, ds: xr.Dataset, spec: layout.DataSpec, inits: Any, cache: bool = False,
                 keep: np.ndarray | None = None) -> None:
        self.ds = ds
        self.spec = spec
        self.inits = np.asarray(inits)
        self.per_init = samples_per_init(ds, spec)
        # window ids (init position * per_init + sample) in use: all, or those ``keep`` marks
        everything = np.arange(len(self.inits) * self.per_init)
        self.windows = everything if keep is None else everything[np.asarray(keep, bool).ravel()]
        self._cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        if cache and len(self.windows):
            self._cache = self._encode(self.inits)

    def __len__(self) -> int:
        return len(self.windows)

    def _encode(self, inits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # windows without input are never asked for (``keep``), but may share an init time
        x = layout.encode_inputs(self.ds, self.spec, inits, allow_empty=True)
        y, mask = layout.encode_targets(self.ds, self.spec, inits)
        return x, y, mask

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        indices = self.windows[np.asarray(indices, dtype=np.int64)]
        if self._cache is not None:
            x, y, m = self._cache
            return x[indices], y[indices], m[indices]
        init_pos, member = np.divmod(indices, self.per_init)
        unique = np.unique(init_pos)
        # encode loads only the distinct time steps these windows touch, not the span between
        x, y, m = self._encode(self.inits[unique])
        rows = np.searchsorted(unique, init_pos) * self.per_init + member
        return x[rows], y[rows], m[rows]


def estimated_bytes(n_windows: int, spec: layout.DataSpec) -> int:
    """Memory that caching ``n_windows`` encoded windows takes (x, y float32 + mask)."""
    t_in = math.prod(spec.input_shape)
    t_out = math.prod(spec.target_shape)
    return n_windows * (4 * t_in + 5 * t_out)


def roll_augment(flip_sign: bool = False) -> Any:
    """A training augmentation for data periodic in longitude (global or zonal bands).

    Every window is rolled by a random number of columns along W (inputs, targets and mask
    together), so the model cannot learn the few events of a short record by their place;
    with ``flip_sign`` the (normalised) values also change sign at random, which suits
    anomalies (``normalization="anomaly"``) with roughly symmetric dynamics.

    Returns
    -------
    callable
        ``f(x, y, mask, rng) -> (x, y, mask)`` for ``train(..., augment=...)``.

    Examples
    --------
    >>> f = roll_augment(flip_sign=True)
    >>> x = np.arange(8, dtype=np.float32).reshape(1, 1, 1, 8, 1)
    >>> xa, ya, _ = f(x, x.copy(), None, np.random.default_rng(0))
    >>> bool(np.array_equal(xa, ya)), sorted(np.abs(xa).ravel()) == list(range(8))
    (True, True)
    """

    def augment(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        shifts = rng.integers(0, x.shape[3], size=len(x))
        signs = rng.choice(np.array([-1.0, 1.0], np.float32), size=len(x)) if flip_sign else None
        xs, ys, ms = np.empty_like(x), np.empty_like(y), None if mask is None else np.empty_like(mask)
        for i, k in enumerate(shifts):
            xs[i] = np.roll(x[i], k, axis=2)  # (T, H, W, C): W is axis 2 of a sample
            ys[i] = np.roll(y[i], k, axis=2)
            if ms is not None:
                ms[i] = np.roll(mask[i], k, axis=2)
            if signs is not None:
                xs[i] *= signs[i]
                ys[i] *= signs[i]
        return xs, ys, ms

    augment.description = f"roll_augment(flip_sign={flip_sign})"  # type: ignore[attr-defined]
    return augment
