"""Differentiable statistics of the future, in physical units, for knowledge control.

A statistic maps a future ``x`` (N, T, H, W, C) in the data's physical units (mm/h, VIL
0-255, K...) to a value per sample, (N, K): the mean intensity (PreDiff's "anticipated
average intensity"), the area fraction above a threshold (a smooth sigmoid, so that gradients
flow), a soft maximum. An alignment network learns to predict it from the noisy latent; the
control then pulls each denoising step toward a target value of it.

Three rules:

* **A registry, never code in bundles.** A built-in statistic is named and parametrised
  (``statistic("area_above", threshold=133)``), and a bundle stores only that record
  (:meth:`Statistic.to_record`); loading rebuilds it from the registry
  (:func:`statistic_from_record`) and runs no stored code. A user callable ``f(x) -> (N, K)``
  (:func:`as_statistic`) works for the session that passes it and cannot be saved.
* **Physical units outside, the network's scale inside, converted in one place.** The
  alignment network predicts the statistic on the scale it was trained on (the official one:
  the mean of [0, 1] data, i.e. VIL / 255; ours: standardised by the training mu/sigma).
  :class:`StatisticScale` is that affine map, and the only conversion between the two.
* **Attainable range.** :meth:`Statistic.bounds` gives the range the statistic can take on
  data within a given range (a mean intensity of rain cannot be negative), to which control
  targets are clipped.

>>> import torch
>>> rain = torch.zeros(2, 6, 8, 8, 1)
>>> rain[1, :, :4] = 10.0                                # sample 1: rain on half the grid
>>> statistic("mean_intensity")(rain)
tensor([[0.],
        [5.]])
>>> statistic("area_above", threshold=5.0, width=0.1)(rain).round(decimals=3)
tensor([[0.0000],
        [0.5000]])
>>> statistic("area_above", threshold=5.0).to_record()
{'name': 'area_above', 'params': {'threshold': 5.0, 'width': 1.0, 'over': 'sequence', 'channel': None}}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ...errors import CheckpointError, ConfigError, ShapeError

__all__ = [
    "DataUnits",
    "OVER",
    "STATISTICS",
    "Statistic",
    "StatisticScale",
    "as_statistic",
    "check_statistic",
    "context_channels",
    "context_targets",
    "statistic",
    "statistic_from_record",
]

#: how a statistic reduces time: one value per sample, or one per target frame
OVER = ("sequence", "frame")
#: value kinds: ``intensity`` values transform like the data (an affine change of units maps a
#: mean/soft maximum the same way), ``fraction`` values lie in [0, 1] whatever the units,
#: ``custom`` (user callables) are not known to do either
KINDS = ("intensity", "fraction", "custom")


@dataclass(frozen=True, eq=False)
class Statistic:
    """A statistic of the future: ``statistic(x) -> (N, K)``, ``x`` (N, T, H, W, C) in physical units.

    Build one with :func:`statistic` (registry) or :func:`as_statistic` (also callables).

    Attributes
    ----------
    name : str or None
        Registry name; None for a user callable (then it cannot be stored in a bundle).
    params : dict
        Its parameters, with every default filled in (so equal records mean equal statistics).
    function : callable
        ``function(x) -> (N, K)`` on physical values.
    kind : str
        One of ``KINDS``: how the value changes with the data's units.
    """

    name: str | None
    params: Mapping[str, Any]
    function: Callable[[Tensor], Tensor] = field(repr=False)
    kind: str = "custom"

    def __call__(self, x: Tensor) -> Tensor:
        """The statistic of ``x`` (N, T, H, W, C), as (N, K); ShapeError if ``function`` breaks that."""
        if not isinstance(x, Tensor) or x.ndim != 5:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ShapeError(f"a statistic of the future takes x of shape (N, T, H, W, C), got {got}")
        value = self.function(x)
        if not isinstance(value, Tensor) or value.ndim != 2 or value.shape[0] != x.shape[0]:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ShapeError(f"statistic {self.label} must return a tensor (N, K) with N = {x.shape[0]}, "
                             f"one row per sample, got {got}. Fix: reduce every dim but the first, "
                             "e.g. x.mean(dim=(1, 2, 3, 4)).reshape(-1, 1) for one value per sample.")
        return value

    @property
    def storable(self) -> bool:
        """True for registry statistics (a bundle can record them)."""
        return self.name is not None

    @property
    def label(self) -> str:
        """Readable form, e.g. ``area_above(threshold=133.0, width=1.0, over='sequence')``."""
        if self.name is None:
            return f"<callable {getattr(self.function, '__name__', type(self.function).__name__)}>"
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items() if v is not None)
        return f"{self.name}({args})"

    def components(self, frames: int) -> int | None:
        """K for a future of ``frames`` frames (None for a callable: known only when called)."""
        if self.name is None:
            return None
        return frames if self.params.get("over") == "frame" else 1

    def bounds(self, data_range: tuple[float, float] | None = None) -> tuple[float, float]:
        """The attainable (low, high) of the statistic on data within ``data_range`` (physical).

        Means and soft maxima stay within the data's range, fractions within [0, 1]; a callable
        is unbounded. Without ``data_range`` an intensity is unbounded.
        """
        if self.kind == "fraction":
            return (0.0, 1.0)
        if self.kind == "intensity" and data_range is not None:
            return (float(data_range[0]), float(data_range[1]))
        return (-math.inf, math.inf)

    def per_frame(self) -> Statistic | None:
        """The per-frame statistic whose mean over the frames is this one, if there is one.

        The official alignment network is trained per frame (its target: each frame's mean) and
        its prediction averaged over the frames at guidance; that is exact for means and
        fractions over the sequence (equal-size frames), not for a maximum.
        """
        if self.name in ("mean_intensity", "area_above"):
            return statistic(self.name, **{**self.params, "over": "frame"})
        return None

    def to_record(self) -> dict[str, Any]:
        """``{"name": ..., "params": {...}}``: what a bundle stores (JSON, no code)."""
        if self.name is None:
            raise ConfigError(f"statistic {self.label} is a Python callable: a bundle stores statistics only "
                              f"by registry name ({', '.join(STATISTICS)}) and parameters, never code. Fix: use "
                              "a registry statistic, e.g. statistic('area_above', threshold=...), or keep the "
                              "model for this session only.")
        return {"name": self.name, "params": dict(self.params)}

    def same_as(self, other: Statistic) -> bool:
        """Equal records (registry statistics) or the same callable."""
        if self.name is None or other.name is None:
            return self.function is other.function
        return self.to_record() == other.to_record()


# ------------------------------------------------------------------------------ the registry

def _select(x: Tensor, channel: int | None) -> Tensor:
    if channel is None:
        return x
    if not -x.shape[-1] <= channel < x.shape[-1]:
        raise ShapeError(f"statistic channel={channel} but the future has {x.shape[-1]} channel(s); "
                         f"use 0..{x.shape[-1] - 1} or None (all channels)")
    return x[..., channel:channel + 1]


def _reduce(values: Tensor, over: str, reduce: Callable[[Tensor, tuple[int, ...]], Tensor]) -> Tensor:
    """(N, T, H, W, C) -> (N, T) per frame or (N, 1) over the sequence."""
    if over == "frame":
        return reduce(values, (2, 3, 4))
    return reduce(values, (1, 2, 3, 4)).reshape(-1, 1)


def _mean(values: Tensor, dims: tuple[int, ...]) -> Tensor:
    return values.mean(dim=dims)


def _mean_intensity(over: str, channel: int | None) -> Callable[[Tensor], Tensor]:
    return lambda x: _reduce(_select(x, channel), over, _mean)


def _area_above(threshold: float, width: float, over: str, channel: int | None) -> Callable[[Tensor], Tensor]:
    # sigmoid((x - threshold) / width): 0.5 at the threshold, a step as width -> 0, with gradients
    return lambda x: _reduce(torch.sigmoid((_select(x, channel) - threshold) / width), over, _mean)


def _max(temperature: float, over: str, channel: int | None) -> Callable[[Tensor], Tensor]:
    def soft_max(x: Tensor) -> Tensor:
        def reduce(values: Tensor, dims: tuple[int, ...]) -> Tensor:
            count = math.prod(values.shape[d] for d in dims)
            # temperature * log(mean(exp(x / temperature))): between the mean and the maximum,
            # so a constant field gives its value; -> the maximum as temperature -> 0
            return temperature * (torch.logsumexp(values / temperature, dim=dims) - math.log(count))

        return _reduce(_select(x, channel), over, reduce)

    return soft_max


@dataclass(frozen=True)
class _Entry:
    build: Callable[..., Callable[[Tensor], Tensor]]
    defaults: Mapping[str, Any]
    kind: str
    doc: str


_REGISTRY: dict[str, _Entry] = {
    "mean_intensity": _Entry(_mean_intensity, {"over": "sequence", "channel": None}, "intensity",
                             "mean over the target (T, H, W, C), or per frame (over='frame'): the official"),
    "area_above": _Entry(_area_above, {"threshold": None, "width": 1.0, "over": "sequence", "channel": None},
                         "fraction", "fraction of the area above threshold, smoothed by a sigmoid of the given "
                                     "width (physical units)"),
    "max": _Entry(_max, {"temperature": 1.0, "over": "sequence", "channel": None}, "intensity",
                  "soft maximum T log mean exp(x / T) (temperature T in physical units)"),
}
#: names of the built-in statistics
STATISTICS = tuple(_REGISTRY)


def statistic(name: str, **params: Any) -> Statistic:
    """A built-in statistic by registry name.

    Parameters
    ----------
    name
        ``"mean_intensity"`` (params ``over``, ``channel``), ``"area_above"`` (``threshold``
        required, ``width`` = 1.0 physical units of the sigmoid, ``over``, ``channel``) or
        ``"max"`` (a soft maximum; ``temperature`` = 1.0 physical units, ``over``, ``channel``).
        ``over="sequence"`` gives one value per sample (K = 1), ``over="frame"`` one per target
        frame (K = T); ``channel=None`` reduces all channels (the official, one-channel case).

    Raises
    ------
    ConfigError
        Unknown name (the message lists the valid ones) or parameters.

    Examples
    --------
    >>> statistic("max", temperature=0.5).label
    "max(temperature=0.5, over='sequence')"
    """
    entry = _REGISTRY.get(name) if isinstance(name, str) else None
    if entry is None:
        valid = "; ".join(f"{n}: {e.doc}" for n, e in _REGISTRY.items())
        raise ConfigError(f"unknown statistic {name!r}. Valid statistics - {valid}")
    unknown = sorted(set(params) - set(entry.defaults))
    if unknown:
        raise ConfigError(f"statistic {name!r} has no parameter(s) {unknown}; its parameters: "
                          f"{', '.join(entry.defaults)}")
    full = {**entry.defaults, **params}
    _check_params(name, full)
    return Statistic(name, full, entry.build(**full), entry.kind)


def _check_params(name: str, p: dict[str, Any]) -> None:
    if p["over"] not in OVER:
        raise ConfigError(f"statistic {name!r}: over must be one of {OVER}, got {p['over']!r}")
    ch = p["channel"]
    if ch is not None and (isinstance(ch, bool) or not isinstance(ch, int)):
        raise ConfigError(f"statistic {name!r}: channel must be an int or None (all channels), got {ch!r}")
    for key in ("threshold", "width", "temperature"):
        if key not in p:
            continue
        value = p[key]
        if value is None and key == "threshold":
            raise ConfigError("statistic 'area_above' needs a threshold in the data's physical units, "
                              "e.g. statistic('area_above', threshold=133)")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"statistic {name!r}: {key} must be a finite number, got {value!r}")
        if key != "threshold" and value <= 0:
            raise ConfigError(f"statistic {name!r}: {key} must be > 0 (physical units), got {value!r}")
        p[key] = float(value)


def statistic_from_record(record: Mapping[str, Any]) -> Statistic:
    """Rebuild a statistic from a bundle's record (:meth:`Statistic.to_record`); runs no stored code.

    Raises
    ------
    CheckpointError
        The record is not ``{"name": ..., "params": {...}}`` of a registry statistic (e.g. a
        bundle written by a newer version with a statistic this one lacks).
    """
    if not isinstance(record, Mapping) or not isinstance(record.get("params", {}), Mapping):
        raise CheckpointError(f"a statistic record must be {{'name': str, 'params': dict}}, got {record!r}")
    try:
        return statistic(record.get("name"), **dict(record.get("params", {})))  # type: ignore[arg-type]
    except ConfigError as err:
        raise CheckpointError(f"the bundle's statistic record {dict(record)!r} cannot be rebuilt: {err}. "
                              "Fix: load it with the xearthformer version that wrote it.") from None


def as_statistic(obj: Statistic | str | Mapping[str, Any] | Callable[[Tensor], Tensor], **params: Any) -> Statistic:
    """A :class:`Statistic` from a Statistic, a registry name (+ ``params``), a record, or a callable.

    A callable ``f(x) -> (N, K)`` on physical futures (N, T, H, W, C) is used as given, for this
    session (it cannot be saved). Use :func:`check_statistic` to test it on an example.

    >>> as_statistic(lambda x: x.amax(dim=(1, 2, 3, 4))[:, None]).storable
    False
    """
    if isinstance(obj, Statistic):
        if params:
            raise ConfigError(f"parameters {sorted(params)} given with a built statistic {obj.label}; "
                              "pass a registry name instead, e.g. as_statistic('area_above', threshold=...)")
        return obj
    if isinstance(obj, str):
        return statistic(obj, **params)
    if isinstance(obj, Mapping):
        merged = {**dict(obj.get("params", {})), **params}
        return statistic(obj.get("name"), **merged)  # type: ignore[arg-type]
    if callable(obj):
        if params:
            raise ConfigError(f"parameters {sorted(params)} cannot be given with a callable statistic")
        return Statistic(None, {}, obj, "custom")
    raise ConfigError(f"a statistic is a registry name ({', '.join(STATISTICS)}), a record "
                      f"{{'name': ..., 'params': ...}} or a callable f(x) -> (N, K); got {type(obj).__name__}")


def check_statistic(stat: Statistic, example: Tensor) -> Tensor:
    """Evaluate ``stat`` on ``example`` (N, T, H, W, C) and check it is differentiable in ``x``.

    Returns the value (N, K), detached. Knowledge control follows gradients of the statistic
    (through the alignment network that learns it, or directly), so a statistic computed with
    ``.detach()``, ``.item()``, numpy or hard comparisons (``x > 133``) cannot steer anything.

    Raises
    ------
    ShapeError
        The output is not (N, K).
    ConfigError
        The output does not depend differentiably on ``x`` (no gradient, or a zero gradient
        everywhere, as a hard threshold gives).
    """
    with torch.inference_mode(False), torch.enable_grad():
        x = example.detach().clone().to(torch.float32).requires_grad_(True)
        value = stat(x)
        fix = ("Fix: compute it from x with differentiable torch operations (no .detach(), .item(), "
               "numpy or torch.no_grad(); a smooth version of thresholds, e.g. the registry's "
               "'area_above', which uses a sigmoid).")
        if not value.requires_grad:
            raise ConfigError(f"statistic {stat.label} is not differentiable: its output has no gradient "
                              f"with respect to the future x. {fix}")
        (grad,) = torch.autograd.grad(value.sum(), x, allow_unused=True)
    if grad is None or not bool(torch.any(grad != 0)):
        raise ConfigError(f"statistic {stat.label} has a zero gradient with respect to the future x on this "
                          f"example (a step function or integer rounding?): it cannot steer sampling. {fix}")
    return value.detach()


# ------------------------------------------------------------------- the network's own scale

@dataclass(frozen=True)
class StatisticScale:
    """The affine map between physical values of a statistic and the alignment network's scale.

    ``network = (physical - offset) / scale``, per component (a single value broadcasts to all
    K). This is the one place where statistic values change units: training targets go
    :meth:`to_network`, predictions come back with :meth:`to_physical`.

    Attributes
    ----------
    offset, scale : tuple of float
        One value, or one per component.

    Examples
    --------
    >>> import torch
    >>> s = StatisticScale.standardising(mu=[2.0], sigma=[0.5])
    >>> s.to_network(torch.tensor([[3.0]]))
    tensor([[2.]])
    >>> s.to_physical(torch.tensor([[2.0]]))
    tensor([[3.]])
    """

    offset: tuple[float, ...] = (0.0,)
    scale: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        offset = tuple(float(v) for v in _as_sequence(self.offset))
        scale = tuple(float(v) for v in _as_sequence(self.scale))
        if not offset or not scale or not all(math.isfinite(v) for v in offset):
            raise ConfigError(f"StatisticScale needs finite offsets, got {self.offset!r}")
        if not all(math.isfinite(v) and v > 0 for v in scale):
            raise ConfigError(f"StatisticScale needs finite scales > 0, got {self.scale!r} (a statistic that "
                              "never varies in the training data cannot be standardised: pick another one)")
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "scale", scale)

    @classmethod
    def standardising(cls, mu: Sequence[float], sigma: Sequence[float]) -> StatisticScale:
        """z-scores with the training mu/sigma (how :func:`xearthformer.train_alignment` trains)."""
        return cls(tuple(mu), tuple(sigma))

    @classmethod
    def of_normalised_data(cls, stat: Statistic, offset: float, scale: float) -> StatisticScale:
        """The scale of a network trained on the statistic of *normalised* data ``(x - offset) / scale``.

        The official alignment network is one: its target is the mean of VIL / 255. An
        intensity then maps like the data (mean((x - a) / b) = (mean(x) - a) / b; for the soft
        maximum with the temperature scaled by 1 / b as well), a fraction not at all (with the
        threshold and width mapped like the data).
        """
        if stat.kind == "intensity":
            return cls((float(offset),), (float(scale),))
        if stat.kind == "fraction":
            return cls()
        raise ConfigError(f"the scale of statistic {stat.label} on normalised data is unknown (a callable); "
                          "train its alignment network with xef.train_alignment, which standardises it")

    def to_network(self, physical: Tensor) -> Tensor:
        """Physical (N, K) -> the network's scale."""
        offset, scale = self._tensors(physical)
        return (physical - offset) / scale

    def to_physical(self, network: Tensor) -> Tensor:
        """The network's scale (N, K) -> physical units."""
        offset, scale = self._tensors(network)
        return network * scale + offset

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-able form (bundles)."""
        return {"offset": list(self.offset), "scale": list(self.scale)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StatisticScale:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(tuple(d["offset"]), tuple(d["scale"]))
        except (KeyError, TypeError) as err:
            raise CheckpointError(f"a statistic scale record needs 'offset' and 'scale' lists, got {d!r}") from err

    def _tensors(self, like: Tensor) -> tuple[Tensor, Tensor]:
        k = like.shape[-1]
        for values in (self.offset, self.scale):
            if len(values) not in (1, k):
                raise ShapeError(f"this statistic scale has {len(values)} components but the values have "
                                 f"K = {k}; it was made for another statistic")
        kw = {"dtype": like.dtype, "device": like.device}
        return torch.tensor(self.offset, **kw), torch.tensor(self.scale, **kw)


def _as_sequence(value: Any) -> tuple[Any, ...]:
    if isinstance(value, (int, float)):
        return (value,)
    return tuple(value)


# ------------------------------------------------------------------------- the data's units

@dataclass(frozen=True)
class DataUnits:
    """Per-channel affine map between a model's normalised tensors and physical units.

    The statistics are defined on physical values, the networks run on normalised ones
    (``(x - offset) / scale`` per channel, :class:`~xearthformer.layout.Channel`); this turns one
    into the other on torch tensors (..., C), and knows the physical range of the training data.

    Attributes
    ----------
    offset, scale : tuple of float
        One per channel.
    range : tuple of float or None
        (low, high) of the training data in physical units over all channels, None if unknown.
    units : str or None
        The channels' common ``units`` attribute, if they share one.

    Examples
    --------
    >>> import torch
    >>> from xearthformer.layout import Channel
    >>> units = DataUnits.from_channels([Channel("vil", method="scale", scale=255.0, range=(0.0, 1.0))])
    >>> units.to_physical(torch.tensor([0.5])), units.range
    (tensor([127.5000]), (0.0, 255.0))
    """

    offset: tuple[float, ...]
    scale: tuple[float, ...]
    range: tuple[float, float] | None = None
    units: str | None = None

    @classmethod
    def from_channels(cls, channels: Sequence[Any]) -> DataUnits:
        """From a spec's target channels (:attr:`~xearthformer.layout.DataSpec.targets`).

        Raises
        ------
        ConfigError
            A channel is normalised as an anomaly (its physical value needs the calendar
            month's climatology, which a tensor does not carry).
        """
        anomalies = [c.name for c in channels if c.method == "anomaly"]
        if anomalies:
            raise ConfigError(f"channel(s) {anomalies} are normalised as anomalies from a monthly climatology: "
                              "statistics in physical units need the calendar month, which knowledge control "
                              "does not have. Fix: fit the model with normalisation='zscore' or 'scale'.")
        ranges = [(c.offset + c.scale * c.range[0], c.offset + c.scale * c.range[1])
                  for c in channels if c.range is not None]
        data_range = None
        if ranges and len(ranges) == len(channels):
            data_range = (float(min(r[0] for r in ranges)), float(max(r[1] for r in ranges)))
        units = {c.attrs.get("units") for c in channels}
        return cls(tuple(float(c.offset) for c in channels), tuple(float(c.scale) for c in channels),
                   data_range, units.pop() if len(units) == 1 else None)

    def to_physical(self, x: Tensor) -> Tensor:
        """Normalised (..., C) -> physical."""
        offset, scale = self._tensors(x)
        return x * scale + offset

    def to_normalised(self, x: Tensor) -> Tensor:
        """Physical (..., C) -> normalised."""
        offset, scale = self._tensors(x)
        return (x - offset) / scale

    def _tensors(self, like: Tensor) -> tuple[Tensor, Tensor]:
        if like.shape[-1] != len(self.offset):
            raise ShapeError(f"tensor has {like.shape[-1]} channels in its last dim, the data units "
                             f"{len(self.offset)}")
        kw = {"dtype": like.dtype, "device": like.device}
        return torch.tensor(self.offset, **kw), torch.tensor(self.scale, **kw)


def context_channels(spec: Any) -> tuple[int, ...] | None:
    """Where a spec's target channels sit among its input channels, by name (None: a target
    channel is not an input, so statistics of the context's targets do not exist).

    >>> from xearthformer.layout import Channel, DataSpec, Grid, TimeStep
    >>> vil, lght = Channel("vil"), Channel("lght")
    >>> spec = DataSpec(inputs=(lght, vil), targets=(vil,), grid=Grid.xy(range(2), range(2)),
    ...                 step=TimeStep(5, "minutes"), context=2, lead=1)
    >>> context_channels(spec)
    (1,)
    """
    names = spec.input_channel_names
    if not all(c.name in names for c in spec.targets):
        return None
    return tuple(names.index(c.name) for c in spec.targets)


def context_targets(x: Tensor, channels: Sequence[int], units: DataUnits) -> Tensor:
    """The target channels ``channels`` (:func:`context_channels`) of normalised contexts ``x``
    (..., C_in), in physical units (``units``: the targets'), float64.

    >>> from xearthformer.layout import Channel
    >>> units = DataUnits.from_channels([Channel("vil", method="scale", scale=255.0)])
    >>> context_targets(torch.tensor([[0.1, 0.5]]), (1,), units)
    tensor([[127.5000]], dtype=torch.float64)
    """
    return units.to_physical(x.detach().to(torch.float64)[..., list(channels)])
