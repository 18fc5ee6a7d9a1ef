"""Training PreDiff on labelled data: the frame VAE first, then the latent denoiser.

Both stages run through the one loop (:func:`~xearthformer.training.loop.fit`: AMP, DDP,
resume, checkpoints, progress) with their own objective:

1. **VAE** (:class:`VAEObjective`): every target frame of every training window is coded on its
   own; the reconstruction from a posterior *sample* is scored by
   :class:`~xearthformer.models.prediff.vae_loss.VAELoss` (L1 summed per frame + ``kl_weight`` x
   KL, the official loss without its adversarial term);
2. **denoiser** (:class:`DiffusionObjective`), with the VAE frozen: target latent = posterior
   sample of the target frames, context = posterior mode of the context frames (as the official
   code), both times ``latent_scale``; t ~ U{0..T-1} per sample, ``z_t = add_noise(z_0, eps, t)``
   and the loss is the MSE of the denoiser's output against eps (or v, or z_0, after the
   config's ``prediction``). An EMA of the denoiser weights is kept (the VAE's are frozen).

The returned Forecaster holds the EMA weights by default (``weights="ema"``; ``"raw"``: the
raw weights of the best validation epoch) and says which in ``config.weights``. With a
``checkpoint_dir``, each stage keeps its own resumable state (``vae/last.pt``,
``denoiser/last.pt``); ``resume=True`` continues whichever stage was interrupted (a finished
VAE stage is not repeated).

>>> fc = train_prediff(radar, preset="tiny", context=4, lead=3, vae_epochs=2, epochs=2)  # doctest: +SKIP
>>> ens = radar.earthformer.ensemble(fc, members=8)                                     # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from .. import layout
from ..errors import ConfigError
from ..models.base import Forecaster
from ..models.prediff.family import WEIGHTS, PreDiff
from ..models.prediff.vae import FrameVAE, sample_posterior
from ..models.prediff.vae_loss import VAELoss
from ..parallel import unwrap_model
from .data import split_by_time
from .labelled import (
    _as_dataset,
    _forecaster,
    _jsonable_history,
    _period_str,
    _train_config,
    _variables,
    build_network,
    bundle_writer,
    window_sources,
)
from .objectives import Batch, LossTerms

__all__ = ["DiffusionObjective", "VAEObjective", "VAETraining", "train_prediff"]

#: EMA decay of the denoiser weights (official 0.9999 over ~100k updates; our runs are shorter)
EMA_DECAY = 0.999
#: training windows whose latents set ``latent_scale`` (1 / their std)
SCALE_WINDOWS = 64


def _clean(y: Tensor, mask: Tensor | None) -> Tensor:
    """Targets with missing points (mask False, NaN) replaced by 0."""
    if mask is None:
        return torch.nan_to_num(y)
    return torch.where(mask, y, torch.zeros((), dtype=y.dtype, device=y.device))


class VAETraining(nn.Module):
    """The VAE as the loop trains it: ``forward(frames) -> (recon, mean, logvar)``, the
    reconstruction decoded from a posterior sample, drawn from torch's global RNG in training
    mode (the loop seeds it per epoch) and from a generator seeded 0 in evaluation mode (so the
    validation loss, which picks the best epoch, does not depend on the caller's RNG state)."""

    def __init__(self, vae: FrameVAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mean, logvar = self.vae.encode(frames)
        gen = None if self.training else torch.Generator(device=mean.device).manual_seed(0)
        z = sample_posterior(mean, logvar, torch.randn(mean.shape, generator=gen, device=mean.device,
                                                       dtype=mean.dtype))
        return self.vae.decode(z, size=frames.shape[2:4]), mean, logvar


class VAEObjective:
    """Stage 1: the VAE loss on the target frames of a batch (missing points are left out).

    ``total`` is the loss summed over frames, ``count`` the number of frames, so the loop's mean
    is :class:`~xearthformer.models.prediff.vae_loss.VAELoss`'s per-frame loss.

    Parameters
    ----------
    kl_weight, reconstruction
        See :class:`~xearthformer.models.prediff.vae_loss.VAELoss` (official 1e-6, ``"l1"``).
    """

    def __init__(self, kl_weight: float = 1e-6, reconstruction: str = "l1", weights: Any = None) -> None:
        self.loss = VAELoss(kl_weight=kl_weight, reconstruction=reconstruction)

    def __call__(self, model: nn.Module, batch: Batch) -> LossTerms:
        frames = _clean(batch.y, batch.mask)
        recon, mean, logvar = model(frames)
        mask = None if batch.mask is None else batch.mask.to(frames.dtype)
        loss, logs = self.loss(frames, recon, mean, logvar, mask=mask)
        n = frames.shape[0] * frames.shape[1]
        return LossTerms(loss * n, float(n), logs={k: float(logs[k]) for k in ("rec_loss", "kl_loss")})


class DiffusionObjective:
    """Stage 2: the denoiser's diffusion loss, the VAE frozen (called on a whole
    :class:`~xearthformer.models.prediff.family.PreDiff`, whose ``forward`` is the denoiser).

    Per sample: t ~ U{0..T-1}, eps ~ N(0, I), ``z_t = schedule.add_noise(z_0, eps, t)`` with z_0 the
    scaled posterior sample of the target frames; the loss is the squared error of
    ``model(z_t, t, cond)`` against the config's ``prediction`` target (eps officially), summed
    (``total``) over the latent values (``count``). In evaluation mode (validation) t and eps come
    from a generator seeded 0 for every batch, so validation losses compare across epochs.
    Missing target points are set to 0 before encoding (a latent cannot leave a pixel out).

    ``weights`` (the registry's ``factory(weights=...)``) is accepted and unused: the loss lives
    in latent space, where per-pixel weights do not apply.
    """

    def __init__(self, weights: Any = None) -> None:
        self.weights = weights

    def __call__(self, model: nn.Module, batch: Batch) -> LossTerms:
        net: PreDiff = unwrap_model(model)
        cfg, schedule = net.config, net.schedule
        gen = None if model.training else torch.Generator(device=batch.x.device).manual_seed(0)
        with torch.no_grad():
            cond = net.encode_context(batch.x)
            mean, logvar = net.vae.encode(_clean(batch.y, batch.mask))
            draw = torch.randn(mean.shape, generator=gen, device=mean.device, dtype=mean.dtype)
            z0 = sample_posterior(mean, logvar, draw) * cfg.latent_scale
            t = torch.randint(0, schedule.num_timesteps, (z0.shape[0],), generator=gen, device=z0.device)
            eps = torch.randn(z0.shape, generator=gen, device=z0.device, dtype=z0.dtype)
            z_t = schedule.add_noise(z0, eps, t)
            target = {"eps": eps, "x0": z0}.get(cfg.prediction)
            if target is None:
                target = schedule.v_target(z0, eps, t)
        out = model(z_t, t, cond)
        err = (out.float() - target.float()) ** 2
        return LossTerms(err.sum(), float(err.numel()))


def latent_std(vae: FrameVAE, source: Any, windows: int = SCALE_WINDOWS, device: Any = "cpu",
               batch_size: int = 8) -> float:
    """Standard deviation of the posterior-mode latents of the target frames of the first
    ``windows`` windows of ``source``, encoded ``batch_size`` windows at a time (LDM's
    ``scale_by_std`` uses 1 / this)."""
    n = min(len(source), windows)
    total, squares, count = 0.0, 0.0, 0
    was = vae.training
    vae.eval()
    with torch.no_grad():
        for start in range(0, n, batch_size):
            _, y, mask = source.get(np.arange(start, min(n, start + batch_size)))
            y_t = torch.from_numpy(np.ascontiguousarray(y)).to(device)
            m_t = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask)).to(device)
            mean, _ = vae.encode(_clean(y_t, m_t))
            mean = mean.double()
            total, squares, count = total + float(mean.sum()), squares + float((mean ** 2).sum()), count + mean.numel()
    vae.train(was)
    average = total / count
    return math.sqrt(max(squares / count - average ** 2, 0.0) * count / max(count - 1, 1))


def _check_request(variables: list[str], targets: Any, static: Sequence[str], calendar: Sequence[str],
                   weights: str) -> None:
    if targets is not None:
        names = [targets] if isinstance(targets, str) else list(targets)
        if names != variables:
            raise ConfigError(f"PreDiff predicts its input variables (one VAE codes context and target frames); "
                              f"got targets={names} for inputs {variables}. Fix: drop targets=, or pass the "
                              "same variables.")
    if static or calendar:
        raise ConfigError("PreDiff takes no static or calendar channels (its VAE codes the inputs and the "
                          "targets alike); drop static=/calendar=.")
    if weights not in WEIGHTS:
        raise ConfigError(f"weights must be one of {WEIGHTS} (the bundle's denoiser weights), got {weights!r}")


def train_prediff(
    ds: xr.Dataset | xr.DataArray,
    preset: str = "tiny",
    variables: str | Sequence[str] | None = None,
    targets: str | Sequence[str] | None = None,
    context: int = 7,
    lead: int = 6,
    epochs: int = 20,
    batch_size: int = 8,
    val: Any = "auto",
    device: Any = "auto",
    checkpoint_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    *,
    family: str = "prediff",
    vae_epochs: int | None = None,
    vae_batch_size: int | None = None,
    vae_lr: float = 1e-3,
    lr: float = 1e-3,
    weight_decay: float = 1e-5,
    warmup: float = 0.1,
    clip_grad: float | None = 1.0,
    precision: str = "auto",
    activation_checkpointing: bool = False,
    patience: int | None = None,
    normalization: Any = "zscore",
    static: Sequence[str] = (),
    calendar: Sequence[str] = (),
    coslat: bool = True,
    steps_per_epoch: int | None = None,
    vae_steps_per_epoch: int | None = None,
    kl_weight: float = 1e-6,
    reconstruction: str = "l1",
    scale_latents: bool = True,
    ema_decay: float = EMA_DECAY,
    weights: str = "ema",
    resume: str | os.PathLike[str] | bool | None = None,
    progress: bool | None = None,
    cache: bool | str = "auto",
    augment: Any = None,
    **model_overrides: Any,
) -> Forecaster:
    """Train a PreDiff (frame VAE, then latent denoiser) on ``ds``; returns one Forecaster.

    Takes the arguments of :func:`xearthformer.train` (which hands ``family="prediff"`` here),
    with these differences and additions:

    Parameters
    ----------
    preset : str
        ``"tiny"`` (CPU) or ``"sevirlr"`` (the official architecture), built for the data's shapes.
    targets, static, calendar
        PreDiff forecasts its inputs: ``targets`` must be None or the inputs, no static or
        calendar channels.
    epochs, batch_size, lr, steps_per_epoch
        Of the denoiser stage.
    vae_epochs, vae_batch_size, vae_lr, vae_steps_per_epoch
        Of the VAE stage (defaults: ``epochs``, ``batch_size``, 1e-3, ``steps_per_epoch``).
    kl_weight, reconstruction
        The VAE loss (official 1e-6, ``"l1"``).
    scale_latents : bool
        Set ``latent_scale`` to 1 / std of the trained VAE's latents (LDM's ``scale_by_std``;
        the official SEVIR-LR model uses unscaled latents, ``latent_scale=1``).
    ema_decay : float
        Decay of the EMA of the denoiser weights (warm-up ``min(d, (1 + n) / (10 + n))``).
    weights : str
        Which denoiser weights the bundle holds: ``"ema"`` (default) or ``"raw"`` (the best
        validation epoch's).
    coslat
        Unused (the diffusion loss lives in latent space); accepted for :func:`xearthformer.train`.
    checkpoint_dir, resume
        Each stage keeps ``last.pt``/``best.pt`` in ``checkpoint_dir/vae`` and
        ``checkpoint_dir/denoiser``; ``last.xef`` (raw denoiser weights) after each denoiser
        epoch. ``resume=True`` continues the interrupted stage.
    **model_overrides
        :class:`~xearthformer.models.prediff.family.PreDiffConfig` fields (``sampler``,
        ``steps``, ``schedule``, ``unet={...}``...).

    Returns
    -------
    xearthformer.Forecaster
        ``metadata["training"]`` holds both stages' settings and histories.

    Examples
    --------
    >>> fc = train_prediff(radar, preset="tiny", context=4, lead=3, vae_epochs=3, epochs=5)  # doctest: +SKIP
    >>> fc.model.config.weights                                                             # doctest: +SKIP
    'ema'
    """
    from ..parallel import init_distributed
    from .loop import fit

    rank, world = init_distributed()
    ds = _as_dataset(ds)
    names = _variables(ds, variables)
    _check_request(names, targets, static, calendar, weights)
    stage2 = _train_config(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup=warmup,
                           clip_grad=clip_grad, precision=precision, activation_checkpointing=activation_checkpointing,
                           patience=patience, seed=seed, steps_per_epoch=steps_per_epoch, progress=progress,
                           ema_decay=ema_decay)
    stage1 = _train_config(epochs=vae_epochs or epochs, batch_size=vae_batch_size or batch_size, lr=vae_lr,
                           weight_decay=weight_decay, warmup=warmup, clip_grad=clip_grad, precision=precision,
                           patience=patience, seed=seed,
                           steps_per_epoch=vae_steps_per_epoch if vae_steps_per_epoch is not None else steps_per_epoch,
                           progress=progress)
    split = split_by_time(ds, val, window=int(context) + int(lead))
    spec = layout.fit_spec(ds, names, None, context=context, lead=lead, normalization=normalization,
                           period=split.train_period)
    train_src, val_src = window_sources(split, spec, cache)
    net = build_network(family, preset, spec, seed, **model_overrides)
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    info = {"family": family, "preset": preset, "train_period": _period_str(split.train_period),
            "val_period": _period_str(split.val_period),
            "windows": {"train": len(train_src), "val": 0 if val_src is None else len(val_src)},
            "world_size": world,
            "augment": None if augment is None else getattr(augment, "description", repr(augment))}

    # stage 1: the frame VAE
    vae_fit = fit(VAETraining(net.vae), train_src, val_src, stage1,
                  VAEObjective(kl_weight=kl_weight, reconstruction=reconstruction), device=device,
                  checkpoint_dir=None if ckdir is None else ckdir / "vae", resume=_stage_resume(resume, ckdir, "vae"),
                  augment=augment)
    vae = vae_fit.model.vae  # (net.vae itself, with the stage's best weights)
    scale = 1.0
    if scale_latents:
        std = latent_std(vae, train_src, device=next(vae.parameters()).device, batch_size=stage1.batch_size)
        scale = 1.0 / std if math.isfinite(std) and std > 0 else 1.0
    net = _with_config(net, net.config.replace(latent_scale=scale))
    for p in net.vae.parameters():
        # frozen, and without the VAE stage's last gradients: the loop clips the norm of every
        # gradient the model holds, and stale ones would scale the denoiser's steps
        p.grad = None
        p.requires_grad_(False)
    net.vae.eval()

    # stage 2: the denoiser, VAE frozen
    raw_info = {**info, "stage": "denoiser", "weights": "raw"}
    writer = bundle_writer(ckdir, rank, spec, raw_info) if ckdir is not None else None
    den_fit = fit(net, train_src, val_src, stage2, DiffusionObjective(), device=device,
                  checkpoint_dir=None if ckdir is None else ckdir / "denoiser",
                  resume=_stage_resume(resume, ckdir, "denoiser"),
                  on_epoch_end=None if writer is None else _raw_bundles(writer), augment=augment)
    model: PreDiff = den_fit.model
    if weights == "ema" and den_fit.ema_state is not None:
        model.load_state_dict(den_fit.ema_state)
    model = _with_config(model, model.config.replace(weights=weights))
    for p in model.parameters():
        p.requires_grad_(True)
    meta = {"training": {
        **info, "weights": weights, "latent_scale": scale, "ema_decay": ema_decay,
        "vae": {"config": stage1.to_dict(), "kl_weight": kl_weight, "reconstruction": reconstruction,
                "history": _jsonable_history(vae_fit.history), "best_epoch": vae_fit.best_epoch},
        "denoiser": {"config": stage2.to_dict(), "history": _jsonable_history(den_fit.history),
                     "best_epoch": den_fit.best_epoch, "stopped_early": den_fit.stopped_early},
        "history": _jsonable_history(den_fit.history)}}
    model.eval()
    return _forecaster(model, spec, meta)


def _stage_resume(resume: Any, ckdir: Path | None, stage: str) -> Any:
    """``resume=True``: this stage's ``last.pt`` when it exists (a stage that never started
    starts afresh); a path: the denoiser stage's state file."""
    if not resume:
        return None
    if resume is True:
        if ckdir is None:
            raise ConfigError("resume=True needs checkpoint_dir (the folder holding vae/ and denoiser/).")
        from .state import LAST_STATE

        return True if (ckdir / stage / LAST_STATE).is_file() else None
    return resume if stage == "denoiser" else None


def _with_config(net: PreDiff, config: Any) -> PreDiff:
    """``net`` with another config of the same architecture (latent scale, weights label)."""
    net.config = config
    return net


def _raw_bundles(writer: Any) -> Any:
    """The bundle writer of the denoiser stage: its bundles hold the raw weights, and say so."""
    def write(epoch: int, history: dict[str, list[float]], is_best: bool, net: Any) -> bool:
        plain = unwrap_model(net)
        labelled = plain.config
        plain.config = labelled.replace(weights="raw")
        try:
            return writer(epoch, history, is_best, plain)
        finally:
            plain.config = labelled

    return write
