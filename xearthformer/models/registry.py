"""The one table of model families; bundles, the hub, ``evaluate`` and ``train`` look families up here.

A row (:class:`Family`) names the family's parts as lazy ``"module:attribute"`` strings, so
reading the table imports no torch; :func:`resolve` imports a part when it is used. A new
family is a folder in ``models/`` plus a row here (or :func:`register_family` at run time, as
plugins and the tests' toy family do): nothing else in the package branches on the family.

>>> family("earthformer").bundle_classes
('Earthformer',)
>>> family_for_bundle_class("Earthformer").name
'earthformer'
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .base import ForecastModel
    from .config import ModelConfig


@dataclass(frozen=True)
class Family:
    """One model family.

    Attributes
    ----------
    name : str
        The family's name (``"earthformer"``).
    network : str
        ``"module:Class"`` of the network (a :class:`~xearthformer.models.base.ForecastModel`
        built as ``Class(config)``).
    config : str
        ``"module:Class"`` of its config (a :class:`~xearthformer.models.config.ModelConfig`).
    presets : str
        ``"module:function"``; the function returns ``{preset name: config}``.
    objective : str
        ``"module:factory"`` of the default training objective, called as
        ``factory(weights=array or None)`` (per-point loss weights broadcastable to
        (T_out, H, W, C_out)). It may point into :mod:`xearthformer.training.objectives`: the
        string is resolved only by training code.
    official_loader : str or None
        ``"module:function"`` turning official checkpoint files into a Forecaster, called as
        ``function(files, preset)`` with ``files`` a mapping of part name -> path; None when
        the family has no official weights.
    bundle_classes : tuple of str
        Model-class names a bundle of this family may carry; each is an attribute of the
        network's module (the first is the network itself).
    datasets : tuple of str
        Data sets :func:`xearthformer.evaluate.evaluate` may score this family on.
    trainer : str or None
        ``"module:function"`` that trains this family on labelled data when one loop with the
        default objective is not enough (PreDiff: the VAE, then the denoiser);
        :func:`xearthformer.train` hands it all its arguments. None: ``xearthformer.train``
        itself trains the network with ``objective``.
    control : str or None
        ``"module:function"`` of knowledge control, called as ``function(forecaster, control)``
        with a control request (``{"n": 2}``...) and returning ``(sampling options, attributes)``:
        the options steer ``predict``, the attributes record the control on the output; None
        when the family has no knowledge control.
    """

    name: str
    network: str
    config: str
    presets: str
    objective: str
    official_loader: str | None = None
    bundle_classes: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    trainer: str | None = None
    control: str | None = None

    def __post_init__(self) -> None:
        for what in ("network", "config", "presets", "objective", "official_loader", "trainer", "control"):
            ref = getattr(self, what)
            if ref is not None and (not isinstance(ref, str) or ref.count(":") != 1):
                raise ConfigError(f"family {self.name!r}: {what} must be a 'module:attribute' string, "
                                  f"got {ref!r}.")
        if not self.bundle_classes:
            object.__setattr__(self, "bundle_classes", (self.network.rsplit(":", 1)[1],))
        object.__setattr__(self, "bundle_classes", tuple(self.bundle_classes))
        object.__setattr__(self, "datasets", tuple(self.datasets))

    def bundle_class(self, name: str) -> type:
        """The class a bundle names ``name`` (an entry of :attr:`bundle_classes`)."""
        if name not in self.bundle_classes:
            raise ConfigError(f"family {self.name!r} has no bundle class {name!r}; "
                              f"valid: {list(self.bundle_classes)}.")
        return resolve(f"{self.network.split(':', 1)[0]}:{name}")


_EARTHFORMER = "xearthformer.models.earthformer"
_PREDIFF = "xearthformer.models.prediff"
_FAMILIES: dict[str, Family] = {
    "earthformer": Family(
        name="earthformer",
        network=f"{_EARTHFORMER}.network:Earthformer",
        config=f"{_EARTHFORMER}.config:EarthformerConfig",
        presets=f"{_EARTHFORMER}.config:presets",
        objective="xearthformer.training.objectives:MaskedMSE",
        official_loader=f"{_EARTHFORMER}.official:official_forecaster",
        bundle_classes=("Earthformer",),
        datasets=("sevir", "enso", "sevir-lr"),
    ),
    "prediff": Family(
        name="prediff",
        network=f"{_PREDIFF}.family:PreDiff",
        config=f"{_PREDIFF}.family:PreDiffConfig",
        presets=f"{_PREDIFF}.family:presets",
        objective="xearthformer.training.prediff:DiffusionObjective",
        official_loader=f"{_PREDIFF}.official:official_forecaster",
        bundle_classes=("PreDiff",),
        trainer="xearthformer.training.prediff:train_prediff",
        datasets=("sevir-lr",),
        control=f"{_PREDIFF}.knowledge:control_options",
    ),
}


def families() -> dict[str, Family]:
    """Every registered family by name (a copy: change the table with :func:`register_family`)."""
    return dict(_FAMILIES)


def family(name: str) -> Family:
    """The family called ``name``; ConfigError listing the valid names otherwise."""
    return _row(name)


def _row(name: str) -> Family:
    if name not in _FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; valid families: {', '.join(sorted(_FAMILIES))}.")
    return _FAMILIES[name]


def family_for_bundle_class(name: str) -> Family:
    """The family whose bundles carry the model class ``name`` (``"Earthformer"``)."""
    for row in _FAMILIES.values():
        if name in row.bundle_classes:
            return row
    valid = sorted(c for row in _FAMILIES.values() for c in row.bundle_classes)
    raise ConfigError(f"no model family has the model class {name!r}; known classes: {', '.join(valid)}.")


def family_of(model: Any) -> Family:
    """The family of a network (or of a Forecaster's network): its exact class must be one of
    a family's bundle classes."""
    net = getattr(model, "model", model)
    row = family_for_bundle_class(type(net).__name__)
    if row.bundle_class(type(net).__name__) is not type(net):
        raise ConfigError(f"{type(net).__module__}.{type(net).__name__} is not the class that family "
                          f"{row.name!r} registers under that name.")
    return row


def register_family(row: Family) -> Family:
    """Add a family at run time (plugins; the tests' toy family). Refuses a name or a bundle
    class that is already registered."""
    if not isinstance(row, Family):
        raise ConfigError(f"register_family takes a models.registry.Family, got {type(row).__name__}.")
    if row.name in _FAMILIES:
        raise ConfigError(f"a model family named {row.name!r} is already registered; pick another name.")
    taken = {c: f.name for f in _FAMILIES.values() for c in f.bundle_classes}
    clash = [c for c in row.bundle_classes if c in taken]
    if clash:
        raise ConfigError(f"bundle class(es) {clash} already belong to family {taken[clash[0]]!r}.")
    _FAMILIES[row.name] = row
    return row


def resolve(ref: str) -> Any:
    """Import ``"module:attribute"`` and return the attribute.

    >>> resolve("xearthformer.errors:ConfigError").__name__
    'ConfigError'
    """
    module_name, sep, attribute = str(ref).partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"expected a 'module:attribute' reference, got {ref!r}.")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"cannot resolve {ref!r}: {err}") from err


def presets(family: str = "earthformer") -> dict[str, ModelConfig]:
    """The named configs of ``family`` (Earthformer: ``sevir``, ``enso``, ``small``, ``tiny``).

    Examples
    --------
    >>> import xearthformer as xef
    >>> sorted(xef.presets())
    ['enso', 'sevir', 'small', 'tiny']
    >>> xef.presets()["sevir"].input_shape, xef.presets()["sevir"].target_shape
    ((13, 384, 384, 1), (12, 384, 384, 1))
    >>> cfg = xef.presets()["tiny"].replace(input_shape=(4, 16, 16, 1), target_shape=(2, 16, 16, 1))
    """
    return dict(resolve(_row(family).presets)())


def preset_config(family_name: str, preset: str, **overrides: Any) -> ModelConfig:
    """The config of ``family_name``'s preset ``preset`` with some fields replaced; unknown
    presets raise ConfigError listing the valid ones."""
    table = presets(family_name)
    if preset not in table:
        raise ConfigError(f"unknown {family_name} preset {preset!r}; valid: {', '.join(table)}.")
    cfg = table[preset]
    return cfg.replace(**overrides) if overrides else cfg


def build(family_name: str, preset: str, **overrides: Any) -> ForecastModel:
    """A network of ``family_name`` built from a preset (fields overridden), e.g. for training."""
    return resolve(_row(family_name).network)(preset_config(family_name, preset, **overrides))
