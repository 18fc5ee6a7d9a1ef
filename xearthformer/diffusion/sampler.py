"""The one interface every sampler has (diffusers' scheduler idea), and the timestep spacings.

A sampler walks a descending list of training timesteps ``sampler.timesteps`` (``t_0 = T-1 >
t_1 > ... > t_{n-1}``); the denoiser is called once at each, and ``step`` moves x from the
current timestep to the next one, or from the last one to the clean sample (alpha_bar = 1).

    sampler.set_steps(n)
    for t in sampler.timesteps:
        x = sampler.step(denoise(x, t), t, x, noise)

``noise`` is supplied by the caller, a standard-normal tensor of x's shape or a callable
``noise(shape) -> Tensor``, so the caller owns the randomness (e.g. one generator per ensemble
member). A stochastic sampler (``sampler.stochastic``) draws it exactly once per step, the last
step included (where it is multiplied by 0, as in the official loop), so the stream of draws
depends only on the number of steps; a deterministic one never draws.

>>> from xearthformer.diffusion.schedule import NoiseSchedule
>>> uniform_timesteps(1000, 4).tolist()
[999, 749, 499, 249]
>>> logsnr_timesteps(NoiseSchedule("linear").alphas_cumprod64, 3).tolist()
[999, 303, 0]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Union

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, ShapeError
from .schedule import NoiseSchedule, check_prediction

Noise = Union[Tensor, Callable[[torch.Size], Tensor], None]
SPACINGS = ("uniform", "logsnr")


def uniform_timesteps(num_timesteps: int, steps: int) -> Tensor:
    """``steps`` timesteps evenly spaced in t, from T-1 down ("trailing" spacing).

    ``T - 1 - floor(i T / n)``: starts at the noisiest timestep, and the jump after the last one
    (to the clean sample) is as long as the others. ``steps == T`` gives T-1, ..., 0, exactly the
    official loop.
    """
    i = torch.arange(steps, dtype=torch.long)
    return num_timesteps - 1 - (i * num_timesteps) // steps


def log_snr(alphas_cumprod: np.ndarray) -> np.ndarray:
    """lambda_t = log(alpha_t / sigma_t) = 0.5 log(alpha_bar / (1 - alpha_bar)), float64."""
    return 0.5 * (np.log(alphas_cumprod) - np.log1p(-alphas_cumprod))


def logsnr_timesteps(alphas_cumprod: np.ndarray, steps: int) -> Tensor:
    """``steps`` integer timesteps evenly spaced in log-SNR lambda from t = T-1 to t = 0.

    Each point is the timestep nearest its lambda; where two points would share a timestep (near
    t = 0, where lambda changes fastest) they are pushed apart, so the result is always
    ``steps`` distinct timesteps, descending. DPM-Solver's reference uses the same end points.
    """
    lam = log_snr(alphas_cumprod)
    num_timesteps = len(lam)
    targets = np.linspace(lam[-1], lam[0], steps)
    nearest = np.abs(lam[None, :] - targets[:, None]).argmin(axis=1)
    out = [num_timesteps - 1]
    for i in range(1, steps):
        out.append(max(min(int(nearest[i]), out[-1] - 1), steps - 1 - i))
    return torch.tensor(out, dtype=torch.long)


class Sampler:
    """Base class: timestep bookkeeping and checks shared by all samplers.

    Parameters
    ----------
    schedule
        The noise schedule the denoiser was trained with.
    steps
        Number of denoiser evaluations; None: the sampler's ``default_steps``.
    prediction
        What the denoiser predicts: ``"eps"`` (official), ``"x0"`` or ``"v"``.
    spacing
        ``"uniform"`` in t (default) or ``"logsnr"`` (uniform in log-SNR).
    """

    name: ClassVar[str] = ""
    default_steps: ClassVar[int | None] = None  # None: all training timesteps
    stochastic: bool = False

    def __init__(self, schedule: NoiseSchedule, steps: int | None = None, prediction: str = "eps",
                 spacing: str = "uniform") -> None:
        if not isinstance(schedule, NoiseSchedule):
            raise ConfigError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        if spacing not in SPACINGS:
            raise ConfigError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
        self.schedule = schedule
        self.prediction = check_prediction(prediction)
        self.spacing = spacing
        if steps is None:
            steps = min(self.default_steps or schedule.num_timesteps, schedule.num_timesteps)
        self.set_steps(steps)

    def set_steps(self, steps: int) -> None:
        """Choose the number of denoiser evaluations and recompute ``timesteps``."""
        total = self.schedule.num_timesteps
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) \
                or not 1 <= steps <= total:
            raise ConfigError(f"steps must be an int in 1..{total} (the schedule's training "
                              f"timesteps), got {steps!r}")
        steps = int(steps)
        if self.spacing == "uniform":
            self.timesteps = uniform_timesteps(total, steps)
        else:
            self.timesteps = logsnr_timesteps(self.schedule.alphas_cumprod64, steps)
        self._index = {int(t): i for i, t in enumerate(self.timesteps)}
        self._on_set_steps()
        self.reset()

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    def _on_set_steps(self) -> None:
        """Hook: precompute per-chain coefficients after ``timesteps`` changed."""

    def reset(self) -> None:
        """Forget any state of a run in progress (multistep samplers keep some)."""

    def step(self, model_output: Tensor, t: int | Tensor, x_t: Tensor, noise: Noise = None) -> Tensor:
        """x at the next timestep of ``timesteps`` (or the clean sample after the last one).

        Parameters
        ----------
        model_output
            The denoiser's output at (x_t, t), in the ``prediction`` parameterisation.
        t
            The current timestep, one of ``timesteps`` (an int or an integer tensor).
        x_t
            The current sample.
        noise
            Standard-normal noise of x_t's shape, or a callable ``noise(shape) -> Tensor``;
            used only by stochastic samplers.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(steps={self.num_steps}, prediction={self.prediction!r}, "
                f"spacing={self.spacing!r})")

    # ------------------------------------------------------------------ helpers for subclasses
    def _position(self, t: int | Tensor, like: Tensor) -> int:
        """Index in ``timesteps`` of a timestep shared by the whole batch."""
        t = self.schedule.timesteps_for(t, like)
        first = int(t[0])
        if not bool((t == first).all()):
            raise ShapeError(f"{self.name} steps the whole batch from one timestep; got several: "
                             f"{sorted(set(t.tolist()))}")
        return self._check_in_chain(first)

    def _check_in_chain(self, t: int) -> int:
        if t not in self._index:
            shown = self.timesteps.tolist()
            shown = shown if len(shown) <= 8 else shown[:4] + ["..."] + shown[-3:]
            raise ConfigError(f"timestep {t} is not one of this sampler's timesteps {shown} "
                              f"(set_steps({self.num_steps})). Fix: step through sampler.timesteps.")
        return self._index[t]

    def _prev_alphas_cumprod(self, i: int) -> float:
        """alpha_bar after step ``i`` (1.0, the clean sample, after the last one), float64."""
        if i + 1 == self.num_steps:
            return 1.0
        return float(self.schedule.alphas_cumprod64[int(self.timesteps[i + 1])])

    def _draw(self, noise: Noise, like: Tensor) -> Tensor:
        if noise is None:
            raise ConfigError(f"{self!r} is stochastic and needs noise: pass a standard-normal "
                              "tensor of x_t's shape or a callable noise(shape) -> Tensor")
        drawn = noise(like.shape) if callable(noise) else noise
        if not isinstance(drawn, Tensor) or drawn.shape != like.shape:
            got = tuple(drawn.shape) if isinstance(drawn, Tensor) else type(drawn).__name__
            raise ShapeError(f"noise must be a tensor of x_t's shape {tuple(like.shape)}, got {got}")
        return drawn.to(device=like.device, dtype=like.dtype)
