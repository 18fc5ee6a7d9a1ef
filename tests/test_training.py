"""xearthformer.train on labelled data: split without leaks, lazy windows, masked loss, CLI."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import xearthformer as xef
from xearthformer import layout
from xearthformer.checkpoint import load
from xearthformer.cli import main
from xearthformer.errors import DataError
from xearthformer.training.labelled import default_variables, train
from xearthformer.layout import is_lazy
from xearthformer.training.data import XarrayWindows, roll_augment, split_by_time


def sst_like(n_time: int = 30, seed: int = 0) -> xr.Dataset:
    """Monthly 'SST' on an 8x16 lat/lon grid: seasonal cycle + an eastward wave, land NaN."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_time)[:, None, None]
    lat = np.linspace(-35, 35, 8)
    lon = np.arange(0, 360, 22.5)
    wave = np.sin(2 * np.pi * (lon[None, None, :] / 360 * 2 - t / 6.0))
    values = 20 + 3 * np.cos(2 * np.pi * t / 12) * np.cos(np.deg2rad(lat))[None, :, None] + wave
    values = values + 0.1 * rng.normal(size=values.shape)
    values[:, 2:4, 5:8] = np.nan  # land
    return xr.Dataset(
        {"sst": (("time", "lat", "lon"), values.astype(np.float32),
                 {"standard_name": "sea_surface_temperature", "units": "degC"})},
        coords={"time": pd.date_range("2000-01-01", periods=n_time, freq="MS"),
                "lat": ("lat", lat, {"units": "degrees_north", "standard_name": "latitude"}),
                "lon": ("lon", lon, {"units": "degrees_east", "standard_name": "longitude"})},
    )


TINY = dict(preset="tiny", context=3, lead=2, batch_size=4, progress=False)


# -- the time split ----------------------------------------------------------------------------
@pytest.mark.parametrize("val", [0.3, "2001-10", slice("2001-10", None)])
def test_no_window_straddles_the_split(val):
    ds = sst_like()
    split = split_by_time(ds, val)
    spec = layout.fit_spec(ds, "sst", context=3, lead=2, period=split.train_period)
    first_val = split.val_data.time.values[0]
    assert first_val == np.datetime64("2001-10-01") or val == 0.3
    for inits, part, inside in ((layout.init_times(split.train_data, spec, targets=True), "train", True),
                                (layout.init_times(split.val_data, spec, targets=True), "val", False)):
        pos = ds.indexes["time"].get_indexer(inits)
        first = ds.time.values[pos - spec.context + 1]  # first context step of each window
        last = ds.time.values[pos + spec.lead]          # last target step
        if inside:
            assert (last < first_val).all(), part
        else:
            assert (first >= first_val).all(), part
    # every window of the record is on exactly one side or straddles: the straddling ones are dropped
    n_all = len(layout.init_times(ds, spec, targets=True))
    n_train = len(layout.init_times(split.train_data, spec, targets=True))
    n_val = len(layout.init_times(split.val_data, spec, targets=True))
    assert n_train + n_val == n_all - (spec.context + spec.lead - 1)


def test_split_errors_and_no_validation():
    ds = sst_like()
    assert split_by_time(ds, None).val_data is None
    with pytest.raises(DataError, match="fraction"):
        split_by_time(ds, 1.5)
    with pytest.raises(DataError, match="no validation"):
        split_by_time(ds, "2030-01")


def test_normalisation_and_land_come_from_the_training_period_only():
    ds = sst_like()
    poisoned = ds.copy(deep=True)
    poisoned["sst"][24:] = poisoned["sst"][24:] + 1000.0  # the validation period only
    kw = dict(TINY, epochs=1, val="2002-01", steps_per_epoch=1)
    a, b = train(ds, **kw), train(poisoned, **kw)
    mean = float(np.nanmean(ds.sst.values[:24]))
    std = float(np.nanstd(ds.sst.values[:24], ddof=0))
    for fc in (a, b):
        ch = fc.spec.inputs[0]
        assert ch.offset == pytest.approx(mean, rel=1e-5) and ch.scale == pytest.approx(std, rel=1e-4)
    assert a.metadata["training"]["train_period"][1].startswith("2001-12")
    assert a.metadata["training"]["val_period"][0].startswith("2002-01")
    # the same training windows and statistics give the same model: the poisoned val changes nothing
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)


# -- training ----------------------------------------------------------------------------------
def test_training_lowers_the_loss_and_the_model_forecasts(tmp_path):
    ds = sst_like(36)
    fc = ds.earthformer.fit(**TINY, epochs=6, val=0.25, lr=3e-3, checkpoint_dir=tmp_path, seed=1)
    hist = fc.metadata["training"]["history"]
    assert all(np.isfinite(hist["step_loss"]))  # land NaN never reaches the loss
    assert np.mean(hist["train_loss"][-2:]) < 0.7 * hist["train_loss"][0]
    assert fc.metadata["training"]["coslat_weighted_loss"] is True
    for name in ("best.xef", "last.xef", "last.pt", "best.pt", "loss_curve.png"):
        assert (tmp_path / name).is_file(), name
    best = load(tmp_path / "best.xef")
    assert best.metadata["training"]["epoch"] == fc.metadata["training"]["best_epoch"]
    out = ds.earthformer.forecast(fc, init=slice("2002-06", None))
    assert out.sst.dims == ("init_time", "lead_time", "lat", "lon")
    assert out.sst.isel(lat=slice(2, 4), lon=slice(5, 8)).isnull().all()  # land stays NaN
    assert np.isfinite(out.sst.isel(lat=0)).all()


def test_activation_checkpointing_trains_the_same():
    ds = sst_like()
    kw = dict(TINY, epochs=1, val=None, steps_per_epoch=3)
    a = train(ds, **kw)
    b = train(ds, activation_checkpointing=True, **kw)
    assert b.model.config.checkpoint_level == 2
    np.testing.assert_allclose(a.metadata["training"]["history"]["step_loss"],
                               b.metadata["training"]["history"]["step_loss"], rtol=1e-5)


def test_coslat_weights_follow_latitude():
    ds = sst_like()
    spec = layout.fit_spec(ds, "sst", context=3, lead=2)
    w = layout.area_weights(spec)
    cos = np.cos(np.deg2rad(ds.lat.values))
    np.testing.assert_allclose(w[:, 0] / w[0, 0], cos / cos[0], rtol=1e-6)


def test_default_variables_and_missing_ones():
    ds = sst_like()
    ds["note"] = ("time", np.arange(ds.sizes["time"]))
    assert default_variables(ds) == ["sst"]
    with pytest.raises(DataError, match="not found"):
        train(ds, variables=["t2m"], **TINY, epochs=1)


# -- lazy windows ------------------------------------------------------------------------------
def test_dask_windows_load_only_the_time_steps_of_the_batch():
    ds = sst_like()
    loaded: list[int] = []

    def frame(i: int) -> np.ndarray:
        loaded.append(i)
        return ds.sst.values[i:i + 1]

    import dask

    parts = [da.from_delayed(dask.delayed(frame)(i), shape=(1, 8, 16), dtype=np.float32)
             for i in range(ds.sizes["time"])]
    lazy = ds.copy()
    lazy["sst"] = (("time", "lat", "lon"), da.concatenate(parts), ds.sst.attrs)
    assert is_lazy(lazy) and not is_lazy(ds)
    spec = layout.fit_spec(ds, "sst", context=3, lead=2)
    inits = layout.init_times(ds, spec, targets=True)
    src = XarrayWindows(lazy, spec, inits)
    assert loaded == []  # building the source reads nothing
    x, y, m = src.get(np.array([20, 2]))
    # windows of init positions 4 and 22: steps 2..6 and 20..24 only
    assert sorted(set(loaded)) == [2, 3, 4, 5, 6, 20, 21, 22, 23, 24]
    ref = XarrayWindows(ds, spec, inits, cache=True).get(np.array([20, 2]))
    for got, want in zip((x, y, m), ref):
        np.testing.assert_array_equal(got, want)


def test_roll_augment_keeps_inputs_targets_and_mask_together():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 4, 8, 1)).astype(np.float32)
    mask = rng.random((3, 1, 4, 8, 1)) > 0.5
    y = x[:, -1:] * mask
    xa, ya, ma = roll_augment(flip_sign=True)(x, y, mask, np.random.default_rng(1))
    for i in range(3):
        k = next(k for k in range(8) if np.allclose(np.abs(np.roll(x[i], k, axis=2)), np.abs(xa[i])))
        sign = np.sign(xa[i].ravel()[0] / np.roll(x[i], k, axis=2).ravel()[0])
        np.testing.assert_allclose(ya[i], sign * np.roll(y[i], k, axis=2))
        np.testing.assert_array_equal(ma[i], np.roll(mask[i], k, axis=2))


# -- command line ------------------------------------------------------------------------------
def test_cli_train_writes_a_loadable_bundle(tmp_path):
    ds = sst_like()
    ds.isel(time=slice(0, 15)).to_netcdf(tmp_path / "a.nc")
    ds.isel(time=slice(15, None)).to_netcdf(tmp_path / "b.nc")
    out = tmp_path / "m.xef"
    rc = main(["train", "--input", str(tmp_path / "*.nc"), "--variables", "sst", "--preset", "tiny",
               "--output", str(out), "--context", "3", "--lead", "2", "--epochs", "1", "--batch-size", "4",
               "--val", "0.3", "--set", "num_global_vectors=1", "--checkpoint-dir", str(tmp_path / "ck")])
    assert rc == 0
    fc = load(out)
    assert fc.context == 3 and fc.lead == 2 and fc.model.config.num_global_vectors == 1
    assert fc.metadata["training"]["windows"]["train"] > 0
    assert (tmp_path / "ck" / "last.pt").is_file()
    assert isinstance(fc, xef.Forecaster)


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_with_ddp(tmp_path):
    """`torchrun --nproc_per_node 2 -m xearthformer train` on CPU (gloo): one bundle, written once."""
    import os
    import subprocess
    import sys

    sst_like().to_netcdf(tmp_path / "a.nc")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "xearthformer", "train", "--input", str(tmp_path / "a.nc"), "--variables", "sst",
           "--preset", "tiny", "--output", str(tmp_path / "m.xef"), "--context", "3", "--lead", "2",
           "--epochs", "1", "--batch-size", "4", "--val", "0.3"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("wrote ") == 1  # rank 0 only
    fc = load(tmp_path / "m.xef")
    assert fc.metadata["training"]["world_size"] == 2
