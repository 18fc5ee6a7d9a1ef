"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: fast solver for guided sampling of diffusion
probabilistic models", Algorithm 2): the multistep second-order solver of the probability-flow
ODE in data-prediction form. Deterministic.

With alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t), lambda_t = log(alpha_t/sigma_t)
and h = lambda_next - lambda_t, one step from t to the next timestep is

    x_next = (sigma_next / sigma_t) x_t + alpha_next (1 - exp(-h)) D
    D      = x0_t                                   (first order: the first step)
    D      = x0_t + (x0_t - x0_prev) / (2 r),  r = h_prev / h    (second order: the others)

where x0_t is the data prediction at (x_t, t) and x0_prev the one of the previous step. The
last step goes to the clean sample (sigma = 0, lambda = inf), where the second-order correction
is undefined and the first-order step's limit is x0_t itself: so the last step is first order,
as the reference's ``lower_order_final`` and diffusers' ``final_sigmas_type="zero"`` do.

Spacing ``"uniform"`` (time-uniform, default) or ``"logsnr"`` (uniform in lambda, the
reference's recommendation for guided sampling).

>>> import torch
>>> from xearthformer.diffusion.schedule import NoiseSchedule
>>> sampler = DPMSolverPP2MSampler(NoiseSchedule("linear"), steps=10)
>>> x = torch.randn(2, 3)
>>> for t in sampler.timesteps:
...     x = sampler.step(torch.zeros_like(x), t, x)      # a denoiser that predicts eps = 0
>>> x.shape
torch.Size([2, 3])
"""

from __future__ import annotations

import math

from torch import Tensor

from ..errors import ConfigError, ShapeError
from .sampler import Noise, Sampler, log_snr


class DPMSolverPP2MSampler(Sampler):
    """DPM-Solver++(2M), 20 steps by default. Multistep: step through ``timesteps`` in order;
    stepping from ``timesteps[0]`` (or :meth:`reset`) starts a new run."""

    name = "dpm++2m"
    default_steps = 20

    def reset(self) -> None:
        self._previous: tuple[int, Tensor, float] | None = None  # (step index, x0, lambda)

    def step(self, model_output: Tensor, t: int | Tensor, x_t: Tensor, noise: Noise = None) -> Tensor:
        i = self._position(t, x_t)
        if i == 0:
            self._previous = None
        elif self._previous is None or self._previous[0] != i - 1:
            done = "no step" if self._previous is None else f"step {self._previous[0]}"
            raise ConfigError(f"DPM-Solver++(2M) is multistep: step {i} (t={int(self.timesteps[i])}) "
                              f"must follow step {i - 1}, but {done} was the last. Fix: step through "
                              "sampler.timesteps in order, starting at timesteps[0].")
        elif self._previous[1].shape != x_t.shape:
            raise ShapeError(f"x_t changed shape within a run: {tuple(self._previous[1].shape)} -> "
                             f"{tuple(x_t.shape)}. Fix: start again at timesteps[0].")
        x0 = self.schedule.convert(model_output, x_t, t, source=self.prediction, target="x0")
        a = float(self.schedule.alphas_cumprod64[int(self.timesteps[i])])
        lam = float(log_snr(a))
        previous, self._previous = self._previous, (i, x0, lam)
        if i + 1 == self.num_steps:
            return x0
        a_next = self._prev_alphas_cumprod(i)
        h = float(log_snr(a_next)) - lam
        if previous is None:
            d = x0
        else:
            r = (lam - previous[2]) / h
            d = x0 + (x0 - previous[1]) / (2 * r)
        return math.sqrt((1 - a_next) / (1 - a)) * x_t + math.sqrt(a_next) * -math.expm1(-h) * d
