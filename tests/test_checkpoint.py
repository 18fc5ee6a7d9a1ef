"""Tests of the one-file model bundle (xearthformer.checkpoint): round trip, safety, versions."""

from __future__ import annotations

import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors import safe_open
from safetensors.torch import save_file

import xearthformer
from xearthformer import checkpoint as C
from xearthformer import layout as L
from xearthformer.errors import CheckpointError, ConfigError, ModelTypeError
from xearthformer.models.earthformer.network import Earthformer


def small_data(nt=30):
    rng = np.random.default_rng(0)
    time = xr.date_range("2000-01-01", periods=nt, freq="MS", calendar="noleap", use_cftime=True)
    sst = (290 + rng.normal(size=(nt, 4, 6))).astype("f4")
    sst[:, 0, 0] = np.nan
    return xr.Dataset(
        {"sst": (("time", "lat", "lon"), sst, {"units": "K", "standard_name": "sea_surface_temperature"}),
         "orog": (("lat", "lon"), rng.random((4, 6)).astype("f4"), {"units": "m"})},
        coords={"time": time,
                "lat": ("lat", np.linspace(-10, 10, 4), {"units": "degrees_north"}),
                "lon": ("lon", np.arange(0, 360, 60.0), {"units": "degrees_east"})},
    )


@pytest.fixture(scope="module")
def forecaster():
    torch.manual_seed(0)
    ds = small_data()
    spec = L.fit_spec(ds, "sst", context=3, lead=2, normalization="anomaly", static=["orog"],
                      calendar=["month"])
    model = Earthformer.from_preset("tiny", input_shape=spec.input_shape,
                                    target_shape=spec.target_shape)
    return C.Forecaster(model, spec, metadata={"trained_on": "synthetic"}), ds


def test_save_load_round_trip(forecaster, tmp_path):
    fc, ds = forecaster
    path = tmp_path / "m.xef"
    xearthformer.save(fc, path)
    back = xearthformer.load(path)
    assert isinstance(back, xearthformer.Forecaster)
    assert back.model.config == fc.model.config
    assert back.spec == fc.spec and back.spec.to_dict() == fc.spec.to_dict()
    for k, v in fc.spec.arrays().items():
        np.testing.assert_array_equal(back.spec.arrays()[k], v)
    sd, sd2 = fc.model.state_dict(), back.model.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert back.metadata == {"trained_on": "synthetic"} and back.version == xearthformer.__version__
    assert (back.context, back.lead) == (3, 2) and not back.model.training
    # the same forecast from the loaded bundle
    inits = L.init_times(ds, back.spec)[:2]
    x = torch.from_numpy(L.encode_inputs(ds, back.spec, inits))
    fc.model.eval()
    with torch.no_grad():
        y1, y2 = fc.model(x), back.model(x)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    out = L.decode(y2, back.spec, inits, like=ds)
    assert np.isnan(out.sst.values[..., 0, 0]).all() and np.isfinite(out.sst.values[..., 1:, :]).all()
    assert "Forecaster(Earthformer" in repr(back)


def test_bundle_layout_is_safetensors_with_json_header(forecaster, tmp_path):
    fc, _ = forecaster
    path = tmp_path / "m.xef"
    C.save(fc, path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["format"] == "xearthformer-bundle" and meta["format_version"] == "2"
    assert meta["bundle_sha256"] == C.metadata_digest(meta) == C.bundle_digest(fc)
    assert json.loads(meta["model_config"]) == fc.model.config.to_dict()
    assert {"spec.climatology/sst", "spec.static/orog", "spec.land_mask/sst"} <= keys
    assert {f"model.{k}" for k in fc.model.state_dict()} <= keys
    with safe_open(str(path), framework="np") as f:
        assert f.get_tensor("spec.climatology/sst").dtype == np.float32
        assert f.get_tensor("spec.climatology/sst").shape == (12, 4, 6)
    assert "climatology" not in meta["spec"]  # stored as a tensor, not JSON
    info = C.read_metadata(path)
    assert info["spec"]["context"] == 3 and info["model_class"] == "Earthformer"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".xef-")]  # no temp left


def _rewrite_metadata(src, dst, **changes):
    """Edit header fields and re-sign the header (so the checks behind the checksum are reached)."""
    with safe_open(str(src), framework="pt") as f:
        meta = {**f.metadata(), **changes}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["bundle_sha256"] = C.metadata_digest(meta)
    save_file(tensors, str(dst), metadata=meta)


def test_newer_format_and_unknown_class_fail_clearly(forecaster, tmp_path):
    fc, _ = forecaster
    good = tmp_path / "m.xef"
    C.save(fc, good)
    newer = tmp_path / "newer.xef"
    _rewrite_metadata(good, newer, format_version=str(C.FORMAT_VERSION + 1),
                      xearthformer_version="9.0")
    with pytest.raises(CheckpointError, match=f"format version {C.FORMAT_VERSION + 1}.*xearthformer 9.0.*upgrade"):
        C.load(newer)
    alien = tmp_path / "alien.xef"
    _rewrite_metadata(good, alien, model_class="os.system")
    with pytest.raises(CheckpointError, match="class 'os.system'.*knows \\['Earthformer', 'PreDiff'\\]"):
        C.load(alien)
    bad_cfg = tmp_path / "bad.xef"
    cfg = json.loads(_meta(good)["model_config"])
    cfg["base_units"] = 2 * cfg["base_units"]
    _rewrite_metadata(good, bad_cfg, model_config=json.dumps(cfg))
    with pytest.raises(CheckpointError, match="weights do not fit"):
        C.load(bad_cfg)


def _meta(path):
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


class _Boom:
    """Unpickling this would create a marker file: the test proves load() never unpickles."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_not_a_bundle_never_executes_code(tmp_path):
    marker = str(tmp_path / "executed")
    pickled = tmp_path / "evil.pt"
    pickled.write_bytes(pickle.dumps(_Boom(marker)))
    with pytest.raises(CheckpointError, match="pickle/zip.*xearthformer convert"):
        C.load(pickled)
    zipped = tmp_path / "official.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, zipped)
    with pytest.raises(CheckpointError, match="not an xearthformer bundle"):
        C.load(zipped)
    assert not os.path.exists(marker)
    junk = tmp_path / "junk.xef"
    junk.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(CheckpointError, match="no valid safetensors header"):
        C.load(junk)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match="format None"):
        C.load(other)
    with pytest.raises(FileNotFoundError):
        C.load(tmp_path / "missing.xef")


def test_forecaster_checks(forecaster, tmp_path):
    fc, _ = forecaster
    wrong = Earthformer.from_preset("tiny", input_shape=(3, 4, 6, 1), target_shape=(2, 4, 6, 1))
    with pytest.raises(ConfigError, match="input_shape is \\(3, 4, 6, 1\\).*\\(3, 4, 6, 4\\)"):
        C.Forecaster(wrong, fc.spec)
    with pytest.raises(ModelTypeError, match="Forecaster"):
        C.save(fc.model, tmp_path / "x.xef")
    # a DataParallel-wrapped model (as left by multi-GPU training) is saved unwrapped
    wrapped = C.Forecaster(fc.model, fc.spec)
    wrapped.model = torch.nn.DataParallel(fc.model)
    C.save(wrapped, tmp_path / "dp.xef")
    assert C.load(tmp_path / "dp.xef").model.state_dict().keys() == fc.model.state_dict().keys()
    with pytest.raises(ModelTypeError):
        C.Forecaster(torch.nn.Linear(2, 2), fc.spec)

    class NotRegistered(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = fc.model.config

    with pytest.raises(ModelTypeError, match="cannot save a NotRegistered"):
        C.save(C.Forecaster(NotRegistered(), fc.spec), tmp_path / "y.xef")


def test_projected_spec_with_levels_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    y, x = np.arange(5) * 1000.0, np.arange(4) * 1000.0
    ds = xr.Dataset(
        {"t": (("time", "plev", "y", "x"), rng.normal(size=(8, 2, 5, 4)).astype("f4"),
               {"units": "K", "grid_mapping": "crs"}),
         "crs": ((), 0, {"grid_mapping_name": "polar_stereographic",
                         "straight_vertical_longitude_from_pole": -45.0})},
        coords={"time": xr.date_range("2001-01-01", periods=8, freq="D", calendar="360_day",
                                      use_cftime=True),
                "plev": ("plev", [850, 500], {"units": "hPa", "positive": "down"}),
                "y": ("y", y, {"standard_name": "projection_y_coordinate"}),
                "x": ("x", x, {"standard_name": "projection_x_coordinate"}),
                "lat": (("y", "x"), 60 + rng.random((5, 4)), {"standard_name": "latitude"}),
                "lon": (("y", "x"), -45 + rng.random((5, 4)), {"standard_name": "longitude"})})
    spec = L.fit_spec(ds, "t", context=2, lead=1, calendar=["dayofyear"])
    model = Earthformer.from_preset("tiny", input_shape=spec.input_shape,
                                    target_shape=spec.target_shape)
    C.save(C.Forecaster(model, spec), tmp_path / "p.xef")
    back = C.load(tmp_path / "p.xef")
    assert back.spec == spec and back.spec.grid.grid_mapping == "crs"
    np.testing.assert_array_equal(back.spec.grid.lat_values, ds.lat.values)
    assert [c.name for c in back.spec.inputs] == ["t[850]", "t[500]"]
    assert back.spec.calendar_name == "360_day"
    inits = L.init_times(ds, back.spec)
    with torch.no_grad():
        y_hat = back.model(torch.from_numpy(L.encode_inputs(ds, back.spec, inits)))
    out = L.decode(y_hat, back.spec, inits)
    assert out.t.dims == ("init_time", "lead_time", "plev", "y", "x")
    assert out.crs.attrs["grid_mapping_name"] == "polar_stereographic"
    assert out.valid_time.values[0, 0].calendar == "360_day"
