"""Spatial pooling of fields before they are scored (pooled CSI, pooled CRPS).

Scores at the grid scale punish a storm forecast one pixel off as much as one that is far off.
Pooling both forecast and observation over ``size x size`` neighbourhoods first scores them
at a coarser scale: ``method="max"`` asks "is there an event somewhere in the block" (the
pooled CSI and max-pooled CRPS of the DGMR and PreDiff papers), ``method="avg"`` compares
block means (their average-pooled CRPS). One implementation serves every score, so pooled
CSI and pooled CRPS see the same blocks. The papers' stride is not restated here; the
default, non-overlapping blocks, is ``pool_stride=pool``.

>>> import numpy as np, xarray as xr
>>> da = xr.DataArray(np.arange(16.0).reshape(4, 4), dims=("y", "x"))
>>> pool(da, 2, "max").values.tolist()
[[5.0, 7.0], [13.0, 15.0]]
>>> pool(da, 2, "avg").values.tolist()
[[2.5, 4.5], [10.5, 12.5]]
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from ..errors import DataError
from ._common import CONTROL, INIT, LEAD, MEMBER, THRESHOLD, TIME, XArray, find_coord

POOL_METHODS = ("max", "avg")
# dims that are never spatial, whatever their position
_NOT_SPATIAL = {TIME, INIT, LEAD, MEMBER, THRESHOLD, CONTROL}


def spatial_dims(obj: XArray, dims: Sequence[Hashable] | None = None) -> list[Hashable]:
    """The two spatial dims of ``obj`` (y first): ``dims`` when given, else the latitude and
    longitude dims (CF attributes or common names), else ``y``/``x``, else the last two dims
    that are not time, lead, member, threshold or control.

    >>> import numpy as np, xarray as xr
    >>> spatial_dims(xr.DataArray(np.zeros((2, 3, 4)), dims=("lead_time", "row", "col")))
    ['row', 'col']
    """
    if dims is not None:
        dims = list(dims)
        if len(dims) != 2 or any(d not in obj.dims for d in dims):
            raise DataError(
                f"expected two spatial dims of the data, got {dims} (dims are "
                f"{list(obj.dims)}); pass them as (y, x)"
            )
        return dims
    lat, lon = find_coord(obj, "latitude"), find_coord(obj, "longitude")
    if lat in obj.dims and lon in obj.dims:
        return [lat, lon]
    if "y" in obj.dims and "x" in obj.dims:
        return ["y", "x"]
    rest = [d for d in obj.dims if d not in _NOT_SPATIAL]
    if len(rest) < 2:
        raise DataError(
            f"this needs two spatial dims; found dims {list(obj.dims)}. Pass the spatial dims "
            "as (y, x) (pool_dims=... or spatial_dims=...)"
        )
    return rest[-2:]


def pool(obj: XArray, size: int, method: str = "max", stride: int | None = None,
         dims: Sequence[Hashable] | None = None) -> XArray:
    """Max or mean over ``size x size`` neighbourhoods of the two spatial dims.

    Parameters
    ----------
    obj
        DataArray or Dataset; other dims (members, lead times...) are pooled independently.
    size
        Width of the neighbourhood in grid points; 1 returns ``obj`` unchanged.
    method
        ``"max"`` or ``"avg"``. NaN is ignored unless a whole block is NaN (the mean is that
        of the values present).
    stride
        Step between blocks; default ``size`` (non-overlapping blocks). Incomplete blocks at
        the far edges are dropped, like ``torch.nn.functional.max_pool2d``/``avg_pool2d``
        without padding.
    dims
        The spatial dims ``(y, x)``; default: see :func:`spatial_dims`.

    Returns
    -------
    Same type as ``obj``, smaller along the spatial dims; lazy on Dask input.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> da = xr.DataArray(np.arange(9.0).reshape(3, 3), dims=("y", "x"))
    >>> pool(da, 2, "avg", stride=1).values.tolist()
    [[2.0, 3.0], [5.0, 6.0]]
    """
    if method not in POOL_METHODS:
        raise DataError(f"unknown pooling method {method!r}; expected one of {POOL_METHODS}")
    size = int(size)
    if size < 1:
        raise DataError(f"pool must be a positive integer, got {size}")
    stride = size if stride is None else int(stride)
    if stride < 1:
        raise DataError(f"pool_stride must be a positive integer, got {stride}")
    if size == 1 and stride == 1:
        return obj
    ydim, xdim = spatial_dims(obj, dims)
    if min(obj.sizes[ydim], obj.sizes[xdim]) < size:
        raise DataError(
            f"cannot pool {size} x {size} blocks on a {obj.sizes[ydim]} x {obj.sizes[xdim]} grid "
            f"({ydim!r}, {xdim!r}); use a smaller pool"
        )
    if stride == size:
        blocks = obj.coarsen({ydim: size, xdim: size}, boundary="trim")
        return blocks.max() if method == "max" else blocks.mean()
    windows = obj.rolling({ydim: size, xdim: size}).construct({ydim: "_pool_y", xdim: "_pool_x"})
    # rolling windows end at each point: keep those that start at 0, stride, 2 * stride, ...
    starts = {ydim: slice(size - 1, None, stride), xdim: slice(size - 1, None, stride)}
    picked = windows.isel(starts)
    reduce = picked.max if method == "max" else picked.mean
    out = reduce(["_pool_y", "_pool_x"])
    # label each block by the mean of its coordinates, as coarsen does (latitude weights)
    centres = {d: obj[d].rolling({d: size}).mean().isel({d: starts[d]}) for d in (ydim, xdim)
               if d in obj.coords and obj[d].dtype.kind in "fiu" and obj[d].ndim == 1}
    return out.assign_coords({d: c.variable for d, c in centres.items()}) if centres else out


def max_pool(obj: XArray, size: int, stride: int | None = None,
             dims: Sequence[Hashable] | None = None) -> XArray:
    """:func:`pool` with ``method="max"`` (kept for existing callers).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> max_pool(xr.DataArray(np.eye(2), dims=("y", "x")), 2).values.tolist()
    [[1.0]]
    """
    return pool(obj, size, "max", stride, dims)
