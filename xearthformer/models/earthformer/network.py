"""Earthformer: hierarchical encoder-decoder space-time transformer with cuboid attention.

``(N, T_in, H, W, C_in) -> (N, T_out, H, W, C_out)``:

1. stem: convolutions + patch merging down to the base resolution (``conv`` or ``stack_conv``);
2. learned positional embedding, then the encoder: per level, cuboid self-attention blocks
   (optionally with global vectors), patch merging between levels;
3. decoder: starts from zeros (+ positional embedding, linear projection) at the coarsest
   level, alternates self-attention and cross-attention to that level's encoder memory, and
   upsamples level by level;
4. head: upsampling back to (H, W) with convolutions, then a linear map to C_out.

H and W need not be multiples of anything: patch merging pads, the head resizes back to the
exact (H, W). The module names equal the official implementation's, so the official
``sevir``/``enso`` state_dicts load unchanged (see :mod:`xearthformer.models.earthformer.official`).
It is a deterministic family: :meth:`Earthformer.predict` returns one member.

>>> import torch
>>> model = Earthformer.from_preset("tiny")
>>> model(torch.zeros(2, 6, 32, 32, 1)).shape
torch.Size([2, 6, 32, 32, 1])
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError, ShapeError
from ...nn.blocks import BlockOptions, Decoder, Encoder
from ...nn.layers import ConvHead, ConvStem, PosEmbed, StackConvHead, StackConvStem, checkpoint_chunks, merged_shape
from ...nn.patterns import cross_pattern, self_pattern
from .config import EarthformerConfig, preset, presets

__all__ = ["Earthformer", "EarthformerConfig", "presets"]

#: ``checkpoint_level`` 3 runs the stem and head in chunks of frames whose largest activation
#: (full-resolution grid x the widest of their convolutions) holds at most this many values
#: (16 MiB of float32): the backward pass then recomputes one chunk at a time
CHECKPOINT_CHUNK_VALUES = 2**22


class Earthformer(nn.Module):
    """The Earthformer model on tensors; build with a config or :meth:`from_preset`.

    Parameters
    ----------
    config
        The architecture; kept as ``model.config``.

    Examples
    --------
    >>> model = Earthformer.from_preset("small", input_shape=(6, 24, 48, 2), target_shape=(6, 24, 48, 1))
    >>> model.config.target_shape
    (6, 24, 48, 1)
    """

    #: one output per input: :meth:`predict` returns M = 1 and ignores noise keys
    stochastic = False

    def __init__(self, config: EarthformerConfig) -> None:
        super().__init__()
        self.config = cfg = config
        t_out, _, _, c_out = cfg.target_shape
        if cfg.num_global_vectors > 0:
            self.init_global_vectors = nn.Parameter(
                torch.zeros(cfg.num_global_vectors, cfg.global_dim_ratio * cfg.base_units))
        self._build_stem_and_head()
        units = cfg.level_units()
        shapes = [(*self.base_shape[:3], units[0])]
        opts = BlockOptions.from_config(cfg)
        for i in range(1, len(units)):
            shapes.append(merged_shape(shapes[-1], cfg.downsample_factor(), units[i]))
        self.mem_shapes = shapes
        self.encoder = Encoder(
            shapes, cfg.enc_depth, cfg.downsample_factor(),
            [self_pattern(p, s) for p, s in zip(cfg.level_patterns("self_pattern"), shapes)],
            opts, cfg.enc_use_inter_ffn, cfg.num_global_vectors)
        t, h, w = self.base_shape[:3]
        self.enc_pos_embed = PosEmbed(cfg.base_units, t, h, w, cfg.pos_embed_type)
        top = shapes[-1]
        self.z_proj = nn.Linear(top[3], top[3])
        self.dec_pos_embed = PosEmbed(top[3], t_out, top[1], top[2], cfg.pos_embed_type)
        use_g = cfg.num_global_vectors > 0
        # the decoder's cuboid sizes are derived from the *encoder's* shapes (official behaviour)
        self.decoder = Decoder(
            t_out, shapes, cfg.dec_depth,
            [self_pattern(p, s) for p, s in zip(cfg.level_patterns("cross_self_pattern"), shapes)],
            [cross_pattern(p, s) for p, s in zip(cfg.level_patterns("cross_pattern"), shapes)],
            opts, cfg.dec_use_inter_ffn, cfg.dec_cross_start, cfg.dec_cross_last_n_frames,
            cfg.dec_hierarchical_pos_embed, cfg.pos_embed_type, cfg.upsample_kernel_size,
            cfg.dec_use_first_self_attn, use_g and cfg.use_dec_self_global, cfg.dec_self_update_global,
            use_g and cfg.use_dec_cross_global)
        self.dec_final_proj = nn.Linear(self._head_channels, c_out)
        self.reset_parameters()

    # ---------------------------------------------------------------- construction helpers
    def _build_stem_and_head(self) -> None:
        cfg = self.config
        c_in = cfg.input_shape[3]
        act = cfg.initial_downsample_activation
        if cfg.initial_downsample_type == "conv":
            scale = cfg.initial_downsample_scale
            factor = (1, scale, scale) if isinstance(scale, int) else ((1, *scale) if len(scale) == 2 else tuple(scale))
            self.initial_encoder = ConvStem(c_in, cfg.base_units, factor, cfg.initial_downsample_conv_layers, act,
                                            cfg.padding_type)
            self.final_decoder = ConvHead(cfg.base_units, cfg.target_shape[:3], cfg.final_upsample_conv_layers, act)
            self._head_channels = cfg.base_units
        else:
            n = cfg.initial_downsample_stack_conv_num_layers
            dims = list(cfg.initial_downsample_stack_conv_dim_list or (cfg.base_units,) * n)[:n]
            factors = list(cfg.initial_downsample_stack_conv_downscale_list)[:n]
            convs = list(cfg.initial_downsample_stack_conv_num_conv_list)[:n]
            self.initial_encoder = StackConvStem(c_in, dims, factors, convs, act, cfg.padding_type)
            # head stages mirror the stem run on the target grid: coarse -> fine, channels reversed
            out = self.initial_encoder.out_shapes(cfg.target_shape)
            grids = [s[:3] for s in out[:-1]][::-1] + [tuple(cfg.target_shape[:3])]
            head_shapes = [(*g, s[3]) for g, s in zip(grids, out[::-1])]
            self.final_decoder = StackConvHead(out[-1][3], head_shapes, convs[::-1], act)
            self._head_channels = head_shapes[-1][3]
        self.base_shape = self.initial_encoder.out_shapes(cfg.input_shape)[-1]

    def reset_parameters(self) -> None:
        """Initialise as the official code does (its init mode "0" everywhere)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.1, mode="fan_out", nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith("relative_position_bias_table") or name == "init_global_vectors":
                nn.init.trunc_normal_(p, std=0.02)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> Earthformer:
        """Model of a named preset (``sevir``, ``enso``, ``small``, ``tiny``), fields overridden.

        ``input_shape=``/``target_shape=`` build the same architecture for other shapes;
        overriding only ``input_shape`` keeps the preset's T_out and C_out.
        """
        return cls(preset(name, **overrides))

    def set_activation_checkpointing(self, enabled: bool = True, level: int = 2) -> None:
        """Recompute activations in the backward pass (at ``level``) or not (``enabled=False``:
        level 0); the config is updated to match, so a saved bundle says so.

        Levels (``EarthformerConfig.checkpoint_level``): 1 the FFN blocks; 2 the attention and
        FFN blocks; 3 also the stem and head, whose full-resolution convolutions otherwise hold
        most of the training memory of large grids (``sevir``), in chunks of frames (see
        :data:`CHECKPOINT_CHUNK_VALUES`). Each level recomputes more of the forward pass.

        >>> model = Earthformer.from_preset("tiny")
        >>> model.set_activation_checkpointing(level=3)
        >>> model.config.checkpoint_level
        3
        """
        if level not in (1, 2, 3):
            raise ConfigError(f"checkpoint level must be 1, 2 or 3, got {level!r}")
        level = level if enabled else 0
        self.config = self.config.replace(checkpoint_level=level)
        for module in self.modules():
            opts = getattr(module, "opts", None)
            if isinstance(opts, BlockOptions):
                module.opts = dataclasses.replace(opts, checkpoint_level=level)

    def inference_bytes_per_sample(self) -> int:
        """Peak bytes one sample adds to an inference pass (the memory planner's estimate,
        :func:`xearthformer.memory.activation_bytes`).

        Two phases take the most: the stem and head, whose convolutions run at (nearly) full
        resolution (``32 B`` per value of the largest stage, inputs x the stage's channels),
        and the attention blocks at level 0, whose transient tensors (q, k, v, attention
        output, the FFN's 4x hidden layer, residuals) scale with the level-0 tokens x channels
        (``128 B * max(T_in, T_out) * H0 * W0 * C0``); the peak is the larger, plus ``64 B`` per
        input and output value. The factors were fitted to the peak resident memory measured on
        the CPU (batches of 16, torch 2.13); the estimate was 0.9-1.4x the measurement on the
        tiny, small, enso and sevir presets (``benchmarks/bench_memory.py``).
        """
        cfg = self.config
        t_in, t_out = cfg.input_shape[0], cfg.target_shape[0]
        _, h0, w0, c0 = self.mem_shapes[0]
        body = 128 * max(t_in, t_out) * h0 * w0 * c0
        stem = 0
        for shape in (cfg.input_shape, cfg.target_shape):
            stages = self.initial_encoder.out_shapes(shape)
            inputs = [tuple(shape[:3])] + [tuple(o[:3]) for o in stages[:-1]]
            stem = max(stem, *(32 * math.prod(grid) * out[3] for grid, out in zip(inputs, stages)))
        io = math.prod(cfg.input_shape) + math.prod(cfg.target_shape)
        return int(max(body, stem) + 64 * io)

    # ---------------------------------------------------------------- forward
    def check_input(self, x: Any) -> None:
        """Raise ShapeError unless ``x`` is a float tensor (N, *config.input_shape)."""
        want = tuple(self.config.input_shape)
        if not isinstance(x, Tensor):
            raise ShapeError(f"expected a torch.Tensor of shape (N, {', '.join(map(str, want))}), got {type(x).__name__}")
        if x.dim() != 5:
            raise ShapeError(f"expected a 5-d tensor (N, T, H, W, C) = (N, {', '.join(map(str, want))}), "
                             f"got rank {x.dim()} with shape {tuple(x.shape)}")
        if tuple(x.shape[1:]) != want:
            raise ShapeError(f"expected input of shape (N, {', '.join(map(str, want))}) (N, T, H, W, C), got "
                             f"{tuple(x.shape)}; build the model with input_shape={tuple(x.shape[1:])} to use it")
        if not x.is_floating_point():
            raise ShapeError(f"expected a floating-point tensor, got dtype {x.dtype}; convert with x.float()")
        dtype = self.dec_final_proj.weight.dtype
        if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
            raise ShapeError(f"input dtype {x.dtype} differs from the model's {dtype}; use x.to({dtype}) "
                             f"or torch.autocast")
        if x.shape[0] == 0:
            raise ShapeError(f"expected at least one sample, got shape {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        """(N, T_in, H, W, C_in) -> (N, T_out, H, W, C_out)."""
        self.check_input(x)
        b = x.shape[0]
        io_ckpt = self.config.checkpoint_level >= 3 and self.training and torch.is_grad_enabled()
        x = self.enc_pos_embed(self._stem(x) if io_ckpt else self.initial_encoder(x))
        g = None
        if self.config.num_global_vectors > 0:
            g = self.init_global_vectors.expand(b, *self.init_global_vectors.shape)
        mem, mem_global = self.encoder(x, g)
        z = self._initial_z(mem[-1])
        y = self.decoder(z, mem, mem_global)
        if io_ckpt:
            return checkpoint_chunks(self._head, y, self._chunk_frames)
        return self._head(y)

    def _head(self, y: Tensor) -> Tensor:
        return self.dec_final_proj(self.final_decoder(y))

    def _stem(self, x: Tensor) -> Tensor:
        """The stem through :func:`checkpoint_chunks`: per frame unless it merges along time."""
        factor = getattr(getattr(self.initial_encoder, "patch_merge", None), "factor", (1,))
        if factor[0] == 1:
            return checkpoint_chunks(self.initial_encoder, x, self._chunk_frames)
        return checkpoint_chunks(self.initial_encoder, x, max(1, self._chunk_frames // x.shape[1]), per_frame=False)

    @property
    def _chunk_frames(self) -> int:
        """Frames per chunk of the checkpointed stem and head (:data:`CHECKPOINT_CHUNK_VALUES`)."""
        h, w = self.config.input_shape[1:3]
        widest = max(m.out_channels for m in (*self.initial_encoder.modules(), *self.final_decoder.modules())
                     if isinstance(m, nn.Conv2d))
        return max(1, CHECKPOINT_CHUNK_VALUES // (h * w * widest))

    def predict(self, x: Tensor, *, keys: Tensor | None = None, **sampling: Any) -> Tensor:
        """The family protocol's entry point: (N, T_in, H, W, C_in) -> (N, 1, T_out, H, W, C_out).

        Deterministic: ``keys`` is ignored and there are no sampling options.

        Raises
        ------
        ConfigError
            A sampling option was given.
        """
        if sampling:
            raise ConfigError(
                f"Earthformer is deterministic and takes no sampling options; got {sorted(sampling)}. "
                "Fix: drop them (they are for stochastic families).")
        return self(x)[:, None]

    def _initial_z(self, top: Tensor) -> Tensor:
        t_out = self.config.target_shape[0]
        method = self.config.z_init_method
        b = top.shape[0]
        if method == "zeros":
            z = torch.zeros((1, t_out, *top.shape[2:]), dtype=top.dtype, device=top.device)
            return self.z_proj(self.dec_pos_embed(z)).expand(b, -1, -1, -1, -1)
        if method == "nearest_interp":
            z = F.interpolate(top.permute(0, 4, 1, 2, 3), size=(t_out, *top.shape[2:4])).permute(0, 2, 3, 4, 1)
        elif method == "last":
            z = top[:, -1:].expand(-1, t_out, -1, -1, -1)
        else:  # mean
            z = top.mean(dim=1, keepdim=True).expand(-1, t_out, -1, -1, -1)
        return self.z_proj(z)

