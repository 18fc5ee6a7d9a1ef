"""Neighbourhood verification: the fractions skill score (FSS) of Roberts & Lean (2008).

The event ``value >= threshold`` becomes a 0/1 field; its fraction over the ``n x n``
neighbourhood of each point (zero outside the domain, as pysteps and scipy's
``uniform_filter(mode="constant")`` do) is compared between forecast and observation:

    FSS = 1 - sum (F - O)^2 / (sum F^2 + sum O^2)

summed over every point and every reduced dim (pysteps accumulates the same three sums over
fields). 1 is perfect, 0 no overlap at all; a forecast is usually called useful at a scale
where FSS >= 0.5 + f0 / 2 (f0: the observed event frequency). A point missing in either
field is a non-event in both.

>>> import numpy as np, xarray as xr
>>> obs = xr.DataArray(np.eye(4), dims=("y", "x"))
>>> fc = obs.roll(x=1)                       # every event one pixel off
>>> fss(fc, obs, 0.5, scales=[1, 3]).values.round(3).tolist()
[0.0, 0.889]
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..errors import DataError
from ._common import KEEP_BY_DEFAULT, Dims, is_lazy, prepare_pair, reduce_dims, single_variable
from .pooling import spatial_dims as find_spatial_dims

SCALE = "scale"


def _window_mean_1d(values: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Sum over the window [i - size // 2, i + (size - 1) // 2] (zero outside), / size: the
    placement of scipy.ndimage.uniform_filter for odd and even sizes alike."""
    values = np.moveaxis(values, axis, -1)
    n = values.shape[-1]
    # zero padding of size // 2 before and (size - 1) // 2 after, plus one leading zero so
    # that every window sum is a difference of two cumulative sums
    padded = np.zeros(values.shape[:-1] + (n + size,), dtype=float)
    padded[..., size // 2 + 1:size // 2 + 1 + n] = values
    cums = np.cumsum(padded, axis=-1)
    out = (cums[..., size:size + n] - cums[..., :n]) / size
    return np.moveaxis(out, -1, axis)


def _fractions(binary: np.ndarray, size: int) -> np.ndarray:
    """Fraction of events in the size x size neighbourhood of each point (last two axes)."""
    if size == 1:
        return binary.astype(float)
    return _window_mean_1d(_window_mean_1d(binary.astype(float), size, -1), size, -2)


def _scales(scales: Any) -> tuple[list[int], bool]:
    listed = np.ndim(scales) > 0
    values = [int(s) for s in np.atleast_1d(scales)]
    if not values or any(s < 1 for s in values) or any(s != v for s, v in
                                                       zip(values, np.atleast_1d(scales))):
        raise DataError(f"scales must be positive integers (window widths in grid points); "
                        f"got {scales!r}")
    return values, listed


def fss(
    forecast: Any,
    observed: Any,
    thresholds: Any,
    scales: Any = (1, 3, 5, 9, 17),
    dim: Dims = None,
    spatial_dims: Sequence[Hashable] | None = None,
) -> xr.DataArray:
    """Fractions skill score per neighbourhood width (``scale``, in grid points) and threshold.

    Parameters
    ----------
    forecast, observed
        Fields on the same grid (observations on ``time`` are aligned to the forecast's
        ``valid_time``). A forecast with ``member`` is scored member by member.
    thresholds
        Event ``value >= threshold``: a number, or a list (a ``threshold`` dim).
    scales
        Neighbourhood width(s) n (n x n windows); a list gives a ``scale`` dim. Odd widths are
        centred on the point; an even width reaches one point further back than forward
        (as scipy's ``uniform_filter``).
    dim
        Dims to sum over besides the spatial ones; default every dim except ``lead_time``,
        ``threshold``, ``member``, ``control`` (and ``scale``).
    spatial_dims
        The ``(y, x)`` dims of the windows; default the lat/lon dims (see
        :func:`~xearthformer.metrics.pooling.spatial_dims`).

    Returns
    -------
    xarray.DataArray
        Named ``fss``; NaN where neither field has an event. Lazy on Dask input.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> obs = xr.DataArray(np.eye(5), dims=("y", "x"))
    >>> float(fss(obs, obs, 0.5, scales=3))
    1.0
    """
    from .categorical import _threshold_array

    fc, obs = prepare_pair(forecast, observed)
    fc, obs = single_variable(fc, "forecast"), single_variable(obs, "observed")
    ydim, xdim = find_spatial_dims(fc, spatial_dims)
    widths, listed = _scales(scales)
    thr, _ = _threshold_array(thresholds)
    valid = fc.notnull() & obs.notnull()
    f_event = ((fc >= thr) & valid).astype(float)
    o_event = ((obs >= thr) & valid).astype(float)
    f_event, o_event = xr.broadcast(f_event, o_event)
    if is_lazy(f_event):  # each window needs the whole frame
        f_event = f_event.chunk({ydim: -1, xdim: -1})
        o_event = o_event.chunk({ydim: -1, xdim: -1})
    per_scale = []
    for width in widths:
        kwargs = dict(input_core_dims=[[ydim, xdim]], output_core_dims=[[ydim, xdim]],
                      kwargs={"size": width}, dask="parallelized", output_dtypes=[float])
        f_frac = xr.apply_ufunc(_fractions, f_event, **kwargs)
        o_frac = xr.apply_ufunc(_fractions, o_event, **kwargs)
        dims = reduce_dims(f_frac, dim, keep=KEEP_BY_DEFAULT) if dim is None else \
            list(dict.fromkeys([ydim, xdim, *reduce_dims(f_frac, dim)]))
        ff, oo = (f_frac**2).sum(dims), (o_frac**2).sum(dims)
        fo = (f_frac * o_frac).sum(dims)
        denominator = ff + oo
        per_scale.append(1.0 - (ff - 2.0 * fo + oo) / denominator.where(denominator > 0))
    score = xr.concat(per_scale, SCALE).assign_coords({SCALE: widths}) if listed \
        else per_scale[0].assign_coords({SCALE: widths[0]})
    score[SCALE].attrs = {"long_name": "neighbourhood width", "units": "grid points"}
    score = score.rename("fss")
    score.attrs = {"long_name": "fractions skill score", "units": "1"}
    return score
