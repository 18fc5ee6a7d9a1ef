"""Probabilistic scores of ensembles along ``member``: CRPS (plain, fair, pooled), spread-skill,
rank histogram and its chi-square flatness, Brier score.

An ensemble point with any NaN member, or a NaN observation, is skipped. Scores keep
``lead_time``, ``threshold`` and ``control`` by default (:data:`KEEP_OVER_MEMBERS`).

>>> import numpy as np, xarray as xr
>>> ens = xr.DataArray(np.array([[0.0, 1.0], [2.0, 2.0]]), dims=("x", "member"))
>>> obs = xr.DataArray(np.array([0.5, 2.0]), dims="x")
>>> float(crps(ens, obs))   # mean of 0.5 - 0.25 and 0
0.125
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..errors import DataError
from ._common import (
    KEEP_OVER_MEMBERS,
    Dims,
    XArray,
    area_weights,
    is_lazy,
    named,
    prepare_pair,
    reduce_dims,
    shared_variables,
    single_variable,
    to_xarray,
    weighted_mean,
)
from .pooling import pool as spatial_pool
from .products import _exceedance


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
    """CRPS of ensembles on the last axis, O(M log M) time and O(M) memory per point via the
    sorted-member identity sum_ij |x_i - x_j| = 2 sum_i (2i - M - 1) x_(i) (i = 1..M over
    the sorted members), instead of the M x M matrix of pairwise differences."""
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
    *,
    pool: int | None = None,
    pool_method: str = "max",
    pool_stride: int | None = None,
    pool_dims: Sequence[Hashable] | None = None,
) -> XArray:
    """Continuous ranked probability score of an ensemble, optionally pooled.

    ``mean_i |x_i - y| - sum_ij |x_i - x_j| / (2 M^2)`` (the ensemble's empirical
    distribution); ``fair=True`` divides by ``2 M (M - 1)`` instead, the unbiased estimate
    of the CRPS of the distribution the members are drawn from (Ferro 2014). Computed on the
    sorted members in O(M log M) time and O(M) memory per point, so 100 members cost little.

    Parameters
    ----------
    ensemble, observed
        Ensemble with ``member_dim``; observation without it (on ``time`` it is aligned to
        the ensemble's ``valid_time``).
    dim
        Dims to average over; default all but ``lead_time`` (``dim=[]`` gives per-point CRPS).
    weights
        None, ``"coslat"`` or a DataArray.
    pool
        Pooled CRPS, the multi-scale score of the DGMR and PreDiff papers (pools of 1, 4 and
        16 px, average and max): pool each member and the observation over ``pool x pool``
        blocks first, then score (the official PreDiff code has no CRPS). ``pool_method``
        ``"max"`` (default) or ``"avg"``, ``pool_stride`` (default ``pool``: non-overlapping
        blocks) and ``pool_dims`` (default the lat/lon dims) as in
        :func:`~xearthformer.metrics.pooling.pool`; the same blocks as the pooled CSI.
        Missing points are left out of a block's max or mean.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ens = xr.DataArray(np.array([[0.0, 1.0]]), dims=("x", "member"))
    >>> float(crps(ens, xr.DataArray([0.0], dims="x"), fair=True))
    0.0
    >>> blocks = np.array([[[0.0, 4.0], [2.0, 2.0]], [[0.0, 0.0], [0.0, 0.0]]])  # means 2 and 0
    >>> ens = xr.DataArray(blocks, dims=("member", "y", "x"))
    >>> float(crps(ens, xr.DataArray(np.ones((2, 2)), dims=("y", "x")), pool=2, pool_method="avg"))
    0.5
    """
    ens, obs = _ensemble_pair(ensemble, observed, member_dim)
    if pool is not None:
        ens = spatial_pool(ens, pool, pool_method, pool_stride, pool_dims)
        obs = spatial_pool(obs, pool, pool_method, pool_stride, pool_dims)
    if is_lazy(ens):  # (Dataset.chunks is a mapping, never None)
        ens = ens.chunk({member_dim: -1})
    point = xr.apply_ufunc(
        _crps_numpy, ens, obs,
        input_core_dims=[[member_dim], []],
        kwargs={"fair": fair},
        dask="parallelized",
        output_dtypes=[float],
    )
    dims = reduce_dims(point, dim, keep=KEEP_OVER_MEMBERS)
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

    Examples
    --------
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
    dims = reduce_dims(var, dim, keep=KEEP_OVER_MEMBERS)
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

    Examples
    --------
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
    dims = reduce_dims(rank, dim, keep=KEEP_OVER_MEMBERS)
    return named(hit.sum(dims), "rank_histogram")


def _chi2_sf(x: np.ndarray, dof: int) -> np.ndarray:
    """Survival function of the chi-square distribution for an integer ``dof``, in closed
    form (no scipy at run time): Q(k/2, x/2) as a finite sum, in log space so large
    statistics underflow gracefully to 0 instead of overflowing."""
    x = np.asarray(x, dtype=float)
    half = np.maximum(x, 0.0) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        log_half = np.log(half)
    if dof % 2 == 0:  # exp(-h) sum_{j < k/2} h^j / j!
        powers = [float(j) for j in range(dof // 2)]
        total = np.zeros_like(half)
    else:  # erfc(sqrt h) + exp(-h) sum_{j=1}^{(k-1)/2} h^(j-1/2) / Gamma(j + 1/2)
        powers = [j - 0.5 for j in range(1, (dof - 1) // 2 + 1)]
        total = np.vectorize(math.erfc, otypes=[float])(np.sqrt(half))
    for a in powers:
        with np.errstate(invalid="ignore"):
            term = np.exp(-half + np.where(half > 0, a * log_half, 0.0 if a == 0 else -np.inf)
                          - math.lgamma(a + 1.0))
        total = total + term
    return np.where(np.isnan(x), np.nan, np.clip(total, 0.0, 1.0))


def rank_histogram_flatness(histogram: xr.DataArray, rank_dim: Hashable = "rank") -> xr.Dataset:
    """Chi-square test of a flat rank histogram (is the observation a random draw of the
    ensemble's distribution?).

    ``chi2 = sum_k (n_k - N/K)^2 / (N/K)`` over the K = M + 1 ranks with N counts in all,
    its degrees of freedom K - 1, the p-value ``P(X >= chi2)`` of a chi-square variable with
    K - 1 dof (closed form; equal to ``scipy.stats.chisquare``) and Candille & Talagrand's
    ``delta = chi2 / (K - 1)``, near 1 for a reliable ensemble. Counts from neighbouring
    points and lead times are not independent, so the p-value is over-confident on gridded
    data: use it to compare ensembles, or thin the points first.

    Parameters
    ----------
    histogram
        Counts along ``rank_dim``, e.g. from :func:`rank_histogram` (other dims are kept).

    Returns
    -------
    xarray.Dataset
        ``chi2``, ``dof`` (an int), ``p_value``, ``delta``. Lazy on Dask input.

    Examples
    --------
    >>> import xarray as xr
    >>> out = rank_histogram_flatness(xr.DataArray([10, 10, 10, 10], dims="rank"))
    >>> float(out.chi2), float(out.p_value)
    (0.0, 1.0)
    """
    histogram = single_variable(to_xarray(histogram), "the rank histogram")
    if rank_dim not in histogram.dims:
        raise DataError(
            f"the histogram has dims {list(histogram.dims)}; expected a {rank_dim!r} dim "
            "(the output of rank_histogram). Pass rank_dim=NAME"
        )
    k = histogram.sizes[rank_dim]
    if k < 2:
        raise DataError(f"a rank histogram needs at least 2 ranks; found {k}")
    counts = histogram.astype(float)
    expected = counts.sum(rank_dim) / k
    chi2 = ((counts - expected) ** 2 / expected.where(expected > 0)).sum(rank_dim, skipna=False)
    p_value = xr.apply_ufunc(_chi2_sf, chi2, kwargs={"dof": k - 1}, dask="parallelized",
                             output_dtypes=[float])
    out = xr.Dataset({"chi2": chi2, "dof": k - 1, "p_value": p_value, "delta": chi2 / (k - 1)})
    out["chi2"].attrs = {"long_name": "chi-square statistic of the rank histogram"}
    out["dof"].attrs = {"long_name": "degrees of freedom (ranks - 1)"}
    out["p_value"].attrs = {"long_name": "probability of a chi2 this large from a flat histogram",
                            "units": "1"}
    out["delta"].attrs = {"long_name": "chi2 / dof (about 1 for a reliable ensemble)"}
    return out


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

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ens = xr.DataArray(np.array([[0.0, 2.0], [3.0, 3.0]]), dims=("x", "member"))
    >>> float(brier_score(ens, xr.DataArray([1.0, 2.0], dims="x"), threshold=1.0))
    0.125
    """
    from .categorical import _threshold_array

    ens, obs = _ensemble_pair(ensemble, observed, member_dim)
    thr, _ = _threshold_array(threshold)
    m = ens.sizes[member_dim]
    prob = _exceedance(ens, thr, member_dim).where(obs.notnull())
    event = (obs >= thr).astype(float).where(obs.notnull())
    score = (prob - event) ** 2
    if fair:
        score = score - prob * (1 - prob) / (m - 1)
    dims = reduce_dims(score, dim, keep=KEEP_OVER_MEMBERS)
    return named(weighted_mean(score, dims, area_weights(score, weights)), "brier_score")
