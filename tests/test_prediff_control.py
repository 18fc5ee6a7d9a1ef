"""Knowledge control through the PreDiff family: train_alignment (entry, mu/sigma against a
brute-force numpy computation, save/load), control_stats, guided ensembles (seeds, member
subsets, sweeps, lazy = eager, the guided statistic moves toward its target, parity) and the
refusals that name their fix. Tiny untrained-ish networks on a 14 x 14 grid (2 -> 2 frames):
mechanics only; what a trained model reaches is benchmarks/bench_control.py's job."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import xearthformer as xef
from tests.test_prediff_family import CONTEXT, LEAD, make_data, randomised, tiny_config
from xearthformer import layout
from xearthformer.errors import ConfigError, ModelTypeError, ShapeError, XEarthformerWarning
from xearthformer.models.prediff.family import PreDiff
from xearthformer.models.prediff.knowledge import find_entry, prepare_guidance, read_out
from xearthformer.models.prediff.statistics import statistic
from xearthformer.training.alignment import control_stats, train_alignment

INITS = slice(4, 7)
FAST = {"epochs": 1, "batch_size": 4, "steps_per_epoch": 2, "base_units": 8, "progress": False,
        "device": "cpu", "val": None}


@pytest.fixture(scope="module")
def data():
    return make_data(24)


@pytest.fixture(scope="module")
def bare(data):
    spec = layout.fit_spec(data, "rain", context=CONTEXT, lead=LEAD)
    return xef.Forecaster(randomised(PreDiff(tiny_config())), spec)


@pytest.fixture(scope="module")
def model(bare, data):
    return train_alignment(bare, data, "mean_intensity", guide_scale=5.0, **FAST)


def inits(data):
    return data.time.values[INITS]


def window_means(data, spec):
    """The future mean intensity of every training window, by numpy from the raw data."""
    rain = data["rain"].values.astype(np.float64)
    starts = range(0, rain.shape[0] - CONTEXT - LEAD + 1)
    return np.array([rain[s + CONTEXT:s + CONTEXT + LEAD].mean() for s in starts])


# --------------------------------------------------------------------------- train_alignment
def test_train_alignment_adds_an_entry_with_training_mu_sigma(bare, model, data):
    assert bare.model.config.alignments == ()  # the input model is not changed
    (entry,) = model.model.config.alignments
    assert entry["name"] == "mean_intensity" and entry["readout"] == "frame_mean"
    assert entry["statistic"] == {"name": "mean_intensity", "params": {"over": "sequence", "channel": None}}
    assert entry["guide_scale"] == 5.0 and entry["components"] == 1
    means = window_means(data, model.spec)
    assert entry["stats"]["count"] == len(means)
    np.testing.assert_allclose(entry["stats"]["mu"], [means.mean()], rtol=1e-5)
    np.testing.assert_allclose(entry["stats"]["sigma"], [means.std()], rtol=1e-4)
    assert entry["stats"]["conditioning"] == "none"
    # the network's scale standardises the per-frame means it learns
    rain = data["rain"].values.astype(np.float64)
    frames = np.array([rain[s + CONTEXT + k].mean() for s in range(len(means)) for k in range(LEAD)])
    np.testing.assert_allclose(entry["scale"]["offset"], [frames.mean()], rtol=1e-5)
    np.testing.assert_allclose(entry["scale"]["scale"], [frames.std()], rtol=1e-4)
    # the other weights are the input model's
    for key, value in bare.model.state_dict().items():
        assert torch.equal(model.model.state_dict()[key], value)
    out = model.model.alignments["mean_intensity"](torch.randn(3, *model.model.config.alignments[0]["config"]
                                                                ["input_shape"]), torch.tensor([0, 5, 9]))
    assert out.shape == (3, LEAD, 1) and read_out(entry, out).shape == (3, 1)


def test_bundles_store_the_entry_and_give_the_same_controlled_ensemble(model, data, tmp_path):
    path = tmp_path / "m.xef"
    xef.save(model, path)
    again = xef.load(path)
    assert again.model.config.alignments == model.model.config.alignments
    before = data.earthformer.ensemble(model, members=2, init=inits(data), control={"n": 1}, device="cpu")
    after = data.earthformer.ensemble(again, members=2, init=inits(data), control={"n": 1}, device="cpu")
    np.testing.assert_array_equal(before["rain"].values, after["rain"].values)


# ---------------------------------------------------------------------------- guided sampling
def test_control_changes_the_ensemble_and_keeps_every_member_seed(model, data):
    kw = {"init": inits(data), "device": "cpu", "progress": False}
    free = data.earthformer.ensemble(model, members=3, **kw)
    guided = data.earthformer.ensemble(model, members=3, control={"n": 2, "scale": 50.0}, **kw)
    assert not np.allclose(free["rain"].values, guided["rain"].values)
    again = data.earthformer.ensemble(model, members=3, control={"n": 2, "scale": 50.0}, **kw)
    np.testing.assert_array_equal(guided["rain"].values, again["rain"].values)
    alone = data.earthformer.ensemble(model, members=[2], control={"n": 2, "scale": 50.0}, batch_size=1, **kw)
    np.testing.assert_allclose(alone["rain"].values, guided["rain"].sel(member=[2]).values, rtol=1e-5, atol=1e-5)
    assert json.loads(guided.attrs["control"]) == {"n": 2.0, "scale": 50.0}
    assert guided.attrs["control_statistic"] == "mean_intensity(over='sequence')"
    entry = model.model.config.alignments[0]
    np.testing.assert_allclose(guided.attrs["control_target"],
                               [entry["stats"]["mu"][0] + 2 * entry["stats"]["sigma"][0]])


@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m", "ddpm"])
def test_the_guided_statistic_moves_toward_the_target_under_every_sampler(model, data, sampler, monkeypatch):
    """What the guidance optimises: the alignment network's prediction from the sampled latent."""
    x = torch.from_numpy(layout.encode_inputs(data, model.spec, inits(data)))
    keys = torch.arange(3 * 4).reshape(3, 4)
    net, align = model.model, model.model.alignments["mean_intensity"]
    entry = net.config.alignments[0]
    latents = []
    decode = net.decode_latents
    monkeypatch.setattr(net, "decode_latents", lambda z: (latents.append(z), decode(z))[1])
    predicted = {}
    for n in (-3, None, 3):
        guidance = None if n is None else prepare_guidance(model, {"n": n, "scale": 200.0})
        with torch.no_grad():
            net.predict(x, keys=keys, sampler=sampler, steps=4, guidance=guidance)
            z = latents.pop()
            predicted[n] = float(read_out(entry, align(z, torch.zeros(z.shape[0], dtype=torch.long))).mean())
    assert predicted[3] > predicted[None] > predicted[-3]


def test_a_sweep_gives_a_control_dim_equal_to_single_runs(model, data):
    kw = {"members": 2, "init": inits(data), "device": "cpu", "progress": False}
    sweep = data.earthformer.ensemble(model, control=[{"n": -1}, {"n": 0}, {"n": 1}], **kw)
    assert sweep["rain"].dims[0] == "control" and list(sweep["control"].values) == ["n=-1", "n=+0", "n=+1"]
    np.testing.assert_array_equal(sweep["control_n"].values, [-1.0, 0.0, 1.0])
    one = data.earthformer.ensemble(model, control={"n": 1}, **kw)
    np.testing.assert_array_equal(sweep["rain"].sel(control="n=+1").values, one["rain"].values)
    assert [r["n"] for r in json.loads(sweep.attrs["control"])] == [-1.0, 0.0, 1.0]
    assert "control_statistic" in sweep.attrs and "knowledge control sweep" in sweep.attrs["history"]
    for name in ("rain", "member", "lead_time", "valid_time"):  # the CF attributes survive the concat
        assert sweep[name].attrs == one[name].attrs and sweep[name].attrs, name


def test_lazy_input_gives_the_eager_controlled_ensemble(model, data):
    kw = {"members": 2, "init": inits(data), "device": "cpu", "control": {"value": 2.5}}
    eager = data.earthformer.ensemble(model, **kw)
    lazy = data.chunk({"time": 8}).earthformer.ensemble(model, chunk=2, **kw)
    np.testing.assert_allclose(lazy["rain"].values, eager["rain"].values, rtol=1e-5, atol=1e-6)


def test_callable_targets_and_parity(model, data):
    kw = {"members": 2, "init": inits(data), "device": "cpu"}
    # a target from the observed past: twice the context's mean intensity
    twice = data.earthformer.ensemble(model, control=lambda ctx: 2 * ctx.mean(dim=(1, 2, 3, 4)), **kw)
    assert "callable" in twice.attrs["control"]
    with pytest.raises(ConfigError, match="'ddpm' sampler only"):
        data.earthformer.ensemble(model, control={"n": 1, "parity": True}, sampler="ddim", steps=3, **kw)
    parity = data.earthformer.ensemble(model, control={"n": 1, "parity": True}, sampler="ddpm", steps=3, **kw)
    assert parity.attrs["control_parity"] == 1


# ---------------------------------------------------------------------------------- refusals
def test_refusals_name_the_fix(bare, model, data):
    kw = {"members": 1, "init": inits(data), "device": "cpu"}
    with pytest.raises(ConfigError, match=r"no alignment network.*xef.train_alignment"):
        data.earthformer.ensemble(bare, control={"n": 1}, **kw)
    with pytest.raises(ConfigError, match=r"no alignment network for the statistic area_above.*xef.train_alignment"):
        data.earthformer.ensemble(model, control={"statistic": "area_above", "threshold": 3.0, "n": 1}, **kw)
    with pytest.raises(ShapeError, match="3 components but the statistic has K = 1"):
        data.earthformer.ensemble(model, control={"value": [1.0, 2.0, 3.0]}, **kw)
    with pytest.raises(ShapeError, match=r"\(N, K\) = \(3, 1\)"):
        data.earthformer.ensemble(model, control=lambda ctx: torch.zeros(3, 2), **kw)
    with pytest.raises(ConfigError, match="exactly one of 'n'"):
        data.earthformer.ensemble(model, control={"n": 1, "value": 2.0}, **kw)
    with pytest.warns(XEarthformerWarning, match="below the attainable minimum"):
        data.earthformer.ensemble(model, control={"value": -5.0}, **kw)
    with pytest.raises(ConfigError, match="guidance= takes"):
        model.model.predict(torch.zeros(1, *model.spec.input_shape), keys=torch.zeros(1, 1, dtype=torch.long),
                            guidance={"n": 1})
    earthformer = xef.Forecaster(xef.Earthformer.from_preset("tiny", input_shape=model.spec.input_shape,
                                                             target_shape=model.spec.target_shape), model.spec)
    with pytest.raises(ModelTypeError, match="PreDiff model"):
        train_alignment(earthformer, data)
    with pytest.raises(ConfigError, match="'earthformer' family has no knowledge control"):
        data.earthformer.forecast(earthformer, init=inits(data), control={"n": 1})


def test_non_differentiable_and_constant_statistics_are_refused(bare, data):
    with pytest.raises(ConfigError, match="not differentiable"):
        train_alignment(bare, data, lambda x: x.detach().mean(dim=(1, 2, 3, 4))[:, None], **FAST)
    with pytest.raises(ConfigError, match="not differentiable"):
        train_alignment(bare, data, lambda x: (x > 2).float().mean(dim=(1, 2, 3, 4))[:, None], **FAST)
    with pytest.raises(ConfigError, match="zero gradient"):
        train_alignment(bare, data, lambda x: torch.round(x).mean(dim=(1, 2, 3, 4))[:, None], **FAST)
    with pytest.raises(ConfigError, match="does not vary"):
        # differentiable (gradient 1 / count everywhere) but always 0
        train_alignment(bare, data, lambda x: (x - x.detach()).mean(dim=(1, 2, 3, 4))[:, None], **FAST)


# ---------------------------------------------------------------- control_stats, callables
def test_control_stats_for_bundles_without_them(model, data):
    entry = dict(model.model.config.alignments[0], stats=None)
    stripped = xef.Forecaster(type(model.model)(model.model.config.replace(alignments=(entry,))), model.spec)
    stripped.model.load_state_dict(model.model.state_dict())
    with pytest.raises(ConfigError, match=r"xef.control_stats\(model, ds\)"):
        data.earthformer.ensemble(stripped, members=1, init=inits(data), device="cpu", control={"n": 1})
    half = data.isel(time=slice(0, 16))
    filled = control_stats(stripped, half)
    stats = filled.model.config.alignments[0]["stats"]
    means = window_means(half, model.spec)
    np.testing.assert_allclose(stats["mu"], [means.mean()], rtol=1e-5)
    np.testing.assert_allclose(stats["sigma"], [means.std()], rtol=1e-4)
    assert stats["count"] == len(means) and stripped.model.config.alignments[0]["stats"] is None
    assert [a["name"] for a in filled.model.config.alignments] == ["mean_intensity"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", XEarthformerWarning)
        data.earthformer.ensemble(filled, members=1, init=inits(data), device="cpu", control={"n": 1})


def test_a_callable_statistic_works_for_the_session_only(bare, data, tmp_path):
    def wet_mean(x):
        return torch.nn.functional.softplus(x - 1.0).mean(dim=(1, 2, 3, 4))[:, None]

    custom = train_alignment(bare, data, wet_mean, **FAST)
    (entry,) = custom.model.config.alignments
    assert entry["statistic"] is None and entry["readout"] == "direct" and entry["name"] == "custom"
    kw = {"members": 1, "init": inits(data), "device": "cpu"}
    data.earthformer.ensemble(custom, control={"statistic": wet_mean, "n": 1}, **kw)
    data.earthformer.ensemble(custom, control={"n": 1}, **kw)  # its only network: the default
    xef.save(custom, tmp_path / "c.xef")
    again = xef.load(tmp_path / "c.xef")
    with pytest.raises(ConfigError, match=r"callable \(<callable wet_mean>\) of another session.*registry stat"):
        data.earthformer.ensemble(again, control={"n": 1}, **kw)
    with pytest.raises(ConfigError, match="no alignment network"):
        find_entry(again.model, statistic("max"))


def test_an_official_style_entry_predicts_the_mean_of_normalised_data(bare, data):
    """What load_official_prediff(alignment=...) writes: only name and config."""
    from xearthformer.diffusion import NoiseSchedule
    from xearthformer.models.prediff.config import AlignmentConfig
    from xearthformer.models.prediff.knowledge import official_equivalent_scale

    latent = bare.model.config.unet_config.target_shape
    entry = {"name": "avg_x", "config": AlignmentConfig(input_shape=latent, base_units=8, out_len=LEAD).to_dict()}
    net = PreDiff(bare.model.config.replace(alignments=(entry,)))
    official = xef.Forecaster(randomised(net), bare.spec)
    guidance = prepare_guidance(official, {"value": 3.0})
    channel = bare.spec.targets[0]
    assert guidance.statistic.same_as(statistic("mean_intensity"))
    assert guidance.network_scale().offset == (channel.offset,) and guidance.network_scale().scale == (channel.scale,)
    assert guidance.strength == pytest.approx(official_equivalent_scale(NoiseSchedule("linear")))
    with pytest.raises(ConfigError, match="control_stats"):
        prepare_guidance(official, {"n": 1})
    filled = control_stats(official, data)
    assert filled.model.config.alignments[0]["stats"]["count"] == len(window_means(data, bare.spec))
    assert filled.model.config.alignments[0]["scale"] is None  # still the normalised-data scale
    data.earthformer.ensemble(filled, members=1, init=inits(data), device="cpu", control={"n": 1})


def test_forecast_with_control_is_the_mean_of_the_controlled_members(model, data):
    kw = {"init": inits(data), "device": "cpu", "members": 3, "control": {"n": 1, "scale": 50.0}}
    mean = data.earthformer.forecast(model, **kw)
    members = data.earthformer.ensemble(model, **kw)
    np.testing.assert_allclose(mean["rain"].values, members["rain"].mean("member").values, rtol=1e-5, atol=1e-6)
    assert mean.attrs["control_statistic"] == members.attrs["control_statistic"]


def test_networks_keep_their_order_so_the_default_statistic_stays(model, data):
    two = train_alignment(model, data, {"name": "max", "temperature": 0.5}, **FAST)
    assert [a["name"] for a in two.model.config.alignments] == ["mean_intensity", "max"]
    assert two.model.config.alignments[1]["readout"] == "direct"  # a maximum is not a frame mean
    again = control_stats(two, data.isel(time=slice(0, 16)))
    assert [a["name"] for a in again.model.config.alignments] == ["mean_intensity", "max"]
    assert prepare_guidance(again, {"n": 1}).statistic.same_as(statistic("mean_intensity"))
    g = prepare_guidance(again, {"statistic": "max", "temperature": 0.5, "n": 1})
    assert g.entry["name"] == "max" and g.components == 1


@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m"])
def test_decoded_guidance_moves_the_statistic_of_the_forecast(bare, model, data, sampler):
    """via='decoded' follows the statistic's own gradient through the VAE decoder: the mean
    intensity of the members themselves moves toward the target; no alignment network needed."""
    kw = {"members": 2, "init": inits(data), "device": "cpu", "sampler": sampler, "steps": 4}
    means = {}
    for value in (0.5, None, 6.0):
        control = None if value is None else {"statistic": "mean_intensity", "value": value, "via": "decoded",
                                               "scale": 5.0}
        ens = data.earthformer.ensemble(bare, control=control, **kw)
        means[value] = float(ens["rain"].mean())
    assert means[6.0] > means[None] > means[0.5]
    assert ens.attrs["control_via"] == "decoded" and ens.attrs["control_alignment"] == "none"
    # with the trained model's mu/sigma: n targets, and the per-member seed guarantee
    pair = data.earthformer.ensemble(model, control={"n": 2, "via": "decoded"}, **kw)
    alone = data.earthformer.ensemble(model, control={"n": 2, "via": "decoded"}, batch_size=1,
                                      **{**kw, "members": [1]})
    np.testing.assert_allclose(alone["rain"].values, pair["rain"].sel(member=[1]).values, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="needs a statistic"):
        data.earthformer.ensemble(bare, control={"value": 1.0, "via": "decoded"}, **kw)
    with pytest.raises(ConfigError, match="xef.control_stats"):
        data.earthformer.ensemble(bare, control={"statistic": "max", "n": 1, "via": "decoded"}, **kw)


# ------------------------------------------------------------------- context-conditioned mu/sigma
def window_context_means(data):
    """The context mean intensity of every training window, by numpy from the raw data."""
    rain = data["rain"].values.astype(np.float64)
    return np.array([rain[s:s + CONTEXT].mean() for s in range(0, rain.shape[0] - CONTEXT - LEAD + 1)])


def test_context_conditioned_stats_are_the_least_squares_fit_on_the_context(model, data):
    half = data.isel(time=slice(0, 16))
    conditioned = control_stats(model, half, conditioning="context")
    stats = conditioned.model.config.alignments[0]["stats"]
    future, past = window_means(half, model.spec), window_context_means(half)
    slope, intercept = np.polyfit(past, future, 1)  # an independent least-squares fit
    residual = future - (intercept + slope * past)
    assert stats["conditioning"] == "context" and stats["count"] == len(future)
    np.testing.assert_allclose(stats["slope"], [slope], rtol=1e-6)
    np.testing.assert_allclose(stats["context_mean"], past.mean(), rtol=1e-6)
    np.testing.assert_allclose(stats["mu"], [future.mean()], rtol=1e-6)
    np.testing.assert_allclose(stats["sigma"], [np.sqrt((residual ** 2).sum() / (len(future) - 2))], rtol=1e-6)
    # the targets of {"n": k}: the fit at each init's own context, plus k residual sigmas
    guidance = prepare_guidance(conditioned, {"n": 1.5})
    assert guidance.uses_context
    x = torch.from_numpy(layout.encode_inputs(data, model.spec, inits(data)))
    rain = data["rain"].values.astype(np.float64)
    own = np.array([rain[i - CONTEXT + 1:i + 1].mean() for i in range(INITS.start, INITS.stop)])
    expected = intercept + slope * own + 1.5 * stats["sigma"][0]
    np.testing.assert_allclose(guidance.targets(x)[:, 0].numpy(), expected, rtol=1e-5)


def test_context_conditioned_control_is_recorded_and_survives_a_bundle(model, data, tmp_path):
    conditioned = control_stats(model, data, conditioning="context")
    kw = {"members": 2, "init": inits(data), "device": "cpu", "progress": False, "control": {"n": 1}}
    ens = data.earthformer.ensemble(conditioned, **kw)
    assert ens.attrs["control_stats_conditioning"] == "context"
    assert "control_mu_slope" in ens.attrs and "control_context_mean" in ens.attrs
    assert "control_target" not in ens.attrs  # one target per init: none is the target
    xef.save(conditioned, tmp_path / "c.xef")
    again = data.earthformer.ensemble(xef.load(tmp_path / "c.xef"), **kw)
    np.testing.assert_array_equal(ens["rain"].values, again["rain"].values)
    climatological = data.earthformer.ensemble(control_stats(model, data), **kw)
    assert not np.allclose(ens["rain"].values, climatological["rain"].values)


def test_conditioning_refusals(model, data):
    with pytest.raises(ConfigError, match="conditioning must be one of"):
        control_stats(model, data, conditioning="month")
    from xearthformer.models.prediff.control import ControlStats
    with pytest.raises(ConfigError, match="slope"):
        ControlStats((1.0,), (1.0,), 10, conditioning="context")
    with pytest.raises(ShapeError, match="same in every training window"):
        ControlStats.estimate([[1.0], [2.0], [3.0]], context=[1.0, 1.0, 1.0])
    from xearthformer.errors import CheckpointError
    with pytest.raises(CheckpointError, match="slope and context_mean"):
        ControlStats.from_dict({"mu": [1.0], "sigma": [1.0], "count": 3, "conditioning": "context"})


@pytest.mark.parametrize("t", [999, 500, 10])
def test_decoded_guidance_has_the_exact_gradient_for_gaussian_latents(t):
    """For latents z0 ~ N(0, I) the exact denoiser is eps(z_t) = sqrt(1 - abar) z_t, so
    E[z0 | z_t] = sqrt(abar) z_t: the guidance gradient must equal autograd through that whole
    denoiser (not the 1 / sqrt(abar) of an eps held fixed)."""
    from types import SimpleNamespace

    from xearthformer.diffusion import NoiseSchedule, make_sampler
    from xearthformer.models.prediff.control import parse_control
    from xearthformer.models.prediff.knowledge import Guidance
    from xearthformer.models.prediff.statistics import DataUnits

    sampler = make_sampler("ddim", NoiseSchedule("linear"), steps=10)
    abar = sampler.schedule.alphas_cumprod[t].double()
    decoder = torch.nn.Conv3d(2, 1, 1).double()  # a (nonlinear below) stand-in for the VAE decoder
    net = SimpleNamespace(decode_latents=lambda z: torch.tanh(decoder(z.permute(0, 4, 1, 2, 3))).permute(0, 2, 3, 4, 1))
    stat = statistic("mean_intensity")
    guidance = Guidance({"name": None, "components": 1, "stats": None}, parse_control(
        {"statistic": "mean_intensity", "value": 0.9, "via": "decoded", "scale": 1.0}), stat,
        DataUnits((0.0,), (1.0,)), (-1.0, 1.0), 1.0)
    target = torch.full((3, 1), 0.9, dtype=torch.float64)

    def denoise(z, t_):
        return (1 - abar).sqrt() * z

    guided = guidance._wrap_decoded(net, denoise, sampler, target)
    z = torch.randn(3, 2, 4, 4, 2, dtype=torch.float64)
    steps = torch.full((3,), t, dtype=torch.long)
    shift = (guided(z, steps) - denoise(z, steps)) / (1 - abar).sqrt()  # = scale * dU/dz
    zz = z.clone().requires_grad_(True)
    x0 = (zz - (1 - abar).sqrt() * denoise(zz, steps)) / abar.sqrt()  # = sqrt(abar) z
    error = (stat(net.decode_latents(x0)) - target).abs().sum()
    (exact,) = torch.autograd.grad(error, zz)
    # (rtol: the schedule is float32; at t = 10 a fixed eps would be 1 / abar = 0.1 % off)
    torch.testing.assert_close(shift, exact, rtol=2e-4, atol=1e-12)


def test_the_norm_key_is_parsed_recorded_and_checked(model, data):
    from xearthformer.models.prediff.control import parse_control

    request = parse_control({"n": 1, "norm": "squared"})
    assert request.norm == "squared" and request.label == "n=+1 norm=squared"
    assert json.loads(request.to_attrs()) == {"n": 1.0, "norm": "squared"}
    with pytest.raises(ConfigError, match="'norm' must be one of"):
        parse_control({"n": 1, "norm": "l1"})
    with pytest.raises(ConfigError, match="whose error norm is 'l2'"):
        parse_control({"n": 1, "norm": "squared", "parity": True})
    kw = {"members": 2, "init": inits(data), "device": "cpu", "progress": False}
    squared = data.earthformer.ensemble(model, control={"n": 2, "scale": 50.0, "norm": "squared"}, **kw)
    l2 = data.earthformer.ensemble(model, control={"n": 2, "scale": 50.0}, **kw)
    assert squared.attrs["control_norm"] == "squared" and l2.attrs["control_norm"] == "l2"
    assert not np.allclose(squared["rain"].values, l2["rain"].values)


def test_context_conditioning_needs_the_targets_among_the_inputs():
    from xearthformer.layout import Channel, DataSpec, Grid, TimeStep
    from xearthformer.models.prediff.knowledge import Guidance
    from xearthformer.models.prediff.control import parse_control
    from xearthformer.models.prediff.statistics import DataUnits
    from xearthformer.training.alignment import conditioning_context

    rain, wind = Channel("rain"), Channel("wind")
    spec = DataSpec(inputs=(wind,), targets=(rain,), grid=Grid.xy(range(2), range(2)),
                    step=TimeStep(5, "minutes"), context=2, lead=1)
    stat = statistic("mean_intensity")
    with pytest.raises(ConfigError, match="not all model inputs"):
        conditioning_context(spec, stat, "context")
    assert conditioning_context(spec, stat, "none") is None
    both = DataSpec(inputs=(wind, rain), targets=(rain,), grid=spec.grid, step=spec.step, context=2, lead=1)
    assert conditioning_context(both, stat, "context") == (stat, (1,))
    guidance = Guidance({"name": None, "components": 1, "stats": None}, parse_control(lambda c: c.mean()),
                        stat, DataUnits((0.0,), (1.0,)), (0.0, 1.0), 1.0)  # no context channels known
    with pytest.raises(ConfigError, match="not all among its inputs"):
        guidance.targets(torch.zeros(1, 2, 2, 2, 1))
