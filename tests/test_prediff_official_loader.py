"""Official PreDiff files as one network and one bundle: load_official_prediff, the registry's
official loader behind ``xearthformer convert --family prediff`` and the hub entry. Small
random state_dicts of a tiny config saved as .pt files stand in for the official files (the
real ones are 0.9 GB and need a download); the key/shape parity of the full-size networks with
the official listings is tested in tests/test_prediff_official.py."""

from __future__ import annotations

import pytest
import torch

import xearthformer as xef
from xearthformer import hub
from xearthformer.cli import main
from xearthformer.errors import CheckpointError, ConfigError
from xearthformer.layout import Channel, DataSpec, Grid, TimeStep
from xearthformer.models import registry
from xearthformer.models.prediff import official
from xearthformer.models.prediff.config import AlignmentConfig
from xearthformer.models.prediff.family import PreDiff, presets

SHAPE_IN, SHAPE_OUT = (2, 16, 16, 1), (2, 16, 16, 1)


def tiny():
    return presets()["tiny"].replace(input_shape=SHAPE_IN, target_shape=SHAPE_OUT)


def random_parts(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Random weights for the three parts of a tiny PreDiff (alignment for its noisy latents)."""
    torch.manual_seed(seed)
    net = PreDiff(tiny())
    align = official.NoisyCuboidTransformerEncoder(alignment_config())
    parts = {"vae": net.vae.state_dict(), "denoiser": net.denoiser.state_dict(), "alignment": align.state_dict()}
    return {name: {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in sd.items()}
            for name, sd in parts.items()}


def alignment_config() -> AlignmentConfig:
    return AlignmentConfig(input_shape=tiny().unet_config.target_shape, base_units=16, depth=(1, 1), out_len=2)


@pytest.fixture()
def files(tmp_path):
    parts = random_parts()
    paths = {}
    for name, state in parts.items():
        paths[name] = tmp_path / f"{name}.pt"
        torch.save(state, paths[name])
    # the denoiser as a Lightning checkpoint of the official diffusion module
    lightning = {"state_dict": {**{f"torch_nn_module.{k}": v for k, v in parts["denoiser"].items()},
                                **{f"first_stage_model.{k}": v for k, v in parts["vae"].items()},
                                "logvar": torch.zeros(1000)}}
    paths["lightning"] = tmp_path / "prediff.ckpt"
    torch.save(lightning, paths["lightning"])
    return parts, paths


def _same(module, state):
    mine = module.state_dict()
    return mine.keys() == state.keys() and all(torch.equal(mine[k], state[k]) for k in state)


def test_load_official_prediff_reads_pt_files_and_lightning_checkpoints(files):
    parts, paths = files
    net = official.load_official_prediff(vae=paths["vae"], denoiser=paths["lightning"], alignment=paths["alignment"],
                                         config=tiny(), alignment_config=alignment_config())
    assert isinstance(net, PreDiff) and not net.training and net.config.weights == "raw"
    assert _same(net.vae, parts["vae"]) and _same(net.denoiser, parts["denoiser"])
    assert sorted(net.alignments) == ["avg_x"] and _same(net.alignments["avg_x"], parts["alignment"])
    assert [a["name"] for a in net.config.alignments] == ["avg_x"]
    without = official.load_official_prediff(vae=parts["vae"], denoiser=paths["denoiser"], config=tiny())
    assert len(without.alignments) == 0 and without.config.alignments == ()
    assert xef.load_official_prediff is official.load_official_prediff


def test_a_bundle_with_an_alignment_network_round_trips(files, tmp_path):
    parts, paths = files
    net = official.load_official_prediff(paths["vae"], paths["denoiser"], paths["alignment"], config=tiny(),
                                         alignment_config=alignment_config())
    spec = _spec()
    xef.save(xef.Forecaster(net, spec), tmp_path / "official.xef")
    loaded = xef.load(tmp_path / "official.xef").model
    assert loaded.config == net.config and _same(loaded.alignments["avg_x"], parts["alignment"])


def test_what_does_not_fit_is_named(files, tmp_path):
    parts, paths = files
    broken = dict(parts["denoiser"])
    broken.pop("final_proj.weight")
    broken["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="missing key.*final_proj.weight.*unexpected key.*extra.weight"):
        official.load_official_prediff(vae=parts["vae"], denoiser=broken, config=tiny())
    with pytest.raises(CheckpointError, match="denoiser: .*missing.*unexpected key.*encoder.conv_in"):
        official.load_official_prediff(vae=parts["vae"], denoiser=dict(parts["vae"]), config=tiny())  # swapped
    wide = {**parts["denoiser"], "final_proj.weight": torch.zeros(3, 3)}
    with pytest.raises(CheckpointError, match="1 shape mismatch.*final_proj.weight: got \\(3, 3\\)"):
        official.load_official_prediff(vae=parts["vae"], denoiser=wide, config=tiny())
    code = tmp_path / "code.pt"
    torch.save({"weights": parts["vae"], "hook": _Evil()}, code)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        official.load_official_prediff(vae=code, denoiser=paths["denoiser"], config=tiny())
    with pytest.raises(CheckpointError, match="missing \\['denoiser'\\].*unknown \\['unet'\\]"):
        official.official_forecaster({"vae": paths["vae"], "unet": paths["denoiser"]}, "sevirlr")
    with pytest.raises(ConfigError, match="'sevirlr' preset"):
        official.official_forecaster({"vae": paths["vae"], "denoiser": paths["denoiser"]}, "tiny")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def _spec() -> DataSpec:
    import numpy as np

    vil = Channel("vil", method="scale", offset=0.0, scale=255.0, range=(0.0, 1.0), attrs={"units": "1"})
    grid = Grid(y="y", x="x", y_values=np.arange(16), x_values=np.arange(16), lat=None, lon=None,
                coord_attrs={"y": {"units": "1"}, "x": {"units": "1"}})
    return DataSpec(inputs=(vil,), targets=(vil,), grid=grid, step=TimeStep(10, "minutes"), context=2, lead=2)


def test_convert_command_writes_a_prediff_bundle(files, monkeypatch, tmp_path, capsys):
    # the official loader behind `xearthformer convert`, on a tiny stand-in for the sevirlr preset
    parts, paths = files
    monkeypatch.setattr(official, "presets", lambda: {"sevirlr": tiny()})
    monkeypatch.setattr(official, "sevirlr_spec", _spec)
    out = tmp_path / "converted.xef"
    assert main(["convert", "--family", "prediff", "--preset", "sevirlr", f"vae={paths['vae']}",
                 f"denoiser={paths['denoiser']}", str(out)]) == 0
    assert "official sevirlr prediff" in capsys.readouterr().out
    fc = xef.load(out)
    assert isinstance(fc.model, PreDiff) and fc.model.config.weights == "raw"
    assert _same(fc.model.denoiser, parts["denoiser"])
    assert fc.metadata["converted_from"] == {"vae": "vae.pt", "denoiser": "denoiser.pt"}


def test_the_official_spec_and_hub_entry():
    spec = official.sevirlr_spec()
    assert (spec.input_shape, spec.target_shape) == ((7, 128, 128, 1), (6, 128, 128, 1))
    assert presets()["sevirlr"].input_shape == spec.input_shape            # the preset fits its data
    entry = hub.REGISTRY["prediff-sevirlr"]
    assert entry.family == "prediff" and entry.preset == "sevirlr"
    assert entry.filenames == official.OFFICIAL_FILES
    assert all(sha is None for _, _, sha in entry.files.values())            # none published
    assert all(url.startswith("https://hkustconnect-my.sharepoint.com/") and url.endswith("&download=1")
               for url in entry.urls.values())
    assert registry.resolve(registry.family("prediff").official_loader) is official.official_forecaster
