"""The frozen-config base every model family builds its configuration on.

A family's config is a frozen dataclass that also derives from :class:`ModelConfig`; it then
serialises the same way as every other family's (:meth:`~ModelConfig.to_dict` /
:meth:`~ModelConfig.from_dict`, JSON-able, tuples as lists), copies with checked names
(:meth:`~ModelConfig.replace`) and switches its dropout off by one rule
(:meth:`~ModelConfig.without_dropout`: every field whose name ends in ``_drop``). Lists given
for any field become tuples, so configs stay hashable and compare equal after a JSON round trip.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class ToyConfig(ModelConfig):
...     input_shape: tuple[int, ...]
...     proj_drop: float = 0.1
>>> cfg = ToyConfig.from_dict({"input_shape": [2, 8, 8, 1]})
>>> cfg.input_shape, cfg.without_dropout().proj_drop
((2, 8, 8, 1), 0.0)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from ..errors import ConfigError

C = TypeVar("C", bound="ModelConfig")


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _lists(value: Any) -> Any:
    return [_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


class ModelConfig:
    """Mixin for a family's frozen config dataclass (see the module docstring).

    Subclasses that define ``__post_init__`` call ``super().__post_init__()`` first; it turns
    list values into tuples. A ``_validate()`` method, when defined, runs after that.
    """

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, _tuples(value))
        validate = getattr(self, "_validate", None)
        if validate is not None:
            validate()

    @classmethod
    def field_names(cls) -> list[str]:
        """The config's field names, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def check_names(cls, names: Any) -> None:
        """Raise ConfigError naming every name in ``names`` that is not a field."""
        valid = cls.field_names()
        unknown = sorted(set(names) - set(valid))
        if unknown:
            raise ConfigError(
                f"unknown {cls.__name__} field(s) {unknown}; valid fields: {', '.join(valid)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field (tuples as lists)."""
        return {name: _lists(getattr(self, name)) for name in self.field_names()}

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
        """Inverse of :meth:`to_dict`; unknown names and missing required fields raise
        ConfigError (the message lists the valid names)."""
        cls.check_names(d)
        required = [f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in d]
        if missing:
            raise ConfigError(f"config dict lacks {missing} (required fields of {cls.__name__})")
        return cls(**{k: _tuples(v) for k, v in d.items()})

    def replace(self: C, **changes: Any) -> C:
        """Copy with some fields changed; unknown names raise ConfigError."""
        self.check_names(changes)
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def without_dropout(self: C) -> C:
        """Copy with every dropout (fields ending in ``_drop``) set to 0: the model is then
        deterministic in training mode too."""
        return self.replace(**{name: 0.0 for name in self.field_names() if name.endswith("_drop")})
