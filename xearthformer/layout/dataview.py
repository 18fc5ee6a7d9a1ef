"""Reading the model's pieces out of a labelled dataset: the Dataset view of an object,
required variables, one channel's (time, *extra, y, x) data, the extra (sample) dims and
the time values.

>>> ds = as_dataset(xr.DataArray([1.0, 2.0], dims="time", name="sst"))
>>> list(ds.data_vars)
['sst']
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..errors import DataError
from .axes import Axes, XArray
from .spec import Channel, DataSpec
from .validation import check_time_index, check_variable


def as_dataset(obj: XArray, spec: DataSpec | None = None) -> xr.Dataset:
    """A Dataset view of ``obj``; an unnamed/renamed DataArray takes the spec's single variable."""
    if isinstance(obj, xr.Dataset):
        return obj
    if not isinstance(obj, xr.DataArray):
        raise DataError(f"expected an xarray Dataset or DataArray, got {type(obj).__name__}.")
    name = obj.name
    if spec is not None and len(spec.variables) == 1 and name not in spec.variables:
        name = spec.variables[0]
    return obj.to_dataset(name="data" if name is None else name)


def is_lazy(*objs: Any, names: Sequence[Hashable] | None = None) -> bool:
    """True when a data variable of any of ``objs`` (only ``names``, when given) is backed by
    a Dask array (Zarr, ``open_mfdataset``, ``.chunk()``): the one test of laziness that
    forecasting, training and the metrics use.

    Examples
    --------
    >>> is_lazy(xr.DataArray([1.0]).chunk()), is_lazy(xr.Dataset({"a": ("x", [1.0])}))
    (True, False)
    """
    for obj in objs:
        if isinstance(obj, xr.DataArray) and obj.chunks is not None:
            return True
        if isinstance(obj, xr.Dataset) and any(
                v.chunks is not None for n, v in obj.data_vars.items() if names is None or n in names):
            return True
    return False


def time_values(ds: xr.Dataset, ax: Axes) -> np.ndarray:
    """The values of the time axis (the one place layout reads them: time-zone aware axes are
    refused here, see :func:`~xearthformer.layout.validation.check_time_index`)."""
    if ax.time in ds.indexes:
        index = ds.indexes[ax.time]
        check_time_index(index, ax.time)
        return np.asarray(index)
    values = ds[ax.time].values
    check_time_index(values, ax.time)
    return values


def require_vars(ds: xr.Dataset, names: Sequence[str], role: str) -> None:
    missing = [n for n in names if n not in ds.data_vars]
    if missing:
        raise DataError(
            f"{role} variable(s) {missing} not found; the data has {sorted(map(str, ds.data_vars))}. "
            "Fix: pass a dataset holding them (or rename: ds.rename({'old': 'new'}))."
        )


def channel_data(ds: xr.Dataset, ax: Axes, ch: Channel, extra: Sequence[str] = ()) -> xr.DataArray:
    """The channel as a DataArray with dims (time, *extra present, y, x) (lazy)."""
    da = ds[ch.variable]
    # dtype, undecoded packing attributes, units: the one check of a variable (no data read)
    check_variable(da, ch.variable, ch.attrs.get("units"))
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


def extra_dims(ds: xr.Dataset, ax: Axes, variables: Sequence[str]) -> list[str]:
    skip = {ax.time, ax.y, ax.x, ax.vertical}
    extra: list[str] = []
    for v in variables:
        if v in ds.data_vars:
            extra += [str(d) for d in ds[v].dims if d not in skip and d not in extra]
    return extra
