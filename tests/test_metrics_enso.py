"""Nino3.4 index and C-Nino3.4 skill: brute force, numpy corrcoef, the paper's formula,
the official ICAR-ENSO protocol, and real SST (OSTIA sample) against NOAA's ONI."""

from __future__ import annotations

import csv
import os

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xearthformer  # noqa: F401
from xearthformer import metrics
from xearthformer.errors import DataError

HERE = os.path.dirname(os.path.abspath(__file__))


def synthetic_sst(n_months: int = 48, lat=None, lon=None, seed: int = 0) -> xr.DataArray:
    """Monthly SST: a seasonal cycle per point + an ENSO-like signal + noise (degC)."""
    rng = np.random.default_rng(seed)
    lat = np.arange(-20.0, 20.1, 2.5) if lat is None else np.asarray(lat, float)
    lon = np.arange(150.0, 290.1, 2.5) if lon is None else np.asarray(lon, float)
    time = pd.date_range("2000-01-01", periods=n_months, freq="MS")
    season = 2.0 * np.cos(2 * np.pi * (np.arange(12)[:, None, None] - 3) / 12) \
        * np.cos(np.deg2rad(lat))[None, :, None] + 0.01 * lon[None, None, :]
    enso = np.sin(2 * np.pi * np.arange(n_months) / 41.0) * 1.5
    data = 27.0 + season[np.arange(n_months) % 12] + enso[:, None, None] \
        * np.exp(-(lat[None, :, None] / 8.0) ** 2) + rng.normal(0, 0.3, (n_months, lat.size, lon.size))
    return xr.DataArray(
        data, dims=("time", "lat", "lon"), name="sst",
        coords={"time": time, "lat": ("lat", lat, {"standard_name": "latitude"}),
                "lon": ("lon", lon, {"standard_name": "longitude"})},
        attrs={"standard_name": "sea_surface_temperature", "units": "degC"})


def brute_index(sst: np.ndarray, months: np.ndarray, lat: np.ndarray, lon: np.ndarray,
                clim_from: np.ndarray | None = None, clim_months: np.ndarray | None = None):
    """Per-point monthly climatology, anomalies, cos-lat box mean, all with loops."""
    lon360 = lon % 360
    ii = [i for i, v in enumerate(lat) if -5 - 1e-9 <= v <= 5 + 1e-9]
    jj = [j for j, v in enumerate(lon360) if 190 - 1e-9 <= v <= 240 + 1e-9]
    base, base_m = (sst, months) if clim_from is None else (clim_from, clim_months)
    out = []
    for t in range(sst.shape[0]):
        num = den = 0.0
        for i in ii:
            for j in jj:
                clim = np.mean([base[k, i, j] for k in range(base.shape[0]) if base_m[k] == months[t]])
                w = np.cos(np.deg2rad(lat[i]))
                num += w * (sst[t, i, j] - clim)
                den += w
        out.append(num / den)
    return np.array(out)


def running(x: np.ndarray, centred: bool) -> np.ndarray:
    out = np.full(x.shape, np.nan)
    for k in range(len(x)):
        lo = k - 1 if centred else k
        if lo >= 0 and lo + 3 <= len(x):
            out[k] = np.mean(x[lo:lo + 3])
    return out


def test_index_against_brute_force_both_windows():
    sst = synthetic_sst()
    raw = brute_index(sst.values, sst.time.dt.month.values, sst.lat.values, sst.lon.values)
    for window, centred in (("centred", True), ("forward", False)):
        got = metrics.nino34_index(sst, window=window)
        np.testing.assert_allclose(got.values, running(raw, centred), equal_nan=True, atol=1e-12)
    np.testing.assert_allclose(metrics.nino34_index(sst, window=None).values, raw, atol=1e-12)


def test_base_period_and_given_climatology():
    sst = synthetic_sst()
    base = sst.sel(time=slice("2001", "2002"))
    raw = brute_index(sst.values, sst.time.dt.month.values, sst.lat.values, sst.lon.values,
                      base.values, base.time.dt.month.values)
    got = metrics.nino34_index(sst, base_period=("2001", "2002"), window=None)
    np.testing.assert_allclose(got.values, raw, atol=1e-12)
    clim = metrics.monthly_climatology(sst, base_period=("2001", "2002"))
    np.testing.assert_allclose(metrics.nino34_index(sst, climatology=clim, window=None).values,
                               raw, atol=1e-12)


def test_index_independent_of_lon_convention_and_lat_order():
    sst = synthetic_sst(lon=np.arange(0, 360, 2.5))
    ref = metrics.nino34_index(sst)
    flipped = sst.assign_coords(lon=((sst.lon + 180) % 360) - 180).sortby("lon") \
        .isel(lat=slice(None, None, -1))
    np.testing.assert_allclose(metrics.nino34_index(flipped).values, ref.values, atol=1e-12)


def test_grid_not_covering_the_box_is_a_data_error():
    sst = synthetic_sst(lat=np.arange(-20.0, 3.1, 1.0))  # ends at 3N: 2 spacings short of 5N
    with pytest.raises(DataError, match="does not cover the Nino3.4 box"):
        metrics.nino34_index(sst)
    west = synthetic_sst(lon=np.arange(100.0, 200.1, 2.5))
    with pytest.raises(DataError, match="does not cover"):
        metrics.nino34_index(west)
    # ends one spacing short of 5N: accepted (like the OSTIA sample)
    assert metrics.nino34_index(synthetic_sst(lat=np.arange(-20.0, 4.1, 1.0))).notnull().any()


def forecast_sst(obs: xr.DataArray, n_lead: int = 14, noise: float = 0.3, seed: int = 2):
    """Forecast SST (init_time, lead_time, lat, lon): the truth at valid time + noise."""
    rng = np.random.default_rng(seed)
    n_init = obs.sizes["time"] - n_lead
    idx = np.arange(n_init)[:, None] + np.arange(1, n_lead + 1)[None, :]
    truth = obs.values[idx]
    return xr.DataArray(
        truth + rng.normal(0, noise, truth.shape),
        dims=("init_time", "lead_time", "lat", "lon"), name="sst",
        coords={"init_time": obs.time.values[:n_init],
                "lead_time": ("lead_time", np.arange(1, n_lead + 1), {"units": "months"}),
                "valid_time": (("init_time", "lead_time"), obs.time.values[idx]),
                "lat": obs.lat, "lon": obs.lon},
        attrs=obs.attrs)


def test_forecast_index_smooths_along_lead_and_drops_unfilled_leads():
    obs = synthetic_sst(n_months=40)
    fc = forecast_sst(obs)
    clim = metrics.monthly_climatology(obs)
    fwd = metrics.nino34_index(fc, climatology=clim, window="forward")
    assert fwd.sizes["lead_time"] == 12 and fwd.lead_time.values.tolist() == list(range(1, 13))
    cen = metrics.nino34_index(fc, climatology=clim, window="centred")
    assert cen.lead_time.values.tolist() == list(range(2, 14))
    # brute force for one init: box anomalies per lead, then the forward mean along lead
    months = pd.DatetimeIndex(fc.valid_time.values[3]).month.values
    raw = brute_index(fc.values[3], months, fc.lat.values, fc.lon.values,
                      obs.values, obs.time.dt.month.values)
    np.testing.assert_allclose(fwd.isel(init_time=3).values, running(raw, False)[:12], atol=1e-12)


def test_c_nino34_against_corrcoef_and_weights_formula():
    rng = np.random.default_rng(5)
    obs = rng.normal(size=(30, 12))
    fc = obs + rng.normal(0, 0.8, obs.shape)
    fc_da = xr.DataArray(fc, dims=("init_time", "lead_time"), coords={"lead_time": np.arange(1, 13)})
    obs_da = fc_da.copy(data=obs)
    got = metrics.c_nino34(fc_da, obs_da)
    cor = np.array([np.corrcoef(fc[:, l], obs[:, l])[0, 1] for l in range(12)])
    np.testing.assert_allclose(got.cor.values, cor)
    assert float(got.c_nino34_m) == pytest.approx(cor.mean())
    a = np.array([1.5] * 4 + [2] * 7 + [3])
    assert float(got.c_nino34_wm) == pytest.approx(np.sum(a * np.log(np.arange(1, 13)) * cor) / 12)
    np.testing.assert_allclose(metrics.nino34_weights(12).values, a * np.log(np.arange(1, 13)))
    perfect = metrics.c_nino34(obs_da, obs_da)
    assert float(perfect.c_nino34_wm) == pytest.approx(3.4059, abs=5e-5)
    assert float(perfect.c_nino34_m) == pytest.approx(1.0)
    np.testing.assert_allclose(got.rmse.values, np.sqrt(np.mean((fc - obs) ** 2, axis=0)))
    # official protocol: + 1e-6 in the denominator
    off = metrics.c_nino34(fc_da, obs_da, protocol="icar-enso")
    fa, oa = fc - fc.mean(0), obs - obs.mean(0)
    ref = (fa * oa).sum(0) / (np.sqrt((fa**2).sum(0) * (oa**2).sum(0)) + 1e-6)
    np.testing.assert_allclose(off.cor.values, ref)


def test_icar_enso_protocol_matches_official_recipe():
    rng = np.random.default_rng(9)
    lat = np.arange(-55.0, 61.0, 5.0)
    lon = np.arange(95.0, 331.0, 5.0)
    assert (lat.size, lon.size) == (24, 48)
    anom = rng.normal(size=(6, 14, 24, 48))  # (N, 14 output months, lat, lon) anomalies
    fc = xr.DataArray(anom, dims=("init_time", "lead_time", "lat", "lon"),
                      coords={"lat": lat, "lon": lon, "lead_time": np.arange(1, 15)})
    got = metrics.nino34_index(fc, protocol="icar-enso")
    box = anom[:, :, 10:13, 19:30].mean(axis=(2, 3))  # official: unweighted, 33 points
    ref = np.stack([box[:, k:k + 3].mean(1) for k in range(12)], 1)  # forward window
    np.testing.assert_allclose(got.values, ref)
    # the uncropped 72-longitude file gives the same box
    full_lon = np.arange(0.0, 360.0, 5.0)
    wide = np.zeros((6, 14, 24, 72))
    wide[..., 19:67] = anom
    fc72 = xr.DataArray(wide, dims=fc.dims, coords={"lat": lat, "lon": full_lon,
                                                    "lead_time": np.arange(1, 15)})
    np.testing.assert_allclose(metrics.nino34_index(fc72, protocol="icar-enso").values, ref)
    with pytest.raises(DataError, match="24 x 48"):
        metrics.nino34_index(fc.isel(lat=slice(0, 20)), protocol="icar-enso")


def test_nino34_skill_and_accessor_on_synthetic_forecast():
    obs = synthetic_sst(n_months=60)
    ds = obs.to_dataset()
    fc = forecast_sst(obs, n_lead=14).to_dataset()
    skill = fc.earthformer.nino34_skill(ds, window="forward")
    assert skill.cor.sizes["lead_time"] == 12
    # same numbers from the two indices by hand
    clim = metrics.monthly_climatology(obs)
    fi = metrics.nino34_index(fc, climatology=clim, window="forward")
    oi = metrics.nino34_index(obs, climatology=clim, window="forward")
    oi_on_fc = np.array([[oi.sel(time=t).item() for t in row] for row in fi.valid_time.values])
    ok = ~np.isnan(oi_on_fc).any(1)
    cor = [np.corrcoef(fi.values[ok, l], oi_on_fc[ok, l])[0, 1] for l in range(12)]
    np.testing.assert_allclose(skill.cor.values, cor)
    assert 0.5 < float(skill.c_nino34_m) <= 1.0
    np.testing.assert_allclose(ds.earthformer.nino34().values, metrics.nino34_index(obs).values)


def read_oni() -> xr.DataArray:
    rows = [r for r in csv.reader(open(os.path.join(HERE, "data", "oni_ersstv5_2006_2010.csv")))
            if r and not r[0].startswith("#")]
    values, times = [], []
    for r in rows[1:]:
        for m, v in enumerate(r[1:], start=1):
            times.append(pd.Timestamp(int(r[0]), m, 1))
            values.append(float(v))
    return xr.DataArray(values, dims="time", coords={"time": times})


def test_ostia_sample_tracks_published_oni():
    """Real SST: the OSTIA monthly sample (2006-04..2010-09) against NOAA CPC's ONI."""
    import iris_sample_data

    path = os.path.join(os.path.dirname(iris_sample_data.__file__), "sample_data",
                        "ostia_monthly.nc")
    with xr.open_dataset(path) as ds:
        index = ds.earthformer.nino34()  # centred 3-month mean, like the ONI
        index = index.assign_coords(time=index.time.dt.floor("D").values.astype("datetime64[M]"))
    oni = read_oni()
    index, oni = xr.align(index.dropna("time"), oni, join="inner")
    assert index.sizes["time"] == 52
    r = np.corrcoef(index.values, oni.values)[0, 1]
    assert r >= 0.98, r
    # with the ONI put on the same base period (the sample's own months) it is closer still
    oni_same_base = oni.groupby("time.month") - oni.groupby("time.month").mean()
    r_same = np.corrcoef(index.values, oni_same_base.values)[0, 1]
    assert r_same >= 0.99, r_same
    assert float(np.abs(index - oni_same_base).max()) < 0.35
