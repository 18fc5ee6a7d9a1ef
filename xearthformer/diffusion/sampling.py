"""Choosing a sampler by name, and the one sampling loop.

>>> import torch
>>> from xearthformer.diffusion import NoiseSchedule, make_sampler, sample
>>> sampler = make_sampler("ddim", NoiseSchedule("linear"), steps=10)
>>> denoise = lambda x_t, t: torch.zeros_like(x_t)        # predicts eps = 0
>>> x0 = sample(denoise, torch.randn(4, 2), sampler, progress=False)
>>> x0.shape
torch.Size([4, 2])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError, ShapeError
from ..progress import tqdm_class
from .ddim import DDIMSampler
from .ddpm import DDPMSampler
from .dpm_solver import DPMSolverPP2MSampler
from .sampler import Sampler
from .schedule import NoiseSchedule

SAMPLERS: dict[str, type[Sampler]] = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "dpm++2m": DPMSolverPP2MSampler,
}

Denoiser = Callable[[Tensor, Tensor], Tensor]


def make_sampler(name: str, schedule: NoiseSchedule, steps: int | None = None,
                 prediction: str = "eps", **options: Any) -> Sampler:
    """The sampler called ``name`` for ``schedule``.

    Parameters
    ----------
    name
        ``"ddpm"`` (ancestral, official; all T steps by default, respaced below T), ``"ddim"``
        (50 steps by default; option ``eta``, default 0) or ``"dpm++2m"`` (20 steps by default).
    schedule
        The training noise schedule.
    steps
        Number of denoiser evaluations, 1..T; None: the sampler's default.
    prediction
        ``"eps"`` (official), ``"x0"`` or ``"v"``.
    **options
        ``spacing`` (``"uniform"`` or ``"logsnr"``) for all; ``eta`` for DDIM.

    >>> make_sampler("dpm++2m", NoiseSchedule("linear"))
    DPMSolverPP2MSampler(steps=20, prediction='eps', spacing='uniform')
    """
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; valid names: {list(SAMPLERS)}")
    try:
        return SAMPLERS[name](schedule, steps, prediction, **options)
    except TypeError as err:  # an option this sampler does not take
        raise ConfigError(f"sampler {name!r}: {err}. Options: 'spacing' for all samplers, "
                          "'eta' for 'ddim'.") from err


def sample(denoise: Denoiser, x_T: Tensor, sampler: Sampler,
           noise_fn: Callable[[torch.Size], Tensor] | None = None, *,
           progress: bool | None = None,
           callback: Callable[[int, int, Tensor], None] | None = None) -> Tensor:
    """Run ``sampler`` from ``x_T`` to a clean sample.

    Parameters
    ----------
    denoise
        ``denoise(x_t, t) -> model output`` in ``sampler.prediction``'s parameterisation; ``t``
        is a long tensor (N,) of one training timestep on x_t's device. Wrap it with
        :meth:`~xearthformer.diffusion.guidance.KnowledgeControl.wrap` to guide it.
    x_T
        The initial noise (N, ...), standard normal: the caller draws it.
    sampler
        From :func:`make_sampler`; its ``timesteps`` are walked in order (a multistep sampler
        starts afresh).
    noise_fn
        ``noise_fn(shape) -> Tensor``, standard-normal noise of x's shape; called once per step
        by a stochastic sampler, never by a deterministic one (where it may be None).
    progress
        Progress bar over the steps (None: on a terminal only).
    callback
        Called after each step as ``callback(step_index, t, x)``.

    Returns
    -------
    Tensor
        The sample after the last step, shaped like ``x_T``.
    """
    if not isinstance(sampler, Sampler):
        raise ConfigError(f"sampler must come from make_sampler, got {type(sampler).__name__}")
    if not isinstance(x_T, Tensor) or x_T.ndim < 1:
        raise ShapeError("x_T must be a tensor with a leading batch dim (N, ...)")
    if sampler.stochastic and noise_fn is None:
        raise ConfigError(f"{sampler!r} is stochastic: pass noise_fn(shape) -> standard-normal "
                          "Tensor (e.g. drawing from one torch.Generator per member)")
    sampler.reset()
    x = x_T
    timesteps = sampler.timesteps.tolist()
    bar = tqdm_class()(timesteps, desc=f"{sampler.name} sampling", leave=False,
                       disable=None if progress is None else not progress)
    for i, t in enumerate(bar):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        x = sampler.step(denoise(x, t_batch), t, x, noise_fn)
        if callback is not None:
            callback(i, t, x)
    return x
