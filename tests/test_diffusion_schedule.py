"""Noise schedules: equal to the official PreDiff buffers, JSON round trip, forward noising,
conversions between eps / x0 / v, and clear errors on bad timesteps."""

import json
import math
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from xearthformer.diffusion import NoiseSchedule
from xearthformer.diffusion.schedule import BUFFERS, PREDICTIONS, make_betas
from xearthformer.errors import ConfigError, ShapeError

ORACLE = load_file(os.path.join(os.path.dirname(__file__), "data", "prediff",
                                "oracle_diffusion_schedule.safetensors"))
LINEAR = NoiseSchedule("linear")


@pytest.mark.parametrize("key", BUFFERS)
def test_buffers_equal_the_official_register_schedule(key):
    # float64 numpy arithmetic as the official, then float32: bit-for-bit equal
    assert torch.equal(getattr(LINEAR, key), ORACLE[key])


def test_float64_betas_and_alphas_cumprod_equal_the_official():
    assert np.array_equal(make_betas("linear", 1000), ORACLE["betas_float64"].numpy())
    assert np.array_equal(LINEAR.alphas_cumprod64, ORACLE["alphas_cumprod_float64"].numpy())


def test_official_facts():
    assert LINEAR.num_timesteps == 1000
    assert abs(float(LINEAR.alphas_cumprod[-1]) - 7.334e-4) < 1e-7
    assert float(LINEAR.posterior_log_variance_clipped[0]) == pytest.approx(math.log(1e-20))


def test_add_noise_equals_the_official_q_sample():
    x_t = LINEAR.add_noise(ORACLE["x_start"], ORACLE["q_noise"], ORACLE["t"])
    assert torch.equal(x_t, ORACLE["q_sample"])


def test_eps_to_x0_equals_the_official_predict_start_from_noise():
    for suffix in ("", "_edge"):
        x0 = LINEAR.convert(ORACLE["eps" + suffix], ORACLE["zt"], ORACLE["t" + suffix],
                            source="eps", target="x0")
        assert torch.equal(x0, ORACLE["z0_pred" + suffix])


def test_cosine_follows_nichol_and_dhariwal():
    schedule = NoiseSchedule("cosine", timesteps=1000)
    s, steps = 0.008, np.arange(1, 1001) / 1000
    f = np.cos((steps + s) / (1 + s) * np.pi / 2) ** 2 / np.cos(s / (1 + s) * np.pi / 2) ** 2
    # alpha_bar(t) = f(t) / f(0) wherever no beta was clipped (only the last one is, to 0.999)
    np.testing.assert_allclose(schedule.alphas_cumprod64[:-1], f[:-1], rtol=1e-12, atol=1e-15)
    assert float(schedule.betas[-1]) == pytest.approx(0.999)
    assert bool((schedule.betas[:-1] < 0.999).all())


@pytest.mark.parametrize("spec", [{"name": "linear", "timesteps": 1000},
                                  {"name": "linear", "timesteps": 50, "linear_end": 0.03},
                                  {"name": "cosine", "timesteps": 200, "cosine_s": 0.01}])
def test_json_round_trip_rebuilds_the_same_tensors(spec):
    schedule = NoiseSchedule.from_dict(spec)
    text = json.dumps(schedule.to_dict())
    assert "[" not in text  # parameters only, never arrays
    again = NoiseSchedule.from_dict(json.loads(text))
    assert again.to_dict() == schedule.to_dict()
    for key in BUFFERS:
        assert torch.equal(getattr(again, key), getattr(schedule, key))


def test_to_device_moves_every_tensor_and_keeps_the_spec():
    moved = LINEAR.to("meta")
    assert all(getattr(moved, key).device.type == "meta" for key in BUFFERS)
    assert LINEAR.device.type == "cpu" and moved.to_dict() == LINEAR.to_dict()


def test_timesteps_broadcast_over_any_layout():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 2, 4, 4, 5, generator=g), torch.randn(3, 2, 4, 4, 5, generator=g)
    t = torch.tensor([0, 500, 999])
    x_t = LINEAR.add_noise(x0, noise, t)
    for i in range(3):
        a = LINEAR.sqrt_alphas_cumprod[t[i]]
        b = LINEAR.sqrt_one_minus_alphas_cumprod[t[i]]
        assert torch.equal(x_t[i], a * x0[i] + b * noise[i])
    assert torch.equal(LINEAR.add_noise(x0, noise, 7), LINEAR.add_noise(x0, noise, torch.full((3,), 7)))


# ---------------------------------------------------------------------------- properties
# The buffers are float32, so identities like sqrt(a) * sqrt(1/a) = 1 hold to ~1e-7 and are
# amplified by up to sqrt(1/alpha_bar) = 37 (t = 999) or 1/sqrt(1/alpha_bar - 1) = 100 (t = 0):
# over all t, the largest round-trip error measured is 1.4e-5 for unit-normal inputs.
TOL = 1e-4

timestep = st.integers(0, 999)
seed = st.integers(0, 2 ** 31 - 1)


def _pair(seed_value, shape=(3, 2, 5), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed_value)
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)


@settings(max_examples=60, deadline=None)
@given(t=timestep, seed_value=seed)
def test_add_noise_then_x0_from_the_true_eps_recovers_x0(t, seed_value):
    x0, eps = _pair(seed_value)
    x_t = LINEAR.add_noise(x0, eps, t)
    recovered = LINEAR.convert(eps, x_t, t, source="eps", target="x0")
    torch.testing.assert_close(recovered, x0, atol=TOL, rtol=0)
    # and eps back from the true x0
    torch.testing.assert_close(LINEAR.convert(x0, x_t, t, source="x0", target="eps"), eps,
                               atol=TOL, rtol=0)


@settings(max_examples=60, deadline=None)
@given(t=timestep, seed_value=seed, source=st.sampled_from(PREDICTIONS),
       target=st.sampled_from(PREDICTIONS))
def test_conversions_are_inverse_to_each_other(t, seed_value, source, target):
    output, x_t = _pair(seed_value)
    there = LINEAR.convert(output, x_t, t, source=source, target=target)
    back = LINEAR.convert(there, x_t, t, source=target, target=source)
    torch.testing.assert_close(back, output, atol=TOL, rtol=0)


@settings(max_examples=40, deadline=None)
@given(t=timestep, seed_value=seed)
def test_v_target_is_the_v_of_the_true_noise(t, seed_value):
    x0, eps = _pair(seed_value)
    x_t = LINEAR.add_noise(x0, eps, t)
    v = LINEAR.v_target(x0, eps, t)
    torch.testing.assert_close(LINEAR.convert(eps, x_t, t, source="eps", target="v"), v,
                               atol=TOL, rtol=0)
    torch.testing.assert_close(LINEAR.convert(v, x_t, t, source="v", target="x0"), x0,
                               atol=TOL, rtol=0)


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("args,kwargs,match", [
    (("quadratic",), {}, "valid names"),
    (("linear",), {"cosine_s": 0.01}, "unknown parameter"),
    (("linear",), {"timesteps": 1}, "timesteps must be an int >= 2"),
    (("linear",), {"timesteps": 10.0}, "timesteps must be an int >= 2"),
    (("linear",), {"linear_start": 0.1, "linear_end": 0.01}, "linear_start <= linear_end"),
    (("cosine",), {"cosine_s": -1.0}, "cosine_s >= 0"),
])
def test_bad_schedules_raise_config_errors(args, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        NoiseSchedule(*args, **kwargs)


def test_from_dict_needs_a_name():
    with pytest.raises(ConfigError, match="'name'"):
        NoiseSchedule.from_dict({"timesteps": 10})


@pytest.mark.parametrize("t,error,match", [
    (torch.tensor([1.0, 2.0]), ShapeError, "integers"),
    (torch.tensor([1, 2, 3]), ShapeError, r"shape \(N,\) = \(2,\)"),
    (torch.tensor([0, 1000]), ConfigError, "0..999"),
    (-1, ConfigError, "0..999"),
    ("5", ShapeError, "int or an integer tensor"),
])
def test_bad_timesteps_raise_clear_errors(t, error, match):
    x = torch.zeros(2, 3)
    with pytest.raises(error, match=match):
        LINEAR.add_noise(x, x, t)


def test_mismatched_shapes_and_unknown_parameterisations():
    with pytest.raises(ShapeError, match="same shape"):
        LINEAR.add_noise(torch.zeros(2, 3), torch.zeros(2, 4), 0)
    with pytest.raises(ConfigError, match="target must be one of"):
        LINEAR.convert(torch.zeros(2, 3), torch.zeros(2, 3), 0, source="eps", target="score")
