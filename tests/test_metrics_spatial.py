"""Spatial verification: FSS against explicit window sums (and its closed cases), RAPSD against
an explicit radial binning loop, white noise (flat) and a plane wave (one ring)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xearthformer  # noqa: F401
from xearthformer import metrics
from xearthformer.errors import DataError

from tests.test_metrics_common import make_forecast, make_observed


def fractions_brute(binary: np.ndarray, n: int) -> np.ndarray:
    """Fraction of events in the n x n window of each point of a 2-D field, zero outside the
    domain; the window spans offsets -(n // 2) .. (n - 1) // 2 (scipy's uniform_filter)."""
    ny, nx = binary.shape
    out = np.zeros((ny, nx))
    for i in range(ny):
        for j in range(nx):
            total = 0.0
            for di in range(-(n // 2), (n - 1) // 2 + 1):
                for dj in range(-(n // 2), (n - 1) // 2 + 1):
                    if 0 <= i + di < ny and 0 <= j + dj < nx:
                        total += binary[i + di, j + dj]
            out[i, j] = total / (n * n)
    return out


def fss_brute(fc: np.ndarray, obs: np.ndarray, thr: float, n: int) -> float:
    """FSS over a stack of 2-D frames (first axis), Roberts & Lean's sums."""
    num = den = 0.0
    for f, o in zip(fc, obs):
        pf = fractions_brute((f >= thr).astype(float), n)
        po = fractions_brute((o >= thr).astype(float), n)
        num += ((pf - po) ** 2).sum()
        den += (pf**2).sum() + (po**2).sum()
    return 1.0 - num / den


def test_fss_equals_explicit_window_sums():
    obs = make_observed(n_time=6, ny=9, nx=11, scale=10.0)
    fc = make_forecast(obs, n_init=3, n_lead=2, noise=3.0)
    got = metrics.fss(fc, obs, thresholds=[5.0, 8.0], scales=[1, 2, 3, 4, 7])
    assert set(got.dims) == {"lead_time", "threshold", "scale"}
    assert got.attrs["units"] == "1" and got.name == "fss"
    for k in range(2):
        f = fc.isel(lead_time=k).values
        o = np.stack([obs.sel(time=t).values for t in fc.valid_time.values[:, k]])
        for thr in (5.0, 8.0):
            for n in (1, 2, 3, 4, 7):
                ref = fss_brute(f, o, thr, n)
                assert float(got.isel(lead_time=k).sel(threshold=thr, scale=n)) == \
                    pytest.approx(ref, rel=1e-12)


def test_fss_of_a_perfect_forecast_is_one_and_grows_with_scale():
    obs = make_observed(n_time=6, ny=12, nx=12, scale=10.0)
    fc = make_forecast(obs, n_init=3, n_lead=2, noise=0.0)
    perfect = metrics.fss(fc, obs, thresholds=[2.0, 9.0], scales=[1, 3, 5, 12])
    np.testing.assert_allclose(perfect.values, 1.0, rtol=0, atol=1e-14)
    shifted = metrics.fss(fc.roll(lon=3), obs, thresholds=5.0, scales=[1, 3, 5, 9, 25])
    assert (shifted.diff("scale") > 0).all()
    # a displaced but otherwise perfect field scores 1 once the window covers the whole domain
    stripe = xr.DataArray(np.zeros((8, 8)), dims=("y", "x"))
    stripe[:, 2] = 1.0
    big = metrics.fss(stripe.roll(x=3), stripe, 0.5, scales=[1, 15])
    assert float(big.sel(scale=1)) == 0.0 and float(big.sel(scale=15)) == pytest.approx(1.0)


def test_fss_handles_missing_points_and_no_events():
    obs = xr.DataArray(np.ones((4, 4)), dims=("y", "x"))
    fc = obs.copy()
    fc[0, 0] = np.nan
    # the missing point is a non-event in both fields: still a perfect score
    assert float(metrics.fss(fc, obs, 0.5, 3)) == pytest.approx(1.0)
    assert np.isnan(float(metrics.fss(obs * 0, obs * 0, 0.5, 3)))
    with pytest.raises(DataError, match="positive integers"):
        metrics.fss(obs, obs, 0.5, scales=[0, 3])
    with pytest.raises(DataError, match="positive integers"):
        metrics.fss(obs, obs, 0.5, scales=2.5)


def rapsd_brute(frame: np.ndarray) -> np.ndarray:
    """Ring averages of |FFT|^2 / N with an explicit loop over every coefficient; the radial
    wavenumber is measured in cycles per L = max(ny, nx) along both axes."""
    ny, nx = frame.shape
    length = max(ny, nx)
    power = np.abs(np.fft.fft2(frame)) ** 2 / frame.size
    n_rings = length // 2 + 1 if length % 2 else length // 2
    sums, counts = np.zeros(n_rings), np.zeros(n_rings)
    for i in range(ny):
        ky = (i if i < (ny + 1) // 2 else i - ny) * length / ny
        for j in range(nx):
            kx = (j if j < (nx + 1) // 2 else j - nx) * length / nx
            ring = int(np.rint(np.sqrt(ky * ky + kx * kx)))
            if ring < n_rings:
                sums[ring] += power[i, j]
                counts[ring] += 1
    return sums / counts


@pytest.mark.parametrize("shape", [(16, 16), (15, 15), (12, 20), (21, 10)])
def test_rapsd_equals_explicit_radial_binning(shape):
    rng = np.random.default_rng(5)
    frames = rng.normal(size=(3,) + shape).cumsum(-1)  # red along x: a sloping spectrum
    da = xr.DataArray(frames, dims=("lead_time", "y", "x"))
    got = metrics.rapsd(da)
    assert got.dims == ("lead_time", "wavenumber")
    for k in range(3):
        np.testing.assert_allclose(got.values[k], rapsd_brute(frames[k]), rtol=1e-12)
    length = max(shape)
    np.testing.assert_allclose(got.frequency.values, np.arange(got.sizes["wavenumber"]) / length)
    normalised = metrics.rapsd(da, normalize=True)
    np.testing.assert_allclose(normalised.sum("wavenumber").values, 1.0)


def test_rapsd_of_white_noise_is_flat_at_its_variance():
    rng = np.random.default_rng(6)
    sigma = 2.0
    noise = xr.DataArray(rng.normal(0, sigma, (200, 32, 32)), dims=("time", "y", "x"))
    psd = metrics.rapsd(noise, dim="time")
    assert psd.sizes["wavenumber"] == 16
    rings = psd.isel(wavenumber=slice(1, None))
    np.testing.assert_allclose(rings.values, sigma**2, rtol=0.12)
    slope = np.polyfit(np.log(rings.frequency.values), np.log(rings.values), 1)[0]
    assert abs(slope) < 0.05
    # a red (integrated) field is not flat: the check can fail
    red = metrics.rapsd(noise.cumsum("x").cumsum("y"), dim="time").isel(wavenumber=slice(1, None))
    assert np.polyfit(np.log(red.frequency.values), np.log(red.values), 1)[0] < -2


def test_rapsd_of_a_plane_wave_sits_in_one_ring_and_pairs_with_observations():
    n = 24
    y, x = np.mgrid[0:n, 0:n]
    wave = np.cos(2 * np.pi * (3 * x + 4 * y) / n)   # radial wavenumber 5
    psd = metrics.rapsd(xr.DataArray(wave, dims=("y", "x")))
    assert int(psd.argmax("wavenumber")) == 5
    assert float(psd.sel(wavenumber=5)) / float(psd.sum()) > 0.999
    obs = make_observed(n_time=5, ny=8, nx=8)
    fc = make_forecast(obs, n_init=2, n_lead=2)
    both = metrics.rapsd(fc, obs, dim=["init_time"])
    assert set(both.data_vars) == {"forecast", "observed"}
    assert both.forecast.dims == ("lead_time", "wavenumber")
    ref = metrics.rapsd(obs.sel(time=fc.valid_time.values[:, 1]).rename(time="init_time"),
                        dim=["init_time"])
    np.testing.assert_allclose(both.observed.isel(lead_time=1).values, ref.values)
    with pytest.raises(DataError, match="2 x 2"):
        metrics.rapsd(xr.DataArray(np.zeros((1, 5)), dims=("y", "x")))
