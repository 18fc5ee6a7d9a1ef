"""Samplers without training: on Gaussian data the optimal denoiser is known in closed form.

Every check compares the samplers with references derived independently of their code
(``tests/gaussian_toy.py``): the mean must equal the data mean and the variance the sampler's
exact expected variance, within 4 standard errors of N = 20000 samples (SE of the mean
sqrt(var / N) ~ 0.7 % of the std; SE of the variance var * sqrt(2 / (N - 1)) = 1.0 %). How far
that expected variance lies from the data variance is the sampler's discretization bias: it is
bounded per sampler and step count below (a first-order sampler at 10 steps is far off).
DPM-Solver++ has no closed form; it is checked against the exact ODE solution within its
accuracy at each step count, and for its second order of convergence.
"""

import functools
import math

import numpy as np
import pytest
import torch

from tests import gaussian_toy as toy
from xearthformer.diffusion import NoiseSchedule, make_sampler, sample

N = 20000
Z = 4.0  # tolerance in standard errors
SCHEDULE = NoiseSchedule("linear")
# DPM-Solver++(2M): largest relative gain error vs the exact ODE allowed at n steps
DPM_ACCURACY = {10: 0.04, 20: 0.015, 50: 0.005}


@functools.lru_cache(maxsize=None)  # the DDPM-1000 run serves two tests (~0.3 MB per run)
def _cached_run(name, steps, prediction, options, n):
    return _run(name, steps, prediction, dict(options), n=n)


def _run(name, steps, prediction, options, schedule=SCHEDULE, seed=0, n=N):
    g = torch.Generator().manual_seed(seed)
    sampler = make_sampler(name, schedule, steps, prediction, **options)
    x = toy.marginal_start(schedule, n, g)
    out = sample(toy.optimal_denoiser(schedule, prediction), x, sampler,
                 lambda shape: torch.randn(shape, generator=g), progress=False)
    return sampler, out


def _expected_variance(sampler, schedule=SCHEDULE):
    ts = sampler.timesteps.numpy()
    if sampler.stochastic:
        return toy.ddpm_variance(schedule, ts)
    if sampler.name == "ddim":
        return toy.ddim_gain(schedule, ts) ** 2 * toy.start_variance(schedule)
    return toy.ode_gain(schedule, ts) ** 2 * toy.start_variance(schedule)


STOCHASTIC = [("ddpm", 1000, {}), ("ddpm", 10, {}), ("ddpm", 20, {}), ("ddpm", 50, {}),
              ("ddim", 10, {"eta": 1.0}), ("ddim", 20, {"eta": 1.0}), ("ddim", 50, {"eta": 1.0})]
DETERMINISTIC = [("ddim", n, {}) for n in (10, 20, 50)] + \
                [("dpm++2m", n, {"spacing": sp}) for n in (10, 20, 50) for sp in ("uniform", "logsnr")]


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("name,steps,options", STOCHASTIC + DETERMINISTIC)
def test_samples_have_the_data_mean_and_the_exact_variance(name, steps, options, prediction):
    # 1000 DDPM steps cost ~1 s per 20000 samples: the v variant (the same chain) gets 5000
    n = 5000 if steps == 1000 and prediction == "v" else N
    sampler, out = _cached_run(name, steps, prediction, tuple(options.items()), n)
    variance = _expected_variance(sampler)
    mean_z, var_z = toy.moment_scores(out, toy.MU, variance)
    assert np.abs(mean_z).max() <= Z, (mean_z, "mean off the data mean")
    if name == "dpm++2m":  # reference = exact ODE; the solver's own error is allowed on top
        eps = DPM_ACCURACY[steps]
        slack = (2 * eps + eps ** 2) / math.sqrt(2 / (n - 1))
        assert np.abs(var_z).max() <= Z + slack, var_z
    else:
        assert np.abs(var_z).max() <= Z, (var_z, "variance off the exact expected variance")


def test_x0_prediction_samples_too():
    sampler, out = _run("ddim", 20, "x0", {})
    mean_z, var_z = toy.moment_scores(out, toy.MU, _expected_variance(sampler))
    assert np.abs(mean_z).max() <= Z and np.abs(var_z).max() <= Z


def test_ddpm_1000_reproduces_the_data_variance():
    # the official sampler: its remaining bias (the fixed posterior variance) is below 1 % for
    # S >= 0.5 and 5 % for the sharp S = 0.1 dim, so its samples match the data variance itself
    sampler = make_sampler("ddpm", SCHEDULE)
    bias = toy.ddpm_variance(SCHEDULE, sampler.timesteps.numpy()) / toy.S ** 2 - 1
    assert np.abs(bias[toy.S >= 0.5]).max() < 0.01 and abs(bias[toy.S == 0.1][0]) < 0.05
    _, out = _cached_run("ddpm", 1000, "eps", (), N)
    mean_z, var_z = toy.moment_scores(out, toy.MU, toy.S ** 2)
    assert np.abs(mean_z).max() <= Z and np.abs(var_z[toy.S >= 0.5]).max() <= Z


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [10, 20, 50, 200])
def test_ddim_gain_equals_the_closed_form(schedule_name, steps):
    schedule = NoiseSchedule(schedule_name)
    sampler = make_sampler("ddim", schedule, steps)
    measured = toy.measured_gain(sampler, toy.optimal_denoiser(schedule), schedule)
    np.testing.assert_allclose(measured, toy.ddim_gain(schedule, sampler.timesteps.numpy()),
                               rtol=1e-5)


@pytest.mark.parametrize("spacing", ["uniform", "logsnr"])
@pytest.mark.parametrize("steps", [10, 20, 50])
def test_dpm_solver_follows_the_exact_ode(spacing, steps):
    sampler = make_sampler("dpm++2m", SCHEDULE, steps, spacing=spacing)
    measured = toy.measured_gain(sampler, toy.optimal_denoiser(SCHEDULE), SCHEDULE)
    exact = toy.ode_gain(SCHEDULE, sampler.timesteps.numpy())
    assert np.abs(measured / exact - 1).max() <= DPM_ACCURACY[steps]


@pytest.mark.parametrize("spacing", ["uniform", "logsnr"])
def test_dpm_solver_converges_on_the_cosine_schedule(spacing):
    # cosine ends at alpha_bar ~ 0 (clipped beta 0.999): the first steps are harder, and
    # log-SNR spacing spends many of its points there; at 100 steps both are within 1.5 %
    schedule = NoiseSchedule("cosine")
    errors = []
    for steps in (25, 100):
        sampler = make_sampler("dpm++2m", schedule, steps, spacing=spacing)
        measured = toy.measured_gain(sampler, toy.optimal_denoiser(schedule), schedule)
        errors.append(np.abs(measured / toy.ode_gain(schedule, sampler.timesteps.numpy()) - 1).max())
    assert errors[1] < 0.015 and errors[1] < errors[0]


def test_dpm_solver_is_second_order():
    # doubling the steps divides the error by ~4 (second order), not ~2 (first order as DDIM)
    errors = {}
    for name in ("dpm++2m", "ddim"):
        for steps in (20, 40):
            sampler = make_sampler(name, SCHEDULE, steps, spacing="logsnr")
            measured = toy.measured_gain(sampler, toy.optimal_denoiser(SCHEDULE), SCHEDULE)
            exact = toy.ode_gain(SCHEDULE, sampler.timesteps.numpy())
            errors[name, steps] = np.abs(measured / exact - 1).max()
    assert errors["dpm++2m", 20] / errors["dpm++2m", 40] > 3.5
    assert errors["ddim", 20] / errors["ddim", 40] < 2.5


@pytest.mark.parametrize("name,options", [("ddpm", {}), ("ddim", {}), ("ddim", {"eta": 1.0}),
                                          ("dpm++2m", {})])
def test_variance_bias_shrinks_with_steps(name, options):
    biases = []
    for steps in (10, 20, 50):
        sampler = make_sampler(name, SCHEDULE, steps, **options)
        biases.append(np.abs(_expected_variance(sampler) / toy.S ** 2 - 1)[toy.S >= 0.5].max())
    assert biases[0] > biases[1] > biases[2]


def test_ddim_eta0_is_deterministic():
    sampler = make_sampler("ddim", SCHEDULE, 20)
    x = toy.marginal_start(SCHEDULE, 64, torch.Generator().manual_seed(3))
    calls = []

    def noise(shape):
        calls.append(shape)
        return torch.randn(shape)

    a = sample(toy.optimal_denoiser(SCHEDULE), x, sampler, noise, progress=False)
    b = sample(toy.optimal_denoiser(SCHEDULE), x, sampler, noise, progress=False)
    assert torch.equal(a, b) and not calls


@pytest.mark.parametrize("name,steps", [("ddpm", 1000), ("ddim", 20)])
def test_the_check_fails_on_a_wrong_schedule_coefficient(name, steps):
    # a 1 % error in one coefficient the sampler uses (posterior_mean_coef2 for DDPM,
    # sqrt_recipm1_alphas_cumprod, i.e. eps -> x0, for DDIM) must fail the moment check
    bad = NoiseSchedule("linear")
    if name == "ddpm":
        bad.posterior_mean_coef2 = bad.posterior_mean_coef2 * 1.01
    else:
        bad.sqrt_recipm1_alphas_cumprod = bad.sqrt_recipm1_alphas_cumprod * 1.01
    g = torch.Generator().manual_seed(0)
    sampler = make_sampler(name, bad, steps)
    x = toy.marginal_start(SCHEDULE, 4000, g)
    out = sample(toy.optimal_denoiser(SCHEDULE), x, sampler,
                 lambda shape: torch.randn(shape, generator=g), progress=False)
    mean_z, var_z = toy.moment_scores(out, toy.MU, _expected_variance(sampler))
    assert max(np.abs(mean_z).max(), np.abs(var_z).max()) > Z
