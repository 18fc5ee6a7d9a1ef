"""ICAR-ENSO reader on small synthetic files with the real layout (rows of 36 overlapping months)."""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr

from xearthformer.data import icar_enso
from xearthformer.errors import DataError

GROUPS = (("CMIP6", 2, 4), ("CMIP5", 3, 3))   # 2 models x 4 rows, then 3 models x 3 rows
LAT = np.arange(-55.0, 61.0, 5.0)              # the real 5-degree grid: 24 x 72
LON = np.arange(0.0, 360.0, 5.0)
VARIABLES = ("sst", "t300", "ua", "va")


def make_icar_enso(folder: Path, groups=GROUPS, prefix: str = "CMIP", seed: int = 0) -> dict:
    """Write ``<prefix>_train.nc``/``<prefix>_label.nc``; returns the true series per model.

    Every model gets its own random monthly series; row y of a model holds its months
    12y ... 12y + 35, so consecutive rows overlap by 24 months, as in the real files.
    """
    rng = np.random.default_rng(seed)
    truth, rows = {}, {v: [] for v in (*VARIABLES, "nino")}
    for name, n_models, n_rows in groups:
        for m in range(n_models):
            length = 12 * (n_rows + 2)
            series = {v: rng.normal(size=(length, LAT.size, LON.size)).astype(np.float32) for v in VARIABLES}
            series["nino"] = rng.normal(size=length).astype(np.float32)
            truth[f"{name}-{m + 1}" if n_models > 1 else name] = series
            for v, s in series.items():
                rows[v] += [s[12 * y:12 * y + 36] for y in range(n_rows)]
    n = len(rows["nino"])
    train = xr.Dataset(
        {v: (("year", "month", "lat", "lon"), np.stack(rows[v])) for v in VARIABLES},
        coords={"year": np.arange(1, n + 1), "month": np.arange(1, 37), "lat": LAT, "lon": LON},
    )
    label = xr.Dataset({"nino": (("year", "month"), np.stack(rows["nino"]))},
                       coords={"year": np.arange(1, n + 1), "month": np.arange(1, 37)})
    folder.mkdir(parents=True, exist_ok=True)
    train.to_netcdf(folder / f"{prefix}_train.nc")
    label.to_netcdf(folder / f"{prefix}_label.nc")
    return truth


@pytest.fixture
def enso_dir(tmp_path):
    folder = tmp_path / "icar_enso_2021" / icar_enso.SUBFOLDER
    return tmp_path / "icar_enso_2021", make_icar_enso(folder)


def test_unfold_gives_contiguous_months():
    for n in (1, 2, 3, 4, 5, 151, 140):
        rows = np.arange(n)[:, None] * 12 + np.arange(36)
        np.testing.assert_array_equal(icar_enso.unfold(rows), np.arange(12 * (n + 2)))


def test_open_round_trips_series_per_model(enso_dir):
    root, truth = enso_dir
    with dask.config.set(scheduler="sync"):
        ds = icar_enso.open_icar_enso(root, groups=GROUPS)
    assert ds.sst.dims == ("model", "time", "lat", "lon")
    assert ds.model.values.tolist() == ["CMIP6-1", "CMIP6-2", "CMIP5-1", "CMIP5-2", "CMIP5-3"]
    assert ds.n_months.values.tolist() == [72, 72, 60, 60, 60]
    assert ds.sst.chunks[0] == (1,) * 5            # lazy, one chunk per model
    assert ds.time.values[0] == np.datetime64("1850-01-01")
    assert (ds.time.dt.month.values == np.tile(np.arange(1, 13), 6)).all()
    for label, series in zip(ds.model.values, truth.values()):
        one = ds.sel(model=label)
        n = int(one.n_months)
        for v in (*VARIABLES, "nino"):
            np.testing.assert_array_equal(one[v].values[:n], series[v])
            assert np.isnan(one[v].values[n:]).all()   # padding never mixes models


def test_windows_official_cut_and_split(enso_dir):
    root, truth = enso_dir
    ds = icar_enso.open_icar_enso(root, groups=GROUPS)
    win = icar_enso.icar_enso_windows(ds, split="test")
    series = truth["CMIP5-3"]
    assert win.sst.dims == ("sample", "step", "lat", "lon")
    assert win.sst.shape == (60 - 25, 26, 24, 48)
    assert win.lon.values[[0, -1]].tolist() == [95.0, 330.0]
    keep = (LON >= 95) & (LON <= 330)
    for s in (0, 7, 34):
        np.testing.assert_array_equal(win.sst.isel(sample=s).values, series["sst"][s:s + 26][..., keep])
        np.testing.assert_array_equal(win.nino_target.isel(sample=s).values, series["nino"][s + 12:s + 24])
    assert win.step.values[[0, 11, 12, -1]].tolist() == [-11, 0, 1, 14]
    assert win.init_time.values[0] == ds.time.values[11]
    assert set(win.model.values) == {"CMIP5-3"}
    val = icar_enso.icar_enso_windows(ds, split="val")
    train = icar_enso.icar_enso_windows(ds, split="train")
    assert set(val.model.values) == {"CMIP5-2"}
    assert train.sizes["sample"] == 2 * 47 + 35 and list(dict.fromkeys(train.model.values)) == [
        "CMIP6-1", "CMIP6-2", "CMIP5-1"]
    strided = icar_enso.icar_enso_windows(ds, split="test", stride=10)
    assert strided.window_start.values.tolist() == [0, 10, 20, 30]


@pytest.mark.official
def test_windows_match_official_loader(enso_dir, monkeypatch):
    # the official fold + cmip_dataset (test oracle) on the same rows: same samples, same order
    config = types.ModuleType("earthformer.config")
    config.cfg = types.SimpleNamespace(datasets_dir=os.devnull)
    lightning = types.ModuleType("pytorch_lightning")
    lightning.LightningDataModule = object
    monkeypatch.setitem(sys.modules, "earthformer.config", config)
    monkeypatch.setitem(sys.modules, "pytorch_lightning", lightning)
    monkeypatch.delitem(sys.modules, "earthformer.datasets.enso.enso_dataloader", raising=False)
    official = importlib.import_module("earthformer.datasets.enso.enso_dataloader")

    root, _ = enso_dir
    folder = root / icar_enso.SUBFOLDER
    raw = xr.open_dataset(folder / "CMIP_train.nc")
    raw = raw.sel(lon=raw.lon[(raw.lon >= 95) & (raw.lon <= 330)])
    nino = xr.open_dataset(folder / "CMIP_label.nc").nino.values
    sst5 = official.data_transform(raw.sst.values[8:], num_years_per_model=3)
    nino5 = official.data_transform(nino[8:], num_years_per_model=3)
    ref = official.cmip_dataset(None, None, sst5[..., :-2], nino5[..., :-2], samples_gap=1,
                                in_len=12, out_len=14)
    ds = icar_enso.open_icar_enso(root, groups=GROUPS)
    win = icar_enso.icar_enso_windows(ds.isel(model=[2, 3, 4]), split="train")   # CMIP5-1 only
    assert win.sizes["sample"] == len(ref)
    np.testing.assert_array_equal(icar_enso.scale_sst(win.sst.values), ref.sst)
    np.testing.assert_array_equal(win.nino_target.values, ref.target_nino)


def test_soda_and_errors(tmp_path):
    truth = make_icar_enso(tmp_path / "soda", groups=(("SODA", 1, 5),), prefix="SODA")
    ds = icar_enso.open_icar_enso(tmp_path / "soda", source="soda", groups=(("SODA", 1, 5),),
                                  variables=["sst"], start_year=1871)
    assert list(ds.data_vars) == ["sst", "nino"] and ds.model.values.tolist() == ["SODA"]
    np.testing.assert_array_equal(ds.sst.values[0], truth["SODA"]["sst"])
    assert ds.time.values[0] == np.datetime64("1871-01-01")
    with pytest.raises(DataError, match="needs >= 3 models"):
        icar_enso.icar_enso_windows(ds, split="test")
    assert icar_enso.icar_enso_windows(ds, split=None).sizes["sample"] == 84 - 25
    with pytest.raises(DataError, match="pass groups="):
        icar_enso.open_icar_enso(tmp_path / "soda", source="soda")     # real layout: 100 rows
    with pytest.raises(DataError, match="enso_round1_train_20210201"):
        icar_enso.open_icar_enso(tmp_path / "nowhere")
    with pytest.raises(DataError, match="split"):
        icar_enso.split_models(["a", "b", "c"], "validation")


def test_scaling_round_trip():
    x = np.linspace(icar_enso.SST_MIN, icar_enso.SST_MAX, 7, dtype=np.float32)
    y = icar_enso.scale_sst(x)
    assert y.dtype == np.float32 and y.min() == 0 and abs(y.max() - 1) < 1e-7
    np.testing.assert_allclose(icar_enso.unscale_sst(y), x, atol=1e-5)
