"""Stacks of cuboid attention + FFN, and the hierarchical encoder and decoder built from them.

Names of modules follow the official implementation (``blocks``, ``down_layers``,
``self_blocks``, ``cross_blocks``, ``attn_l``, ``ffn_l``...), so official state_dicts load as
they are. Shapes are channels-last, (B, T, H, W, C).

>>> import torch
>>> from xearthformer.nn.patterns import self_pattern
>>> blk = SelfBlock(16, 4, self_pattern("axial", (4, 6, 6, 16)))
>>> blk(torch.randn(2, 4, 6, 6, 16)).shape
torch.Size([2, 4, 6, 6, 16])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .cuboid import CuboidCrossAttention, CuboidSelfAttention
from .layers import PatchMerging, PosEmbed, PositionwiseFFN, Upsample
from .patterns import CrossDecomposition, Decomposition


@dataclass(frozen=True)
class BlockOptions:
    """Options shared by every attention stack of a model."""

    num_heads: int = 4
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    ffn_drop: float = 0.0
    ffn_activation: str = "gelu"
    gated_ffn: bool = False
    norm_layer: str = "layer_norm"
    padding_type: str = "zeros"
    use_relative_pos: bool = True
    self_attn_use_final_proj: bool = True
    use_global_vector_ffn: bool = False
    use_global_self_attn: bool = False
    separate_global_qkv: bool = False
    global_dim_ratio: int = 1
    checkpoint_level: int = 0

    @classmethod
    def from_config(cls, config: Any) -> BlockOptions:
        """The options of a model config: every field of this class that ``config`` has an
        attribute of the same name for, taken from it (the others keep their defaults).

        >>> from types import SimpleNamespace
        >>> BlockOptions.from_config(SimpleNamespace(num_heads=8, base_units=64)).num_heads
        8
        """
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls) if hasattr(config, f.name)})


def _run(module: nn.Module, level: int, needed: int, *args: Tensor | None):  # noqa: ANN202
    """Call ``module``, through activation checkpointing when training at ``level >= needed``."""
    if level >= needed and module.training:
        return checkpoint(module, *args, use_reentrant=False)
    return module(*args)


class SelfBlock(nn.Module):
    """Stacked cuboid self-attention layers, each followed by an FFN (``inter_ffn``) or one
    FFN at the end; optional global vectors updated alongside."""

    def __init__(self, dim: int, opts: BlockOptions | int, decompositions: Sequence[Decomposition],
                 inter_ffn: bool = True, use_global_vector: bool = False) -> None:
        super().__init__()
        if isinstance(opts, int):
            opts = BlockOptions(num_heads=opts)
        self.opts, self.inter_ffn, self.use_global_vector = opts, inter_ffn, use_global_vector
        n_ffn = len(decompositions) if inter_ffn else 1
        gdim = opts.global_dim_ratio * dim
        self.ffn_l = nn.ModuleList(
            PositionwiseFFN(dim, 4 * dim, opts.ffn_drop, opts.ffn_activation, opts.gated_ffn) for _ in range(n_ffn))
        self.use_global_ffn = use_global_vector and opts.use_global_vector_ffn
        if self.use_global_ffn:
            self.global_ffn_l = nn.ModuleList(
                PositionwiseFFN(gdim, 4 * gdim, opts.ffn_drop, opts.ffn_activation, opts.gated_ffn)
                for _ in range(n_ffn))
        self.attn_l = nn.ModuleList(
            CuboidSelfAttention(
                dim, opts.num_heads, d, padding_type=opts.padding_type, attn_drop=opts.attn_drop,
                proj_drop=opts.proj_drop, use_final_proj=opts.self_attn_use_final_proj,
                use_relative_pos=opts.use_relative_pos, norm_layer=opts.norm_layer,
                use_global_vector=use_global_vector, use_global_self_attn=opts.use_global_self_attn,
                separate_global_qkv=opts.separate_global_qkv, global_dim_ratio=opts.global_dim_ratio)
            for d in decompositions)

    def _ffn(self, idx: int, x: Tensor, g: Tensor | None) -> tuple[Tensor, Tensor | None]:
        level = self.opts.checkpoint_level
        x = _run(self.ffn_l[idx], level, 1, x)
        if g is not None and self.use_global_ffn:
            g = _run(self.global_ffn_l[idx], level, 1, g)
        return x, g

    def forward(self, x: Tensor, g: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        level = self.opts.checkpoint_level
        for idx, attn in enumerate(self.attn_l):
            if self.use_global_vector:
                dx, dg = _run(attn, level, 2, x, g)
                x, g = x + dx, g + dg
            else:
                x = x + _run(attn, level, 2, x)
            if self.inter_ffn:
                x, g = self._ffn(idx, x, g)
        if not self.inter_ffn:
            x, g = self._ffn(0, x, g)
        return (x, g) if self.use_global_vector else x  # type: ignore[return-value]


class CrossBlock(nn.Module):
    """Stacked cuboid cross-attention layers (query attends to memory) with FFNs."""

    def __init__(self, dim: int, opts: BlockOptions, decompositions: Sequence[CrossDecomposition],
                 max_temporal_relative: int, inter_ffn: bool = True, last_n_frames: int | None = None,
                 use_global_vector: bool = False) -> None:
        super().__init__()
        self.opts, self.inter_ffn = opts, inter_ffn
        n_ffn = len(decompositions) if inter_ffn else 1
        self.ffn_l = nn.ModuleList(
            PositionwiseFFN(dim, 4 * dim, opts.ffn_drop, opts.ffn_activation, opts.gated_ffn) for _ in range(n_ffn))
        self.attn_l = nn.ModuleList(
            CuboidCrossAttention(
                dim, opts.num_heads, d, max_temporal_relative, padding_type=opts.padding_type,
                cross_last_n_frames=last_n_frames, attn_drop=opts.attn_drop, proj_drop=opts.proj_drop,
                use_relative_pos=opts.use_relative_pos, norm_layer=opts.norm_layer,
                use_global_vector=use_global_vector, separate_global_qkv=opts.separate_global_qkv,
                global_dim_ratio=opts.global_dim_ratio)
            for d in decompositions)

    def forward(self, x: Tensor, mem: Tensor, mem_global: Tensor | None = None) -> Tensor:
        level = self.opts.checkpoint_level
        for idx, attn in enumerate(self.attn_l):
            x = x + _run(attn, level, 2, x, mem, mem_global)
            if self.inter_ffn:
                x = _run(self.ffn_l[idx], level, 1, x)
        if not self.inter_ffn:
            x = _run(self.ffn_l[0], level, 1, x)
        return x


class Encoder(nn.Module):
    """Levels of self-attention blocks with patch merging in between.

    ``shapes[i]`` is the (T, H, W, C) of level i; ``patterns[i]`` its decompositions.
    Returns the output of every level (and the global vectors of every level).
    """

    def __init__(self, shapes: Sequence[Sequence[int]], depth: Sequence[int], downsample: Sequence[int],
                 patterns: Sequence[Sequence[Decomposition]], opts: BlockOptions, inter_ffn: bool = True,
                 num_global: int = 0) -> None:
        super().__init__()
        self.use_global = num_global > 0
        units = [s[3] for s in shapes]
        r = opts.global_dim_ratio
        if len(shapes) > 1:
            self.down_layers = nn.ModuleList(
                PatchMerging(units[i], units[i + 1], downsample, opts.padding_type) for i in range(len(shapes) - 1))
            if self.use_global:
                self.down_layer_global_proj = nn.ModuleList(
                    nn.Linear(r * units[i], r * units[i + 1]) for i in range(len(shapes) - 1))
        self.blocks = nn.ModuleList(
            nn.ModuleList(SelfBlock(units[i], opts, patterns[i], inter_ffn, self.use_global) for _ in range(depth[i]))
            for i in range(len(shapes)))

    def forward(self, x: Tensor, g: Tensor | None = None) -> tuple[list[Tensor], list[Tensor] | None]:
        outs: list[Tensor] = []
        globals_: list[Tensor] = []
        for i, level in enumerate(self.blocks):
            for block in level:
                if self.use_global:
                    x, g = block(x, g)
                else:
                    x = block(x)
            outs.append(x)
            if self.use_global:
                globals_.append(g)  # type: ignore[arg-type]
            if i < len(self.blocks) - 1:
                x = self.down_layers[i](x)
                if self.use_global:
                    g = self.down_layer_global_proj[i](g)
        return outs, (globals_ if self.use_global else None)


class Decoder(nn.Module):
    """Coarse-to-fine decoder: per level, self-attention and cross-attention to the encoder
    memory of that level, then upsampling to the next finer level.

    At the coarsest level the first self-attention is skipped (unless ``use_first_self_attn``),
    as in the official model: cross-attention comes first.
    """

    def __init__(self, t_out: int, mem_shapes: Sequence[Sequence[int]], depth: Sequence[int],
                 self_patterns: Sequence[Sequence[Decomposition]], cross_patterns: Sequence[Sequence[CrossDecomposition]],
                 opts: BlockOptions, inter_ffn: bool = True, cross_start: int = 0, last_n_frames: int | None = None,
                 hierarchical_pos_embed: bool = False, pos_embed_type: str = "t+h+w", upsample_kernel_size: int = 3,
                 use_first_self_attn: bool = False, use_self_global: bool = False, self_update_global: bool = True,
                 use_cross_global: bool = False) -> None:
        super().__init__()
        n = len(mem_shapes)
        self.depth, self.cross_start = list(depth), cross_start
        self.use_first_self_attn, self.hierarchical = use_first_self_attn, hierarchical_pos_embed
        self.use_self_global, self.self_update_global = use_self_global, self_update_global
        max_rel = mem_shapes[0][0] + t_out
        self.self_blocks = nn.ModuleList()
        for i in range(n):
            count = depth[i] - 1 if (i == n - 1 and not use_first_self_attn) else depth[i]
            self.self_blocks.append(nn.ModuleList(
                SelfBlock(mem_shapes[i][3], opts, self_patterns[i], inter_ffn, use_self_global) for _ in range(count)))
        self.cross_blocks = nn.ModuleList(
            nn.ModuleList(
                CrossBlock(mem_shapes[i][3], opts, cross_patterns[i], max_rel, inter_ffn, last_n_frames,
                           use_cross_global) for _ in range(depth[i]))
            for i in range(cross_start, n))
        if n > 1:
            self.upsample_layers = nn.ModuleList(
                Upsample(mem_shapes[i + 1][3], mem_shapes[i][3], mem_shapes[i][1:3], upsample_kernel_size)
                for i in range(n - 1))
            if hierarchical_pos_embed:
                self.hierarchical_pos_embed_l = nn.ModuleList(
                    PosEmbed(mem_shapes[i][3], t_out, mem_shapes[i][1], mem_shapes[i][2], pos_embed_type)
                    for i in range(n - 1))

    def _self(self, block: nn.Module, x: Tensor, g: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if not self.use_self_global:
            return block(x), g
        x, g_new = block(x, g)
        return x, (g_new if self.self_update_global else g)

    def forward(self, x: Tensor, mem: Sequence[Tensor], mem_global: Sequence[Tensor] | None = None) -> Tensor:
        n = len(mem)
        for i in range(n - 1, -1, -1):
            g = None if mem_global is None else mem_global[i]
            cross = self.cross_blocks[i - self.cross_start] if i >= self.cross_start else None
            if i == n - 1 and not self.use_first_self_attn:
                if cross is not None:
                    x = cross[0](x, mem[i], g)
                for idx in range(self.depth[i] - 1):
                    x, g = self._self(self.self_blocks[i][idx], x, g)
                    if cross is not None:
                        x = cross[idx + 1](x, mem[i], g)
            else:
                for idx in range(self.depth[i]):
                    x, g = self._self(self.self_blocks[i][idx], x, g)
                    if cross is not None:
                        x = cross[idx](x, mem[i], g)
            if i > 0:
                x = self.upsample_layers[i - 1](x)
                if self.hierarchical:
                    x = self.hierarchical_pos_embed_l[i - 1](x)
        return x
