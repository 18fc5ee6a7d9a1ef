"""Noise schedules of discrete-time (DDPM-style) diffusion: betas, the tensors derived from them,
forward noising and the conversions between the three prediction targets.

Timesteps ``t`` are integers in ``0 .. T-1``: an ``int``, a 0-d tensor or an ``(N,)`` tensor
(one per sample). Every per-timestep coefficient is broadcast over the sample's trailing dims,
so any layout works (``(N, T, H, W, C)`` latents, ``(N, D)`` vectors...).

The buffers are exactly the ones the official PreDiff/LDM ``register_schedule`` makes: computed
in float64 with numpy from the float64 betas, then stored as float32.

>>> import torch
>>> schedule = NoiseSchedule("linear")                  # the official PreDiff schedule
>>> schedule.num_timesteps, round(float(schedule.alphas_cumprod[-1]), 7)
(1000, 0.0007334)
>>> x0, noise = torch.ones(2, 3), torch.zeros(2, 3)
>>> x_t = schedule.add_noise(x0, noise, torch.tensor([0, 999]))
>>> schedule.convert(noise, x_t, torch.tensor([0, 999]), source="eps", target="x0").allclose(x0)
True
>>> NoiseSchedule.from_dict(schedule.to_dict()).to_dict() == schedule.to_dict()
True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..device import explicit_device
from ..errors import ConfigError, ShapeError

PREDICTIONS = ("eps", "x0", "v")

# name -> its parameters and their defaults (the official PreDiff/LDM values)
SCHEDULES: dict[str, dict[str, float]] = {
    "linear": {"linear_start": 1e-4, "linear_end": 2e-2},
    "cosine": {"cosine_s": 8e-3},
}

BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "lvlb_weights",
)


def make_betas(name: str, timesteps: int, **params: float) -> np.ndarray:
    """Float64 betas of the named schedule (the official ``make_beta_schedule``).

    ``"linear"`` is LDM's "linear": linear in sqrt(beta), ``linspace(sqrt(linear_start),
    sqrt(linear_end), T) ** 2``. ``"cosine"`` is Nichol & Dhariwal (2021): alpha_bar(t) =
    cos((t/T + s) / (1 + s) * pi/2)^2, betas clipped to at most 0.999.

    >>> make_betas("linear", 3, linear_start=1e-4, linear_end=1e-2).round(6).tolist()
    [0.0001, 0.003025, 0.01]
    """
    if name not in SCHEDULES:
        raise ConfigError(f"unknown noise schedule {name!r}; valid names: {sorted(SCHEDULES)}")
    unknown = set(params) - set(SCHEDULES[name])
    if unknown:
        raise ConfigError(f"schedule {name!r} takes {sorted(SCHEDULES[name])}, got unknown "
                          f"parameter(s) {sorted(unknown)}")
    if not isinstance(timesteps, int) or isinstance(timesteps, bool) or timesteps < 2:
        raise ConfigError(f"timesteps must be an int >= 2, got {timesteps!r}")
    p = {**SCHEDULES[name], **params}
    if name == "linear":
        if not 0 < p["linear_start"] <= p["linear_end"] < 1:
            raise ConfigError("linear schedule needs 0 < linear_start <= linear_end < 1, got "
                              f"{p['linear_start']} and {p['linear_end']}")
        # torch.linspace, as the official code, so the float64 betas match it bit for bit
        # (on the CPU explicitly: the betas are numpy data even under a meta/cuda default device)
        root = torch.linspace(p["linear_start"] ** 0.5, p["linear_end"] ** 0.5, timesteps,
                              dtype=torch.float64, device="cpu")
        return (root ** 2).numpy()
    if not p["cosine_s"] >= 0:
        raise ConfigError(f"cosine schedule needs cosine_s >= 0, got {p['cosine_s']}")
    steps = torch.arange(timesteps + 1, dtype=torch.float64, device="cpu") / timesteps + p["cosine_s"]
    alphas_cumprod = torch.cos(steps / (1 + p["cosine_s"]) * math.pi / 2).pow(2)
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    return np.clip((1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).numpy(), 0.0, 0.999)


def posterior_terms(betas: np.ndarray, alphas_cumprod: np.ndarray,
                    alphas_cumprod_prev: np.ndarray) -> dict[str, np.ndarray]:
    """Float64 coefficients of q(x_{t-1} | x_t, x_0) for a chain of steps (official formulas).

    Shared by the schedule and by DDPM respacing, where a step jumps from ``alphas_cumprod`` to
    ``alphas_cumprod_prev`` and ``betas = 1 - alphas_cumprod / alphas_cumprod_prev``.
    """
    alphas = 1.0 - betas
    variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    return {
        "posterior_variance": variance,
        # clipped because the variance is 0 at t = 0 (log(1e-20): std 1e-10, as the official)
        "posterior_log_variance_clipped": np.log(np.maximum(variance, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
    }


class NoiseSchedule:
    """A named noise schedule with every per-timestep tensor of the official ``register_schedule``.

    Parameters
    ----------
    name
        ``"linear"`` (official PreDiff: linear in sqrt(beta)) or ``"cosine"`` (Nichol & Dhariwal).
    timesteps
        Number of training timesteps T (official 1000).
    **params
        ``linear_start``, ``linear_end`` (linear; defaults 1e-4, 2e-2) or ``cosine_s`` (cosine;
        default 0.008).

    Attributes
    ----------
    betas, alphas_cumprod, ..., lvlb_weights
        float32 tensors of shape (T,), see :data:`BUFFERS` (``lvlb_weights``: the official
        eps-parameterisation ELBO weights, unused by its training and by sampling).
    alphas_cumprod64
        float64 numpy copy of alpha_bar, for samplers that compute their own coefficients.

    Examples
    --------
    >>> s = NoiseSchedule("cosine", timesteps=100)
    >>> s.to_dict()
    {'name': 'cosine', 'timesteps': 100, 'cosine_s': 0.008}
    """

    def __init__(self, name: str = "linear", timesteps: int = 1000, **params: float) -> None:
        betas = make_betas(name, timesteps, **params)
        self.name = name
        self.params = {**SCHEDULES[name], **{k: float(v) for k, v in params.items()}}
        alphas_cumprod = np.cumprod(1.0 - betas, axis=0)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        self.alphas_cumprod64 = alphas_cumprod
        arrays = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "log_one_minus_alphas_cumprod": np.log(1.0 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1),
            **posterior_terms(betas, alphas_cumprod, alphas_cumprod_prev),
        }
        for key, value in arrays.items():
            setattr(self, key, torch.tensor(value, dtype=torch.float32))
        # as the official: computed in float32 from the float32 buffers, entry 0 copied from 1
        lvlb = self.betas ** 2 / (2 * self.posterior_variance
                                  * torch.tensor(1.0 - betas, dtype=torch.float32)
                                  * (1 - self.alphas_cumprod))
        lvlb[0] = lvlb[1]
        self.lvlb_weights = lvlb

    # ------------------------------------------------------------------ bookkeeping
    @property
    def num_timesteps(self) -> int:
        """T, the number of training timesteps."""
        return int(self.betas.shape[0])

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def to(self, device: Any) -> NoiseSchedule:
        """A copy with every tensor on ``device`` (coefficients then need no transfer per step)."""
        device = explicit_device(device)
        new = object.__new__(NoiseSchedule)
        new.__dict__.update(self.__dict__)
        new.params = dict(self.params)
        for key in BUFFERS:
            setattr(new, key, getattr(self, key).to(device))
        return new

    def to_dict(self) -> dict[str, Any]:
        """Name and parameters (JSON-ready; never arrays): :meth:`from_dict` rebuilds it."""
        return {"name": self.name, "timesteps": self.num_timesteps, **self.params}

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> NoiseSchedule:
        """The schedule :meth:`to_dict` describes.

        >>> NoiseSchedule.from_dict({"name": "linear", "timesteps": 10}).num_timesteps
        10
        """
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(f"a schedule spec is a dict with a 'name' key, got {spec!r}")
        spec = dict(spec)
        return cls(spec.pop("name"), **spec)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "name")
        return f"NoiseSchedule({self.name!r}, {args})"

    # ------------------------------------------------------------------ per-timestep access
    def timesteps_for(self, t: int | Tensor, like: Tensor) -> Tensor:
        """``t`` as a long tensor (N,) on ``like``'s device, checked against ``like`` and T."""
        if isinstance(t, bool) or not isinstance(t, (int, Tensor)):
            raise ShapeError(f"timesteps must be an int or an integer tensor, got {type(t).__name__}")
        t = torch.as_tensor(t, device=like.device)
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise ShapeError(f"timesteps must be integers (0..{self.num_timesteps - 1}), got dtype "
                             f"{t.dtype}. Fix: pass t.long() of integer timesteps.")
        if like.ndim == 0:
            raise ShapeError("x must have a leading batch dim (N, ...), got a 0-d tensor")
        if t.ndim == 0:
            t = t.expand(like.shape[0])
        if t.shape != (like.shape[0],):
            raise ShapeError(f"timesteps must be a scalar or have shape (N,) = ({like.shape[0]},) "
                             f"for x of shape {tuple(like.shape)}, got {tuple(t.shape)}")
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= self.num_timesteps:
            raise ConfigError(f"timesteps must lie in 0..{self.num_timesteps - 1} for this "
                              f"{self.num_timesteps}-step schedule, got values in {lo}..{hi}")
        return t.long()

    def gather(self, values: Tensor, t: int | Tensor, like: Tensor) -> Tensor:
        """``values[t]`` shaped (N, 1, ..., 1) to broadcast against ``like``, in its dtype."""
        return take(values, self.timesteps_for(t, like), like)

    # ------------------------------------------------------------------ forward process
    def add_noise(self, x0: Tensor, noise: Tensor, t: int | Tensor) -> Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise (the official ``q_sample``)."""
        _same_shape(x0, noise, "x0", "noise")
        t = self.timesteps_for(t, x0)
        return (take(self.sqrt_alphas_cumprod, t, x0) * x0
                + take(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    def v_target(self, x0: Tensor, noise: Tensor, t: int | Tensor) -> Tensor:
        """The v-prediction training target v = sqrt(alpha_bar_t) noise - sqrt(1-alpha_bar_t) x0
        (Salimans & Ho 2022) for x_t = ``add_noise(x0, noise, t)``."""
        _same_shape(x0, noise, "x0", "noise")
        t = self.timesteps_for(t, x0)
        return (take(self.sqrt_alphas_cumprod, t, x0) * noise
                - take(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0)

    def convert(self, output: Tensor, x_t: Tensor, t: int | Tensor, *, source: str,
                target: str) -> Tensor:
        """Turn a prediction at (x_t, t) from one parameterisation into another.

        ``source``/``target`` are ``"eps"`` (the noise), ``"x0"`` (the clean sample) or ``"v"``.
        eps -> x0 uses the official ``predict_start_from_noise`` buffers, so a DDPM step from eps
        is bit-for-bit the official one.

        >>> s = NoiseSchedule("linear", timesteps=10)
        >>> x0, eps = torch.randn(4, 2), torch.randn(4, 2)
        >>> x_t = s.add_noise(x0, eps, 5)
        >>> v = s.convert(eps, x_t, 5, source="eps", target="v")
        >>> torch.allclose(v, s.v_target(x0, eps, 5), atol=1e-6)
        True
        """
        for role, kind in (("source", source), ("target", target)):
            if kind not in PREDICTIONS:
                raise ConfigError(f"{role} must be one of {PREDICTIONS}, got {kind!r}")
        _same_shape(output, x_t, "model output", "x_t")
        if source == target:
            return output
        t = self.timesteps_for(t, x_t)
        if source == "eps":
            eps = output
            x0 = (take(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
                  - take(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)
            if target == "x0":
                return x0
        elif source == "x0":
            x0 = output
            eps = (take(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / \
                take(self.sqrt_recipm1_alphas_cumprod, t, x_t)
            if target == "eps":
                return eps
        sqrt_ab = take(self.sqrt_alphas_cumprod, t, x_t)
        sqrt_1m = take(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        if source == "v":  # v: x0 and eps are rotations of (x_t, v) since alpha^2 + sigma^2 = 1
            x0 = sqrt_ab * x_t - sqrt_1m * output
            eps = sqrt_1m * x_t + sqrt_ab * output
        if target == "x0":
            return x0
        if target == "eps":
            return eps
        return sqrt_ab * eps - sqrt_1m * x0


def take(values: Tensor, index: Tensor, like: Tensor) -> Tensor:
    """``values[index]`` for a long tensor (N,), shaped (N, 1, ..., 1) like ``like``, in its dtype."""
    out = values.to(like.device)[index.to(like.device)].to(like.dtype)
    return out.reshape(-1, *([1] * (like.ndim - 1)))


def _same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ShapeError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")


def check_prediction(prediction: str) -> str:
    """``prediction`` if it is a known parameterisation, else a ConfigError listing them."""
    if prediction not in PREDICTIONS:
        raise ConfigError(f"prediction must be one of {PREDICTIONS} (the official PreDiff model "
                          f"predicts 'eps'), got {prediction!r}")
    return prediction
