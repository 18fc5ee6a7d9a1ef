"""Training PreDiff on labelled data (xef.train_prediff, xef.train(family="prediff"), the CLI):
the VAE stage, then the denoiser with the VAE frozen, EMA weights in the bundle, resume after
an interruption, and the objectives against hand-computed values. A tiny preset on a 16 x 16
grid with a few optimizer steps per stage: plumbing, not skill (the demo measures skill)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import xearthformer as xef
from xearthformer.cli import main
from xearthformer.errors import ConfigError
from xearthformer.models.prediff.family import PreDiff, presets
from xearthformer.training import prediff as tp
from xearthformer.training.objectives import Batch

G, CONTEXT, LEAD = 16, 3, 2
QUICK = dict(preset="tiny", context=CONTEXT, lead=LEAD, epochs=2, vae_epochs=2, batch_size=4, steps_per_epoch=2,
             device="cpu", progress=False, seed=0, sampler="ddim", steps=2)


def storms(n_time: int = 24, seed: int = 0) -> xr.Dataset:
    """A Gaussian rain cell drifting east over a 16 x 16 km grid, plus a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:G, 0:G]
    frames = [10 * np.exp(-((xx - (3 + 0.5 * t) % G) ** 2 + (yy - 8 - 3 * np.sin(t / 4)) ** 2) / 8.0)
              + 0.1 * rng.random((G, G)) for t in range(n_time)]
    return xr.Dataset(
        {"rain": (("time", "y", "x"), np.array(frames, "f4"), {"units": "mm h-1"})},
        coords={"time": pd.date_range("2020-06-01", periods=n_time, freq="10min"),
                "y": ("y", np.arange(G) * 1000.0, {"standard_name": "projection_y_coordinate", "units": "m"}),
                "x": ("x", np.arange(G) * 1000.0, {"standard_name": "projection_x_coordinate", "units": "m"})})


@pytest.fixture(scope="module")
def data():
    return storms()


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    ckdir = tmp_path_factory.mktemp("prediff") / "run"
    return xef.train(data, family="prediff", checkpoint_dir=ckdir, **QUICK), ckdir


def _equal_states(a, b, prefix=""):
    keys = [k for k in a if k.startswith(prefix)]
    return bool(keys) and all(torch.equal(a[k], b[k]) for k in keys)


def test_two_stages_give_one_bundle_with_ema_weights(trained, tmp_path):
    fc, ckdir = trained
    assert isinstance(fc.model, PreDiff) and fc.model.config.weights == "ema"
    meta = fc.metadata["training"]
    assert meta["family"] == "prediff" and meta["weights"] == "ema"
    assert len(meta["vae"]["history"]["train_loss"]) == 2 and len(meta["denoiser"]["history"]["train_loss"]) == 2
    assert meta["latent_scale"] == fc.model.config.latent_scale != 1.0          # 1 / std of the latents
    for stage in ("vae", "denoiser"):
        assert (ckdir / stage / "last.pt").is_file()
    state = fc.model.state_dict()
    vae_stage = torch.load(ckdir / "vae" / "last.pt", weights_only=True)
    den_stage = torch.load(ckdir / "denoiser" / "last.pt", weights_only=True)
    # the VAE is the VAE stage's (best) result, untouched by the denoiser stage
    vae_best = vae_stage["best_model"] or vae_stage["model"]
    assert all(torch.equal(state[k], vae_best[k]) for k in state if k.startswith("vae."))
    assert _equal_states(state, den_stage["model"], "vae.")
    # the denoiser weights are the EMA of the run, not its raw weights
    shadow = den_stage["ema"]["shadow"]
    params = {k for k, _ in fc.model.named_parameters()}
    assert set(shadow) == {k for k in params if k.startswith("denoiser.")}          # only the denoiser averaged
    assert all(torch.equal(state[k], shadow[k]) for k in shadow)
    assert not all(torch.equal(den_stage["model"][k], shadow[k]) for k in shadow)
    # intermediate bundles hold raw weights and say so; the returned one round-trips
    assert xef.load(ckdir / "last.xef").model.config.weights == "raw"
    xef.save(fc, tmp_path / "p.xef")
    again = xef.load(tmp_path / "p.xef")
    assert again.model.config == fc.model.config and _equal_states(again.model.state_dict(), state)


def test_the_trained_bundle_ensembles(trained, data):
    fc, _ = trained
    ens = data.earthformer.ensemble(fc, members=3, init=data.time.values[10:12], device="cpu", progress=False)
    values = ens.rain.values
    assert values.shape == (2, LEAD, 3, G, G) and np.isfinite(values).all()
    assert not np.allclose(values[:, :, 0], values[:, :, 1])


def test_raw_weights_on_request(data):
    fc = tp.train_prediff(data, weights="raw", ema_decay=0.9, **QUICK)
    assert fc.model.config.weights == "raw" and fc.metadata["training"]["weights"] == "raw"


def test_an_interrupted_run_resumes_where_it_stopped(data, tmp_path, monkeypatch, trained):
    reference, _ = trained
    ckdir = tmp_path / "run"
    from xearthformer.training import loop

    calls = []

    def interrupted_fit(model, *args, on_epoch_end=None, **kwargs):
        calls.append(type(model).__name__)

        def stop_after_first(epoch, history, is_best, net):
            if on_epoch_end is not None:
                on_epoch_end(epoch, history, is_best, net)
            if type(model).__name__ == "PreDiff":
                raise KeyboardInterrupt          # killed after the denoiser's first epoch
            return False

        return loop_fit(model, *args, on_epoch_end=stop_after_first, **kwargs)

    loop_fit = loop.fit
    monkeypatch.setattr(loop, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        xef.train(data, family="prediff", checkpoint_dir=ckdir, **QUICK)
    monkeypatch.setattr(loop, "fit", loop_fit)
    assert calls == ["VAETraining", "PreDiff"]
    assert torch.load(ckdir / "denoiser" / "last.pt", weights_only=True)["epoch"] == 1
    resumed = xef.train(data, family="prediff", checkpoint_dir=ckdir, resume=True, **QUICK)
    a, b = resumed.model.state_dict(), reference.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("vae."))   # the finished VAE stage is kept
    ref_losses = reference.metadata["training"]["denoiser"]["history"]["step_loss"]
    assert resumed.metadata["training"]["denoiser"]["history"]["step_loss"] == ref_losses
    for k in a:                                   # the same as the uninterrupted run
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------------- objectives
def test_diffusion_objective_against_a_hand_computation():
    torch.manual_seed(0)
    net = PreDiff(presets()["tiny"].replace(input_shape=(CONTEXT, G, G, 1), target_shape=(LEAD, G, G, 1),
                                            latent_scale=0.5)).eval()
    x, y = torch.randn(2, CONTEXT, G, G, 1), torch.randn(2, LEAD, G, G, 1)
    terms = tp.DiffusionObjective()(net, Batch(x, y, None))     # eval mode: t and eps from seed 0
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        mean_c, _ = net.vae.encode(x)
        mean, logvar = net.vae.encode(y)
        z0 = (mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=g)) * 0.5
        t = torch.randint(0, 1000, (2,), generator=g)
        eps = torch.randn(z0.shape, generator=g)
        abar = torch.tensor(net.schedule.alphas_cumprod64)[t].float().view(2, 1, 1, 1, 1)
        z_t = abar.sqrt() * z0 + (1 - abar).sqrt() * eps
        pred = net.denoiser(z_t, t, mean_c * 0.5)
    assert float(terms.count) == eps.numel()
    torch.testing.assert_close(terms.total, ((pred - eps) ** 2).sum(), rtol=1e-5, atol=1e-5)
    net.train()                                   # training mode draws fresh t and noise
    torch.manual_seed(1)
    first = tp.DiffusionObjective()(net, Batch(x, y, None)).total
    assert not torch.equal(first, tp.DiffusionObjective()(net, Batch(x, y, None)).total)


def test_vae_objective_is_the_per_frame_vae_loss_and_skips_missing_points():
    torch.manual_seed(0)
    vae = PreDiff(presets()["tiny"].replace(input_shape=(CONTEXT, G, G, 1), target_shape=(LEAD, G, G, 1))).vae
    y = torch.rand(2, LEAD, G, G, 1)
    mask = torch.ones_like(y, dtype=torch.bool)
    mask[0, 0, :4] = False
    y_nan = torch.where(mask, y, torch.tensor(float("nan")))
    objective = tp.VAEObjective(kl_weight=0.0)
    torch.manual_seed(3)
    terms = objective(tp.VAETraining(vae), Batch(torch.zeros(2, CONTEXT, G, G, 1), y_nan, mask))
    assert torch.isfinite(terms.total) and float(terms.count) == 2 * LEAD
    torch.manual_seed(3)
    recon, _, _ = tp.VAETraining(vae)(torch.where(mask, y, torch.zeros(())))
    expected = ((y - recon).abs() * mask).sum()   # L1 summed over the valid pixels
    torch.testing.assert_close(terms.total, expected, rtol=1e-5, atol=1e-4)


def test_latent_std_is_the_std_of_the_latents_whatever_the_batch():
    from xearthformer.training.loop import TensorSource

    torch.manual_seed(0)
    vae = PreDiff(presets()["tiny"].replace(input_shape=(CONTEXT, G, G, 1), target_shape=(LEAD, G, G, 1))).vae
    y = np.random.default_rng(0).normal(size=(10, LEAD, G, G, 1)).astype("f4")
    source = TensorSource(np.zeros((10, CONTEXT, G, G, 1), "f4"), y)
    with torch.no_grad():
        expected = float(vae.encode(torch.from_numpy(y[:7]))[0].std())
    for bs in (1, 3, 8):
        assert tp.latent_std(vae, source, windows=7, batch_size=bs) == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------- CLI, refusals
def test_cli_trains_a_prediff_bundle(data, tmp_path):
    path = tmp_path / "storms.nc"
    data.to_netcdf(path)
    out = tmp_path / "prediff.xef"
    code = main(["train", "--input", str(path), "--output", str(out), "--family", "prediff", "--preset", "tiny",
                 "--context", str(CONTEXT), "--lead", str(LEAD), "--epochs", "1", "--batch-size", "4",
                 "--steps-per-epoch", "1", "--device", "cpu", "--set", "vae_epochs=1", "steps=2"])
    assert code == 0
    fc = xef.load(out)
    assert isinstance(fc.model, PreDiff) and fc.model.config.steps == 2
    assert len(fc.metadata["training"]["vae"]["history"]["train_loss"]) == 1


@pytest.mark.parametrize("kwargs, match", [
    ({"targets": "other"}, "predicts its input variables"),
    ({"static": ["orography"]}, "no static or calendar"),
    ({"weights": "best"}, "weights must be one of"),
    ({"preset": "small"}, "unknown prediff preset 'small'.*tiny"),
])
def test_refusals(data, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        tp.train_prediff(data, **{**QUICK, **kwargs})
