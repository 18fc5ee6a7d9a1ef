"""Knowledge control of a PreDiff model: its alignment entries and the guidance they give.

An **alignment entry** is one JSON dict of :attr:`PreDiffConfig.alignments
<xearthformer.models.prediff.family.PreDiffConfig.alignments>` and one network of
:attr:`PreDiff.alignments <xearthformer.models.prediff.family.PreDiff.alignments>` under the
same ``name``. Besides ``name`` and ``config`` (the network's
:class:`~.config.AlignmentConfig`) it records, as data only:

``statistic``
    The statistic's registry record (:mod:`.statistics`), or None for a Python callable of the
    session that trained the network (then :func:`session_statistic` holds it, and a reloaded
    bundle cannot use that entry).
``readout``
    How the network's output (N, L, C_out) becomes the statistic (N, K): ``"frame_mean"`` (the
    network predicts the statistic of each frame, averaged over the frames: the official
    avg-intensity network) or ``"direct"`` (reshaped to (N, K)).
``scale``
    The :class:`~.statistics.StatisticScale` of the network's outputs, or None: the statistic of
    the model's *normalised* data (the official network: the mean of VIL / 255), converted with
    the bundle's channel normalisation (:meth:`~.statistics.StatisticScale.of_normalised_data`).
``stats``
    The :class:`~.control.ControlStats` (mu/sigma over the training period) for ``{"n": k}``
    targets, or None (official weights: :func:`xearthformer.control_stats` adds them).
``guide_scale``
    The default guidance strength (``KnowledgeControl``'s ``scale``).

An entry with only ``name`` and ``config`` (what ``load_official_prediff(alignment=...)``
writes) is the official avg-intensity network: :func:`complete_entry` fills in the statistic
``mean_intensity`` over the sequence, the ``frame_mean`` readout, the normalised-data scale, no
mu/sigma, and a strength of :func:`official_equivalent_scale` (the official step's pull at
t = 500 in this package's step-independent form).

:func:`prepare_guidance` turns a control request (:mod:`.control`) into a :class:`Guidance`,
the picklable object :meth:`PreDiff.predict <xearthformer.models.prediff.family.PreDiff.predict>`
takes as ``guidance=``; inside the sampler it wraps the denoiser with
:class:`~xearthformer.diffusion.KnowledgeControl`, so every sampler is guided the same way.

>>> guidance = prepare_guidance(forecaster, {"n": 2})                   # doctest: +SKIP
>>> y = forecaster.model.predict(x, keys=keys, guidance=guidance)       # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
import warnings
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ...diffusion import OFFICIAL_GUIDE_SCALE, KnowledgeControl
from ...diffusion.sampler import Sampler
from ...errors import ConfigError
from .control import ControlRequest, ControlStats, context_value, parse_control, resolve_target
from .statistics import (DataUnits, Statistic, StatisticScale, context_channels, context_targets, statistic,
                         statistic_from_record)

__all__ = ["DEFAULT_GUIDE_SCALE", "READOUTS", "Guidance", "alignment_entry", "complete_entry", "control_attrs",
           "control_options", "entry_name", "official_equivalent_scale",
           "find_entry", "prepare_guidance", "read_out", "session_statistic"]

#: how an alignment network's output becomes the statistic
READOUTS = ("frame_mean", "direct")
#: default guidance strength of networks trained by ``train_alignment`` (standardised outputs; the
#: strength in units of the statistic's training sigma that benchmarks/bench_control.py measured)
DEFAULT_GUIDE_SCALE = 10.0
#: default strength of ``"via": "decoded"`` guidance (statistic standardised by its training sigma):
#: on the trained storms demo model (benchmarks/bench_control.py, DDIM 10 steps, context-conditioned
#: mu/sigma) 100 reached 50-75 % of |n| = 2 targets within 25 %, 300 every one, at n = 0 CRPS -2.4 %
DEFAULT_DECODED_SCALE = 300.0
TRAIN_HINT = ("train one with xef.train_alignment(model, ds, statistic=...), or guide by the decoded "
              "statistic itself with control={..., 'via': 'decoded'}")

# Python callables of this session, per network: entry name -> Statistic (never saved)
_SESSION: weakref.WeakKeyDictionary[nn.Module, dict[str, Statistic]] = weakref.WeakKeyDictionary()


def alignment_entry(name: str, config: Mapping[str, Any], stat: Statistic, *, readout: str,
                    scale: StatisticScale, stats: ControlStats | None = None,
                    guide_scale: float = DEFAULT_GUIDE_SCALE, components: int, source: str,
                    training: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON dict of one alignment entry (see the module docstring)."""
    if readout not in READOUTS:
        raise ConfigError(f"readout must be one of {READOUTS}, got {readout!r}")
    if isinstance(guide_scale, bool) or not isinstance(guide_scale, (int, float)) or not guide_scale >= 0:
        raise ConfigError(f"guide_scale must be a number >= 0, got {guide_scale!r}")
    return {"name": name, "config": dict(config), "statistic": stat.to_record() if stat.storable else None,
            "statistic_label": stat.label, "readout": readout, "components": int(components),
            "scale": scale.to_dict(), "stats": None if stats is None else stats.to_dict(),
            "guide_scale": float(guide_scale), "source": source, "training": dict(training or {})}


def official_equivalent_scale(schedule: Any, t: int | None = None, guide_scale: float = OFFICIAL_GUIDE_SCALE) -> float:
    """The default-mode strength that pulls like the official 1000-step DDPM step at time ``t``.

    The official step moves the mean by sqrt(beta~_t) guide_scale grad U; the default mode by
    (beta_t / sqrt(1 - beta_t)) scale grad U, so they agree at ``t`` for
    scale = guide_scale sqrt(beta~_t (1 - beta_t)) / beta_t (657 at t = 500 for the official
    linear schedule; see :mod:`xearthformer.diffusion.guidance`).

    >>> from xearthformer.diffusion import NoiseSchedule
    >>> round(official_equivalent_scale(NoiseSchedule("linear")))
    657
    """
    t = schedule.num_timesteps // 2 if t is None else int(t)
    betas = schedule.betas.double()
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    posterior = betas[t] * (1 - alphas_cumprod[t - 1]) / (1 - alphas_cumprod[t])
    return float(guide_scale * torch.sqrt(posterior * (1 - betas[t])) / betas[t])


def complete_entry(entry: Mapping[str, Any], schedule: Any) -> dict[str, Any]:
    """An entry with the official avg-intensity network's fields filled in where missing."""
    full = dict(entry)
    if "statistic" not in full:  # an official alignment network (load_official_prediff)
        stat = statistic("mean_intensity")
        full.update(statistic=stat.to_record(), statistic_label=stat.label, readout="frame_mean", components=1,
                    scale=None, stats=None, guide_scale=official_equivalent_scale(schedule))
    full.setdefault("readout", "frame_mean")
    full.setdefault("scale", None)
    full.setdefault("stats", None)
    full.setdefault("components", 1)
    full.setdefault("guide_scale", DEFAULT_GUIDE_SCALE)
    return full


def entry_name(stat: Statistic, taken: Any = ()) -> str:
    """A ModuleDict key for a network of ``stat``: its name (``custom`` for callables), made unique."""
    base = re.sub(r"\W", "_", stat.name or "custom")
    name, i = base, 1
    while name in set(taken):
        name, i = f"{base}_{i}", i + 1
    return name


def session_statistic(net: nn.Module, name: str, stat: Statistic | None = None) -> Statistic | None:
    """The session-only statistic of entry ``name`` of ``net`` (set it by passing ``stat``)."""
    if stat is not None:
        _SESSION.setdefault(net, {})[name] = stat
    return _SESSION.get(net, {}).get(name)


def entry_statistic(net: nn.Module, entry: Mapping[str, Any]) -> Statistic | None:
    """The statistic of an entry: rebuilt from its record, or the session's callable (None if gone)."""
    if entry.get("statistic") is not None:
        return statistic_from_record(entry["statistic"])
    return session_statistic(net, entry["name"])


def find_entry(net: nn.Module, stat: Statistic | None) -> tuple[dict[str, Any], Statistic]:
    """The alignment entry of ``stat`` (None: the model's first, its default control statistic).

    Raises
    ------
    ConfigError
        The model has no alignment network (for that statistic), naming the fix.
    """
    entries = list(getattr(net.config, "alignments", ()))
    if not entries:
        raise ConfigError("this PreDiff model has no alignment network, so knowledge control has no statistic to "
                          f"follow. Fix: {TRAIN_HINT} (e.g. statistic='mean_intensity'), or load the official "
                          "one with load_official_prediff(..., alignment=path).")
    found = []
    for entry in (complete_entry(e, net.schedule) for e in entries):
        own = entry_statistic(net, entry)
        if own is None:
            if stat is None and entry["name"] == entries[0]["name"]:
                raise ConfigError(f"alignment {entry['name']!r} was trained for a Python callable "
                                  f"({entry.get('statistic_label')}) of another session, which bundles never "
                                  f"store. Fix: {TRAIN_HINT} with a registry statistic.")
            continue
        if stat is None or own.same_as(stat):
            return dict(entry), own
        found.append(own.label)
    raise ConfigError(f"this model has no alignment network for the statistic {stat.label if stat else '?'} "
                      f"(it has: {', '.join(found) or 'none usable'}). Fix: {TRAIN_HINT}.")


def read_out(entry: Mapping[str, Any], output: Tensor) -> Tensor:
    """The network's output (N, L, C_out) or (N, C_out) as the statistic (N, K), network scale."""
    if entry["readout"] == "frame_mean":
        return output.reshape(output.shape[0], output.shape[1], -1).mean(dim=1)
    return output.reshape(output.shape[0], -1)


@dataclass(frozen=True)
class Guidance:
    """A resolved control, passed to ``PreDiff.predict(..., guidance=)``.

    Attributes
    ----------
    entry : dict
        The alignment entry.
    request : ControlRequest
    statistic : Statistic
    units : DataUnits
        The target channels' units (physical context for callable targets).
    bounds : tuple of float
        The statistic's attainable range (targets are clipped to it).
    strength : float
        Guidance strength (the request's ``scale``, else the entry's ``guide_scale``).
    parity : bool
        The official DDPM step (batch-wide norm; exempt from the per-member seed guarantee).
    context_channels : tuple of int or None
        Where the target channels sit among the context's channels (None: a target channel is
        not an input, so targets computed from the context are not possible).
    """

    entry: Mapping[str, Any]
    request: ControlRequest
    statistic: Statistic
    units: DataUnits
    bounds: tuple[float, float]
    strength: float
    parity: bool = False
    context_channels: tuple[int, ...] | None = None

    @property
    def components(self) -> int:
        """K."""
        return int(self.entry["components"])

    @property
    def stats(self) -> ControlStats | None:
        """mu/sigma of the entry, if it has them."""
        s = self.entry.get("stats")
        return None if s is None else ControlStats.from_dict(s)

    def network_scale(self) -> StatisticScale:
        """The network's scale: stored, or that of the statistic of the normalised data. For
        ``via="decoded"``: the statistic standardised by its training mu/sigma (unscaled without)."""
        if self.request.via == "decoded":
            stats = self.stats
            if stats is None or not all(v > 0 for v in stats.sigma):
                return StatisticScale()
            return StatisticScale.standardising(stats.mu, stats.sigma)
        if self.entry.get("scale") is not None:
            return StatisticScale.from_dict(self.entry["scale"])
        if len(set(zip(self.units.offset, self.units.scale))) != 1:
            raise ConfigError(f"alignment {self.entry['name']!r} predicts the statistic of normalised data, but the "
                              "target channels are normalised differently; its scale is ambiguous. Fix: "
                              "xef.train_alignment, which stores its own scale.")
        return StatisticScale.of_normalised_data(self.statistic, self.units.offset[0], self.units.scale[0])

    @property
    def conditioned_mu(self) -> bool:
        """Whether the targets are ``n`` sigmas from a mu conditioned on the context."""
        stats = self.stats
        return self.request.n is not None and stats is not None and stats.needs_context

    @property
    def uses_context(self) -> bool:
        """Whether the targets depend on the context (a callable, or context-conditioned mu/sigma)."""
        return self.request.target_of is not None or self.conditioned_mu

    def physical_context(self, x: Tensor) -> Tensor:
        """The target channels of normalised contexts ``x`` (N, T_in, H, W, C_in), physical, float64."""
        if self.context_channels is None:
            raise ConfigError("this control computes its target from the context, but the model's target channels "
                              "are not all among its inputs. Fix: an absolute {'value': v} target, or mu/sigma "
                              "estimated with conditioning='none' (xef.control_stats).")
        return context_targets(x, self.context_channels, self.units)

    def targets(self, x: Tensor) -> Tensor:
        """The (N, K) physical targets (float64) for normalised contexts ``x`` (N, T_in, H, W, C)."""
        context = context_stat = None
        if self.uses_context:
            context = self.physical_context(x)
            if self.conditioned_mu:
                context_stat = context_value(self.statistic, context)
        return resolve_target(self.request, samples=x.shape[0], components=self.components, stats=self.stats,
                              bounds=self.bounds, context=context, context_stat=context_stat,
                              label=self.statistic.label, units=self.units.units)

    def wrap(self, net: nn.Module, denoise: Callable[[Tensor, Tensor], Tensor], sampler: Sampler, x: Tensor,
             cond: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        """``denoise`` guided toward the targets of the contexts ``x``; ``cond`` (B, T_in, h, w, c)
        are the latent contexts of the B chains (``x``'s rows repeated per member)."""
        with warnings.catch_warnings():
            if not self.uses_context:  # the same for every batch: warned in prepare_guidance
                warnings.simplefilter("ignore")
            target = self.targets(x)
        repeat = cond.shape[0] // x.shape[0]
        target = target.repeat_interleave(repeat, dim=0)
        target = self.network_scale().to_network(target).to(device=cond.device, dtype=cond.dtype)
        if self.request.via == "decoded":
            return self._wrap_decoded(net, denoise, sampler, target)
        align = net.alignments[self.entry["name"]]  # type: ignore[index]
        uses_context = align.config.context_len > 0
        entry = self.entry

        def predicted(z_t: Tensor, t: Tensor, context: Tensor) -> Tensor:
            return read_out(entry, align(z_t, t, context if uses_context else None))

        control = KnowledgeControl(predicted, target, self.strength, parity=self.parity,
                                   conditioning={"context": cond}, norm=self.request.norm)
        return control.wrap(denoise, sampler)

    def _wrap_decoded(self, net: nn.Module, denoise: Callable[[Tensor, Tensor], Tensor], sampler: Sampler,
                      target: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        """Guidance by the statistic of the decoded x0 prediction (no alignment network).

        At each call the denoiser's output is kept (detached); the statistic is that of the
        decoded x0 prediction decode((z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)). Its gradient
        in z_t goes through the VAE decoder only (one decoder backward pass per step, none
        through the denoiser), with d x0 / d z_t taken as sqrt(abar_t) I: Tweedie's
        E[x0 | z_t] under the latents' unit-variance prior (``latent_scale`` standardises them).
        Holding eps fixed instead would give 1 / sqrt(abar_t), too strong by 1 / abar_t
        (1 363x at t = 999 of the linear schedule, 3x at t = 500): it ignores that the
        denoiser's eps moves with z_t and cancels most of it at high noise.
        """
        schedule, prediction, kept = sampler.schedule, sampler.prediction, {}
        stat, units, scale = self.statistic, self.units, self.network_scale()

        def remembering(z_t: Tensor, t: Tensor) -> Tensor:
            out = denoise(z_t, t)
            kept["eps"] = schedule.convert(out, z_t, t, source=prediction, target="eps").detach()
            return out

        def decoded(z_t: Tensor, t: Tensor) -> Tensor:
            eps = kept["eps"].clone()  # (a normal tensor inside the gradient's autograd region)
            abar = schedule.gather(schedule.alphas_cumprod, t, z_t)
            x0 = (z_t - (1 - abar).sqrt() * eps) / abar.sqrt()
            x0 = x0.detach() + abar.sqrt() * (z_t - z_t.detach())  # its value, with Tweedie's Jacobian
            return scale.to_network(stat(units.to_physical(net.decode_latents(x0))))

        control = KnowledgeControl(decoded, target, self.strength, parity=self.parity, norm=self.request.norm)
        return control.wrap(remembering, sampler)


def prepare_guidance(forecaster: Any, control: Any) -> Guidance:
    """Check a control request against a PreDiff Forecaster and resolve what does not depend on data.

    Warns (:class:`~xearthformer.errors.XEarthformerWarning`) when an ``n``/``value`` target lies
    outside the statistic's attainable range (it is then clipped).

    Raises
    ------
    ConfigError
        A malformed request, no alignment network for its statistic (naming
        ``xef.train_alignment``), ``n`` without stored mu/sigma (naming ``xef.control_stats``).
    ShapeError
        A target with the wrong number of components.
    """
    request = parse_control(control)
    net, spec = forecaster.model, forecaster.spec
    units = DataUnits.from_channels(spec.targets)
    if request.via == "decoded":
        entry, stat = _decoded_entry(net, request, spec, units)
        strength = DEFAULT_DECODED_SCALE if request.scale is None else request.scale
    else:
        entry, stat = find_entry(net, request.statistic)
        strength = entry.get("guide_scale", DEFAULT_GUIDE_SCALE) if request.scale is None else request.scale
    channels = context_channels(spec)
    guidance = Guidance(entry, request, stat, units, stat.bounds(units.range), float(strength),
                        request.parity, channels)
    if guidance.uses_context and channels is None:
        guidance.physical_context(torch.zeros(1))  # raises, naming the fix
    if not guidance.uses_context:  # check (and warn about clipping) once, before any sampling
        guidance.targets(torch.zeros(1, *spec.input_shape))
    return guidance


def _decoded_entry(net: nn.Module, request: ControlRequest, spec: Any, units: DataUnits
                   ) -> tuple[dict[str, Any], Statistic]:
    """For ``via="decoded"``: the statistic (the request's, else the default network's) and an
    entry holding its mu/sigma when the model has an alignment network for it."""
    stat = request.statistic
    try:
        entry, own = find_entry(net, stat)
        return {**entry, "name": None}, own
    except ConfigError:
        if stat is None:
            raise ConfigError("control via='decoded' needs a statistic: the model has no alignment network "
                              "whose statistic is the default. Fix: control={'statistic': 'mean_intensity', "
                              "'value': v, 'via': 'decoded'}.") from None
    from .statistics import check_statistic

    low, high = units.range or (0.0, 1.0)
    # an example spread over the data's range, so that a threshold statistic has gradients
    frames = low + (high - low) * torch.rand(2, *spec.target_shape, generator=torch.Generator().manual_seed(0))
    k = int(check_statistic(stat, frames).shape[1])
    return {"name": None, "statistic_label": stat.label, "components": k, "stats": None}, stat


def control_attrs(guidance: Guidance) -> dict[str, Any]:
    """Attributes recording a control on the output (netCDF-safe: text and numbers)."""
    attrs: dict[str, Any] = {
        "control": guidance.request.to_attrs(),
        "control_label": guidance.request.label,
        "control_statistic": guidance.statistic.label,
        "control_alignment": str(guidance.entry["name"]) if guidance.request.via == "alignment" else "none",
        "control_via": guidance.request.via,
        "control_guide_scale": guidance.strength,
        "control_parity": int(guidance.parity),
        "control_norm": guidance.request.norm,
    }
    stats = guidance.stats
    if stats is not None:
        attrs.update(control_mu=list(stats.mu), control_sigma=list(stats.sigma),
                     control_stats_conditioning=stats.conditioning)
        if stats.needs_context:
            attrs.update(control_mu_slope=list(stats.slope or ()), control_context_mean=stats.context_mean)
    if not guidance.uses_context:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            target = guidance.targets(torch.zeros(1, 1, 1, 1, len(guidance.units.offset)))
        attrs["control_target"] = [float(v) for v in target[0]]
    if guidance.units.units:
        attrs["control_units"] = guidance.units.units
    return {k: v for k, v in attrs.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}


def control_options(forecaster: Any, control: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The family's knowledge-control hook (registry ``control``): ``({"guidance": ...}, attrs)``."""
    guidance = prepare_guidance(forecaster, control)
    return {"guidance": guidance}, control_attrs(guidance)
