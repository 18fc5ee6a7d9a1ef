"""Knowledge-control targets that need no future data.

A control request says which value of a statistic of the future the ensemble should aim at:

``{"n": k}``
    ``mu + k * sigma`` of the model's control statistic, per component (K > 1: each its own
    mu/sigma), with mu/sigma over the training period (:class:`ControlStats`, stored in the
    bundle; :func:`xearthformer.control_stats` estimates them for bundles without). Their
    ``conditioning`` says what they are conditioned on:

    * ``"none"`` (climatological): one mu/sigma per component for the whole training period, so
      ``n = 2`` asks for what is a 2-sigma event in the training climate whatever the current
      weather, and ``n = 0`` pulls every forecast to the climatological mean.
    * ``"context"``: mu is a linear function of the **context's own statistic** c (the same
      statistic computed on the context frames of the target channels, averaged over its
      components: :func:`context_value`), mu(c) = mu + slope (c - c_mean), fitted by least
      squares over the training windows, and sigma is the standard deviation of the residuals.
      ``n = 0`` then asks for the future the training data usually saw after such a past, and
      ``n = 2`` for a 2-sigma surprise given it. Not conditioned on the calendar month.
``{"value": v}``
    An absolute target in physical units (a number, or one per component).
``{"statistic": "area_above", "threshold": 133, "n": 3}``
    Another statistic (registry name and parameters) that the bundle has an alignment network for.
``callable``
    ``f(context) -> (N, K)`` from the physical context frames (N, T_in, H, W, C): a target per
    sample computed from the past, e.g. twice the observed mean (the official demonstration
    target, 2x the *true future* mean, needs the future).

Any dict may add ``"scale"``, the guidance strength, ``"norm"``, the error norm the gradient
is taken of (``"l2"`` per sample, the default, or ``"squared"``: see
:class:`~xearthformer.diffusion.KnowledgeControl`), ``"parity": True``, the official DDPM
step (one error norm over the whole batch: exempt from the per-member seed guarantee), and
``"via": "decoded"``: follow the gradient of the statistic itself, computed on the decoded
prediction of the clean future at each step, instead of the alignment network's. Targets
outside the statistic's attainable range (a mean intensity cannot be negative, but with skewed
data mu - 2 sigma may be) are clipped to it, with a warning.

The functions here are pure: they parse a request (:func:`parse_control`) and turn it into an
(N, K) target (:func:`resolve_target`), given the statistic, its stats and its range.

>>> import torch
>>> stats = ControlStats(mu=(1.0,), sigma=(0.5,), count=100)
>>> request = parse_control({"n": 2})
>>> resolve_target(request, stats=stats, samples=3, components=1)
tensor([[2.],
        [2.],
        [2.]], dtype=torch.float64)
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...diffusion.guidance import NORMS
from ...errors import CheckpointError, ConfigError, ShapeError, XEarthformerWarning
from .statistics import Statistic, as_statistic

__all__ = ["CONDITIONING", "CONDITIONINGS", "ControlRequest", "ControlStats", "context_value", "parse_control",
           "resolve_target"]

#: what mu/sigma are conditioned on: nothing (climatological over the training period, the
#: default) or the context's own statistic (a linear fit over the training windows)
CONDITIONINGS = ("none", "context")
CONDITIONING = CONDITIONINGS[0]
#: keys a control dict may hold besides a statistic's own parameters
CONTROL_KEYS = ("n", "value", "statistic", "scale", "norm", "parity", "via")
#: what the gradient follows: the alignment network (PreDiff) or the statistic of the decoded x0
VIA = ("alignment", "decoded")


@dataclass(frozen=True)
class ControlStats:
    """mu and sigma of a statistic over the training period, physical units, per component.

    Attributes
    ----------
    mu, sigma : tuple of float
        One per component K. ``conditioning="none"``: the mean and the population standard
        deviation over the windows. ``"context"``: mu is the mean over the windows (the fit's
        value at ``context_mean``), sigma the standard deviation of the fit's residuals.
    count : int
        Number of training windows they were estimated from.
    period : tuple of str or None
        First and last init time of those windows (ISO), where known.
    conditioning : str
        ``"none"`` (climatological) or ``"context"`` (linear in the context's own statistic).
    slope : tuple of float or None
        ``"context"`` only: d mu / d c per component.
    context_mean : float or None
        ``"context"`` only: the mean of the context statistic c over the windows.

    Examples
    --------
    >>> stats = ControlStats.estimate([[1.0], [3.0], [5.0]], context=[0.0, 1.0, 2.0])
    >>> stats.conditioning, stats.slope, stats.sigma
    ('context', (2.0,), (0.0,))
    >>> stats.mean_given(torch.tensor([3.0]))
    tensor([[7.]], dtype=torch.float64)
    """

    mu: tuple[float, ...]
    sigma: tuple[float, ...]
    count: int
    period: tuple[str, str] | None = None
    conditioning: str = CONDITIONING
    slope: tuple[float, ...] | None = None
    context_mean: float | None = None

    def __post_init__(self) -> None:
        mu, sigma = tuple(float(v) for v in self.mu), tuple(float(v) for v in self.sigma)
        if not mu or len(mu) != len(sigma) or not all(math.isfinite(v) for v in mu + sigma) \
                or any(v < 0 for v in sigma):
            raise ConfigError(f"ControlStats needs as many finite mu as sigma >= 0 values, got mu={self.mu!r}, "
                              f"sigma={self.sigma!r}")
        if self.conditioning not in CONDITIONINGS:
            raise ConfigError(f"ControlStats conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}")
        if self.conditioning == "context":
            slope = tuple(float(v) for v in (self.slope or ()))
            if len(slope) != len(mu) or self.context_mean is None or not all(
                    math.isfinite(v) for v in (*slope, float(self.context_mean))):
                raise ConfigError(f"context-conditioned ControlStats need a finite slope per component and a "
                                  f"context_mean, got slope={self.slope!r}, context_mean={self.context_mean!r}")
            object.__setattr__(self, "slope", slope)
            object.__setattr__(self, "context_mean", float(self.context_mean))
        elif self.slope is not None or self.context_mean is not None:
            raise ConfigError("slope/context_mean belong to conditioning='context' ControlStats only")
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "sigma", sigma)
        if self.period is not None:
            object.__setattr__(self, "period", tuple(str(p) for p in self.period))

    @property
    def needs_context(self) -> bool:
        """Whether mu depends on the context (``conditioning == "context"``)."""
        return self.conditioning == "context"

    @classmethod
    def estimate(cls, values: Any, period: tuple[str, str] | None = None, context: Any = None) -> ControlStats:
        """From the statistic of each training window, ``values`` (S, K) in physical units.

        With ``context`` (S,), the context statistic of each window (:func:`context_value`),
        mu is fitted as a linear function of it (``conditioning="context"``).

        >>> ControlStats.estimate([[1.0], [3.0]]).sigma
        (1.0,)
        """
        v = _float64(values)
        if v.ndim != 2 or v.shape[0] < 2:
            raise ShapeError(f"mu/sigma need the statistic of at least 2 windows as (S, K), got shape {v.shape}. "
                             "Fix: give control_stats a longer period of data.")
        c = None if context is None else _float64(context).reshape(-1)
        if c is not None and c.shape[0] != v.shape[0]:
            raise ShapeError(f"context values ({c.shape[0]}) and statistic values ({v.shape[0]}) must be one per window")
        finite = np.isfinite(v).all(axis=1) & (np.ones(len(v), bool) if c is None else np.isfinite(c))
        if finite.sum() < (2 if c is None else 3):
            raise ShapeError("too few windows have a finite statistic: mu/sigma cannot be estimated")
        v = v[finite]
        if c is None:
            return cls(tuple(v.mean(axis=0)), tuple(v.std(axis=0)), int(v.shape[0]), period)
        c = c[finite]
        c_mean, spread = float(c.mean()), float(((c - c.mean()) ** 2).mean())
        if not spread > 0:
            raise ShapeError("the context statistic is the same in every training window: mu cannot be conditioned "
                             "on it. Fix: conditioning='none'.")
        slope = ((c - c_mean)[:, None] * (v - v.mean(axis=0))).mean(axis=0) / spread
        residual = v - v.mean(axis=0) - slope * (c - c_mean)[:, None]
        # ddof 2: the residuals of a fit with two parameters per component
        sigma = np.sqrt((residual ** 2).sum(axis=0) / max(v.shape[0] - 2, 1))
        return cls(tuple(v.mean(axis=0)), tuple(sigma), int(v.shape[0]), period, "context", tuple(slope), c_mean)

    def mean_given(self, context: Tensor | None) -> Tensor:
        """mu per sample (N, K), float64: the fit at the context statistic ``context`` (N,); the
        climatological mu (1, K) whatever ``context`` (``conditioning="none"``)."""
        mu = torch.tensor(self.mu, dtype=torch.float64)
        if not self.needs_context:
            return mu.reshape(1, -1)
        if context is None:
            raise ConfigError("these mu/sigma are conditioned on the context's statistic, and this call has no "
                              "context")
        c = torch.as_tensor(context, dtype=torch.float64).reshape(-1, 1)
        return mu + torch.tensor(self.slope, dtype=torch.float64) * (c - self.context_mean)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (bundles)."""
        d = {"mu": list(self.mu), "sigma": list(self.sigma), "count": self.count,
             "period": list(self.period) if self.period else None, "conditioning": self.conditioning}
        if self.needs_context:
            d.update(slope=list(self.slope or ()), context_mean=self.context_mean)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ControlStats:
        """Inverse of :meth:`to_dict`."""
        try:
            period = d.get("period")
            slope = d.get("slope")
            return cls(tuple(d["mu"]), tuple(d["sigma"]), int(d["count"]), tuple(period) if period else None,
                       str(d.get("conditioning", CONDITIONING)), None if slope is None else tuple(slope),
                       d.get("context_mean"))
        except (KeyError, TypeError, ValueError, ConfigError) as err:
            raise CheckpointError(f"a control-statistics record needs mu, sigma and count (and, conditioned on "
                                  f"the context, slope and context_mean), got {d!r}") from err


def context_value(stat: Statistic, context: Tensor) -> Tensor:
    """The predictor of context-conditioned mu: ``stat`` of the physical context frames
    (N, T_in, H, W, C_target), averaged over its components, (N,) float64.

    >>> from xearthformer.models.prediff.statistics import statistic
    >>> context_value(statistic("mean_intensity"), torch.full((2, 3, 4, 4, 1), 5.0))
    tensor([5., 5.], dtype=torch.float64)
    """
    try:
        values = stat(context.to(torch.float64))
    except Exception as err:  # a user statistic written for the target's frame count only
        raise ConfigError(f"{stat.label} could not be computed on the context frames {tuple(context.shape)} "
                          f"({type(err).__name__}: {err}), which conditioning='context' needs. Fix: "
                          "conditioning='none', or a statistic that accepts any number of frames.") from err
    return values.reshape(values.shape[0], -1).mean(dim=1).detach()


def _float64(values: Any) -> np.ndarray:
    return np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64)


@dataclass(frozen=True)
class ControlRequest:
    """A parsed control (not yet tied to data). Exactly one of ``n``, ``value``, ``target_of``.

    Attributes
    ----------
    statistic : Statistic or None
        The statistic asked for; None: the model's default control statistic.
    n, value : tuple of float or None
        Sigmas from the training mu, or an absolute physical value (one, or one per component).
    target_of : callable or None
        ``f(context) -> (N, K)`` physical targets from the physical context.
    scale : float or None
        Guidance strength; None: the model's default.
    parity : bool
        The official DDPM step (one error norm over the whole batch; DDPM only, and exempt from
        the per-member seed guarantee).
    via : str
        ``"alignment"`` (PreDiff's alignment network) or ``"decoded"`` (the statistic itself, of
        the decoded predicted clean future; no alignment network needed).
    norm : str
        The error norm: ``"l2"`` (per sample) or ``"squared"``.
    """

    statistic: Statistic | None = None
    n: tuple[float, ...] | None = None
    value: tuple[float, ...] | None = None
    target_of: Callable[[Tensor], Any] | None = None
    scale: float | None = None
    parity: bool = False
    via: str = "alignment"
    norm: str = "l2"

    @property
    def label(self) -> str:
        """Short readable form for a ``control`` coordinate, e.g. ``n=+2`` or ``area_above(...) value=0.1``."""
        if self.n is not None:
            what = "n=" + ",".join(f"{v:+g}" for v in self.n)
        elif self.value is not None:
            what = "value=" + ",".join(f"{v:g}" for v in self.value)
        else:
            what = f"target={getattr(self.target_of, '__name__', 'callable')}"
        parts = ([self.statistic.label] if self.statistic is not None else []) + [what]
        if self.scale is not None:
            parts.append(f"scale={self.scale:g}")
        if self.parity:
            parts.append("parity")
        if self.via != "alignment":
            parts.append(f"via={self.via}")
        if self.norm != "l2":
            parts.append(f"norm={self.norm}")
        return " ".join(parts)

    def to_attrs(self) -> str:
        """JSON text recording the request (for the output's attributes)."""
        d: dict[str, Any] = {}
        if self.statistic is not None:
            d["statistic"] = self.statistic.to_record() if self.statistic.storable else self.statistic.label
        for key in ("n", "value"):
            v = getattr(self, key)
            if v is not None:
                d[key] = v[0] if len(v) == 1 else list(v)
        if self.target_of is not None:
            d["target"] = f"callable {getattr(self.target_of, '__name__', '')}".strip()
        if self.scale is not None:
            d["scale"] = self.scale
        if self.parity:
            d["parity"] = True
        if self.via != "alignment":
            d["via"] = self.via
        if self.norm != "l2":
            d["norm"] = self.norm
        return json.dumps(d, sort_keys=True)


def parse_control(control: Mapping[str, Any] | Callable[[Tensor], Any] | ControlRequest) -> ControlRequest:
    """Check a control request and parse it (see the module docstring for the forms).

    Raises
    ------
    ConfigError
        Not a dict or callable; unknown keys; neither or both of ``n`` and ``value``; numbers
        that are not finite; an unknown statistic.

    Examples
    --------
    >>> parse_control({"statistic": "area_above", "threshold": 133, "n": 3}).label
    "area_above(threshold=133.0, width=1.0, over='sequence') n=+3"
    """
    if isinstance(control, ControlRequest):
        return control
    if not isinstance(control, Mapping):
        if callable(control):
            return ControlRequest(target_of=control)
        raise ConfigError(f"control must be a dict such as {{'n': 2}} or {{'value': 0.3}}, a callable "
                          f"f(context) -> (N, K), or a list of those; got {type(control).__name__}")
    d = dict(control)
    stat_name = d.pop("statistic", None)
    n, value, scale = d.pop("n", None), d.pop("value", None), d.pop("scale", None)
    parity, via, norm = d.pop("parity", False), d.pop("via", "alignment"), d.pop("norm", "l2")
    if stat_name is None and d:
        raise ConfigError(f"unknown control key(s) {sorted(d)}; valid: {', '.join(CONTROL_KEYS)} (statistic "
                          "parameters such as threshold go with 'statistic')")
    stat = None
    if stat_name is not None:
        stat = as_statistic(stat_name, **d) if isinstance(stat_name, str) else as_statistic(stat_name)
        if d and not isinstance(stat_name, str):
            raise ConfigError(f"statistic parameters {sorted(d)} need a registry name for 'statistic'")
    if (n is None) == (value is None):
        raise ConfigError(f"a control dict needs exactly one of 'n' (sigmas from the training mean, e.g. "
                          f"{{'n': 2}}) and 'value' (physical units); got {control!r}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale) or scale < 0):
        raise ConfigError(f"control 'scale' (guidance strength) must be a number >= 0, got {scale!r}")
    if not isinstance(parity, bool):
        raise ConfigError(f"control 'parity' must be True or False, got {parity!r}")
    if via not in VIA:
        raise ConfigError(f"control 'via' must be one of {VIA}, got {via!r}")
    if norm not in NORMS:
        raise ConfigError(f"control 'norm' must be one of {NORMS}, got {norm!r}")
    if parity and norm != "l2":
        raise ConfigError("control 'parity' is the official step, whose error norm is 'l2'. Fix: drop 'norm' "
                          "or 'parity'.")
    return ControlRequest(stat, _numbers(n, "n"), _numbers(value, "value"), None,
                          None if scale is None else float(scale), parity, via, norm)


def _numbers(value: Any, key: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    values = value.tolist() if isinstance(value, (np.ndarray, Tensor)) else value
    values = values if isinstance(values, (list, tuple)) else [values]
    ok = len(values) > 0 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                 for v in values)
    if not ok:
        raise ConfigError(f"control {key!r} must be a finite number or a list of them (one per component), "
                          f"got {value!r}")
    return tuple(float(v) for v in values)


def resolve_target(request: ControlRequest, *, samples: int, components: int,
                   stats: ControlStats | None = None, bounds: tuple[float, float] = (-math.inf, math.inf),
                   context: Tensor | None = None, context_stat: Tensor | None = None,
                   label: str = "the control statistic", units: str | None = None) -> Tensor:
    """The (N, K) target in physical units (float64), clipped to ``bounds`` with a warning.

    Parameters
    ----------
    request
        From :func:`parse_control`.
    samples, components
        N and K.
    stats
        mu/sigma of the statistic (needed for ``n``).
    bounds
        The statistic's attainable range (:meth:`~.statistics.Statistic.bounds`).
    context
        Physical context (N, T_in, H, W, C), for callable targets.
    context_stat
        The context statistic (N,) (:func:`context_value`), for ``n`` with context-conditioned stats.
    label, units
        For messages.

    Raises
    ------
    ConfigError
        ``n`` without stats (the fix: :func:`xearthformer.control_stats` or a ``value``).
    ShapeError
        A target with neither 1 nor K components, or a callable's output not (N, K).
    """
    if request.n is not None:
        if stats is None:
            raise ConfigError(f"control {{'n': ...}} needs mu/sigma of {label} over the training period, and this "
                              "model has none (e.g. official weights). Fix: estimate them from your data with "
                              "model = xef.control_stats(model, ds), or give an absolute target {'value': v}.")
        _check_components(stats.mu, components, f"the stored mu/sigma of {label}")
        n = _per_component(request.n, components, "n")
        mu = stats.mean_given(context_stat)
        target = (mu + n * torch.tensor(stats.sigma, dtype=torch.float64)).expand(samples, components)
        how = "mu(context) + n sigma" if stats.needs_context else "mu + n sigma"
    elif request.value is not None:
        target = _per_component(request.value, components, "value").expand(samples, components)
        how = "the value"
    else:
        target = _called(request.target_of, context, samples, components)  # type: ignore[arg-type]
        how = "the callable's target"
    return _clip(target.clone(), bounds, how, label, units)


def _per_component(values: tuple[float, ...], k: int, key: str) -> Tensor:
    _check_components(values, k, f"control {key!r}")
    return torch.tensor(values, dtype=torch.float64).expand(k) if len(values) == 1 else torch.tensor(
        values, dtype=torch.float64)


def _check_components(values: Sequence[float], k: int, what: str) -> None:
    if len(values) not in (1, k):
        raise ShapeError(f"{what} has {len(values)} components but the statistic has K = {k}. Fix: give one "
                         f"number (the same for all components) or {k}.")


def _called(fn: Callable[[Tensor], Any], context: Tensor | None, samples: int, k: int) -> Tensor:
    if context is None:
        raise ConfigError("a callable control target needs the context frames; this call has none")
    out = fn(context)
    out = torch.as_tensor(out.detach() if isinstance(out, Tensor) else out, dtype=torch.float64).cpu()
    if out.ndim == 0:
        out = out.expand(samples, k)
    elif out.ndim == 1 and out.shape[0] == samples and k == 1:
        out = out.reshape(samples, 1)
    if out.shape != (samples, k):
        raise ShapeError(f"the control callable must return the target (N, K) = ({samples}, {k}) for the context "
                         f"(N, T_in, H, W, C), got shape {tuple(out.shape)}. Fix: one row per sample, one column "
                         "per component of the statistic.")
    if not bool(torch.isfinite(out).all()):
        raise ConfigError("the control callable returned non-finite targets (NaN or inf)")
    return out


def _clip(target: Tensor, bounds: tuple[float, float], how: str, label: str, units: str | None) -> Tensor:
    low, high = bounds
    below, above = target < low, target > high
    if bool(below.any()) or bool(above.any()):
        unit = f" {units}" if units and units != "1" else ""  # ("1": dimensionless, e.g. VIL code)
        parts = []
        if bool(below.any()):
            parts.append(f"{int(below.sum())} below the attainable minimum {low:g}{unit} (lowest "
                         f"{float(target.min()):.4g}{unit}; with skewed data mu - n sigma can be negative)")
        if bool(above.any()):
            parts.append(f"{int(above.sum())} above the attainable maximum {high:g}{unit} (highest "
                         f"{float(target.max()):.4g}{unit})")
        warnings.warn(f"control target ({how}) of {label}: {' and '.join(parts)} of {target.numel()} "
                      "value(s); clipped to the attainable range", XEarthformerWarning, stacklevel=3)
        target = target.clamp(min=low, max=high)
    return target
