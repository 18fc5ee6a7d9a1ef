"""Probabilistic scores of ensembles along ``member``: CRPS, spread-skill, rank histogram, Brier.

An ensemble point with any NaN member, or a NaN observation, is skipped.

>>> import numpy as np, xarray as xr
>>> ens = xr.DataArray(np.array([[0.0, 1.0], [2.0, 2.0]]), dims=("x", "member"))
>>> obs = xr.DataArray(np.array([0.5, 2.0]), dims="x")
>>> float(crps(ens, obs))   # mean of 0.5 - 0.25 and 0
0.125
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import xarray as xr

from ..errors import DataError
from ._common import (
    LEAD,
    THRESHOLD,
    Dims,
    XArray,
    area_weights,
    is_lazy,
    named,
    prepare_pair,
    reduce_dims,
    shared_variables,
    single_variable,
    weighted_mean,
)


def _ensemble_pair(ensemble: Any, observed: Any, member_dim: Hashable):
    ens, obs = prepare_pair(ensemble, observed)
    shared_variables(ens, obs)
    if member_dim not in ens.dims:
        raise DataError(
            f"the ensemble has dims {list(ens.dims)}; expected a member dim {member_dim!r}. "
            "Pass member_dim=NAME"
        )
    if member_dim in obs.dims:
        raise DataError(f"the observation must not have the member dim {member_dim!r}")
    if ens.sizes[member_dim] < 2:
        raise DataError(f"an ensemble needs at least 2 members; found {ens.sizes[member_dim]}")
    # whole points only: a point with a missing member or observation is skipped
    valid = ens.notnull().all(member_dim) & obs.notnull()
    return ens.where(valid), obs.where(valid)


def _crps_numpy(ens: np.ndarray, obs: np.ndarray, fair: bool) -> np.ndarray:
    """CRPS of ensembles on the last axis, O(M log M) via the sorted-member identity
    sum_ij |x_i - x_j| = 2 sum_i (2i - M - 1) x_(i)."""
    m = ens.shape[-1]
    skill = np.abs(ens - obs[..., None]).mean(-1)
    ranked = np.sort(ens, axis=-1)
    coef = 2.0 * np.arange(1, m + 1) - m - 1
    pair_sum = 2.0 * (ranked * coef).sum(-1)  # sum over all ordered pairs i, j
    spread = pair_sum / (2.0 * m * (m - 1)) if fair else pair_sum / (2.0 * m * m)
    return skill - spread


def crps(
    ensemble: Any,
    observed: Any,
    fair: bool = False,
    member_dim: Hashable = "member",
    dim: Dims = None,
    weights: Any = None,
) -> XArray:
    """Continuous ranked probability score of an ensemble.

    ``mean_i |x_i - y| - sum_ij |x_i - x_j| / (2 M^2)`` (the ensemble's empirical
    distribution); ``fair=True`` divides by ``2 M (M - 1)`` instead, the unbiased estimate
    of the CRPS of the distribution the members are drawn from (Ferro 2014).

    Parameters
    ----------
    ensemble, observed
        Ensemble with ``member_dim``; observation without it (on ``time`` it is aligned to
        the ensemble's ``valid_time``).
    dim
        Dims to average over; default all but ``lead_time`` (``dim=[]`` gives per-point CRPS).
    weights
        None, ``"coslat"`` or a DataArray.

    >>> import numpy as np, xarray as xr
    >>> ens = xr.DataArray(np.array([[0.0, 1.0]]), dims=("x", "member"))
    >>> float(crps(ens, xr.DataArray([0.0], dims="x"), fair=True))
    0.0
    """
    ens, obs = _ensemble_pair(ensemble, observed, member_dim)
    if is_lazy(ens):  # (Dataset.chunks is a mapping, never None)
        ens = ens.chunk({member_dim: -1})
    point = xr.apply_ufunc(
        _crps_numpy, ens, obs,
        input_core_dims=[[member_dim], []],
        kwargs={"fair": fair},
        dask="parallelized",
        output_dtypes=[float],
    )
    dims = reduce_dims(point, dim, keep=(LEAD, THRESHOLD))
    return named(weighted_mean(point, dims, area_weights(point, weights)), "crps")


def spread_skill(
    ensemble: Any,
    observed: Any,
    member_dim: Hashable = "member",
    dim: Dims = None,
    weights: Any = None,
) -> xr.Dataset:
    """Spread-skill ratio of an ensemble.

    ``spread = sqrt(mean(var_members))`` (unbiased member variance), ``rmse`` of the
    ensemble mean, and ``ratio = sqrt((M + 1) / M) * spread / rmse``: the factor makes a
    statistically consistent ensemble of M members score 1 (Fortin et al. 2014);
    below 1 is under-dispersive.

    >>> import numpy as np, xarray as xr
    >>> ens = xr.DataArray(np.array([[0.0, 2.0], [1.0, 3.0]]), dims=("x", "member"))
    >>> float(spread_skill(ens, xr.DataArray([1.0, 2.0], dims="x")).spread)
    1.4142135623730951
    """
    ens, obs = _ensemble_pair(ensemble, observed, member_dim)
    # three scores per field: one variable at a time (Datasets of one variable are fine)
    ens, obs = single_variable(ens, "the ensemble"), single_variable(obs, "observed")
    m = ens.sizes[member_dim]
    var = ens.var(member_dim, ddof=1)
    err2 = (ens.mean(member_dim) - obs) ** 2
    dims = reduce_dims(var, dim, keep=(LEAD, THRESHOLD))
    w = area_weights(var, weights)
    spread = np.sqrt(weighted_mean(var, dims, w))
    rmse = np.sqrt(weighted_mean(err2, dims, w))
    ratio = np.sqrt((m + 1) / m) * spread / rmse.where(rmse > 0)
    return xr.Dataset({"spread": spread, "rmse": rmse, "ratio": ratio})


def rank_histogram(
    ensemble: Any,
    observed: Any,
    member_dim: Hashable = "member",
    dim: Dims = None,
    seed: int | None = 0,
) -> xr.DataArray:
    """Rank histogram (Talagrand diagram): how often the observation falls at each rank
    0..M among the M members. Ties between the observation and members are broken at
    random (``seed``), as in xskillscore. Returns counts along a ``rank`` dim.

    >>> import numpy as np, xarray as xr
    >>> ens = xr.DataArray(np.array([[0.0, 2.0], [1.0, 3.0]]), dims=("x", "member"))
    >>> rank_histogram(ens, xr.DataArray([1.0, 5.0], dims="x")).values.tolist()
    [0, 1, 1]
    """
    ens, obs = _ensemble_pair(ensemble, observed, member_dim)
    m = ens.sizes[member_dim]
    below = (ens < obs).sum(member_dim)
    ties = (ens == obs).sum(member_dim)
    rng = np.random.default_rng(seed)
    # uniform draw in 0..ties (per point), without forcing a compute on Dask input
    u = xr.apply_ufunc(lambda t: rng.random(np.shape(t)), ties, dask="parallelized",
                       output_dtypes=[float])
    rank = below + np.floor(u * (ties + 1)).astype(int)
    valid = obs.notnull()
    ranks = xr.DataArray(np.arange(m + 1), dims="rank", coords={"rank": np.arange(m + 1)})
    hit = (rank == ranks) & valid
    dims = reduce_dims(rank, dim, keep=(LEAD, THRESHOLD))
    return named(hit.sum(dims), "rank_histogram")


def brier_score(
    ensemble: Any,
    observed: Any,
    threshold: Any,
    member_dim: Hashable = "member",
    dim: Dims = None,
    fair: bool = False,
    weights: Any = None,
) -> XArray:
    """Brier score of the event ``value >= threshold``.

    The forecast probability is the fraction of members with the event. A list of
    thresholds gives a ``threshold`` dim. ``fair=True`` subtracts the finite-ensemble
    term ``p (1 - p) / (M - 1)`` (Ferro 2014).

    >>> import numpy as np, xarray as xr
    >>> ens = xr.DataArray(np.array([[0.0, 2.0], [3.0, 3.0]]), dims=("x", "member"))
    >>> float(brier_score(ens, xr.DataArray([1.0, 2.0], dims="x"), threshold=1.0))
    0.125
    """
    from .categorical import _threshold_array

    ens, obs = _ensemble_pair(ensemble, observed, member_dim)
    thr, _ = _threshold_array(threshold)
    m = ens.sizes[member_dim]
    prob = (ens >= thr).mean(member_dim).where(obs.notnull())
    event = (obs >= thr).astype(float).where(obs.notnull())
    score = (prob - event) ** 2
    if fair:
        score = score - prob * (1 - prob) / (m - 1)
    dims = reduce_dims(score, dim, keep=(LEAD, THRESHOLD))
    return named(weighted_mean(score, dims, area_weights(score, weights)), "brier_score")
