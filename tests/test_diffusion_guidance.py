"""Knowledge control: the official aligned DDPM step (parity), and the default guidance's
direction, strength, independence of batch-mates and of the number of steps, on Gaussian data
with the exact statistic predictor (an ideal alignment network)."""

import os

import pytest
import torch
from safetensors.torch import load_file

from tests import gaussian_toy as toy
from xearthformer.diffusion import (OFFICIAL_GUIDE_SCALE, KnowledgeControl, NoiseSchedule,
                                    make_sampler, sample)
from xearthformer.errors import ConfigError, ShapeError

ORACLE = load_file(os.path.join(os.path.dirname(__file__), "data", "prediff",
                                "oracle_diffusion_schedule.safetensors"))
LINEAR = NoiseSchedule("linear")
WEIGHTS = torch.full((4,), 0.25)  # statistic: the mean of the 4 dims; data: 0.175 +- 0.573
STAT = toy.optimal_statistic(LINEAR, WEIGHTS)
N = 2000


def _oracle_statistic(suffix):
    """A statistic whose value at z_t is the official prediction (align_pred averaged over the
    frames) and whose gradient through the official *batch-wide* norm is the official shift.

    f_n(z) = p_n + <J_n, z - z_t> with J_n = g_n U / (p_n - y_n), g = align_mean_shift / 50, so
    d||f - y||/dz_n = (p_n - y_n) / ||p - y|| J_n = g_n exactly when U = ||p - y|| over the batch.
    A per-sample norm would give g_n U / |p_n - y_n| instead.
    """
    p = ORACLE["align_pred" + suffix].mean(dim=1)  # (N, 1), the official alignment_fn's input
    y, z_t, u = ORACLE["avg_x_gt"], ORACLE["zt"], ORACLE["align_U" + suffix]
    jac = (ORACLE["align_mean_shift" + suffix] / OFFICIAL_GUIDE_SCALE) * u / (p - y).reshape(-1, 1, 1, 1, 1)
    return lambda z, t: p + ((z - z_t) * jac).flatten(1).sum(dim=1, keepdim=True)


@pytest.mark.parametrize("suffix", ["", "_edge"])
def test_parity_equals_the_official_aligned_step(suffix):
    t, z_t, eps, y = ORACLE["t" + suffix], ORACLE["zt"], ORACLE["eps" + suffix], ORACLE["avg_x_gt"]
    sampler = make_sampler("ddpm", LINEAR)
    control = KnowledgeControl(_oracle_statistic(suffix), y, OFFICIAL_GUIDE_SCALE, parity=True)
    # U recomputed from align_pred: one L2 norm over the whole batch
    assert torch.allclose(control.error(z_t, t), ORACLE["align_U" + suffix][0], atol=1e-7)
    shift = OFFICIAL_GUIDE_SCALE * control.gradient(z_t, t)
    assert (shift - ORACLE["align_mean_shift" + suffix]).abs().max() <= 1e-6
    guided = control.wrap(lambda x, t: eps, sampler)(z_t, t)
    aligned_mean = sampler.step(guided, t, z_t, torch.zeros_like(z_t))
    assert (aligned_mean - ORACLE["aligned_mean" + suffix]).abs().max() <= 1e-5
    z_prev = sampler.step(guided, t, z_t, ORACLE["noise" + suffix])
    assert (z_prev - ORACLE["z_prev_aligned" + suffix]).abs().max() <= 1e-5
    # the default per-sample norm is a different (batch-independent) gradient
    per_sample = KnowledgeControl(_oracle_statistic(suffix), y, OFFICIAL_GUIDE_SCALE).gradient(z_t, t)
    assert (OFFICIAL_GUIDE_SCALE * per_sample - ORACLE["align_mean_shift" + suffix]).abs().max() > 1e-2


def _guided_stat(name, steps, scale, target=1.0, seed=0, parity=False, prediction="eps", n=N, **options):
    g = torch.Generator().manual_seed(seed)
    sampler = make_sampler(name, LINEAR, steps, prediction, **options)
    control = KnowledgeControl(STAT, torch.full((n, 1), target), scale, parity=parity)
    x = toy.marginal_start(LINEAR, n, g)
    out = sample(control.wrap(toy.optimal_denoiser(LINEAR, prediction), sampler), x, sampler,
                 lambda shape: torch.randn(shape, generator=g), progress=False)
    return out @ WEIGHTS, out


def test_guidance_moves_the_statistic_toward_the_target():
    unguided = _guided_stat("ddim", 20, 0.0)[0].mean()
    assert _guided_stat("ddim", 20, 2.0, target=1.0)[0].mean() > unguided + 0.2
    assert _guided_stat("ddim", 20, 2.0, target=-1.0)[0].mean() < unguided - 0.2


def test_stronger_guidance_gets_closer():
    distances = [abs(_guided_stat("ddim", 20, scale)[0].mean() - 1.0) for scale in (0, 1, 4, 16)]
    assert distances[0] > distances[1] > distances[2] > distances[3]
    assert distances[3] < 0.01  # a statistic ~1.5 data std above the mean, reached


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_strength_does_not_depend_on_the_number_of_steps(scale):
    # same x_T, deterministic DDIM: only the discretization differs between 20 and 50 steps
    base = _guided_stat("ddim", 50, 0.0)[0].mean()
    s20, s50 = (_guided_stat("ddim", steps, scale)[0].mean() for steps in (20, 50))
    assert abs(s20 - s50) <= 0.05 * abs(s50 - base)
    # every sampler integrates the same guided dynamics: DDPM and DPM-Solver++ land there too
    # (DDPM within 4 standard errors of its sampling noise, plus the same 5 %)
    for name, steps in (("ddpm", 50), ("dpm++2m", 20)):
        stat = _guided_stat(name, steps, scale, seed=1)[0]
        se = stat.std() / N ** 0.5
        assert abs(stat.mean() - s50) <= 4 * se + 0.05 * abs(s50 - base), name


def test_the_official_std_scaled_shift_does_depend_on_the_number_of_steps():
    # why the default differs from parity: sqrt(posterior variance) per step sums to ~sqrt(n)
    base = _guided_stat("ddpm", 50, 0.0)[0].mean()
    s20, s50 = (_guided_stat("ddpm", steps, OFFICIAL_GUIDE_SCALE, parity=True)[0].mean()
                for steps in (20, 50))
    assert abs(s50 - s20) > 0.2 * abs(s50 - base)


@pytest.mark.parametrize("name,options", [("ddim", {}), ("ddpm", {}), ("dpm++2m", {})])
def test_guided_member_is_bit_identical_alone_or_in_a_batch(name, options):
    sampler = make_sampler(name, LINEAR, 10, **options)
    targets = torch.tensor([[1.0], [-1.0], [0.5], [2.0], [0.0]])

    def run(members, parity=False):
        gens = [torch.Generator().manual_seed(200 + m) for m in members]
        x = torch.cat([toy.marginal_start(LINEAR, 1, g) for g in gens])
        noise = lambda shape: torch.cat([torch.randn(1, *shape[1:], generator=g) for g in gens])  # noqa: E731
        control = KnowledgeControl(STAT, targets[members], 3.0, parity=parity)
        return sample(control.wrap(toy.optimal_denoiser(LINEAR), sampler), x, sampler, noise,
                      progress=False)

    assert torch.equal(run([3])[0], run([0, 1, 2, 3, 4])[3])
    if name == "ddpm":  # parity mode is batch-coupled: exempt from the guarantee
        assert not torch.allclose(run([3], parity=True)[0], run([0, 1, 2, 3, 4], parity=True)[3])


def test_guidance_works_inside_inference_mode():
    sampler = make_sampler("ddim", LINEAR, 10)
    x = toy.marginal_start(LINEAR, 64, torch.Generator().manual_seed(5))
    context = torch.full((64, 4), 0.5)

    def statistic(x_t, t, context):  # a product saves `context` for backward
        return (STAT(x_t, t) * context[:, :1])

    def run():
        control = KnowledgeControl(statistic, torch.ones(64, 1), 4.0, conditioning={"context": context})
        return sample(control.wrap(toy.optimal_denoiser(LINEAR), sampler), x, sampler, progress=False)

    outside = run()
    with torch.inference_mode():
        context = torch.full((64, 4), 0.5)  # an inference tensor now
        inside = run()
    assert torch.equal(inside, outside)
    assert not torch.equal(outside, sample(toy.optimal_denoiser(LINEAR), x, sampler, progress=False))


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_other_parameterisations_are_guided_alike(prediction):
    _, eps_out = _guided_stat("ddim", 20, 4.0, n=256)
    _, other_out = _guided_stat("ddim", 20, 4.0, prediction=prediction, n=256)
    torch.testing.assert_close(other_out, eps_out, atol=1e-4, rtol=1e-4)


def test_scale_zero_is_unguided():
    sampler = make_sampler("dpm++2m", LINEAR, 10)
    x = toy.marginal_start(LINEAR, 32, torch.Generator().manual_seed(0))
    control = KnowledgeControl(STAT, torch.ones(32, 1), 0.0)
    assert torch.equal(sample(control.wrap(toy.optimal_denoiser(LINEAR), sampler), x, sampler, progress=False),
                       sample(toy.optimal_denoiser(LINEAR), x, sampler, progress=False))


def test_zero_error_gives_a_zero_gradient_not_nan():
    x, t = torch.randn(3, 4), torch.full((3,), 500)
    control = KnowledgeControl(STAT, STAT(x, t).detach(), 1.0)
    assert torch.equal(control.gradient(x, t), torch.zeros_like(x))


# ---------------------------------------------------------------------------- errors
def _grad(statistic, target=None, parity=False):
    x, t = torch.randn(3, 4), torch.full((3,), 10)
    KnowledgeControl(statistic, torch.ones(3, 1) if target is None else target, 1.0,
                     parity=parity).gradient(x, t)


def test_non_differentiable_statistics_raise_config_errors():
    with pytest.raises(ConfigError, match="no grad_fn"):
        _grad(lambda x, t: STAT(x, t).detach())
    weight = torch.ones(1, requires_grad=True)
    with pytest.raises(ConfigError, match="does not depend on x_t"):
        _grad(lambda x, t: weight.expand(x.shape[0], 1) * 2.0)


def test_shape_errors():
    with pytest.raises(ShapeError, match=r"target has shape \(3, 2\)"):
        _grad(STAT, target=torch.ones(3, 2))
    with pytest.raises(ShapeError, match=r"target must be a tensor of shape \(N, K\)"):
        KnowledgeControl(STAT, torch.ones(3), 1.0)
    with pytest.raises(ShapeError, match=r"must return a tensor \(N, K\)"):
        _grad(lambda x, t: x.sum(dim=1))


def test_configuration_errors():
    with pytest.raises(ConfigError, match="valid with the 'ddpm' sampler only"):
        KnowledgeControl(STAT, torch.ones(3, 1), 50.0, parity=True).wrap(
            toy.optimal_denoiser(LINEAR), make_sampler("ddim", LINEAR, 10))
    with pytest.raises(ConfigError, match="valid with the 'ddpm' sampler only"):
        KnowledgeControl(STAT, torch.ones(3, 1), 50.0, parity=True).wrap(
            toy.optimal_denoiser(LINEAR), make_sampler("dpm++2m", LINEAR, 10))
    with pytest.raises(ConfigError, match="scale must be a number >= 0"):
        KnowledgeControl(STAT, torch.ones(3, 1), -1.0)
    with pytest.raises(ConfigError, match="statistic must be a callable"):
        KnowledgeControl("mean", torch.ones(3, 1), 1.0)
    with pytest.raises(ConfigError, match="make_sampler"):
        KnowledgeControl(STAT, torch.ones(3, 1), 1.0).wrap(toy.optimal_denoiser(LINEAR), "ddim")


def test_the_squared_norm_pulls_in_proportion_to_the_distance():
    x, t = torch.randn(5, 4, dtype=torch.float64), torch.full((5,), 300)
    y = torch.tensor([[0.0], [1.0], [-2.0], [0.5], [3.0]], dtype=torch.float64)
    linear = lambda z, t_: z @ WEIGHTS.double().reshape(4, 1)  # noqa: E731
    squared = KnowledgeControl(linear, y, 1.0, norm="squared").gradient(x, t)
    expected = (linear(x, t) - y) * WEIGHTS.double()  # d/dx (f - y)^2 / 2 = (f - y) w
    torch.testing.assert_close(squared, expected)
    l2 = KnowledgeControl(linear, y, 1.0).gradient(x, t)  # |f - y|: sign(f - y) w, any distance
    torch.testing.assert_close(l2, torch.sign(linear(x, t) - y) * WEIGHTS.double())
    # and it steers the samples like the L2 norm does
    g = torch.Generator().manual_seed(0)
    sampler = make_sampler("ddim", LINEAR, 20)
    start = toy.marginal_start(LINEAR, N, g)
    means = []
    for target in (-1.0, 1.0):
        control = KnowledgeControl(STAT, torch.full((N, 1), target), 8.0, norm="squared")
        out = sample(control.wrap(toy.optimal_denoiser(LINEAR), sampler), start, sampler, progress=False)
        means.append(float((out @ WEIGHTS).mean()))
    free = sample(toy.optimal_denoiser(LINEAR), start, sampler, progress=False)
    assert means[0] < float((free @ WEIGHTS).mean()) - 0.2 < means[1] - 0.4
    with pytest.raises(ConfigError, match="norm must be one of"):
        KnowledgeControl(STAT, torch.ones(3, 1), 1.0, norm="l1")
    with pytest.raises(ConfigError, match="whose error norm is 'l2'"):
        KnowledgeControl(STAT, torch.ones(3, 1), 1.0, norm="squared", parity=True)
