"""Knowledge control (PreDiff's knowledge alignment) as a wrapper of the denoiser's output, so
that DDPM, DDIM (eta = 0 included) and DPM-Solver++ are all guided by the same code.

A differentiable statistic ``f(x_t, t) -> (N, K)`` (e.g. the alignment network's prediction of
the future mean intensity from the noisy latent) is pulled toward a target ``y`` (N, K) by the
gradient of the error norm U.

Derivation (classifier guidance: Dhariwal & Nichol 2021; Song et al. 2021)
-----------------------------------------------------------------------------
We want to sample from the tilted marginals  p~_t(x) ~ p_t(x) exp(-gamma U(x, t)).  Their score is

    grad log p~_t(x) = grad log p_t(x) - gamma grad U(x, t).

An eps-prediction model estimates the score as grad log p_t(x_t) = -eps(x_t, t) / sigma_t with
sigma_t = sqrt(1 - alpha_bar_t), so the tilted score is that of the *guided noise prediction*

    eps~ = eps + gamma sigma_t grad_x U,
    equivalently  x0~ = x0 - gamma (sigma_t^2 / sqrt(alpha_bar_t)) grad_x U.

This changes the model, not the solver: DDPM (any respacing), DDIM (any eta) and DPM-Solver++
all integrate the same guided reverse SDE/ODE and converge to the same guided distribution as
their steps grow, so the strength gamma (``scale``) does not depend on the number of steps. In
a 1000-step DDPM the mean then moves by -(beta_t / sqrt(1 - beta_t)) gamma grad U per step: the
Sigma-scaled shift of Dhariwal & Nichol (Sigma ~ beta_t).

The official PreDiff step instead subtracts  sqrt(beta~_t) * guide_scale * grad U  from each DDPM
mean (beta~_t: the posterior variance). Per step that scales with the posterior *std*, so over n
respaced steps the total pull grows like sqrt(n), and it vanishes for DDIM with eta = 0. At 1000
steps it equals gamma(t) = guide_scale sqrt(beta~_t (1 - beta_t)) / beta_t here (for guide_scale
50: 350 at t = 999, 657 at t = 500, 4186 at t = 10): there is no single equivalent ``scale``.
``parity=True`` reproduces it.

The error norm
--------------
Default: U = sum_n ||f_n - y_n||_2, the L2 norm (not squared, as the official) **per sample**;
member n's gradient depends on member n alone, so an ensemble member is bit-for-bit the same
alone or in a batch, as long as ``f`` treats samples independently (eval mode, no batch
statistics). ``parity=True``: the official ``alignment_fn``, ONE L2 norm over the whole batch,
U = ||f - y||_2, whose gradient for member n is scaled by 1 / U, a function of its batch-mates:
parity mode is therefore **exempt from the per-member seed guarantee**. It is valid with DDPM
only, where it shifts the mean by -exp(0.5 posterior_log_variance_clipped_t) * scale * grad U
exactly as the official ``aligned_mean`` (same noise, same std); the official scale is
:data:`OFFICIAL_GUIDE_SCALE`.

``norm="squared"`` uses U = sum_n ||f_n - y_n||^2 / 2 instead: its gradient shrinks as the
statistic nears the target (the tilted marginals are then a Gaussian likelihood of the target
with standard deviation 1 / sqrt(scale) in the statistic's units), where the L2 norm pulls with
the same strength at any distance (for K = 1, |f - y| has gradient sign(f - y) grad f). Per
sample too, so the seed guarantee holds; the official step (``parity``) is L2.

The gradient is taken with autograd under ``torch.enable_grad()`` outside inference mode, so a
caller may sample inside ``torch.inference_mode()`` (inference tensors are cloned first).

>>> import torch
>>> from xearthformer.diffusion import NoiseSchedule, make_sampler, sample
>>> sampler = make_sampler("ddim", NoiseSchedule("linear"), steps=10)
>>> mean_of = lambda x_t, t: x_t.mean(dim=1, keepdim=True)          # (N, 1)
>>> control = KnowledgeControl(mean_of, target=torch.full((4, 1), 2.0), scale=20.0)
>>> denoise = control.wrap(lambda x_t, t: torch.zeros_like(x_t), sampler)
>>> x0 = sample(denoise, torch.randn(4, 8), sampler, progress=False)
>>> x0.shape
torch.Size([4, 8])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError, ShapeError
from .ddpm import DDPMSampler
from .sampler import Sampler

OFFICIAL_GUIDE_SCALE = 50.0  # guide_scale of the official SEVIR-LR configs (parity mode)
#: error norms: the L2 norm per sample (as the official, not squared), or half its square
NORMS = ("l2", "squared")

Statistic = Callable[..., Tensor]
Denoiser = Callable[[Tensor, Tensor], Tensor]


class KnowledgeControl:
    """Steer sampling so that a statistic of the sample approaches a target.

    Parameters
    ----------
    statistic
        Differentiable ``statistic(x_t, t, **conditioning) -> (N, K)``; ``t`` is a long tensor (N,).
    target
        The wanted statistic, shape (N, K) (one row per sample in the batch being sampled).
    scale
        Guidance strength: gamma of the derivation above (default mode), or the official
        ``guide_scale`` (parity mode; :data:`OFFICIAL_GUIDE_SCALE`). 0 disables guidance.
    parity
        Reproduce the official DDPM step exactly (one L2 norm over the whole batch, mean shift
        by posterior std x scale x gradient); DDPM only, and batch-coupled (no per-member seed
        guarantee).
    conditioning
        Extra keyword arguments passed through to ``statistic`` (e.g. context latents).
    norm
        ``"l2"`` (per sample, not squared) or ``"squared"`` (half the squared L2 norm per
        sample); parity mode is ``"l2"``.
    """

    def __init__(self, statistic: Statistic, target: Tensor, scale: float, *, parity: bool = False,
                 conditioning: Mapping[str, Any] | None = None, norm: str = "l2") -> None:
        if norm not in NORMS:
            raise ConfigError(f"norm must be one of {NORMS}, got {norm!r}")
        if parity and norm != "l2":
            raise ConfigError("parity=True is the official step, whose error norm is 'l2'. Fix: norm='l2' or "
                              "parity=False.")
        if not callable(statistic):
            raise ConfigError(f"statistic must be a callable f(x_t, t) -> (N, K), got "
                              f"{type(statistic).__name__}")
        if not isinstance(target, Tensor) or target.ndim != 2:
            got = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
            raise ShapeError(f"target must be a tensor of shape (N, K), one row per sample, got "
                             f"{got}. Fix: e.g. target.reshape(N, -1) or value.expand(N, K).")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale >= 0:
            raise ConfigError(f"scale must be a number >= 0, got {scale!r}")
        self.statistic = statistic
        self.target = target
        self.scale = float(scale)
        self.parity = bool(parity)
        self.norm = norm
        self.conditioning = dict(conditioning or {})

    def error(self, x_t: Tensor, t: Tensor) -> Tensor:
        """U: the error norm per sample (N,), or one scalar over the batch (parity)."""
        stat = self._statistic(x_t, t)
        return self._norm(stat - self._target_like(stat))

    def gradient(self, x_t: Tensor, t: Tensor) -> Tensor:
        """dU/dx_t by autograd, shaped like ``x_t`` (works inside ``torch.inference_mode()``)."""
        with torch.inference_mode(False), torch.enable_grad():
            # inference tensors cannot be recorded by autograd: work on normal clones
            x = x_t.detach().clone().requires_grad_(True)
            t = _normal(t)
            stat = self._statistic(x, t)
            if not stat.requires_grad:
                raise ConfigError(
                    "the statistic's output does not depend differentiably on x_t (it has no "
                    "grad_fn). Fix: compute it from x_t with torch operations, without "
                    ".detach(), .item(), numpy or torch.no_grad() inside the statistic.")
            error = self._norm(stat - self._target_like(stat))
            (grad,) = torch.autograd.grad(error.sum(), x, allow_unused=True)
        if grad is None:
            raise ConfigError("the statistic's output does not depend on x_t (autograd found no "
                              "path from x_t). Fix: the statistic must use its first argument x_t.")
        return grad.detach()

    def wrap(self, denoise: Denoiser, sampler: Sampler) -> Denoiser:
        """``denoise`` with its output shifted by the guidance, for use with ``sampler``.

        The output stays in ``sampler.prediction``'s parameterisation (the shift is made on
        eps: x0/v outputs are converted to eps and back at the same x_t).
        """
        if not isinstance(sampler, Sampler):
            raise ConfigError(f"sampler must come from make_sampler, got {type(sampler).__name__}")
        if self.parity and not isinstance(sampler, DDPMSampler):
            raise ConfigError(f"parity=True reproduces the official DDPM step and is valid with "
                              f"the 'ddpm' sampler only, got {sampler.name!r}. Fix: use the default "
                              "parity=False with DDIM or DPM-Solver++.")
        schedule, prediction = sampler.schedule, sampler.prediction

        def guided(x_t: Tensor, t: Tensor) -> Tensor:
            output = denoise(x_t, t)
            if self.scale == 0:
                return output
            shift = self._eps_coefficient(x_t, t, sampler) * self.gradient(x_t, t)
            if prediction == "eps":
                return output + shift
            eps = schedule.convert(output, x_t, t, source=prediction, target="eps")
            return schedule.convert(eps + shift, x_t, t, source="eps", target=prediction)

        return guided

    # ------------------------------------------------------------------ internals
    def _eps_coefficient(self, x_t: Tensor, t: Tensor, sampler: Sampler) -> Tensor:
        """c such that eps~ = eps + c * dU/dx_t, shaped (N, 1, ..., 1)."""
        schedule = sampler.schedule
        if not self.parity:
            return self.scale * schedule.gather(schedule.sqrt_one_minus_alphas_cumprod, t, x_t)
        # the DDPM mean is coef1 * (sqrt_recip * x_t - sqrt_recipm1 * eps) + coef2 * x_t, so this
        # eps shift moves it by exactly -std * scale * dU/dx_t, the official aligned_mean
        coef1, _, log_variance = sampler.posterior(t, x_t)  # type: ignore[attr-defined]
        sqrt_recipm1 = schedule.gather(schedule.sqrt_recipm1_alphas_cumprod, t, x_t)
        return (0.5 * log_variance).exp() * self.scale / (coef1 * sqrt_recipm1)

    def _statistic(self, x: Tensor, t: Tensor) -> Tensor:
        conditioning = {k: _normal(v) for k, v in self.conditioning.items()}
        stat = self.statistic(x, t, **conditioning)
        if not isinstance(stat, Tensor) or stat.ndim != 2 or stat.shape[0] != x.shape[0]:
            got = tuple(stat.shape) if isinstance(stat, Tensor) else type(stat).__name__
            raise ShapeError(f"the statistic must return a tensor (N, K) with N = {x.shape[0]} "
                             f"samples, got {got}")
        return stat

    def _target_like(self, stat: Tensor) -> Tensor:
        if self.target.shape != stat.shape:
            raise ShapeError(f"target has shape {tuple(self.target.shape)} but the statistic "
                             f"returns {tuple(stat.shape)}: they must match (N, K). Fix: one "
                             "target row per sample in the batch, e.g. target.expand(N, K).")
        return _normal(self.target).to(device=stat.device, dtype=stat.dtype)

    def _norm(self, difference: Tensor) -> Tensor:
        if self.parity:  # the official alignment_fn: one norm over the whole batch
            return torch.linalg.vector_norm(difference)
        if self.norm == "squared":
            return 0.5 * difference.square().sum(dim=1)
        return torch.linalg.vector_norm(difference, dim=1)


def _normal(value: Any) -> Any:
    """A normal (non-inference) clone of an inference tensor; anything else unchanged."""
    if isinstance(value, Tensor) and value.is_inference():
        return value.clone()
    return value
