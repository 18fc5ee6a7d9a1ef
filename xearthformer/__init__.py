"""xearthformer: Earthformer cuboid-attention forecasting for xarray data.

Importing the package is cheap: torch-heavy modules load on first use, and nothing touches
the disk. ``import xearthformer`` registers the ``.earthformer`` accessors on xarray objects.

>>> import xearthformer as xef
>>> model = xef.Earthformer.from_preset("tiny")          # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

from . import accessor as _accessor  # noqa: F401  (registers .earthformer)
from ._version import __version__
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DownloadError,
    ModelTypeError,
    ShapeError,
    TrainingError,
    XEarthformerError,
    XEarthformerWarning,
)

# public name -> (module that defines it, attribute; None for the module itself), loaded
# lazily (PEP 562). Function names never equal a submodule's name (``train`` lives in
# ``training``), because importing a submodule would overwrite the package attribute.
_LAZY: dict[str, tuple[str, str | None]] = {
    "Earthformer": ("xearthformer.models.earthformer.network", "Earthformer"),
    "EarthformerConfig": ("xearthformer.models.earthformer.config", "EarthformerConfig"),
    "PreDiff": ("xearthformer.models.prediff.family", "PreDiff"),
    "PreDiffConfig": ("xearthformer.models.prediff.family", "PreDiffConfig"),
    "presets": ("xearthformer.models.registry", "presets"),
    "Forecaster": ("xearthformer.models.base", "Forecaster"),
    "save": ("xearthformer.checkpoint", "save"),
    "load": ("xearthformer.checkpoint", "load"),
    "load_official": ("xearthformer.models.earthformer.official", "load_official"),
    "load_official_prediff": ("xearthformer.models.prediff.official", "load_official_prediff"),
    "pretrained": ("xearthformer.hub", "pretrained"),
    "train": ("xearthformer.training.labelled", "train"),
    "train_alignment": ("xearthformer.training.alignment", "train_alignment"),
    "control_stats": ("xearthformer.training.alignment", "control_stats"),
    "to_pysteps": ("xearthformer.cf", "to_pysteps"),
    "to_earth2studio": ("xearthformer.cf", "to_earth2studio"),
    "train_prediff": ("xearthformer.training.prediff", "train_prediff"),
    "metrics": ("xearthformer.metrics", None),
}

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DownloadError",
    "ModelTypeError",
    "ShapeError",
    "TrainingError",
    "XEarthformerError",
    "XEarthformerWarning",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'xearthformer' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
