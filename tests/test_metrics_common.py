"""Metrics plumbing: synthetic forecast/observation builders (used by the other
test_metrics_* files), observation alignment to valid_time, coordinate checks, inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import xearthformer  # noqa: F401  (registers the accessor)
from xearthformer import metrics
from xearthformer.errors import DataError, XEarthformerError


def make_grid(ny: int = 6, nx: int = 8, lat0: float = -10.0, lon0: float = 180.0, step: float = 2.5):
    lat = xr.DataArray(lat0 + step * np.arange(ny), dims="lat",
                       attrs={"standard_name": "latitude", "units": "degrees_north"})
    lon = xr.DataArray(lon0 + step * np.arange(nx), dims="lon",
                       attrs={"standard_name": "longitude", "units": "degrees_east"})
    return lat, lon


def make_observed(n_time: int = 10, ny: int = 6, nx: int = 8, seed: int = 0, freq: str = "h",
                  scale: float = 255.0, **grid) -> xr.DataArray:
    """Observations on (time, lat, lon)."""
    rng = np.random.default_rng(seed)
    lat, lon = make_grid(ny, nx, **grid)
    time = pd.date_range("2020-01-01", periods=n_time, freq=freq)
    data = rng.uniform(0, scale, (n_time, ny, nx))
    return xr.DataArray(data, dims=("time", "lat", "lon"),
                        coords={"time": time, "lat": lat, "lon": lon}, name="vil")


def make_forecast(observed: xr.DataArray, n_init: int = 4, n_lead: int = 3, noise: float = 40.0,
                  seed: int = 1, members: int | None = None, monthly: bool = False) -> xr.DataArray:
    """A forecast of ``observed`` laid out like FORECAST's output: (init_time, lead_time,
    [member,] lat, lon) with a 2-D valid_time; values = truth + noise."""
    rng = np.random.default_rng(seed)
    times = observed.time.values
    inits = times[:n_init]
    if monthly:
        lead = xr.DataArray(np.arange(1, n_lead + 1), dims="lead_time", attrs={"units": "months"})
        valid = np.array([[times[i + l] for l in range(1, n_lead + 1)] for i in range(n_init)])
    else:
        step = times[1] - times[0]
        lead = xr.DataArray(step * np.arange(1, n_lead + 1), dims="lead_time")
        valid = inits[:, None] + lead.values[None, :]
    truth = observed.sel(time=xr.DataArray(valid, dims=("init_time", "lead_time"))) \
        if not monthly else observed.isel(
            time=xr.DataArray(np.arange(n_init)[:, None] + np.arange(1, n_lead + 1)[None, :],
                              dims=("init_time", "lead_time")))
    truth = truth.drop_vars("time").values
    shape = truth.shape if members is None else truth.shape[:2] + (members,) + truth.shape[2:]
    if members is not None:
        truth = truth[:, :, None]
    data = truth + rng.normal(0, noise, shape)
    dims = ("init_time", "lead_time") + (() if members is None else ("member",)) + ("lat", "lon")
    coords = {"init_time": inits, "lead_time": lead, "lat": observed.lat, "lon": observed.lon,
              "valid_time": (("init_time", "lead_time"), valid)}
    if members is not None:
        coords["member"] = np.arange(members)
    return xr.DataArray(data, dims=dims, coords=coords, name=observed.name)


def observed_on_forecast(forecast: xr.DataArray, observed: xr.DataArray) -> np.ndarray:
    """Brute-force alignment: observation at each (init, lead) via a Python loop."""
    out = np.empty((forecast.sizes["init_time"], forecast.sizes["lead_time"])
                   + observed.shape[1:])
    for i in range(forecast.sizes["init_time"]):
        for j in range(forecast.sizes["lead_time"]):
            out[i, j] = observed.sel(time=forecast.valid_time.values[i, j]).values
    return out


# ------------------------------------------------------------------------------------------


def test_observations_on_time_are_aligned_to_valid_time():
    obs = make_observed()
    fc = make_forecast(obs)
    expected = np.mean((fc.values - observed_on_forecast(fc, obs)) ** 2, axis=(0, 2, 3))
    got = metrics.mse(fc, obs)
    assert got.dims == ("lead_time",)
    np.testing.assert_allclose(got.values, expected)


def test_monthly_forecasts_match_observations_by_calendar_month():
    obs = make_observed(n_time=12, freq="MS")
    # observations stamped mid-month, forecasts at month start
    obs_mid = obs.assign_coords(time=obs.time + np.timedelta64(15, "D"))
    fc = make_forecast(obs, monthly=True)
    np.testing.assert_allclose(metrics.mse(fc, obs_mid).values, metrics.mse(fc, obs).values)


def test_valid_times_without_observation_are_skipped():
    obs = make_observed()
    fc = make_forecast(obs)
    short = obs.isel(time=slice(0, 4))  # last valid times have no observation
    got = metrics.mae(fc, short, dim=[])
    assert got.isnull().sum() > 0 and got.notnull().sum() > 0
    expected = np.abs(fc - observed_on_forecast(fc, obs))
    mask = got.notnull()
    np.testing.assert_allclose(got.values[mask.values], expected.values[mask.values])


def test_no_overlapping_time_is_a_data_error():
    obs = make_observed()
    fc = make_forecast(obs)
    later = obs.assign_coords(time=obs.time + np.timedelta64(3650, "D"))
    with pytest.raises(DataError, match="valid times"):
        metrics.mse(fc, later)


def test_mismatched_spatial_coords_are_a_data_error():
    obs = make_observed()
    fc = make_forecast(obs)
    shifted = obs.assign_coords(lat=obs.lat + 1.0)
    with pytest.raises(DataError, match="lat"):
        metrics.csi(fc, shifted, thresholds=[100])
    with pytest.raises(DataError):
        metrics.mse(fc, obs.isel(lon=slice(0, 5)))
    # also catchable as the package base class and the builtin
    with pytest.raises(XEarthformerError):
        metrics.mse(fc, shifted)
    with pytest.raises(ValueError):
        metrics.mse(fc, shifted)


def test_longitude_convention_of_observations_is_mended():
    obs = make_observed(lon0=170.0)  # 170..187.5: crosses the dateline
    fc = make_forecast(obs)
    obs_pm = obs.assign_coords(lon=((obs.lon + 180) % 360) - 180).sortby("lon")
    np.testing.assert_allclose(metrics.mse(fc, obs_pm).values, metrics.mse(fc, obs).values)


def test_numpy_and_torch_inputs():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    expected = np.mean((a - b) ** 2)
    assert float(metrics.mse(a, b)) == pytest.approx(expected)
    assert float(metrics.mse(torch.from_numpy(a), torch.from_numpy(b))) == pytest.approx(expected)
    # numpy observation against a labelled forecast takes the forecast's labels
    fc = xr.DataArray(a, dims=("init_time", "lead_time"))
    assert metrics.mse(fc, b).dims == ("lead_time",)


def test_unknown_reduction_dim_is_a_data_error():
    obs = make_observed()
    with pytest.raises(DataError, match="not dims"):
        metrics.mse(make_forecast(obs), obs, dim="nonsense")


def test_datasets_are_scored_per_variable():
    obs = make_observed()
    fc = make_forecast(obs)
    ds_fc = xr.Dataset({"a": fc, "b": 2 * fc})
    ds_obs = xr.Dataset({"a": obs, "b": 2 * obs})
    got = metrics.mse(ds_fc, ds_obs)
    np.testing.assert_allclose(got["b"].values, 4 * got["a"].values)
    with pytest.raises(DataError, match="exactly one"):
        metrics.csi(ds_fc, ds_obs, thresholds=[100])
