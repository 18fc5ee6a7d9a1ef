"""``xearthformer forecast`` never deletes or mixes data: store records and markers, refusals on
resume (another model, changed inputs, other ensemble settings), ``--overwrite`` only onto our own
stores (moved aside until the new one is complete), outputs that hold an input, and ensembles
written in member blocks, resumable per (init range, member block) and bit-identical after a kill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr
import zarr

from xearthformer import archive as A
from xearthformer import checkpoint, cli
from xearthformer import forecast as F
from xearthformer import layout
from xearthformer.models import registry

from tests.test_forecast import make_data, make_forecaster
from tests.test_toy_family import make_data as make_toy_data
from tests.toy_family import TOY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Three NetCDF files of 4 six-hourly steps, and two different bundles for them."""
    root = tmp_path_factory.mktemp("archive")
    inputs = root / "inputs"
    inputs.mkdir()
    ds = make_data(n_time=12)
    for k in range(3):
        ds.isel(time=slice(4 * k, 4 * k + 4)).to_netcdf(inputs / f"part{k}.nc")
    for seed, name in ((0, "a.xef"), (1, "b.xef")):
        checkpoint.save(make_forecaster(ds, seed=seed), root / name)
    return root


def run(root, *args, model="a.xef", inputs=None):
    return cli.main(["forecast", "--model", str(root / model), "--input",
                     str(inputs or root / "inputs" / "part*.nc"), "--chunk", "3", "--no-progress", *args])


def arrays(path):
    group = zarr.open_group(str(path), mode="r")
    return {name: np.array(group[name]) for name in group.array_keys()}


def tree(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_the_store_records_what_it_holds(archive, tmp_path):
    out = tmp_path / "fc.zarr"
    assert run(archive, "--output", str(out)) == 0
    record = A.read_store_record(out)
    digest = checkpoint.read_metadata(archive / "a.xef")["bundle_sha256"]
    assert record["kind"] == A.STORE_KIND and record["bundle_sha256"] == digest
    assert [f[0] for f in record["inputs"]["files"]] == ["part0.nc", "part1.nc", "part2.nc"]
    assert record["inputs"]["files"][0][1] == (archive / "inputs" / "part0.nc").stat().st_size
    assert len(record["inputs"]["time_sha256"]) == 64 and record["inputs"]["n_time"] == 12
    assert record["chunks"] == {"init_time": 3, "member": None} and record["lead"] == 3
    assert record["init"]["count"] == 9 and record["settings"] == {}
    fc = xr.open_zarr(out)
    assert fc.attrs[F.DIGEST_ATTR] == digest                      # the forecast names its bundle
    assert sorted(zarr.open_group(str(out)).attrs[A.DONE_ATTR]) == [[0, 3], [3, 6], [6, 9]]


def test_resume_with_another_model_is_refused_and_the_store_untouched(archive, tmp_path, capsys):
    out = tmp_path / "fc.zarr"
    assert run(archive, "--output", str(out)) == 0
    before = arrays(out)
    capsys.readouterr()
    assert run(archive, "--output", str(out), model="b.xef") == 1
    err = capsys.readouterr().err
    assert "holds a different forecast" in err and "the model (bundle digest)" in err and "--overwrite" in err
    assert "Traceback" not in err
    after = arrays(out)
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    assert run(archive, "--output", str(out), "--lead", "2") == 1           # other settings: same
    assert "the lead: 3 in the store, 2 now" in capsys.readouterr().err


def test_resume_after_an_input_changed_is_refused(archive, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    shutil.copytree(archive / "inputs", inputs)
    out = tmp_path / "fc.zarr"
    assert run(archive, "--output", str(out), inputs=inputs / "part*.nc") == 0
    with xr.open_dataset(inputs / "part1.nc") as f:
        changed = f.load()
    changed["t2m"] = changed.t2m + 1.0
    changed.to_netcdf(tmp_path / "new.nc")
    os.replace(tmp_path / "new.nc", inputs / "part1.nc")
    capsys.readouterr()
    assert run(archive, "--output", str(out), inputs=inputs / "part*.nc") == 1
    err = capsys.readouterr().err
    assert "the input files: part1.nc" in err and ("modified" in err or "changed size" in err)
    os.remove(inputs / "part2.nc")
    assert run(archive, "--output", str(out), inputs=inputs / "part*.nc") == 1
    assert "part2.nc is gone" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["zarr", "netcdf"])
def test_overwrite_onto_foreign_data_is_refused_and_the_files_survive(archive, tmp_path, capsys, fmt):
    mine = tmp_path / "my_results"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("three years of work")
    (mine / "sub" / "field.nc").write_bytes(b"\x89HDF data")
    plain = tmp_path / "fc.zarr"
    plain.write_bytes(b"a plain file")
    before = tree(tmp_path)
    for target in (mine, plain):
        for extra in ((), ("--overwrite",)):
            assert run(archive, "--output", str(target), "--format", fmt, *extra) == 1
            err = capsys.readouterr().err
            assert "not an xearthformer forecast store" in err or "is an existing file" in err
            assert "Traceback" not in err
    assert tree(tmp_path) == before                                 # nothing deleted, nothing added


def test_output_that_is_contains_or_lies_inside_an_input_is_refused(archive, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    shutil.copytree(archive / "inputs", inputs)
    before = tree(inputs)
    for output in (inputs, tmp_path):                                # the input folder, a parent
        assert run(archive, "--output", str(output), "--overwrite", inputs=inputs / "part*.nc") == 1
        assert "could destroy the input" in capsys.readouterr().err
    store = tmp_path / "in.zarr"
    make_data(n_time=12).to_zarr(store)
    assert run(archive, "--output", str(store / "fc.zarr"), inputs=store) == 1
    assert "lies inside the input" in capsys.readouterr().err
    assert run(archive, "--output", str(store), "--overwrite", inputs=store) == 1
    assert tree(inputs) == before and (store / "zarr.json").exists() or (store / ".zgroup").exists()
    (tmp_path / "afile").write_text("x")
    assert run(archive, "--output", str(tmp_path / "afile" / "fc.zarr")) == 1
    assert "which is a file" in capsys.readouterr().err


class Interrupted(Exception):
    pass


def test_overwrite_keeps_the_old_store_until_the_new_one_is_complete(archive, tmp_path, monkeypatch):
    out = tmp_path / "fc.zarr"
    assert run(archive, "--output", str(out)) == 0
    old = arrays(out)
    calls = []
    mark = A._mark_done

    def killed_after_one(path, done):
        mark(path, done)
        calls.append(1)
        raise Interrupted("killed")

    monkeypatch.setattr(A, "_mark_done", killed_after_one)
    with pytest.raises(Interrupted):
        run(archive, "--output", str(out), "--overwrite", model="b.xef")
    monkeypatch.setattr(A, "_mark_done", mark)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("fc.zarr.replaced-")]
    assert len(aside) == 1                                           # the old store, intact, aside
    kept = arrays(aside[0])
    assert all(np.array_equal(kept[k], old[k]) for k in old)
    assert A.read_store_record(out)["bundle_sha256"] == checkpoint.read_metadata(archive / "b.xef")["bundle_sha256"]
    assert run(archive, "--output", str(out), model="b.xef") == 0      # resume the new one
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("fc.zarr.replaced-")]
    clean = tmp_path / "clean.zarr"
    assert run(archive, "--output", str(clean), model="b.xef") == 0
    a, b = arrays(out), arrays(clean)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_netcdf_folders_carry_the_same_marker(archive, tmp_path, capsys):
    out = tmp_path / "nc"
    assert run(archive, "--output", str(out), "--format", "netcdf") == 0
    record = json.loads((out / A.MARKER_FILE).read_text())
    assert record["format"] == "netcdf" and record == A.read_store_record(out)
    assert run(archive, "--output", str(out), "--format", "netcdf", model="b.xef") == 1
    assert "the model (bundle digest)" in capsys.readouterr().err
    assert run(archive, "--output", str(out), "--format", "zarr") == 1          # a NetCDF folder
    assert "is an xearthformer netcdf store" in capsys.readouterr().err
    assert run(archive, "--output", str(out), "--format", "netcdf", "--overwrite", model="b.xef") == 0
    assert A.read_store_record(out)["bundle_sha256"] == checkpoint.read_metadata(archive / "b.xef")["bundle_sha256"]


def test_a_store_from_before_records_is_not_resumed_blindly(archive, tmp_path, capsys):
    out = tmp_path / "fc.zarr"
    assert run(archive, "--output", str(out)) == 0
    del zarr.open_group(str(out), mode="r+").attrs[A.STORE_ATTR]       # as an older version wrote it
    assert run(archive, "--output", str(out)) == 1
    assert "kept no record" in capsys.readouterr().err
    assert run(archive, "--output", str(out), "--overwrite") == 0


# ----------------------------------------------------------------------------------------------
# ensembles in member blocks
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_archive(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "_FAMILIES", registry.families())
        registry.register_family(TOY)
        root = tmp_path_factory.mktemp("toy")
        (root / "inputs").mkdir()
        ds = make_toy_data(n_time=16)
        for k in range(2):
            ds.isel(time=slice(8 * k, 8 * k + 8)).to_netcdf(root / "inputs" / f"part{k}.nc")
        spec = layout.fit_spec(ds, "z", context=2, lead=2)
        net = registry.build("toy", "default", input_shape=spec.input_shape, target_shape=spec.target_shape)
        checkpoint.save(F.Forecaster(net, spec), root / "toy.xef")
        yield root, ds


def run_toy(root, *args):
    return cli.main(["forecast", "--model", str(root / "toy.xef"), "--input", str(root / "inputs" / "*.nc"),
                     "--no-progress", *args])


def test_ensemble_is_written_in_member_blocks(toy_archive, tmp_path):
    root, ds = toy_archive
    out = tmp_path / "ens.zarr"
    assert run_toy(root, "--output", str(out), "--members", "5", "--member-block", "2", "--chunk", "4") == 0
    group = zarr.open_group(str(out), mode="r")
    dims = xr.open_zarr(out).z.dims
    assert dims == ("init_time", "lead_time", "member", "site", "lat", "lon")
    assert group["z"].chunks[:3] == (4, 2, 2)                        # one chunk per (inits, member block)
    done = sorted(group.attrs[A.DONE_ATTR])
    assert len(done) == 4 * 3 and [0, 4, 0, 2] in done and [12, 15, 4, 5] in done
    record = A.read_store_record(out)
    assert record["members"] == [0, 1, 2, 3, 4] and record["chunks"] == {"init_time": 4, "member": 2}
    assert record["settings"]["seed"] == 0 and record["settings"]["sampling"] == {}
    model = checkpoint.load(root / "toy.xef")
    direct = F.ensemble(ds, model, members=5, progress=False, device="cpu")
    back = xr.open_zarr(out).z.load()
    np.testing.assert_allclose(back.values, direct.z.values, rtol=1e-6, atol=1e-6)
    nc = tmp_path / "ens_nc"
    assert run_toy(root, "--output", str(nc), "--format", "netcdf", "--members", "3",
                   "--member-block", "2", "--chunk", "8") == 0
    names = sorted(p.name for p in nc.glob("forecast_*.nc"))
    assert len(names) == 4 and names[0].endswith("_members0000-0001.nc") and names[1].endswith("_members0002-0002.nc")


def test_ensemble_resume_refuses_other_members_seed_or_sampling(toy_archive, tmp_path, capsys):
    root, _ = toy_archive
    out = tmp_path / "ens.zarr"
    base = ("--output", str(out), "--members", "4", "--member-block", "2", "--chunk", "5")
    assert run_toy(root, *base) == 0
    capsys.readouterr()
    for change, words in ((("--seed", "1"), "seed 0 in the store, 1 now"),
                          (("--sampling", "temperature=0.5"), "sampling"),
                          (("--member-block", "1"), "the chunking")):
        assert run_toy(root, *base, *change) == 1
        assert words in capsys.readouterr().err
    assert run_toy(root, "--output", str(out), "--members", "6", "--member-block", "2", "--chunk", "5") == 1
    assert "the members" in capsys.readouterr().err
    assert run_toy(root, *base) == 0                                  # the same: all skipped
    assert "0 init times forecast (0 chunks)" in capsys.readouterr().out


def test_ensemble_kill_and_resume_is_bit_identical(toy_archive, tmp_path):
    root, _ = toy_archive
    args = ["forecast", "--model", str(root / "toy.xef"), "--input", str(root / "inputs" / "*.nc"),
            "--members", "4", "--member-block", "2", "--chunk", "1", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", "TOY_SLEEP": "0.05"}
    killed = tmp_path / "killed.zarr"

    def done():
        try:
            return list(zarr.open_group(str(killed), mode="r").attrs.get(A.DONE_ATTR, []))
        except Exception:  # not created yet
            return []

    proc = subprocess.Popen([sys.executable, "-m", "tests.toy_cli", *args, "--output", str(killed)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(done()) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    at_kill = done()
    n_units = 15 * 2
    assert 2 <= len(at_kill) < n_units
    assert cli.main([*args, "--output", str(killed)]) == 0            # the fixture registered the toy
    clean = tmp_path / "clean.zarr"
    assert cli.main([*args, "--output", str(clean)]) == 0
    assert sorted(done()) == sorted(zarr.open_group(str(clean), mode="r").attrs[A.DONE_ATTR])
    assert len(done()) == n_units
    a, b = arrays(killed), arrays(clean)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not list(killed.rglob("*.partial"))
