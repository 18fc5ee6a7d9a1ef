"""The PreDiff family behind the seam: config, keyed members, ensembles through the accessor
(eager, lazy, a LocalCluster), bundles and the refusals. Untrained tiny networks on a 16 x 16
grid (2 -> 2 frames) with a few sampler steps: these tests are about plumbing and seeds; the
skill of a trained model lives in the demo and the benchmark."""

from __future__ import annotations

import logging

import dask
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import xearthformer as xef
from xearthformer import forecast as F
from xearthformer import layout
from xearthformer.errors import ConfigError, ModelTypeError, ShapeError
from xearthformer.models import registry
from xearthformer.models.keys import make_keys
from xearthformer.models.prediff import family as fam
from xearthformer.models.prediff.family import PreDiff, PreDiffConfig, presets

CONTEXT, LEAD, GRID = 2, 2, 14          # 14 is not a multiple of the tiny VAE's factor 4


def make_data(n_time: int = 12, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 1.0, size=(n_time, GRID, GRID)).astype("f4")
    return xr.Dataset(
        {"rain": (("time", "lat", "lon"), x, {"units": "mm h-1", "standard_name": "rainfall_rate"})},
        coords={"time": pd.date_range("2020-06-01", periods=n_time, freq="10min"),
                "lat": ("lat", np.linspace(40, 41.3, GRID), {"standard_name": "latitude", "units": "degrees_north"}),
                "lon": ("lon", np.linspace(5, 6.3, GRID), {"standard_name": "longitude", "units": "degrees_east"})})


def tiny_config(**changes) -> PreDiffConfig:
    cfg = presets()["tiny"].replace(input_shape=(CONTEXT, GRID, GRID, 1), target_shape=(LEAD, GRID, GRID, 1),
                                    sampler="ddpm", steps=3)
    return cfg.replace(**changes) if changes else cfg


def randomised(net: PreDiff, seed: int = 0) -> PreDiff:
    """Random weights everywhere (the official init zeroes the denoiser's output layer, which
    would make every eps prediction 0 and hide the denoiser from the tests)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture(scope="module")
def model(data):
    spec = layout.fit_spec(data, "rain", context=CONTEXT, lead=LEAD)
    return xef.Forecaster(randomised(PreDiff(tiny_config())), spec)


# ------------------------------------------------------------------------------------- config
def test_config_derives_latent_shapes_and_round_trips():
    cfg = tiny_config()
    assert cfg.unet_config.input_shape == (CONTEXT, 4, 4, 4) and cfg.unet_config.target_shape == (LEAD, 4, 4, 4)
    assert PreDiffConfig.from_dict(cfg.to_dict()) == cfg and hash(PreDiffConfig.from_dict(cfg.to_dict())) == hash(cfg)
    two = cfg.replace(input_shape=(CONTEXT, GRID, GRID, 2), target_shape=(LEAD, GRID, GRID, 2))
    assert two.vae_config.in_channels == two.vae_config.out_channels == 2
    assert cfg.alignments == () and cfg.weights == "ema"
    official = presets()["sevirlr"]
    assert official.unet_config.input_shape == (7, 16, 16, 64) and official.weights == "raw"
    assert official.schedule == {"name": "linear", "timesteps": 1000, "linear_start": 1e-4, "linear_end": 2e-2}


@pytest.mark.parametrize("changes, match", [
    ({"target_shape": (LEAD, GRID, GRID + 1, 1)}, "same \\(H, W, C\\)"),
    ({"sampler": "euler"}, "valid samplers: ddpm, ddim, dpm\\+\\+2m"),
    ({"steps": 0}, "steps must be an int in 1..1000"),
    ({"weights": "best"}, "weights must be one of"),
    ({"prediction": "score"}, "prediction must be one of"),
    ({"latent_scale": 0.0}, "latent_scale"),
    ({"alignments": ({"name": "a"},)}, "'config'"),
])
def test_config_refusals(changes, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(**changes)


def test_registry_row_builds_the_family(data):
    row = registry.family("prediff")
    assert registry.family_for_bundle_class("PreDiff") is row
    net = registry.build("prediff", "tiny", input_shape=(CONTEXT, GRID, GRID, 1), target_shape=(LEAD, GRID, GRID, 1))
    assert isinstance(net, PreDiff) and registry.family_of(net) is row and net.stochastic
    assert sorted(registry.presets("prediff")) == ["sevirlr", "tiny"]
    assert sorted(n for n, _ in net.named_children()) == ["alignments", "denoiser", "vae"]


# ------------------------------------------------------------------------------------ predict
def test_predict_shapes_and_members_differ():
    net = randomised(PreDiff(tiny_config()))
    x = torch.rand(2, CONTEXT, GRID, GRID, 1)
    with torch.inference_mode():
        y = net.predict(x, keys=torch.arange(6).reshape(2, 3))
    assert y.shape == (2, 3, LEAD, GRID, GRID, 1) and torch.isfinite(y).all()
    assert not torch.allclose(y[:, 0], y[:, 1]) and not torch.allclose(y[0], y[1])
    with torch.inference_mode():  # a DDIM chain with eta = 0 is deterministic given its initial noise
        a = net.predict(x, keys=torch.tensor([[4], [9]]), sampler="ddim", steps=2)
        b = net.predict(x, keys=torch.tensor([[4], [9]]), sampler="ddim", steps=2)
    assert torch.equal(a, b)


class _Recording(fam.KeyedNoise):
    """KeyedNoise that records every row it draws, by key (in draw order)."""

    draws: dict[int, list[torch.Tensor]] = {}

    def randn(self, shape, *, device=None, dtype=None):
        out = super().randn(shape, device=device, dtype=dtype)
        for key, row in zip(self.keys.tolist(), out):
            self.draws.setdefault(key, []).append(row.clone())
        return out


def test_member_noise_and_values_do_not_depend_on_the_batch(model, data, monkeypatch):
    inits = layout.init_times(data, model.spec)[:4]
    x = layout.encode_inputs(data, model.spec, inits)
    keys = make_keys(0, inits, 0, 4)
    runs, noises = [], []
    for bs in (1, 4, 16):
        _Recording.draws = {}
        monkeypatch.setattr(fam, "KeyedNoise", _Recording)
        runs.append(F.predict_tensor(model, x, keys=keys, batch_size=bs, device="cpu"))
        noises.append(dict(_Recording.draws))
    key = int(keys[2, 3])
    assert len(noises[0][key]) == 1 + 3            # the initial noise, then one draw per DDPM step
    for other in noises[1:]:                        # bit-identical noise per key
        assert all(torch.equal(a, b) for k in noises[0] for a, b in zip(noises[0][k], other[k]))
    scale = float(np.ptp(runs[0]))
    for other in runs[1:]:                          # values equal to float32 rounding
        np.testing.assert_allclose(other, runs[0], rtol=0, atol=1e-5 * scale)
    assert not np.allclose(runs[0][:, 0], runs[0][:, 1])


def test_member_k_alone_and_in_a_larger_ensemble(model, data):
    kwargs = dict(init=data.time.values[3:6], device="cpu", progress=False)
    full = F.ensemble(data, model, members=5, **kwargs)
    alone = F.ensemble(data, model, members=[3], batch_size=1, **kwargs)
    assert alone.member.values.tolist() == [3]
    scale = float(full.rain.max() - full.rain.min())
    np.testing.assert_allclose(alone.rain.values[:, :, 0], full.rain.values[:, :, 3], rtol=0, atol=1e-5 * scale)
    fewer = F.ensemble(data, model, members=2, **kwargs)
    np.testing.assert_allclose(fewer.rain.values, full.rain.values[:, :, :2], rtol=0, atol=1e-5 * scale)


def test_eager_lazy_and_a_local_cluster_agree(model, data):
    import distributed

    eager = data.earthformer.ensemble(model, members=2, device="cpu", progress=False)
    assert eager.rain.dims == ("init_time", "lead_time", "member", "lat", "lon")
    assert eager.member.attrs["standard_name"] == "realization"
    scale = float(eager.rain.max() - eager.rain.min())
    with dask.config.set(scheduler=_raising):
        lazy = data.chunk(time=5).earthformer.ensemble(model, members=2, device="cpu", member_chunk=1)
    assert lazy.rain.chunks is not None
    with dask.config.set(scheduler="sync"):
        xr.testing.assert_allclose(lazy.compute().drop_attrs(), eager.drop_attrs(), rtol=0, atol=1e-5 * scale)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0", silence_logs=logging.ERROR) as cluster, \
            distributed.Client(cluster):
        clustered = data.chunk(time=5).earthformer.ensemble(model, members=2, device="cpu").compute()
    xr.testing.assert_allclose(clustered.drop_attrs(), eager.drop_attrs(), rtol=0, atol=1e-5 * scale)


def _raising(*args, **kwargs):
    raise AssertionError("something was computed while building the lazy ensemble")


def test_the_ensemble_file_is_cf_and_scores_with_xskillscore(model, data, tmp_path):
    import xskillscore as xs

    from tests.cfcheck import cf_errors

    ens = F.ensemble(data, model, members=3, init=data.time.values[3:5], device="cpu", progress=False)
    path = str(tmp_path / "ens.nc")
    ens.to_netcdf(path)
    assert cf_errors(path) == []
    obs = data.rain.sel(time=ens.valid_time.isel(lead_time=0).values).rename(time="init_time")
    obs = obs.assign_coords(init_time=ens.init_time.values)
    crps = xs.crps_ensemble(obs, ens.rain.isel(lead_time=0))     # member_dim="member" as it is
    assert np.isfinite(float(crps)) and float(crps) >= 0


def test_forecast_is_the_member_mean(model, data):
    kwargs = dict(init=data.time.values[4:6], device="cpu", progress=False)
    fc = F.forecast(data, model, members=3, **kwargs)
    assert fc.rain.attrs["cell_methods"] == "realization: mean"
    ens = F.ensemble(data, model, members=3, **kwargs)
    xr.testing.assert_allclose(fc.rain, ens.rain.mean("member"), rtol=1e-5, atol=1e-5)


def test_save_load_round_trip(model, data, tmp_path):
    xef.save(model, tmp_path / "prediff.xef")
    loaded = xef.load(tmp_path / "prediff.xef")
    assert isinstance(loaded.model, PreDiff) and loaded.model.config == model.model.config
    state, again = model.model.state_dict(), loaded.model.state_dict()
    assert state.keys() == again.keys() and any(k.startswith("vae.") for k in state)
    assert all(torch.equal(state[k], again[k]) for k in state)
    kwargs = dict(members=2, init=data.time.values[5:6], device="cpu", progress=False)
    xr.testing.assert_identical(F.ensemble(data, loaded, **kwargs).drop_attrs(),
                                F.ensemble(data, model, **kwargs).drop_attrs())


# ------------------------------------------------------------------------------------ refusals
def test_bad_sampling_requests_are_refused(model, data):
    kwargs = dict(init=data.time.values[5:6], device="cpu", progress=False)
    with pytest.raises(ConfigError, match="members must be at least 1"):
        F.ensemble(data, model, members=0, **kwargs)
    with pytest.raises(ConfigError, match="steps must be an int in 1..1000"):
        F.ensemble(data, model, members=1, steps=0, **kwargs)
    with pytest.raises(ConfigError, match="steps must be an int in 1..1000"):
        F.ensemble(data, model, members=1, steps=1001, **kwargs)
    with pytest.raises(ConfigError, match="unknown sampler 'euler'; valid samplers: ddpm, ddim, dpm\\+\\+2m"):
        F.ensemble(data, model, members=1, sampler="euler", **kwargs)
    with pytest.raises(ConfigError, match="eta is an option of the 'ddim' sampler only"):
        F.ensemble(data, model, members=1, sampler="ddpm", eta=0.5, **kwargs)
    with pytest.raises(ConfigError, match="sampling options steps, sampler, eta"):
        F.ensemble(data, model, members=1, temperature=2.0, **kwargs)
    net = model.model
    with pytest.raises(ConfigError, match="needs keys"):
        net.predict(torch.zeros(1, CONTEXT, GRID, GRID, 1))
    with pytest.raises(ShapeError, match="input must be"):
        net.predict(torch.zeros(1, CONTEXT, GRID + 2, GRID, 1), keys=torch.zeros(1, 1, dtype=torch.long))


def test_ensemble_on_a_deterministic_bundle_says_use_forecast(data):
    spec = layout.fit_spec(data, "rain", context=CONTEXT, lead=LEAD)
    earth = xef.Earthformer.from_preset("tiny", input_shape=spec.input_shape, target_shape=spec.target_shape)
    with pytest.raises(ModelTypeError, match="deterministic.*Use xearthformer.forecast.forecast"):
        data.earthformer.ensemble(xef.Forecaster(earth, spec), members=2)


def test_docstring_examples_run():
    import doctest

    assert doctest.testmod(fam, optionflags=doctest.ELLIPSIS).failed == 0


def test_memory_estimate_is_within_a_factor_of_the_measured_peak():
    # the family estimate against the peak resident memory of one 1-step pass measured for these
    # shapes (benchmarks/bench_memory.py --family prediff, batches of 8 on the CPU)
    for preset, grid, measured_mib in (("tiny", 48, 8.9), ("sevirlr", 128, 313.6)):
        with torch.device("meta"):
            net = registry.build("prediff", preset, input_shape=(7, grid, grid, 1), target_shape=(6, grid, grid, 1))
        assert 0.9 * measured_mib < net.inference_bytes_per_sample() / 2**20 < 1.5 * measured_mib
    plan = F.plan_inference(PreDiff(tiny_config()), (CONTEXT, GRID, GRID, 1), items=8, members=4)
    assert plan.per_item == pytest.approx(PreDiff(tiny_config()).inference_bytes_per_sample()
                                          + 8 * 2 * CONTEXT * GRID * GRID, rel=1e-6)
