"""Samplers: the official DDPM step, the shared interface, the registry, the sampling loop,
timestep spacings, per-member independence, and the package's import direction."""

import ast
import doctest
import importlib
import os
import pkgutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import xearthformer.diffusion as diffusion
from tests import gaussian_toy as toy
from xearthformer.diffusion import (NoiseSchedule, logsnr_timesteps, make_sampler, sample,
                                    uniform_timesteps)
from xearthformer.diffusion.sampler import log_snr
from xearthformer.errors import ConfigError, ShapeError

ORACLE = load_file(os.path.join(os.path.dirname(__file__), "data", "prediff",
                                "oracle_diffusion_schedule.safetensors"))
LINEAR = NoiseSchedule("linear")


def _close(actual, expected, relative=False):
    # the fixtures were made at torch.set_num_threads(1) (conftest sets it); <= 1e-5 absolute,
    # or relative to the tensor's largest value where values are scaled up (t = 999)
    scale = expected.abs().max() if relative else 1.0
    assert (actual - expected).abs().max() <= 1e-5 * scale


@pytest.mark.parametrize("suffix", ["", "_edge"])
def test_one_ddpm_step_equals_the_official_p_sample(suffix):
    sampler = make_sampler("ddpm", LINEAR)
    t, x_t, eps = ORACLE["t" + suffix], ORACLE["zt"], ORACLE["eps" + suffix]
    coef1, coef2, log_variance = sampler.posterior(t, x_t)
    _close(log_variance, ORACLE["posterior_log_variance_t" + suffix])
    _close(LINEAR.gather(LINEAR.posterior_variance, t, x_t), ORACLE["posterior_variance_t" + suffix])
    _close(LINEAR.convert(eps, x_t, t, source="eps", target="x0"), ORACLE["z0_pred" + suffix],
           relative=True)
    # with zero noise the step is the posterior mean (mean + std * 0)
    _close(sampler.step(eps, t, x_t, torch.zeros_like(x_t)), ORACLE["model_mean" + suffix])
    _close(sampler.step(eps, t, x_t, ORACLE["noise" + suffix]), ORACLE["z_prev" + suffix])
    # a callable noise source gives the same step
    _close(sampler.step(eps, t, x_t, lambda shape: ORACLE["noise" + suffix]), ORACLE["z_prev" + suffix])


def test_no_noise_is_added_at_t0():
    sampler = make_sampler("ddpm", LINEAR)
    x, eps = torch.randn(2, 3), torch.randn(2, 3)
    t = torch.tensor([0, 0])
    assert torch.equal(sampler.step(eps, t, x, torch.randn(2, 3)), sampler.step(eps, t, x, torch.zeros(2, 3)))


@pytest.mark.parametrize("steps", [1, 7, 50, 1000])
def test_ddim_with_eta_1_is_the_ddpm_step(steps):
    # two independent formulas for the same transition (DDIM paper, eq. 16 with eta = 1)
    ddpm, ddim = make_sampler("ddpm", LINEAR, steps), make_sampler("ddim", LINEAR, steps, eta=1.0)
    g = torch.Generator().manual_seed(steps)
    for t in ddpm.timesteps[:: max(1, steps // 5)].tolist() + [int(ddpm.timesteps[-1])]:
        x, eps, z = (torch.randn(4, 6, dtype=torch.float64, generator=g) for _ in range(3))
        torch.testing.assert_close(ddim.step(eps, t, x, z), ddpm.step(eps, t, x, z),
                                   atol=1e-6, rtol=1e-6)


def test_respaced_ddpm_takes_one_timestep_per_sample():
    sampler = make_sampler("ddpm", LINEAR, 20)
    x, eps, z = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    t = sampler.timesteps[[0, 5, 19]]
    together = sampler.step(eps, t, x, z)
    for i in range(3):
        assert torch.equal(together[i:i + 1], sampler.step(eps[i:i + 1], t[i:i + 1], x[i:i + 1], z[i:i + 1]))


@pytest.mark.parametrize("name,options,draws", [("ddpm", {}, 12), ("ddim", {}, 0),
                                                ("ddim", {"eta": 0.5}, 12), ("dpm++2m", {}, 0)])
def test_noise_is_drawn_once_per_step_by_stochastic_samplers_only(name, options, draws):
    sampler = make_sampler(name, LINEAR, 12, **options)
    shapes = []

    def noise(shape):
        shapes.append(tuple(shape))
        return torch.randn(shape)

    sample(lambda x, t: torch.zeros_like(x), torch.randn(2, 3), sampler, noise, progress=False)
    assert shapes == [(2, 3)] * draws and sampler.stochastic == (draws > 0)


@pytest.mark.parametrize("name,options", [("ddpm", {}), ("ddim", {"eta": 1.0}), ("ddim", {}),
                                          ("dpm++2m", {})])
def test_a_member_is_bit_identical_alone_or_in_a_batch(name, options):
    # per-member generators, as the family draws them: the samplers never mix batch members
    sampler = make_sampler(name, LINEAR, 10, **options)
    denoise = toy.optimal_denoiser(LINEAR)

    def run(members):
        gens = [torch.Generator().manual_seed(100 + m) for m in members]
        x = torch.cat([torch.randn(1, 4, generator=g) for g in gens])
        noise = lambda shape: torch.cat([torch.randn(1, *shape[1:], generator=g) for g in gens])  # noqa: E731
        return sample(denoise, x, sampler, noise, progress=False)

    batch = run([0, 1, 2, 3, 4])
    assert torch.equal(run([3])[0], batch[3])


def test_dpm_solver_is_multistep_and_checks_the_order():
    sampler = make_sampler("dpm++2m", LINEAR, 5)
    x = torch.randn(2, 3)
    ts = sampler.timesteps.tolist()
    x1 = sampler.step(torch.zeros_like(x), ts[0], x)
    with pytest.raises(ConfigError, match="multistep"):
        sampler.step(torch.zeros_like(x), ts[2], x1)
    sampler.step(torch.zeros_like(x), ts[0], x)  # starting again at timesteps[0] is fine
    with pytest.raises(ShapeError, match="changed shape"):
        sampler.step(torch.zeros(3, 3), ts[1], torch.zeros(3, 3))
    with pytest.raises(ShapeError, match="one timestep"):
        sampler.step(torch.zeros_like(x), torch.tensor(ts[:2]), x)


def test_sample_runs_the_loop_with_callback_and_progress_bar(capsys):
    sampler = make_sampler("ddim", LINEAR, 4)
    seen = []
    out = sample(lambda x, t: torch.zeros_like(x), torch.randn(2, 3), sampler,
                 progress=True, callback=lambda i, t, x: seen.append((i, t, tuple(x.shape))))
    assert seen == [(i, t, (2, 3)) for i, t in enumerate(sampler.timesteps.tolist())]
    assert out.shape == (2, 3) and "ddim sampling" in capsys.readouterr().err


def test_denoiser_gets_a_long_timestep_per_sample():
    sampler = make_sampler("dpm++2m", LINEAR, 3)
    calls = []

    def denoise(x, t):
        calls.append(t)
        return torch.zeros_like(x)

    sample(denoise, torch.randn(5, 2), sampler, progress=False)
    assert [c.tolist() for c in calls] == [[t] * 5 for t in sampler.timesteps.tolist()]
    assert all(c.dtype == torch.long for c in calls)


# ---------------------------------------------------------------------------- registry and errors
def test_registry_defaults():
    assert make_sampler("ddpm", LINEAR).num_steps == 1000
    assert make_sampler("ddim", LINEAR).num_steps == 50
    assert make_sampler("dpm++2m", LINEAR).num_steps == 20
    assert make_sampler("ddim", NoiseSchedule("linear", timesteps=10)).num_steps == 10
    assert make_sampler("ddpm", LINEAR).timesteps.tolist() == list(range(999, -1, -1))


@pytest.mark.parametrize("call,match", [
    (lambda: make_sampler("euler", LINEAR), r"valid names: \['ddpm', 'ddim', 'dpm\+\+2m'\]"),
    (lambda: make_sampler("ddim", LINEAR, 0), r"steps must be an int in 1..1000"),
    (lambda: make_sampler("ddim", LINEAR, 1001), r"steps must be an int in 1..1000"),
    (lambda: make_sampler("ddim", LINEAR, 2.5), r"steps must be an int"),
    (lambda: make_sampler("ddim", LINEAR, True), r"steps must be an int"),
    (lambda: make_sampler("ddpm", LINEAR, eta=0.5), r"'eta' for 'ddim'"),
    (lambda: make_sampler("ddim", LINEAR, eta=1.5), r"eta must be a number in \[0, 1\]"),
    (lambda: make_sampler("ddim", LINEAR, prediction="score"), r"prediction must be one of"),
    (lambda: make_sampler("ddim", LINEAR, spacing="karras"), r"spacing must be one of"),
    (lambda: make_sampler("ddim", "linear"), r"schedule must be a NoiseSchedule"),
])
def test_bad_sampler_requests_raise_config_errors(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


def test_set_steps_checks_bounds_and_resets():
    sampler = make_sampler("ddim", LINEAR, 10)
    sampler.set_steps(25)
    assert sampler.num_steps == 25
    with pytest.raises(ConfigError, match="1..1000"):
        sampler.set_steps(0)


def test_step_errors_name_the_problem():
    sampler = make_sampler("ddpm", LINEAR, 10)
    x = torch.zeros(2, 3)
    with pytest.raises(ConfigError, match="not one of this sampler's timesteps"):
        sampler.step(x, 500, x, x)
    with pytest.raises(ShapeError, match="noise must be a tensor of x_t's shape"):
        sampler.step(x, 999, x, torch.zeros(2, 4))
    with pytest.raises(ConfigError, match="needs noise"):
        sampler.step(x, 999, x)
    with pytest.raises(ConfigError, match="stochastic: pass noise_fn"):
        sample(lambda x, t: x, x, sampler)
    with pytest.raises(ConfigError, match="make_sampler"):
        sample(lambda x, t: x, x, "ddpm")
    with pytest.raises(ShapeError, match="leading batch dim"):
        sample(lambda x, t: x, torch.tensor(1.0), make_sampler("ddim", LINEAR, 3))


# ---------------------------------------------------------------------------- spacings
@settings(max_examples=80, deadline=None)
@given(total=st.integers(2, 1000), data=st.data())
def test_uniform_timesteps_are_distinct_descending_and_start_noisiest(total, data):
    steps = data.draw(st.integers(1, total))
    ts = uniform_timesteps(total, steps)
    assert len(ts) == steps and int(ts[0]) == total - 1 and int(ts[-1]) >= 0
    assert bool((ts[1:] < ts[:-1]).all())
    gaps = (ts[:-1] - ts[1:]).tolist() + [int(ts[-1]) + 1]  # the last jump is to t = -1 (clean)
    assert max(gaps) - min(gaps) <= 1  # even spacing


@settings(max_examples=40, deadline=None)
@given(steps=st.integers(1, 1000), cosine=st.booleans())
def test_logsnr_timesteps_are_distinct_descending_and_span_the_chain(steps, cosine):
    schedule = NoiseSchedule("cosine") if cosine else LINEAR
    ts = logsnr_timesteps(schedule.alphas_cumprod64, steps)
    assert len(ts) == steps and int(ts[0]) == 999 and bool((ts[1:] < ts[:-1]).all())
    assert int(ts[-1]) == (0 if steps > 1 else 999)


def test_logsnr_timesteps_are_evenly_spaced_in_log_snr():
    lam = log_snr(LINEAR.alphas_cumprod64)
    ts = logsnr_timesteps(LINEAR.alphas_cumprod64, 10).numpy()
    spacing = (lam[0] - lam[-1]) / 9
    assert np.abs(np.diff(lam[ts]) - spacing).max() < 0.25 * spacing


def test_full_uniform_spacing_is_the_official_loop():
    assert uniform_timesteps(1000, 1000).tolist() == list(range(999, -1, -1))


# ---------------------------------------------------------------------------- package rules
ALLOWED = {"__future__", "math", "collections", "typing", "numpy", "torch"}
ALLOWED_OWN = {"errors", "device", "progress"}  # the ground floor


def test_diffusion_imports_only_torch_numpy_and_the_ground_floor():
    folder = os.path.dirname(diffusion.__file__)
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(folder, name), encoding="utf-8").read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
                assert roots <= ALLOWED, (name, roots)
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    assert node.module.split(".")[0] in ALLOWED, (name, node.module)
                elif node.level == 2:  # from ..x import
                    assert (node.module or "").split(".")[0] in ALLOWED_OWN, (name, node.module)
                else:
                    assert node.level == 1, (name, node.module)


def test_docstring_examples_run():
    for info in pkgutil.iter_modules(diffusion.__path__):
        module = importlib.import_module(f"xearthformer.diffusion.{info.name}")
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, info.name
    assert doctest.testmod(diffusion).failed == 0
