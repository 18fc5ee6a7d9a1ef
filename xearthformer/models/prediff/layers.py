"""Parts shared by the PreDiff UNet and alignment network: the diffusion-time embedding, the
time-conditioned 3-D convolutional residual block, the attention-pool readout, the builders of
their cuboid-attention levels, input checks, and the official initialisation.

Module and parameter names follow the official code (``in_layers``, ``emb_layers``,
``out_layers``, ``skip_connection``, ``layer``, ``qkv_proj``...), so its state_dicts load as
they are. Tensors are channels-last, (B, T, H, W, C), unless a docstring says otherwise.

>>> import torch
>>> timestep_embedding(torch.tensor([0, 999]), 8).shape
torch.Size([2, 8])
>>> block = TimeEmbedResBlock(8, 16, emb_channels=32)
>>> block(torch.randn(2, 3, 4, 4, 8), torch.randn(2, 32)).shape
torch.Size([2, 3, 4, 4, 16])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import ShapeError
from ...nn.blocks import BlockOptions, SelfBlock
from ...nn.cuboid import CuboidSelfAttention
from ...nn.layers import Dropout, PatchMerging, PosEmbed, PositionwiseFFN, Upsample, merged_shape
from ...nn.patterns import self_pattern

__all__ = ["AttentionPool", "GroupNorm", "TimeEmbedResBlock", "TimeEmbedding", "official_init", "timestep_embedding"]


class GroupNorm(nn.GroupNorm):
    """:class:`torch.nn.GroupNorm` (same parameters and keys) that avoids a crash of torch's CPU
    backward (a segfault, seen with torch 2.13): a channels-last input that does not require
    grad, normalised with an affine weight that does (the data entering ``first_proj``, say).
    Such an input is made contiguous first; every other input takes the usual path."""

    def forward(self, x: Tensor) -> Tensor:
        if (x.device.type == "cpu" and not x.requires_grad and self.weight is not None
                and self.weight.requires_grad and torch.is_grad_enabled() and not x.is_contiguous()):
            x = x.contiguous()
        return super().forward(x)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding (N, dim) of diffusion times ``t`` (N,), laid out ``[cos, sin]``.

    Frequencies ``exp(-ln(max_period) * k / (dim // 2))``, k = 0 .. dim // 2 - 1; the raw
    (integer) time goes in, not rescaled; an odd ``dim`` gets a zero last column (official).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimeEmbedding(nn.Module):
    """``Linear(base, channels) -> SiLU -> Linear(channels, channels)`` on the sinusoid."""

    def __init__(self, base_channels: int, channels: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(nn.Linear(base_channels, channels), nn.SiLU(), nn.Linear(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


def _groups(channels: int) -> int:
    # official: GroupNorm of 32 groups when that divides the channels, else one group per channel
    return 32 if channels % 32 == 0 else channels


class TimeEmbedResBlock(nn.Module):
    """3-D convolutional residual block, optionally conditioned on a time embedding.

    ``h = conv3(SiLU(GN(x)))``; ``h += Linear(SiLU(emb))`` (or a scale-shift of the second
    norm); ``h = conv3(drop(SiLU(GN(h))))``; out = ``skip(x) + h`` with a 1x1x1 conv skip when
    the channels change. Input/output (B, T, H, W, C) channels-last; ``emb`` (B, emb_channels).
    """

    def __init__(self, channels: int, out_channels: int | None = None, emb_channels: int | None = None,
                 dropout: float = 0.0, use_scale_shift_norm: bool = False) -> None:
        super().__init__()
        out = out_channels or channels
        self.channels, self.out_channels = channels, out
        self.use_embed, self.use_scale_shift_norm = emb_channels is not None, use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm(_groups(channels), channels), nn.SiLU(),
                                       nn.Conv3d(channels, out, 3, padding=1))
        if emb_channels is not None:
            self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out if use_scale_shift_norm else out))
        self.out_layers = nn.Sequential(GroupNorm(_groups(out), out), nn.SiLU(), Dropout(dropout),
                                        nn.Conv3d(out, out, 3, padding=1))
        self.skip_connection = nn.Identity() if out == channels else nn.Conv3d(channels, out, 1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        x = x.permute(0, 4, 1, 2, 3)  # (B, C, T, H, W) views (channels-last strides: the fast CPU path)
        h = self.in_layers(x)
        if self.use_embed:
            if emb is None:
                raise ShapeError("this residual block is time-conditioned: pass emb (B, emb_channels)")
            e = self.emb_layers(emb).to(h.dtype)[:, :, None, None, None]
            if self.use_scale_shift_norm:
                scale, shift = e.chunk(2, dim=1)
                h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
            else:
                h = self.out_layers(h + e)
        else:
            h = self.out_layers(h)
        return (self.skip_connection(x) + h).permute(0, 2, 3, 4, 1)


class AttentionPool(nn.Module):
    """CLIP-style attention pooling (official ``AttentionPool3d``), channels-first.

    (B, C, L) tokens -> the token mean is put in front, a learned positional embedding
    (C, L + 1) added, one multi-head attention (1x1 Conv1d qkv; heads are channel blocks of
    each of q, k, v; q and k scaled by ``head_dim ** -1/4`` each), 1x1 Conv1d output; the
    output at the mean token, (B, out_channels), is returned.
    """

    def __init__(self, tokens: int, channels: int, num_heads: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.positional_embedding = nn.Parameter(torch.randn(channels, tokens + 1) / channels ** 0.5)
        self.qkv_proj = nn.Conv1d(channels, 3 * channels, 1)
        self.c_proj = nn.Conv1d(channels, out_channels or channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[1:] != (self.positional_embedding.shape[0], self.positional_embedding.shape[1] - 1):
            raise ShapeError(f"expected tokens (B, {self.positional_embedding.shape[0]}, "
                             f"{self.positional_embedding.shape[1] - 1}), got {tuple(x.shape)}")
        b = x.shape[0]
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1) + self.positional_embedding[None].to(x.dtype)
        qkv = self.qkv_proj(x)
        length = qkv.shape[-1]
        ch = qkv.shape[1] // (3 * self.num_heads)
        q, k, v = qkv.chunk(3, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.einsum("bct,bcs->bts", (q * scale).reshape(b * self.num_heads, ch, length),
                              (k * scale).reshape(b * self.num_heads, ch, length))
        weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
        a = torch.einsum("bts,bcs->bct", weight, v.reshape(b * self.num_heads, ch, length))
        return self.c_proj(a.reshape(b, -1, length))[:, :, 0]


def official_init(model: nn.Module) -> None:
    """Initialise a PreDiff cuboid network as the official ``reset_parameters`` does.

    Linear layers kaiming-normal (fan_in, linear) with zero bias, except the attention output
    projections, the FFNs' second layers and ``final_proj``, which start at zero (so each
    attention/FFN block starts as the identity and the UNet outputs 0); the last conv of
    every time-embedding residual block is zero too. Convolutions keep PyTorch's default init,
    norms start at (1, 0), positional embeddings at trunc-normal(0.02). The time-embedding MLP
    is not reset by the official code and keeps PyTorch's default init as well.
    """
    def linear(m: nn.Linear, zero: bool = False) -> None:
        if zero:
            nn.init.zeros_(m.weight)
        else:
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
        if m.bias is not None:
            nn.init.zeros_(m.bias)

    def norm(m: nn.Module) -> None:
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)

    for m in model.modules():
        if isinstance(m, TimeEmbedResBlock):
            for sub in m.modules():
                if isinstance(sub, nn.Linear):
                    linear(sub)
                elif isinstance(sub, nn.GroupNorm):
                    norm(sub)
                elif isinstance(sub, nn.Conv3d):
                    sub.reset_parameters()
            nn.init.zeros_(m.out_layers[-1].weight)
            nn.init.zeros_(m.out_layers[-1].bias)
        elif isinstance(m, PositionwiseFFN):
            linear(m.ffn_1)
            if m.gated:
                linear(m.ffn_1_gate)
            linear(m.ffn_2, zero=True)
            norm(m.layer_norm)
        elif isinstance(m, CuboidSelfAttention):
            linear(m.qkv)
            if m.use_final_proj:
                linear(m.proj, zero=True)
            norm(m.norm)
        elif isinstance(m, PatchMerging):
            linear(m.reduction)
            norm(m.norm)
        elif isinstance(m, Upsample):
            m.conv.reset_parameters()
        elif isinstance(m, PosEmbed):
            for emb in m.children():
                nn.init.trunc_normal_(emb.weight, std=0.02)
        elif isinstance(m, AttentionPool):
            m.qkv_proj.reset_parameters()
            m.c_proj.reset_parameters()
    final = getattr(model, "final_proj", None)
    if isinstance(final, nn.Linear):
        linear(final, zero=True)
    out = getattr(model, "out", None)
    if isinstance(out, nn.Sequential) and isinstance(out[0], nn.GroupNorm):
        norm(out[0])


# ------------------------------------------------------------------ the cuboid levels of both networks

def level_shapes(data_shape: Sequence[int], units: Sequence[int], factor: Sequence[int]) -> list[tuple[int, ...]]:
    """(T, H, W, C) of every level: the first at ``units[0]`` channels, then patch-merged."""
    shapes = [(*data_shape[:3], units[0])]
    for u in units[1:]:
        shapes.append(merged_shape(shapes[-1], factor, u))
    return shapes


def block_options(cfg: Any) -> BlockOptions:
    """The attention-stack options of a UNet/alignment config (no global vectors)."""
    return BlockOptions(
        num_heads=cfg.num_heads, attn_drop=cfg.attn_drop, proj_drop=cfg.proj_drop, ffn_drop=cfg.ffn_drop,
        ffn_activation=cfg.ffn_activation, gated_ffn=cfg.gated_ffn, norm_layer=cfg.norm_layer,
        padding_type=cfg.padding_type, use_relative_pos=cfg.use_relative_pos,
        self_attn_use_final_proj=cfg.self_attn_use_final_proj, checkpoint_level=cfg.checkpoint_level)


def self_blocks(cfg: Any, shapes: Sequence[Sequence[int]]) -> nn.ModuleList:
    """Per level, ``depth[i]`` stacks of cuboid self-attention (official StackCuboidSelfAttentionBlock)."""
    opts = block_options(cfg)
    patterns = cfg.level_patterns()
    return nn.ModuleList(
        nn.ModuleList(SelfBlock(shape[3], opts, self_pattern(patterns[i], shape), cfg.use_inter_ffn)
                      for _ in range(cfg.depth[i]))
        for i, shape in enumerate(shapes))


def time_blocks(cfg: Any, shapes: Sequence[Sequence[int]]) -> nn.ModuleList:
    """One time-conditioned residual block per level (reused for every depth iteration, as official)."""
    return nn.ModuleList(
        TimeEmbedResBlock(s[3], s[3], cfg.time_embed_channels, cfg.time_embed_dropout,
                          cfg.time_embed_use_scale_shift_norm)
        for s in shapes)


def with_indicator(context: Tensor, x: Tensor) -> Tensor:
    """``cat([context, x])`` along time plus a last channel that is 1 on the context frames, 0 after."""
    x = torch.cat([context, x], dim=1)
    indicator = torch.zeros_like(x[..., :1])
    indicator[:, :context.shape[1]] = 1.0
    return torch.cat([x, indicator], dim=-1)


def diffusion_times(t: Tensor | int, batch: int, device: torch.device) -> Tensor:
    """``t`` as a (batch,) tensor: a (batch,) tensor as it is, a scalar repeated."""
    t = torch.as_tensor(t, device=device)
    if t.dim() == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise ShapeError(f"t must be one diffusion time per sample, shape ({batch},), or a scalar; got {tuple(t.shape)}")
    return t


def check_shape(x: Tensor, expected: Sequence[int], name: str, fix: str) -> None:
    """ShapeError unless ``x`` is (N, *expected) (N any)."""
    if x.dim() != len(expected) + 1 or tuple(x.shape[1:]) != tuple(expected):
        raise ShapeError(f"{name} must have shape (N, {', '.join(map(str, expected))}), got {tuple(x.shape)}; {fix}")
