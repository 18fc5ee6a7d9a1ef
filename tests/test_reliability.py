"""Regression tests for the reliability issue: one section per defect class, each test naming the
symptom it guards against ("was: ..."). Every one failed on the code before the fix (see the
report of the branch that added them). Tiny data and untrained tiny models only."""

from __future__ import annotations

import datetime
import json
import shutil
import struct
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import xearthformer as xef
from xearthformer import checkpoint, cli, layout, metrics
from xearthformer import forecast as F
from xearthformer.errors import CheckpointError, DataError, XEarthformerError

from tests.test_forecast import make_data, make_forecaster
from tests.test_qa_regressions import monthly_forecast, sst_odd_names


@pytest.fixture(scope="module")
def data():
    return make_data(n_time=12)


@pytest.fixture(scope="module")
def model(data):
    return make_forecaster(data)


@pytest.fixture(scope="module")
def archive(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("archive")
    (root / "inputs").mkdir()
    for k in range(3):
        data.isel(time=slice(4 * k, 4 * k + 4)).to_netcdf(root / "inputs" / f"part{k}.nc")
    checkpoint.save(make_forecaster(data, seed=0), root / "a.xef")
    checkpoint.save(make_forecaster(data, seed=1), root / "b.xef")
    return root


def forecast_cli(root, *args, model="a.xef", inputs=None):
    return cli.main(["forecast", "--model", str(root / model), "--input",
                     str(inputs or root / "inputs" / "part*.nc"), "--chunk", "3", "--no-progress", *args])


def tree(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# -- 1. destructive --overwrite -----------------------------------------------------------------
def test_overwrite_never_deletes_a_folder_of_other_files_a_plain_file_or_the_inputs(archive, tmp_path, capsys):
    # was: --overwrite ran shutil.rmtree/os.remove on whatever --output named
    inputs = tmp_path / "inputs"
    shutil.copytree(archive / "inputs", inputs)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    (tmp_path / "plain.zarr").write_bytes(b"not a store")
    before = tree(tmp_path)
    for output in (tmp_path / "mine", tmp_path / "plain.zarr", inputs):
        code = forecast_cli(archive, "--output", str(output), "--overwrite", inputs=inputs / "part*.nc")
        assert code == 1 and "Traceback" not in capsys.readouterr().err
    assert tree(tmp_path) == before


def test_train_never_writes_its_bundle_over_other_data(archive, tmp_path, capsys):
    # was: save() replaced whatever --output named (an input file, other data) after training
    target = tmp_path / "results.nc"
    target.write_bytes(b"not a bundle")
    for output in (target, archive / "inputs" / "part0.nc"):
        before = output.read_bytes()
        code = cli.main(["train", "--input", str(archive / "inputs" / "*.nc"), "--output", str(output),
                         "--preset", "tiny", "--context", "4", "--lead", "2", "--epochs", "1", "--val", "none",
                         "--device", "cpu"])
        assert code == 1 and output.read_bytes() == before
        assert "--output" in capsys.readouterr().err


# -- 2. mixed stores on resume --------------------------------------------------------------------
def test_resume_with_another_model_or_changed_inputs_is_refused(archive, tmp_path, capsys):
    # was: the finished chunks were skipped silently: one store, forecasts of two models
    out = tmp_path / "fc.zarr"
    assert forecast_cli(archive, "--output", str(out)) == 0
    assert forecast_cli(archive, "--output", str(out), model="b.xef") == 1
    assert "different forecast" in capsys.readouterr().err
    inputs = tmp_path / "inputs"
    shutil.copytree(archive / "inputs", inputs)
    out2 = tmp_path / "fc2.zarr"
    assert forecast_cli(archive, "--output", str(out2), inputs=inputs / "part*.nc") == 0
    (inputs / "part2.nc").write_bytes((inputs / "part2.nc").read_bytes() + b"\0")   # grew
    assert forecast_cli(archive, "--output", str(out2), inputs=inputs / "part*.nc") == 1
    assert "part2.nc" in capsys.readouterr().err


def test_forecasts_carry_the_digest_of_their_bundle(archive, data):
    # was: nothing in a forecast said which bundle made it
    model = xef.load(archive / "a.xef")
    digest = checkpoint.read_metadata(archive / "a.xef")["bundle_sha256"]
    assert F.forecast(data, model, progress=False).attrs["xearthformer_bundle_sha256"] == digest
    assert F.forecast(data.chunk(time=4), model).attrs["xearthformer_bundle_sha256"] == digest


# -- 3. non-finite and absurd values --------------------------------------------------------------
def test_inf_in_forecast_input_is_refused_nan_is_missing(data, model):
    # was: +-inf was treated as missing (filled with 0), silently
    bad = data.copy(deep=True)
    bad.t2m[5, 3, 3] = np.inf
    with pytest.raises(DataError, match="infinite or fill-like.*inf, first at 2000-01-02T06:00:00"):
        F.forecast(bad, model, progress=False)
    gap = data.copy(deep=True)
    gap.t2m[5, 3, 3] = np.nan
    assert np.isfinite(F.forecast(gap, model, progress=False).t2m.values).all()


def test_undecoded_fill_values_are_refused(data, model, tmp_path):
    # was: one 9.96921e36 (read with mask_and_scale=False) turned the whole forecast into NaN
    holed = data.copy(deep=True)
    holed.t2m[5, 3, 3] = np.nan
    path = tmp_path / "holed.nc"
    holed.to_netcdf(path, encoding={"t2m": {"_FillValue": 9.969209968386869e36}})
    raw = xr.open_dataset(path, mask_and_scale=False)
    with pytest.raises(DataError, match="packing attribute.*_FillValue.*decode"):
        F.forecast(raw, model, progress=False)
    stripped = raw.copy()
    stripped.t2m.attrs.clear()                                # no attribute left to tell
    with pytest.raises(DataError, match="infinite or fill-like|outside what the model was trained on"):
        F.forecast(stripped, model, progress=False)
    decoded = xr.open_dataset(path)                           # the default read works
    assert np.isfinite(F.forecast(decoded, model, progress=False).t2m.values).all()


def test_training_on_inf_or_fill_values_stops_with_a_clear_error(data):
    # was: NaN/inf normalisation constants and a model whose every forecast was NaN
    for bad_value in (np.inf, 9.969209968386869e36, 1e20):
        bad = data.copy(deep=True)
        bad.t2m[2, 1, 1] = bad_value
        with pytest.raises(DataError, match="infinite or fill-like|not finite"):
            xef.train(bad, preset="tiny", context=4, lead=2, epochs=1, val=None, device="cpu",
                      progress=False)


def test_a_non_finite_loss_stops_training():
    # was: training went on with NaN weights and returned them
    from xearthformer.errors import TrainingError
    from xearthformer.training.loop import TensorSource, TrainConfig, fit

    class Diverges(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            return x * self.w * float("inf")

    x = np.ones((4, 2, 3, 3, 1), "f4")
    with pytest.raises(TrainingError, match="loss became (nan|inf) at epoch 1, step 1"):
        fit(Diverges(), TensorSource(x, x), config=TrainConfig(epochs=1, batch_size=2), device="cpu")


def test_real_extremes_pass_the_range_check():
    # the storms' strongest cells and a held-out year of real SST lie within the training range
    from xearthformer.data.samples import open_ostia
    from xearthformer.data.storms import storms

    radar = storms(n_times=288, size=(48, 48), seed=0)
    for normalization in ("zscore", {"vil": {"method": "scale", "offset": 0.0, "scale": 255.0}}):
        spec = layout.fit_spec(radar.isel(time=slice(0, 216)), "vil", context=6, lead=6,
                               normalization=normalization)
        test = radar.isel(time=slice(216, None))
        layout.encode_inputs(test, spec, layout.init_times(test, spec), range_margin=1.0)
    sst = open_ostia().load()
    spec = layout.fit_spec(sst, "surface_temperature", context=6, lead=6, period=slice("2006", "2009"),
                           normalization="anomaly")
    held_out = sst.sel(time=slice("2009-06", None))
    layout.encode_inputs(held_out, spec, layout.init_times(held_out, spec), range_margin=1.0)


# -- 4. units without attributes ------------------------------------------------------------------
def test_celsius_data_without_a_units_attribute_is_refused_and_named(data, model):
    # was: a plausible-looking, wrong forecast
    celsius = data.copy()
    celsius["t2m"] = data.t2m - 273.15
    celsius.t2m.attrs.pop("units")
    with pytest.raises(DataError, match=r"outside what the model was trained on.*'degC'.*K = degC \+ 273.15"):
        F.forecast(celsius, model, progress=False)


# -- 5. metrics ignore units and time resolution -----------------------------------------------------
def test_scores_refuse_forecast_and_observations_in_different_units():
    # was: rmse of a K forecast against degC observations returned ~276 K
    obs = sst_odd_names()
    fc, _ = monthly_forecast(obs)
    celsius = obs.copy()
    celsius["SST"] = (obs.SST - 273.15).assign_attrs(units="degC")
    with pytest.raises(DataError, match=r"in 'degC'.*in 'K'.*K = degC \+ 273.15"):
        metrics.rmse(fc, celsius)
    with pytest.raises(DataError, match="degC"):
        metrics.nino34_skill(fc, celsius)
    kelvin = obs.copy()
    kelvin.SST.attrs["units"] = "kelvin"                        # the same unit, spelled out
    xr.testing.assert_allclose(metrics.rmse(fc, kelvin), metrics.rmse(fc, obs))


def test_daily_observations_of_a_monthly_forecast_are_refused_or_averaged_when_asked():
    # was: matched to an arbitrary day of the month once one valid time was missing
    monthly = sst_odd_names(nt=36)
    fc, valid = monthly_forecast(monthly)
    days = pd.date_range("2000-01-01", "2002-12-31", freq="D")
    rng = np.random.default_rng(3)
    daily = xr.Dataset(
        {"SST": (("TIME", "LATITUDE", "LONGITUDE"),
                 300 + rng.normal(0, 1, (days.size, *monthly.SST.shape[1:])).astype("f4"),
                 dict(monthly.SST.attrs))},
        coords={"TIME": ("TIME", days, {"standard_name": "time"}),
                "LATITUDE": monthly.LATITUDE, "LONGITUDE": monthly.LONGITUDE})
    with pytest.raises(DataError, match="finer than the forecast.*obs_resample='mean'"):
        metrics.rmse(fc, daily)
    got = metrics.rmse(fc, daily, obs_resample="mean").SST.values
    means = daily.SST.resample(TIME="MS").mean()
    o = means.sel(TIME=pd.DatetimeIndex(valid.ravel()).to_period("M").to_timestamp()).values
    expected = np.sqrt(np.nanmean((fc.SST.values.astype(float) - o.reshape(fc.SST.shape)) ** 2, axis=(0, 2, 3)))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


# -- 6. bundle header integrity -------------------------------------------------------------------
def test_an_edited_normalisation_constant_is_refused(archive, tmp_path):
    # was: the checksum covered only the tensors: one edited digit shifted every forecast
    raw = (archive / "a.xef").read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + size])
    spec = json.loads(header["__metadata__"]["spec"])
    spec["inputs"][0]["offset"] += 100.0
    header["__metadata__"]["spec"] = json.dumps(spec)
    text = json.dumps(header).encode()
    edited = tmp_path / "edited.xef"
    edited.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + size:])
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        xef.load(edited)


# -- 7. unclear errors --------------------------------------------------------------------------
def test_irregular_steps_name_the_actual_gap():
    # was: "t0 -> t1 is 12 h, but t1 -> t2 is 6 h": the first two steps, not the gap
    times = pd.date_range("2000-01-01", periods=10, freq="6h").delete(1)
    with pytest.raises(DataError, match=r"step is 6 hours at 7 of 8 places, but 2000-01-01T00:00:00 -> "
                                        r"2000-01-01T12:00:00 is 12 hours"):
        layout.infer_step(times.values)
    months = pd.date_range("2000-01-16", periods=12, freq="MS").delete(5)
    with pytest.raises(DataError, match=r"1 month at 9 of 10 places.*2000-06-01.* -> 2000-08-01.* is 2 months"):
        layout.infer_step(months.values)


def test_a_nan_gap_in_training_data_skips_the_windows_and_says_how_many():
    # was: "window all NaN ... drop that time", and dropping it then failed as irregular
    ds = make_data(n_time=14)
    ds["t2m"][6:8] = np.nan
    # init 7 has no input (its context is steps 6, 7), init 5 no target (its leads are 6, 7)
    with pytest.warns(xef.errors.XEarthformerWarning, match="skipping 2 of 11 training windows"):
        model = xef.train(ds, preset="tiny", context=2, lead=2, epochs=1, val=None, device="cpu",
                          progress=False)
    assert model.metadata["training"]["windows"]["train"] == 9


def test_archive_files_on_another_grid_are_named(archive, tmp_path, capsys, data):
    # was: an xarray traceback from inside open_mfdataset
    inputs = tmp_path / "inputs"
    shutil.copytree(archive / "inputs", inputs)
    odd = data.isel(time=slice(8, 12)).assign_coords(lat=data.lat + 0.5)
    (inputs / "part2.nc").unlink()
    odd.to_netcdf(inputs / "part2.nc")
    assert forecast_cli(archive, "--output", str(tmp_path / "fc.zarr"), inputs=inputs / "part*.nc") == 1
    err = capsys.readouterr().err
    assert "part2.nc is on another grid than" in err and "part0.nc" in err and "Traceback" not in err
    (inputs / "part1.nc").write_text("not netcdf")
    assert forecast_cli(archive, "--output", str(tmp_path / "fc.zarr"), inputs=inputs / "part*.nc") == 1
    assert "cannot read" in capsys.readouterr().err


def test_a_directory_or_a_json_bomb_as_model_is_a_checkpoint_error(tmp_path):
    # was: IsADirectoryError / RecursionError tracebacks
    with pytest.raises(CheckpointError, match="is a directory"):
        xef.load(tmp_path)
    bomb = ("[" * 100_000 + "]" * 100_000).encode()
    (tmp_path / "bomb.xef").write_bytes(struct.pack("<Q", len(bomb)) + bomb)
    with pytest.raises(CheckpointError, match="nests too deeply"):
        xef.load(tmp_path / "bomb.xef")
    code = cli.main(["forecast", "--model", str(tmp_path), "--input", str(tmp_path / "x.nc"),
                     "--output", str(tmp_path / "o.zarr")])
    assert code == 1


def test_output_under_a_file_is_a_clean_error(archive, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert forecast_cli(archive, "--output", str(tmp_path / "file" / "fc.zarr")) == 1
    assert "which is a file" in capsys.readouterr().err


def test_dates_and_time_zones_of_init_times_and_coordinates(data, model):
    # was: "init time(s) datetime.date(...) not found" and "time values are not dates (dtype object)"
    at_midnight = F.forecast(data, model, init=datetime.date(2000, 1, 2), progress=False)
    np.testing.assert_array_equal(at_midnight.init_time.values, [np.datetime64("2000-01-02T00:00", "ns")])
    with pytest.raises(DataError, match="time-zone aware.*'2000-01-02T00:00:00'"):
        F.forecast(data, model, init=pd.Timestamp("2000-01-02T05:00", tz="Etc/GMT-5"), progress=False)
    aware = data.assign_coords(time=pd.DatetimeIndex(data.time.values).tz_localize("UTC"))
    with pytest.raises(DataError, match="time coordinate 'time' is time-zone aware.*tz_convert"):
        F.forecast(aware, model, progress=False)


def test_nino34_skill_with_forecast_and_observations_in_other_longitude_conventions():
    # was: "climatology grid differs from the SST grid" (rmse handled it)
    obs = sst_odd_names()
    fc, _ = monthly_forecast(obs)
    west = fc.assign_coords(LONGITUDE=((fc.LONGITUDE.values + 180) % 360) - 180).sortby("LONGITUDE")
    west.LONGITUDE.attrs.update(obs.LONGITUDE.attrs)
    np.testing.assert_allclose(metrics.nino34_skill(west, obs).cor.values,
                               metrics.nino34_skill(fc, obs).cor.values, rtol=1e-6)


def test_the_cli_prints_no_traceback_for_user_errors(archive, tmp_path, capsys):
    # was: OSError subclasses (a directory as --model) escaped as tracebacks
    bad = [["forecast", "--model", str(tmp_path), "--input", str(archive / "inputs" / "*.nc"),
            "--output", str(tmp_path / "o.zarr")],
           ["forecast", "--model", str(archive / "a.xef"), "--input", str(archive / "inputs" / "*.nc"),
            "--output", str(tmp_path / "o.zarr"), "--init", "1999"],
           ["forecast", "--model", str(archive / "a.xef"), "--input", str(archive / "inputs" / "*.nc"),
            "--output", str(tmp_path / "o.zarr"), "--members", "4"],
           ["train", "--input", str(archive / "inputs" / "*.nc"), "--output", str(tmp_path),
            "--context", "40", "--lead", "2", "--preset", "tiny"]]
    for argv in bad:
        assert cli.main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith(f"xearthformer {argv[0]}: error:") and "Traceback" not in err


# -- 8. defaults that serve -------------------------------------------------------------------
def test_default_validation_adapts_to_a_short_record():
    # was: DataError "the validation period has 2 time steps, fewer than one window"
    ds = make_data(n_time=12)
    model = xef.train(ds, preset="tiny", context=4, lead=2, epochs=1, device="cpu", progress=False)
    windows = model.metadata["training"]["windows"]
    assert windows["val"] >= 1 and windows["train"] >= 1


def test_every_default_works_on_the_smallest_record_that_holds_one_window():
    from tests.test_toy_family import make_data as toy_data
    from tests.toy_family import TOY
    from xearthformer.models import registry

    ds = make_data(n_time=6)                                    # context 4 + lead 2
    with pytest.warns(xef.errors.XEarthformerWarning, match="without validation"):
        model = xef.train(ds, preset="tiny", context=4, lead=2, epochs=1, device="cpu", progress=False)
    fc = ds.earthformer.forecast(model)
    assert fc.sizes["init_time"] == 3 and np.isfinite(fc.t2m.values).all()
    scores = metrics.rmse(fc, ds)
    assert np.isfinite(scores.t2m.values[0])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "_FAMILIES", registry.families())
        registry.register_family(TOY)
        toy = toy_data(n_time=4)                                 # context 2 + lead 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", xef.errors.XEarthformerWarning)
            stochastic = xef.train(toy, family="toy", preset="default", context=2, lead=2, epochs=1,
                                   device="cpu", progress=False)
        ens = toy.earthformer.ensemble(stochastic)
        assert ens.sizes["member"] == F.ENSEMBLE_MEMBERS and np.isfinite(ens.z.values).all()
        assert np.isfinite(metrics.crps(ens, toy).z.values).any()


def test_user_errors_are_the_projects_exceptions(data, model):
    # the exception tree is what callers catch: every refusal above is one of them
    with pytest.raises(XEarthformerError):
        F.forecast(data.assign(t2m=data.t2m.astype(str)), model, progress=False)


# -- logs -------------------------------------------------------------------------------------
def test_progress_bars_in_a_log_write_few_plain_lines(monkeypatch):
    # was: thousands of carriage-return updates in one line of a CI log or nohup.out
    import io
    import time

    from xearthformer import progress

    log = io.StringIO()                                          # not a terminal
    for _ in progress.progress_bar(range(20000), progress=True, file=log, desc="fast"):
        pass
    assert log.getvalue() == ""                                  # ended within LOG_INTERVAL: silent
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.05)
    log = io.StringIO()
    start = time.perf_counter()
    for _ in progress.progress_bar(range(12), progress=True, file=log, desc="slow"):
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert 1 <= len(lines) <= seconds / 0.05 + 2 and lines[-1].startswith("slow: 100%")
