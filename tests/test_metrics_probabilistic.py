"""Ensemble scores: CRPS against the Gaussian closed form, the integral definition and
xskillscore; Brier score, rank histogram and spread-skill against references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr
import xskillscore as xs

import xearthformer  # noqa: F401
from xearthformer import metrics
from xearthformer.errors import DataError

from tests.test_metrics_common import make_forecast, make_observed, observed_on_forecast


def crps_integral(members: np.ndarray, y: float) -> float:
    """CRPS = integral of (F_ens(x) - H(x - y))^2 dx, exactly, piecewise over the sorted
    members and the observation (the integrand is constant between breakpoints)."""
    points = np.sort(np.append(members, y))
    total = 0.0
    for a, b in zip(points[:-1], points[1:]):
        mid = 0.5 * (a + b)
        cdf = np.mean(members <= mid)
        total += (cdf - float(mid >= y)) ** 2 * (b - a)
    return total


def crps_pairs(members: np.ndarray, y: float, fair: bool) -> float:
    m = len(members)
    pair = sum(abs(a - b) for a in members for b in members)
    return np.mean(np.abs(members - y)) - pair / (2 * m * (m - 1) if fair else 2 * m * m)


def test_crps_equals_integral_definition_on_small_ensembles():
    rng = np.random.default_rng(0)
    ens = rng.normal(size=(7, 5))
    obs = rng.normal(size=7)
    ens[3, :] = [0.0, 1.0, 1.0, 2.0, 0.5]  # ties among members
    obs[3] = 1.0  # observation equal to members
    got = metrics.crps(xr.DataArray(ens, dims=("x", "member")), xr.DataArray(obs, dims="x"), dim=[])
    np.testing.assert_allclose(got.values, [crps_integral(e, y) for e, y in zip(ens, obs)])
    fair = metrics.crps(xr.DataArray(ens, dims=("x", "member")), xr.DataArray(obs, dims="x"),
                        dim=[], fair=True)
    np.testing.assert_allclose(fair.values, [crps_pairs(e, y, True) for e, y in zip(ens, obs)])


def test_fair_crps_approaches_gaussian_closed_form():
    mu, sigma, y = 0.3, 1.7, 1.1
    z = (y - mu) / sigma
    pdf = math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + math.erf(z / math.sqrt(2)))
    closed = sigma * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))
    rng = np.random.default_rng(1)
    # many independent 10-member ensembles: the fair estimator is unbiased
    ens = xr.DataArray(rng.normal(mu, sigma, (4000, 10)), dims=("x", "member"))
    obs = xr.DataArray(np.full(4000, y), dims="x")
    fair = float(metrics.crps(ens, obs, fair=True))
    plain = float(metrics.crps(ens, obs))
    assert fair == pytest.approx(closed, abs=0.015)
    # the plain estimator overestimates by sigma / (sqrt(pi) M) on average
    assert plain - fair == pytest.approx(sigma / math.sqrt(math.pi) / 10, rel=0.05)


def test_crps_against_xskillscore_with_forecast_layout():
    obs = make_observed(n_time=8, ny=4, nx=5, scale=10.0)
    ens = make_forecast(obs, n_init=4, n_lead=3, noise=2.0, members=6)
    o = ens.isel(member=0, drop=True).copy(data=observed_on_forecast(ens, obs))
    dims = ["init_time", "lat", "lon"]
    ref = xs.crps_ensemble(o, ens, dim=dims)
    got = ens.earthformer.crps(obs)  # accessor, observations on time
    assert got.dims == ("lead_time",)
    np.testing.assert_allclose(got.values, ref.values)
    w = np.cos(np.deg2rad(o.lat)).broadcast_like(o.isel(lead_time=0, drop=True))
    np.testing.assert_allclose(metrics.crps(ens, obs, weights="coslat").values,
                               xs.crps_ensemble(o, ens, dim=dims, weights=w).values)


def test_crps_skips_points_with_missing_values():
    ens = xr.DataArray(np.array([[0.0, 1.0], [np.nan, 1.0], [2.0, 2.0]]), dims=("x", "member"))
    obs = xr.DataArray([0.0, 1.0, np.nan], dims="x")
    assert float(metrics.crps(ens, obs)) == pytest.approx(crps_integral(np.array([0.0, 1.0]), 0.0))


def test_brier_score_against_xskillscore():
    obs = make_observed(n_time=8, ny=4, nx=5, scale=10.0)
    ens = make_forecast(obs, n_init=4, n_lead=3, noise=3.0, members=8)
    o = ens.isel(member=0, drop=True).copy(data=observed_on_forecast(ens, obs))
    got = metrics.brier_score(ens, obs, threshold=[4.0, 6.0])
    assert set(got.dims) == {"lead_time", "threshold"}
    dims = ["init_time", "lat", "lon"]
    for thr in (4.0, 6.0):
        ref = xs.brier_score(o >= thr, (ens >= thr).mean("member"), dim=dims)
        np.testing.assert_allclose(got.sel(threshold=thr).values, ref.values)
        ref_fair = xs.brier_score(o >= thr, ens >= thr, member_dim="member", fair=True, dim=dims)
        np.testing.assert_allclose(
            metrics.brier_score(ens, obs, thr, fair=True).values, ref_fair.values)


def test_rank_histogram_against_brute_force_and_xskillscore():
    rng = np.random.default_rng(4)
    ens = xr.DataArray(rng.normal(size=(200, 3, 5)), dims=("x", "lead_time", "member"))
    obs = xr.DataArray(rng.normal(size=(200, 3)), dims=("x", "lead_time"))
    got = metrics.rank_histogram(ens, obs)
    assert got.dims == ("lead_time", "rank") or set(got.dims) == {"lead_time", "rank"}
    ranks = (ens.values < obs.values[..., None]).sum(-1)  # continuous data: no ties
    for lead in range(3):
        np.testing.assert_array_equal(
            got.isel(lead_time=lead).values, np.bincount(ranks[:, lead], minlength=6))
    ref = xs.rank_histogram(obs, ens, dim="x")
    np.testing.assert_array_equal(got.transpose(*ref.dims).values, ref.values)


def test_spread_skill_against_numpy():
    rng = np.random.default_rng(6)
    m = 8
    truth = rng.normal(size=(3000,))
    # a statistically consistent ensemble: truth and members from the same distribution
    centre = rng.normal(size=(3000,))
    ens = xr.DataArray(centre[:, None] + rng.normal(size=(3000, m)), dims=("x", "member"))
    obs = xr.DataArray(centre + truth, dims="x")
    got = metrics.spread_skill(ens, obs)
    spread = np.sqrt(np.mean(ens.values.var(axis=1, ddof=1)))
    rmse = np.sqrt(np.mean((ens.values.mean(1) - obs.values) ** 2))
    assert float(got.spread) == pytest.approx(spread)
    assert float(got.rmse) == pytest.approx(rmse)
    assert float(got.ratio) == pytest.approx(np.sqrt((m + 1) / m) * spread / rmse)
    assert float(got.ratio) == pytest.approx(1.0, abs=0.05)


def test_ensemble_input_errors():
    ens = xr.DataArray(np.zeros((3, 4)), dims=("x", "member"))
    with pytest.raises(DataError, match="member"):
        metrics.crps(ens.rename(member="m"), xr.DataArray(np.zeros(3), dims="x"))
    with pytest.raises(DataError, match="at least 2"):
        metrics.crps(ens.isel(member=[0]), xr.DataArray(np.zeros(3), dims="x"))
