"""Verification scores for forecasts on labelled (xarray) data.

Every score takes xarray objects (numpy arrays and torch tensors work too), reduces over
``dim`` (default: every dim except ``lead_time``, ``threshold``, ``member`` and ``control``;
scores over members keep ``lead_time``, ``threshold`` and ``control``), skips NaN points and
stays lazy on Dask input. Observations on ``time`` are aligned to a forecast's 2-D
``valid_time``. Modules, one job each:

* :mod:`~xearthformer.metrics.categorical`: contingency, csi, pod, sucr, frequency_bias, csi_m,
  ensemble_csi, scores_from_counts
* :mod:`~xearthformer.metrics.continuous`: mse, mae, rmse, mean_bias, acc
* :mod:`~xearthformer.metrics.enso`: nino34_index, c_nino34, nino34_skill
* :mod:`~xearthformer.metrics.probabilistic`: crps (plain, fair, pooled), spread_skill,
  rank_histogram, rank_histogram_flatness, brier_score
* :mod:`~xearthformer.metrics.events`: reliability, roc (probabilities of threshold events)
* :mod:`~xearthformer.metrics.neighbourhood`: fss (fractions skill score)
* :mod:`~xearthformer.metrics.spectral`: rapsd (radially averaged power spectra)
* :mod:`~xearthformer.metrics.products`: probability, quantile (ensemble products, CF)
* :mod:`~xearthformer.metrics.pooling`: pool, max_pool (the one pooling of CSI and CRPS)
* :mod:`~xearthformer.metrics.plot`: plot_by_lead
* :mod:`~xearthformer.metrics.ensemble_plots`: plot_rank_histogram, plot_reliability,
  plot_rapsd, plot_members

>>> import numpy as np, xarray as xr
>>> from xearthformer import metrics
>>> fc = xr.DataArray(np.array([10.0, 80.0]), dims="x")
>>> metrics.csi(fc, fc, thresholds=[16]).values.tolist()
[1.0]
"""

from __future__ import annotations

from .categorical import (
    SEVIR_THRESHOLDS,
    contingency,
    csi,
    csi_m,
    ensemble_csi,
    frequency_bias,
    pod,
    scores_from_counts,
    sucr,
)
from .continuous import acc, mae, mean_bias, mse, rmse
from .ensemble_plots import plot_members, plot_rank_histogram, plot_rapsd, plot_reliability
from .enso import c_nino34, monthly_climatology, nino34_index, nino34_skill, nino34_weights
from .events import reliability, roc
from .neighbourhood import fss
from .plot import plot_by_lead
from .pooling import max_pool, pool
from .probabilistic import (
    brier_score,
    crps,
    rank_histogram,
    rank_histogram_flatness,
    spread_skill,
)
from .products import probability, quantile
from .spectral import rapsd

__all__ = [
    "SEVIR_THRESHOLDS",
    "acc",
    "brier_score",
    "c_nino34",
    "contingency",
    "crps",
    "csi",
    "csi_m",
    "ensemble_csi",
    "frequency_bias",
    "fss",
    "mae",
    "max_pool",
    "mean_bias",
    "monthly_climatology",
    "mse",
    "nino34_index",
    "nino34_skill",
    "nino34_weights",
    "plot_by_lead",
    "plot_members",
    "plot_rank_histogram",
    "plot_rapsd",
    "plot_reliability",
    "pod",
    "pool",
    "probability",
    "quantile",
    "rank_histogram",
    "rank_histogram_flatness",
    "rapsd",
    "reliability",
    "rmse",
    "roc",
    "scores_from_counts",
    "spread_skill",
    "sucr",
]
