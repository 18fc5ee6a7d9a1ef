"""Property tests (hypothesis): scores do not depend on dim order, chunking or longitude
convention; Dask input stays lazy; plot_by_lead draws what it is given."""

from __future__ import annotations

import dask
import matplotlib
import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xearthformer  # noqa: F401
from xearthformer import metrics

from tests.test_metrics_common import make_forecast, make_observed
from tests.test_metrics_enso import forecast_sst, synthetic_sst

matplotlib.use("Agg")

SETTINGS = settings(max_examples=8, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def raise_if_computes(dsk, keys, **kwargs):  # a Dask scheduler that refuses to run anything
    raise RuntimeError("a lazy metric triggered a Dask computation")


def _scores(fc: xr.DataArray, obs: xr.DataArray, ens: xr.DataArray) -> dict[str, xr.DataArray]:
    return {
        "csi": metrics.csi(fc, obs, thresholds=[60.0, 150.0], check_range=False),
        "pooled": metrics.csi(fc, obs, thresholds=[150.0], pool=2, check_range=False),
        "mse": metrics.mse(fc, obs, weights="coslat"),
        "acc": metrics.acc(fc, obs, centered=True),
        "crps": metrics.crps(ens, obs, fair=True),
        "brier": metrics.brier_score(ens, obs, threshold=[100.0]),
    }


@pytest.fixture(scope="module")
def data():
    obs = make_observed(n_time=7, ny=4, nx=6, lon0=170.0, step=2.0)
    obs[2, 1, :2] = np.nan
    fc = make_forecast(obs, n_init=3, n_lead=3)
    ens = make_forecast(obs, n_init=3, n_lead=3, members=4, seed=3)
    return fc, obs, ens, _scores(fc, obs, ens)


def _check_same(got: dict, ref: dict) -> None:
    for name in ref:
        a = got[name].transpose(*ref[name].dims)
        np.testing.assert_allclose(a.values, ref[name].values, rtol=1e-10, atol=1e-12,
                                   err_msg=name)


@SETTINGS
@given(st.permutations(range(4)), st.permutations(range(3)), st.permutations(range(5)))
def test_invariant_to_dim_order(data, perm_fc, perm_obs, perm_ens):
    fc, obs, ens, ref = data
    fc_t = fc.transpose(*[fc.dims[i] for i in perm_fc])
    obs_t = obs.transpose(*[obs.dims[i] for i in perm_obs])
    ens_t = ens.transpose(*[ens.dims[i] for i in perm_ens])
    _check_same(_scores(fc_t, obs_t, ens_t), ref)


@settings(SETTINGS, max_examples=3)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(2, 4), st.integers(2, 6), st.integers(2, 7))
def test_invariant_to_chunking_and_lazy(data, c_init, c_lead, c_lat, c_lon, c_time):
    fc, obs, ens, ref = data
    chunks = {"init_time": c_init, "lead_time": c_lead, "lat": c_lat, "lon": c_lon}
    fc_c, ens_c = fc.chunk(chunks), ens.chunk({**chunks, "member": 2})
    obs_c = obs.chunk({"time": c_time, "lat": c_lat, "lon": c_lon})
    with dask.config.set(scheduler=raise_if_computes):
        lazy = _scores(fc_c, obs_c, ens_c)
        assert all(v.chunks is not None for v in lazy.values())
    computed = dask.compute(lazy)[0]  # one graph, one pass
    _check_same(computed, ref)


@SETTINGS
@given(st.sampled_from(["-180", "0-360"]), st.sampled_from(["-180", "0-360"]), st.booleans())
def test_invariant_to_longitude_convention(data, conv_fc, conv_obs, flip_lat):
    fc, obs, ens, ref = data

    def convert(x, conv):
        lon = ((x.lon + 180) % 360) - 180 if conv == "-180" else x.lon % 360
        out = x.assign_coords(lon=lon).sortby("lon")
        return out.isel(lat=slice(None, None, -1)) if flip_lat else out

    got = _scores(convert(fc, conv_fc), convert(obs, conv_obs), convert(ens, conv_fc))
    for name in ref:  # pooled blocks depend on the grid's order; everything else must agree
        if name == "pooled" and (conv_fc == "-180" or flip_lat):
            continue
        a = got[name].transpose(*ref[name].dims)
        np.testing.assert_allclose(a.values, ref[name].values, rtol=1e-10, err_msg=name)


def test_nino34_is_lazy_and_chunk_invariant():
    obs = synthetic_sst(n_months=30)
    fc = forecast_sst(obs, n_lead=6)
    ref_obs = metrics.nino34_index(obs)
    ref_skill = metrics.nino34_skill(fc, obs, window="forward")
    with dask.config.set(scheduler=raise_if_computes):
        lazy_obs = metrics.nino34_index(obs.chunk({"time": 12, "lon": 30}))
        lazy_skill = metrics.nino34_skill(fc.chunk({"init_time": 12}), obs.chunk({"time": 12}),
                                          window="forward")
    lazy_obs, lazy_cor = dask.compute(lazy_obs, lazy_skill.cor)
    np.testing.assert_allclose(lazy_obs.values, ref_obs.values, equal_nan=True)
    np.testing.assert_allclose(lazy_cor.values, ref_skill.cor.values)


def test_plot_by_lead_draws_one_line_per_threshold(data):
    import matplotlib.pyplot as plt

    fc, obs, _, _ = data
    scores = fc.earthformer.csi(obs, thresholds=[60, 150])
    ax = scores.earthformer.plot_by_lead()
    lines = ax.get_lines()
    assert len(lines) == 2
    np.testing.assert_allclose(lines[1].get_ydata(), scores.sel(threshold=150).values)
    assert "hours" in ax.get_xlabel()
    ds = xr.Dataset({"mse": metrics.mse(fc, obs), "mae": metrics.mae(fc, obs)})
    ax2 = metrics.plot_by_lead(ds)
    assert len(ax2.get_lines()) == 2
    plt.close("all")
    with pytest.raises(xearthformer.DataError, match="lead_time"):
        metrics.plot_by_lead(metrics.mse(fc, obs, dim=["lead_time", "init_time"]))


def test_other_ensemble_scores_and_contingency_are_lazy(data):
    fc, obs, ens, _ = data
    eager = {
        "rank": metrics.rank_histogram(ens, obs),
        "spread": metrics.spread_skill(ens, obs).ratio,
        "sevir": metrics.contingency(fc, obs, protocol="sevir").hits,
        "samples": metrics.csi(fc, obs, [150.0], aggregate="samples", check_range=False),
    }
    fc_c, obs_c = fc.chunk({"init_time": 2}), obs.chunk({"time": 4})
    ens_c = ens.chunk({"init_time": 2, "member": 2})
    with dask.config.set(scheduler=raise_if_computes):
        lazy = {
            "rank": metrics.rank_histogram(ens_c, obs_c),
            "spread": metrics.spread_skill(ens_c, obs_c).ratio,
            "sevir": metrics.contingency(fc_c, obs_c, protocol="sevir").hits,
            "samples": metrics.csi(fc_c, obs_c, [150.0], aggregate="samples", check_range=False),
        }
    computed = dask.compute(lazy)[0]
    # continuous data: no ties, so the random tie-break cannot change the ranks
    _check_same(computed, eager)
