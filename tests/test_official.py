"""Equivalence with the official Earthformer (earthformer 0.2.1, the test oracle) and the
official-checkpoint importer: same weights + same input -> same output (<= 1e-5, eval mode)."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch
import yaml

from xearthformer import cli
from tests.reference import reference_file
from xearthformer.errors import CheckpointError, ConfigError
from xearthformer.models.earthformer.config import EarthformerConfig, preset
from xearthformer.models.earthformer.network import Earthformer, presets
from xearthformer.models.earthformer.official import load_official, official_spec

pytestmark = pytest.mark.official
TOL = 1e-5




def _official_class():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from earthformer.cuboid_transformer.cuboid_transformer import CuboidTransformerModel
    return CuboidTransformerModel


def official_kwargs(model_cfg: dict) -> dict:
    """CuboidTransformerModel arguments from a config dict with the official YAML keys, as the
    official training scripts build them (one pattern name per level)."""
    d = dict(model_cfg)
    levels = len(d["enc_depth"])

    def per_level(v):
        return [v] * levels if isinstance(v, str) else list(v)

    kw = {k: v for k, v in d.items() if k not in ("self_pattern", "cross_self_pattern", "cross_pattern")}
    kw["input_shape"], kw["target_shape"] = tuple(d["input_shape"]), tuple(d["target_shape"])
    kw["enc_attn_patterns"] = per_level(d["self_pattern"])
    kw["dec_self_attn_patterns"] = per_level(d["cross_self_pattern"])
    kw["dec_cross_attn_patterns"] = per_level(d["cross_pattern"])
    return kw


def official_model(cfg: EarthformerConfig):
    return _official_class()(**official_kwargs(cfg.to_dict()))


def official_yaml() -> dict:
    return yaml.safe_load(reference_file("official_presets.yaml").read_text())


def _random_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=gen) * 0.2 if v.is_floating_point() else v.clone())
            for k, v in model.state_dict().items()}


def _compare(official: torch.nn.Module, ours: torch.nn.Module, shape: tuple, batch: int, seed: int = 0) -> float:
    state = _random_state(official, seed)
    official.load_state_dict(state)
    ours.load_state_dict(state)
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        a, b = official.eval()(x), ours.eval()(x)
    assert a.shape == b.shape == (batch, *ours.config.target_shape)
    assert a.abs().max() > 0.01  # a real signal, not a vanishing output
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", ["sevir", "enso"])
def test_presets_equal_the_official_yaml(name):
    ours = presets()[name].to_dict()
    for key, value in official_yaml()[name].items():
        if key.endswith("_init_mode"):
            assert value == "0", key  # the only initialisation xearthformer implements
            continue
        assert ours[key] == value, key


@pytest.mark.parametrize("name", ["sevir", "enso"])
def test_state_dict_keys_and_shapes_equal_the_official_model(name):
    official = _official_class()(**official_kwargs(official_yaml()[name]))
    ours = Earthformer.from_preset(name)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in official.state_dict().items()}
    for key, value in official.state_dict().items():  # the derived index buffers too
        if key.endswith("relative_position_index"):
            assert torch.equal(ours.state_dict()[key], value), key


def test_enso_equals_the_official_model():
    cfg = presets()["enso"]
    official = _official_class()(**official_kwargs(official_yaml()["enso"]))
    assert _compare(official, Earthformer(cfg), cfg.input_shape, batch=2) <= TOL


@pytest.mark.slow
def test_sevir_equals_the_official_model():
    cfg = presets()["sevir"]
    official = _official_class()(**official_kwargs(official_yaml()["sevir"]))
    assert _compare(official, Earthformer(cfg), cfg.input_shape, batch=1) <= TOL


OTHER_CONFIGS = {
    # padding (non-divisible grid, T_out > T_in, shifted windows) and global vectors together
    "padding+global": dict(input_shape=(5, 20, 28, 2), target_shape=(7, 20, 28, 1), num_global_vectors=3,
                           self_pattern="video_swin_2x4", cross_self_pattern="spatial_lg_4",
                           use_dec_self_global=True, use_dec_cross_global=True, use_global_vector_ffn=True,
                           global_dim_ratio=2),
    # shared global qkv, dilation, decoder options, T_out < T_in
    "shared-qkv": dict(input_shape=(4, 16, 24, 1), target_shape=(3, 16, 24, 2), num_global_vectors=2,
                       separate_global_qkv=False, use_global_self_attn=False, self_pattern="axial_space_dilate_2",
                       cross_self_pattern="divided_st", cross_pattern="cross_2x2_lg", z_init_method="nearest_interp",
                       gated_ffn=True, pos_embed_type="t+hw", dec_hierarchical_pos_embed=True,
                       dec_use_first_self_attn=True, enc_depth=(2, 1), dec_depth=(1, 2), use_dec_cross_global=True,
                       use_dec_self_global=True, dec_self_update_global=False, dec_cross_last_n_frames=3),
    # padding_type="ignore" with shifts and padded cross-attention (no global vectors: see official.py)
    "ignore": dict(input_shape=(5, 18, 22, 1), target_shape=(6, 18, 22, 1), num_global_vectors=0,
                   padding_type="ignore", self_pattern="video_swin_2x4", cross_self_pattern="full",
                   cross_pattern="cross_2x2_heter", z_init_method="mean", enc_use_inter_ffn=False,
                   dec_use_inter_ffn=False),
}


@pytest.mark.parametrize("name", sorted(OTHER_CONFIGS))
def test_other_configurations_equal_the_official_model(name):
    cfg = preset("tiny", **OTHER_CONFIGS[name])
    assert _compare(official_model(cfg), Earthformer(cfg), cfg.input_shape, batch=2, seed=3) <= TOL


# ------------------------------------------------------------------------------------ importer

@pytest.fixture(scope="module")
def enso_official():
    official = _official_class()(**official_kwargs(official_yaml()["enso"])).eval()
    official.load_state_dict(_random_state(official, 7))
    return official


def test_load_official_from_a_file_reproduces_the_official_output(enso_official, tmp_path):
    path = tmp_path / "earthformer_icarenso2021.pt"
    torch.save(enso_official.state_dict(), path)
    model = load_official(path, preset="enso")
    assert not model.training
    x = torch.randn(2, 12, 24, 48, 1)
    with torch.no_grad():
        assert (model(x) - enso_official(x)).abs().max() <= TOL


def test_load_official_reads_safetensors(enso_official, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "enso.safetensors"
    save_file({k: v.contiguous() for k, v in enso_official.state_dict().items()}, str(path))
    model = load_official(path, preset="enso")
    assert torch.equal(model.z_proj.weight, enso_official.z_proj.weight)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_official(path, preset="enso")


def test_load_official_accepts_a_lightning_checkpoint(enso_official):
    state = {"torch_nn_module." + k: v for k, v in enso_official.state_dict().items()}
    model = load_official({"state_dict": state, "epoch": 3}, preset="enso")
    assert torch.equal(model.dec_final_proj.weight, enso_official.dec_final_proj.weight)


def _state(enso_official):
    return dict(enso_official.state_dict())


def test_a_missing_key_is_named(enso_official):
    state = _state(enso_official)
    del state["decoder.cross_blocks.1.0.attn_l.0.kv_proj.weight"]
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): decoder\.cross_blocks\.1\.0\.attn_l\.0\.kv_proj"):
        load_official(state, preset="enso")


def test_an_unexpected_key_is_named(enso_official):
    state = _state(enso_official)
    state["init_global_vectors"] = torch.zeros(8, 64)
    with pytest.raises(CheckpointError, match=r"1 unexpected key\(s\): init_global_vectors"):
        load_official(state, preset="enso")


def test_a_wrong_shape_is_named(enso_official):
    state = _state(enso_official)
    state["z_proj.weight"] = torch.zeros(64, 128)
    with pytest.raises(CheckpointError, match=r"z_proj\.weight: got \(64, 128\), expected \(128, 128\)"):
        load_official(state, preset="enso")


def test_the_other_preset_is_refused_with_the_differences(enso_official):
    with pytest.raises(CheckpointError, match="missing key.*init_global_vectors"):
        load_official(_state(enso_official), preset="sevir")


def test_a_wrong_index_buffer_is_refused(enso_official):
    state = _state(enso_official)
    key = "encoder.blocks.0.0.attn_l.0.relative_position_index"
    state[key] = torch.zeros_like(state[key])
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_official(state, preset="enso")


class _Payload:
    """Unpickling this needs code: weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_a_pickle_that_needs_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"z_proj.weight": _Payload()}, f)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_official(path, preset="enso")
    assert "code ran" not in capsys.readouterr().out


def test_unknown_preset_is_a_config_error(enso_official):
    with pytest.raises(ConfigError, match="sevir.*enso"):
        load_official(_state(enso_official), preset="tiny")


# -------------------------------------------------------------------------------------- convert

def test_convert_cli_writes_a_bundle_with_the_official_data_spec(enso_official, tmp_path, capsys):
    from xearthformer.checkpoint import load

    src, out = tmp_path / "enso.pt", tmp_path / "enso.xef"
    torch.save(enso_official.state_dict(), src)
    assert cli.main(["convert", str(src), str(out), "--preset", "enso"]) == 0
    assert "1,394,325 parameters" in capsys.readouterr().out
    fc = load(out)
    assert (fc.context, fc.lead) == (12, 14)
    spec = fc.spec
    assert spec.grid.shape == (24, 48) and spec.step.unit == "months"
    assert spec.inputs[0].method == "minmax"
    assert spec.inputs[0].offset == pytest.approx(-16.549121856689453)
    assert spec.inputs[0].scale == pytest.approx(26.74809741973877)
    assert list(spec.grid.x_values[[0, -1]]) == [95.0, 330.0] and list(spec.grid.y_values[[0, -1]]) == [-55.0, 60.0]
    x = torch.randn(1, 12, 24, 48, 1)
    with torch.no_grad():
        assert (fc.model.eval()(x) - enso_official(x)).abs().max() <= TOL


def test_convert_cli_reports_a_bad_checkpoint(tmp_path, capsys):
    src = tmp_path / "broken.pt"
    torch.save({"z_proj.weight": torch.zeros(2, 2)}, src)
    assert cli.main(["convert", str(src), str(tmp_path / "o.xef"), "--preset", "enso"]) == 1
    assert "missing key" in capsys.readouterr().err


def test_official_spec_of_sevir():
    spec = official_spec("sevir")
    assert spec.input_shape == (13, 384, 384, 1) and spec.target_shape == (12, 384, 384, 1)
    assert spec.inputs[0].method == "scale" and spec.inputs[0].scale == 255.0
    assert (spec.step.n, spec.step.unit) == (5, "minutes")
    assert spec.input_shape == presets()["sevir"].input_shape
