"""Property tests (hypothesis) of the ensemble scores and products: the same numbers whatever
the dim order and the Dask chunking, and nothing computed on Dask input until asked."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import xearthformer  # noqa: F401
from xearthformer import metrics

from tests.test_metrics_common import make_forecast, make_observed
from tests.test_metrics_properties import SETTINGS, _check_same, raise_if_computes


def _scores(fc: xr.DataArray, obs: xr.DataArray, ens: xr.DataArray) -> dict[str, xr.DataArray]:
    rel = metrics.reliability(ens, obs, threshold=[100.0, 180.0], bins=4)
    curve = metrics.roc(ens, obs, threshold=120.0)
    ens_csi = metrics.ensemble_csi(ens, obs, thresholds=[170.0], pool=2, check_range=False)
    flat = metrics.rank_histogram_flatness(metrics.rank_histogram(ens, obs))
    return {
        "crps_max4": metrics.crps(ens, obs, pool=2, pool_method="max"),
        "crps_avg": metrics.crps(ens, obs, fair=True, pool=2, pool_method="avg", pool_stride=1),
        "chi2": flat.chi2,
        "p_value": flat.p_value,
        "rel_freq": rel.observed_frequency,
        "rel_prob": rel.mean_forecast_probability,
        "rel_count": rel["count"],
        "pod": curve.pod,
        "pofd": curve.pofd,
        "auc": curve.auc,
        "fss": metrics.fss(fc, obs, thresholds=[90.0, 170.0], scales=[1, 2, 3]),
        "fss_members": metrics.fss(ens, obs, thresholds=150.0, scales=3),
        "rapsd": metrics.rapsd(fc),
        "rapsd_pair": metrics.rapsd(fc, obs, dim=None).observed,
        "csi_mean": ens_csi.ensemble_mean,
        "csi_members": ens_csi.per_member,
        "probability": metrics.probability(ens, [60.0, 200.0]),
        "quantile": metrics.quantile(ens, [0.1, 0.5, 0.9]),
    }


@pytest.fixture(scope="module")
def data():
    obs = make_observed(n_time=7, ny=4, nx=6, lon0=170.0, step=2.0)
    obs[2, 1, :2] = np.nan
    fc = make_forecast(obs, n_init=3, n_lead=3)
    ens = make_forecast(obs, n_init=3, n_lead=3, members=4, seed=3)
    return fc, obs, ens, _scores(fc, obs, ens)


def test_the_reference_scores_are_not_trivial(data):
    *_, ref = data
    for name, score in ref.items():
        values = np.asarray(score.values, dtype=float)
        assert np.isfinite(values).any(), name
        assert np.nanstd(values) > 0 or values.size == 1, name


@SETTINGS
@given(st.permutations(range(4)), st.permutations(range(3)), st.permutations(range(5)))
def test_invariant_to_dim_order(data, perm_fc, perm_obs, perm_ens):
    fc, obs, ens, ref = data
    fc_t = fc.transpose(*[fc.dims[i] for i in perm_fc])
    obs_t = obs.transpose(*[obs.dims[i] for i in perm_obs])
    ens_t = ens.transpose(*[ens.dims[i] for i in perm_ens])
    _check_same(_scores(fc_t, obs_t, ens_t), ref)


# chunks of at least 2 (3 along lon and time): single-point chunks only multiply the tasks
@settings(SETTINGS, max_examples=2)
@given(st.integers(2, 3), st.integers(2, 3), st.integers(2, 4), st.integers(3, 6),
       st.integers(3, 7), st.integers(1, 4))
def test_invariant_to_chunking_and_lazy(data, c_init, c_lead, c_lat, c_lon, c_time, c_member):
    fc, obs, ens, ref = data
    chunks = {"init_time": c_init, "lead_time": c_lead, "lat": c_lat, "lon": c_lon}
    fc_c, ens_c = fc.chunk(chunks), ens.chunk({**chunks, "member": c_member})
    obs_c = obs.chunk({"time": c_time, "lat": c_lat, "lon": c_lon})
    with dask.config.set(scheduler=raise_if_computes):
        lazy = _scores(fc_c, obs_c, ens_c)
        assert all(v.chunks is not None for v in lazy.values())
    computed = dask.compute(lazy, scheduler="sync")[0]  # thousands of tiny tasks: no threads
    _check_same(computed, ref)
