"""Building blocks of the Earthformer besides attention: FFN, patch merging, upsampling,
positional embedding, and the convolutional stems/heads that change the spatial resolution.

Module and parameter names follow the official implementation so that its state_dicts load
as they are. All tensors are channels-last: (B, T, H, W, C).

>>> import torch
>>> PatchMerging(8, 16, (1, 2, 2))(torch.randn(1, 3, 5, 4, 8)).shape   # H padded 5 -> 6
torch.Size([1, 3, 3, 2, 16])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from .decomposition import pad_grid, padding_amounts

ACTIVATIONS = ("leaky", "gelu", "relu", "elu", "sigmoid", "tanh", "softplus", "identity")


def activation(name: str) -> nn.Module:
    """Activation by its official name (``leaky`` is LeakyReLU(0.1))."""
    table = {
        "leaky": lambda: nn.LeakyReLU(0.1),
        "gelu": nn.GELU,
        "relu": nn.ReLU,
        "elu": nn.ELU,
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "softplus": nn.Softplus,
        "identity": nn.Identity,
    }
    if name not in table:
        raise ConfigError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return table[name]()


# Dropout masks on the CPU: one 64-bit draw (``random_`` over the full int64 range, about
# a tenth of the cost of a float32 ``rand`` per byte) gives two independent uniform int32s,
# and an int32 below ``round(p * 2**32) - 2**31`` drops its element. That is P(drop) = p to
# 2**-33 (finer than float32 ``rand``'s 2**-24 steps). The mask is kept as bool (1 byte, not
# the 4 of a float mask saved by ``x * mask``) and applied by a fused autograd function.
_INT32_SPAN = 2**32


def keep_mask(shape: Sequence[int], p: float, device: torch.device | str = "cpu") -> Tensor:
    """A bool mask of ``shape``: each element True (kept) with probability ``1 - p``,
    independently, drawn from the default torch generator of ``device``.

    >>> m = keep_mask((100_000,), 0.25)
    >>> m.dtype, abs(float(m.float().mean()) - 0.75) < 0.01
    (torch.bool, True)
    """
    n = math.prod(shape)
    bits = torch.empty((n + 1) // 2, dtype=torch.int64, device=device).random_(-(2**63), 2**63 - 1)
    threshold = int(round(p * _INT32_SPAN)) - 2**31
    return (bits.view(torch.int32)[:n] >= threshold).reshape(tuple(shape))


class _MaskScale(torch.autograd.Function):
    """``where(keep, x, 0) * scale`` with only the bool ``keep`` saved for the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, keep: Tensor, scale: float) -> Tensor:  # noqa: ANN401
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0.0).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # noqa: ANN401
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0.0).mul_(ctx.scale), None, None


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """:func:`torch.nn.functional.dropout` (zero with probability ``p``, scale the rest by
    ``1 / (1 - p)``) with a cheaper CPU mask: :func:`keep_mask`, applied by one fused
    autograd function that saves only the bool mask.

    On the CPU ``bernoulli_`` and ``rand`` dominate the cost of dropout, and the attention and
    FFN dropouts were a fifth to a third of an Earthformer training step; the distribution is
    the same. Elsewhere (CUDA's fused kernel is fast) this is ``F.dropout``.

    >>> x = torch.ones(10000)
    >>> y = dropout(x, 0.25)
    >>> [round(v, 4) for v in y.unique().tolist()], abs(float((y == 0).float().mean()) - 0.25) < 0.03
    ([0.0, 1.3333], True)
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not 0.0 < p < 1.0:
        return F.dropout(x, p, training)
    return _MaskScale.apply(x, keep_mask(x.shape, p, x.device), 1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """:class:`torch.nn.Dropout` through :func:`dropout` (faster on the CPU, same distribution)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)


class PositionwiseFFN(nn.Module):
    """Pre-norm feed-forward block with residual: ``x + drop(fc2(drop(act(fc1(norm(x))))))``."""

    def __init__(self, units: int, hidden: int, dropout: float = 0.0, act: str = "gelu", gated: bool = False) -> None:
        super().__init__()
        self.ffn_1 = nn.Linear(units, hidden)
        if gated:
            self.ffn_1_gate = nn.Linear(units, hidden)
        self.gated = gated
        self.activation = activation(act)
        self.ffn_2 = nn.Linear(hidden, units)
        self.layer_norm = nn.LayerNorm(units)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.layer_norm(x)
        if self.gated:
            y = self.activation(self.ffn_1_gate(y)) * self.ffn_1(y)
        else:
            y = self.activation(self.ffn_1(y))
        return x + self.dropout(self.ffn_2(self.dropout(y)))


def merged_shape(shape: Sequence[int], factor: Sequence[int], out_dim: int) -> tuple[int, int, int, int]:
    """(T, H, W, C) after patch merging by ``factor`` (sizes round up: merging pads)."""
    return (*(-(-n // f) for n, f in zip(shape[:3], factor)), out_dim)  # type: ignore[return-value]


class PatchMerging(nn.Module):
    """Space(-time) downsampling: pad to a multiple of ``factor``, stack each patch's
    channels, layer-norm and project linearly to ``out_dim``."""

    def __init__(self, dim: int, out_dim: int, factor: Sequence[int], padding_type: str = "zeros") -> None:
        super().__init__()
        self.factor = tuple(int(f) for f in factor)
        self.padding_type = padding_type
        volume = self.factor[0] * self.factor[1] * self.factor[2]
        self.reduction = nn.Linear(volume * dim, out_dim, bias=False)
        self.norm = nn.LayerNorm(volume * dim)
        self.out_dim = out_dim

    def out_shape(self, shape: Sequence[int]) -> tuple[int, int, int, int]:
        """(T, H, W, C) after merging."""
        return merged_shape(shape, self.factor, self.out_dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, h, w, c = x.shape
        x = pad_grid(x, padding_amounts((t, h, w), self.factor), self.padding_type)
        ft, fh, fw = self.factor
        t, h, w = x.shape[1:4]
        x = x.reshape(b, t // ft, ft, h // fh, fh, w // fw, fw, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
        x = x.reshape(b, t // ft, h // fh, w // fw, ft * fh * fw * c)
        return self.reduction(self.norm(x))


class Upsample(nn.Module):
    """Nearest-neighbour resize of H, W to ``size`` followed by a 3x3 convolution (per frame)."""

    def __init__(self, dim: int, out_dim: int, size: Sequence[int], kernel_size: int = 3) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.conv = nn.Conv2d(dim, out_dim, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        b, t, h, w, c = x.shape
        y = F.interpolate(x.reshape(b * t, h, w, c).permute(0, 3, 1, 2), size=self.size, mode="nearest")
        y = self.conv(y)
        return y.permute(0, 2, 3, 1).reshape(b, t, *self.size, -1)


class PosEmbed(nn.Module):
    """Learned positional embedding added to (B, T, H, W, C): ``t+h+w`` or ``t+hw``."""

    def __init__(self, dim: int, max_t: int, max_h: int, max_w: int, kind: str = "t+h+w") -> None:
        super().__init__()
        if kind not in ("t+h+w", "t+hw"):
            raise ConfigError(f"pos_embed_type must be 't+h+w' or 't+hw', got {kind!r}")
        self.kind, self.max_w = kind, max_w
        self.T_embed = nn.Embedding(max_t, dim)
        if kind == "t+h+w":
            self.H_embed = nn.Embedding(max_h, dim)
            self.W_embed = nn.Embedding(max_w, dim)
        else:
            self.HW_embed = nn.Embedding(max_h * max_w, dim)

    def forward(self, x: Tensor) -> Tensor:
        _, t, h, w, _ = x.shape
        dev = x.device
        emb = self.T_embed(torch.arange(t, device=dev))[:, None, None]
        if self.kind == "t+h+w":
            emb = emb + self.H_embed(torch.arange(h, device=dev))[None, :, None]
            emb = emb + self.W_embed(torch.arange(w, device=dev))[None, None, :]
        else:
            idx = torch.arange(h, device=dev)[:, None] * self.max_w + torch.arange(w, device=dev)
            emb = emb + self.HW_embed(idx)[None]
        return x + emb


def checkpoint_chunks(fn: Any, x: Tensor, chunk: int, per_frame: bool = True) -> Tensor:  # noqa: ANN401
    """``fn(x)`` in chunks of ``chunk`` frames (or samples), each recomputed in the backward pass.

    For a ``fn`` that maps every frame of ``x`` (B, T, ...) independently (``per_frame``; else
    every sample) to one output frame (sample): the chunks run through activation
    checkpointing, so the forward pass keeps only their inputs, and the backward pass holds
    the activations of one chunk at a time instead of the whole batch's. The full-resolution
    stem and head of an Earthformer are such functions. Equal to ``fn(x)`` to round-off.

    >>> f = nn.Conv2d(1, 2, 3, padding=1)
    >>> per_frame = lambda x: _per_frame(f, x)
    >>> x = torch.randn(2, 3, 8, 8, 1)
    >>> torch.allclose(checkpoint_chunks(per_frame, x, 2), per_frame(x), atol=1e-6)
    True
    """
    b, t = x.shape[:2]
    items = x.reshape(b * t, 1, *x.shape[2:]) if per_frame else x
    if items.shape[0] <= chunk:
        out = checkpoint(fn, items, use_reentrant=False)
    else:
        out = torch.cat([checkpoint(fn, part, use_reentrant=False) for part in items.split(chunk)])
    return out.reshape(b, t, *out.shape[2:]) if per_frame else out


def conv_block(in_dim: int, out_dim: int, layers: int, groups: int, act: str) -> nn.Sequential:
    """``layers`` x (3x3 conv, GroupNorm, activation)."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Conv2d(in_dim if i == 0 else out_dim, out_dim, 3, padding=1), nn.GroupNorm(groups, out_dim),
                 activation(act)]
    return nn.Sequential(*mods)


def _per_frame(block: nn.Module, x: Tensor) -> Tensor:
    b, t, h, w, c = x.shape
    y = block(x.reshape(b * t, h, w, c).permute(0, 3, 1, 2))
    return y.permute(0, 2, 3, 1).reshape(b, t, h, w, -1)


class ConvStem(nn.Module):
    """``initial_downsample_type="conv"``: convs (GroupNorm of 16 groups) then one patch merge."""

    def __init__(self, in_dim: int, dim: int, factor: Sequence[int], layers: int, act: str, padding_type: str) -> None:
        super().__init__()
        self.layers = layers
        self.conv_block = conv_block(in_dim, dim, layers, 16, act)
        self.patch_merge = PatchMerging(dim if layers else in_dim, dim, factor, padding_type)

    def out_shapes(self, shape: Sequence[int]) -> list[tuple[int, int, int, int]]:
        return [self.patch_merge.out_shape(shape)]

    def forward(self, x: Tensor) -> Tensor:
        if self.layers:
            x = _per_frame(self.conv_block, x)
        return self.patch_merge(x)


class ConvHead(nn.Module):
    """Inverse of :class:`ConvStem`: upsample to the target (T, H, W), then convs."""

    def __init__(self, dim: int, size: Sequence[int], layers: int, act: str) -> None:
        super().__init__()
        self.layers = layers
        self.conv_block = conv_block(dim, dim, layers, 16, act)
        self.upsample = Upsample(dim, dim, size[1:3])

    def forward(self, x: Tensor) -> Tensor:
        x = self.upsample(x)
        return _per_frame(self.conv_block, x) if self.layers else x


class StackConvStem(nn.Module):
    """``initial_downsample_type="stack_conv"``: repeated (convs, patch merge) stages;
    GroupNorm with ``max(1, dim // 4)`` groups."""

    def __init__(self, in_dim: int, dims: Sequence[int], factors: Sequence[int], convs: Sequence[int], act: str,
                 padding_type: str) -> None:
        super().__init__()
        self.convs = list(convs)
        self.conv_block_list = nn.ModuleList()
        self.patch_merge_list = nn.ModuleList()
        for i, (dim, factor, n) in enumerate(zip(dims, factors, convs)):
            prev = in_dim if i == 0 else dims[i - 1]
            self.conv_block_list.append(conv_block(prev, dim, n, max(1, dim // 4), act))
            self.patch_merge_list.append(PatchMerging(dim if n else prev, dim, (1, factor, factor), padding_type))

    def out_shapes(self, shape: Sequence[int]) -> list[tuple[int, int, int, int]]:
        shapes = []
        for merge in self.patch_merge_list:
            shape = merge.out_shape(shape)
            shapes.append(shape)
        return shapes

    def forward(self, x: Tensor) -> Tensor:
        for n, block, merge in zip(self.convs, self.conv_block_list, self.patch_merge_list):
            if n:
                x = _per_frame(block, x)
            x = merge(x)
        return x


class StackConvHead(nn.Module):
    """Inverse of :class:`StackConvStem`: per stage, upsample to ``shape[:3]`` then convs to
    ``shape[3]`` channels; ``shapes`` run from coarse to fine."""

    def __init__(self, in_dim: int, shapes: Sequence[Sequence[int]], convs: Sequence[int], act: str) -> None:
        super().__init__()
        self.convs = list(convs)
        self.upsample_list = nn.ModuleList()
        self.conv_block_list = nn.ModuleList()
        dim = in_dim
        for shape, n in zip(shapes, convs):
            self.upsample_list.append(Upsample(dim, dim, shape[1:3]))
            self.conv_block_list.append(conv_block(dim, shape[3], n, max(1, shape[3] // 4), act))
            dim = shape[3] if n else dim

    def forward(self, x: Tensor) -> Tensor:
        for n, up, block in zip(self.convs, self.upsample_list, self.conv_block_list):
            x = up(x)
            if n:
                x = _per_frame(block, x)
        return x
