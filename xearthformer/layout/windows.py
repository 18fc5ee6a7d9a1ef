"""Which init times of a record are usable with a spec (a full context before them, and
optionally ``lead`` targets after), and which time positions they need.

Convention: ``init_time`` is the time of the last context step; leads are 1..L steps after it.

>>> inits = init_times(sst, spec, init=slice("2009", "2010"))      # doctest: +SKIP
>>> sst.isel(time=required_time_slice(sst, spec, inits))           # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ..errors import DataError
from .axes import Axes, XArray, find_axes
from .dataview import as_dataset, time_values
from .spec import DataSpec
from .timeaxis import format_time, infer_step
from .validation import check_calendar, init_labels


def check_step(times: np.ndarray, spec: DataSpec) -> None:
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
    ds = as_dataset(obj, spec)
    ax = find_axes(ds)
    times = time_values(ds, ax)
    n = times.size
    need = spec.context + (spec.lead if targets else 0)
    what = f"context ({spec.context})" + (f" + lead ({spec.lead})" if targets else "")
    if n < need:
        raise DataError(
            f"the record has {n} time steps, shorter than the model's {what} = {need}. "
            "Fix: pass a longer record."
        )
    check_step(times, spec)
    check_calendar(str(ds[ax.time].dt.calendar), spec)
    first, last = spec.context - 1, n - 1 - (spec.lead if targets else 0)
    if init is None:
        return times[first:last + 1]
    init = init_labels(init)  # datetime.date -> midnight; time-zone aware -> refused
    try:
        chosen = np.atleast_1d(ds[ax.time].sel({ax.time: init}).values)
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(
            f"init time(s) {init!r} not found on the time axis, which runs from "
            f"{format_time(times[0])} to {format_time(times[-1])}. Fix: pick times present in the data."
        ) from err
    pos = time_positions(ds, ax, chosen)
    ok = (pos >= first) & (pos <= last)
    if isinstance(init, slice):
        if not ok.any():
            raise DataError(
                f"no init time in {init!r} has a full {what}; usable init times run from "
                f"{format_time(times[first])} to {format_time(times[last])}."
            )
        return chosen[ok]
    if not ok.all():
        bad = chosen[~ok][0]
        raise DataError(
            f"init time {format_time(bad)} lacks a full {what} of data around it; usable init times run "
            f"from {format_time(times[first])} to {format_time(times[last])}. Fix: pick a later init time or "
            "pass more data before it."
        )
    return chosen


def time_positions(ds: xr.Dataset, ax: Axes, init_times: Any) -> np.ndarray:
    """Integer positions of ``init_times`` on the time axis; DataError for absent ones."""
    values = np.atleast_1d(np.asarray(init_times))
    index = ds.indexes[ax.time]
    if values.dtype.kind in "US":
        values = np.atleast_1d(ds[ax.time].sel({ax.time: values}).values)
    pos = np.asarray(index.get_indexer(values))
    if (pos < 0).any():
        bad = values[pos < 0][0]
        raise DataError(
            f"init time {format_time(bad)} is not on the data's time axis ({format_time(index[0])} .. "
            f"{format_time(index[-1])}). Fix: use init_times(ds, spec) to list valid ones."
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
    ds = as_dataset(obj, spec)
    ax = find_axes(ds)
    pos = time_positions(ds, ax, init_times)
    start = int(pos.min()) - spec.context + 1
    stop = int(pos.max()) + 1 + (spec.lead if targets else 0)
    if start < 0 or stop > ds.sizes[ax.time]:
        raise DataError(
            f"init times need time positions {start}..{stop - 1}, the data has "
            f"0..{ds.sizes[ax.time] - 1}. Fix: choose init times from init_times(ds, spec)."
        )
    return slice(start, stop)


def valid_windows(obj: XArray, spec: DataSpec, init_times: Any) -> np.ndarray:
    """Which training windows hold data: (n_init, samples per init) bool, True where some
    context step has a valid (not NaN) input value and some lead step a valid target value.

    Windows that fail are gaps in the record (all NaN); training skips them instead of
    refusing the record. Reads the data once (for Dask-backed data: one compute of a
    per-step summary).

    Examples
    --------
    >>> valid_windows(sst, spec, init_times(sst, spec, targets=True)).sum()   # doctest: +SKIP
    """
    from .dataview import channel_data, extra_dims

    ds = as_dataset(obj, spec)
    ax = find_axes(ds)
    extra = extra_dims(ds, ax, spec.variables)
    sizes = tuple(int(ds.sizes[e]) for e in extra)

    def has_data(channels: Any) -> Any:
        found = None
        for ch in channels:
            da = channel_data(ds, ax, ch, extra).notnull().any([ax.y, ax.x])
            da = da.expand_dims({e: ds.sizes[e] for e in extra if e not in da.dims}).transpose(ax.time, *extra)
            found = da if found is None else found | da
        return found

    inputs, targets = has_data(spec.inputs), has_data(spec.targets)
    computed = xr.Dataset({"i": inputs.drop_vars(list(inputs.coords)),
                           "t": targets.drop_vars(list(targets.coords))}).compute()
    has_in = np.asarray(computed["i"].values).reshape(-1, *sizes)
    has_out = np.asarray(computed["t"].values).reshape(-1, *sizes)
    pos = time_positions(ds, ax, init_times)
    ok = np.zeros((pos.size, *sizes), dtype=bool)
    for k, p in enumerate(pos):
        ok[k] = has_in[p - spec.context + 1:p + 1].any(axis=0) & has_out[p + 1:p + 1 + spec.lead].any(axis=0)
    return ok.reshape(pos.size, -1)
