"""Ancestral DDPM sampling (Ho et al. 2020), the official PreDiff sampler.

Each step predicts x0 from the model output, takes the mean of the posterior
q(x_{t-1} | x_t, x0) and adds noise with the clipped posterior std
exp(0.5 * posterior_log_variance_clipped_t); no noise at the last step. At ``steps = T`` this is
the official ``p_sample_loop`` operation for operation (its buffers, its order of operations).

With fewer steps the chain is *respaced* (Nichol & Dhariwal 2021, "improved DDPM"): the
sampler keeps the timesteps s_0 < ... < s_{n-1} and runs DDPM on the shorter chain whose
alpha_bar are those of the kept timesteps, i.e. betas_k = 1 - alpha_bar[s_k] / alpha_bar[s_{k-1}].
The denoiser is still called with the original timestep s_k.

>>> import torch
>>> from xearthformer.diffusion.schedule import NoiseSchedule
>>> sampler = DDPMSampler(NoiseSchedule("linear"), steps=50)
>>> x = torch.randn(2, 3)
>>> sampler.step(torch.zeros(2, 3), sampler.timesteps[0], x, torch.randn(2, 3)).shape
torch.Size([2, 3])
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .sampler import Noise, Sampler
from .schedule import posterior_terms, take


class DDPMSampler(Sampler):
    """Ancestral DDPM; every training timestep by default (the official loop), else respaced.

    Unlike the other samplers, :meth:`step` accepts a different timestep per sample, as the
    official ``p_sample`` does.
    """

    name = "ddpm"
    default_steps = None
    stochastic = True

    def _on_set_steps(self) -> None:
        schedule = self.schedule
        ascending = self.timesteps.flip(0)
        if self.num_steps == schedule.num_timesteps:  # the official chain: its own buffers
            self._coef1 = schedule.posterior_mean_coef1
            self._coef2 = schedule.posterior_mean_coef2
            self._log_variance = schedule.posterior_log_variance_clipped
        else:
            alphas_cumprod = schedule.alphas_cumprod64[ascending.numpy()]
            alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
            terms = posterior_terms(1.0 - alphas_cumprod / alphas_cumprod_prev, alphas_cumprod,
                                    alphas_cumprod_prev)
            self._coef1, self._coef2, self._log_variance = (
                torch.tensor(terms[key], dtype=torch.float32)
                for key in ("posterior_mean_coef1", "posterior_mean_coef2",
                            "posterior_log_variance_clipped"))
        # training timestep -> its position k in the ascending chain (k = 0: the last step)
        self._chain = torch.full((schedule.num_timesteps,), -1, dtype=torch.long)
        self._chain[ascending] = torch.arange(self.num_steps)

    def _chain_position(self, t: int | Tensor, x_t: Tensor) -> tuple[Tensor, Tensor]:
        t = self.schedule.timesteps_for(t, x_t)
        k = self._chain.to(t.device)[t]
        if bool((k < 0).any()):
            self._check_in_chain(int(t[k < 0][0]))  # raises, naming the timestep
        return t, k

    def posterior(self, t: int | Tensor, x_t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(mean coefficient of x0, of x_t, clipped log variance) of this chain's step from ``t``,
        each shaped (N, 1, ..., 1) like ``x_t``."""
        _, k = self._chain_position(t, x_t)
        return (take(self._coef1, k, x_t), take(self._coef2, k, x_t),
                take(self._log_variance, k, x_t))

    def step(self, model_output: Tensor, t: int | Tensor, x_t: Tensor, noise: Noise = None) -> Tensor:
        t, k = self._chain_position(t, x_t)
        x0 = self.schedule.convert(model_output, x_t, t, source=self.prediction, target="x0")
        coef1, coef2, log_variance = (take(v, k, x_t) for v in
                                      (self._coef1, self._coef2, self._log_variance))
        mean = coef1 * x0 + coef2 * x_t
        nonzero = (k != 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
        return mean + nonzero * (0.5 * log_variance).exp() * self._draw(noise, x_t)

