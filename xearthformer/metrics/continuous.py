"""Continuous scores: MSE, MAE, RMSE, mean bias and anomaly correlation (ACC).

All take an optional area weighting (``weights="coslat"`` or a DataArray of weights) and skip
points where the forecast or the observation is NaN (land, missing), so those points change
neither the numerator nor the weight sum.

>>> import numpy as np, xarray as xr
>>> fc = xr.DataArray(np.array([1.0, 2.0, np.nan]), dims="x")
>>> ob = xr.DataArray(np.array([0.0, 4.0, 1.0]), dims="x")
>>> float(mse(fc, ob)), float(mae(fc, ob)), float(mean_bias(fc, ob))
(2.5, 1.5, -0.5)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import (
    Dims,
    XArray,
    area_weights,
    named,
    prepare_pair,
    reduce_dims,
    shared_variables,
    weighted_mean,
)


def _pair_error(forecast: Any, observed: Any, dim: Dims, weights: Any, obs_resample: str | None = None):
    fc, obs = prepare_pair(forecast, observed, obs_resample)
    shared_variables(fc, obs)
    err = fc - obs
    dims = reduce_dims(err, dim)
    return fc, obs, err, dims, area_weights(fc, weights)


def mse(forecast: Any, observed: Any, dim: Dims = None, weights: Any = None,
        obs_resample: str | None = None) -> XArray:
    """Mean squared error.

    Parameters
    ----------
    forecast, observed
        xarray objects (Datasets are scored per variable), numpy arrays or torch tensors.
        Observations on ``time`` are aligned to the forecast's ``valid_time``.
    dim
        Dims to average over; default every dim except ``lead_time``, ``threshold``, ``member``,
        ``control``.
    weights
        None, ``"coslat"`` (cosine of latitude) or a DataArray broadcastable to the data.
    obs_resample
        None (default) or ``"mean"``: observations finer than a monthly (yearly) forecast are
        refused, or with ``"mean"`` averaged over each calendar month (year) first (see
        :func:`xearthformer.metrics._common.align_to_valid_time`).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> float(mse(xr.DataArray(np.array([1.0, 3.0]), dims="x"), xr.DataArray(np.zeros(2), dims="x")))
    5.0
    """
    _, _, err, dims, w = _pair_error(forecast, observed, dim, weights, obs_resample)
    return named(weighted_mean(err**2, dims, w), "mse")


def mae(forecast: Any, observed: Any, dim: Dims = None, weights: Any = None,
        obs_resample: str | None = None) -> XArray:
    """Mean absolute error; parameters as in :func:`mse`.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> float(mae(xr.DataArray(np.array([1.0, -3.0]), dims="x"), xr.DataArray(np.zeros(2), dims="x")))
    2.0
    """
    _, _, err, dims, w = _pair_error(forecast, observed, dim, weights, obs_resample)
    return named(weighted_mean(abs(err), dims, w), "mae")


def rmse(forecast: Any, observed: Any, dim: Dims = None, weights: Any = None,
         obs_resample: str | None = None) -> XArray:
    """Root mean squared error (square root of :func:`mse`); parameters as in :func:`mse`.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> float(rmse(xr.DataArray(np.array([3.0, 4.0]), dims="x"), xr.DataArray(np.zeros(2), dims="x")))
    3.5355339059327378
    """
    return named(np.sqrt(mse(forecast, observed, dim, weights, obs_resample)), "rmse")


def mean_bias(forecast: Any, observed: Any, dim: Dims = None, weights: Any = None,
        obs_resample: str | None = None) -> XArray:
    """Mean error forecast - observed (positive: the forecast is too high); as :func:`mse`.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> float(mean_bias(xr.DataArray(np.array([1.0, 3.0]), dims="x"), xr.DataArray(np.zeros(2), dims="x")))
    2.0
    """
    _, _, err, dims, w = _pair_error(forecast, observed, dim, weights, obs_resample)
    return named(weighted_mean(err, dims, w), "mean_bias")


def acc(
    forecast: Any,
    observed: Any,
    dim: Dims = None,
    weights: Any = None,
    climatology: Any = None,
    centered: bool = False,
    obs_resample: str | None = None,
) -> XArray:
    """Anomaly correlation coefficient.

    ``sum(w f' o') / sqrt(sum(w f'^2) sum(w o'^2))`` over ``dim``, where f', o' are
    anomalies: the inputs minus ``climatology`` when one is given (it must broadcast against
    the data), else the inputs as they are (pass anomalies). ``centered=True`` also removes
    the (weighted) means over ``dim`` first, which makes it the Pearson correlation
    (xskillscore's ``pearson_r``); the default uncentred form is the WMO/ECMWF ACC.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> fc = xr.DataArray(np.array([1.0, -1.0, 2.0]), dims="x")
    >>> float(acc(fc, 2 * fc))
    1.0
    """
    fc, obs = prepare_pair(forecast, observed, obs_resample)
    shared_variables(fc, obs)
    if climatology is not None:
        clim = climatology
        fc, obs = fc - clim, obs - clim
    # skip points missing in either input, in both
    valid = fc.notnull() & obs.notnull()
    fc, obs = fc.where(valid), obs.where(valid)
    dims = reduce_dims(valid, dim)
    w = area_weights(fc, weights)
    if centered:
        fc = fc - weighted_mean(fc, dims, w)
        obs = obs - weighted_mean(obs, dims, w)
    num = weighted_mean(fc * obs, dims, w)
    den = np.sqrt(weighted_mean(fc**2, dims, w) * weighted_mean(obs**2, dims, w))
    return named(num / den.where(den > 0), "acc")
