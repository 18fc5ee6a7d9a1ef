"""A bundle written by an earlier xearthformer (format 1, committed as a fixture) still loads and
forecasts exactly what it forecast when it was written (``tests/data/make_bundle_format1.py``),
saying that its metadata is unchecked and that it has no training range to check inputs against."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import xearthformer as xef
from xearthformer.checkpoint import read_metadata
from xearthformer.errors import XEarthformerWarning

DATA = Path(__file__).parent / "data"


def _input(saved: np.lib.npyio.NpzFile) -> xr.Dataset:
    time = saved["time"].astype("datetime64[ns]")
    return xr.Dataset(
        {"sst": (("time", "lat", "lon"), saved["sst"], {"units": "degC",
                                                        "standard_name": "sea_surface_temperature"})},
        coords={"time": time,
                "lat": ("lat", saved["lat"], {"units": "degrees_north", "standard_name": "latitude"}),
                "lon": ("lon", saved["lon"], {"units": "degrees_east", "standard_name": "longitude"})})


def test_format1_bundle_loads_and_forecasts_as_when_it_was_written():
    saved = np.load(DATA / "bundle_format1_tiny.npz")
    meta = read_metadata(DATA / "bundle_format1_tiny.xef")
    assert meta["format_version"] == 1 and meta["model_class"] == "Earthformer"
    assert meta["bundle_sha256"] is None and not meta["header_checked"]
    with pytest.warns(XEarthformerWarning, match="format-1 bundle.*metadata.*unchecked"):
        model = xef.load(DATA / "bundle_format1_tiny.xef")
    with pytest.warns(XEarthformerWarning, match="no training range.*range check is skipped"):
        fc = _input(saved).earthformer.forecast(model, device="cpu", progress=False)
    np.testing.assert_array_equal(fc["init_time"].values.astype("datetime64[ns]").astype(np.int64),
                                  saved["init_time"])
    got = fc["sst"].transpose("init_time", "lead_time", "lat", "lon").values
    expected = saved["forecast"]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))  # the land corner stays NaN
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
