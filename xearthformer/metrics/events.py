"""Probability forecasts of threshold events from an ensemble: reliability diagram and ROC.

The forecast probability of the event ``value >= threshold`` at a point is the fraction of
members with the event (:func:`~xearthformer.metrics.products.probability`); with M members
it takes the M + 1 values 0, 1/M, ..., 1. Points with a missing member or observation are
skipped. Both scores keep ``lead_time``, ``threshold`` and ``control`` by default.

* :func:`reliability`: observed relative frequency of the event per forecast-probability bin
  (a reliable ensemble lies on the diagonal), the mean forecast probability and the number
  of forecasts per bin (the sharpness histogram).
* :func:`roc`: probability of detection against probability of false detection as the
  decision threshold on the forecast probability rises, and the area under that curve.

>>> import numpy as np, xarray as xr
>>> ens = xr.DataArray(np.array([[0.0, 0.0], [0.0, 9.0], [9.0, 9.0]]), dims=("x", "member"))
>>> obs = xr.DataArray([0.0, 9.0, 9.0], dims="x")
>>> float(roc(ens, obs, threshold=5.0).auc)
1.0
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import xarray as xr

from ..errors import DataError
from ._common import KEEP_OVER_MEMBERS, MEMBER, Dims, reduce_dims, single_variable
from .products import _exceedance

BIN_DIM = "forecast_probability"  # as xskillscore names it
DECISION_DIM = "probability_threshold"


def _event_probability(ensemble: Any, observed: Any, threshold: Any, member_dim: Hashable):
    """Forecast probability and observed event (bool) at every point where both exist,
    plus that mask."""
    from .categorical import _threshold_array
    from .probabilistic import _ensemble_pair

    ens, obs = _ensemble_pair(ensemble, observed, member_dim)
    ens, obs = single_variable(ens, "the ensemble"), single_variable(obs, "observed")
    thr, _ = _threshold_array(threshold)
    valid = obs.notnull()  # _ensemble_pair masked points with a missing member too
    prob = _exceedance(ens, thr, member_dim)
    event = (obs >= thr) & valid
    return prob, event, valid & prob.notnull(), ens.sizes[member_dim]


def _bin_edges(bins: Any) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, int(bins) + 1) if np.ndim(bins) == 0 else \
        np.asarray(bins, dtype=float).ravel()
    if edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise DataError(
            f"probability bins must be a number of bins or increasing edges; got {bins!r}. "
            "Example: bins=10 or bins=[0, 0.05, 0.35, 0.65, 0.95, 1]"
        )
    return edges


def reliability(
    ensemble: Any,
    observed: Any,
    threshold: Any,
    bins: Any = 10,
    member_dim: Hashable = MEMBER,
    dim: Dims = None,
) -> xr.Dataset:
    """Reliability diagram data of the event ``value >= threshold``.

    Parameters
    ----------
    ensemble, observed
        Ensemble with ``member_dim``; observation without it (on ``time`` it is aligned to
        the ensemble's ``valid_time``).
    threshold
        A number, or a list (a ``threshold`` dim).
    bins
        Number of equal forecast-probability bins on [0, 1], or their edges. Bins hold
        ``lower <= p < upper``, the last one also ``p == upper`` (as numpy.histogram and
        xskillscore's ``reliability``). Choose edges between the M + 1 probabilities an
        M-member ensemble can give (e.g. ``(np.arange(M + 2) - 0.5) / M`` clipped to
        [0, 1]) to give each its own bin.
    dim
        Dims to pool the forecasts over; default all but ``lead_time``, ``threshold``,
        ``control``.

    Returns
    -------
    xarray.Dataset
        Along ``forecast_probability`` (the bin centres; ``bin_lower``/``bin_upper``
        coordinates): ``observed_frequency`` (events / forecasts in the bin, NaN for an
        empty bin), ``mean_forecast_probability``, ``count`` (forecasts per bin) and
        ``sharpness`` (``count`` as a fraction of all forecasts). Lazy on Dask input.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ens = xr.DataArray(np.array([[0.0, 0.0], [0.0, 9.0], [0.0, 9.0]]), dims=("x", "member"))
    >>> out = reliability(ens, xr.DataArray([0.0, 9.0, 0.0], dims="x"), 5.0, bins=2)
    >>> out.observed_frequency.values.tolist(), out["count"].values.tolist()
    ([0.0, 0.5], [1, 2])
    """
    edges = _bin_edges(bins)
    prob, event, valid, _ = _event_probability(ensemble, observed, threshold, member_dim)
    dims = reduce_dims(prob, dim, keep=KEEP_OVER_MEMBERS)
    counts, events, sums = [], [], []
    # one bin at a time: the peak memory stays that of the probability field, not n_bins x it
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        upper = (prob <= hi) if i == len(edges) - 2 else (prob < hi)
        in_bin = (prob >= lo) & upper & valid
        counts.append(in_bin.sum(dims))
        events.append((in_bin & event).sum(dims))
        sums.append(prob.where(in_bin).sum(dims))
    centres = 0.5 * (edges[:-1] + edges[1:])
    coords = {BIN_DIM: centres, "bin_lower": (BIN_DIM, edges[:-1]), "bin_upper": (BIN_DIM, edges[1:])}
    count = xr.concat(counts, BIN_DIM).assign_coords(coords)
    n_event = xr.concat(events, BIN_DIM).assign_coords(coords)
    p_sum = xr.concat(sums, BIN_DIM).assign_coords(coords)
    nonzero = count.where(count > 0)
    total = count.sum(BIN_DIM)
    out = xr.Dataset({
        "observed_frequency": n_event / nonzero,
        "mean_forecast_probability": p_sum / nonzero,
        "count": count.astype("int64"),
        "sharpness": count / total.where(total > 0),
    }).transpose(..., BIN_DIM)
    out[BIN_DIM].attrs = {"long_name": "forecast probability (bin centre)", "units": "1"}
    out["observed_frequency"].attrs = {"long_name": "observed relative frequency of the event",
                                       "units": "1"}
    out["mean_forecast_probability"].attrs = {
        "long_name": "mean forecast probability in the bin", "units": "1"}
    out["count"].attrs = {"long_name": "number of forecasts in the bin"}
    out["sharpness"].attrs = {"long_name": "fraction of the forecasts in the bin (sharpness)",
                              "units": "1"}
    out.attrs = {"event": "value >= threshold"}
    return out


def roc(
    ensemble: Any,
    observed: Any,
    threshold: Any,
    probability_thresholds: Any = None,
    member_dim: Hashable = MEMBER,
    dim: Dims = None,
) -> xr.Dataset:
    """Relative operating characteristic of the event ``value >= threshold``.

    The event is forecast where the forecast probability is at least the decision threshold
    ``p*``; each ``p*`` gives one point (POFD, POD) of the curve. The area under the curve
    (AUC, 0.5 = no skill, 1 = perfect discrimination) is the trapezoidal area through those
    points plus (0, 0) and (1, 1); with the default thresholds it is the area of the full
    empirical ROC curve, i.e. the Mann-Whitney probability that an event gets a higher
    forecast probability than a non-event (ties counting half).

    Parameters
    ----------
    ensemble, observed, threshold, member_dim, dim
        As in :func:`reliability`.
    probability_thresholds
        Decision thresholds on the forecast probability; default the M + 1 values
        ``0, 1/M, ..., 1`` an M-member ensemble can give.

    Returns
    -------
    xarray.Dataset
        ``pod`` (hit rate) and ``pofd`` (false alarm rate) along ``probability_threshold``,
        and ``auc``. NaN where the reduced data hold no event or no non-event. Lazy on Dask
        input.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ens = xr.DataArray(np.array([[0.0, 9.0], [0.0, 9.0], [0.0, 0.0]]), dims=("x", "member"))
    >>> out = roc(ens, xr.DataArray([9.0, 0.0, 0.0], dims="x"), threshold=5.0)
    >>> out.pod.values.tolist(), out.pofd.values.tolist(), float(out.auc)
    ([1.0, 1.0, 0.0], [1.0, 0.5, 0.0], 0.75)
    """
    prob, event, valid, m = _event_probability(ensemble, observed, threshold, member_dim)
    if probability_thresholds is None:
        decisions = np.arange(m + 1) / m
    else:
        decisions = np.unique(np.asarray(probability_thresholds, dtype=float).ravel())
        if decisions.size == 0:
            raise DataError("probability_thresholds is empty; pass values in [0, 1]")
    dims = reduce_dims(prob, dim, keep=KEEP_OVER_MEMBERS)
    non_event = valid & ~event
    n_event = event.sum(dims)
    n_non_event = non_event.sum(dims)
    hits, false_alarms = [], []
    for p in decisions:  # one decision at a time: memory of one field, not len(decisions) x it
        warned = prob >= p
        hits.append((warned & event).sum(dims))
        false_alarms.append((warned & non_event).sum(dims))
    coords = {DECISION_DIM: decisions}
    pod = xr.concat(hits, DECISION_DIM).assign_coords(coords) / n_event.where(n_event > 0)
    pofd = xr.concat(false_alarms, DECISION_DIM).assign_coords(coords) / \
        n_non_event.where(n_non_event > 0)
    auc = _trapezoid_auc(pod, pofd)
    out = xr.Dataset({"pod": pod, "pofd": pofd, "auc": auc}).transpose(..., DECISION_DIM)
    out[DECISION_DIM].attrs = {"long_name": "decision threshold on the forecast probability",
                               "units": "1"}
    out["pod"].attrs = {"long_name": "probability of detection (hit rate)", "units": "1"}
    out["pofd"].attrs = {"long_name": "probability of false detection (false alarm rate)",
                         "units": "1"}
    out["auc"].attrs = {"long_name": "area under the ROC curve", "units": "1"}
    out.attrs = {"event": "value >= threshold", "decision": "forecast probability >= threshold"}
    return out


def _trapezoid_auc(pod: xr.DataArray, pofd: xr.DataArray) -> xr.DataArray:
    """Area under the curve through (1, 1), the points in order of rising decision threshold
    (falling POFD), and (0, 0)."""
    ones = xr.ones_like(pod.isel({DECISION_DIM: 0}, drop=True)).expand_dims({DECISION_DIM: [-np.inf]})
    zeros = xr.zeros_like(ones).assign_coords({DECISION_DIM: [np.inf]})
    y = xr.concat([ones, pod, zeros], DECISION_DIM)
    x = xr.concat([ones, pofd, zeros], DECISION_DIM)
    width = x.diff(DECISION_DIM, label="lower")
    height = 0.5 * (y + y.shift({DECISION_DIM: -1})).isel({DECISION_DIM: slice(None, -1)})
    # skipna=False: a NaN POD or POFD (no events, or no non-events) leaves the area undefined
    return -(width * height).sum(DECISION_DIM, skipna=False)
