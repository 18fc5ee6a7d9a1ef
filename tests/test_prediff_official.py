"""Parity of the PreDiff networks with the official code (gaozhihan/PreDiff at 0703a61).

* the sevirlr presets have exactly the official state_dict keys, shapes and order (built on the
  meta device, so 230M parameters cost nothing) and parameter counts (also per submodule);
* the presets' fields equal the official constructor arguments;
* the oracle fixtures (official outputs of small random-weight models, made with one thread)
  are reproduced to <= 1e-5 with one thread;
* the strict loaders accept official/Lightning layouts and name what does not fit.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.reference import reference_file
from xearthformer.errors import CheckpointError
from xearthformer.models.prediff import (
    AlignmentConfig,
    CuboidTransformerUNet,
    FrameVAE,
    NoisyCuboidTransformerEncoder,
    UNetConfig,
    VAEConfig,
    load_official_alignment,
    load_official_unet,
    load_official_vae,
    preset,
    sample_posterior,
    split_moments,
)
from xearthformer.models.prediff.layers import timestep_embedding

TOL = 1e-5
PARTS = {"vae": (FrameVAE, 0), "unet": (CuboidTransformerUNet, 1), "alignment": (NoisyCuboidTransformerEncoder, 2)}

# official constructor arguments that are not config fields: the value the implementation fixes
FIXED = {
    "downsample_type": "patch_merge", "upsample_type": "upsample", "num_global_vectors": 0,
    "hierarchical_pos_embed": False, "attn_linear_init_mode": "0", "ffn_linear_init_mode": "0",
    "ffn2_linear_init_mode": "2", "attn_proj_linear_init_mode": "2", "conv_init_mode": "0",
    "down_linear_init_mode": "0", "up_linear_init_mode": "0", "global_proj_linear_init_mode": "2",
    "norm_init_mode": "0", "sample_size": None,  # (sample_size is accepted and unused by the official VAE)
}
GLOBAL_ONLY = ("use_global_vector_ffn", "use_global_self_attn", "separate_global_qkv", "global_dim_ratio")


def official_configs() -> dict:
    return json.loads(reference_file("prediff/official_configs.json").read_text())


def listing(part: str) -> list[tuple[str, str]]:
    lines = reference_file(f"prediff/official_{part}_sevirlr_state_dict.tsv").read_text().splitlines()
    return [tuple(line.split("\t")[:2]) for line in lines if line and not line.startswith("#")]


def config_from_official(cls: type, args: dict):
    """Our config from official constructor arguments; the ones that are not fields must hold
    the value the implementation fixes."""
    names = set(cls.__dataclass_fields__)
    for key, value in args.items():
        if key in names or key in GLOBAL_ONLY:
            continue
        if key in ("down_block_types", "up_block_types"):
            kind = "DownEncoderBlock2D" if key.startswith("down") else "UpDecoderBlock2D"
            assert list(value) == [kind] * len(args["block_out_channels"]), (key, value)
            continue
        assert key in FIXED, f"official argument {key!r} is neither a field nor fixed"
        if FIXED[key] is not None:
            assert value == FIXED[key], (key, value)
    return cls(**{k: v for k, v in args.items() if k in names})


def build_meta(part: str):
    cls, idx = PARTS[part]
    with torch.device("meta"):
        return cls(preset("sevirlr")[idx])


# ------------------------------------------------------------------------ keys, shapes, counts

@pytest.mark.parametrize("part", list(PARTS))
def test_sevirlr_state_dict_equals_the_official_listing(part):
    model = build_meta(part)
    ours = [(k, str(tuple(v.shape))) for k, v in model.state_dict().items()]
    assert ours == listing(part)  # same keys, shapes and order


@pytest.mark.parametrize("part", list(PARTS))
def test_sevirlr_parameter_counts(part):
    model = build_meta(part)
    official = official_configs()[part]
    assert sum(p.numel() for p in model.parameters()) == official["total_parameters"]
    for name, count in official["parameters_by_submodule"].items():
        assert sum(p.numel() for p in getattr(model, name).parameters()) == count, name
    buffers = [b for b in model.buffers()]
    expected = official["buffers"]
    if isinstance(expected, dict):
        assert len(buffers) == expected["count"] and sum(b.numel() for b in buffers) == expected["elements"]
    else:
        assert not buffers


@pytest.mark.parametrize("part, cls", [("vae", VAEConfig), ("unet", UNetConfig), ("alignment", AlignmentConfig)])
def test_sevirlr_preset_is_the_official_configuration(part, cls):
    ours = preset("sevirlr")[PARTS[part][1]]
    official = config_from_official(cls, official_configs()[part]["constructor_args"])
    if part == "vae":
        assert official == ours
    else:  # (one pattern name for all levels or one per level: the same configuration)
        assert official.level_patterns() == ours.level_patterns()
        assert official.replace(block_attn_patterns="axial") == ours.replace(block_attn_patterns="axial")
    if part != "vae":
        derived = official_configs()[part]["derived"]
        model = build_meta(part)
        assert [list(s) for s in model.mem_shapes] == derived["mem_shapes"]
        assert ours.level_units() == derived["block_units"]
        assert ours.time_embed_channels == derived["time_embed_channels"]
        sizes = [[list(a.decomposition.cuboid_size) for a in blocks[0].attn_l] for blocks in model.down_self_blocks]
        assert sizes == derived["block_cuboid_size"]


# ----------------------------------------------------------------------------- oracle fixtures

def oracle(part: str):
    meta = json.loads(reference_file(f"prediff/oracle_{part}_small.json").read_text())
    tensors = load_file(str(reference_file(f"prediff/oracle_{part}_small.safetensors")))
    weights = {k[len("weights."):]: v for k, v in tensors.items() if k.startswith("weights.")}
    return meta, weights, {k: v for k, v in tensors.items() if not k.startswith("weights.")}


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """Official NCHW frames -> our (N, T=1, H, W, C)."""
    return x.permute(0, 2, 3, 1)[:, None]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.fixture()
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the fixtures were made with one thread
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_vae_equals_the_official_outputs():
    meta, weights, t = oracle("vae")
    vae = load_official_vae(weights, config_from_official(VAEConfig, meta["constructor_args"]))
    assert sum(p.numel() for p in vae.parameters()) == meta["num_parameters"]
    x = channels_last(t["x"])
    with torch.no_grad():
        moments = vae.moments(x)
        mean, logvar = vae.encode(x)
        decoded = vae.decode(mean)
        forward = vae(x)
    diffs = {
        "moments": max_diff(moments, channels_last(t["moments"])),
        "mean": max_diff(mean, channels_last(t["posterior_mean"])),
        "logvar": max_diff(logvar, channels_last(t["posterior_logvar"])),
        "std": max_diff(torch.exp(0.5 * logvar), channels_last(t["posterior_std"])),
        "decode_mean": max_diff(decoded, channels_last(t["decode_mean"])),
        "forward": max_diff(forward, channels_last(t["decode_mean"])),
        "sample": max_diff(sample_posterior(mean, logvar, channels_last(t["posterior_sample_noise"])),
                           channels_last(t["posterior_sample"])),
    }
    assert max(diffs.values()) <= TOL, diffs


def test_vae_logvar_clamp_equals_the_official_one():
    _, _, t = oracle("vae")
    mean, logvar = split_moments(channels_last(t["clamp_test_moments"]))
    assert max_diff(mean, channels_last(t["clamp_test_mean"])) == 0.0
    assert max_diff(logvar, channels_last(t["clamp_test_logvar"])) == 0.0
    raw = channels_last(t["clamp_test_moments"])[..., 4:]
    assert (raw < -30).any() and (raw > 20).any()  # the fixture does exercise both bounds


@pytest.mark.usefixtures("one_thread")
def test_unet_equals_the_official_outputs_and_intermediates():
    meta, weights, t = oracle("unet")
    cfg = config_from_official(UNetConfig, meta["constructor_args"])
    unet = load_official_unet(weights, cfg)
    assert sum(p.numel() for p in unet.parameters()) == meta["num_parameters"]
    seen = {}
    unet.first_proj.register_forward_hook(lambda m, i, o: seen.update(first_in=i[0], first_out=o))
    unet.time_embed.register_forward_hook(lambda m, i, o: seen.update(sinusoid=i[0], t_emb=o))
    with torch.no_grad():
        eps = unet(t["x"], t["t"], t["cond"])
    to_official = (0, 4, 1, 2, 3)  # ours are channels-last, the fixture's (B, C, T, H, W)
    diffs = {
        "eps": max_diff(eps, t["eps"]),
        "assembled_input": max_diff(unet.assemble_input(t["x"], t["cond"]).permute(*to_official),
                                    t["first_proj_input"]),
        "first_proj_input": max_diff(seen["first_in"].permute(*to_official), t["first_proj_input"]),
        "first_proj_output": max_diff(seen["first_out"].permute(*to_official), t["first_proj_output"]),
        "sinusoid": max_diff(seen["sinusoid"], t["timestep_embedding"]),
        "timestep_embedding": max_diff(timestep_embedding(t["t"], cfg.base_units), t["timestep_embedding"]),
        "t_emb": max_diff(seen["t_emb"], t["t_emb"]),
    }
    assert max(diffs.values()) <= TOL, diffs
    assert t["eps"].abs().max() > 0.1  # a non-trivial output (the perturbed weights are not the zero init)


@pytest.mark.usefixtures("one_thread")
def test_alignment_equals_the_official_output():
    meta, weights, t = oracle("alignment")
    align = load_official_alignment(weights, config_from_official(AlignmentConfig, meta["constructor_args"]))
    assert sum(p.numel() for p in align.parameters()) == meta["num_parameters"]
    with torch.no_grad():
        out = align(t["zt"], t["t"])
        with_context = align(t["zt"], t["t"], torch.randn(2, 5, 8, 8, 4))  # official: the context is ignored
    assert max_diff(out, t["out"]) <= TOL
    assert torch.equal(out, with_context)


# --------------------------------------------------------------------------------- the loaders

def test_loaders_strip_the_official_lightning_prefixes():
    meta, weights, _ = oracle("unet")
    cfg = config_from_official(UNetConfig, meta["constructor_args"])
    lightning = {"state_dict": {**{f"torch_nn_module.{k}": v for k, v in weights.items()},
                                **{f"model_ema.{k.replace('.', '')}": v for k, v in weights.items()},
                                "logvar": torch.zeros(1000), "first_stage_model.encoder.conv_in.weight": torch.zeros(1)}}
    unet = load_official_unet(lightning, cfg)
    assert torch.equal(unet.final_proj.weight, weights["final_proj.weight"])
    meta_v, weights_v, _ = oracle("vae")
    vae_cfg = config_from_official(VAEConfig, meta_v["constructor_args"])
    inside_prediff = {**{f"first_stage_model.{k}": v for k, v in weights_v.items()},
                      **{f"torch_nn_module.{k}": v for k, v in weights.items()}}
    vae = load_official_vae(inside_prediff, vae_cfg)  # the VAE of a PreDiff Lightning checkpoint
    assert torch.equal(vae.quant_conv.weight, weights_v["quant_conv.weight"])


def test_loader_names_missing_unexpected_and_misshaped_keys():
    meta, weights, _ = oracle("alignment")
    cfg = config_from_official(AlignmentConfig, meta["constructor_args"])
    broken = dict(weights)
    del broken["out.2.c_proj.bias"]
    broken["extra.weight"] = torch.zeros(3)
    broken["final.bias"] = torch.zeros(3)
    broken["out.0.weight"] = torch.zeros(7)
    with pytest.raises(CheckpointError) as err:
        load_official_alignment(broken, cfg)
    message = str(err.value)
    for part in ("out.2.c_proj.bias", "extra.weight", "out.0.weight: got (7,), expected (64,)", "alignment network",
                 "official PreDiff checkpoint"):
        assert part in message, message
    assert "Earthformer" not in message


def test_loader_checks_the_relative_position_index_values():
    meta, weights, _ = oracle("unet")
    cfg = config_from_official(UNetConfig, meta["constructor_args"])
    key = "down_self_blocks.0.0.attn_l.1.relative_position_index"
    broken = {**weights, key: weights[key].flip(0)}
    with pytest.raises(CheckpointError, match="relative_position_index"):
        load_official_unet(broken, cfg)


def test_loader_rejects_a_state_dict_of_another_config():
    _, weights, _ = oracle("vae")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_official_vae(weights, preset("tiny")[0])  # the fixture's small VAE is not the tiny one
    with pytest.raises(CheckpointError, match="mapping"):
        load_official_vae([1, 2])  # type: ignore[arg-type]
