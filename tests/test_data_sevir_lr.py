"""SEVIR-LR reader: PreDiff's downsampling of SEVIR and its stored layout, on synthetic files written
here with the real layouts, checked against a loop-by-loop downsampling."""

from __future__ import annotations

import shutil
from pathlib import Path

import dask
import h5py
import numpy as np
import pandas as pd
import pytest

from tests.test_data_sevir import make_sevir
from xearthformer.data import sevir, sevir_lr
from xearthformer.errors import DataError

TEST_EVENTS = ["R300", "S103", "S107", "S108", "S110"]


def brute_downsample(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, T) SEVIR codes -> (N, ceil(H/3), ceil(W/3), ceil(T/2)), block by block: the
    maximum of the pixels of each 3 x 3 block (a block cut by the edge: those present)."""
    n, h, w, t = frames.shape
    kept = frames[..., ::2]
    out = np.zeros((n, -(-h // 3), -(-w // 3), kept.shape[-1]), frames.dtype)
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            out[:, i, j] = kept[:, 3 * i:3 * i + 3, 3 * j:3 * j + 3].max(axis=(1, 2))
    return out


def make_sevir_lr(sevir_root: Path, lr_root: Path) -> None:
    """Write what PreDiff's downsample_sevir.py writes from ``sevir_root``: the catalog copied as
    it is, and ``data/<file_name>`` with one ``vil`` dataset (N, H/3, W/3, 25), no ``id``."""
    (lr_root / "data").mkdir(parents=True)
    shutil.copyfile(sevir_root / "CATALOG.csv", lr_root / "CATALOG.csv")
    for path in sorted((sevir_root / "data").rglob("*.h5")):
        name = path.relative_to(sevir_root / "data")
        with h5py.File(path, "r") as f:
            low = brute_downsample(f["vil"][:])
        (lr_root / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(lr_root / "data" / name, "w") as f:
            f.create_dataset("vil", data=low, maxshape=(None, *low.shape[1:]))


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("sevirlr")
    frames = make_sevir(base / "sevir", size=48)
    make_sevir_lr(base / "sevir", base / "sevir_lr")
    return base / "sevir", base / "sevir_lr", frames


def expected_lr(frames: dict, ds, event: str) -> np.ndarray:
    """The brute-force SEVIR-LR frames (T, H, W) of ``event``."""
    row = ds.sel(event=event)
    raw = frames[(str(row.file_name.values), int(row.file_index.values))]
    return brute_downsample(raw[None])[0].transpose(2, 0, 1)


def test_downsample_matches_brute_force_on_odd_shapes():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 7, 10, 11), dtype=np.uint8)          # (N, T, H, W)
    got = sevir_lr.downsample(x)
    ref = brute_downsample(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    assert got.shape == (2, 4, 4, 4) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, ref)
    with pytest.raises(DataError, match="T, H, W"):
        sevir_lr.downsample(np.zeros((3, 3)))


@pytest.mark.parametrize("which", ["sevir", "lr"])
def test_both_layouts_give_the_official_downsampling(roots, which):
    sevir_root, lr_root, frames = roots
    root = sevir_root if which == "sevir" else lr_root
    with dask.config.set(scheduler="sync"):
        ds = sevir_lr.open_sevir_lr(root, split="test")
    assert ds.vil.dims == ("event", "time", "y", "x") and ds.vil.shape == (5, 25, 16, 16)
    assert ds.vil.dtype == np.uint8 and ds.vil.chunks[0] == (1,) * 5     # lazy, one chunk per event
    assert ds.event.values.tolist() == TEST_EVENTS and ds.attrs["source"] == "SEVIR-LR"
    for event in TEST_EVENTS:
        np.testing.assert_array_equal(ds.vil.sel(event=event).values, expected_lr(frames, ds, event))
    # 25 frames 10 minutes apart, -120 .. +120 minutes around time_utc (the copied catalog lists 49)
    np.testing.assert_array_equal(ds.time.values, np.arange(-120, 121, 10).astype("timedelta64[m]"))
    assert ds.valid_time.sel(event="R300").values[12] == np.datetime64("2019-08-01T12:00")
    assert ds.y.values.tolist() == list(range(16))


def test_windows_follow_prediff_config(roots):
    sevir_root, lr_root, frames = roots
    win = sevir_lr.sevir_lr_windows(lr_root, split="test")
    assert win.vil.dims == ("sample", "step", "y", "x") and win.sizes["sample"] == 5 * 3
    assert win.sizes["step"] == 13 and (win.attrs["context"], win.attrs["lead"]) == (7, 6)
    expected = [(e, s) for e in TEST_EVENTS for s in (0, 6, 12)]
    assert list(zip(win.event.values, win.window_start.values)) == expected
    ds = sevir_lr.open_sevir_lr(lr_root, split="test")
    for i in (0, 5, 14):
        event, s = expected[i]
        np.testing.assert_array_equal(win.vil.isel(sample=i).values, expected_lr(frames, ds, event)[s:s + 13])
    assert win.step.values[-1] == np.timedelta64(60, "m") and win.step.values[6] == np.timedelta64(0)
    # last context frame of window k is frame 6k + 6: -60, 0, +60 minutes from time_utc
    np.testing.assert_array_equal(win.init_time.values[:3], np.datetime64("2019-08-01T12:00")
                                  + np.array([-60, 0, 60], dtype="timedelta64[m]"))
    # the windows of the full-resolution folder are the same numbers
    np.testing.assert_array_equal(sevir_lr.sevir_lr_windows(sevir_root).vil.values, win.vil.values)


def test_trainval_scaled_and_other_grids(roots, tmp_path):
    sevir_root, _, frames = roots
    ds = sevir_lr.open_sevir_lr(sevir_root, split="trainval", scaled=True)
    assert ds.event.values.tolist() == ["R200", "S100", "S101", "S103", "S105", "S106"]
    assert ds.vil.dtype == np.float32 and ds.vil.attrs["units"] == "1"
    assert "dtype" not in ds.vil.encoding                  # written files keep the floats
    np.testing.assert_array_equal(ds.vil.sel(event="S105").values,
                                  sevir.scale(expected_lr(frames, ds, "S105")))
    # a grid that 3 does not divide: the edge blocks hold what is there (block_reduce's padding)
    odd = make_sevir(tmp_path / "odd", size=20)
    small = sevir_lr.open_sevir_lr(tmp_path / "odd")
    assert small.vil.shape[2:] == (7, 7)
    np.testing.assert_array_equal(small.vil.sel(event="S108").values, expected_lr(odd, small, "S108"))


def test_errors_say_what_to_fix(tmp_path):
    make_sevir(tmp_path / "short", size=6, n_frames=30)
    with pytest.raises(DataError, match="neither SEVIR .49. nor SEVIR-LR .25.*resolution="):
        sevir_lr.open_sevir_lr(tmp_path / "short")
    as_stored = sevir_lr.open_sevir_lr(tmp_path / "short", resolution="lr")
    assert as_stored.vil.shape[1:] == (30, 6, 6)
    # the catalog lists 30 offsets for 30 frames: they are used as they are
    assert as_stored.time.values[1] - as_stored.time.values[0] == np.timedelta64(5, "m")
    with pytest.raises(DataError, match="split"):
        sevir_lr.open_sevir_lr(tmp_path / "short", split="val")
    with pytest.raises(DataError, match="resolution"):
        sevir_lr.open_sevir_lr(tmp_path / "short", resolution="hr")


def test_catalog_without_minute_offsets(roots, tmp_path):
    # without the column the 25 stored frames are centred on time_utc, 10 minutes apart
    _, lr_root, _ = roots
    shutil.copytree(lr_root, tmp_path / "lr")
    cat = pd.read_csv(tmp_path / "lr" / "CATALOG.csv").drop(columns="minute_offsets")
    cat.to_csv(tmp_path / "lr" / "CATALOG.csv", index=False)
    ds = sevir_lr.open_sevir_lr(tmp_path / "lr")
    np.testing.assert_array_equal(ds.time.values, np.arange(-120, 121, 10).astype("timedelta64[m]"))


def test_write_sevir_lr_writes_what_downsample_sevir_writes(roots, tmp_path):
    sevir_root, lr_root, _ = roots
    out = sevir_lr.write_sevir_lr(sevir_root, tmp_path / "written", events_per_read=3, progress=False)
    assert (out / "CATALOG.csv").read_bytes() == (lr_root / "CATALOG.csv").read_bytes()
    written = sorted(p.relative_to(out) for p in out.rglob("*.h5"))
    assert written == sorted(p.relative_to(lr_root) for p in lr_root.rglob("*.h5")) and len(written) == 2
    for name in written:
        with h5py.File(out / name, "r") as a, h5py.File(lr_root / name, "r") as b:
            assert list(a) == ["vil"] and a["vil"].dtype == np.uint8
            np.testing.assert_array_equal(a["vil"][:], b["vil"][:])
    with pytest.raises(DataError, match="exists"):
        sevir_lr.write_sevir_lr(sevir_root, out)

