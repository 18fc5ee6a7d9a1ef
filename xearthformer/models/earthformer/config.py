"""The Earthformer configuration (one frozen dataclass) and the named presets.

Field names follow the keys of the official Earthformer YAML configs (``base_units``,
``enc_depth``, ``self_pattern``, ``num_global_vectors``...). A config is plain data: it
serialises to a JSON-able dict and back (:meth:`EarthformerConfig.to_dict`,
:meth:`EarthformerConfig.from_dict`), and is validated when built.

Presets: ``sevir`` and ``enso`` are the official configurations (exactly the official
parameter counts, 8,659,677 and 1,394,325); ``small`` (~290k parameters) suits monthly
fields of ~(6, 24..48, 48..96, 1..3) trained for minutes on a CPU; ``tiny`` is for tests.

>>> cfg = presets()["tiny"]
>>> cfg.input_shape, cfg.target_shape
((6, 32, 32, 1), (6, 32, 32, 1))
>>> EarthformerConfig.from_dict(cfg.to_dict()) == cfg
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError
from ...nn.decomposition import PADDING_TYPES
from ...nn.layers import ACTIVATIONS
from ...nn.patterns import cross_pattern, self_pattern
from ..config import ModelConfig

Shape = tuple[int, int, int, int]
Patterns = str | tuple[str, ...]

@dataclass(frozen=True)
class EarthformerConfig(ModelConfig):
    """Architecture of an :class:`~xearthformer.models.earthformer.network.Earthformer`.

    ``input_shape`` (T_in, H, W, C_in) -> ``target_shape`` (T_out, H, W, C_out): H and W must
    agree; any sizes work (the model pads and crops internally). Patterns are names from
    :mod:`xearthformer.nn.patterns`, one for all levels or a tuple with one per level.
    Serialisation, copies and ``without_dropout`` come from
    :class:`~xearthformer.models.config.ModelConfig`; the config is validated when built.

    Examples
    --------
    >>> import torch, xearthformer as xef
    >>> cfg = xef.EarthformerConfig(input_shape=(4, 16, 16, 1), target_shape=(2, 16, 16, 1), base_units=16)
    >>> tuple(xef.Earthformer(cfg)(torch.zeros(1, 4, 16, 16, 1)).shape)
    (1, 2, 16, 16, 1)
    >>> xef.EarthformerConfig.from_dict(cfg.to_dict()) == cfg      # JSON-ready, round trip
    True
    >>> xef.EarthformerConfig(input_shape=(4, 16, 16, 1), target_shape=(2, 8, 16, 1))
    Traceback (most recent call last):
        ...
    xearthformer.errors.ConfigError: input and target must share H, W: ...
    """

    input_shape: Shape
    target_shape: Shape
    base_units: int = 64
    block_units: tuple[int, ...] | None = None
    scale_alpha: float = 1.0
    num_heads: int = 4
    attn_drop: float = 0.1
    proj_drop: float = 0.1
    ffn_drop: float = 0.1
    # hierarchy
    downsample: int | tuple[int, int, int] = 2
    downsample_type: str = "patch_merge"
    upsample_type: str = "upsample"
    upsample_kernel_size: int = 3
    enc_depth: tuple[int, ...] = (1, 1)
    dec_depth: tuple[int, ...] = (1, 1)
    enc_use_inter_ffn: bool = True
    dec_use_inter_ffn: bool = True
    dec_hierarchical_pos_embed: bool = False
    dec_cross_start: int = 0
    dec_use_first_self_attn: bool = False
    # attention patterns
    self_pattern: Patterns = "axial"
    cross_self_pattern: Patterns = "axial"
    cross_pattern: Patterns = "cross_1x1"
    dec_cross_last_n_frames: int | None = None
    # global vectors
    num_global_vectors: int = 0
    use_dec_self_global: bool = False
    dec_self_update_global: bool = True
    use_dec_cross_global: bool = False
    use_global_vector_ffn: bool = False
    use_global_self_attn: bool = False
    separate_global_qkv: bool = False
    global_dim_ratio: int = 1
    z_init_method: str = "zeros"
    # stem (initial downsampling) and head (final upsampling)
    initial_downsample_type: str = "conv"
    initial_downsample_activation: str = "leaky"
    initial_downsample_scale: int | tuple[int, ...] = (1, 2, 2)
    initial_downsample_conv_layers: int = 2
    final_upsample_conv_layers: int = 1
    initial_downsample_stack_conv_num_layers: int = 1
    initial_downsample_stack_conv_dim_list: tuple[int, ...] | None = None
    initial_downsample_stack_conv_downscale_list: tuple[int, ...] = (1,)
    initial_downsample_stack_conv_num_conv_list: tuple[int, ...] = (2,)
    # layers
    ffn_activation: str = "gelu"
    gated_ffn: bool = False
    norm_layer: str = "layer_norm"
    padding_type: str = "zeros"
    pos_embed_type: str = "t+h+w"
    use_relative_pos: bool = True
    self_attn_use_final_proj: bool = True
    checkpoint_level: int = 0

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        for name in ("input_shape", "target_shape"):
            shape = getattr(self, name)
            need(isinstance(shape, tuple) and len(shape) == 4 and all(isinstance(n, int) and n > 0 for n in shape),
                 f"{name} must be 4 positive ints (T, H, W, C), got {shape!r}")
        need(self.input_shape[1:3] == self.target_shape[1:3],
             f"input and target must share H, W: input_shape={self.input_shape}, target_shape={self.target_shape}")
        levels = len(self.enc_depth)
        need(levels >= 1 and len(self.dec_depth) == levels and all(d >= 1 for d in (*self.enc_depth, *self.dec_depth)),
             f"enc_depth and dec_depth need the same number (>= 1) of positive depths, got {self.enc_depth}, "
             f"{self.dec_depth}")
        units = self.level_units()
        need(all(u % self.num_heads == 0 for u in units),
             f"channels per level {units} must be divisible by num_heads={self.num_heads}")
        need(0 <= self.dec_cross_start < levels, f"dec_cross_start must be in [0, {levels}), got {self.dec_cross_start}")
        for name in ("attn_drop", "proj_drop", "ffn_drop"):
            need(0.0 <= getattr(self, name) < 1.0, f"{name} must be in [0, 1), got {getattr(self, name)}")
        choices = {
            "padding_type": PADDING_TYPES, "pos_embed_type": ("t+h+w", "t+hw"),
            "z_init_method": ("zeros", "nearest_interp", "last", "mean"), "norm_layer": ("layer_norm",),
            "downsample_type": ("patch_merge",), "upsample_type": ("upsample",),
            "initial_downsample_type": ("conv", "stack_conv"), "ffn_activation": ACTIVATIONS,
            "initial_downsample_activation": ACTIVATIONS,
        }
        for name, valid in choices.items():
            need(getattr(self, name) in valid, f"{name} must be one of {valid}, got {getattr(self, name)!r}")
        need(self.num_global_vectors >= 0, f"num_global_vectors must be >= 0, got {self.num_global_vectors}")
        need(self.global_dim_ratio == 1 or self.separate_global_qkv,
             "global_dim_ratio != 1 needs separate_global_qkv=True")
        need(self.checkpoint_level in (0, 1, 2, 3),
             f"checkpoint_level must be 0, 1, 2 or 3, got {self.checkpoint_level}")
        if self.initial_downsample_type == "conv":
            need(self.base_units % 16 == 0 or self.initial_downsample_conv_layers == 0,
                 f"the conv stem's GroupNorm has 16 groups: base_units={self.base_units} must be a multiple of 16")
        else:
            n = self.initial_downsample_stack_conv_num_layers
            dims = self.initial_downsample_stack_conv_dim_list or (self.base_units,) * n
            need(len(dims) >= n and len(self.initial_downsample_stack_conv_downscale_list) >= n
                 and len(self.initial_downsample_stack_conv_num_conv_list) >= n,
                 f"the stack_conv lists need {n} entries (initial_downsample_stack_conv_num_layers)")
            need(dims[n - 1] == self.base_units,
                 f"the last stack_conv dim {dims[n - 1]} must equal base_units={self.base_units}")
        for name, fn in (("self_pattern", self_pattern), ("cross_self_pattern", self_pattern),
                         ("cross_pattern", cross_pattern)):
            value = getattr(self, name)
            names = (value,) * levels if isinstance(value, str) else value
            need(len(names) == levels, f"{name} needs 1 or {levels} (one per level) names, got {value!r}")
            for pattern in names:
                fn(pattern, (2, 2, 2, 1))  # raises ConfigError listing the valid names

    # ------------------------------------------------------------------ derived values
    def level_units(self) -> list[int]:
        """Channels of each hierarchy level."""
        if self.block_units is not None:
            if len(self.block_units) != len(self.enc_depth) or self.block_units[0] != self.base_units:
                raise ConfigError(f"block_units {self.block_units} must have one entry per level and start with "
                                  f"base_units={self.base_units}")
            return list(self.block_units)
        factor = max(self.downsample_factor())
        return [self.base_units * int((factor ** self.scale_alpha) ** i) for i in range(len(self.enc_depth))]

    def downsample_factor(self) -> tuple[int, int, int]:
        """(t, h, w) patch-merging factor between encoder levels."""
        d = self.downsample
        return (1, d, d) if isinstance(d, int) else tuple(d)  # type: ignore[return-value]

    def level_patterns(self, name: str) -> tuple[str, ...]:
        """The pattern field ``name`` as one name per level."""
        value = getattr(self, name)
        return (value,) * len(self.enc_depth) if isinstance(value, str) else tuple(value)


# ------------------------------------------------------------------------------ presets

_OFFICIAL_COMMON: dict[str, Any] = dict(
    scale_alpha=1.0, enc_depth=(1, 1), dec_depth=(1, 1), enc_use_inter_ffn=True, dec_use_inter_ffn=True,
    dec_hierarchical_pos_embed=False, downsample=2, downsample_type="patch_merge", upsample_type="upsample",
    use_dec_self_global=False, dec_self_update_global=True, use_dec_cross_global=False, use_global_vector_ffn=False,
    global_dim_ratio=1, self_pattern="axial", cross_self_pattern="axial", cross_pattern="cross_1x1",
    dec_cross_last_n_frames=None, attn_drop=0.1, proj_drop=0.1, ffn_drop=0.1, num_heads=4, ffn_activation="gelu",
    gated_ffn=False, norm_layer="layer_norm", padding_type="zeros", pos_embed_type="t+h+w", use_relative_pos=True,
    self_attn_use_final_proj=True, dec_use_first_self_attn=False, z_init_method="zeros", checkpoint_level=0,
    initial_downsample_activation="leaky",
)


def presets() -> dict[str, EarthformerConfig]:
    """All named presets: ``sevir``, ``enso`` (official), ``small``, ``tiny``."""
    return {
        "sevir": EarthformerConfig(
            input_shape=(13, 384, 384, 1), target_shape=(12, 384, 384, 1), base_units=128,
            num_global_vectors=8, use_global_self_attn=True, separate_global_qkv=True,
            initial_downsample_type="stack_conv", initial_downsample_stack_conv_num_layers=3,
            initial_downsample_stack_conv_dim_list=(16, 64, 128),
            initial_downsample_stack_conv_downscale_list=(3, 2, 2),
            initial_downsample_stack_conv_num_conv_list=(2, 2, 2), **_OFFICIAL_COMMON),
        "enso": EarthformerConfig(
            input_shape=(12, 24, 48, 1), target_shape=(14, 24, 48, 1), base_units=64,
            num_global_vectors=0, use_global_self_attn=False, separate_global_qkv=False,
            initial_downsample_type="conv", initial_downsample_scale=(1, 1, 2), initial_downsample_conv_layers=2,
            final_upsample_conv_layers=1, **_OFFICIAL_COMMON),
        # a scaled-down SEVIR-like architecture that trains in minutes on a CPU. Unlike the
        # official presets, the decoder's cross-attention also reads the global vectors, so every
        # parameter gets a gradient (DistributedDataParallel needs no find_unused_parameters)
        "small": EarthformerConfig(
            input_shape=(6, 32, 64, 1), target_shape=(6, 32, 64, 1), base_units=32, block_units=(32, 48),
            num_heads=4, num_global_vectors=4, use_global_self_attn=True, separate_global_qkv=False,
            use_dec_cross_global=True,
            initial_downsample_type="conv", initial_downsample_scale=(1, 2, 2), initial_downsample_conv_layers=1,
            final_upsample_conv_layers=1, attn_drop=0.0, proj_drop=0.1, ffn_drop=0.1),
        "tiny": EarthformerConfig(
            input_shape=(6, 32, 32, 1), target_shape=(6, 32, 32, 1), base_units=16, num_heads=4,
            num_global_vectors=2, use_global_self_attn=True, separate_global_qkv=True, use_dec_cross_global=True,
            initial_downsample_type="conv", initial_downsample_scale=(1, 2, 2), initial_downsample_conv_layers=1,
            final_upsample_conv_layers=1, attn_drop=0.0, proj_drop=0.0, ffn_drop=0.0),
    }


def preset(name: str, **overrides: Any) -> EarthformerConfig:
    """The preset ``name`` with some fields overridden (e.g. ``input_shape=(6, 20, 40, 2)``).

    Overriding only ``input_shape`` keeps the preset's T_out and C_out and takes H, W from it.
    """
    table = presets()
    if name not in table:
        raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(table)}")
    cfg = table[name]
    if "input_shape" in overrides and "target_shape" not in overrides:
        shape = tuple(overrides["input_shape"])
        if len(shape) == 4:
            overrides["target_shape"] = (cfg.target_shape[0], shape[1], shape[2], cfg.target_shape[3])
    return cfg.replace(**overrides) if overrides else cfg
