"""The Earthformer model: presets, config round trip, shapes, input errors, gradients,
determinism, dropout switch, autocast, activation checkpointing."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import xearthformer as xef
from tests.reference import reference_file
from xearthformer.errors import ConfigError, ShapeError
from xearthformer.models.earthformer.config import EarthformerConfig
from xearthformer.models.earthformer.network import Earthformer, presets
from xearthformer.nn.patterns import Decomposition



def _official_listing(name: str) -> tuple[int, dict[str, tuple[int, ...]]]:
    lines = reference_file(f"official_{name}_state_dict.tsv").read_text().splitlines()
    total = int(lines[0].split(":")[1].split("parameters")[0].replace(",", "").strip())
    shapes = {}
    for line in lines[1:]:
        key, shape, _ = line.split("\t")
        shapes[key] = tuple(int(n) for n in shape.strip("()").split(",") if n.strip())
    return total, shapes


@pytest.mark.parametrize("name, count", [("sevir", 8_659_677), ("enso", 1_394_325)])
def test_official_presets_have_the_official_parameters_keys_and_shapes(name, count):
    model = Earthformer.from_preset(name)
    assert sum(p.numel() for p in model.parameters()) == count
    total, shapes = _official_listing(name)
    assert total == count
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == shapes


def test_small_and_tiny_sizes():
    small = sum(p.numel() for p in Earthformer.from_preset("small").parameters())
    tiny = sum(p.numel() for p in Earthformer.from_preset("tiny").parameters())
    assert 100_000 <= small <= 300_000
    assert tiny < small
    assert presets()["tiny"].input_shape == (6, 32, 32, 1) and presets()["tiny"].target_shape == (6, 32, 32, 1)
    assert set(presets()) == {"sevir", "enso", "small", "tiny"}


@pytest.mark.parametrize("name", ["sevir", "enso", "small", "tiny"])
def test_config_round_trips_through_json(name):
    cfg = presets()[name]
    text = json.dumps(cfg.to_dict())
    back = EarthformerConfig.from_dict(json.loads(text))
    assert back == cfg
    assert back.to_dict() == cfg.to_dict()


def test_config_errors_are_helpful():
    with pytest.raises(ConfigError, match="unknown EarthformerConfig field.*base_units"):
        EarthformerConfig.from_dict({**presets()["tiny"].to_dict(), "base_unit": 3})
    with pytest.raises(ConfigError, match="share H, W"):
        EarthformerConfig(input_shape=(6, 32, 32, 1), target_shape=(6, 30, 32, 1))
    with pytest.raises(ConfigError, match="valid: .*axial"):
        Earthformer.from_preset("tiny", self_pattern="nope")
    with pytest.raises(ConfigError, match="padding_type"):
        Earthformer.from_preset("tiny", padding_type="reflect")
    with pytest.raises(ConfigError, match="valid: sevir, enso, small, tiny"):
        Earthformer.from_preset("huge")
    with pytest.raises(ConfigError, match="num_heads"):
        Earthformer.from_preset("tiny", num_heads=5)


def test_without_dropout_switches_every_stochastic_layer_off():
    torch.manual_seed(0)
    noisy = Earthformer.from_preset("small").train()
    x = torch.randn(1, *noisy.config.input_shape)
    assert not torch.equal(noisy(x), noisy(x))  # dropout is on in train mode
    quiet = Earthformer(noisy.config.without_dropout())
    quiet.load_state_dict(noisy.state_dict())
    quiet.train()
    assert torch.equal(quiet(x), quiet(x))
    assert torch.allclose(quiet(x), noisy.eval()(x), atol=1e-6)


def test_outputs_are_deterministic_for_a_fixed_seed():
    def run() -> torch.Tensor:
        torch.manual_seed(123)
        model = Earthformer.from_preset("tiny")
        return model(torch.randn(2, 6, 32, 32, 1))

    a, b = run(), run()
    assert torch.equal(a, b)


def _all_features_config() -> EarthformerConfig:
    return presets()["tiny"].replace(
        input_shape=(5, 11, 13, 2), target_shape=(7, 11, 13, 3), num_global_vectors=2, use_dec_self_global=True,
        use_dec_cross_global=True, use_global_vector_ffn=True, separate_global_qkv=True, use_global_self_attn=True,
        dec_hierarchical_pos_embed=True, dec_use_first_self_attn=True, self_pattern="video_swin_2x4",
        cross_self_pattern="spatial_lg_4", cross_pattern="cross_1x1", z_init_method="zeros")


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = Earthformer(_all_features_config())
    x = torch.randn(2, *model.config.input_shape)
    model(x).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_every_parameter_of_the_cpu_presets_is_used(name):
    # (the official sevir preset leaves the top encoder layer's global-vector update unused)
    model = Earthformer.from_preset(name, input_shape=(6, 16, 16, 1)).eval()
    model(torch.randn(1, 6, 16, 16, 1)).sum().backward()
    unused = [k for k, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert unused == []


@settings(max_examples=8, deadline=None)
@given(t_in=st.integers(1, 5), t_out=st.integers(1, 6), h=st.integers(1, 19), w=st.integers(1, 19),
       c_in=st.integers(1, 3), c_out=st.integers(1, 3), seed=st.integers(0, 100))
def test_any_grid_and_lead_work(t_in, t_out, h, w, c_in, c_out, seed):
    torch.manual_seed(seed)
    model = Earthformer.from_preset("tiny", input_shape=(t_in, h, w, c_in), target_shape=(t_out, h, w, c_out)).eval()
    y = model(torch.randn(2, t_in, h, w, c_in))
    assert y.shape == (2, t_out, h, w, c_out)
    assert torch.isfinite(y).all()


def test_preset_override_of_the_input_shape_keeps_t_out_and_c_out():
    model = Earthformer.from_preset("small", input_shape=(6, 24, 48, 3))
    assert model.config.target_shape == (6, 24, 48, 1)
    enso = Earthformer.from_preset("enso", input_shape=(12, 20, 40, 1), target_shape=(3, 20, 40, 1))
    assert enso(torch.randn(1, 12, 20, 40, 1)).shape == (1, 3, 20, 40, 1)


def test_samples_do_not_mix():
    model = Earthformer.from_preset("tiny").eval()
    x = torch.randn(3, 6, 32, 32, 1)
    full = model(x)
    assert torch.allclose(model(x[1:2]), full[1:2], atol=1e-5)


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("bad, words", [
    (torch.randn(6, 32, 32, 1), ["rank 4", "(N, 6, 32, 32, 1)"]),
    (torch.randn(2, 6, 32, 31, 1), ["(N, 6, 32, 32, 1)", "(2, 6, 32, 31, 1)"]),
    (torch.randn(2, 6, 32, 32, 2), ["(N, 6, 32, 32, 1)", "(2, 6, 32, 32, 2)"]),
    (torch.ones(2, 6, 32, 32, 1, dtype=torch.int64), ["floating", "int64"]),
    (torch.ones(2, 6, 32, 32, 1, dtype=torch.float64), ["float64", "float32"]),
    (torch.ones(2, 6, 32, 32, 1).numpy(), ["torch.Tensor", "ndarray"]),
])
def test_bad_input_is_a_shape_error_before_any_work(bad, words):
    model = Earthformer.from_preset("tiny")

    def boom(*_):
        raise _Boom("the stem ran")

    model.initial_encoder.register_forward_pre_hook(boom)
    with pytest.raises(ShapeError) as info:
        model(bad)
    for word in words:
        assert word in str(info.value)
    assert isinstance(info.value, ValueError)


def test_runs_under_bfloat16_autocast():
    torch.manual_seed(0)
    model = Earthformer.from_preset("tiny").eval()
    x = torch.randn(2, 6, 32, 32, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    ref = model(x)
    assert y.shape == ref.shape and torch.isfinite(y).all()
    assert (y.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = Earthformer(_all_features_config())
    ckpt = Earthformer(plain.config.replace(checkpoint_level=2))
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, *plain.config.input_shape)
    for m in (plain, ckpt):
        m.train()
        m(x).square().mean().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


_STACK_STEM = dict(initial_downsample_type="stack_conv", initial_downsample_stack_conv_num_layers=2,
                   initial_downsample_stack_conv_dim_list=(8, 16), initial_downsample_stack_conv_downscale_list=(2, 2),
                   initial_downsample_stack_conv_num_conv_list=(1, 2))
_STEMS = {"conv": {}, "conv-merging-time": {"initial_downsample_scale": (2, 2, 2)}, "stack_conv": _STACK_STEM}


@pytest.mark.parametrize("stem", list(_STEMS))
def test_checkpointing_the_stem_and_head_gives_the_same_loss_and_gradients(stem, monkeypatch):
    from xearthformer.models.earthformer import network

    monkeypatch.setattr(network, "CHECKPOINT_CHUNK_VALUES", 1)  # one frame (or sample) per chunk
    torch.manual_seed(0)
    plain = Earthformer(_all_features_config().replace(**_STEMS[stem]))
    ckpt = Earthformer(plain.config.replace(checkpoint_level=3))
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(3, *plain.config.input_shape)
    y = torch.randn(3, *plain.config.target_shape)
    losses = []
    for m in (plain, ckpt):
        m.train()
        loss = torch.nn.functional.mse_loss(m(x), y)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-5, msg=name)
    with torch.no_grad():  # and outside training the checkpointed model is the plain one
        torch.testing.assert_close(ckpt.eval()(x), plain.eval()(x), rtol=0, atol=0)


def _saved_bytes(model: Earthformer, x: torch.Tensor) -> int:
    """Bytes of the tensors a forward pass keeps for backward (by storage)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.train()(x).sum().backward()
    return sum(storages.values())


def test_checkpoint_level_3_keeps_far_fewer_activations_on_a_large_grid():
    cfg = presets()["tiny"].replace(input_shape=(4, 64, 64, 1), target_shape=(4, 64, 64, 1), **_STACK_STEM)
    x = torch.randn(2, *cfg.input_shape)
    saved = {level: _saved_bytes(Earthformer(cfg.replace(checkpoint_level=level)), x) for level in (0, 2, 3)}
    assert saved[2] < saved[0]
    assert saved[3] < 0.25 * saved[2], saved


def test_set_activation_checkpointing_levels():
    model = Earthformer.from_preset("tiny")
    model.set_activation_checkpointing(True, level=3)
    assert model.config.checkpoint_level == 3
    assert {m.opts.checkpoint_level for m in model.modules() if hasattr(m, "opts")} == {3}
    model.set_activation_checkpointing(False, level=3)
    assert model.config.checkpoint_level == 0
    with pytest.raises(ConfigError, match="1, 2 or 3"):
        model.set_activation_checkpointing(True, level=4)
    with pytest.raises(ConfigError, match="0, 1, 2 or 3"):
        presets()["tiny"].replace(checkpoint_level=4)


def test_public_api_is_reachable_from_the_package():
    assert xef.Earthformer is Earthformer
    assert xef.presets()["tiny"] == presets()["tiny"]
    assert xef.EarthformerConfig is EarthformerConfig


def test_decoder_cuboids_come_from_the_encoder_shapes():
    from xearthformer.nn.decomposition import clamp_decomposition, padding_amounts

    model = Earthformer.from_preset("enso")
    assert model.mem_shapes == [(12, 24, 24, 64), (12, 12, 12, 128)]
    time_attn = model.decoder.self_blocks[0][0].attn_l[0]
    assert time_attn.decomposition.cuboid_size == (12, 1, 1)  # T_in, though the decoder holds 14 frames
    d = clamp_decomposition((14, 24, 24), time_attn.decomposition)
    assert d.cuboid_size == (12, 1, 1) and padding_amounts((14, 24, 24), d.cuboid_size) == (10, 0, 0)
    sevir = Earthformer.from_preset("sevir")  # 12 target frames in a cuboid of 13: clamped to 12
    assert sevir.decoder.self_blocks[0][0].attn_l[0].decomposition.cuboid_size == (13, 1, 1)
    assert clamp_decomposition((12, 32, 32), Decomposition((13, 1, 1))).cuboid_size == (12, 1, 1)


def test_training_works_after_inference_with_the_same_shapes():
    # masks and index tensors are cached per shape: those first built under inference_mode
    # must still be usable by autograd afterwards
    cfg = presets()["tiny"].replace(input_shape=(5, 20, 28, 1), target_shape=(7, 20, 28, 1), padding_type="ignore",
                                    self_pattern="video_swin_2x4", cross_pattern="cross_2x2_heter")
    model = Earthformer(cfg)
    x = torch.randn(1, *cfg.input_shape)
    with torch.inference_mode():
        expected = model.eval()(x)
    out = model.train()(x)
    out.square().mean().backward()
    assert model.z_proj.weight.grad is not None
    torch.testing.assert_close(model.eval()(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_drops_with_probability_p_and_rescales(p):
    from xearthformer.nn.layers import Dropout

    torch.manual_seed(0)
    x = torch.full((200_000,), 2.0, requires_grad=True)
    layer = Dropout(p).train()
    y = layer(x)
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - p) < 5 * (p * (1 - p) / x.numel()) ** 0.5  # 5 standard errors
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 2.0 / (1 - p)))
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach() / 2.0)  # d y / d x = mask / (1 - p)
    assert torch.equal(layer.eval()(x), x)
    assert Dropout(p).train()(x.detach().bfloat16()).dtype == torch.bfloat16
