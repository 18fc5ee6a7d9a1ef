"""What every model family provides, and the :class:`Forecaster` that pairs a network with its data.

A family's network is a ``torch.nn.Module`` that satisfies :class:`ForecastModel`: it has a
``config`` (a :class:`~xearthformer.models.config.ModelConfig` with ``input_shape`` and
``target_shape``), a class attribute ``stochastic`` and a ``predict`` method mapping
``(N, T_in, H, W, C_in)`` to ``(N, M, T_out, H, W, C_out)``. Deterministic families return
M = 1 and ignore noise keys; stochastic ones draw member ``m`` of sample ``n`` from
``keys[n, m]`` alone (see :mod:`xearthformer.models.keys`). Everything above ``models/``
(bundles, forecasting, training, evaluation) talks to networks through this protocol and the
registry, never through a family's own class.

>>> fc = Forecaster(Earthformer.from_preset("tiny"), spec)          # doctest: +SKIP
>>> fc.context, fc.lead                                            # doctest: +SKIP
(6, 6)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .._version import __version__
from ..errors import ConfigError, ModelTypeError
from ..layout import DataSpec

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor


@runtime_checkable
class ForecastModel(Protocol):
    """The protocol every family's network implements.

    Attributes
    ----------
    config
        The family's frozen config (``to_dict()``; ``input_shape``/``target_shape`` as
        (T, H, W, C)).
    stochastic : bool
        Class attribute: True when ``predict`` draws noise (then it needs ``keys``).
    """

    config: Any
    stochastic: bool

    def predict(self, x: Tensor, *, keys: Tensor | None = None, **sampling: Any) -> Tensor:
        """(N, T_in, H, W, C_in) -> (N, M, T_out, H, W, C_out).

        ``keys`` is an (N, M) int64 tensor, one noise key per (sample, member); member ``m`` of
        sample ``n`` draws all its noise from ``keys[n, m]`` alone. Deterministic families
        ignore it and return M = 1. ``sampling`` holds family options (steps, sampler,
        guidance...); unknown ones raise ConfigError.
        """
        ...


def is_stochastic(model: Any) -> bool:
    """True when ``model`` (a network or a Forecaster) draws noise in ``predict``."""
    return bool(getattr(getattr(model, "model", model), "stochastic", False))


class Forecaster:
    """A network plus everything needed to use it on labelled data.

    Parameters
    ----------
    model : ForecastModel
        The network (any registered family); its ``config.input_shape``/``target_shape``
        must match ``spec``.
    spec : DataSpec
        Variables, normalisation, grid, time step, context and lead.
    metadata : dict, optional
        Free-form JSON-able information (training data, history...), saved in the bundle.
    version : str, optional
        Package version that created the bundle (default: this one).

    Attributes
    ----------
    model, spec, metadata, version

    Raises
    ------
    ModelTypeError
        ``spec`` is not a DataSpec, or ``model`` has no config.
    ConfigError
        The model's input/target shapes disagree with the spec.

    Examples
    --------
    >>> fc = Forecaster(Earthformer(cfg), spec)                      # doctest: +SKIP
    >>> fc.context, fc.lead                                          # doctest: +SKIP
    (12, 14)
    """

    def __init__(self, model: Any, spec: DataSpec, metadata: dict[str, Any] | None = None,
                 version: str | None = None) -> None:
        if not isinstance(spec, DataSpec):
            raise ModelTypeError(f"spec must be a layout.DataSpec, got {type(spec).__name__}.")
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "to_dict"):
            raise ModelTypeError(
                f"model must be an xearthformer network (with a .config), got "
                f"{type(model).__name__}."
            )
        _check_shapes(config, spec)
        self.model = model
        self.spec = spec
        self.metadata = dict(metadata or {})
        self.version = __version__ if version is None else str(version)

    @property
    def context(self) -> int:
        """Number of input time steps."""
        return self.spec.context

    @property
    def lead(self) -> int:
        """Number of predicted time steps."""
        return self.spec.lead

    def to(self, device: Any) -> Forecaster:
        """Move the model to ``device`` (in place); returns self."""
        self.model.to(device)
        return self

    def __repr__(self) -> str:
        s = self.spec
        return (f"Forecaster({type(self.model).__name__}, inputs={[c.name for c in s.inputs]}, "
                f"targets={[c.name for c in s.targets]}, grid={s.grid.shape}, step={s.step}, "
                f"context={s.context}, lead={s.lead})")


def _check_shapes(config: Any, spec: DataSpec) -> None:
    for what, expected in (("input_shape", spec.input_shape), ("target_shape", spec.target_shape)):
        got = getattr(config, what, None)
        if got is not None and tuple(got) != tuple(expected):
            raise ConfigError(
                f"the model's {what} is {tuple(got)} but the data spec implies {expected} "
                "(T, H, W, C). Fix: build the model with "
                f"input_shape={spec.input_shape}, target_shape={spec.target_shape} "
                "(e.g. Earthformer.from_preset(..., input_shape=..., target_shape=...))."
            )


def check_forecaster(model: Any) -> Forecaster:
    """Return ``model`` if it is a :class:`Forecaster`, else raise a
    :class:`~xearthformer.errors.ModelTypeError` that says how to get one."""
    if isinstance(model, Forecaster):
        return model
    try:
        import torch

        is_module = isinstance(model, torch.nn.Module)
    except ImportError:  # pragma: no cover
        is_module = False
    if is_module:
        raise ModelTypeError(
            f"got a bare torch module ({type(model).__name__}); forecasting labelled data needs "
            "a xearthformer.Forecaster, which also knows the variables, normalisation, grid and "
            "time step. Wrap it: xearthformer.Forecaster(model, spec) with spec from "
            "xearthformer.layout.fit_spec(...), or load a bundle: xearthformer.load('model.xef'). "
            "For raw tensors use xearthformer.forecast.predict_tensor(model, x)."
        )
    raise ModelTypeError(
        f"expected a xearthformer.Forecaster, got {type(model).__name__}. Train one with "
        "xearthformer.train(...) or load one with xearthformer.load('model.xef')."
    )
