"""PreDiff network configs: JSON round trip, copies, validation with clear errors, presets."""

from __future__ import annotations

import json

import pytest

from xearthformer.errors import ConfigError
from xearthformer.models.prediff import PRESETS, AlignmentConfig, UNetConfig, VAEConfig, preset

CONFIGS = (VAEConfig, UNetConfig, AlignmentConfig)


@pytest.mark.parametrize("name", PRESETS)
def test_json_round_trip(name):
    for cfg in preset(name):
        text = json.dumps(cfg.to_dict())
        assert type(cfg).from_dict(json.loads(text)) == cfg


def test_lists_become_tuples_and_configs_hash():
    cfg = UNetConfig(input_shape=[4, 8, 8, 4], target_shape=[3, 8, 8, 4], depth=[2, 1], base_units=32,
                     block_attn_patterns=["axial", "axial"])
    assert cfg.input_shape == (4, 8, 8, 4) and cfg.depth == (2, 1) and cfg.block_attn_patterns == ("axial", "axial")
    assert hash(cfg) == hash(UNetConfig.from_dict(cfg.to_dict()))


@pytest.mark.parametrize("cls", CONFIGS)
def test_unknown_field_names_list_the_valid_ones(cls):
    with pytest.raises(ConfigError, match=r"unknown \w+Config field\(s\) \['bogus'\]; valid fields: ") as err:
        cls.from_dict({**cls().to_dict(), "bogus": 1})
    assert all(name in str(err.value) for name in cls().to_dict())
    with pytest.raises(ConfigError, match="bogus"):
        cls().replace(bogus=1)


def test_from_dict_needs_the_shapes():
    d = UNetConfig().to_dict()
    del d["target_shape"]
    with pytest.raises(ConfigError, match="target_shape"):
        UNetConfig.from_dict(d)
    with pytest.raises(ConfigError, match="needs a dict"):
        AlignmentConfig.from_dict([1])  # type: ignore[arg-type]


def test_replace_and_without_dropout():
    unet = preset("sevirlr")[1]
    assert (unet.attn_drop, unet.proj_drop, unet.ffn_drop) == (0.1, 0.1, 0.1)
    quiet = unet.without_dropout()
    assert (quiet.attn_drop, quiet.proj_drop, quiet.ffn_drop, quiet.time_embed_dropout) == (0.0, 0.0, 0.0, 0.0)
    assert quiet.replace(attn_drop=0.1, proj_drop=0.1, ffn_drop=0.1) == unet
    assert preset("sevirlr")[0].without_dropout() == preset("sevirlr")[0]  # the VAE has no dropout
    assert unet.replace(base_units=128).level_units() == [128, 256]


@pytest.mark.parametrize("cls, changes, words", [
    (VAEConfig, {"block_out_channels": (16, 30)}, "multiples of norm_num_groups"),
    (VAEConfig, {"block_out_channels": ()}, "block_out_channels"),
    (VAEConfig, {"latent_channels": 0}, "latent_channels"),
    (VAEConfig, {"act_fn": "relu"}, "act_fn"),
    (UNetConfig, {"target_shape": (6, 16, 8, 64)}, "share"),
    (UNetConfig, {"input_shape": (7, 16, 16)}, "input_shape"),
    (UNetConfig, {"num_heads": 3}, "divisible by num_heads"),
    (UNetConfig, {"block_attn_patterns": ("axial",) * 3}, "block_attn_patterns"),
    (UNetConfig, {"block_attn_patterns": "nonsense"}, "valid"),
    (UNetConfig, {"attn_drop": 1.0}, "attn_drop"),
    (UNetConfig, {"padding_type": "reflect"}, "padding_type"),
    (UNetConfig, {"ffn_activation": "swish"}, "ffn_activation"),
    (UNetConfig, {"downsample": (2, 2, 2)}, "merge time"),
    (UNetConfig, {"block_units": (128, 512)}, "base_units"),
    (UNetConfig, {"upsample_kernel_size": 2}, "odd"),
    (UNetConfig, {"depth": (4, 0)}, "depth"),
    (AlignmentConfig, {"out_len": 7}, "out_len"),
    (AlignmentConfig, {"pool": "adaptive"}, "pool"),
    (AlignmentConfig, {"context_len": -1}, "context_len"),
    (AlignmentConfig, {"base_units": 24}, "GroupNorm"),  # last level 48: neither <= 32 nor a multiple of 32
])
def test_bad_values_raise_config_errors_that_name_the_field(cls, changes, words):
    with pytest.raises(ConfigError, match=words):
        cls().replace(**changes)


def test_unknown_preset_lists_the_valid_names():
    with pytest.raises(ConfigError, match="sevirlr, tiny"):
        preset("huge")


def test_derived_shapes():
    vae, unet, align = preset("sevirlr")
    assert vae.downsample_factor == 8
    assert unet.data_shape == (13, 16, 16, 65) and unet.time_embed_channels == 1024
    assert align.data_shape == (6, 16, 16, 64) and align.readout_len == 6
    with_context = align.replace(context_len=7)
    assert with_context.data_shape == (13, 16, 16, 65) and with_context.readout_len == 6
    assert align.replace(out_len=None).readout_len == 6
    assert unet.replace(downsample=(1, 2, 2)).level_units() == [256, 512]
