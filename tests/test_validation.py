"""The validation module (``xearthformer.layout.validation``) on its own: units, packing attributes,
finite values, the training range, time zones and dates, calendars, archive grids, forecast/observation
pairs; and the doctests of the reliability modules."""

from __future__ import annotations

import datetime
import doctest
import importlib

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from xearthformer import layout
from xearthformer.errors import DataError
from xearthformer.layout import validation as V


@pytest.mark.parametrize("module", ["xearthformer.layout.validation", "xearthformer.memory",
                                    "xearthformer.progress", "xearthformer.archive",
                                    "xearthformer.checkpoint"])
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_units_are_compared_as_units():
    assert V.units_equal("K", "kelvin") and V.units_equal("m/s", "m s-1") and V.units_equal("degC", "Celsius")
    assert not V.units_equal("K", "degC") and not V.units_equal("mm", "m")
    assert V.units_equal("dBZ ", "dbz")                          # not CF units: compared as text
    assert V.unit_conversion("degC", "K") == "K = degC + 273.15"
    assert V.unit_conversion("K", "degC") == "degC = K - 273.15"
    assert V.unit_conversion("kg m-2 s-1", "mm h-1") is None     # not convertible in UDUNITS
    assert V.unit_conversion("hPa", "Pa") == "Pa = 100 * hPa"
    V.check_units(None, "K", "t")                                  # a missing attribute passes here
    with pytest.raises(DataError, match="'Pa'.*'m'.*same quantity"):
        V.check_units("Pa", "m", "z")


def test_packing_attributes_and_dtypes():
    da = xr.DataArray(np.zeros(3, "i2"), attrs={"scale_factor": 0.01, "add_offset": 273.0})
    with pytest.raises(DataError, match=r"\['scale_factor', 'add_offset'\].*xr.decode_cf"):
        V.check_packing(da, "t")
    V.check_packing(xr.decode_cf(da.to_dataset(name="t")).t, "t")  # decoded: moved to encoding
    for bad in (np.array(["a"]), np.array([1 + 1j]), np.array(["2000-01-01"], "M8[s]")):
        with pytest.raises(DataError, match="expected numbers"):
            V.check_dtype(xr.DataArray(bad), "v")
    V.check_dtype(xr.DataArray(np.array([True])), "mask")


def test_finite_values_eager_and_when_computed():
    times = pd.date_range("2000", periods=3, freq="D").values
    with pytest.raises(DataError, match="2 infinite .*-inf, first at 2000-01-02"):
        V.check_finite(np.array([[0.0, np.nan], [-np.inf, 1e31], [1.0, 2.0]]), "x", times)
    V.check_finite(np.array([np.nan, 1e29]), "x")
    lazy = xr.DataArray(dask.array.from_array(np.array([1.0, np.inf, 2.0]), chunks=1), dims="t")
    checked = V.finite_checked(lazy, "obs")                        # nothing computed yet
    with pytest.raises(DataError, match="obs holds 1 infinite"):
        checked.compute()


def test_range_check_in_normalised_units():
    ch = layout.Channel("t2m", method="zscore", offset=280.0, scale=5.0, attrs={"units": "K"},
                        range=(-2.0, 2.0))                           # trained on 270 .. 290 K
    ok = ch.normalise(np.array([250.0, 310.0]))                    # within the range widened by 1x
    V.check_range(ok, ch, 1.0)
    with pytest.raises(DataError, match=r"251 .. 311.*270 .. 290 K.*250 .. 310.*range_margin=1"):
        V.check_range(ch.normalise(np.array([251.0, 311.0])), ch, 1.0)
    celsius = ch.normalise(np.array([-3.0, 17.0]))
    with pytest.raises(DataError, match=r"would fit if they were in 'degC'.*K = degC \+ 273.15"):
        V.check_range(celsius, ch, 1.0)
    V.check_range(celsius, ch, None)                                # None skips
    V.check_range(celsius, layout.Channel("t2m"), 1.0)             # no stored range: skipped
    assert V.training_range(0.0, 0.0, 1.0) == (-1.0, 1.0)          # a constant field


def test_time_zones_dates_and_calendars():
    assert V.init_labels(datetime.date(2000, 1, 2)) == "2000-01-02T00:00:00"
    assert V.init_labels(slice(datetime.date(2000, 1, 2), None)) == slice("2000-01-02T00:00:00", None)
    assert V.init_labels(["2000-01-02", datetime.date(2000, 1, 3)]) == ["2000-01-02", "2000-01-03T00:00:00"]
    with pytest.raises(DataError, match="'2000-01-01T19:00:00'"):
        V.init_labels(pd.Timestamp("2000-01-02T00:00", tz="Etc/GMT-5"))
    with pytest.raises(DataError, match="time-zone aware"):
        V.init_labels("2000-01-02T00:00+05:00")
    with pytest.raises(DataError, match="time-zone aware"):
        V.check_time_index(pd.date_range("2000", periods=2, tz="UTC"))
    assert V.same_calendar("gregorian", "proleptic_gregorian") and V.same_calendar("365_day", "noleap")
    spec = layout.DataSpec(inputs=(layout.Channel("a"),), targets=(layout.Channel("a"),),
                           grid=layout.Grid.xy(range(2), range(2)), step=layout.TimeStep(6, "hours"),
                           context=1, lead=1, calendar_name="standard")
    with pytest.raises(DataError, match="convert_calendar\\('standard'\\)"):
        V.check_calendar("360_day", spec)
    monthly = layout.DataSpec(inputs=spec.inputs, targets=spec.targets, grid=spec.grid,
                              step=layout.TimeStep(1, "months"), context=1, lead=1)
    V.check_calendar("360_day", monthly)                             # months: any calendar


def test_archive_grids_and_metric_pairs():
    a = xr.Dataset(coords={"time": [0, 1], "lat": [0.0, 1.0], "lon": [0.0, 1.0]})
    V.check_same_grid(a, a.assign_coords(time=[2, 3]), "a.nc", "b.nc", time="time")
    with pytest.raises(DataError, match="b.nc is on another grid than a.nc: lat"):
        V.check_same_grid(a, a.assign_coords(lat=[0.0, 2.0]), "a.nc", "b.nc", time="time")
    fc = xr.Dataset({"t": ("x", [1.0, 2.0], {"units": "K"}), "u": ("x", [1.0, 2.0], {"units": "m s-1"})})
    obs = xr.Dataset({"t": ("x", [1.0, 2.0], {"units": "kelvin"}), "u": ("x", [1.0, 2.0], {"units": "km h-1"})})
    with pytest.raises(DataError, match="'u' of the observations is in 'km h-1'.*m s-1 = 0.277778 \\* km h-1"):
        V.check_pair(fc, obs)
    V.check_pair(fc.t, obs.t)
