"""Labelled data -> normalised model tensors: input windows (N, context, H, W, C_in) with
static and calendar channels, target windows with their validity mask, and the extra
dims that become samples.

>>> x = encode_inputs(sst, spec, init_times(sst, spec)[:4])          # doctest: +SKIP
>>> y, valid = encode_targets(sst, spec, inits)                     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from ..errors import DataError
from .axes import Axes, XArray, find_axes
from .dataview import as_dataset, channel_data, extra_dims, require_vars, time_values
from .grid import match_grid
from .spec import Channel, DataSpec
from .timeaxis import format_time, time_parts
from .validation import check_finite, check_range
from .windows import check_step, time_positions


@dataclass(frozen=True)
class _Prepared:
    ds: xr.Dataset
    ax: Axes
    iy: np.ndarray
    ix: np.ndarray
    extra: tuple[str, ...]
    extra_sizes: tuple[int, ...]


def _prepare(obj: XArray, spec: DataSpec) -> _Prepared:
    ds = as_dataset(obj, spec)
    ax = find_axes(ds)
    require_vars(ds, spec.variables, "input")
    iy, ix = match_grid(ds, ax, spec)
    extra = tuple(extra_dims(ds, ax, spec.variables))
    return _Prepared(ds, ax, iy, ix, extra, tuple(int(ds.sizes[e]) for e in extra))


def sample_dims(obj: XArray, spec: DataSpec) -> dict[str, xr.DataArray]:
    """Extra dims of ``obj`` (not time/space/level) that encode treats as samples, in order,
    with their coordinates (an integer range when the dim has none).

    Examples
    --------
    >>> list(sample_dims(ensemble_ds, spec))                            # doctest: +SKIP
    ['member']
    """
    ds = as_dataset(obj, spec)
    ax = find_axes(ds)
    out = {}
    for dim in extra_dims(ds, ax, spec.variables):
        coord = ds[dim] if dim in ds.coords else xr.DataArray(np.arange(ds.sizes[dim]), dims=dim)
        out[dim] = coord.reset_coords(drop=True) if dim in ds.coords else coord
    return out


def _normalise(values: np.ndarray, ch: Channel, spec: DataSpec, months: np.ndarray) -> np.ndarray:
    """(T, *E, H, W) raw -> normalised; ``months`` (T,) are the steps' calendar months."""
    clim = None
    if ch.method == "anomaly":
        clim = spec.climatology[ch.name][months - 1]  # (T, H, W)
        clim = clim.reshape(clim.shape[:1] + (1,) * (values.ndim - 3) + clim.shape[1:])
    return ch.normalise(values, clim)


def _calendar_features(times: np.ndarray, features: Sequence[str]) -> np.ndarray:
    """(T, 2F) sin/cos of each calendar feature's phase."""
    if not features:
        return np.zeros((len(times), 0), dtype=np.float32)
    parts = time_parts(times)
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
             offsets: np.ndarray, range_margin: float | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised windows (N, len(offsets), H, W, C) and the raw-finite mask, plus the
    time values of the loaded steps' (n_init, len(offsets)) window. Every loaded value is
    checked (:func:`~xearthformer.layout.validation.check_finite`; with ``range_margin``, also
    :func:`~xearthformer.layout.validation.check_range`)."""
    ds, ax = prep.ds, prep.ax
    pos = time_positions(ds, ax, init_times)
    n_time = ds.sizes[ax.time]
    steps = pos[:, None] + offsets[None, :]
    if steps.min() < 0 or steps.max() >= n_time:
        i = int(np.argmax((steps < 0).any(1) | (steps >= n_time).any(1)))
        raise DataError(
            f"init time {format_time(time_values(ds, ax)[pos[i]])} needs time positions "
            f"{steps[i].min()}..{steps[i].max()}, the data has 0..{n_time - 1} "
            f"(context {spec.context}, lead {spec.lead}). Fix: choose init times from "
            "init_times(ds, spec) or pass a longer record."
        )
    needed = np.unique(steps)
    # load only the needed steps and cells (Dask/lazy backends read just these)
    sub = ds.isel({ax.time: _as_slice(needed), ax.y: _as_slice(prep.iy),
                   ax.x: _as_slice(prep.ix)})
    times = time_values(sub, ax)
    months = time_parts(times)["month"]
    planes, finite = [], []
    for ch in channels:
        da = channel_data(sub, ax, ch, prep.extra)
        for k, dim in enumerate(prep.extra):
            if dim not in da.dims:
                da = da.expand_dims({dim: prep.extra_sizes[k]}, axis=1 + k)
        raw = np.asarray(da.values)
        check_finite(raw, f"{ch.name!r}", times)  # NaN is missing; +-inf and fill values are not
        finite.append(np.isfinite(raw))
        plane = _normalise(raw, ch, spec, months)
        check_range(plane, ch, range_margin, times)
        planes.append(plane)
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


def encode_inputs(obj: XArray, spec: DataSpec, init_times: Any, *, range_margin: float | None = None,
                  allow_empty: bool = False) -> np.ndarray:
    """Normalised input windows ending at each init time.

    Only the needed time steps are loaded (Dask-friendly). The data may have descending
    latitude, the other longitude convention (0..360 vs -180..180) or cover a larger domain
    than the model: it is reordered/cropped to the model's grid. Extra dims of the data (an
    ensemble member, an event) become independent samples: N = n_init * prod(extra sizes),
    init-major (see :func:`sample_dims`). NaN is filled with 0 (the normalised mean).
    Static fields and calendar features come last (see
    :attr:`DataSpec.input_channel_names`).

    Parameters
    ----------
    obj : xr.Dataset or xr.DataArray
    spec : DataSpec
    init_times : array-like
    range_margin : float, optional
        Refuse values outside the training range widened by this many times its width (see
        :func:`xearthformer.layout.validation.check_range`); None (default) does not check.
        Forecasting checks, training does not (its statistics come from these data).
    allow_empty : bool
        Give windows without any valid input (all NaN) as zeros instead of refusing them
        (training drops such windows before it asks).

    Returns
    -------
    np.ndarray
        float32 (N, context, H, W, C_in).

    Raises
    ------
    DataError
        Missing variable, grid differs from the model's, init time without context,
        irregular time or a step other than the model's, all-NaN input, infinite or fill
        values, values outside the training range (with ``range_margin``).

    Examples
    --------
    >>> x = encode_inputs(sst, spec, init_times(sst, spec)[:4])          # doctest: +SKIP
    >>> x.shape                                                        # doctest: +SKIP
    (4, 12, 24, 48, 1)
    """
    prep = _prepare(obj, spec)
    check_step(time_values(prep.ds, prep.ax), spec)
    init = np.atleast_1d(np.asarray(init_times))
    offsets = np.arange(-spec.context + 1, 1)
    x, ok, times = _windows(prep, spec, init, spec.inputs, offsets, range_margin)
    per_sample = ok.reshape(ok.shape[0], -1).any(axis=1)
    if not per_sample.all() and not allow_empty:
        per_init = max(1, int(np.prod(prep.extra_sizes)))
        empty = np.unique(np.flatnonzero(~per_sample) // per_init)
        raise DataError(
            f"the input window ending at {format_time(init[empty[0]])} is all NaN for "
            f"{spec.variables} ({empty.size} of {init.size} init times have no input data): there "
            "is nothing to forecast from. Fix: choose init times with data (init=...), or check "
            "the data (wrong variable or period?)."
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
    require_vars(prep.ds, list(dict.fromkeys(c.variable for c in spec.targets)), "target")
    check_step(time_values(prep.ds, prep.ax), spec)
    init = np.atleast_1d(np.asarray(init_times))
    y, ok, _ = _windows(prep, spec, init, spec.targets, np.arange(1, spec.lead + 1))
    return y, ok
