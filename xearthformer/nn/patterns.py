"""Named cuboid-attention patterns (the paper's and the official code's), selectable by name.

A *self* pattern maps the shape ``(T, H, W, C)`` of one hierarchy level to a list of
:class:`Decomposition` s, one per stacked attention layer. A *cross* pattern maps the memory
shape to a list of :class:`CrossDecomposition` s for decoder cross-attention.

Names with a size suffix are parsed rather than enumerated, so ``video_swin_2x4``,
``spatial_lg_8``, ``axial_space_dilate_2`` or ``cross_2x2_lg`` work for any positive sizes
(the official registry lists only a few sizes of each family; all of those are accepted).

>>> [d.cuboid_size for d in self_pattern("axial", (12, 24, 24, 64))]
[(12, 1, 1), (1, 24, 1), (1, 1, 24)]
>>> cross_pattern("cross_1x1", (12, 12, 12, 128))[0].cuboid_hw
(1, 1)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import ConfigError

Shape4 = Sequence[int]


@dataclass(frozen=True)
class Decomposition:
    """How one self-attention layer cuts a ``(T, H, W)`` grid into cuboids.

    ``strategy`` holds ``"l"`` (local: contiguous blocks) or ``"d"`` (dilated: strided)
    per axis; ``shift_size`` is the cyclic shift per axis (Swin-style, with its mask).
    """

    cuboid_size: tuple[int, int, int]
    strategy: tuple[str, str, str] = ("l", "l", "l")
    shift_size: tuple[int, int, int] = (0, 0, 0)

    def __post_init__(self) -> None:
        if len(self.cuboid_size) != 3 or any(int(c) < 1 for c in self.cuboid_size):
            raise ConfigError(f"cuboid_size must be 3 positive ints, got {self.cuboid_size}")
        if len(self.strategy) != 3 or any(s not in ("l", "d") for s in self.strategy):
            raise ConfigError(f"strategy must be 3 of 'l' (local) / 'd' (dilated), got {self.strategy}")
        if len(self.shift_size) != 3 or any(int(s) < 0 for s in self.shift_size):
            raise ConfigError(f"shift_size must be 3 non-negative ints, got {self.shift_size}")


@dataclass(frozen=True)
class CrossDecomposition:
    """How one decoder cross-attention layer cuts query and memory into paired cuboids.

    Both are cut into ``n_temporal`` groups along time and ``cuboid_hw`` blocks in space.
    """

    cuboid_hw: tuple[int, int]
    shift_hw: tuple[int, int] = (0, 0)
    strategy: tuple[str, str, str] = ("l", "l", "l")
    n_temporal: int = 1


# ---------------------------------------------------------------------------- self patterns

def _full(shape: Shape4) -> list[Decomposition]:
    t, h, w = shape[:3]
    return [Decomposition((t, h, w))]


def _axial(shape: Shape4) -> list[Decomposition]:
    t, h, w = shape[:3]
    return [Decomposition((t, 1, 1)), Decomposition((1, h, 1)), Decomposition((1, 1, w))]


def _divided_st(shape: Shape4) -> list[Decomposition]:
    t, h, w = shape[:3]
    return [Decomposition((t, 1, 1)), Decomposition((1, h, w))]


def _video_swin(shape: Shape4, p: int = 2, m: int = 4) -> list[Decomposition]:
    t, h, w = shape[:3]
    p, m = min(p, t), min(m, h, w)
    return [Decomposition((p, m, m)), Decomposition((p, m, m), shift_size=(p // 2, m // 2, m // 2))]


def _spatial_lg(shape: Shape4, m: int = 4) -> list[Decomposition]:
    t, h, w = shape[:3]
    if h <= m and w <= m:
        return [Decomposition((t, 1, 1)), Decomposition((1, h, w))]
    return [
        Decomposition((t, 1, 1)),
        Decomposition((1, m, m)),
        Decomposition((1, m, m), strategy=("d", "d", "d")),
    ]


def _axial_space_dilate(shape: Shape4, k: int = 2) -> list[Decomposition]:
    t, h, w = shape[:3]
    k = min(k, h, w)
    dil = ("d", "d", "d")
    return [
        Decomposition((t, 1, 1)),
        Decomposition((1, h // k, 1), strategy=dil), Decomposition((1, h // k, 1)),
        Decomposition((1, 1, w // k), strategy=dil), Decomposition((1, 1, w // k)),
    ]


# name -> builder; parametrised families: regex -> builder(shape, *ints)
_SELF_FIXED: dict[str, Callable[[Shape4], list[Decomposition]]] = {
    "full": _full,
    "axial": _axial,
    "divided_st": _divided_st,
    "video_swin": _video_swin,
    "spatial_lg_v1": _spatial_lg,
}
_SELF_FAMILIES: list[tuple[str, re.Pattern[str], Callable[..., list[Decomposition]]]] = [
    ("video_swin_{P}x{M}", re.compile(r"video_swin_(\d+)x(\d+)"), _video_swin),
    ("spatial_lg_{M}", re.compile(r"spatial_lg_(\d+)"), _spatial_lg),
    ("axial_space_dilate_{K}", re.compile(r"axial_space_dilate_(\d+)"), _axial_space_dilate),
]


def self_pattern(name: str, shape: Shape4) -> list[Decomposition]:
    """Decompositions of the self-attention pattern ``name`` for a level of shape (T, H, W, C).

    Raises
    ------
    ConfigError
        If ``name`` is unknown; the message lists the valid names.
    """
    if name in _SELF_FIXED:
        return _SELF_FIXED[name](shape)
    for _, regex, fn in _SELF_FAMILIES:
        match = regex.fullmatch(name)
        if match and all(int(g) > 0 for g in match.groups()):
            return fn(shape, *(int(g) for g in match.groups()))
    raise ConfigError(
        f"unknown self-attention pattern {name!r}; valid: {', '.join(self_pattern_names())}"
    )


def self_pattern_names() -> list[str]:
    """Valid self-attention pattern names (families shown with their size placeholders)."""
    return [*_SELF_FIXED, *(label for label, _, _ in _SELF_FAMILIES)]


# --------------------------------------------------------------------------- cross patterns

def _cross(shape: Shape4, k: int, variant: str) -> list[CrossDecomposition]:
    k = min(k, shape[1], shape[2])
    local = CrossDecomposition((k, k))
    if variant == "":
        return [local]
    dilated = CrossDecomposition((k, k), strategy=("d", "d", "d"))
    if variant == "_lg":
        return [local, dilated]
    return [local, dilated, CrossDecomposition((k, k), shift_hw=(k // 2, k // 2))]  # _heter


_CROSS = re.compile(r"cross_(\d+)x(\d+)(|_lg|_heter)")


def cross_pattern(name: str, mem_shape: Shape4) -> list[CrossDecomposition]:
    """Decompositions of the cross-attention pattern ``name`` for memory shape (T, H, W, C).

    Raises
    ------
    ConfigError
        If ``name`` is unknown; the message lists the valid names.
    """
    match = _CROSS.fullmatch(name)
    if match and match.group(1) == match.group(2) and int(match.group(1)) > 0:
        return _cross(mem_shape, int(match.group(1)), match.group(3))
    raise ConfigError(
        f"unknown cross-attention pattern {name!r}; valid: {', '.join(cross_pattern_names())}"
    )


def cross_pattern_names() -> list[str]:
    """Valid cross-attention pattern names (with the size placeholder K)."""
    return ["cross_{K}x{K}", "cross_{K}x{K}_lg", "cross_{K}x{K}_heter"]
