"""Knowledge-control targets that need no future data.

A control request says which value of a statistic of the future the ensemble should aim at:

``{"n": k}``
    ``mu + k * sigma`` of the model's control statistic, per component (K > 1: each its own
    mu/sigma), with mu/sigma over the training period (:class:`ControlStats`, stored in the
    bundle; :func:`xearthformer.control_stats` estimates them for bundles without). They are
    **climatological**: one mu/sigma per component for the whole training period, not
    conditioned on the calendar month nor on the context, so ``n = 2`` asks for what is a
    2-sigma event in the training climate whatever the current weather.
``{"value": v}``
    An absolute target in physical units (a number, or one per component).
``{"statistic": "area_above", "threshold": 133, "n": 3}``
    Another statistic (registry name and parameters) that the bundle has an alignment network for.
``callable``
    ``f(context) -> (N, K)`` from the physical context frames (N, T_in, H, W, C): a target per
    sample computed from the past, e.g. twice the observed mean (the official demonstration
    target, 2x the *true future* mean, needs the future).

Any dict may add ``"scale"``, the guidance strength, ``"parity": True``, the official DDPM
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

from ...errors import CheckpointError, ConfigError, ShapeError, XEarthformerWarning
from .statistics import Statistic, as_statistic

__all__ = ["CONDITIONING", "ControlRequest", "ControlStats", "parse_control", "resolve_target"]

#: what mu/sigma are conditioned on: nothing (climatological over the training period)
CONDITIONING = "none"
#: keys a control dict may hold besides a statistic's own parameters
CONTROL_KEYS = ("n", "value", "statistic", "scale", "parity", "via")
#: what the gradient follows: the alignment network (PreDiff) or the statistic of the decoded x0
VIA = ("alignment", "decoded")


@dataclass(frozen=True)
class ControlStats:
    """mu and sigma of a statistic over the training period, physical units, per component.

    Attributes
    ----------
    mu, sigma : tuple of float
        One per component K (sigma: the population standard deviation over the windows).
    count : int
        Number of training windows they were estimated from.
    period : tuple of str or None
        First and last init time of those windows (ISO), where known.
    conditioning : str
        ``"none"``: climatological, not by calendar month or context (:data:`CONDITIONING`).
    """

    mu: tuple[float, ...]
    sigma: tuple[float, ...]
    count: int
    period: tuple[str, str] | None = None
    conditioning: str = CONDITIONING

    def __post_init__(self) -> None:
        mu, sigma = tuple(float(v) for v in self.mu), tuple(float(v) for v in self.sigma)
        if not mu or len(mu) != len(sigma) or not all(math.isfinite(v) for v in mu + sigma) \
                or any(v < 0 for v in sigma):
            raise ConfigError(f"ControlStats needs as many finite mu as sigma >= 0 values, got mu={self.mu!r}, "
                              f"sigma={self.sigma!r}")
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "sigma", sigma)
        if self.period is not None:
            object.__setattr__(self, "period", tuple(str(p) for p in self.period))

    @classmethod
    def estimate(cls, values: Any, period: tuple[str, str] | None = None) -> ControlStats:
        """From the statistic of each training window, ``values`` (S, K) in physical units.

        >>> ControlStats.estimate([[1.0], [3.0]]).sigma
        (1.0,)
        """
        v = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64)
        if v.ndim != 2 or v.shape[0] < 2:
            raise ShapeError(f"mu/sigma need the statistic of at least 2 windows as (S, K), got shape {v.shape}. "
                             "Fix: give control_stats a longer period of data.")
        finite = np.isfinite(v).all(axis=1)
        if finite.sum() < 2:
            raise ShapeError("fewer than 2 windows have a finite statistic: mu/sigma cannot be estimated")
        v = v[finite]
        return cls(tuple(v.mean(axis=0)), tuple(v.std(axis=0)), int(v.shape[0]), period)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (bundles)."""
        return {"mu": list(self.mu), "sigma": list(self.sigma), "count": self.count,
                "period": list(self.period) if self.period else None, "conditioning": self.conditioning}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ControlStats:
        """Inverse of :meth:`to_dict`."""
        try:
            period = d.get("period")
            return cls(tuple(d["mu"]), tuple(d["sigma"]), int(d["count"]), tuple(period) if period else None,
                       str(d.get("conditioning", CONDITIONING)))
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"a control-statistics record needs mu, sigma and count, got {d!r}") from err


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
    """

    statistic: Statistic | None = None
    n: tuple[float, ...] | None = None
    value: tuple[float, ...] | None = None
    target_of: Callable[[Tensor], Any] | None = None
    scale: float | None = None
    parity: bool = False
    via: str = "alignment"

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
    parity, via = d.pop("parity", False), d.pop("via", "alignment")
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
    return ControlRequest(stat, _numbers(n, "n"), _numbers(value, "value"), None,
                          None if scale is None else float(scale), parity, via)


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
                   context: Tensor | None = None, label: str = "the control statistic",
                   units: str | None = None) -> Tensor:
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
        target = torch.tensor(stats.mu, dtype=torch.float64) + n * torch.tensor(stats.sigma, dtype=torch.float64)
        target = target.expand(samples, components)
        how = "mu + n sigma"
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
