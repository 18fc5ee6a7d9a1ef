"""Make the format-1 bundle fixture: a tiny Earthformer trained for one epoch on synthetic data.

Writes, next to this file:

* ``bundle_format1_tiny.xef`` -- the bundle, as ``xearthformer.save`` wrote it when the fixture was
  made (bundle format version 1);
* ``bundle_format1_tiny.npz`` -- the synthetic input (``sst``, ``time`` as int64 nanoseconds,
  ``lat``, ``lon``) and the forecast the bundle gave for it then (``forecast`` with dims
  (init_time, lead_time, lat, lon), ``init_time`` as int64 nanoseconds).

``tests/test_bundle_compat.py`` loads both and checks that today's code forecasts the same, so a
bundle written by an older xearthformer keeps working. Only the public API is used, so this script
still runs after internal modules move. Run it (from the repository root) only to replace the
fixture on purpose: ``.venv/bin/python tests/data/make_bundle_format1.py``. Since bundle format 2
(header checksum, training ranges) ``xearthformer.save`` no longer writes format 1: running it now
would replace the fixture by a format-2 bundle, so the committed file is the only format-1 witness.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

HERE = Path(__file__).resolve().parent
BUNDLE = HERE / "bundle_format1_tiny.xef"
EXPECTED = HERE / "bundle_format1_tiny.npz"


def synthetic_sst() -> xr.Dataset:
    """24 monthly 8 x 8 fields: a travelling wave on a seasonal cycle, one land (NaN) corner."""
    time = pd.date_range("2000-01-16", periods=24, freq="MS") + pd.Timedelta(days=15)
    lat = np.linspace(-17.5, 17.5, 8)
    lon = np.linspace(0.0, 315.0, 8)
    t = np.arange(24)[:, None, None]
    y = np.arange(8)[None, :, None]
    x = np.arange(8)[None, None, :]
    sst = 25.0 + 2.0 * np.sin(2 * np.pi * (x - 0.5 * t) / 8) * np.cos(y / 4) \
        + np.cos(2 * np.pi * t / 12)
    sst = sst.astype(np.float32)
    sst[:, :2, :2] = np.nan
    return xr.Dataset(
        {"sst": (("time", "lat", "lon"), sst, {"units": "degC", "standard_name": "sea_surface_temperature"})},
        coords={"time": time,
                "lat": ("lat", lat, {"units": "degrees_north", "standard_name": "latitude"}),
                "lon": ("lon", lon, {"units": "degrees_east", "standard_name": "longitude"})})


def main() -> None:
    import xearthformer as xef

    ds = synthetic_sst()
    model = xef.train(ds, preset="tiny", variables="sst", context=3, lead=2, epochs=1,
                      batch_size=4, val=None, seed=0, progress=False, device="cpu")
    xef.save(model, BUNDLE)
    fc = ds.earthformer.forecast(xef.load(BUNDLE), device="cpu", progress=False)
    np.savez(EXPECTED, sst=ds["sst"].values, time=ds["time"].values.astype("datetime64[ns]").astype(np.int64),
             lat=ds["lat"].values, lon=ds["lon"].values,
             forecast=fc["sst"].transpose("init_time", "lead_time", "lat", "lon").values,
             init_time=fc["init_time"].values.astype("datetime64[ns]").astype(np.int64))
    print(f"wrote {BUNDLE} ({BUNDLE.stat().st_size} bytes) and {EXPECTED} ({EXPECTED.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
