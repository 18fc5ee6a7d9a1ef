"""Cuboid attention: multi-head attention within the cuboids of a (T, H, W) grid.

A layer (with the bookkeeping of :mod:`xearthformer.nn.decomposition`) pads the grid to a
multiple of the cuboid size, optionally rolls it (cyclic shift), reorders it into
``(B, num_cuboids, cuboid_volume, C)`` and runs one batched attention over all cuboids at
once (:func:`torch.nn.functional.scaled_dot_product_attention`; for small cuboids on the CPU
the same maths as plain matmul-softmax-matmul, which is faster there, see :func:`attend`),
with a learned relative-position bias and the shift/padding mask folded into ``attn_mask``.
Global vectors (a few learned vectors per sample) are attended to by every cuboid
(local-to-global) and attend to every position and to each other (global-to-local/global).

Padding types (``padding_type``):

``zeros``
    pad with zeros *after* the layer norm; the zero positions take part in attention as keys
    (their keys and values are exactly zero, they still get a relative-position bias). Both
    official presets use this.
``ignore``
    pad with zeros and mask the padded positions out (as keys, and their own outputs are 0).
``nearest``
    repeat the edge values (replicate padding); they take part in attention.

Cuboid and shift sizes are clamped to the data shape as in the official code: an axis whose
data length is <= the cuboid size gets the data length and no shift; dilated axes get no shift.

Where this module deliberately differs from the official ``earthformer`` 0.2.1 code (none of
these are on the paths its presets use, which match it to float32 round-off):

* ``ignore`` + global vectors: the official global-to-local mask is laid out in grid order
  while the keys are in cuboid order, so it masks the wrong positions; here it masks the
  padded ones.
* ``nearest`` padding: the official code resamples the whole axis with nearest
  interpolation (stretching it); here the edge values are repeated, as the name says.
* A cuboid clamped to a smaller size along H or W (never the case inside an Earthformer,
  whose shapes are fixed at construction) gets the relative-position bias of its true
  offsets; the official code indexes the bias table as if the cuboid were unclamped.

>>> import torch
>>> from xearthformer.nn.patterns import Decomposition
>>> attn = CuboidSelfAttention(dim=8, num_heads=2, decomposition=Decomposition((2, 2, 2)))
>>> attn(torch.randn(1, 3, 4, 5, 8)).shape
torch.Size([1, 3, 4, 5, 8])
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, ShapeError
from .decomposition import (
    PADDING_TYPES,
    Grid,
    check_padding_type,
    clamp_decomposition,
    cross_attention_mask,
    from_cuboids,
    pad_grid,
    padding_amounts,
    real_query_axis,
    relative_position_index,
    self_attention_mask,
    self_valid_keys,
    split_self_attention_mask,
    to_cuboids,
)
from .layers import Dropout
from .layers import dropout as layer_dropout
from .patterns import CrossDecomposition, Decomposition

__all__ = ["CuboidCrossAttention", "CuboidSelfAttention", "PADDING_TYPES", "attend", "pad_grid", "padding_amounts"]


# --------------------------------------------------------------------------- attention maths
#
# Layout: the cuboids of a batch are the attention batch, ``(B * n, heads, L, head_dim)``:
# the head split is a view of the projection's output (no copy; the fused kernels read it
# with its strides), and the relative-position bias ``(heads, L, S)`` broadcasts over the
# batch without being materialised (only shift/padding masks vary per cuboid). The output
# goes back to the (B, T, H, W, C) grid in one copy (``from_cuboids`` merges the heads), and
# the output projection, being position-wise, runs after that, on the unpadded positions.

def _bias(table: Tensor, index: Tensor) -> Tensor:
    """(heads, q_volume, k_volume) relative-position bias."""
    q_vol, k_vol = index.shape
    return table[index.reshape(-1)].reshape(q_vol, k_vol, -1).permute(2, 0, 1)


@lru_cache(maxsize=512)
@torch.inference_mode(False)
def _on(t: Tensor, device: torch.device) -> Tensor:
    """``t`` (a cached CPU tensor) on ``device``, copied there once, not at every call."""
    return t.to(device)


@lru_cache(maxsize=512)
@torch.inference_mode(False)
def _open_rows(keep: Tensor, n_extra: int, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """``keep`` (n, L, S) (a cached mask) with ``n_extra`` always-kept keys appended, on ``device``
    as (n, 1, L, S'), every query row that keeps no key opened; and those rows (n, L) or None."""
    if n_extra:
        keep = F.pad(keep, (0, n_extra), value=True)
    rows = ~keep.any(-1)
    if not bool(rows.any()):
        return keep.to(device)[:, None], None
    return (keep | rows[..., None]).to(device)[:, None], rows.to(device)


def _attn_mask(bias: Tensor | None, keep: Tensor | None, n_extra: int, dtype: torch.dtype,
               device: torch.device) -> tuple[Tensor | None, Tensor | None]:
    """Fold bias (heads, L, S) and keep-mask (n, L, S) into one SDPA ``attn_mask``.

    ``n_extra`` global keys are appended (never masked). The mask broadcasts to
    (n, heads, L, S + n_extra): (heads, L, S') without ``keep``, else (n, 1 or heads, L, S').
    Returns ``(attn_mask, empty)``. Queries allowed no key at all (``empty``, (n, L), only
    possible with ``ignore`` padding) would make the softmax NaN: their row is opened here
    and the caller sets their output to zero, as the official masked softmax does. ``keep``
    is cached per shape and so is its device copy, so this costs no device synchronisation.
    """
    empty = None
    if keep is not None:
        keep, empty = _open_rows(keep, n_extra, device)
    if bias is None:
        return keep, empty
    bias = bias.to(dtype)
    if n_extra:
        bias = F.pad(bias, (0, n_extra))
    return (bias if keep is None else bias.masked_fill(~keep, float("-inf"))), empty


def per_sample(mask: Tensor | None, batch: int) -> Tensor | None:
    """A mask (n, heads, L, S) of the n cuboids repeated for each of ``batch`` samples:
    (batch * n, heads, L, S); masks without a cuboid axis (3-d) broadcast as they are."""
    if mask is None or mask.dim() < 4 or batch == 1:
        return mask
    return mask.expand(batch, *mask.shape).reshape(batch * mask.shape[0], *mask.shape[1:])


# Up to this many (query, key) scores per cuboid, CPU attention runs as plain matmul-softmax-
# matmul: for cuboid-sized sequences (tens of positions) that beats the fused CPU kernel,
# whose blocking is tuned for long sequences (about 9 % of a whole ENSO forward pass), and
# in training it avoids the fused op's slower fallback for a bias that needs a gradient.
# Longer sequences (e.g. a "full" pattern on a large grid) keep the fused, memory-lean kernel.
SMALL_CPU_SCORES = 64 * 64

# Self-attention without global vectors computes no query at a padded position when the padding
# lies at the end of one axis (``real_query_axis``): the cuboids of that axis's last block attend
# from their real positions only (their padded keys still take part), and with zero or masked
# padding the padded keys and values, a bias-free projection of zeros, are zeros appended after
# the projection instead of projected. The outputs equal those of the plain path, which
# projects and attends every padded position and crops the outputs afterwards (False: always).
REAL_QUERIES_ONLY = True


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout: float, scale: float) -> Tensor:
    """Attention over (N, heads, L, E) queries; ``mask`` (bool: True = attend, or additive
    float) broadcasts to (N, heads, L, S). :func:`~torch.nn.functional.scaled_dot_product_attention`
    except for small cuboids on the CPU (see ``SMALL_CPU_SCORES``); both compute the same."""
    if q.device.type != "cpu" or q.shape[-2] * k.shape[-2] > SMALL_CPU_SCORES:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale)
    scores = (q * scale) @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = scores.softmax(-1)
    if dropout:
        weights = layer_dropout(weights, dropout)
    return weights @ v


def zero_empty(out: Tensor, empty: Tensor | None, batch: int) -> Tensor:
    """Zero the output (B * n, heads, L, E) of queries that may attend nothing (``empty`` (n, L))."""
    if empty is None:
        return out
    keep = (~empty).to(out.dtype)[:, None, :, None]
    return (out.unflatten(0, (batch, -1)) * keep).flatten(0, 1)


def per_sample_heads(out: Tensor, batch: int) -> Tensor:
    """(B * n, heads, L, E) -> (B, n, L, heads, E), a view."""
    return out.unflatten(0, (batch, -1)).transpose(2, 3)


def _joint(q_a: Tensor, k_a: Tensor, q_b: Tensor, k_b: Tensor) -> tuple[Tensor, Tensor]:
    """One query/key pair whose scores are ``q_a.k_a`` for keys a and ``q_b.k_b`` for keys b.

    When a and b use different query projections (separate global qkv), queries are
    concatenated along the feature axis and keys zero-padded to match, so a single softmax
    (one SDPA call) covers both key sets exactly.
    """
    if q_b is q_a:
        return q_a, torch.cat([k_a, k_b], dim=-2)
    k_a = F.pad(k_a, (0, q_b.shape[-1]))
    k_b = F.pad(k_b, (q_a.shape[-1], 0))
    return torch.cat([q_a, q_b], dim=-1), torch.cat([k_a, k_b], dim=-2)


def split_heads(x: Tensor, parts: int, heads: int, head_dim: int) -> Tensor:
    """(N, L, parts * heads * head_dim) -> (parts, N, heads, L, head_dim), a view."""
    return x.unflatten(-1, (parts, heads, head_dim)).permute(2, 0, 3, 1, 4)


def per_cuboid(x: Tensor) -> Tensor:
    """(B, n, L, C) -> (B * n, L, C): every cuboid of every sample is one attention batch."""
    return x.flatten(0, 1)


def _globals_per_cuboid(g: Tensor, n: int) -> Tensor:
    """Global keys/values (B, heads, G, E) repeated for the n cuboids: (B * n, heads, G, E)."""
    return g.unsqueeze(1).expand(-1, n, -1, -1, -1).flatten(0, 1)


def _norm(kind: str, dim: int) -> nn.Module:
    if kind == "layer_norm":
        return nn.LayerNorm(dim)
    raise ConfigError(f"norm_layer must be 'layer_norm', got {kind!r}")


class CuboidSelfAttention(nn.Module):
    """Multi-head self-attention within the cuboids of one decomposition (pre-norm, no residual).

    Parameters
    ----------
    dim, num_heads
        Channels and heads (``dim % num_heads == 0``).
    decomposition
        Cuboid size, strategy and shift; clamped to the data shape at run time.
    padding_type
        ``zeros``, ``ignore`` or ``nearest`` (see the module docstring).
    use_global_vector, use_global_self_attn, separate_global_qkv, global_dim_ratio
        Global-vector options, as in the official code.

    Forward: ``x`` (B, T, H, W, dim) [, ``global_vectors`` (B, G, ratio * dim)] -> same shapes.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        decomposition: Decomposition,
        padding_type: str = "zeros",
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        use_final_proj: bool = True,
        use_relative_pos: bool = True,
        norm_layer: str = "layer_norm",
        use_global_vector: bool = False,
        use_global_self_attn: bool = False,
        separate_global_qkv: bool = False,
        global_dim_ratio: int = 1,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"dim={dim} is not divisible by num_heads={num_heads}")
        if global_dim_ratio != 1 and not separate_global_qkv:
            raise ConfigError("global_dim_ratio != 1 needs separate_global_qkv=True")
        check_padding_type(padding_type)
        self.dim, self.num_heads = dim, num_heads
        self.head_dim = dim // num_heads
        self.decomposition = decomposition
        self.padding_type = padding_type
        self.attn_drop, self.use_final_proj = attn_drop, use_final_proj
        self.use_relative_pos = use_relative_pos
        self.use_global_vector, self.use_global_self_attn = use_global_vector, use_global_self_attn
        self.separate_global_qkv, self.global_dim_ratio = separate_global_qkv, global_dim_ratio
        size = decomposition.cuboid_size
        if use_relative_pos:
            rows = math.prod(2 * c - 1 for c in size)
            self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
            self.register_buffer("relative_position_index", relative_position_index(size, size, size).clone())
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        gdim = global_dim_ratio * dim
        if use_global_vector:
            if separate_global_qkv:
                self.l2g_q_net = nn.Linear(dim, dim, bias=False)
                self.l2g_global_kv_net = nn.Linear(gdim, 2 * dim, bias=False)
                self.g2l_global_q_net = nn.Linear(gdim, dim, bias=False)
                self.g2l_k_net = nn.Linear(dim, dim, bias=False)
                self.g2l_v_net = nn.Linear(dim, gdim, bias=False)
                if use_global_self_attn:
                    self.g2g_global_qkv_net = nn.Linear(gdim, 3 * gdim, bias=False)
            else:
                self.global_qkv = nn.Linear(dim, 3 * dim, bias=False)
        if use_final_proj:
            self.proj = nn.Linear(dim, dim)
            if use_global_vector:
                self.global_proj = nn.Linear(gdim, gdim)
        self.proj_drop = Dropout(proj_drop)
        self.norm = _norm(norm_layer, dim)
        if use_global_vector:
            self.global_vec_norm = _norm(norm_layer, gdim)

    def _heads(self, x: Tensor, parts: int, head_dim: int | None = None) -> Tensor:
        """(N, L, parts * heads * hd) -> (parts, N, heads, L, hd), a view."""
        return split_heads(x, parts, self.num_heads, head_dim or self.head_dim)

    def _index(self, size: Grid, device: torch.device) -> Tensor:
        if size == tuple(self.decomposition.cuboid_size):
            return self.relative_position_index
        built = tuple(self.decomposition.cuboid_size)
        return _on(relative_position_index(built, size, size), device)

    def forward(self, x: Tensor, global_vectors: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        if x.dim() != 5 or x.shape[-1] != self.dim:
            raise ShapeError(f"expected x of shape (B, T, H, W, {self.dim}), got {tuple(x.shape)}")
        if self.use_global_vector and global_vectors is None:
            raise ShapeError("this layer uses global vectors: pass global_vectors (B, G, C)")
        x = self.norm(x)
        b, t, h, w, _ = x.shape
        grid = (t, h, w)
        d = clamp_decomposition(grid, self.decomposition)
        scale = self.head_dim ** -0.5
        dropout = self.attn_drop if self.training else 0.0
        axis = None if self.use_global_vector or not REAL_QUERIES_ONLY else real_query_axis(grid, d)
        if axis is not None:
            x = self._attend_real_queries(x, grid, d, axis, scale, dropout)
            return self.proj_drop(self.proj(x)) if self.use_final_proj else x
        pads = padding_amounts(grid, d.cuboid_size)
        padded = tuple(n + p for n, p in zip(grid, pads))
        x = pad_grid(x, pads, self.padding_type)
        if any(d.shift_size):
            x = torch.roll(x, [-s for s in d.shift_size], dims=(1, 2, 3))
        xc = to_cuboids(x, d.cuboid_size, d.strategy)  # (B, n, v, C)
        qkv = self.qkv(xc)  # (B, n, v, 3C)
        q, k, v = self._heads(per_cuboid(qkv), 3)  # (B * n, heads, v, hd) views
        keep = self_attention_mask(grid, d, self.padding_type)
        bias = self._rel_bias(d.cuboid_size, d.cuboid_size, x.device)
        new_global = None
        if not self.use_global_vector:
            out = self._local(q, k, v, bias, keep, b, scale, dropout)
        else:  # every query can attend the global vectors: no empty rows
            out, new_global = self._with_globals(xc, qkv, global_vectors, bias, keep, grid, d, scale, dropout)
        # back to the grid straight from (B * n, heads, v, hd): one copy; the projection is
        # position-wise, so it runs after the reordering, on the unpadded positions only
        x = from_cuboids(per_sample_heads(out, b), d.cuboid_size, d.strategy, padded)  # type: ignore[arg-type]
        if any(d.shift_size):
            x = torch.roll(x, list(d.shift_size), dims=(1, 2, 3))
        x = x[:, :t, :h, :w]
        if self.use_final_proj:
            x = self.proj_drop(self.proj(x))
            if new_global is not None:
                new_global = self.proj_drop(self.global_proj(new_global))
        return x if new_global is None else (x, new_global)

    def _rel_bias(self, q_size: Grid, k_size: Grid, device: torch.device) -> Tensor | None:
        """(heads, q_volume, k_volume) bias between cuboids of ``q_size`` and ``k_size``, or None."""
        if not self.use_relative_pos:
            return None
        if q_size != k_size:
            index = _on(relative_position_index(tuple(self.decomposition.cuboid_size), q_size, k_size), device)
        else:
            index = self._index(q_size, device)
        return _bias(self.relative_position_bias_table, index)

    @staticmethod
    def _local(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, keep: Tensor | None, b: int, scale: float,
               dropout: float) -> Tensor:
        """Attention within the cuboids (B * n, heads, L, hd), masked by ``keep`` (n, L, S) or None."""
        mask, empty = _attn_mask(bias, keep, 0, q.dtype, q.device)
        return zero_empty(attend(q, k, v, per_sample(mask, b), dropout, scale), empty, b)

    def _attend_real_queries(self, x: Tensor, grid: Grid, d: Decomposition, axis: int, scale: float,
                             dropout: float) -> Tensor:
        """The local attention output (B, T, H, W, C), before the projection, of the normed ``x``
        (B, T, H, W, C) for a decomposition padded at the end of ``axis``
        (:func:`~xearthformer.nn.decomposition.real_query_axis`), computed for real queries only.

        The blocks of cuboids before the last one along ``axis`` have no padding there and run as
        usual; the last block's cuboids attend from their ``real`` real positions (query cuboids of
        that length along ``axis``) to all positions of the padded cuboid.
        """
        b, size, dim = x.shape[0], d.cuboid_size, 1 + axis
        pads = list(padding_amounts(grid, size))
        pad, pads[axis] = pads[axis], 0
        real = size[axis] - pad
        x = pad_grid(x, tuple(pads), self.padding_type)  # the other axes, as usual
        if any(d.shift_size):  # (none along ``axis``)
            x = torch.roll(x, [-s for s in d.shift_size], dims=(1, 2, 3))
        edge = grid[axis] - real  # where the last block starts
        keep_head, keep_tail = split_self_attention_mask(grid, d, self.padding_type, axis)
        # the blocks before the last one: no padding along ``axis``
        head = x.narrow(dim, 0, edge)
        q, k, v = self._heads(per_cuboid(self.qkv(to_cuboids(head, size, d.strategy))), 3)
        out = self._local(q, k, v, self._rel_bias(size, size, x.device), keep_head, b, scale, dropout)
        parts = [from_cuboids(per_sample_heads(out, b), size, d.strategy, tuple(head.shape[1:4]))]
        # the last block: queries at its real positions only
        tail = x.narrow(dim, edge, real)
        q_size = tuple(real if i == axis else c for i, c in enumerate(size))
        if self.padding_type == "nearest":  # padded keys repeat the edge: project them as well
            qkv = self.qkv(to_cuboids(pad_grid(tail, tuple(pad if i == axis else 0 for i in range(3)), "nearest"),
                                      size, d.strategy))
            q, k, v = self._heads(per_cuboid(qkv), 3)
            q = q.unflatten(2, size).narrow(2 + axis, 0, real).flatten(2, 4)
        else:  # zero (or masked-out) padding: its keys and values are zeros, appended here
            q, k, v = self._heads(per_cuboid(self.qkv(to_cuboids(tail, q_size, d.strategy))), 3)
            zeros = (0, 0) * (3 - axis) + (0, pad)  # pad the in-cuboid ``axis`` (then head_dim) of (.., *q_size, hd)
            k, v = (F.pad(t.unflatten(2, q_size), zeros).flatten(2, 4) for t in (k, v))
        out = self._local(q, k, v, self._rel_bias(q_size, size, x.device), keep_tail, b, scale, dropout)
        parts.append(from_cuboids(per_sample_heads(out, b), q_size, d.strategy, tuple(tail.shape[1:4])))
        x = torch.cat(parts, dim=dim)
        if any(d.shift_size):
            x = torch.roll(x, list(d.shift_size), dims=(1, 2, 3))
        return x[:, :grid[0], :grid[1], :grid[2]]

    def _with_globals(self, xc: Tensor, qkv: Tensor, g: Tensor, bias: Tensor | None,
                      keep: Tensor | None, grid: Grid, d: Decomposition, scale: float, dropout: float
                      ) -> tuple[Tensor, Tensor]:
        """Local-to-(local + global) attention, and the global vectors' update.

        ``xc`` (B, n, v, C) are the cuboids, ``qkv`` (B, n, v, 3C) their local projections,
        ``g`` (B, G, ratio * C) the global vectors. Returns the local output
        (B * n, heads, v, hd) and the new global vectors (B, G, ratio * C) before projection.
        """
        b, n, vol, _ = xc.shape
        num_g = g.shape[1]
        g = self.global_vec_norm(g)
        ghd = self.global_dim_ratio * self.head_dim
        q, k, v = self._heads(per_cuboid(qkv), 3)  # (B * n, heads, v, hd) views
        # the global-to-local keys/values see all n * v positions of a sample at once
        flat = xc.flatten(1, 2)  # (B, n * v, C)
        if self.separate_global_qkv:
            l2g_q = self._heads(per_cuboid(self.l2g_q_net(xc)), 1)[0]
            gk, gv = self._heads(self.l2g_global_kv_net(g), 2)  # (B, heads, G, hd)
            g2l_q = self._heads(self.g2l_global_q_net(g), 1)[0]
            g2l_k = self._heads(self.g2l_k_net(flat), 1)[0]  # (B, heads, n * v, hd)
            g2l_v = self._heads(self.g2l_v_net(flat), 1, ghd)[0]
            if self.use_global_self_attn:
                g2g_q, g2g_k, g2g_v = self._heads(self.g2g_global_qkv_net(g), 3, ghd)
        else:
            qg, gk, gv = self._heads(self.global_qkv(g), 3)
            l2g_q, g2l_q = q, qg
            _, g2l_k, g2l_v = self._heads(qkv.flatten(1, 2), 3)  # the local k, v as (B, heads, n * v, hd)
            g2g_q, g2g_k, g2g_v = qg, gk, gv
        # local -> local and global: every cuboid also sees the G global keys
        q_all, k_all = _joint(q, k, l2g_q, _globals_per_cuboid(gk, n))
        v_all = torch.cat([v, _globals_per_cuboid(gv, n)], dim=-2)
        mask, _ = _attn_mask(bias, keep, num_g, q.dtype, q.device)
        out = attend(q_all, k_all, v_all, per_sample(mask, b), dropout, scale)
        # global -> every position (and -> globals)
        key_mask = None
        if self.padding_type == "ignore" and any(padding_amounts(grid, d.cuboid_size)):
            key_mask = _on(self_valid_keys(grid, d), q.device)[None]  # (1, keys): same for every global
        if self.use_global_self_attn:
            gq, gk_all = _joint(g2l_q, g2l_k, g2g_q, g2g_k)
            gv_all = torch.cat([g2l_v, g2g_v], dim=-2)
            if key_mask is not None:
                key_mask = F.pad(key_mask, (0, num_g), value=True)
        else:
            gq, gk_all, gv_all = g2l_q, g2l_k, g2l_v
        new_g = attend(gq, gk_all, gv_all, key_mask, dropout, scale)
        new_g = new_g.transpose(1, 2).reshape(b, num_g, -1)
        return out, new_g


class CuboidCrossAttention(nn.Module):
    """Decoder cross-attention: cuboids of the query grid attend to the paired memory cuboids.

    Query ``x`` (B, T_x, H, W, C) and memory (B, T_mem, H, W, C) are cut into the same number
    of cuboids: ``n_temporal`` groups along time (memory padded at the start, query at the
    end) and ``cuboid_hw`` blocks in space. The relative-position bias is indexed by the
    in-cuboid time offset ``t_x - t_mem`` and the spatial offset (official convention).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        decomposition: CrossDecomposition,
        max_temporal_relative: int,
        padding_type: str = "zeros",
        cross_last_n_frames: int | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        use_relative_pos: bool = True,
        norm_layer: str = "layer_norm",
        use_global_vector: bool = False,
        separate_global_qkv: bool = False,
        global_dim_ratio: int = 1,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"dim={dim} is not divisible by num_heads={num_heads}")
        check_padding_type(padding_type)
        shift = list(decomposition.shift_hw)
        for i in (0, 1):  # dilated axes never shift
            if decomposition.strategy[i + 1] == "d":
                shift[i] = 0
        self.decomposition = CrossDecomposition(
            decomposition.cuboid_hw, tuple(shift), decomposition.strategy, decomposition.n_temporal)  # type: ignore[arg-type]
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.max_temporal_relative = max_temporal_relative
        self.padding_type, self.cross_last_n_frames = padding_type, cross_last_n_frames
        self.attn_drop, self.use_relative_pos = attn_drop, use_relative_pos
        self.use_global_vector, self.separate_global_qkv = use_global_vector, separate_global_qkv
        bh, bw = decomposition.cuboid_hw
        if use_relative_pos:
            extent = (max_temporal_relative, bh, bw)
            self.relative_position_bias_table = nn.Parameter(
                torch.zeros(math.prod(2 * e - 1 for e in extent), num_heads))
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
            self.register_buffer("relative_position_index", relative_position_index(extent, extent, extent).clone())
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.kv_proj = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = Dropout(proj_drop)
        if use_global_vector and separate_global_qkv:
            self.l2g_q_net = nn.Linear(dim, dim, bias=False)
            self.l2g_global_kv_net = nn.Linear(global_dim_ratio * dim, 2 * dim, bias=False)
        self.norm = _norm(norm_layer, dim)

    def _heads(self, x: Tensor, parts: int) -> Tensor:
        return split_heads(x, parts, self.num_heads, self.head_dim)

    def forward(self, x: Tensor, mem: Tensor, mem_global_vectors: Tensor | None = None) -> Tensor:
        if self.cross_last_n_frames is not None:
            mem = mem[:, -min(self.cross_last_n_frames, mem.shape[1]):]
        b, t_x, h, w, c = x.shape
        t_m = mem.shape[1]
        if mem.shape[0] != b or mem.shape[2:] != x.shape[2:] or c != self.dim:
            raise ShapeError(f"query {tuple(x.shape)} and memory {tuple(mem.shape)} must share B, H, W and C={self.dim}")
        if max(t_x, t_m) >= self.max_temporal_relative:
            raise ShapeError(f"T_x={t_x} and T_mem={t_m} must be < max_temporal_relative={self.max_temporal_relative}")
        if self.use_global_vector and mem_global_vectors is None:
            raise ShapeError("this layer uses global vectors: pass mem_global_vectors (B, G, C)")
        d = self.decomposition
        n_t, (bh, bw) = d.n_temporal, d.cuboid_hw
        x = self.norm(x)
        pad_x = padding_amounts((t_x, h, w), (n_t, bh, bw))
        pad_m = padding_amounts((t_m, h, w), (n_t, bh, bw))
        x = pad_grid(x, pad_x, self.padding_type)
        mem = pad_grid(mem, pad_m, self.padding_type, time_left=True)
        x_grid = tuple(x.shape[1:4])
        if any(d.shift_hw):
            x = torch.roll(x, [-s for s in d.shift_hw], dims=(2, 3))
            mem = torch.roll(mem, [-s for s in d.shift_hw], dims=(2, 3))
        x_cub = (x.shape[1] // n_t, bh, bw)
        m_cub = (mem.shape[1] // n_t, bh, bw)
        xc = to_cuboids(x, x_cub, d.strategy)
        mc = to_cuboids(mem, m_cub, d.strategy)
        n = xc.shape[1]
        q = self._heads(per_cuboid(self.q_proj(xc)), 1)[0]  # (B * n, heads, Lx, hd)
        k, v = self._heads(per_cuboid(self.kv_proj(mc)), 2)
        keep = cross_attention_mask((t_x, h, w), (t_m, h, w), d, self.padding_type)
        bias = None
        if self.use_relative_pos:
            extent = (self.max_temporal_relative, bh, bw)
            bias = _bias(self.relative_position_bias_table, _on(relative_position_index(extent, x_cub, m_cub), x.device))
        scale = self.head_dim ** -0.5
        num_g = 0
        if self.use_global_vector:
            num_g = mem_global_vectors.shape[1]
            if self.separate_global_qkv:
                l2g_q = self._heads(per_cuboid(self.l2g_q_net(xc)), 1)[0]
                gk, gv = self._heads(self.l2g_global_kv_net(mem_global_vectors), 2)
            else:
                l2g_q = q
                gk, gv = self._heads(self.kv_proj(mem_global_vectors), 2)
            q, k = _joint(q, k, l2g_q, _globals_per_cuboid(gk, n))
            v = torch.cat([v, _globals_per_cuboid(gv, n)], dim=-2)
        mask, empty = _attn_mask(bias, keep, num_g, q.dtype, q.device)
        out = attend(q, k, v, per_sample(mask, b), self.attn_drop if self.training else 0.0, scale)
        x = from_cuboids(per_sample_heads(zero_empty(out, empty, b), b), x_cub, d.strategy, x_grid)  # type: ignore[arg-type]
        if any(d.shift_hw):
            x = torch.roll(x, list(d.shift_hw), dims=(2, 3))
        return self.proj_drop(self.proj(x[:, :t_x, :h, :w]))
