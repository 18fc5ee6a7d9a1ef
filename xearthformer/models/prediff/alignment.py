"""The PreDiff knowledge-alignment network: the official ``NoisyCuboidTransformerEncoder``.

``y = align(z_t, t)``: a statistic of the future (e.g. the mean intensity of each target
frame), predicted from the noisy latent ``z_t`` (N, T, h, w, c) at diffusion times ``t`` (N,),
of shape (N, out_len, out_channels) (``readout_seq``, the official setting) or
(N, out_channels). It is the down half of the UNet (same ``first_proj``, positional and time
embeddings, time-conditioned residual blocks and axial cuboid attention per level, patch
merging between levels), read out per frame by GroupNorm -> SiLU -> a CLIP-style attention
pool over the last level's h x w tokens plus their mean token.

The context: the official network ignores it (``align(z_t, t, context)`` is accepted and the
context unused, so callers can pass it uniformly). With ``AlignmentConfig.context_len > 0`` the
network also reads it: the context latents go in front of ``z_t`` along time with an
observation-indicator channel, as in the UNet, and the readout takes the last ``out_len``
(noisy) frames.

Module names equal the official ones, so the SEVIR-LR checkpoint
(``pretrained_sevirlr_alignment_avg_x_cuboid_v1.pt``) loads unchanged.

>>> import torch
>>> from xearthformer.models.prediff.config import preset
>>> align = NoisyCuboidTransformerEncoder(preset("tiny")[2])
>>> align(torch.randn(2, 6, 12, 12, 4), torch.tensor([0, 500])).shape
torch.Size([2, 6, 1])
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from ...errors import ShapeError
from ...nn.layers import PatchMerging, PosEmbed
from .config import AlignmentConfig
from .layers import (
    AttentionPool,
    GroupNorm,
    TimeEmbedding,
    TimeEmbedResBlock,
    check_shape,
    diffusion_times,
    level_shapes,
    official_init,
    self_blocks,
    time_blocks,
    timestep_embedding,
    with_indicator,
)

__all__ = ["NoisyCuboidTransformerEncoder"]


class NoisyCuboidTransformerEncoder(nn.Module):
    """Noisy-latent statistic predictor (official alignment network), channels-last.

    Parameters
    ----------
    config
        The architecture (:class:`~xearthformer.models.prediff.config.AlignmentConfig`), kept
        as ``align.config``; ``AlignmentConfig()`` is the official SEVIR-LR network.

    Examples
    --------
    >>> import torch
    >>> with torch.device("meta"):                       # the official SEVIR-LR network, no memory
    ...     align = NoisyCuboidTransformerEncoder(AlignmentConfig())
    >>> sum(p.numel() for p in align.parameters())
    8937033
    """

    def __init__(self, config: AlignmentConfig) -> None:
        super().__init__()
        self.config = cfg = config
        data_shape = cfg.data_shape
        units = cfg.level_units()
        factor = cfg.downsample_factor()
        self.mem_shapes = level_shapes(data_shape, units, factor)
        self.first_proj = TimeEmbedResBlock(data_shape[3], cfg.base_units, None, cfg.proj_drop)
        self.pos_embed = PosEmbed(cfg.base_units, *data_shape[:3], cfg.pos_embed_type)
        self.time_embed = TimeEmbedding(units[0], cfg.time_embed_channels)
        if len(units) > 1:
            self.downsample_layers = nn.ModuleList(
                PatchMerging(units[i], units[i + 1], factor, cfg.padding_type) for i in range(len(units) - 1))
        self.down_self_blocks = self_blocks(cfg, self.mem_shapes)
        self.down_time_embed_blocks = time_blocks(cfg, self.mem_shapes)
        last = self.mem_shapes[-1]
        tokens = math.prod(last[1:3]) if cfg.readout_seq else math.prod(last[:3])
        c = last[3]
        self.out = nn.Sequential(GroupNorm(min(c, 32), c), nn.SiLU(),
                                 AttentionPool(tokens, c, cfg.num_heads, cfg.out_channels))
        official_init(self)

    def forward(self, z_t: Tensor, t: Tensor | int, context: Tensor | None = None) -> Tensor:
        """The predicted statistic, (N, out_len, out_channels) or (N, out_channels).

        ``context`` (N, context_len, h, w, c) is required when the network was built with
        ``context_len > 0`` and ignored otherwise (the official network does not read it).
        """
        cfg = self.config
        check_shape(z_t, cfg.input_shape, "z_t (the noisy latent future)",
                    "it must match the alignment network's input_shape")
        x = z_t
        if cfg.context_len:
            if context is None:
                raise ShapeError(f"this alignment network reads the context (context_len={cfg.context_len}): "
                                 f"pass context (N, {cfg.context_len}, h, w, c)")
            check_shape(context, (cfg.context_len, *cfg.input_shape[1:]), "context (the latent context)",
                        "it must have context_len frames of the noisy latent's (h, w, c)")
            if context.shape[0] != z_t.shape[0]:
                raise ShapeError(f"z_t and context must have the same batch size, got {z_t.shape[0]} and "
                                 f"{context.shape[0]}")
            x = with_indicator(context.to(z_t.dtype), z_t)
        b = x.shape[0]
        x = self.pos_embed(self.first_proj(x))
        t = diffusion_times(t, b, x.device)
        emb = self.time_embed(timestep_embedding(t, cfg.level_units()[0]))
        for i in range(len(self.mem_shapes)):
            if i > 0:
                x = self.downsample_layers[i - 1](x)
            for block in self.down_self_blocks[i]:
                x = block(self.down_time_embed_blocks[i](x, emb))
        _, frames, h, w, c = x.shape
        if cfg.readout_seq:
            n = cfg.readout_len
            tokens = x[:, frames - n:].reshape(b * n, h * w, c).transpose(1, 2)  # (N * n, C, h * w)
            return self.out(tokens).reshape(b, n, -1)
        return self.out(x.reshape(b, frames * h * w, c).transpose(1, 2))
