"""Ensemble verification against independent computations: sorted CRPS vs the pairwise formula
and xskillscore (100 members), pooled CRPS/CSI vs explicit block loops and torch pooling, the
rank-histogram flatness vs scipy, reliability/ROC/Brier vs xskillscore and the Mann-Whitney
statistic, ensemble CSI vs csi, and the ``control`` dim kept by every score."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
import xarray as xr
import xskillscore as xs

import xearthformer  # noqa: F401  (registers the accessor)
from xearthformer import metrics
from xearthformer.errors import DataError

from tests.test_metrics_common import make_forecast, make_observed, observed_on_forecast

DIMS = ["init_time", "lat", "lon"]


@pytest.fixture(scope="module")
def case():
    """A 12-member ensemble on (init_time, lead_time, member, lat, lon), its observations on
    time, and the observations laid out like the forecast (brute-force alignment)."""
    obs = make_observed(n_time=9, ny=8, nx=8, scale=10.0)
    ens = make_forecast(obs, n_init=5, n_lead=3, noise=3.0, members=12, seed=2)
    aligned = ens.isel(member=0, drop=True).copy(data=observed_on_forecast(ens, obs))
    return ens, obs, aligned


def crps_pairwise(ens: np.ndarray, y: np.ndarray, fair: bool) -> np.ndarray:
    """The O(M^2) textbook form: mean |x_i - y| - sum_ij |x_i - x_j| / (2 M^2 or 2 M (M-1))."""
    m = ens.shape[-1]
    pairs = np.abs(ens[..., :, None] - ens[..., None, :]).sum((-1, -2))
    return np.abs(ens - y[..., None]).mean(-1) - pairs / (2 * m * (m - 1) if fair else 2 * m * m)


# -- CRPS -----------------------------------------------------------------------------------
def test_sorted_crps_of_100_members_equals_pairwise_and_xskillscore():
    rng = np.random.default_rng(0)
    members = rng.gamma(2.0, 3.0, (40, 3, 100))  # skewed, like rain
    members[0, 0, :10] = members[0, 0, 0]        # ties among members
    y = rng.gamma(2.0, 3.0, (40, 3))
    y[1, 1] = members[1, 1, 5]                   # the observation equal to a member
    ens = xr.DataArray(members, dims=("x", "lead_time", "member"))
    obs = xr.DataArray(y, dims=("x", "lead_time"))
    for fair in (False, True):
        got = metrics.crps(ens, obs, fair=fair, dim=[])
        np.testing.assert_allclose(got.values, crps_pairwise(members, y, fair), rtol=0, atol=1e-10)
    ref = xs.crps_ensemble(obs, ens, dim=[])
    np.testing.assert_allclose(metrics.crps(ens, obs, dim=[]).values, ref.values, rtol=0, atol=1e-10)


def test_crps_of_100_members_needs_no_pairwise_matrix():
    import tracemalloc

    rng = np.random.default_rng(7)
    ens = xr.DataArray(rng.normal(size=(2000, 100)), dims=("x", "member"))  # 1.6 MB
    obs = xr.DataArray(rng.normal(size=2000), dims="x")
    tracemalloc.start()
    metrics.crps(ens, obs, fair=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # the M x M differences would take 2000 * 100 * 100 * 8 B = 160 MB
    assert peak < 25e6, f"peak {peak / 1e6:.1f} MB"


def _pool_brute(field: np.ndarray, size: int, stride: int, how: str) -> np.ndarray:
    """Explicit loop over the blocks of the last two axes."""
    ny, nx = field.shape[-2:]
    rows = range(0, ny - size + 1, stride)
    cols = range(0, nx - size + 1, stride)
    out = np.empty(field.shape[:-2] + (len(rows), len(cols)))
    for a, i in enumerate(rows):
        for b, j in enumerate(cols):
            block = field[..., i:i + size, j:j + size]
            out[..., a, b] = np.nanmax(block, (-1, -2)) if how == "max" else np.nanmean(block, (-1, -2))
    return out


@pytest.mark.parametrize("size, stride", [(1, None), (4, None), (4, 2), (3, 2)])
@pytest.mark.parametrize("how", ["max", "avg"])
def test_pool_equals_block_loop_and_torch(size, stride, how):
    rng = np.random.default_rng(1)
    field = rng.normal(size=(2, 3, 9, 10))
    da = xr.DataArray(field, dims=("init_time", "member", "y", "x"))
    got = metrics.pool(da, size, how, stride=stride)
    step = stride or size
    np.testing.assert_allclose(got.values, _pool_brute(field, size, step, how), rtol=1e-12)
    fn = torch.nn.functional.max_pool2d if how == "max" else torch.nn.functional.avg_pool2d
    ref = fn(torch.from_numpy(field.reshape(6, 1, 9, 10)), size, step).numpy().reshape(got.shape)
    np.testing.assert_allclose(got.values, ref, rtol=1e-12)
    if how == "max":
        xr.testing.assert_identical(metrics.max_pool(da, size, stride), got)
    # blocks are labelled by the mean of their coordinates, whatever the stride
    lat = da.assign_coords(y=np.linspace(-20.0, 20.0, 9) ** 3)
    centres = metrics.pool(lat, size, how, stride=stride).y.values
    expected = [lat.y.values[i:i + size].mean() for i in range(0, 9 - size + 1, step)]
    np.testing.assert_allclose(centres, expected)


def test_pool_skips_nan_and_refuses_bad_input():
    da = xr.DataArray(np.array([[1.0, np.nan], [3.0, np.nan]]), dims=("y", "x"))
    assert metrics.pool(da, 2, "avg").item() == 2.0
    assert metrics.pool(da, 2, "max").item() == 3.0
    with pytest.raises(DataError, match="'max', 'avg'"):
        metrics.pool(da, 2, "mean")
    with pytest.raises(DataError, match="smaller pool"):
        metrics.pool(da, 4)
    with pytest.raises(DataError, match="positive"):
        metrics.pool(da, 0)


@pytest.mark.parametrize("how", ["max", "avg"])
def test_pooled_crps_is_crps_of_pooled_members_and_observation(case, how):
    ens, obs, aligned = case
    for size in (1, 4):
        got = metrics.crps(ens, obs, pool=size, pool_method=how)
        pooled_ens = _pool_brute(ens.transpose(..., "lat", "lon").values, size, size, how)
        pooled_obs = _pool_brute(aligned.transpose(..., "lat", "lon").values, size, size, how)
        dims = ("init_time", "lead_time", "member", "py", "px")
        ref = xs.crps_ensemble(xr.DataArray(pooled_obs, dims=("init_time", "lead_time", "py", "px")),
                               xr.DataArray(pooled_ens, dims=dims), dim=["init_time", "py", "px"])
        np.testing.assert_allclose(got.values, ref.values, rtol=1e-12)
    # pooling to one block per frame is no longer the grid-point score
    assert not np.allclose(metrics.crps(ens, obs, pool=8, pool_method=how).values,
                           metrics.crps(ens, obs).values)


def test_pooled_csi_uses_the_same_blocks(case):
    ens, obs, aligned = case
    fc = ens.isel(member=0, drop=True)
    got = metrics.csi(fc, obs, thresholds=[6.0], pool=4, pool_method="avg", dim=DIMS)
    f = _pool_brute(fc.values, 4, 4, "avg") >= 6.0
    o = _pool_brute(aligned.values, 4, 4, "avg") >= 6.0
    hits = (f & o).sum((0, 2, 3))
    ref = hits / (hits + (f & ~o).sum((0, 2, 3)) + (~f & o).sum((0, 2, 3)))
    np.testing.assert_allclose(got.sel(threshold=6.0).values, ref)


# -- rank histogram flatness ----------------------------------------------------------------
def test_flatness_equals_scipy_chisquare():
    rng = np.random.default_rng(3)
    counts = xr.DataArray(rng.integers(20, 60, (4, 11)), dims=("lead_time", "rank"))
    got = metrics.rank_histogram_flatness(counts)
    for lead in range(4):
        ref = scipy.stats.chisquare(counts.values[lead])
        assert float(got.chi2[lead]) == pytest.approx(ref.statistic, rel=1e-12)
        assert float(got.p_value[lead]) == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-15)
    assert int(got.dof) == 10
    np.testing.assert_allclose(got.delta.values, got.chi2.values / 10)


@pytest.mark.parametrize("dof", [1, 2, 5, 16, 99, 100])
def test_chi2_survival_closed_form_equals_scipy(dof):
    from xearthformer.metrics.probabilistic import _chi2_sf

    x = np.array([0.0, 1e-3, 0.5, 1.0, 3.0, dof, 2.0 * dof, 10.0 * dof + 50.0, np.nan])
    np.testing.assert_allclose(_chi2_sf(x, dof), scipy.stats.chi2.sf(x, dof), rtol=1e-9, atol=1e-300)


def test_flatness_tells_a_reliable_ensemble_from_an_underdispersive_one():
    rng = np.random.default_rng(4)
    truth = rng.normal(size=4000)
    obs = xr.DataArray(truth, dims="x")
    good = xr.DataArray(rng.normal(size=(4000, 9)), dims=("x", "member"))
    narrow = 0.3 * good
    p_good = float(metrics.rank_histogram_flatness(metrics.rank_histogram(good, obs)).p_value)
    p_narrow = float(metrics.rank_histogram_flatness(metrics.rank_histogram(narrow, obs)).p_value)
    assert p_good > 0.01 and p_narrow < 1e-10
    with pytest.raises(DataError, match="rank"):
        metrics.rank_histogram_flatness(xr.DataArray([1, 2], dims="bin"))


# -- Brier, reliability, ROC ----------------------------------------------------------------
def test_brier_scores_against_xskillscore_threshold_brier(case):
    ens, obs, aligned = case
    thresholds = [3.0, 6.0, 8.0]
    got = metrics.brier_score(ens, obs, threshold=thresholds)
    ref = xs.threshold_brier_score(aligned, ens, thresholds, member_dim="member", dim=DIMS)
    np.testing.assert_allclose(got.transpose(*ref.dims).values, ref.values, rtol=1e-12)


def test_reliability_against_xskillscore(case):
    ens, obs, aligned = case
    edges = np.array([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
    got = metrics.reliability(ens, obs, threshold=[4.0, 6.0], bins=edges)
    assert got.observed_frequency.dims == ("lead_time", "threshold", "forecast_probability")
    for thr in (4.0, 6.0):
        prob = (ens >= thr).mean("member")
        ref = xs.reliability(aligned >= thr, prob, dim=DIMS, probability_bin_edges=edges)
        sel = got.sel(threshold=thr)
        np.testing.assert_allclose(sel.observed_frequency.values, ref.values, equal_nan=True)
        np.testing.assert_array_equal(sel["count"].values, ref.samples.values)
        # mean forecast probability per bin, by hand
        p = prob.values.ravel()
        for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
            inside = (p >= lo) & ((p <= hi) if b == len(edges) - 2 else (p < hi))
            lead = np.broadcast_to(np.arange(3)[None, :, None, None], prob.shape).ravel()
            for k in range(3):
                pk = p[inside & (lead == k)]
                expected = pk.mean() if pk.size else np.nan
                np.testing.assert_allclose(sel.mean_forecast_probability.values[k, b], expected,
                                           equal_nan=True)
    np.testing.assert_allclose(got.sharpness.sum("forecast_probability").values, 1.0)


def _mann_whitney_auc(p: np.ndarray, event: np.ndarray) -> float:
    """P(p_event > p_non-event) + 0.5 P(tie), by comparing every pair."""
    pos, neg = p[event], p[~event]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * ties) / (pos.size * neg.size)


def test_roc_against_xskillscore_and_mann_whitney(case):
    ens, obs, aligned = case
    got = metrics.roc(ens, obs, threshold=6.0)
    assert got.pod.dims == ("lead_time", "probability_threshold")
    prob = (ens >= 6.0).mean("member")
    event = aligned >= 6.0
    area = xs.roc(event, prob, bin_edges="continuous", dim=DIMS, return_results="area")
    np.testing.assert_allclose(got.auc.values, area.values, rtol=1e-12)
    fpr, tpr, _ = xs.roc(event, prob, bin_edges=np.arange(13) / 12, dim=DIMS,
                         return_results="all_as_tuple")
    np.testing.assert_allclose(got.pod.values, tpr.transpose("lead_time", ...).values, rtol=1e-12)
    np.testing.assert_allclose(got.pofd.values, fpr.transpose("lead_time", ...).values, rtol=1e-12)
    for k in range(3):
        mw = _mann_whitney_auc(prob.isel(lead_time=k).values.ravel(),
                               event.isel(lead_time=k).values.ravel())
        assert float(got.auc[k]) == pytest.approx(mw, rel=1e-12)


def test_roc_and_reliability_edge_cases():
    ens = xr.DataArray(np.array([[0.0, 9.0], [0.0, 0.0]]), dims=("x", "member"))
    no_event = metrics.roc(ens, xr.DataArray([0.0, 0.0], dims="x"), threshold=5.0)
    assert np.isnan(float(no_event.auc)) and np.isnan(no_event.pod.values).all()
    perfect = metrics.roc(ens, xr.DataArray([9.0, 0.0], dims="x"), threshold=5.0)
    assert float(perfect.auc) == 1.0  # the event gets p = 0.5, the non-event 0: no overlap
    with pytest.raises(DataError, match="increasing"):
        metrics.reliability(ens, xr.DataArray([9.0, 0.0], dims="x"), 5.0, bins=[0.5, 0.2])


# -- ensemble CSI, control dim ----------------------------------------------------------------
def test_ensemble_csi_is_csi_of_the_mean_and_of_each_member(case):
    ens, obs, _ = case
    out = metrics.ensemble_csi(ens, obs, thresholds=[5.0, 7.0], pool=4)
    of_mean = metrics.csi(ens.mean("member"), obs, thresholds=[5.0, 7.0], pool=4)
    xr.testing.assert_allclose(out.ensemble_mean, of_mean.drop_attrs().rename("ensemble_mean")
                               .assign_attrs(out.ensemble_mean.attrs))
    for m in (0, 7):
        one = metrics.csi(ens.isel(member=m), obs, thresholds=[5.0, 7.0], pool=4)
        np.testing.assert_allclose(out.per_member.isel(member=m).values, one.values)
    np.testing.assert_allclose(out.member_mean.values, out.per_member.mean("member").values)
    assert set(out.per_member.dims) == {"lead_time", "member", "threshold"}
    assert set(out.ensemble_mean.dims) == {"lead_time", "threshold"}
    with pytest.raises(DataError, match="member"):
        metrics.ensemble_csi(ens, obs, thresholds=5.0, dim=["member", "init_time"])


def test_every_score_keeps_the_control_dim(case):
    ens, obs, _ = case
    sweep = xr.concat([ens, ens + 2.0], pd.Index([0, 2], name="control"))
    fc = sweep.isel(member=0, drop=True)
    scores = {
        "crps": metrics.crps(sweep, obs),
        "spread": metrics.spread_skill(sweep, obs).ratio,
        "rank": metrics.rank_histogram(sweep, obs),
        "brier": metrics.brier_score(sweep, obs, 6.0),
        "reliability": metrics.reliability(sweep, obs, 6.0).observed_frequency,
        "roc": metrics.roc(sweep, obs, 6.0).auc,
        "csi": metrics.csi(fc, obs, thresholds=[6.0]),
        "csi_sevir": metrics.csi(fc, obs, thresholds=[60.0], protocol="sevir", scale=10.0),
        "ensemble_csi": metrics.ensemble_csi(sweep, obs, thresholds=[6.0]).ensemble_mean,
        "mse": metrics.mse(fc, obs),
        "acc": metrics.acc(fc, obs, centered=True),
        "c_nino34": metrics.c_nino34(fc.mean(["lat", "lon"]), obs.mean(["lat", "lon"])).cor,
        "pod_samples": metrics.pod(fc, obs, thresholds=[6.0], aggregate="samples"),
        "fss": metrics.fss(fc, obs, 6.0, scales=[1, 3]),
        "rapsd": metrics.rapsd(fc, dim=None),
    }
    for name, score in scores.items():
        assert "control" in score.dims, name
        assert "init_time" not in score.dims, name
    # and each control's score is that of its own forecast
    np.testing.assert_allclose(scores["crps"].sel(control=2).values,
                               metrics.crps(ens + 2.0, obs).values)
    np.testing.assert_allclose(scores["csi"].sel(control=0).values,
                               metrics.csi(ens.isel(member=0, drop=True), obs, thresholds=[6.0]).values)


def test_flatness_takes_the_dataset_rank_histogram_returns():
    rng = np.random.default_rng(5)
    obs = xr.Dataset({"vil": xr.DataArray(rng.normal(size=300), dims="x")})
    ens = xr.Dataset({"vil": xr.DataArray(rng.normal(size=(300, 5)), dims=("x", "member"))})
    hist = metrics.rank_histogram(ens, obs)
    assert isinstance(hist, xr.Dataset)
    got = metrics.rank_histogram_flatness(hist)
    ref = scipy.stats.chisquare(hist["vil"].values)
    assert float(got.chi2) == pytest.approx(ref.statistic, rel=1e-12)
    two = hist.assign(other=hist["vil"])
    with pytest.raises(DataError, match=r"exactly one.*ds\['vil'\]"):
        metrics.rank_histogram_flatness(two)
