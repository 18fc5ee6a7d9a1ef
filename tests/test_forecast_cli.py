"""``xearthformer forecast``: archive in, Zarr/NetCDF out, resumable after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr
import zarr

from xearthformer import cf, checkpoint, cli
from xearthformer import archive as A
from xearthformer import forecast as F

from tests.test_forecast import make_data, make_forecaster

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Four NetCDF files of 10 six-hourly steps each, and a bundle trained on nothing."""
    root = tmp_path_factory.mktemp("archive")
    ds = make_data(n_time=40)
    for k in range(4):
        ds.isel(time=slice(10 * k, 10 * k + 10)).to_netcdf(root / f"part{k}.nc")
    model = make_forecaster(ds)
    checkpoint.save(model, root / "model.xef")
    return root, ds, model


def run_cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "xearthformer", "forecast", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def done_ranges(store) -> list:
    try:
        return list(zarr.open_group(str(store), mode="r").attrs.get(A.DONE_ATTR, []))
    except Exception:  # the store does not exist yet
        return []


def test_kill_and_resume_is_bit_identical(tmp_path, archive):
    root, _, _ = archive
    common = ["--model", str(root / "model.xef"), "--input", str(root / "*.nc"), "--chunk", "1",
              "--batch-size", "1", "--no-progress"]
    n_chunks = 40 - 3                                      # every init time with a full context

    killed = tmp_path / "killed.zarr"
    proc = run_cli(*common, "--output", str(killed))
    deadline = time.time() + 120
    while len(done_ranges(killed)) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    at_kill = done_ranges(killed)
    assert 1 <= len(at_kill) < n_chunks, "the run must be killed part-way"

    resumed = run_cli(*common, "--output", str(killed))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"{len(at_kill)} skipped" in out or f"({len(at_kill)} chunks)" in out, out

    clean = tmp_path / "clean.zarr"
    straight = run_cli(*common, "--output", str(clean))
    out2, err2 = straight.communicate(timeout=300)
    assert straight.returncode == 0, err2
    assert "0 skipped" in out2

    # nothing lost, nothing duplicated, bit-for-bit identical data
    expected = sorted([i, i + 1] for i in range(n_chunks))
    assert sorted(done_ranges(killed)) == expected == sorted(done_ranges(clean))
    a, b = cf.open_forecast(killed).load(), cf.open_forecast(clean).load()
    assert a.sizes["init_time"] == n_chunks and np.unique(a.init_time.values).size == n_chunks
    for name in a.variables:
        diff = np.asarray(a[name].values != b[name].values)
        bad = np.where(diff.reshape(diff.shape[0], -1).any(1))[0] if diff.ndim else diff
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=f"{name} {bad} {at_kill}")
    a.attrs.pop("history"), b.attrs.pop("history")
    xr.testing.assert_identical(a, b)
    assert not any(p.name.startswith("killed.zarr.partial") for p in tmp_path.iterdir())
    assert not list(killed.rglob("*.partial"))                     # no debris of the kill


def test_netcdf_output_and_summary(tmp_path, archive, capsys):
    root, ds, model = archive
    out = tmp_path / "nc"
    args = ["forecast", "--model", str(root / "model.xef"), "--input", str(root / "part*.nc"),
            "--output", str(out), "--format", "netcdf", "--init", "2000-01-03..2000-01-05",
            "--lead", "2", "--chunk", "4", "--no-progress"]
    assert cli.main(args) == 0
    summary = capsys.readouterr().out
    assert "12 init times forecast (3 chunks), 0 skipped" in summary
    files = sorted(out.glob("forecast_*.nc"))
    assert len(files) == 3 and (out / A.MARKER_FILE).is_file()
    back = xr.open_mfdataset(files, decode_timedelta=True).load()
    direct = F.forecast(ds, model, init=slice("2000-01-03", "2000-01-05"), lead=2)
    xr.testing.assert_allclose(back.t2m, direct.t2m, rtol=1e-6, atol=1e-4)
    assert back.sizes["lead_time"] == 2
    assert cli.main(args) == 0                                     # resume: all skipped
    assert "0 init times forecast (0 chunks), 12 skipped" in capsys.readouterr().out


def test_cli_errors_are_reported(tmp_path, archive, capsys):
    root, _, _ = archive
    code = cli.main(["forecast", "--model", str(root / "model.xef"), "--input", str(tmp_path / "none*.nc"),
                     "--output", str(tmp_path / "o.zarr")])
    assert code == 1
    assert "matches no file" in capsys.readouterr().err
