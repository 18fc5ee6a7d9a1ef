"""Cuboid decomposition of a (T, H, W) grid: clamping, padding, cyclic shift, reordering into
cuboids, and the masks and relative-position indices that go with a decomposition.

Everything here is pure tensor bookkeeping (no parameters); the masks are cached per
(grid, decomposition) on the CPU. :mod:`xearthformer.nn.cuboid` runs attention on top.

>>> import torch
>>> x = torch.arange(24.).reshape(1, 2, 3, 4, 1)
>>> to_cuboids(x, (1, 3, 2), ("l", "l", "d")).shape          # 4 cuboids of 6 positions
torch.Size([1, 4, 6, 1])
>>> torch.equal(from_cuboids(to_cuboids(x, (1, 3, 2), ("l", "l", "d")), (1, 3, 2), ("l", "l", "d"), (2, 3, 4)), x)
True
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .patterns import CrossDecomposition, Decomposition

PADDING_TYPES = ("zeros", "ignore", "nearest")
Grid = tuple[int, int, int]
_Fn = TypeVar("_Fn", bound=Callable)


def _on_cpu(fn: _Fn) -> _Fn:
    """Run ``fn`` with the CPU as default device: its result is cached, and one built under
    ``with torch.device("meta")`` or ``torch.set_default_device(...)`` would be handed to every
    later caller (a meta-built model would leave meta index buffers in the next real one)."""
    @functools.wraps(fn)
    def on_cpu(*args):  # noqa: ANN002, ANN202
        if torch.compiler.is_compiling():  # traced into the graph (Dynamo cannot enter the context)
            return fn(*args)
        with torch.device("cpu"):
            return fn(*args)

    return on_cpu  # type: ignore[return-value]


def check_padding_type(padding_type: str) -> None:
    """Raise ConfigError unless ``padding_type`` is one of :data:`PADDING_TYPES`."""
    if padding_type not in PADDING_TYPES:
        raise ConfigError(f"padding_type must be one of {PADDING_TYPES}, got {padding_type!r}")


def clamp_decomposition(grid: Grid, d: Decomposition) -> Decomposition:
    """Clamp cuboid and shift sizes to the data grid (the official rule).

    Dilated axes never shift; an axis with data length <= cuboid size uses the data length
    and no shift.
    """
    size, shift = list(d.cuboid_size), list(d.shift_size)
    for i, length in enumerate(grid):
        if d.strategy[i] == "d":
            shift[i] = 0
        if length <= size[i]:
            size[i], shift[i] = length, 0
    return Decomposition(tuple(size), d.strategy, tuple(shift))  # type: ignore[arg-type]


def padding_amounts(grid: Grid, cuboid: Grid) -> Grid:
    """Amount to pad each axis of ``grid`` up to a multiple of ``cuboid``."""
    return tuple((-n) % c for n, c in zip(grid, cuboid))  # type: ignore[return-value]


def pad_grid(x: Tensor, pads: Grid, padding_type: str, time_left: bool = False) -> Tensor:
    """Pad ``x`` (B, T, H, W, C) at the end of T, H, W (T at the start if ``time_left``)."""
    if not any(pads):
        return x
    if padding_type == "nearest":
        for axis, pad in zip((1, 2, 3), pads):
            if pad:
                n = x.shape[axis]
                left = time_left and axis == 1
                idx = torch.arange(-pad, n, device=x.device) if left else torch.arange(n + pad, device=x.device)
                x = x.index_select(axis, idx.clamp(0, n - 1))
        return x
    pt, ph, pw = pads
    t_pad = (pt, 0) if time_left else (0, pt)
    return F.pad(x, (0, 0, 0, pw, 0, ph, *t_pad))


def _reorder_plan(grid: Grid, cuboid: Grid, strategy: tuple[str, ...]) -> tuple[list[int], list[int]]:
    """Split shape and permutation taking (B, T, H, W, C) to (B, blocks..., in-cuboid..., C)."""
    split: list[int] = []
    block_axes: list[int] = []
    inner_axes: list[int] = []
    for i, (n, c, s) in enumerate(zip(grid, cuboid, strategy)):
        if s == "l":  # contiguous: position = block * c + inner
            split += [n // c, c]
            block_axes.append(1 + 2 * i)
            inner_axes.append(2 + 2 * i)
        else:  # dilated: position = inner * (n // c) + block
            split += [c, n // c]
            block_axes.append(2 + 2 * i)
            inner_axes.append(1 + 2 * i)
    return split, [0, *block_axes, *inner_axes, 7]


def to_cuboids(x: Tensor, cuboid: Grid, strategy: tuple[str, ...]) -> Tensor:
    """Reorder (B, T, H, W, C), divisible by ``cuboid``, into (B, num_cuboids, volume, C)."""
    b, t, h, w, c = x.shape
    split, perm = _reorder_plan((t, h, w), cuboid, strategy)
    x = x.reshape(b, *split, c).permute(perm)
    return x.reshape(b, -1, math.prod(cuboid), c)


def from_cuboids(x: Tensor, cuboid: Grid, strategy: tuple[str, ...], grid: Grid) -> Tensor:
    """Inverse of :func:`to_cuboids`: (B, num_cuboids, volume, *C) -> (B, T, H, W, prod(C)).

    Trailing channel dims ``C`` (e.g. heads, head_dim of a strided attention output) are
    merged at the end, so the whole reordering costs at most one copy.
    """
    b, rest = x.shape[0], tuple(x.shape[3:])
    split, perm = _reorder_plan(grid, cuboid, strategy)
    permuted_shape = [b] + [split[p - 1] for p in perm[1:-1]]
    inverse = sorted(range(7), key=perm.__getitem__)  # perm[:7] orders the batch and grid axes
    x = x.reshape(*permuted_shape, *rest).permute(*inverse, *range(7, 7 + len(rest)))
    return x.reshape(b, *grid, math.prod(rest))


@lru_cache(maxsize=512)
@torch.inference_mode(False)  # cached tensors must stay usable by autograd after an inference call
@_on_cpu
def relative_position_index(extent: Grid, q_size: Grid, k_size: Grid) -> Tensor:
    """Index into a bias table of ``prod(2 * extent - 1)`` rows for each (query, key) pair.

    Queries/keys are the row-major positions of cuboids of ``q_size``/``k_size`` (each
    <= ``extent`` per axis); the row is that of the offset ``q - k`` per axis.
    """
    def coords(size: Grid) -> Tensor:
        grids = torch.meshgrid(*(torch.arange(n) for n in size), indexing="ij")
        return torch.stack([g.reshape(-1) for g in grids], dim=-1)  # (volume, 3)

    offset = coords(q_size)[:, None, :] - coords(k_size)[None, :, :] + torch.tensor(extent) - 1
    span = [2 * e - 1 for e in extent]
    strides = torch.tensor([span[1] * span[2], span[2], 1])
    return (offset * strides).sum(-1)


def _regions(length: int, cuboid: int, shift: int) -> Tensor:
    """Shift-window region of each (rolled) position along one axis (the official slices)."""
    region = torch.zeros(length, dtype=torch.long)
    if shift > 0:
        region[length - cuboid:] = 1
        region[length - shift:] = 2
    return region


def _region_grid(grid: Grid, cuboid: Grid, shift: Grid) -> Tensor:
    rt, rh, rw = (_regions(n, c, s) for n, c, s in zip(grid, cuboid, shift))
    return (rt[:, None, None] * 9 + rh[None, :, None] * 3 + rw[None, None, :])[None, ..., None]


def _valid_grid(grid: Grid, pads: Grid, time_left: bool = False) -> Tensor:
    valid = torch.ones((1, *grid, 1), dtype=torch.bool)
    return pad_grid(valid, pads, "zeros", time_left=time_left)


@lru_cache(maxsize=256)
@torch.inference_mode(False)
@_on_cpu
def self_attention_mask(grid: Grid, d: Decomposition, padding_type: str) -> Tensor | None:
    """Mask of one (clamped) self-attention decomposition over the unpadded ``grid``.

    (num_cuboids, volume, volume) bool, True where the query may attend the key (same shift
    region; with ``ignore`` both unpadded), or None when nothing is masked.
    """
    pads = padding_amounts(grid, d.cuboid_size)
    padded = tuple(n + p for n, p in zip(grid, pads))
    shifted = any(d.shift_size)
    masked_padding = padding_type == "ignore" and any(pads)
    if not (shifted or masked_padding):
        return None
    region = to_cuboids(_region_grid(padded, d.cuboid_size, d.shift_size), d.cuboid_size, d.strategy)[0, ..., 0]
    keep = region[:, :, None] == region[:, None, :]
    if masked_padding:
        valid = _valid_grid(grid, pads)
        if shifted:
            valid = torch.roll(valid, [-s for s in d.shift_size], dims=(1, 2, 3))
        valid = to_cuboids(valid, d.cuboid_size, d.strategy)[0, ..., 0]
        keep = keep & valid[:, :, None] & valid[:, None, :]
    return keep


def real_query_axis(grid: Grid, d: Decomposition) -> int | None:
    """An axis along which only the last block of cuboids holds padding, at its end: the first
    padded axis of ``grid`` with contiguous (``l``) cuboids and no shift; None if there is none.

    Along it, the last block's queries at padded positions can be skipped (their outputs are
    cropped away) while its padded keys still take part. (A dilated axis spreads the padding
    over every block; a shift rolls it into the others.)

    >>> real_query_axis((14, 4, 4), Decomposition((12, 1, 1)))
    0
    >>> real_query_axis((12, 4, 4), Decomposition((12, 1, 1))) is None   # nothing padded
    True
    """
    pads = padding_amounts(grid, d.cuboid_size)
    for axis, pad in enumerate(pads):
        if pad and d.strategy[axis] == "l" and not d.shift_size[axis]:
            return axis
    return None


@lru_cache(maxsize=256)
@torch.inference_mode(False)
@_on_cpu
def split_self_attention_mask(grid: Grid, d: Decomposition, padding_type: str,
                              axis: int) -> tuple[Tensor | None, Tensor | None]:
    """:func:`self_attention_mask` split at the last block of cuboids along ``axis``
    (:func:`real_query_axis`): the masks of the cuboids before it, and of its cuboids with
    only the query rows of real positions along ``axis``; (None, None) when nothing is masked.
    """
    keep = self_attention_mask(grid, d, padding_type)
    if keep is None:
        return None, None
    size = d.cuboid_size
    blocks = tuple(-(-n // c) for n, c in zip(grid, size))
    real = grid[axis] - (blocks[axis] - 1) * size[axis]
    keep = keep.unflatten(0, blocks)
    head = keep.narrow(axis, 0, blocks[axis] - 1).flatten(0, 2)
    tail = keep.narrow(axis, blocks[axis] - 1, 1).flatten(0, 2)
    tail = tail.unflatten(1, size).narrow(1 + axis, 0, real).flatten(1, 3)
    return head.contiguous(), tail.contiguous()


@lru_cache(maxsize=256)
@torch.inference_mode(False)
@_on_cpu
def self_valid_keys(grid: Grid, d: Decomposition) -> Tensor:
    """(num_cuboids * volume,) bool: which reordered positions are real (not padding)."""
    pads = padding_amounts(grid, d.cuboid_size)
    valid = torch.roll(_valid_grid(grid, pads), [-s for s in d.shift_size], dims=(1, 2, 3))
    return to_cuboids(valid, d.cuboid_size, d.strategy).reshape(-1)


@lru_cache(maxsize=256)
@torch.inference_mode(False)
@_on_cpu
def cross_attention_mask(x_grid: Grid, mem_grid: Grid, d: CrossDecomposition, padding_type: str) -> Tensor | None:
    """Mask of one cross-attention decomposition; see :func:`self_attention_mask`."""
    n_t = d.n_temporal
    bh, bw = d.cuboid_hw
    pad_x = padding_amounts(x_grid, (n_t, bh, bw))
    pad_m = padding_amounts(mem_grid, (n_t, bh, bw))
    shifted = any(d.shift_hw)
    masked_padding = padding_type == "ignore" and (any(pad_x) or any(pad_m))
    if not (shifted or masked_padding):
        return None
    x_padded = tuple(n + p for n, p in zip(x_grid, pad_x))
    m_padded = tuple(n + p for n, p in zip(mem_grid, pad_m))
    x_cub = (x_padded[0] // n_t, bh, bw)
    m_cub = (m_padded[0] // n_t, bh, bw)
    shift = (0, *d.shift_hw)
    rx = to_cuboids(_region_grid(x_padded, (1, bh, bw), shift), x_cub, d.strategy)[0, ..., 0]
    rm = to_cuboids(_region_grid(m_padded, (1, bh, bw), shift), m_cub, d.strategy)[0, ..., 0]
    keep = rx[:, :, None] == rm[:, None, :]
    if masked_padding:
        vx = torch.roll(_valid_grid(x_grid, pad_x), [-s for s in shift], dims=(1, 2, 3))
        vm = torch.roll(_valid_grid(mem_grid, pad_m, time_left=True), [-s for s in shift], dims=(1, 2, 3))
        vx = to_cuboids(vx, x_cub, d.strategy)[0, ..., 0]
        vm = to_cuboids(vm, m_cub, d.strategy)[0, ..., 0]
        keep = keep & vx[:, :, None] & vm[:, None, :]
    return keep
