"""Regression tests for problems found by using xearthformer as a climate scientist would.

Each test names the symptom it guards against. Tiny data and untrained tiny models only.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import xearthformer
from xearthformer import checkpoint as C
from xearthformer import layout as L
from xearthformer import metrics
from xearthformer.errors import CheckpointError, ConfigError, DataError
from xearthformer.models.earthformer.network import Earthformer


def sst_odd_names(nt=36, nlat=8, nlon=12):
    """Monthly SST on TIME/LATITUDE/LONGITUDE (CF attributes only), descending lat, 0..360
    lon covering the Nino3.4 box, a few land NaNs."""
    rng = np.random.default_rng(0)
    lat = np.linspace(10.5, -10.5, nlat)
    lon = np.linspace(150.0, 270.0, nlon)
    t = np.arange(nt)
    data = (300 + np.sin(2 * np.pi * t / 12)[:, None, None] + rng.normal(0, 0.3, (nt, nlat, nlon)))
    data = data.astype("f4")
    data[:, 0, :2] = np.nan
    return xr.Dataset(
        {"SST": (("TIME", "LATITUDE", "LONGITUDE"), data,
                 {"standard_name": "sea_surface_temperature", "units": "K"})},
        coords={"TIME": ("TIME", pd.date_range("2000-01-01", periods=nt, freq="MS"),
                         {"standard_name": "time"}),
                "LATITUDE": ("LATITUDE", lat,
                             {"standard_name": "latitude", "units": "degrees_north"}),
                "LONGITUDE": ("LONGITUDE", lon,
                              {"standard_name": "longitude", "units": "degrees_east"})},
    )


def monthly_forecast(obs: xr.Dataset, n_init=8, n_lead=3, seed=1):
    """A forecast dataset (init_time, lead_time in months, 2-D valid_time) on obs' grid."""
    rng = np.random.default_rng(seed)
    init = obs.TIME.values[6:6 + n_init]
    valid = np.array([[obs.TIME.values[6 + i + j + 1] for j in range(n_lead)] for i in range(n_init)])
    shape = (n_init, n_lead, obs.sizes["LATITUDE"], obs.sizes["LONGITUDE"])
    fc = xr.Dataset(
        {"SST": (("init_time", "lead_time", "LATITUDE", "LONGITUDE"),
                 (300 + rng.normal(0, 1, shape)).astype("f4"), dict(obs.SST.attrs))},
        coords={"init_time": init, "lead_time": ("lead_time", np.arange(1, n_lead + 1),
                                                  {"units": "months"}),
                "valid_time": (("init_time", "lead_time"), valid),
                "LATITUDE": obs.LATITUDE, "LONGITUDE": obs.LONGITUDE},
    )
    return fc, valid


# -- metrics: observations whose time dim is not called "time" --------------------------------
def test_rmse_aligns_observations_on_a_cf_time_dim_not_named_time():
    # was: obs on TIME were broadcast against every forecast (silently wrong RMSE, ACC > 1)
    obs = sst_odd_names()
    fc, valid = monthly_forecast(obs)
    got = metrics.rmse(fc, obs).SST.values
    o = obs.SST.sel(TIME=valid.ravel()).values.reshape(fc.SST.shape)
    expected = np.sqrt(np.nanmean((fc.SST.values.astype(float) - o) ** 2, axis=(0, 2, 3)))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics.rmse(fc, obs.rename(TIME="time")).SST.values, got)
    assert float(metrics.acc(fc.SST, obs.SST).max()) <= 1.0 + 1e-6


def test_metrics_refuse_observations_without_a_recognisable_time_dim():
    obs = sst_odd_names()
    fc, _ = monthly_forecast(obs)
    bad = obs.assign_coords(TIME=np.arange(obs.sizes["TIME"]))  # plain integers, no attrs
    with pytest.raises(DataError, match="TIME"):
        metrics.rmse(fc, bad)


def test_nino34_on_observations_with_a_TIME_dim():
    # was: DataError "expected 'time'" for CF-tagged data named TIME
    obs = sst_odd_names()
    index = obs.earthformer.nino34()
    assert index.dims == ("TIME",)
    ref = metrics.nino34_index(obs.rename(TIME="time"))
    np.testing.assert_allclose(index.values, ref.values, equal_nan=True)
    fc, _ = monthly_forecast(obs)
    skill = fc.earthformer.nino34_skill(obs)
    ref_skill = metrics.nino34_skill(fc, obs.rename(TIME="time"))
    np.testing.assert_allclose(skill.cor.values, ref_skill.cor.values)
    assert np.isfinite(skill.cor.values).all()


# -- bundles: damaged files and bad devices ---------------------------------------------------
@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    ds = sst_odd_names(nt=12, nlat=4, nlon=6)
    spec = L.fit_spec(ds, "SST", context=3, lead=2)
    torch.manual_seed(0)
    model = Earthformer.from_preset("tiny", input_shape=spec.input_shape, target_shape=spec.target_shape)
    path = tmp_path_factory.mktemp("bundle") / "m.xef"
    C.save(C.Forecaster(model, spec), path)
    return path.read_bytes(), ds


def _edit_header(raw: bytes, key: str, value: str, resign: bool = True) -> bytes:
    """``raw`` with one header field changed; ``resign`` recomputes the header checksum, so the
    checks behind it are reached (an unsigned edit is refused by the checksum first)."""
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + size])
    header["__metadata__"][key] = value
    if resign:
        header["__metadata__"]["bundle_sha256"] = C.metadata_digest(header["__metadata__"])
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + raw[8 + size:]


def test_load_truncated_bundle_is_a_checkpoint_error(bundle, tmp_path):
    # was: a raw safetensors SafetensorError when the cut falls inside the weights
    raw, _ = bundle
    path = tmp_path / "cut.xef"
    path.write_bytes(raw[: len(raw) - 10])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        xearthformer.load(path)


@pytest.mark.parametrize("key, value, match", [
    ("format_version", "0", "format_version is 0"),
    ("format_version", "-1", "format_version is -1"),
    ("spec", "[1, 2]", "'spec' is a JSON list"),
    ("metadata", "[]", "'metadata' is a JSON list"),
])
def test_load_edited_header_is_a_checkpoint_error(bundle, tmp_path, key, value, match):
    # was: version 0/-1 loaded silently; a JSON list raised AttributeError
    raw, _ = bundle
    path = tmp_path / "edited.xef"
    path.write_bytes(_edit_header(raw, key, value))
    with pytest.raises(CheckpointError, match=match):
        xearthformer.load(path)


def test_load_and_forecast_with_unavailable_device_is_a_config_error(bundle, tmp_path):
    # was: torch's AssertionError ("not compiled with CUDA") or a misleading "corrupt file"
    raw, ds = bundle
    path = tmp_path / "m.xef"
    path.write_bytes(raw)
    missing_gpu = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU (cuda:0 on CPU)
    for device in ("tpu9", missing_gpu):
        with pytest.raises(ConfigError, match="device"):
            xearthformer.load(path, device=device)
    fc = xearthformer.load(path)
    with pytest.raises(ConfigError, match="device"):
        ds.earthformer.forecast(fc, device=missing_gpu)


# -- data checks ------------------------------------------------------------------------------
def test_forecast_refuses_data_in_other_units(bundle, tmp_path):
    # was: degC data fed to a model trained in K gave a silently wrong forecast
    raw, ds = bundle
    path = tmp_path / "m.xef"
    path.write_bytes(raw)
    fc = xearthformer.load(path)
    celsius = ds.copy()
    celsius["SST"] = (ds.SST - 273.15).assign_attrs(units="degC")
    with pytest.raises(DataError, match="in 'degC'.*in 'K'.*K = degC \\+ 273.15"):
        celsius.earthformer.forecast(fc)
    same_unit = ds.copy()
    same_unit["SST"] = ds.SST.assign_attrs(units=" k ")  # spelling only: accepted
    xr.testing.assert_equal(same_unit.earthformer.forecast(fc), ds.earthformer.forecast(fc))


# -- command line -----------------------------------------------------------------------------
def test_train_cli_val_year_is_a_start_date():
    # was: --val 2009 parsed as the fraction 2009.0 and rejected
    from xearthformer.training.labelled import _parse_val

    assert _parse_val("2009") == "2009"
    assert _parse_val("0.25") == 0.25
    assert _parse_val("none") is None


def test_train_val_that_is_no_time_is_a_data_error():
    # was: pandas TypeError from slice_indexer
    from xearthformer.training.data import split_by_time

    ds = sst_odd_names(nt=12, nlat=4, nlon=6)
    with pytest.raises(DataError, match="val='1' is not a time"):
        split_by_time(ds, "1")


def test_train_cli_set_help_example_uses_real_config_fields():
    # was: the help suggested --set dropout=0.0, which is no EarthformerConfig field
    from xearthformer.cli import build_parser
    from xearthformer.models.earthformer.network import EarthformerConfig

    parser = build_parser("train")
    sub = next(a for a in parser._actions if a.dest == "command").choices["train"]
    help_text = next(a.help for a in sub._actions if a.dest == "set")
    keys = [w.split("=")[0] for w in help_text.split() if "=" in w]
    assert keys and set(keys) <= set(EarthformerConfig.__dataclass_fields__)
    assert all(a.help for a in sub._actions if a.dest != "help")


def test_cli_missing_model_file_is_a_clean_error(tmp_path, capsys):
    from xearthformer.cli import main

    code = main(["forecast", "--model", str(tmp_path / "nope.xef"), "--input",
                 str(tmp_path / "x.nc"), "--output", str(tmp_path / "o.zarr")])
    assert code == 1
    assert "nope.xef" in capsys.readouterr().err


# -- metrics metadata and argument checks -----------------------------------------------------
def test_categorical_scores_do_not_inherit_the_variables_attributes():
    # was: CSI carried the input's long_name, units and valid_min/valid_max (0..255)
    attrs = {"long_name": "vertically integrated liquid", "units": "kg m-2", "valid_max": 255.0}
    fc = xr.DataArray(np.array([0.0, 20.0, 80.0, 200.0]), dims="x", attrs=attrs)
    ob = xr.DataArray(np.array([0.0, 16.0, 10.0, 220.0]), dims="x", attrs=attrs)
    score = metrics.csi(fc, ob, thresholds=[16, 74])
    np.testing.assert_allclose(score.values, [2 / 3, 1 / 2])
    assert score.attrs == {"long_name": "critical success index", "units": "1"}
    assert metrics.csi_m(fc, ob, thresholds=[16, 74]).attrs["units"] == "1"
    assert "valid_max" not in metrics.pod(fc, ob, thresholds=16).attrs


def test_fractional_context_and_negative_lr_are_config_errors():
    # was: context=6.5 silently became 6; lr=-1 raised torch's plain ValueError
    from xearthformer.training.loop import TrainConfig

    ds = sst_odd_names(nt=12, nlat=4, nlon=6)
    with pytest.raises(ConfigError, match="whole numbers"):
        L.fit_spec(ds, "SST", context=2.5, lead=2)
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr=-1.0)


def test_scores_of_datasets_without_a_common_variable_are_an_error():
    # was: rmse(fc with 'SST', obs with 'sst') returned an empty Dataset
    obs = sst_odd_names()
    fc, _ = monthly_forecast(obs)
    with pytest.raises(DataError, match="no name in common"):
        metrics.rmse(fc, obs.rename(SST="sst"))
    with pytest.raises(DataError, match="no name in common"):
        metrics.acc(fc, obs.rename(SST="sst"))
    # one-variable scores pick each side's single variable, whatever its name
    renamed = metrics.csi(fc, obs.rename(SST="sst"), thresholds=[300.0])
    xr.testing.assert_allclose(renamed, metrics.csi(fc, obs, thresholds=[300.0]))


def test_save_into_a_missing_folder_names_the_folder(bundle, tmp_path):
    # was: FileNotFoundError about a temporary '.xef-XXXX' file the user never named
    raw, _ = bundle
    path = tmp_path / "m.xef"
    path.write_bytes(raw)
    target = tmp_path / "no" / "such" / "m.xef"
    with pytest.raises(FileNotFoundError, match="folder .*such does not exist"):
        xearthformer.save(xearthformer.load(path), target)
    assert not target.parent.exists()


def test_probabilistic_scores_of_an_ensemble_forecast_dataset():
    # was: ValueError "the first argument to .rename must be a dictionary" for Datasets,
    # i.e. for ens.earthformer.crps(obs) on the forecast dataset itself
    obs = sst_odd_names()
    fc, valid = monthly_forecast(obs)
    ens = xr.concat([fc + 0.5 * k for k in range(3)], dim="member")
    got = ens.earthformer.crps(obs)
    assert isinstance(got, xr.Dataset) and set(got.data_vars) == {"SST"}
    np.testing.assert_allclose(got.SST.values, metrics.crps(ens.SST, obs.SST).values)
    # brute force: CRPS = mean|x_i - y| - sum_ij |x_i - x_j| / (2 M^2), averaged per lead
    x = ens.SST.transpose("member", ...).values.astype(float)
    y = obs.SST.sel(TIME=valid.ravel()).values.reshape(x.shape[1:])
    point = np.abs(x - y).mean(0) - np.abs(x[:, None] - x[None]).sum((0, 1)) / (2 * 9)
    np.testing.assert_allclose(got.SST.values, np.nanmean(point, axis=(0, 2, 3)), rtol=1e-6)
    assert set(metrics.rank_histogram(ens, obs).data_vars) == {"SST"}
    assert set(metrics.brier_score(ens, obs, threshold=300.0).data_vars) == {"SST"}
    # was: TypeError (a Dataset inside a Dataset) for a one-variable ensemble Dataset
    xr.testing.assert_allclose(metrics.spread_skill(ens, obs), metrics.spread_skill(ens.SST, obs.SST))


def test_pairs_of_observations_keep_their_own_time_dim_name():
    # the TIME -> time matching applies to forecast/observation pairs only
    obs = sst_odd_names()
    shifted = obs + 1.0
    got = metrics.rmse(shifted, obs, dim=["TIME", "LATITUDE", "LONGITUDE"])
    np.testing.assert_allclose(got.SST.values, 1.0, rtol=1e-6)
    assert "TIME" in metrics.mae(shifted.SST, obs.SST, dim=["LATITUDE", "LONGITUDE"]).dims


def test_continuous_scores_do_not_inherit_input_or_weight_attributes():
    import numpy as np
    import xarray as xr

    from xearthformer import metrics

    lat = xr.DataArray([-5.0, 0.0, 5.0], dims="lat",
                       attrs={"standard_name": "latitude", "units": "degrees_north", "axis": "Y"})
    fc = xr.Dataset({"sst": (("lead_time", "lat"), np.ones((2, 3)), {"units": "K"})},
                    coords={"lead_time": [1, 2], "lat": lat}, attrs={"Conventions": "CF-1.8"})
    ob = fc + 1.0
    for score in (metrics.rmse(fc, ob, weights="coslat"), metrics.rmse(fc.sst, ob.sst, weights="coslat")):
        assert "Conventions" not in score.attrs and "axis" not in score.attrs
        values = score["sst"] if isinstance(score, xr.Dataset) else score
        assert "standard_name" not in values.attrs and "units" not in values.attrs
        np.testing.assert_allclose(values.values, 1.0)



def test_a_flipped_bit_in_the_weights_is_detected(bundle, tmp_path):
    # safetensors has no checksum: the bundle's header carries one (was: loaded silently)
    raw, _ = bundle
    damaged = bytearray(raw)
    damaged[-100] ^= 0x01  # the tail of the file is tensor data, after the JSON header
    path = tmp_path / "flipped.xef"
    path.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        xearthformer.load(path)
    intact = tmp_path / "intact.xef"
    intact.write_bytes(raw)
    assert isinstance(xearthformer.load(intact), xearthformer.Forecaster)
