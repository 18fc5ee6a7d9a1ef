"""Knowledge control on labelled data: train an alignment network, estimate mu/sigma.

:func:`train_alignment` teaches a PreDiff model's knowledge-alignment network to predict a
statistic of the future from the noisy latent, with the shared training loop
(:func:`~xearthformer.training.loop.fit`): the VAE frozen; targets computed from the training
windows in physical units (:mod:`xearthformer.models.prediff.statistics`) and standardised by
their training mean/std (:class:`~xearthformer.models.prediff.statistics.StatisticScale`);
inputs ``z_t = q_sample(VAE posterior sample of the future, t, fresh noise)`` with
``t ~ U{0..T-1}``, as the official alignment training. It returns a new Forecaster with the
network and its alignment entry added (mu/sigma of the statistic over the training period
included), which ``xef.save`` stores and ``ensemble(control=...)`` uses.

:func:`control_stats` estimates those mu/sigma from the user's data for bundles that lack them
(official weights).

>>> model = xef.train_alignment(model, radar, statistic="mean_intensity", epochs=5)  # doctest: +SKIP
>>> ens = radar.earthformer.ensemble(model, members=8, control={"n": 2})            # doctest: +SKIP
"""

from __future__ import annotations

import os
import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from .. import layout
from ..errors import ConfigError, DataError, ModelTypeError
from ..models.base import Forecaster, check_forecaster
from ..models.prediff.config import AlignmentConfig, preset
from ..models.prediff.control import CONDITIONINGS, ControlStats, context_value
from ..models.prediff.knowledge import (DEFAULT_GUIDE_SCALE, alignment_entry, entry_name, find_entry,
                                        session_statistic)
from ..models.prediff.statistics import (DataUnits, Statistic, StatisticScale, as_statistic, check_statistic,
                                         context_channels, context_targets)
from ..models.prediff.vae import sample_posterior
from .data import split_by_time
from .labelled import _period_str, window_sources
from .objectives import Batch, LossTerms

__all__ = ["AlignmentObjective", "conditioning_context", "control_stats", "statistic_values", "train_alignment"]

#: windows per batch when computing statistics of the data
STAT_BATCH = 64


def _prediff(model: Any) -> Forecaster:
    fc = check_forecaster(model)
    net = fc.model
    if not (hasattr(net, "alignments") and hasattr(net, "vae") and hasattr(net.config, "alignments")):
        raise ModelTypeError(f"knowledge control needs a PreDiff model (with a VAE and alignment networks), got "
                             f"{type(net).__name__}. Fix: train one with xef.train_prediff, or load one.")
    return fc


def _statistic(statistic: Any) -> Statistic:
    if isinstance(statistic, Mapping) and "params" not in statistic:  # {"name": ..., "threshold": ...}
        params = {k: v for k, v in statistic.items() if k != "name"}
        return as_statistic(statistic.get("name"), **params)
    return as_statistic(statistic)


def statistic_values(source: Any, units: DataUnits, stats: tuple[Statistic, ...], batch: int = STAT_BATCH,
                     context: tuple[Statistic, tuple[int, ...]] | None = None) -> list[np.ndarray]:
    """Each statistic of the target of every window of ``source``, (S, K) float64 per statistic;
    with ``context`` = (statistic, target channels of the context), last also that statistic of
    every window's context, (S,) (:func:`~xearthformer.models.prediff.control.context_value`),
    from the same pass over the windows."""
    out: list[list[np.ndarray]] = [[] for _ in range(len(stats) + (context is not None))]
    with torch.no_grad():
        for start in range(0, len(source), batch):
            x, y, _ = source.get(np.arange(start, min(start + batch, len(source))))
            physical = units.to_physical(torch.from_numpy(np.asarray(y)).to(torch.float64))
            for i, stat in enumerate(stats):
                out[i].append(stat(physical).numpy())
            if context is not None:
                of, channels = context
                out[-1].append(context_value(of, context_targets(torch.from_numpy(np.asarray(x)), channels,
                                                                 units)).numpy())
    return [np.concatenate(v) for v in out]


def conditioning_context(spec: Any, stat: Statistic, conditioning: str
                         ) -> tuple[Statistic, tuple[int, ...]] | None:
    """``statistic_values``'s ``context`` for mu/sigma ``conditioning`` (None: climatological).

    Raises
    ------
    ConfigError
        An unknown conditioning, or ``"context"`` for a model whose targets are not inputs.
    """
    if conditioning not in CONDITIONINGS:
        raise ConfigError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
    if conditioning == "none":
        return None
    channels = context_channels(spec)
    if channels is None:
        raise ConfigError("conditioning='context' computes the statistic of the context's target channels, but "
                          f"the target channels {[c.name for c in spec.targets]} are not all model inputs "
                          f"({spec.input_channel_names}). Fix: conditioning='none'.")
    return stat, channels


class AlignmentObjective(nn.Module):
    """The alignment network's loss: MSE between its prediction from ``z_t`` and the
    standardised statistic of the clean future (the VAE frozen, held here).

    Parameters
    ----------
    vae : nn.Module
        The PreDiff model's frame VAE (frozen: no gradients, eval mode).
    schedule : NoiseSchedule
        The model's noise schedule (``t`` uniform over its steps).
    latent_scale : float
        The model's latent scale (the denoiser's latents).
    units : DataUnits
        Normalised targets -> physical values.
    target : Statistic
        What the network predicts (per frame for a ``frame_mean`` readout).
    scale : StatisticScale
        Physical -> the network's scale.
    frames_out : bool
        The network outputs (N, L, 1) (``readout_seq``) rather than (N, K).
    """

    def __init__(self, vae: nn.Module, schedule: Any, latent_scale: float, units: DataUnits, target: Statistic,
                 scale: StatisticScale, frames_out: bool) -> None:
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.schedule, self.latent_scale = schedule, float(latent_scale)
        self.units, self.target, self.scale, self.frames_out = units, target, scale, frames_out

    def train(self, mode: bool = True) -> AlignmentObjective:  # the VAE stays in eval mode
        return self

    def __call__(self, model: nn.Module, batch: Batch) -> LossTerms:  # type: ignore[override]
        with torch.no_grad():
            y = self.target(self.units.to_physical(batch.y.double()))
            y = self.scale.to_network(y).float()
            mean, logvar = self.vae.encode(batch.y)
            z0 = sample_posterior(mean, logvar, torch.randn_like(mean)) * self.latent_scale
            t = torch.randint(0, self.schedule.num_timesteps, (z0.shape[0],), device=z0.device)
            z_t = self.schedule.add_noise(z0, torch.randn_like(z0), t)
            context = None
            if getattr(_inner(model).config, "context_len", 0):
                context = self.vae.encode(batch.x)[0] * self.latent_scale
        pred = model(z_t, t, context)
        pred = pred.reshape(pred.shape[0], -1)
        err = (pred.float() - y) ** 2
        return LossTerms(err.sum(), float(err.numel()))


def _inner(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # (DistributedDataParallel)


def _network_config(fc: Forecaster, k_net: int, frames_out: bool, context: bool,
                    net_preset: str, overrides: Mapping[str, Any]) -> AlignmentConfig:
    latent = tuple(fc.model.config.unet_config.target_shape)
    t_in = fc.model.config.unet_config.input_shape[0]
    base = preset(net_preset)[2]
    shape = {"input_shape": latent, "context_len": t_in if context else 0}
    if frames_out:
        shape.update(readout_seq=True, out_len=latent[0], out_channels=1)
    else:
        shape.update(readout_seq=False, out_len=None, out_channels=k_net)
    return base.replace(**{**shape, **dict(overrides)})


def train_alignment(
    model: Forecaster,
    ds: xr.Dataset | xr.DataArray,
    statistic: Any = "mean_intensity",
    *,
    epochs: int = 20,
    batch_size: int = 8,
    val: Any = None,
    lr: float = 1e-3,
    weight_decay: float = 1e-5,
    warmup: float = 0.1,
    clip_grad: float | None = 1.0,
    steps_per_epoch: int | None = None,
    patience: int | None = None,
    context: bool = False,
    preset: str = "tiny",
    guide_scale: float = DEFAULT_GUIDE_SCALE,
    conditioning: str = "none",
    name: str | None = None,
    device: Any = "auto",
    seed: int = 0,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | bool | None = None,
    progress: bool | None = None,
    cache: bool | str = "auto",
    **network_overrides: Any,
) -> Forecaster:
    """Train a knowledge-alignment network for ``statistic`` and add it to a PreDiff model.

    Parameters
    ----------
    model : Forecaster
        A PreDiff bundle (its VAE is used frozen; its denoiser is untouched).
    ds : xr.Dataset or xr.DataArray
        Training data with the model's variables and grid (split in time like ``xef.train``).
    statistic : str, dict, Statistic or callable
        A registry statistic (``"mean_intensity"``, ``{"name": "area_above", "threshold": 133}``,
        :func:`~xearthformer.models.prediff.statistics.statistic`) or a callable
        ``f(x) -> (N, K)`` of the physical future (N, T, H, W, C): that one works for this
        session only (a bundle never stores code).
    epochs, batch_size, lr, weight_decay, warmup, clip_grad, steps_per_epoch, patience
        As for :func:`xearthformer.train`.
    val : optional
        A validation period as for :func:`xearthformer.train`, whose best epoch is kept. Default
        None: no validation, the last weights. On short records the validation windows' statistic
        often sits far from the training period's (storms come and go), so the best validation
        epoch is the first, barely trained one (seen on the storms demo: validation loss 2.5 at
        epoch 1 rising to 4-5 while the training loss fell from 1.0 to 0.15).
    context : bool
        Let the network also read the latent context (False: the official, noisy latent only).
    preset : str
        The PreDiff preset whose alignment network is the architecture (``"tiny"``,
        ``"sevirlr"``: the official 8.9M-parameter one).
    guide_scale : float
        Default guidance strength stored with the network (``control={"scale": ...}`` overrides).
    conditioning : {"none", "context"}
        What the stored mu/sigma of ``control={"n": k}`` are conditioned on: nothing
        (climatological over the training windows) or the context's own statistic (mu linear in
        it, sigma of the residuals; see :mod:`xearthformer.models.prediff.control`).
    name : str, optional
        The network's key (default: the statistic's name, made unique).
    device, seed, checkpoint_dir, resume, progress, cache
        As for :func:`xearthformer.train`.
    **network_overrides
        :class:`~xearthformer.models.prediff.config.AlignmentConfig` fields (e.g. ``base_units=32``).

    Returns
    -------
    Forecaster
        A new Forecaster: the same model plus the alignment network and its entry (statistic
        record, readout, scale, mu/sigma over the training period).

    Raises
    ------
    ModelTypeError
        ``model`` is not a PreDiff Forecaster.
    ConfigError
        The statistic is unknown or not differentiable, or does not vary in the training data.

    Examples
    --------
    >>> model = train_alignment(model, ds, {"name": "area_above", "threshold": 133})  # doctest: +SKIP
    """
    from .loop import TrainConfig, fit

    fc = _prediff(model)
    net, spec = fc.model, fc.spec
    stat = _statistic(statistic)
    context = conditioning_context(spec, stat, conditioning)
    ds = ds.to_dataset(name=ds.name or "variable") if isinstance(ds, xr.DataArray) else ds
    split = split_by_time(ds, val, window=spec.context + spec.lead)
    train_src, val_src = window_sources(split, spec, cache)
    units = DataUnits.from_channels(spec.targets)
    _, y, _ = train_src.get(np.arange(min(2, len(train_src))))
    control_values = check_statistic(stat, units.to_physical(torch.from_numpy(np.asarray(y)).double()))
    k = control_values.shape[1]
    per_frame = stat.per_frame() if stat.params.get("over") == "sequence" else None
    if per_frame is not None:
        target, readout, frames_out = per_frame, "frame_mean", True
    elif stat.storable and stat.params.get("over") == "frame":
        target, readout, frames_out = stat, "direct", True
    else:
        target, readout, frames_out = stat, "direct", False
    values, *rest = statistic_values(train_src, units, (stat,) if target is stat else (stat, target),
                                     context=context)
    target_values = values if target is stat else rest.pop(0)
    period = _period_str(split.train_period)
    stats = ControlStats.estimate(values, period=tuple(period) if period else None,
                                  context=rest[0] if context else None)
    # the network learns z-scores of its target, pooled over its outputs (one offset, one scale,
    # so the frame mean of its outputs is the z-score of the sequence statistic)
    sigma = float(target_values.std())
    if not sigma > 0:
        raise ConfigError(f"statistic {stat.label} does not vary over the {len(train_src)} training windows "
                          f"(always {float(target_values.mean()):g}): there is nothing to steer. Fix: another "
                          "statistic or threshold, or more data.")
    scale = StatisticScale.standardising([float(target_values.mean())], [sigma])
    cfg = _network_config(fc, k, frames_out, context, preset, network_overrides)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        from ..models.prediff.alignment import NoisyCuboidTransformerEncoder

        align = NoisyCuboidTransformerEncoder(cfg)
    # a copy of the VAE: the loop moves the objective to the training device, the user's model stays
    objective = AlignmentObjective(copy.deepcopy(net.vae), net.schedule, net.config.latent_scale, units, target, scale,
                                   frames_out)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup=warmup,
                         clip_grad=clip_grad, patience=patience, seed=seed, steps_per_epoch=steps_per_epoch,
                         progress=progress)
    result = fit(align, train_src, val_src, config, objective, device=device, checkpoint_dir=checkpoint_dir,
                 resume=resume)
    trained = result.model.to("cpu").eval()
    key = name or entry_name(stat, (a["name"] for a in net.config.alignments))
    if any(a["name"] == key for a in net.config.alignments):
        raise ConfigError(f"the model already has an alignment network named {key!r}; pass another name=")
    history = {k2: [float(v) for v in vals] for k2, vals in result.history.items()
               if k2 in ("train_loss", "val_loss")}
    training = {"train_period": period, "val_period": _period_str(split.val_period),
                "windows": {"train": len(train_src), "val": 0 if val_src is None else len(val_src)},
                "config": config.to_dict(), "history": history, "best_epoch": result.best_epoch,
                "preset": preset}
    entry = alignment_entry(key, cfg.to_dict(), stat, readout=readout, scale=scale, stats=stats,
                            guide_scale=guide_scale, components=k, source="train_alignment", training=training)
    return _with_alignment(fc, entry, trained.state_dict(), stat)


def _with_alignment(fc: Forecaster, entry: dict[str, Any], weights: Mapping[str, Tensor],
                    stat: Statistic | None = None) -> Forecaster:
    """A new Forecaster whose PreDiff has ``entry`` (and ``weights`` for it) added or replaced."""
    net = fc.model
    others = tuple(a for a in net.config.alignments if a["name"] != entry["name"])
    names = [a["name"] for a in net.config.alignments]
    # a replaced entry keeps its place (the first is the model's default control statistic)
    entries = [entry if a["name"] == entry["name"] else a for a in net.config.alignments]
    if entry["name"] not in names:
        entries.append(entry)
    with torch.random.fork_rng():  # building the modules draws initial weights: not the caller's RNG
        new = type(net)(net.config.replace(alignments=tuple(entries)))
    state = {k: v for k, v in net.state_dict().items() if not k.startswith(f"alignments.{entry['name']}.")}
    state.update({f"alignments.{entry['name']}.{k}": v for k, v in weights.items()})
    new.load_state_dict(state)
    new.eval()
    for other in others:  # session-only statistics stay with the model of this session
        kept = session_statistic(net, other["name"])
        if kept is not None:
            session_statistic(new, other["name"], kept)
    if stat is not None and not stat.storable:
        session_statistic(new, entry["name"], stat)
    return Forecaster(new, fc.spec, metadata=dict(fc.metadata), version=fc.version)


def control_stats(model: Forecaster, ds: xr.Dataset | xr.DataArray, statistic: Any = None, *,
                  period: Any = None, conditioning: str = "none") -> Forecaster:
    """Estimate mu/sigma of a control statistic from ``ds`` and store them with its alignment network.

    For bundles whose alignment entry has no mu/sigma (official weights), so that
    ``control={"n": k}`` works (or to replace them). The estimate is over every window of ``ds``
    (or of ``period``): climatological, or conditioned on the context's own statistic
    (``conditioning="context"``); never on the calendar month.

    Parameters
    ----------
    model : Forecaster
        A PreDiff bundle with an alignment network for ``statistic``.
    ds : xr.Dataset or xr.DataArray
        Data with the model's variables and grid, in physical units.
    statistic : optional
        Which alignment network (default: the model's first).
    period : slice, optional
        Restrict the windows to this time period.
    conditioning : {"none", "context"}
        Climatological mu/sigma, or mu linear in the context's statistic and sigma of the
        residuals (:mod:`xearthformer.models.prediff.control`).

    Returns
    -------
    Forecaster
        A new Forecaster (the weights are shared) whose entry holds the new mu/sigma.

    Examples
    --------
    >>> official = xef.control_stats(official, sevir_2018)              # doctest: +SKIP
    """
    from ..models.prediff.statistics import statistic_from_record
    from .data import XarrayWindows

    fc = _prediff(model)
    spec = fc.spec
    entry, stat = find_entry(fc.model, None if statistic is None else _statistic(statistic))
    context = conditioning_context(spec, stat, conditioning)
    ds = ds.to_dataset(name=ds.name or "variable") if isinstance(ds, xr.DataArray) else ds
    if period is not None:
        ds = ds.sel({layout.find_axes(ds).time: period})
    inits = layout.init_times(ds, spec, targets=True)
    if len(inits) < 2:
        raise DataError(f"control_stats needs at least 2 windows of context {spec.context} + lead {spec.lead} "
                        f"steps; the data hold {len(inits)}. Fix: give a longer period.")
    keep = layout.valid_windows(ds, spec, inits)
    source = XarrayWindows(ds, spec, inits, cache=False, keep=keep)
    units = DataUnits.from_channels(spec.targets)
    values, *rest = statistic_values(source, units, (stat,), context=context)
    times = [layout.format_time(inits[0]), layout.format_time(inits[-1])]
    entry["stats"] = ControlStats.estimate(values, period=(times[0], times[1]),
                                           context=rest[0] if context else None).to_dict()
    if entry.get("statistic") is not None:
        statistic_from_record(entry["statistic"])  # (still rebuildable)
    weights = {k[len(f"alignments.{entry['name']}."):]: v for k, v in fc.model.state_dict().items()
               if k.startswith(f"alignments.{entry['name']}.")}
    return _with_alignment(fc, entry, weights, stat if not stat.storable else None)

