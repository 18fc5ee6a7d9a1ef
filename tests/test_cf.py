"""CF-1.8 forecast encoding: attributes, compliance-checker, calendars, tool layouts."""

from __future__ import annotations

import os

import cf_xarray  # noqa: F401  (registers .cf)
import iris_sample_data
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import xskillscore as xs
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.cfcheck import cf_errors
from xearthformer import cf
from xearthformer.errors import DataError

IRIS_OSTIA = os.path.join(iris_sample_data.path, "ostia_monthly.nc")   # written by Iris


def make_forecast(calendar: str | None = None, monthly: bool = False, members: int = 0,
                  n_init: int = 3, n_lead: int = 4, seed: int = 0) -> xr.Dataset:
    """A forecast as layout.decode returns it, built by hand (valid = init + lead)."""
    rng = np.random.default_rng(seed)
    freq = "MS" if monthly else "6h"
    if calendar is None:
        inits = pd.date_range("2000-01-01", periods=n_init, freq=freq).values
    else:
        inits = xr.date_range("2000-01-01", periods=n_init, freq=freq, calendar=calendar,
                              use_cftime=True).values
    if monthly:
        lead = np.arange(1, n_lead + 1)
        valid = np.stack([xr.date_range(i, periods=n_lead + 1, freq="MS", calendar=calendar or "standard",
                                        use_cftime=calendar is not None).values[1:] for i in inits])
    else:
        lead = (np.arange(1, n_lead + 1) * 6).astype("timedelta64[h]").astype("timedelta64[ns]")
        step = lead if calendar is None else np.array([pd.Timedelta(v).to_pytimedelta() for v in lead])
        valid = inits[:, None] + step[None, :]
    dims = ("init_time", "lead_time") + (("member",) if members else ()) + ("lat", "lon")
    shape = (n_init, n_lead) + ((members,) if members else ()) + (5, 6)
    ds = xr.Dataset(
        {"t2m": (dims, rng.normal(280, 5, shape).astype("f4"),
                 {"standard_name": "air_temperature", "units": "K", "long_name": "2 m temperature",
                  "standard_name_vocabulary": "CF Standard Name Table v77"})},
        coords={
            "init_time": inits, "lead_time": lead, "valid_time": (("init_time", "lead_time"), valid),
            "lat": ("lat", np.linspace(-10, 10, 5), {"standard_name": "latitude", "units": "degrees_north"}),
            "lon": ("lon", np.linspace(0, 50, 6), {"standard_name": "longitude", "units": "degrees_east"}),
        },
        attrs={"standard_name_vocabulary": "CF Standard Name Table v77", "institution": "Test Lab"},
    )
    if monthly:
        ds["lead_time"].attrs["units"] = "months"
    return ds


# ----------------------------------------------------------------------------------------------
def test_attributes_and_globals():
    raw = make_forecast()
    raw.attrs["history"] = "made by hand"
    fc = cf.to_cf(raw, source="unit test model")
    assert fc.init_time.attrs["standard_name"] == "forecast_reference_time"
    assert fc.lead_time.attrs["standard_name"] == "forecast_period"
    assert fc.valid_time.attrs["standard_name"] == "time"
    assert fc.valid_time.dims == ("init_time", "lead_time")
    assert fc.t2m.attrs == {"standard_name": "air_temperature", "units": "K", "long_name": "2 m temperature"}
    assert fc.attrs["Conventions"] == "CF-1.8" and fc.attrs["source"] == "unit test model"
    assert fc.attrs["institution"] == "Test Lab"
    assert fc.attrs["history"].startswith("made by hand\n") and "xearthformer" in fc.attrs["history"]
    assert all("standard_name_vocabulary" not in v.attrs for v in fc.variables.values())
    assert "standard_name_vocabulary" not in fc.attrs
    assert fc.lead_time.encoding["units"] == "hours"
    # the input is not modified
    assert "standard_name" not in raw.init_time.attrs and "Conventions" not in raw.attrs
    # cf-xarray finds each forecast coordinate by its standard name, uniquely
    assert fc.cf["forecast_reference_time"].name == "init_time"
    assert fc.cf["forecast_period"].name == "lead_time"


@pytest.mark.parametrize("kind", ["standard-6h", "noleap-6h", "360_day-monthly", "ensemble-monthly"])
def test_compliance_checker_and_round_trip(tmp_path, kind):
    calendar, step = kind.split("-")
    raw = make_forecast(calendar=None if calendar in ("standard", "ensemble") else calendar,
                        monthly=step == "monthly", members=3 if calendar == "ensemble" else 0)
    fc = cf.to_cf(raw)
    path = str(tmp_path / f"{kind}.nc")
    fc.to_netcdf(path)
    assert cf_errors(path) == []
    back = cf.open_forecast(path).load()
    xr.testing.assert_identical(back.drop_encoding(), fc.drop_encoding())
    # calendars survive: cftime values keep their calendar, leads keep their type
    first_valid = back.valid_time.values[0, 0]
    if calendar in ("noleap", "360_day"):
        assert first_valid.calendar == calendar
        assert back.init_time.encoding["calendar"] == calendar
    if step == "monthly":
        assert back.lead_time.attrs["units"] == "months" and back.lead_time.dtype.kind == "i"
    else:
        assert back.lead_time.dtype == np.dtype("timedelta64[ns]")
    if calendar == "ensemble":
        assert back.member.attrs["standard_name"] == "realization" and back.member.dtype.kind == "i"


def test_checker_catches_a_broken_file(tmp_path):
    # the checker helper can fail: int64 times and _FillValue on coordinates are CF errors
    raw = make_forecast()
    raw.attrs.pop("standard_name_vocabulary")       # the checker would try to download it
    raw.t2m.attrs.pop("standard_name_vocabulary")
    path = str(tmp_path / "raw.nc")
    raw.to_netcdf(path)
    assert cf_errors(path)


def test_zarr_round_trip_360_day(tmp_path):
    fc = cf.to_cf(make_forecast(calendar="360_day", monthly=True))
    fc.to_zarr(tmp_path / "fc.zarr")
    back = cf.open_forecast(tmp_path / "fc.zarr").load()
    xr.testing.assert_identical(back.drop_encoding(), fc.drop_encoding())
    assert back.valid_time.values[0, -1].calendar == "360_day"


def test_iris_provenance_is_dropped_not_an_error():
    # an Iris-written analysis: forecast_period/forecast_reference_time describe the input
    ostia = xr.open_dataset(IRIS_OSTIA)
    assert {"forecast_period", "forecast_reference_time"} <= set(ostia.coords)
    clean = cf.drop_provenance(ostia)
    assert "forecast_period" not in clean.variables and "forecast_reference_time" not in clean.variables
    assert "forecast_reference_time_bnds" not in clean.variables       # its bounds go too
    assert "time" in clean.coords and "surface_temperature" in clean        # dims and data stay
    # the same coordinates carried into a forecast are dropped there too
    raw = make_forecast().assign_coords(
        forecast_period=((), 0, {"standard_name": "forecast_period", "units": "hours"}),
        time=((), np.datetime64("1999-12-31"), {"standard_name": "time"}))
    fc = cf.to_cf(raw, like=ostia)
    assert "forecast_period" not in fc.coords and "time" not in fc.coords
    assert fc.cf["forecast_period"].name == "lead_time"
    assert fc.cf["time"].name == "valid_time"


def test_xskillscore_defaults_work_without_renaming():
    n_member = 4
    ens = cf.to_cf(make_forecast(members=n_member, seed=1))
    rng = np.random.default_rng(2)
    times = pd.date_range("2000-01-01", periods=12, freq="6h")
    obs = xr.DataArray(rng.normal(280, 5, (12, 5, 6)), dims=("time", "lat", "lon"),
                       coords={"time": times, "lat": ens.lat, "lon": ens.lon})
    aligned = obs.sel(time=ens.valid_time)                     # (init_time, lead_time, lat, lon)
    crps = xs.crps_ensemble(aligned, ens.t2m, dim=[])          # member_dim="member" by default
    # brute force: CRPS = E|X - y| - 0.5 E|X - X'| (members as the empirical distribution)
    x = ens.t2m.transpose("init_time", "lead_time", "lat", "lon", "member").values.astype("f8")
    y = aligned.transpose("init_time", "lead_time", "lat", "lon").values
    ref = np.abs(x - y[..., None]).mean(-1) - 0.5 * np.abs(x[..., :, None] - x[..., None, :]).mean((-1, -2))
    np.testing.assert_allclose(crps.transpose("init_time", "lead_time", "lat", "lon").values, ref, rtol=1e-5)
    det = ens.t2m.mean("member")
    rmse = xs.rmse(det, aligned, dim=["init_time", "lat", "lon"])
    ref_rmse = np.sqrt(((det.values - y) ** 2).mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(rmse.values, ref_rmse, rtol=1e-6)
    assert rmse.dims == ("lead_time",)


def test_tool_layouts():
    fc = cf.to_cf(make_forecast())
    cp = cf.to_climpred(fc)
    assert set(cp.dims) == {"init", "lead", "lat", "lon"} and "valid_time" not in cp.coords
    assert cp.lead.values.tolist() == [6, 12, 18, 24] and cp.lead.attrs["units"] == "hours"
    monthly = cf.to_climpred(cf.to_cf(make_forecast(monthly=True)))
    assert monthly.lead.values.tolist() == [1, 2, 3, 4] and monthly.lead.attrs["units"] == "months"
    wb = cf.to_weatherbench2(fc)
    assert set(wb.dims) == {"time", "prediction_timedelta", "latitude", "longitude"}
    np.testing.assert_array_equal(wb.time.values, fc.init_time.values)
    with pytest.raises(DataError, match="timedelta"):
        cf.to_weatherbench2(cf.to_cf(make_forecast(monthly=True)))


def test_errors_say_what_is_missing():
    with pytest.raises(DataError, match="init_time and lead_time"):
        cf.to_cf(make_forecast().rename(init_time="time"))
    bad = make_forecast(monthly=True)
    bad["lead_time"].attrs.pop("units")
    with pytest.raises(DataError, match="units"):
        cf.to_cf(bad)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 10**5), min_size=1, max_size=6),
       st.sampled_from([1, 60, 3600, 86400]))
def test_time_encoding_is_exact(offsets, scale):
    times = np.datetime64("1900-01-01T00:00:00", "ns") + np.array(offsets, "i8") * np.timedelta64(scale, "s")
    coord = xr.DataArray(times, dims="t")
    enc = cf.time_encoding(coord)
    var = xr.Variable("t", times, encoding=enc)
    encoded = xr.conventions.encode_cf_variable(var)
    assert encoded.dtype == np.dtype(enc["dtype"])
    decoded = xr.conventions.decode_cf_variable("t", encoded)
    np.testing.assert_array_equal(decoded.values, times)
    # the unit is the largest that keeps every value whole
    unit = enc["units"].split()[0]
    size = {"days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}[unit]
    secs = (times - times.min()).astype("timedelta64[s]").astype("i8")
    assert np.all(secs % size == 0)
    larger = [s for s in (86400, 3600, 60) if s > size]
    assert all(np.any(secs % s) for s in larger)
