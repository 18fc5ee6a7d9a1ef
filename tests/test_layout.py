"""Tests of xearthformer.layout: axes, time steps, spec fitting, encode/decode, errors.

References are independent: explicit loops over ``ds.sel(time=...)``, numpy statistics, and
cftime/pandas calendar arithmetic done by hand.
"""

from __future__ import annotations

import json

import cftime
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from xearthformer import layout as L
from xearthformer.errors import ConfigError, DataError, ShapeError


# ----------------------------------------------------------------------------------------------
# synthetic datasets with realistic CF metadata
# ----------------------------------------------------------------------------------------------
def cf_dataset(nt=30, nlat=4, nlon=6, freq="MS", calendar="standard", seed=0, land=True,
               member=0, plev=0, start="2000-01-01"):
    """A CF-style (time, [member], [plev], lat, lon) dataset: sst (K, NaN over 'land'),
    t2m, a static land mask and orography."""
    rng = np.random.default_rng(seed)
    if calendar == "standard":
        time = pd.date_range(start, periods=nt, freq=freq)
    else:
        time = xr.date_range(start, periods=nt, freq=freq, calendar=calendar, use_cftime=True)
    lat = np.linspace(-30, 30, nlat)
    lon = np.linspace(-180, 180, nlon, endpoint=False)
    dims, shape = ["time"], [nt]
    coords = {
        "time": ("time", time, {"standard_name": "time", "axis": "T"}),
        "lat": ("lat", lat, {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"}),
        "lon": ("lon", lon, {"standard_name": "longitude", "units": "degrees_east", "axis": "X"}),
    }
    if member:
        dims.append("member"); shape.append(member)
        coords["member"] = ("member", np.arange(1, member + 1), {"standard_name": "realization"})
    if plev:
        dims.append("plev"); shape.append(plev)
        coords["plev"] = ("plev", np.linspace(850.0, 500.0, plev),
                          {"standard_name": "air_pressure", "units": "hPa", "positive": "down"})
    dims += ["lat", "lon"]; shape += [nlat, nlon]
    seasonal = 3 * np.cos(2 * np.pi * np.arange(nt) / 12).reshape((nt,) + (1,) * (len(shape) - 1))
    sst = (290 + seasonal + rng.normal(size=shape)).astype("f4")
    if land:
        sst[..., 0, 0] = np.nan  # a land cell: NaN at every time
    t2m = (280 + rng.normal(size=shape) * 2).astype("f4")
    return xr.Dataset(
        {
            "sst": (dims, sst, {"units": "K", "standard_name": "sea_surface_temperature",
                                "long_name": "Sea surface temperature"}),
            "t2m": (dims, t2m, {"units": "K", "standard_name": "air_temperature"}),
            "lsm": (("lat", "lon"), (rng.random((nlat, nlon)) > 0.5).astype("f4"),
                    {"standard_name": "land_binary_mask"}),
            "orog": (("lat", "lon"), rng.random((nlat, nlon)).astype("f4") * 1000,
                     {"units": "m", "standard_name": "surface_altitude"}),
        },
        coords=coords,
        attrs={"Conventions": "CF-1.8"},
    )


def odd_dataset(ds):
    """The same data with odd names (CF attributes only), descending latitude, 0..360 lon,
    and sst stored as (time, lon, lat)."""
    out = ds.isel(lat=slice(None, None, -1))
    out = out.assign_coords(lon=(out.lon % 360)).sortby("lon")
    out = out.rename({"time": "t", "lat": "yy_deg", "lon": "xx_deg"})
    out["t"].attrs = {"axis": "T"}
    out["yy_deg"].attrs = {"units": "degrees_north"}
    out["xx_deg"].attrs = {"units": "degrees_east"}
    out["sst"] = out.sst.transpose("t", "xx_deg", "yy_deg")  # (time, lon, lat) storage order
    return out


def projected_dataset(nt=20, ny=5, nx=4, seed=1):
    rng = np.random.default_rng(seed)
    y = np.arange(ny) * 2000.0
    x = np.arange(nx) * 2000.0
    lat2 = 40 + y[:, None] / 1e5 + 0 * x[None, :]
    lon2 = -100 + x[None, :] / 1e5 + 0.01 * y[:, None] / 1e3
    vil = rng.random((nt, ny, nx)).astype("f4") * 255
    return xr.Dataset(
        {"vil": (("time", "y", "x"), vil, {"units": "1", "long_name": "VIL", "grid_mapping": "crs"}),
         "crs": ((), np.int32(0), {"grid_mapping_name": "lambert_conformal_conic",
                                   "standard_parallel": [33.0, 45.0],
                                   "longitude_of_central_meridian": -98.0})},
        coords={"time": pd.date_range("2019-06-01", periods=nt, freq="5min"),
                "y": ("y", y, {"standard_name": "projection_y_coordinate", "units": "m"}),
                "x": ("x", x, {"standard_name": "projection_x_coordinate", "units": "m"}),
                "lat": (("y", "x"), lat2, {"standard_name": "latitude", "units": "degrees_north"}),
                "lon": (("y", "x"), lon2, {"standard_name": "longitude", "units": "degrees_east"})},
    )


def brute_window(ds, var, time_name, t_index, offsets, level=None, vdim=None):
    """ds[var] at positions t_index + offsets, by explicit per-step selection."""
    out = []
    for o in offsets:
        da = ds[var].isel({time_name: t_index + o})
        if level is not None:
            da = da.sel({vdim: level})
        out.append(da.values)
    return np.stack(out)


# ----------------------------------------------------------------------------------------------
# axes
# ----------------------------------------------------------------------------------------------
def test_find_axes_cf_odd_and_projected():
    ds = cf_dataset(nt=4, plev=2)
    ax = L.find_axes(ds)
    assert (ax.time, ax.y, ax.x, ax.lat, ax.lon, ax.vertical) == ("time", "lat", "lon", "lat",
                                                                  "lon", "plev")
    assert not ax.projected
    odd = L.find_axes(odd_dataset(cf_dataset(nt=4)))
    assert (odd.time, odd.y, odd.x) == ("t", "yy_deg", "xx_deg")
    pax = L.find_axes(projected_dataset(nt=3))
    assert (pax.y, pax.x, pax.lat, pax.lon, pax.grid_mapping) == ("y", "x", "lat", "lon", "crs")
    assert pax.projected
    # plain common names without any attributes are found by cf-xarray's name guessing
    bare = xr.Dataset({"v": (("time", "latitude", "longitude"), np.zeros((2, 2, 3)))},
                      coords={"time": pd.date_range("2000", periods=2), "latitude": [0.0, 1.0],
                              "longitude": [0.0, 1.0, 2.0]})
    assert L.find_axes(bare).y == "latitude"


def test_find_axes_errors_list_dims():
    ds = xr.Dataset({"v": (("a", "b", "c"), np.zeros((2, 3, 4)))})
    with pytest.raises(DataError, match=r"a \(2\), b \(3\), c \(4\)"):
        L.find_axes(ds)
    no_grid = xr.Dataset({"v": (("time", "b"), np.zeros((2, 3)))},
                         coords={"time": pd.date_range("2000", periods=2)})
    with pytest.raises(DataError, match="latitude/longitude.*time \\(2\\), b \\(3\\)"):
        L.find_axes(no_grid)


# ----------------------------------------------------------------------------------------------
# time steps and forecast time coordinates
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("times, expected", [
    (pd.date_range("2000", periods=5, freq="6h").values, L.TimeStep(6, "hours")),
    (pd.date_range("2000", periods=5, freq="5min").values, L.TimeStep(5, "minutes")),
    (pd.date_range("2000", periods=5, freq="D").values, L.TimeStep(1, "days")),
    # mid-month stamps as CF monthly means have them: lengths vary, still one calendar month
    (np.array(["2000-01-16T12", "2000-02-15", "2000-03-16T12", "2000-04-16"], "M8[s]"),
     L.TimeStep(1, "months")),
    (np.asarray(xr.date_range("2000", periods=6, freq="MS", calendar="360_day", use_cftime=True)),
     L.TimeStep(1, "months")),
    (np.asarray(xr.date_range("2000", periods=4, freq="3MS", calendar="noleap", use_cftime=True)),
     L.TimeStep(3, "months")),
    (pd.date_range("2000", periods=4, freq="YS").values, L.TimeStep(1, "years")),
    (np.asarray(xr.date_range("2000", periods=4, freq="D", calendar="noleap", use_cftime=True)),
     L.TimeStep(1, "days")),
])
def test_infer_step(times, expected):
    assert L.infer_step(times) == expected


def test_infer_step_errors():
    irregular = np.array(["2000-01-01", "2000-01-02", "2000-01-04"], "M8[s]")
    with pytest.raises(DataError, match="irregular.*2000-01-02.*2000-01-04.*resample"):
        L.infer_step(irregular)
    backwards = np.array(["2000-01-01", "2000-01-03", "2000-01-02"], "M8[s]")
    with pytest.raises(DataError, match="not increasing.*sortby"):
        L.infer_step(backwards)
    with pytest.raises(DataError, match="not dates"):
        L.infer_step(np.arange(4))
    with pytest.raises(DataError, match="at least two"):
        L.infer_step(np.array(["2000-01-01"], "M8[s]"))


def test_time_coords_fixed_and_calendar_steps():
    init = pd.date_range("2000-01-31", periods=3, freq="D").values
    c = L.time_coords(init, L.TimeStep(6, "hours"), 4)
    assert c["lead_time"].dtype.kind == "m"
    assert (c["lead_time"].values == np.arange(1, 5) * np.timedelta64(6, "h")).all()
    assert (c["valid_time"].values == init[:, None] + c["lead_time"].values[None, :]).all()
    assert c["valid_time"].dims == ("init_time", "lead_time")

    m = L.time_coords(init, L.TimeStep(1, "months"), 2)
    assert m["lead_time"].attrs["units"] == "months"
    assert m["lead_time"].values.tolist() == [1, 2]
    expected = [[pd.Timestamp(t) + pd.DateOffset(months=k) for k in (1, 2)] for t in init]
    assert (m["valid_time"].values == np.array(expected, dtype="M8[ns]")).all()
    assert pd.Timestamp(m["valid_time"].values[0, 0]) == pd.Timestamp("2000-02-29")  # clipped

    y = L.time_coords(init[:1], L.TimeStep(1, "years"), [1, 3])
    assert y["lead_time"].attrs["units"] == "years" and y["lead_time"].values.tolist() == [1, 3]
    assert pd.Timestamp(y["valid_time"].values[0, 1]) == pd.Timestamp("2003-01-31")


@pytest.mark.parametrize("calendar", ["noleap", "360_day", "julian", "all_leap"])
def test_time_coords_cftime_calendars(calendar):
    init = np.asarray(xr.date_range("2001-01-30", periods=2, freq="D", calendar=calendar,
                                    use_cftime=True))
    months = L.time_coords(init, L.TimeStep(1, "months"), 13)["valid_time"].values
    for i, t in enumerate(init):
        for k in range(13):
            v = months[i, k]
            assert v.calendar == t.calendar
            y, m0 = divmod(t.month - 1 + k + 1, 12)
            assert (v.year, v.month) == (t.year + y, m0 + 1)
            dim = cftime.datetime(v.year, v.month, 1, calendar=calendar).daysinmonth
            assert v.day == min(t.day, dim)
    days = L.time_coords(init, L.TimeStep(1, "days"), 3)["valid_time"].values
    # brute force: step through the calendar one day at a time with cftime itself
    for i, t in enumerate(init):
        ref = t
        for k in range(3):
            ref = ref + pd.Timedelta(days=1).to_pytimedelta()
            assert days[i, k] == ref


# ----------------------------------------------------------------------------------------------
# fit_spec: statistics against numpy
# ----------------------------------------------------------------------------------------------
def test_fit_spec_zscore_minmax_scale_from_period():
    ds = cf_dataset(nt=36)
    period = slice("2000-01", "2001-06")
    spec = L.fit_spec(ds, ["sst", "t2m"], targets="sst", context=4, lead=3, period=period,
                      normalization={"sst": "zscore", "t2m": "minmax"})
    sub = ds.sel(time=period)
    sst, t2m = sub.sst.values.astype("f8"), sub.t2m.values.astype("f8")
    ch = {c.name: c for c in spec.inputs}
    assert ch["sst"].offset == pytest.approx(np.nanmean(sst), rel=1e-5)
    assert ch["sst"].scale == pytest.approx(np.nanstd(sst), rel=1e-4)
    assert ch["t2m"].offset == pytest.approx(t2m.min(), rel=1e-6)
    assert ch["t2m"].scale == pytest.approx(t2m.max() - t2m.min(), rel=1e-5)
    assert ch["sst"].attrs == {"units": "K", "standard_name": "sea_surface_temperature",
                               "long_name": "Sea surface temperature"}
    assert [c.name for c in spec.targets] == ["sst"]
    assert spec.input_shape == (4, 4, 6, 2) and spec.target_shape == (3, 4, 6, 1)
    assert spec.step == L.TimeStep(1, "months")
    assert spec.land_mask["sst"].sum() == 1 and spec.land_mask["sst"][0, 0]

    fixed = L.fit_spec(ds, "sst", context=2, lead=1,
                       normalization={"sst": {"method": "scale", "offset": 0, "scale": 255}})
    assert (fixed.inputs[0].offset, fixed.inputs[0].scale) == (0.0, 255.0)
    x = L.encode_inputs(ds, fixed, ds.time.values[1:2])
    np.testing.assert_allclose(x[0, :, 1:, 1:, 0], ds.sst.values[:2, 1:, 1:] / 255, rtol=1e-6)


def test_anomaly_climatology_and_encoding():
    ds = cf_dataset(nt=48, calendar="noleap")
    spec = L.fit_spec(ds, "sst", context=3, lead=2, normalization="anomaly",
                      period=slice("2000-01", "2002-12"))
    sub = ds.sst.sel(time=slice("2000-01", "2002-12")).values.astype("f8")  # 36 months
    clim = sub.reshape(3, 12, *sub.shape[1:]).mean(0)  # brute force: years x months
    np.testing.assert_allclose(spec.climatology["sst"][:, 1:, 1:], clim[:, 1:, 1:], rtol=1e-6)
    anom = sub - np.tile(clim, (3, 1, 1))
    assert spec.inputs[0].scale == pytest.approx(np.nanstd(anom), rel=1e-4)
    inits = L.init_times(ds, spec, targets=True)
    x = L.encode_inputs(ds, spec, inits)
    y, valid = L.encode_targets(ds, spec, inits)
    months = ds.time.dt.month.values
    for i, t in enumerate(inits):
        p = int(np.flatnonzero(ds.time.values == t)[0])
        for k, o in enumerate(range(-2, 1)):
            ref = (ds.sst.values[p + o] - clim[months[p + o] - 1]) / spec.inputs[0].scale
            # atol: the climatology is stored as float32 (eps * 290 K ~ 3e-5)
            np.testing.assert_allclose(x[i, k, 1:, 1:, 0], ref[1:, 1:], rtol=1e-4, atol=1e-4)
        assert not valid[i, :, 0, 0, 0].any() and valid[i, :, 1:, 1:, 0].all()
        assert (x[i, :, 0, 0, 0] == 0).all()  # land filled with the normalised mean


def test_anomaly_needs_twelve_months():
    ds = cf_dataset(nt=24)
    with pytest.raises(DataError, match="12 calendar months.*whole years"):
        L.fit_spec(ds, "sst", context=2, lead=1, normalization="anomaly",
                   period=slice("2000-01", "2000-06"))


# ----------------------------------------------------------------------------------------------
# encode against brute force
# ----------------------------------------------------------------------------------------------
def test_encode_inputs_brute_force_with_static_and_calendar():
    ds = cf_dataset(nt=20, freq="D")
    spec = L.fit_spec(ds, ["sst", "t2m"], targets=["t2m"], context=3, lead=2,
                      static=["lsm", "orog"], calendar=["month", "dayofyear"])
    assert spec.input_channel_names == ["sst", "t2m", "lsm", "orog", "month_sin", "month_cos",
                                        "dayofyear_sin", "dayofyear_cos"]
    inits = L.init_times(ds, spec, init=slice("2000-01-05", "2000-01-09"))
    assert len(inits) == 5
    x = L.encode_inputs(ds, spec, inits)
    assert x.shape == (5, 3, 4, 6, 8) and x.dtype == np.float32
    for i, t in enumerate(inits):
        p = int(np.flatnonzero(ds.time.values == t)[0])
        for c, ch in enumerate(spec.inputs):
            raw = brute_window(ds, ch.variable, "time", p, range(-2, 1))
            ref = np.nan_to_num((raw - ch.offset) / ch.scale, nan=0.0)
            np.testing.assert_allclose(x[i, ..., c], ref, rtol=1e-5, atol=1e-6)
        for s, name in enumerate(["lsm", "orog"]):
            v = ds[name].values.astype("f8")
            ref = (v - v.mean()) / v.std()
            np.testing.assert_allclose(x[i, :, :, :, 2 + s], np.broadcast_to(ref, (3, 4, 6)),
                                       rtol=1e-5, atol=1e-6)
        for k, o in enumerate(range(-2, 1)):
            ts = pd.Timestamp(ds.time.values[p + o])
            doy_phase = 2 * np.pi * (ts.day_of_year - 1) / (366 if ts.is_leap_year else 365)
            ref = [np.sin(2 * np.pi * (ts.month - 1) / 12), np.cos(2 * np.pi * (ts.month - 1) / 12),
                   np.sin(doy_phase), np.cos(doy_phase)]
            np.testing.assert_allclose(x[i, k, 2, 3, 4:], ref, atol=1e-6)
    y, valid = L.encode_targets(ds, spec, inits)
    p0 = int(np.flatnonzero(ds.time.values == inits[0])[0])
    t2m = spec.targets[0]
    np.testing.assert_allclose(y[0, ..., 0], (brute_window(ds, "t2m", "time", p0, [1, 2])
                                              - t2m.offset) / t2m.scale, rtol=1e-5, atol=1e-6)
    assert valid.all()


def test_levels_and_members_are_channels_and_samples():
    ds = cf_dataset(nt=10, freq="D", member=3, plev=2)
    spec = L.fit_spec(ds, "t2m", targets=["t2m"], context=2, lead=2, normalization="none",
                      levels={"t2m": [500.0, 850.0]})
    assert [c.name for c in spec.inputs] == ["t2m[500.0]", "t2m[850.0]"]
    inits = ds.time.values[[2, 5]]
    x = L.encode_inputs(ds, spec, inits)
    assert x.shape == (2 * 3, 2, 4, 6, 2)
    for i, t in enumerate(inits):
        p = int(np.flatnonzero(ds.time.values == t)[0])
        for m in range(3):
            for c, lev in enumerate([500.0, 850.0]):
                ref = ds.t2m.isel(member=m).sel(plev=lev).values[p - 1:p + 1]
                np.testing.assert_array_equal(x[i * 3 + m, ..., c], ref)  # init-major samples
    assert list(L.sample_dims(ds, spec)) == ["member"]
    y, _ = L.encode_targets(ds, spec, inits)
    out = L.decode(y, spec, inits, like=ds)
    assert out.t2m.dims == ("init_time", "lead_time", "member", "plev", "lat", "lon")
    assert out.member.values.tolist() == [1, 2, 3]
    assert out.plev.values.tolist() == [500.0, 850.0] and out.plev.attrs["units"] == "hPa"
    ref = ds.t2m.sel(plev=[500.0, 850.0]).sel(time=out.valid_time).transpose(*out.t2m.dims)
    np.testing.assert_array_equal(out.t2m.values, ref.values)


# ----------------------------------------------------------------------------------------------
# round trip: labelled -> tensor -> labelled is exact (hypothesis)
# ----------------------------------------------------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    calendar=st.sampled_from(["standard", "noleap", "360_day"]),
    freq=st.sampled_from(["MS", "D", "6h"]),
    nlat=st.integers(1, 4), nlon=st.integers(2, 5),
    descending=st.booleans(), lon360=st.booleans(), member=st.sampled_from([0, 2]),
    context=st.integers(1, 3), lead=st.integers(1, 3), seed=st.integers(0, 2**16),
)
def test_round_trip_exact(calendar, freq, nlat, nlon, descending, lon360, member, context, lead,
                          seed):
    ds = cf_dataset(nt=context + lead + 3, nlat=nlat, nlon=nlon, freq=freq, calendar=calendar,
                    seed=seed, member=member)
    spec = L.fit_spec(ds, "sst", context=context, lead=lead, normalization="none")
    data = ds
    if descending:
        data = data.isel(lat=slice(None, None, -1))
    if lon360:
        data = data.assign_coords(lon=data.lon % 360).sortby("lon")
    inits = L.init_times(data, spec, targets=True)
    assert len(inits) == 4
    # the tensor layout does not depend on the input's orientation or longitude convention
    np.testing.assert_array_equal(L.encode_inputs(data, spec, inits),
                                  L.encode_inputs(ds, spec, inits))
    y, valid = L.encode_targets(data, spec, inits)
    out = L.decode(y, spec, inits, like=data)
    # back on the input's own grid, values, NaN and valid_time exactly as in the data
    ref = data.sst.sel(time=out.valid_time).transpose(*out.sst.dims)
    np.testing.assert_array_equal(out.sst.values, ref.values)
    np.testing.assert_array_equal(out.lat.values, data.lat.values)
    np.testing.assert_array_equal(out.lon.values, data.lon.values)
    assert out.lat.attrs["units"] == "degrees_north"
    assert out.sst.attrs["units"] == "K"
    if freq == "MS":
        assert out.lead_time.attrs["units"] == "months" and out.lead_time.dtype.kind == "i"
    else:
        assert out.lead_time.dtype.kind == "m"
    # normalised round trip: zscore is exact up to float32 rounding
    spec_z = L.fit_spec(ds, "sst", context=context, lead=lead)
    yz, _ = L.encode_targets(data, spec_z, inits)
    outz = L.decode(yz, spec_z, inits, like=data)
    np.testing.assert_allclose(outz.sst.values, ref.values, rtol=1e-6)


def test_round_trip_odd_names_noleap_and_decode_without_like():
    base = cf_dataset(nt=14, calendar="noleap")
    odd = odd_dataset(base)
    spec = L.fit_spec(odd, "sst", context=3, lead=2, normalization="anomaly")
    assert spec.grid.y == "yy_deg" and spec.calendar_name == "noleap"
    inits = L.init_times(odd, spec, targets=True)
    y, _ = L.encode_targets(odd, spec, inits)
    out = L.decode(y, spec, inits)  # spec grid: the training data's names and order
    assert out.sst.dims == ("init_time", "lead_time", "yy_deg", "xx_deg")
    assert isinstance(out.valid_time.values[0, 0], cftime.DatetimeNoLeap)
    ref = odd.sst.sel(t=out.valid_time).transpose(*out.sst.dims)
    np.testing.assert_allclose(out.sst.values, ref.values, rtol=1e-6)
    # a model fitted on the odd data used on the CF-named, ascending, -180..180 original
    out2 = L.decode(L.encode_targets(base, spec, inits)[0], spec, inits, like=base)
    assert out2.sst.dims == ("init_time", "lead_time", "lat", "lon")
    np.testing.assert_allclose(out2.sst.values,
                               base.sst.sel(time=out2.valid_time).transpose(*out2.sst.dims).values,
                               rtol=1e-6)


def test_projected_grid_carried_through():
    ds = projected_dataset()
    spec = L.fit_spec(ds, "vil", context=3, lead=2,
                      normalization={"vil": {"method": "scale", "offset": 0.0, "scale": 255.0}})
    assert spec.grid.projected and spec.grid.grid_mapping == "crs"
    assert spec.step == L.TimeStep(5, "minutes")
    np.testing.assert_array_equal(L.area_weights(spec), np.ones((5, 4), "f4"))
    inits = L.init_times(ds, spec, targets=True)
    flipped = ds.isel(y=slice(None, None, -1))
    y, _ = L.encode_targets(flipped, spec, inits)
    no_crs = flipped[["vil"]]  # selecting variables drops the grid-mapping variable
    assert "crs" not in no_crs.variables
    for out, data in ((L.decode(y, spec, inits, like=flipped), flipped),
                      (L.decode(y, spec, inits, like=no_crs), flipped),
                      (L.decode(y, spec, inits), ds)):
        assert out.lat.dims == ("y", "x") and out.lon.dims == ("y", "x")
        np.testing.assert_array_equal(out.lat.values, data.lat.values)
        assert out.vil.attrs["grid_mapping"] == "crs"
        assert out.crs.attrs["grid_mapping_name"] == "lambert_conformal_conic"
        ref = data.vil.sel(time=out.valid_time).transpose(*out.vil.dims).values
        np.testing.assert_allclose(out.vil.values, ref, rtol=1e-6)
        assert out.lead_time.values[1] == np.timedelta64(10, "m")


def test_dataarray_input_and_subdomain():
    ds = cf_dataset(nt=10, nlat=4, nlon=6, freq="D")
    spec = L.fit_spec(ds.sst.isel(lat=slice(1, 3)), "sst", context=2, lead=1)
    wider = ds.sst.rename("whatever")  # a DataArray, larger domain than the model's
    inits = L.init_times(wider, spec)
    x = L.encode_inputs(wider, spec, inits[:2])
    np.testing.assert_array_equal(x, L.encode_inputs(ds.isel(lat=slice(1, 3)), spec, inits[:2]))
    out = L.decode(x[:, -1:], spec, inits[:2], like=wider)
    np.testing.assert_array_equal(out.lat.values, ds.lat.values[1:3])


# ----------------------------------------------------------------------------------------------
# laziness: only the needed time steps are read
# ----------------------------------------------------------------------------------------------
def test_encode_loads_only_needed_steps():
    import dask
    import dask.array as da

    ds = cf_dataset(nt=40, freq="D", land=False)
    loaded: list[int] = []

    def load(i):
        loaded.append(i)
        return ds.sst.values[i]

    parts = [da.from_delayed(dask.delayed(load)(i), shape=ds.sst.shape[1:], dtype="f4")
             for i in range(40)]
    lazy = ds.assign(sst=(ds.sst.dims, da.stack(parts), ds.sst.attrs))
    spec = L.fit_spec(ds, "sst", context=4, lead=3)
    inits = ds.time.values[[10, 30]]
    with dask.config.set(scheduler="sync"):
        x = L.encode_inputs(lazy, spec, inits)
    assert sorted(set(loaded)) == [7, 8, 9, 10, 27, 28, 29, 30]
    np.testing.assert_array_equal(x, L.encode_inputs(ds, spec, inits))
    sl = L.required_time_slice(lazy, spec, inits)
    assert (sl.start, sl.stop) == (7, 31)
    sl = L.required_time_slice(lazy, spec, inits, targets=True)
    assert (sl.start, sl.stop) == (7, 34)
    # statistics from Dask-backed data equal the eager ones
    monthly = cf_dataset(nt=36)
    lazy_spec = L.fit_spec(monthly.chunk(time=7), "sst", context=4, lead=3,
                           normalization="anomaly")
    eager_spec = L.fit_spec(monthly, "sst", context=4, lead=3, normalization="anomaly")
    assert lazy_spec.inputs[0].scale == pytest.approx(eager_spec.inputs[0].scale, rel=1e-6)
    np.testing.assert_allclose(lazy_spec.climatology["sst"], eager_spec.climatology["sst"],
                               rtol=1e-6)
    # an init-time chunk encodes the same from just its required slice
    np.testing.assert_array_equal(L.encode_inputs(ds.isel(time=sl), spec, inits), x)


# ----------------------------------------------------------------------------------------------
# init times, errors
# ----------------------------------------------------------------------------------------------
def test_init_times_selection():
    ds = cf_dataset(nt=12)
    spec = L.fit_spec(ds, "sst", context=3, lead=2)
    assert (L.init_times(ds, spec) == ds.time.values[2:]).all()
    assert (L.init_times(ds, spec, targets=True) == ds.time.values[2:10]).all()
    assert (L.init_times(ds, spec, init=slice(None, "2000-04")) == ds.time.values[2:4]).all()
    assert L.init_times(ds, spec, init="2000-05-01")[0] == ds.time.values[4]
    with pytest.raises(DataError, match="lacks a full context.*2000-03-01"):
        L.init_times(ds, spec, init=[ds.time.values[1]])
    with pytest.raises(DataError, match="not found on the time axis"):
        L.init_times(ds, spec, init="1990-01-01")


def test_clear_errors():
    ds = cf_dataset(nt=12)
    spec = L.fit_spec(ds, ["sst", "t2m"], targets="sst", context=3, lead=2)
    inits = ds.time.values[3:5]
    with pytest.raises(DataError, match=r"input variable\(s\) \['t2m'\] not found.*\['lsm', 'orog', 'sst'\]"):
        L.encode_inputs(ds.drop_vars("t2m"), spec, inits)
    with pytest.raises(DataError, match=r"target variable\(s\) \['t2m'\] not found"):
        spec_t = L.fit_spec(ds, "sst", targets="t2m", context=3, lead=2)
        L.encode_targets(ds.drop_vars("t2m"), spec_t, inits)
    # float32 coordinates (as many files store them) match a float64-fitted fine grid
    fine = ds.assign_coords(lat=30.0 + 0.01 * np.arange(4), lon=-120.0 + 0.01 * np.arange(6))
    spec_fine = L.fit_spec(fine, "sst", context=3, lead=2)
    f32 = fine.assign_coords(lat=fine.lat.astype("f4"), lon=fine.lon.astype("f4"))
    assert np.abs(f32.lat.values - fine.lat.values).max() > 1e-6 * 0.01  # beyond 1e-6 spacing
    np.testing.assert_array_equal(L.encode_inputs(f32, spec_fine, inits),
                                  L.encode_inputs(fine, spec_fine, inits))
    with pytest.raises(DataError, match="latitude"):
        L.encode_inputs(fine.assign_coords(lat=fine.lat + 0.001), spec_fine, inits)
    shifted = ds.assign_coords(lat=ds.lat + 1.0)
    with pytest.raises(DataError, match="latitude.*differs from the model.*regrid"):
        L.encode_inputs(shifted, spec, inits)
    finer = ds.interp(lon=np.linspace(-175, 155, 12))
    with pytest.raises(DataError, match="longitude \\(lon: 12 values.*6 values.*interp"):
        L.encode_inputs(finer, spec, inits)
    with pytest.raises(DataError, match="2 time steps, shorter than the model's context \\(3\\)"):
        L.init_times(ds.isel(time=slice(0, 2)), spec)
    gap = ds.isel(time=[0, 1, 2, 4, 5, 6])
    with pytest.raises(DataError, match="irregular"):
        L.encode_inputs(gap, spec, gap.time.values[4:])
    daily = ds.assign_coords(time=pd.date_range("2000", periods=12, freq="D"))
    with pytest.raises(DataError, match="time step is 1 days, the model's is 1 months"):
        L.init_times(daily, spec)
    nan = ds.copy()
    nan["sst"] = nan.sst.where(nan.time != nan.time[3])
    nan["t2m"] = nan.t2m.where(nan.time > nan.time[3])
    with pytest.raises(DataError, match="all NaN"):
        L.encode_inputs(nan.isel(time=slice(0, 6)).where(nan.time > nan.time[3]), spec, inits[:1])
    with pytest.raises(DataError, match="all NaN"):
        L.fit_spec(ds.assign(sst=ds.sst * np.nan), "sst", context=2, lead=1)
    with pytest.raises(DataError, match="needs time positions"):
        L.encode_targets(ds, spec, ds.time.values[-1:])
    with pytest.raises(ShapeError, match="expected \\(2, L, 4, 6, 1\\)"):
        L.decode(np.zeros((3, 2, 4, 6, 1)), spec, inits)
    with pytest.raises(ConfigError, match="unknown"):
        L.fit_spec(ds, "sst", context=2, lead=1, normalization="robust")
    with pytest.raises(DataError, match="shorter than context \\(10\\) \\+ lead \\(5\\)"):
        L.fit_spec(ds, "sst", context=10, lead=5)


# ----------------------------------------------------------------------------------------------
# serialisation and helpers
# ----------------------------------------------------------------------------------------------
def test_spec_json_round_trip_and_version():
    ds = cf_dataset(nt=30, plev=2)
    spec = L.fit_spec(ds, ["t2m", "sst"], targets="sst", context=3, lead=2, static=["orog"],
                      calendar=["month"], normalization={"sst": "anomaly"})
    d = json.loads(json.dumps(spec.to_dict()))
    arrays = spec.arrays()
    assert "climatology/sst[850.0]" in arrays and arrays["climatology/sst[850.0]"].shape == (12, 4, 6)
    assert "climatology" not in json.dumps(d)  # arrays travel as tensors, not JSON
    back = L.DataSpec.from_dict(d, arrays)
    assert back.to_dict() == spec.to_dict()
    assert back == spec and back.grid == spec.grid
    assert back != L.fit_spec(ds, ["t2m", "sst"], targets="sst", context=3, lead=3,
                              static=["orog"], calendar=["month"], normalization={"sst": "anomaly"})
    for k, v in back.arrays().items():
        np.testing.assert_array_equal(v, arrays[k])
    inits = L.init_times(ds, spec)[:2]
    np.testing.assert_array_equal(L.encode_inputs(ds, back, inits), L.encode_inputs(ds, spec, inits))
    with pytest.raises(ConfigError, match="newer.*upgrade"):
        L.DataSpec.from_dict({**d, "spec_version": L.SPEC_VERSION + 1}, arrays)


def test_area_weights_and_target_mask():
    ds = cf_dataset(nt=6)
    spec = L.fit_spec(ds, "sst", context=2, lead=1)
    w = L.area_weights(spec)
    ref = np.cos(np.deg2rad(ds.lat.values))[:, None] * np.ones(6)
    np.testing.assert_allclose(w, ref / ref.mean(), rtol=1e-6)
    mask = L.target_mask(spec)
    assert mask.shape == (4, 6, 1) and not mask[0, 0, 0] and mask.sum() == 23


def test_written_specs_for_official_style_data():
    # SEVIR-like: uint8 pixels on a y/x grid with no coordinate variables, fixed 1/255 scaling
    vil = L.Channel("vil", method="scale", offset=0.0, scale=255.0, attrs={"units": "1"})
    spec = L.DataSpec(inputs=(vil,), targets=(vil,), grid=L.Grid.xy(range(6), range(5)),
                      step=L.TimeStep(5, "minutes"), context=3, lead=2)
    raw = np.random.default_rng(3).integers(0, 256, (9, 6, 5), dtype=np.uint8)
    data = xr.Dataset({"vil": (("time", "y", "x"), raw)},
                      coords={"time": pd.date_range("2019-06-01", periods=9, freq="5min")})
    inits = L.init_times(data, spec, targets=True)
    x = L.encode_inputs(data, spec, inits)
    np.testing.assert_allclose(x[0, ..., 0], raw[:3] / 255.0, rtol=1e-6)
    y, _ = L.encode_targets(data, spec, inits)
    out = L.decode(y, spec, inits)
    np.testing.assert_allclose(out.vil.values[0, :, :, :], raw[3:5], rtol=1e-6)
    assert out.vil.dims == ("init_time", "lead_time", "y", "x")
    # ICAR-ENSO-like: the model covers lon 95..330 of a global 0..355 grid: cropped on input
    grid = L.Grid.latlon(np.arange(-10, 11, 5.0), np.arange(95, 331, 5.0))
    sst = L.Channel("sst", method="none", attrs={"units": "K"})
    spec = L.DataSpec(inputs=(sst,), targets=(sst,), grid=grid, step=L.TimeStep(1, "months"),
                      context=2, lead=1)
    glob = xr.Dataset({"sst": (("time", "lat", "lon"),
                               np.random.default_rng(4).normal(size=(4, 5, 72)).astype("f4"))},
                      coords={"time": pd.date_range("2000", periods=4, freq="MS"),
                              "lat": np.arange(-10, 11, 5.0), "lon": np.arange(0, 360, 5.0)})
    x = L.encode_inputs(glob, spec, glob.time.values[1:])
    np.testing.assert_array_equal(x[0, :, :, :, 0], glob.sst.values[:2, :, 19:67])
    out = L.decode(x[:, -1:], spec, glob.time.values[1:], like=glob)
    np.testing.assert_array_equal(out.lon.values, np.arange(95, 331, 5.0))
