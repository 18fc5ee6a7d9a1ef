"""Continuous scores against numpy and xskillscore."""

from __future__ import annotations

import numpy as np
import pytest
import xskillscore as xs

from xearthformer import metrics
from xearthformer.errors import DataError

from tests.test_metrics_common import make_forecast, make_observed, observed_on_forecast


@pytest.fixture(scope="module")
def pair():
    obs = make_observed(n_time=8, ny=5, nx=6, scale=10.0)
    obs[:, 0, 0] = np.nan  # a land point: skipped everywhere
    fc = make_forecast(obs, n_init=4, n_lead=3, noise=2.0)
    fc[0, 1, 2, 2] = np.nan
    return fc, obs


def test_mse_mae_rmse_bias_against_numpy(pair):
    fc, obs = pair
    f = fc.values
    o = observed_on_forecast(fc, obs)
    err = f - o
    axes = (0, 2, 3)
    np.testing.assert_allclose(metrics.mse(fc, obs).values, np.nanmean(err**2, axis=axes))
    np.testing.assert_allclose(metrics.mae(fc, obs).values, np.nanmean(np.abs(err), axis=axes))
    np.testing.assert_allclose(metrics.rmse(fc, obs).values,
                               np.sqrt(np.nanmean(err**2, axis=axes)))
    np.testing.assert_allclose(metrics.mean_bias(fc, obs).values, np.nanmean(err, axis=axes))
    assert metrics.mse(fc, obs).name == "mse"


def test_coslat_weights_against_numpy_average(pair):
    fc, obs = pair
    err = fc.values - observed_on_forecast(fc, obs)
    w = np.broadcast_to(np.cos(np.deg2rad(fc.lat.values))[None, None, :, None], err.shape)
    ok = ~np.isnan(err)
    expected = [np.average(err[:, j][ok[:, j]] ** 2, weights=w[:, j][ok[:, j]])
                for j in range(err.shape[1])]
    np.testing.assert_allclose(metrics.mse(fc, obs, weights="coslat").values, expected)
    ref = xs.mse(fc, fc.copy(data=observed_on_forecast(fc, obs)), dim=["init_time", "lat", "lon"],
                 weights=fc.lat.pipe(np.deg2rad).pipe(np.cos).broadcast_like(fc.isel(lead_time=0, drop=True)), skipna=True)
    np.testing.assert_allclose(metrics.mse(fc, obs, weights="coslat").values, ref.values)


def test_acc_centred_is_xskillscore_pearson(pair):
    fc, obs = pair
    o = fc.copy(data=observed_on_forecast(fc, obs))
    dims = ["init_time", "lat", "lon"]
    ref = xs.pearson_r(fc, o, dim=dims, skipna=True)
    np.testing.assert_allclose(metrics.acc(fc, obs, centered=True).values, ref.values)
    w = fc.lat.pipe(np.deg2rad).pipe(np.cos).broadcast_like(fc.isel(lead_time=0, drop=True))
    refw = xs.pearson_r(fc, o, dim=dims, weights=w, skipna=True)
    np.testing.assert_allclose(metrics.acc(fc, obs, weights="coslat", centered=True).values,
                               refw.values, rtol=1e-6)


def test_acc_uncentred_with_climatology_against_formula(pair):
    fc, obs = pair
    clim = 5.0
    f = fc.values - clim
    o = observed_on_forecast(fc, obs) - clim
    ok = ~(np.isnan(f) | np.isnan(o))
    f, o = np.where(ok, f, 0), np.where(ok, o, 0)
    axes = (0, 2, 3)
    expected = (f * o).sum(axes) / np.sqrt((f**2).sum(axes) * (o**2).sum(axes))
    np.testing.assert_allclose(metrics.acc(fc, obs, climatology=clim).values, expected)


def test_bad_weights_are_data_errors(pair):
    fc, obs = pair
    with pytest.raises(DataError, match="weights"):
        metrics.mse(fc, obs, weights="nonsense")
    with pytest.raises(DataError, match="latitude"):
        metrics.mse(np.ones((3, 3)), np.zeros((3, 3)), weights="coslat")
