"""Categorical (threshold) scores: contingency counts, CSI, POD, SUCR, frequency bias, CSI-M.

An event is ``value >= threshold`` (as in the official SEVIR code and xskillscore). Points
where the forecast or the observation is NaN are skipped, not counted.

Aggregation
-----------
``aggregate="counts"`` (default, the official SEVIR protocol) sums hits, misses and false
alarms over every reduced dim, then forms the score once: large events weigh more, and a
score exists as soon as any event occurs anywhere. ``aggregate="samples"`` forms one score
per sample (per ``sample_dim``, default ``init_time``) and averages those scores, skipping
samples whose score is undefined (no event in forecast nor observation): every sample
weighs the same, so quiet cases count as much as stormy ones, and the numbers are lower
and noisier. Papers on SEVIR (Earthformer, PreDiff) use "counts".

``protocol="sevir"`` reproduces ``SEVIRSkillScore`` of the official Earthformer code in its
official mode "0": counts summed over samples, pixels *and lead times* per threshold, NaN
treated as no event, and ``eps = 1e-4`` in every denominator (so a score with no events is
0, not NaN). The official "bias" is ``((h + f) / (h + m + eps) / ln 2) ** 2`` -- neither the
frequency bias nor a log; :func:`frequency_bias` always returns the true frequency bias
``(h + f) / (h + m)``. To get the official number from it: ``(fb / np.log(2)) ** 2``.

>>> import numpy as np, xarray as xr
>>> fc = xr.DataArray(np.array([[0, 20], [80, 200]]), dims=("y", "x"))
>>> obs = xr.DataArray(np.array([[0, 16], [10, 220]]), dims=("y", "x"))
>>> float(csi(fc, obs, thresholds=16))
0.6666666666666666
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..data.sevir import SEVIR_THRESHOLDS
from ..errors import DataError
from ._common import (
    CONTROL,
    INIT,
    KEEP_BY_DEFAULT,
    MEMBER,
    THRESHOLD,
    TIME,
    Dims,
    is_lazy,
    prepare_pair,
    reduce_dims,
    single_variable,
    to_xarray,
)
from .pooling import pool as spatial_pool

SEVIR_EPS = 1e-4
_PROTOCOLS = (None, "sevir")
_AGGREGATES = ("counts", "samples")
_LONG_NAMES = {
    "csi": "critical success index",
    "pod": "probability of detection",
    "sucr": "success ratio",
    "frequency_bias": "frequency bias",
    "csi_m": "critical success index, mean over thresholds",
}


def _threshold_array(thresholds: Any) -> tuple[xr.DataArray, bool]:
    """Thresholds as a DataArray (with a ``threshold`` dim for a list) and whether it is a list."""
    if thresholds is None:
        thresholds = list(SEVIR_THRESHOLDS)
    if isinstance(thresholds, xr.DataArray):
        if thresholds.ndim == 0:
            return thresholds, False
        return thresholds.rename({thresholds.dims[0]: THRESHOLD}), True
    if np.ndim(thresholds) == 0:
        return xr.DataArray(float(thresholds)), False
    values = np.asarray(thresholds, dtype=float).ravel()
    return xr.DataArray(values, dims=THRESHOLD, coords={THRESHOLD: values}), True


def _kept_dims(protocol: str | None) -> tuple[Hashable, ...]:
    """Dims a count keeps by default. The SEVIR protocol sums over lead times and members too,
    but never across the settings of a knowledge-control sweep: those are separate forecasts."""
    return (THRESHOLD, CONTROL) if protocol == "sevir" else KEEP_BY_DEFAULT


def _check_range(fc: xr.DataArray, obs: xr.DataArray, thr: xr.DataArray) -> None:
    """Thresholds outside the range of the data give undefined scores: refuse them.

    Skipped for Dask input (it would force a computation)."""
    if is_lazy(fc, obs):
        return
    lo = float(np.nanmin([np.nanmin(fc.values), np.nanmin(obs.values)]))
    hi = float(np.nanmax([np.nanmax(fc.values), np.nanmax(obs.values)]))
    values = np.atleast_1d(thr.values)
    bad = values[(values > hi) | (values < lo)]
    if bad.size:
        raise DataError(
            f"thresholds {bad.tolist()} lie outside the data range [{lo:g}, {hi:g}]; no point "
            "can be (or every point is) an event, so the scores are undefined. Use thresholds "
            "inside the range, check the data scale (e.g. 0-255 vs 0-1: pass scale=255), or "
            "pass check_range=False"
        )


def contingency(
    forecast: Any,
    observed: Any,
    thresholds: Any = None,
    dim: Dims = None,
    pool: int | None = None,
    protocol: str | None = None,
    *,
    pool_method: str = "max",
    pool_stride: int | None = None,
    pool_dims: Sequence[Hashable] | None = None,
    scale: float | None = None,
    check_range: bool = True,
) -> xr.Dataset:
    """Contingency counts at one or many thresholds.

    Parameters
    ----------
    forecast, observed
        DataArrays (or one-variable Datasets, numpy arrays, torch tensors). Observations on
        ``time`` are aligned to the forecast's ``valid_time``.
    thresholds
        A scalar (no ``threshold`` dim) or a list (a ``threshold`` dim, even of length 1).
        Default: the SEVIR thresholds 16, 74, 133, 160, 181, 219.
    dim
        Dims to sum over. Default: every dim except ``lead_time``, ``threshold``, ``member``
        and ``control``; with ``protocol="sevir"`` every dim except ``threshold`` and
        ``control``.
    pool
        Pool forecast and observation over ``pool x pool`` neighbourhoods first (the
        pooled CSI of PreDiff); ``pool_method`` (``"max"``, default, or ``"avg"``), ``pool_stride``
        (default ``pool``) and ``pool_dims`` (default the lat/lon dims) refine it (see
        :func:`~xearthformer.metrics.pooling.pool`).
    protocol
        None, or ``"sevir"`` to reproduce the official Earthformer SEVIR counts.
    scale
        Multiply both inputs by this first (``scale=255`` for SEVIR data stored on [0, 1],
        as the official metric does).
    check_range
        Raise DataError for thresholds outside the data range (eager input only).

    Returns
    -------
    xarray.Dataset
        ``hits``, ``misses``, ``false_alarms``, ``correct_negatives`` (int64 counts).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> fc = xr.DataArray(np.array([1.0, 5.0, 5.0, np.nan]), dims="x")
    >>> ob = xr.DataArray(np.array([5.0, 5.0, 1.0, 5.0]), dims="x")
    >>> c = contingency(fc, ob, thresholds=[3.0])
    >>> [int(c[k].item()) for k in ("hits", "misses", "false_alarms", "correct_negatives")]
    [1, 1, 1, 0]
    """
    if protocol not in _PROTOCOLS:
        raise DataError(f"unknown protocol {protocol!r}; expected one of {_PROTOCOLS}")
    fc, obs = prepare_pair(forecast, observed)
    fc, obs = single_variable(fc, "forecast"), single_variable(obs, "observed")
    if scale is not None:
        fc, obs = fc * scale, obs * scale
    thr, _ = _threshold_array(thresholds)
    if check_range and protocol is None:
        _check_range(fc, obs, thr)  # on the raw data: pooling only raises the minimum
    if pool is not None:
        fc = spatial_pool(fc, pool, pool_method, pool_stride, pool_dims)
        obs = spatial_pool(obs, pool, pool_method, pool_stride, pool_dims)
    valid = fc.notnull() & obs.notnull()
    # NaN >= thr is False, so a missing value is never an event (the official NaN -> 0 rule)
    f_event = fc >= thr
    o_event = obs >= thr
    keep = _kept_dims(protocol)
    both = f_event & o_event
    dims = reduce_dims(both, dim, keep)
    hits = both.sum(dims)
    misses = (~f_event & o_event & valid).sum(dims)
    false_alarms = (f_event & ~o_event & valid).sum(dims)
    correct_negatives = (~f_event & ~o_event & valid).sum(dims)
    out = xr.Dataset(
        {
            "hits": hits.astype("int64"),
            "misses": misses.astype("int64"),
            "false_alarms": false_alarms.astype("int64"),
            "correct_negatives": correct_negatives.astype("int64"),
        }
    )
    out.attrs.update(event="value >= threshold", protocol=str(protocol))
    return out


def _ratio(num: xr.DataArray, den: xr.DataArray, eps: float) -> xr.DataArray:
    num, den = num.astype(float), den.astype(float)
    if eps:
        return num / (den + eps)
    return num / den.where(den > 0)


def _csi(c: xr.Dataset, eps: float) -> xr.DataArray:
    return _ratio(c.hits, c.hits + c.misses + c.false_alarms, eps)


def _pod(c: xr.Dataset, eps: float) -> xr.DataArray:
    return _ratio(c.hits, c.hits + c.misses, eps)


def _sucr(c: xr.Dataset, eps: float) -> xr.DataArray:
    return _ratio(c.hits, c.hits + c.false_alarms, eps)


def _fbias(c: xr.Dataset, eps: float) -> xr.DataArray:
    return _ratio(c.hits + c.false_alarms, c.hits + c.misses, eps)


def scores_from_counts(counts: xr.Dataset, eps: float = 0.0) -> xr.Dataset:
    """CSI, POD, SUCR and frequency bias from contingency counts.

    For counts accumulated elsewhere (e.g. summed batch by batch over a test set): the same
    formulas as :func:`csi` and friends. ``eps`` is added to every denominator (the SEVIR
    protocol uses ``SEVIR_EPS``); with ``eps=0`` a zero denominator gives NaN.

    Examples
    --------
    >>> import xarray as xr
    >>> c = xr.Dataset({"hits": 2, "misses": 1, "false_alarms": 1})
    >>> float(scores_from_counts(c).csi)
    0.5
    """
    return xr.Dataset({"csi": _csi(counts, eps), "pod": _pod(counts, eps),
                       "sucr": _sucr(counts, eps), "frequency_bias": _fbias(counts, eps)})


def _score(
    formula: Callable[[xr.Dataset, float], xr.DataArray],
    name: str,
    forecast: Any,
    observed: Any,
    thresholds: Any,
    dim: Dims,
    pool: int | None,
    protocol: str | None,
    aggregate: str,
    sample_dim: Hashable | None,
    **kwargs: Any,
) -> xr.DataArray:
    if aggregate not in _AGGREGATES:
        raise DataError(f"unknown aggregate {aggregate!r}; expected one of {_AGGREGATES}")
    eps = SEVIR_EPS if protocol == "sevir" else 0.0
    if aggregate == "counts":
        score = formula(contingency(forecast, observed, thresholds, dim, pool, protocol, **kwargs), eps)
    else:
        fc, obs = prepare_pair(forecast, observed)
        fc = single_variable(fc, "forecast")
        keep = _kept_dims(protocol)
        dims = reduce_dims(fc, dim, keep)
        sample = sample_dim or next((d for d in (INIT, TIME) if d in dims), dims[0] if dims else None)
        if sample is None or sample not in dims:
            raise DataError(
                f"aggregate='samples' needs a sample dim among the reduced dims {dims}; "
                "pass sample_dim=NAME"
            )
        per_sample = formula(
            contingency(fc, obs, thresholds, [d for d in dims if d != sample], pool, protocol,
                        **kwargs),
            eps,
        )
        score = per_sample.mean(sample, skipna=True)
    # a score, not the variable: drop its long_name, valid range... (xarray keeps them)
    score = score.rename(name)
    score.attrs = {"long_name": _LONG_NAMES.get(name, name), "units": "1"}
    return score


def _make(formula: Callable[[xr.Dataset, float], xr.DataArray], name: str, doc: str):
    def metric(
        forecast: Any,
        observed: Any,
        thresholds: Any = None,
        dim: Dims = None,
        pool: int | None = None,
        protocol: str | None = None,
        *,
        aggregate: str = "counts",
        sample_dim: Hashable | None = None,
        **kwargs: Any,
    ) -> xr.DataArray:
        return _score(formula, name, forecast, observed, thresholds, dim, pool, protocol,
                      aggregate, sample_dim, **kwargs)

    metric.__name__ = metric.__qualname__ = name
    # the shared Parameters/Returns go between the summary and the Examples of ``doc``
    metric.__doc__ = doc.replace("{parameters}", _COMMON_DOC.format(name=name))
    return metric


_COMMON_DOC = """
    Parameters
    ----------
    forecast, observed, thresholds, dim, pool, protocol
        As in :func:`contingency` (keyword-only extras ``pool_method``, ``pool_stride``,
        ``pool_dims``, ``scale`` and ``check_range`` are passed on).
    aggregate
        ``"counts"`` (default): sum the counts over ``dim``, then divide (official SEVIR).
        ``"samples"``: one score per ``sample_dim`` (default ``init_time``), then the mean of
        the defined ones. See the module docstring for the difference.

    Returns
    -------
    xarray.DataArray
        Named ``{name}``; keeps ``lead_time`` and ``member`` (not with protocol="sevir"),
        ``control``, ``threshold`` (for a list of thresholds) and any dim not reduced. Undefined scores
        (zero denominator) are NaN, except with protocol="sevir" where eps makes them 0.
    """

csi = _make(_csi, "csi", """Critical success index h / (h + m + f) (threat score).
{parameters}
    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> fc = xr.DataArray(np.array([1.0, 5.0, 5.0]), dims="x")
    >>> float(csi(fc, xr.DataArray(np.array([5.0, 5.0, 1.0]), dims="x"), thresholds=3.0))
    0.3333333333333333
""")
pod = _make(_pod, "pod", """Probability of detection h / (h + m).
{parameters}
    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> fc = xr.DataArray(np.array([1.0, 5.0, 5.0]), dims="x")
    >>> float(pod(fc, xr.DataArray(np.array([5.0, 5.0, 1.0]), dims="x"), thresholds=3.0))
    0.5
""")
sucr = _make(_sucr, "sucr", """Success ratio h / (h + f) = 1 - false alarm ratio.
{parameters}
    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> fc = xr.DataArray(np.array([1.0, 5.0, 5.0]), dims="x")
    >>> float(sucr(fc, xr.DataArray(np.array([5.0, 5.0, 1.0]), dims="x"), thresholds=3.0))
    0.5
""")
frequency_bias = _make(_fbias, "frequency_bias", """Frequency bias (h + f) / (h + m): 1 is
    unbiased, above 1 over-forecasting. Not the official SEVIR "bias" (see the module notes).
{parameters}
    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> fc = xr.DataArray(np.array([1.0, 5.0, 5.0]), dims="x")
    >>> float(frequency_bias(fc, xr.DataArray(np.array([5.0, 1.0, 1.0]), dims="x"), thresholds=3.0))
    2.0
""")


def csi_m(
    forecast: Any,
    observed: Any,
    thresholds: Any = None,
    dim: Dims = None,
    pool: int | None = None,
    protocol: str | None = None,
    **kwargs: Any,
) -> xr.DataArray:
    """CSI-M: the mean over thresholds of the CSI at each threshold.

    With ``protocol="sevir"`` and the default thresholds this is the paper's CSI-M (the mean
    of the six CSIs pooled over all samples, pixels and lead times). Other parameters as in
    :func:`csi`; undefined CSIs are skipped in the mean.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> fc = xr.DataArray(np.array([1.0, 5.0, 9.0]), dims="x")
    >>> ob = xr.DataArray(np.array([1.0, 5.0, 9.0]), dims="x")
    >>> float(csi_m(fc, ob, thresholds=[3.0, 7.0]))
    1.0
    """
    thr, _ = _threshold_array(thresholds)
    if THRESHOLD not in thr.dims:
        thr = thr.expand_dims({THRESHOLD: [float(thr)]})
    score = csi(forecast, observed, thr, dim, pool, protocol, **kwargs)
    score = score.mean(THRESHOLD, skipna=True).rename("csi_m")
    score.attrs = {"long_name": _LONG_NAMES["csi_m"], "units": "1"}
    return score


def ensemble_csi(
    ensemble: Any,
    observed: Any,
    thresholds: Any = None,
    dim: Dims = None,
    pool: int | None = None,
    member_dim: Hashable = MEMBER,
    **kwargs: Any,
) -> xr.Dataset:
    """CSI of an ensemble: of its mean field, of each member, and the mean of the members'.

    A recipe over :func:`csi`, nothing more: ``csi(ensemble.mean(member_dim), observed)``
    and ``csi(ensemble, observed)`` (which keeps ``member``). The ensemble mean is smooth, so
    it scores well at low thresholds and badly at high ones; single members are sharp. With
    ``pool`` both are pooled after the mean is taken (pool the mean field, then threshold).
    A point with a missing member has no ensemble mean and is skipped there.

    Parameters
    ----------
    ensemble, observed, thresholds, pool
        As in :func:`csi`; ``ensemble`` has ``member_dim``.
    dim
        Dims to sum the counts over; default: every dim except ``lead_time``, ``threshold``,
        ``control`` (and ``member`` for the per-member score). Must not include ``member_dim``.
    kwargs
        Passed on to :func:`csi` (``protocol``, ``aggregate``, ``pool_method``, ``scale``...).

    Returns
    -------
    xarray.Dataset
        ``ensemble_mean`` (CSI of the mean field), ``per_member`` (with ``member_dim``) and
        ``member_mean`` (mean over members of ``per_member``, skipping undefined ones).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ens = xr.DataArray(np.array([[0.0, 10.0], [10.0, 10.0]]), dims=("x", "member"))
    >>> out = ensemble_csi(ens, xr.DataArray([10.0, 10.0], dims="x"), thresholds=6.0)
    >>> float(out.ensemble_mean), out.per_member.values.tolist(), float(out.member_mean)
    (0.5, [0.5, 1.0], 0.75)
    """
    ens = single_variable(to_xarray(ensemble), "the ensemble")
    if member_dim not in ens.dims:
        raise DataError(
            f"the ensemble has dims {list(ens.dims)}; expected a member dim {member_dim!r}. "
            "Pass member_dim=NAME"
        )
    if dim is not None and member_dim in ([dim] if isinstance(dim, str) else list(dim)):
        raise DataError(
            f"dim must not include the member dim {member_dim!r}: ensemble_csi scores the "
            "members one by one (per_member) and their mean field; for counts pooled over "
            "members call csi(ensemble, observed, dim=[..., 'member'])"
        )
    per_member = csi(ens, observed, thresholds, dim, pool, **kwargs)
    if member_dim not in per_member.dims:  # e.g. protocol="sevir" sums over every dim
        raise DataError(
            f"the per-member CSI lost the {member_dim!r} dim (kwargs {sorted(kwargs)}); "
            "pass dim=[...] naming the dims to sum over"
        )
    mean_field = ens.mean(member_dim, skipna=False)
    of_mean = csi(mean_field, observed, thresholds, dim, pool, **kwargs)
    out = xr.Dataset({
        "ensemble_mean": of_mean,
        "per_member": per_member,
        "member_mean": per_member.mean(member_dim, skipna=True),
    })
    out["ensemble_mean"].attrs = {"long_name": "critical success index of the ensemble mean",
                                  "units": "1"}
    out["per_member"].attrs = {"long_name": "critical success index of each member", "units": "1"}
    out["member_mean"].attrs = {"long_name": "critical success index, mean over members",
                                "units": "1"}
    return out
