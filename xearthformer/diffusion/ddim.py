"""DDIM sampling (Song, Meng & Ermon 2021): any number of steps, stochasticity ``eta``.

From timestep t to the next one t' (alpha_bar a -> a', with a' = 1 after the last step):

    x0, eps = the model's predictions at (x_t, t)
    sigma   = eta * sqrt((1 - a') / (1 - a)) * sqrt(1 - a / a')
    x_t'    = sqrt(a') x0 + sqrt(1 - a' - sigma^2) eps + sigma * noise

``eta = 0`` is deterministic (the probability-flow ODE's first-order solver; no noise drawn);
``eta = 1`` has the DDPM posterior variance and is then the same step as (respaced) DDPM.

>>> import torch
>>> from xearthformer.diffusion.schedule import NoiseSchedule
>>> sampler = DDIMSampler(NoiseSchedule("linear"), steps=20)
>>> sampler.timesteps[:3].tolist(), sampler.stochastic
([999, 949, 899], False)
"""

from __future__ import annotations

import math

from torch import Tensor

from ..errors import ConfigError
from .sampler import Noise, Sampler
from .schedule import NoiseSchedule


class DDIMSampler(Sampler):
    """DDIM with ``eta`` in [0, 1] (default 0: deterministic); 50 steps by default."""

    name = "ddim"
    default_steps = 50

    def __init__(self, schedule: NoiseSchedule, steps: int | None = None, prediction: str = "eps",
                 spacing: str = "uniform", eta: float = 0.0) -> None:
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
            raise ConfigError(f"DDIM eta must be a number in [0, 1] (0: deterministic, 1: the DDPM "
                              f"posterior variance), got {eta!r}")
        self.eta = float(eta)
        super().__init__(schedule, steps, prediction, spacing)

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.eta > 0

    def step(self, model_output: Tensor, t: int | Tensor, x_t: Tensor, noise: Noise = None) -> Tensor:
        i = self._position(t, x_t)
        a = float(self.schedule.alphas_cumprod64[int(self.timesteps[i])])
        a_next = self._prev_alphas_cumprod(i)
        x0 = self.schedule.convert(model_output, x_t, t, source=self.prediction, target="x0")
        eps = self.schedule.convert(model_output, x_t, t, source=self.prediction, target="eps")
        sigma = self.eta * math.sqrt((1 - a_next) / (1 - a) * (1 - a / a_next))
        x_next = math.sqrt(a_next) * x0 + math.sqrt(max(1 - a_next - sigma ** 2, 0.0)) * eps
        if self.stochastic:  # drawn at every step, even where sigma = 0 (the last)
            x_next = x_next + sigma * self._draw(noise, x_t)
        return x_next

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", eta={self.eta})"
