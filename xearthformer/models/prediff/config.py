"""Configurations of the three PreDiff networks (frozen dataclasses) and their presets.

Field names are the official constructor arguments (``AutoencoderKL``,
``CuboidTransformerUNet``, ``NoisyCuboidTransformerEncoder`` of gaozhihan/PreDiff).
Arguments that have one possible value in the official code (block types, init modes,
``downsample_type``...) or that the official SEVIR-LR models do not use (global vectors,
hierarchical positional embeddings, explicit cuboid sizes instead of a pattern) are not fields.

Presets (:func:`preset`):

``sevirlr``
    The official SEVIR-LR models: VAE 84,499,393, UNet 136,817,538 and alignment network
    8,937,033 parameters (128 x 128 frames, 7 -> 6 frames, 16 x 16 x 64 latents).
``tiny``
    For CPUs and tests: a factor-4 VAE (48 x 48 frames -> 12 x 12 x 4 latents), a UNet and an
    alignment network of well under 1M parameters each (7 context, 6 target frames).

>>> vae, unet, align = preset("tiny")
>>> vae.downsample_factor, unet.input_shape, align.input_shape
(4, (7, 12, 12, 4), (6, 12, 12, 4))
>>> UNetConfig.from_dict(unet.to_dict()) == unet
True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from ...errors import ConfigError
from ...nn.decomposition import PADDING_TYPES
from ...nn.layers import ACTIVATIONS
from ...nn.patterns import self_pattern

__all__ = ["AlignmentConfig", "PRESETS", "UNetConfig", "VAEConfig", "preset"]

Shape = tuple[int, int, int, int]
C = TypeVar("C", bound="_Config")
PRESETS = ("sevirlr", "tiny")


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _positive_ints(value: Any, length: int | None = None) -> bool:
    return (isinstance(value, tuple) and (length is None or len(value) == length) and len(value) > 0
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in value))


class _Config:
    """Copies and JSON (de)serialisation shared by the three configs."""

    _REQUIRED: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            object.__setattr__(self, f.name, _as_tuple(getattr(self, f.name)))
        self._validate()

    def _validate(self) -> None:
        raise NotImplementedError

    @classmethod
    def _check_names(cls, names: Any) -> None:
        valid = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(names) - set(valid))
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; valid fields: {', '.join(valid)}")

    def replace(self: C, **changes: Any) -> C:
        """Copy with some fields changed; unknown names raise ConfigError."""
        self._check_names(changes)
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def without_dropout(self: C) -> C:
        """Copy with every dropout off (the network is then deterministic in train mode too)."""
        drops = {f.name: 0.0 for f in fields(self) if f.name.endswith("drop") or f.name.endswith("dropout")}  # type: ignore[arg-type]
        return self.replace(**drops)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples as lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        """Inverse of :meth:`to_dict`; unknown or missing keys raise ConfigError."""
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.__name__}.from_dict needs a dict, got {type(d).__name__}")
        cls._check_names(d)
        missing = [k for k in cls._REQUIRED if k not in d]
        _need(not missing, f"{cls.__name__} dict lacks the required field(s) {missing}")
        return cls(**d)


# ------------------------------------------------------------------------------------- VAE

@dataclass(frozen=True)
class VAEConfig(_Config):
    """The frame VAE (official ``AutoencoderKL`` with DownEncoderBlock2D/UpDecoderBlock2D blocks).

    One down block per entry of ``block_out_channels`` (all but the last halve H and W), so the
    downsampling factor is ``2 ** (len(block_out_channels) - 1)``. Every block's channel count must
    be a multiple of ``norm_num_groups`` (GroupNorm).
    """

    in_channels: int = 1
    out_channels: int = 1
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 64
    norm_num_groups: int = 32
    act_fn: str = "silu"

    def _validate(self) -> None:
        for name in ("in_channels", "out_channels", "layers_per_block", "latent_channels", "norm_num_groups"):
            value = getattr(self, name)
            _need(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                  f"VAEConfig.{name} must be a positive int, got {value!r}")
        _need(_positive_ints(self.block_out_channels),
              f"VAEConfig.block_out_channels must be one or more positive ints, got {self.block_out_channels!r}")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        _need(not bad, f"VAEConfig.block_out_channels {bad} are not multiples of norm_num_groups="
                       f"{self.norm_num_groups} (GroupNorm); change either")
        _need(self.act_fn == "silu", f"VAEConfig.act_fn must be 'silu' (the only activation of the official "
                                     f"VAE), got {self.act_fn!r}")

    @property
    def downsample_factor(self) -> int:
        """How much H and W shrink from a frame to its latent."""
        return 2 ** (len(self.block_out_channels) - 1)


# ----------------------------------------------------------------------- cuboid networks

@dataclass(frozen=True)
class _CuboidConfig(_Config):
    """Fields shared by the UNet and the alignment network (official names and SEVIR-LR values)."""

    def _validate_common(self, shape: Shape, what: str) -> None:
        cfg: Any = self  # (the fields live in the subclasses)
        _need(_positive_ints(cfg.depth), f"{what}.depth must be one positive int per level, got {cfg.depth!r}")
        d = cfg.downsample
        _need((isinstance(d, int) and d > 0) or _positive_ints(d, 3),
              f"{what}.downsample must be a positive int (H, W factor) or 3 ints (T, H, W), got {d!r}")
        units = self.level_units()
        _need(isinstance(cfg.num_heads, int) and cfg.num_heads > 0 and all(u % cfg.num_heads == 0 for u in units),
              f"{what}: channels per level {units} must be divisible by num_heads={cfg.num_heads}")
        patterns = self.level_patterns()
        _need(len(patterns) == len(cfg.depth), f"{what}.block_attn_patterns needs 1 or {len(cfg.depth)} (one per "
                                               f"level) names, got {cfg.block_attn_patterns!r}")
        for name in patterns:
            self_pattern(name, shape)  # raises ConfigError listing the valid names
        for name in ("attn_drop", "proj_drop", "ffn_drop", "time_embed_dropout"):
            value = getattr(cfg, name)
            _need(isinstance(value, (int, float)) and 0.0 <= value < 1.0, f"{what}.{name} must be in [0, 1), got {value!r}")
        choices = {"padding_type": PADDING_TYPES, "pos_embed_type": ("t+h+w", "t+hw"), "norm_layer": ("layer_norm",),
                   "ffn_activation": ACTIVATIONS, "checkpoint_level": (0, 1, 2)}
        for name, valid in choices.items():
            _need(getattr(cfg, name) in valid, f"{what}.{name} must be one of {valid}, got {getattr(cfg, name)!r}")
        _need(isinstance(cfg.time_embed_channels_mult, int) and cfg.time_embed_channels_mult > 0,
              f"{what}.time_embed_channels_mult must be a positive int, got {cfg.time_embed_channels_mult!r}")

    def downsample_factor(self) -> tuple[int, int, int]:
        """(t, h, w) patch-merging factor between levels (an int ``d`` means (1, d, d))."""
        d = getattr(self, "downsample")
        return (1, d, d) if isinstance(d, int) else tuple(d)

    def level_units(self) -> list[int]:
        """Channels of each level: ``block_units``, or ``base_units * factor ** (alpha * i)``."""
        cfg: Any = self
        levels, base = len(cfg.depth), cfg.base_units
        _need(isinstance(base, int) and base > 0, f"base_units must be a positive int, got {base!r}")
        if cfg.block_units is not None:
            _need(_positive_ints(cfg.block_units, levels) and cfg.block_units[0] == base,
                  f"block_units {cfg.block_units!r} needs one positive int per level ({levels}) and must start "
                  f"with base_units={base}")
            return list(cfg.block_units)
        factor = max(self.downsample_factor())
        # (the official code passes this through round_to(x, 4), which returns x unchanged)
        return [base * int((factor ** cfg.scale_alpha) ** i) for i in range(levels)]

    def level_patterns(self) -> tuple[str, ...]:
        """``block_attn_patterns`` as one name per level."""
        cfg: Any = self
        p = cfg.block_attn_patterns
        return (p,) * len(cfg.depth) if isinstance(p, str) else tuple(p)

    @property
    def time_embed_channels(self) -> int:
        """Width of the diffusion-time embedding: ``time_embed_channels_mult * base_units``."""
        cfg: Any = self
        return int(cfg.time_embed_channels_mult * cfg.base_units)


@dataclass(frozen=True)
class UNetConfig(_CuboidConfig):
    """The denoiser (official ``CuboidTransformerUNet``, the "Earthformer-UNet").

    ``input_shape`` (T_in, h, w, c) is the latent context, ``target_shape`` (T_out, h, w, c) the
    noisy latent future; the network runs on T_in + T_out frames of c + 1 channels (the extra
    one marks the context frames). The shapes are fixed at construction (positional embeddings,
    cuboid sizes). Defaults are the SEVIR-LR values.
    """

    _REQUIRED = ("input_shape", "target_shape")

    input_shape: Shape = (7, 16, 16, 64)
    target_shape: Shape = (6, 16, 16, 64)
    base_units: int = 256
    block_units: tuple[int, ...] | None = None
    scale_alpha: float = 1.0
    depth: tuple[int, ...] = (4, 4)
    downsample: int | tuple[int, int, int] = 2
    block_attn_patterns: str | tuple[str, ...] = "axial"
    num_heads: int = 4
    attn_drop: float = 0.1
    proj_drop: float = 0.1
    ffn_drop: float = 0.1
    ffn_activation: str = "gelu"
    gated_ffn: bool = False
    norm_layer: str = "layer_norm"
    use_inter_ffn: bool = True
    padding_type: str = "zeros"
    pos_embed_type: str = "t+h+w"
    use_relative_pos: bool = True
    self_attn_use_final_proj: bool = True
    upsample_kernel_size: int = 3
    time_embed_channels_mult: int = 4
    time_embed_use_scale_shift_norm: bool = False
    time_embed_dropout: float = 0.0
    unet_res_connect: bool = True
    checkpoint_level: int = 0

    def _validate(self) -> None:
        for name in ("input_shape", "target_shape"):
            _need(_positive_ints(getattr(self, name), 4),
                  f"UNetConfig.{name} must be 4 positive ints (T, h, w, c), got {getattr(self, name)!r}")
        _need(self.input_shape[1:] == self.target_shape[1:],
              f"context and target latents must share (h, w, c): input_shape={self.input_shape}, "
              f"target_shape={self.target_shape}")
        self._validate_common(self.data_shape, "UNetConfig")
        _need(self.downsample_factor()[0] == 1, f"UNetConfig.downsample must not merge time (its upsampling is "
                                                f"spatial only, as official), got {self.downsample!r}")
        _need(isinstance(self.upsample_kernel_size, int) and self.upsample_kernel_size % 2 == 1,
              f"UNetConfig.upsample_kernel_size must be an odd int, got {self.upsample_kernel_size!r}")

    @property
    def data_shape(self) -> Shape:
        """(T_in + T_out, h, w, c + 1): what the network runs on after assembling its input."""
        t_in, h, w, c = self.input_shape
        return (t_in + self.target_shape[0], h, w, c + 1)


@dataclass(frozen=True)
class AlignmentConfig(_CuboidConfig):
    """The knowledge-alignment network (official ``NoisyCuboidTransformerEncoder``).

    Predicts a statistic of the future, ``(N, out_len, out_channels)`` (``readout_seq``) or
    ``(N, out_channels)``, from the noisy latent ``input_shape`` (T, h, w, c) and the diffusion
    time. ``context_len = 0`` is the official network, which ignores the context; with
    ``context_len = T_in > 0`` the context latents (T_in, h, w, c) are put in front of the noisy
    frames along time with an observation-indicator channel, as in the UNet, and the readout
    takes the last ``out_len`` (target) frames. Defaults are the SEVIR-LR values.
    """

    _REQUIRED = ("input_shape",)

    input_shape: Shape = (6, 16, 16, 64)
    out_channels: int = 1
    base_units: int = 128
    block_units: tuple[int, ...] | None = None
    scale_alpha: float = 1.0
    depth: tuple[int, ...] = (1, 1)
    downsample: int | tuple[int, int, int] = 2
    block_attn_patterns: str | tuple[str, ...] = "axial"
    num_heads: int = 4
    attn_drop: float = 0.1
    proj_drop: float = 0.1
    ffn_drop: float = 0.1
    ffn_activation: str = "gelu"
    gated_ffn: bool = False
    norm_layer: str = "layer_norm"
    use_inter_ffn: bool = True
    padding_type: str = "zeros"
    pos_embed_type: str = "t+h+w"
    use_relative_pos: bool = True
    self_attn_use_final_proj: bool = True
    time_embed_channels_mult: int = 4
    time_embed_use_scale_shift_norm: bool = False
    time_embed_dropout: float = 0.0
    pool: str = "attention"
    readout_seq: bool = True
    out_len: int | None = 6
    checkpoint_level: int = 0
    context_len: int = 0

    def _validate(self) -> None:
        _need(_positive_ints(self.input_shape, 4),
              f"AlignmentConfig.input_shape must be 4 positive ints (T, h, w, c), got {self.input_shape!r}")
        _need(isinstance(self.context_len, int) and self.context_len >= 0,
              f"AlignmentConfig.context_len must be an int >= 0 (0: ignore the context), got {self.context_len!r}")
        self._validate_common(self.data_shape, "AlignmentConfig")
        _need(isinstance(self.out_channels, int) and self.out_channels > 0,
              f"AlignmentConfig.out_channels must be a positive int, got {self.out_channels!r}")
        _need(self.pool == "attention", f"AlignmentConfig.pool must be 'attention' (the official SEVIR-LR readout), "
                                        f"got {self.pool!r}")
        t = self.input_shape[0]
        _need(self.out_len is None or (isinstance(self.out_len, int) and 1 <= self.out_len <= t),
              f"AlignmentConfig.out_len must be None (all frames) or in 1..{t} (the noisy frames), got {self.out_len!r}")
        c = self.level_units()[-1]
        _need(c % min(c, 32) == 0, f"the readout's GroupNorm(min(C, 32), C) needs the last level's channels C={c} "
                                   "to be <= 32 or a multiple of 32; change base_units/block_units")

    @property
    def data_shape(self) -> Shape:
        """(T, h, w, c) the network runs on: the noisy frames, after ``context_len`` context frames
        and with the indicator channel when the context is used."""
        t, h, w, c = self.input_shape
        if self.context_len:
            return (self.context_len + t, h, w, c + 1)
        return (t, h, w, c)

    @property
    def readout_len(self) -> int:
        """How many (last) frames the readout pools: ``out_len`` or all noisy frames."""
        return self.out_len if self.out_len is not None else self.input_shape[0]


# ----------------------------------------------------------------------------------- presets

def preset(name: str) -> tuple[VAEConfig, UNetConfig, AlignmentConfig]:
    """The (VAE, UNet, alignment) configs of a named preset (see the module docstring).

    Change shapes with ``replace``, e.g. ``unet.replace(input_shape=(6, 8, 8, 4),
    target_shape=(6, 8, 8, 4))`` for 32 x 32 frames and 6 context frames.

    Raises
    ------
    ConfigError
        Unknown name; the message lists the valid ones.
    """
    if name == "sevirlr":
        return VAEConfig(), UNetConfig(), AlignmentConfig()
    if name == "tiny":
        vae = VAEConfig(block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8)
        unet = UNetConfig(input_shape=(7, 12, 12, 4), target_shape=(6, 12, 12, 4), base_units=32,
                          block_units=(32, 48), depth=(1, 1), attn_drop=0.0, proj_drop=0.0, ffn_drop=0.0)
        align = AlignmentConfig(input_shape=(6, 12, 12, 4), base_units=16, depth=(1, 1), attn_drop=0.0,
                                proj_drop=0.0, ffn_drop=0.0)
        return vae, unet, align
    raise ConfigError(f"unknown PreDiff preset {name!r}; valid: {', '.join(PRESETS)}")
