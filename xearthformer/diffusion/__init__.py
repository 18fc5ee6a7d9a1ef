"""Diffusion without a network: noise schedules, samplers with one interface, and guidance.

Pure torch: imports only torch, numpy and the package's ground floor (errors, device,
progress). A model family supplies the denoiser as a callable ``denoise(x_t, t)`` and the noise
(``noise_fn(shape)``), so it controls the randomness of every ensemble member.

* :mod:`~xearthformer.diffusion.schedule`: :class:`NoiseSchedule` ("linear" official, "cosine")
* :mod:`~xearthformer.diffusion.sampler`: the :class:`Sampler` interface, timestep spacings
* :mod:`~xearthformer.diffusion.ddpm`, :mod:`~xearthformer.diffusion.ddim`,
  :mod:`~xearthformer.diffusion.dpm_solver`: the samplers
* :mod:`~xearthformer.diffusion.sampling`: :func:`make_sampler`, :func:`sample`
* :mod:`~xearthformer.diffusion.guidance`: :class:`KnowledgeControl`

>>> import torch
>>> from xearthformer.diffusion import NoiseSchedule, make_sampler, sample
>>> schedule = NoiseSchedule("linear")
>>> sampler = make_sampler("dpm++2m", schedule, steps=10)
>>> x0 = sample(lambda x, t: torch.zeros_like(x), torch.randn(2, 5), sampler, progress=False)
"""

from __future__ import annotations

from .ddim import DDIMSampler
from .ddpm import DDPMSampler
from .dpm_solver import DPMSolverPP2MSampler
from .guidance import OFFICIAL_GUIDE_SCALE, KnowledgeControl
from .sampler import Sampler, logsnr_timesteps, uniform_timesteps
from .sampling import SAMPLERS, make_sampler, sample
from .schedule import PREDICTIONS, SCHEDULES, NoiseSchedule

__all__ = [
    "OFFICIAL_GUIDE_SCALE", "PREDICTIONS", "SAMPLERS", "SCHEDULES",
    "DDIMSampler", "DDPMSampler", "DPMSolverPP2MSampler", "KnowledgeControl", "NoiseSchedule",
    "Sampler",
    "logsnr_timesteps", "make_sampler", "sample", "uniform_timesteps",
]
