"""SEVIR reader on small synthetic files with the real layout (catalog CSV + N,H,W,T HDF5)."""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import dask
import h5py
import numpy as np
import pandas as pd
import pytest

from xearthformer.data import sevir
from xearthformer.errors import DataError


def _event_frames(seed: int, size: int, n_frames: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, n_frames), dtype=np.uint8)


def make_sevir(root: Path, size: int = 32, n_frames: int = 49) -> dict[tuple[str, int], np.ndarray]:
    """Write a tiny SEVIR archive; returns (file_name, file_index) -> event frames (H, W, T).

    Two files (2018 and 2019) and events that exercise every catalog rule: split dates on
    the boundaries, pct_missing > 0, a duplicated id, a non-vil row, R/S id order.
    """
    rows = [  # id, img_type, file, file_index, time_utc, pct_missing
        ("S100", "vil", 0, 0, "2018-07-01 10:00:00", 0.0),
        ("R200", "vil", 0, 1, "2018-12-31 23:00:00", 0.0),
        ("S101", "vil", 0, 2, "2019-01-01 00:00:00", 0.0),   # == train end: train
        ("S102", "vil", 0, 3, "2018-05-01 00:00:00", 0.5),   # missing data: dropped
        ("S103", "vil", 0, 4, "2018-05-02 00:00:00", 0.0),   # duplicated across splits: the
        ("S103", "vil", 1, 0, "2019-07-02 00:00:00", 0.0),   # date rule runs first, both kept
        ("S111", "vil", 1, 7, "2019-08-02 00:00:00", 0.0),   # duplicated in one split:
        ("S111", "vil", 0, 7, "2019-08-03 00:00:00", 0.0),   # both copies dropped
        ("S104", "ir069", 0, 5, "2018-05-03 00:00:00", 0.0),  # other sensor: ignored
        ("S105", "vil", 1, 1, "2019-03-01 00:00:00", 0.0),   # val
        ("S106", "vil", 1, 2, "2019-06-01 00:00:00", 0.0),   # == val end: val
        ("S107", "vil", 1, 3, "2019-06-01 00:05:00", 0.0),   # test
        ("R300", "vil", 1, 4, "2019-08-01 12:00:00", 0.0),   # test, sorts first
        ("S108", "vil", 1, 5, "2019-09-01 12:00:00", 0.0),   # test
        ("S109", "vil", 1, 6, "2019-09-02 12:00:00", 0.2),   # test but missing: dropped
        ("S110", "vil", 0, 6, "2019-09-03 12:00:00", 0.0),   # test, stored in the 2018 file
    ]
    files = ["vil/2018/SEVIR_VIL_STORMEVENTS_2018_0101_1231.h5",
             "vil/2019/SEVIR_VIL_STORMEVENTS_2019_0101_1231.h5"]
    offsets = ":".join(str(m) for m in (np.arange(n_frames) - n_frames // 2) * 5)
    table = pd.DataFrame(
        [{"id": r[0], "file_name": files[r[2]], "file_index": r[3], "img_type": r[1],
          "time_utc": r[4], "minute_offsets": offsets, "episode_id": 1.0, "event_id": 2.0,
          "pct_missing": r[5]} for r in rows]
    )
    (root / "data").mkdir(parents=True)
    table.to_csv(root / "CATALOG.csv", index=False)
    frames = {}
    for k, name in enumerate(files):
        path = root / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        n = 1 + max(r[3] for r in rows if r[2] == k)
        vil = np.stack([_event_frames(100 * k + i, size, n_frames) for i in range(n)])
        with h5py.File(path, "w") as f:
            f.create_dataset("id", data=np.array([f"id{k}{i}".encode() for i in range(n)]))
            f.create_dataset("vil", data=vil, chunks=(1, size, size, n_frames))
        frames.update({(name, i): vil[i] for i in range(n)})
    return frames


def event_frames(frames: dict, ds, event: str) -> np.ndarray:
    """The written frames of ``event`` as (T, H, W), found via the dataset's file coordinates."""
    row = ds.sel(event=event)
    return frames[(str(row.file_name.values), int(row.file_index.values))].transpose(2, 0, 1)


@pytest.fixture
def sevir_root(tmp_path):
    root = tmp_path / "sevir"
    return root, make_sevir(root)


@pytest.mark.parametrize(
    "split, expected",
    [("train", ["R200", "S100", "S101", "S103"]), ("val", ["S105", "S106"]),
     ("test", ["R300", "S103", "S107", "S108", "S110"])],
)
def test_catalog_rules_and_order(sevir_root, split, expected):
    root, _ = sevir_root
    cat = sevir.read_catalog(root / "CATALOG.csv", split=split)
    assert cat.index.tolist() == expected


def test_duplicate_rule_runs_after_date_rule(sevir_root):
    # official order: S103's 2018 copy is outside the test dates, so its 2019 copy is unique
    # there and kept; without dates both copies are dropped.
    root, _ = sevir_root
    assert "S103" in sevir.read_catalog(root / "CATALOG.csv", start="2019-06-01").index
    assert "S103" not in sevir.read_catalog(root / "CATALOG.csv").index
    assert "S111" not in sevir.read_catalog(root / "CATALOG.csv", split="test").index


def test_open_round_trips_files_lazily(sevir_root):
    root, frames = sevir_root
    with dask.config.set(scheduler="sync"):
        ds = sevir.open_sevir(root, split="test")
    assert ds.vil.dims == ("event", "time", "y", "x")
    assert ds.vil.shape == (5, 49, 32, 32)
    assert ds.vil.chunks[0] == (1,) * 5   # one chunk per event: nothing read yet
    assert ds.vil.dtype == np.uint8
    assert (ds.sel(event="S103").file_index.values, ds.sel(event="S110").file_index.values) == (0, 6)
    for event in ds.event.values:
        np.testing.assert_array_equal(ds.vil.sel(event=event).values, event_frames(frames, ds, event))
    assert ds.time.values[0] == np.timedelta64(-120, "m")
    assert ds.valid_time.sel(event="R300").values[24] == np.datetime64("2019-08-01T12:00")


def test_windows_match_official_cut(sevir_root):
    root, frames = sevir_root
    ds = sevir.open_sevir(root, split="test")
    win = sevir.sevir_windows(ds)
    assert win.vil.dims == ("sample", "step", "y", "x")
    assert win.sizes["sample"] == 5 * 3 and win.sizes["step"] == 25
    expected = [(e, s) for e in ["R300", "S103", "S107", "S108", "S110"] for s in (0, 12, 24)]
    assert list(zip(win.event.values, win.window_start.values)) == expected
    for i in (0, 4, 11, 14):
        event, s = expected[i]
        np.testing.assert_array_equal(win.vil.isel(sample=i).values,
                                      event_frames(frames, ds, event)[s:s + 25])
    # 13 inputs end at step 0; targets are the next 12 frames, 5 minutes apart
    assert (win.step.values <= np.timedelta64(0)).sum() == win.attrs["context"] == 13
    assert win.step.values[-1] == np.timedelta64(60, "m")
    # window k's last input frame is 12k + 12: offsets -60, 0, +60 minutes from time_utc
    np.testing.assert_array_equal(win.init_time.values[:3], np.datetime64("2019-08-01T12:00")
                                  + np.array([-60, 0, 60], dtype="timedelta64[m]"))


def test_windows_sizes_are_read_from_files(tmp_path):
    root = tmp_path / "small"
    frames = make_sevir(root, size=16, n_frames=30)
    ds = sevir.open_sevir(root, split="val")
    win = sevir.sevir_windows(ds, in_len=4, out_len=3, stride=10)
    assert win.vil.shape == (2 * 3, 7, 16, 16)       # starts 0, 10, 20 fit 30 frames
    np.testing.assert_array_equal(win.vil.isel(sample=5).values, event_frames(frames, ds, "S106")[20:27])


def import_official(monkeypatch, module: str):
    """Import an official data module without its config side effects.

    ``earthformer.config`` needs omegaconf (not installed) and creates folders on import, and
    the data modules only read ``cfg.datasets_dir`` from it; a stand-in module replaces it.
    """
    config = types.ModuleType("earthformer.config")
    config.cfg = types.SimpleNamespace(datasets_dir=os.devnull)
    monkeypatch.setitem(sys.modules, "earthformer.config", config)
    monkeypatch.delitem(sys.modules, module, raising=False)
    return importlib.import_module(module)


@pytest.mark.official
def test_official_oracle_order(sevir_root, monkeypatch):
    # the official SEVIRDataLoader (test oracle) yields the same windows in the same order
    official = import_official(monkeypatch, "earthformer.datasets.sevir.sevir_dataloader")
    SEVIRDataLoader = official.SEVIRDataLoader
    root, _ = sevir_root
    loader = SEVIRDataLoader(
        data_types=["vil"], seq_len=25, raw_seq_len=49, sample_mode="sequent", stride=12,
        batch_size=1, layout="NTHWC", num_shard=1, rank=0, split_mode="uneven",
        sevir_catalog=str(root / "CATALOG.csv"), sevir_data_dir=str(root / "data"),
        start_date=pd.Timestamp("2019-06-01").to_pydatetime(), end_date=None, shuffle=False,
        verbose=False, preprocess=True, rescale_method="01",
    )
    win = sevir.sevir_windows(root, split="test")
    assert len(loader) == win.sizes["sample"]
    for i in range(len(loader)):
        ref = loader._idx_sample(i)["vil"].numpy()[0, ..., 0]       # (25, H, W) in [0, 1]
        np.testing.assert_allclose(sevir.scale(win.vil.isel(sample=i).values), ref, rtol=0, atol=0)


def test_errors_say_what_to_fix(tmp_path):
    with pytest.raises(DataError, match="CATALOG.csv"):
        sevir.open_sevir(tmp_path, split="test")
    root = tmp_path / "s"
    make_sevir(root)
    (root / "data/vil/2019/SEVIR_VIL_STORMEVENTS_2019_0101_1231.h5").unlink()
    with pytest.raises(DataError, match="missing"):
        sevir.open_sevir(root, split="test")
    with pytest.raises(DataError, match="split"):
        sevir.read_catalog(root / "CATALOG.csv", split="valid")
    with pytest.raises(DataError, match="no SEVIR event"):
        sevir.sevir_windows(sevir.open_sevir(root, start="2030-01-01"))
    with pytest.raises(DataError, match="does not fit"):
        sevir.sevir_windows(root, split="train", in_len=40, out_len=12)
