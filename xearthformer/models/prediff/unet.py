"""The PreDiff denoiser: the official ``CuboidTransformerUNet`` ("Earthformer-UNet").

``eps = unet(x_t, t, cond)``: the noisy latent future ``x_t`` (N, T_out, h, w, c), integer
diffusion times ``t`` (N,) and the latent context ``cond`` (N, T_in, h, w, c) give the
predicted noise (N, T_out, h, w, c). Inside (all as the official code):

1. input assembly: ``cat([cond, x_t])`` along time (context first) plus an observation-indicator
   channel (1 on the T_in context frames, 0 on the target frames): (N, T_in + T_out, h, w, c + 1);
2. ``first_proj`` (3-D convolutional residual block to ``base_units`` channels), learned
   positional embedding t+h+w;
3. time embedding: sinusoid ([cos, sin], raw integer t) -> Linear-SiLU-Linear to
   ``time_embed_channels_mult * base_units``;
4. down path: per level, patch merging (not at level 0), then ``depth[i]`` x [time-conditioned
   residual block -> axial cuboid self-attention stack]; the residual block is one module per
   level, reused at every depth iteration;
5. up path from the deepest level: add the skip (the down path's output of that level; not at
   the deepest), the same loop with the up path's modules, then nearest upsampling + 3x3 conv;
6. ``final_proj`` (Linear to c) on the last T_out frames only.

Module names equal the official ones, so the official SEVIR-LR state_dict
(``pretrained_sevirlr_earthformerunet_v1.pt``) loads unchanged, ``relative_position_index``
buffers included (see :mod:`xearthformer.models.prediff.official`).

>>> import torch
>>> from xearthformer.models.prediff.config import preset
>>> unet = CuboidTransformerUNet(preset("tiny")[1])
>>> x_t, cond = torch.randn(2, 6, 12, 12, 4), torch.randn(2, 7, 12, 12, 4)
>>> unet(x_t, torch.tensor([3, 999]), cond).shape
torch.Size([2, 6, 12, 12, 4])
"""

from __future__ import annotations

from torch import Tensor, nn

from ...errors import ShapeError
from ...nn.layers import PatchMerging, PosEmbed, Upsample
from .config import UNetConfig
from .layers import (
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

__all__ = ["CuboidTransformerUNet"]


class CuboidTransformerUNet(nn.Module):
    """Earthformer-UNet noise predictor on channels-last latents.

    Parameters
    ----------
    config
        The architecture (:class:`~xearthformer.models.prediff.config.UNetConfig`); kept as
        ``unet.config``. The shapes are fixed at construction.

    Examples
    --------
    >>> import torch
    >>> from xearthformer.models.prediff.config import UNetConfig
    >>> with torch.device("meta"):                       # the official SEVIR-LR denoiser, no memory
    ...     unet = CuboidTransformerUNet(UNetConfig())
    >>> sum(p.numel() for p in unet.parameters())
    136817538
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        t_in, h, w, c = cfg.input_shape
        data_shape = cfg.data_shape
        units = cfg.level_units()
        factor = cfg.downsample_factor()
        self.mem_shapes = level_shapes(data_shape, units, factor)
        self.first_proj = TimeEmbedResBlock(data_shape[3], cfg.base_units, None, cfg.proj_drop)
        self.pos_embed = PosEmbed(cfg.base_units, data_shape[0], h, w, cfg.pos_embed_type)
        self.time_embed = TimeEmbedding(units[0], cfg.time_embed_channels)
        levels = len(units)
        if levels > 1:
            self.downsample_layers = nn.ModuleList(
                PatchMerging(units[i], units[i + 1], factor, cfg.padding_type) for i in range(levels - 1))
            self.upsample_layers = nn.ModuleList(
                Upsample(units[i + 1], units[i], self.mem_shapes[i][1:3], cfg.upsample_kernel_size)
                for i in range(levels - 1))
        self.down_self_blocks = self_blocks(cfg, self.mem_shapes)
        self.up_self_blocks = self_blocks(cfg, self.mem_shapes)
        self.down_time_embed_blocks = time_blocks(cfg, self.mem_shapes)
        self.up_time_embed_blocks = time_blocks(cfg, self.mem_shapes)
        self.final_proj = nn.Linear(cfg.base_units, c)
        official_init(self)

    def assemble_input(self, x_t: Tensor, cond: Tensor) -> Tensor:
        """The network's input (N, T_in + T_out, h, w, c + 1): context, then noisy frames, plus
        the observation indicator."""
        cfg = self.config
        fix = "context and noisy latents must match the UNet's input_shape/target_shape"
        check_shape(x_t, cfg.target_shape, "x_t (the noisy latent future)", fix)
        check_shape(cond, cfg.input_shape, "cond (the latent context)", fix)
        if cond.shape[0] != x_t.shape[0]:
            raise ShapeError(f"x_t and cond must have the same batch size, got {x_t.shape[0]} and {cond.shape[0]}")
        return with_indicator(cond.to(x_t.dtype), x_t)

    def forward(self, x_t: Tensor, t: Tensor | int, cond: Tensor) -> Tensor:
        """Predicted noise (N, T_out, h, w, c) of ``x_t`` at diffusion times ``t`` given ``cond``."""
        cfg = self.config
        x = self.first_proj(self.assemble_input(x_t, cond))
        x = self.pos_embed(x)
        t = diffusion_times(t, x.shape[0], x.device)
        emb = self.time_embed(timestep_embedding(t, cfg.level_units()[0]))
        levels = len(self.mem_shapes)
        skips: list[Tensor] = []
        for i in range(levels):
            if i > 0:
                x = self.downsample_layers[i - 1](x)
            for block in self.down_self_blocks[i]:
                x = block(self.down_time_embed_blocks[i](x, emb))
            if cfg.unet_res_connect and i < levels - 1:
                skips.append(x)
        for i in range(levels - 1, -1, -1):
            if cfg.unet_res_connect and i < levels - 1:
                x = x + skips[i]
            for block in self.up_self_blocks[i]:
                x = block(self.up_time_embed_blocks[i](x, emb))
            if i > 0:
                x = self.upsample_layers[i - 1](x)
        return self.final_proj(x[:, cfg.input_shape[0]:])
