"""models/: the noise keys, the family registry, the shared config base and the protocol."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys

import cftime
import numpy as np
import pytest
import torch

from xearthformer.errors import ConfigError
from xearthformer.models import registry
from xearthformer.models.base import ForecastModel
from xearthformer.models.config import ModelConfig
from xearthformer.models.earthformer.config import EarthformerConfig, presets
from xearthformer.models.earthformer.network import Earthformer
from xearthformer.models.keys import KeyedNoise, key_of, make_keys
from xearthformer.nn.blocks import BlockOptions


# -- keys ----------------------------------------------------------------------------------------
def _blake(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


def test_keys_are_the_stated_hash_of_seed_time_sample_member():
    inits = np.array(["2009-01-16T12:00", "2009-02-15"], "datetime64[m]")
    keys = make_keys(7, inits, [0, 3], 2)
    assert keys.shape == (2, 2) and keys.dtype == np.int64
    assert keys[0, 1] == _blake("7|2009-01-16T12:00:00|0|1")
    assert keys[1, 0] == _blake("7|2009-02-15T00:00:00|3|0")
    assert len(np.unique(keys)) == 4


def test_keys_agree_for_numpy_and_cftime_dates_and_for_member_subsets():
    numpy_t = np.datetime64("2009-01-16T12:00:00")
    for cf in (cftime.DatetimeGregorian(2009, 1, 16, 12), cftime.DatetimeNoLeap(2009, 1, 16, 12)):
        assert key_of(0, numpy_t, 0, 5) == key_of(0, cf, 0, 5)
    inits = np.array(["2000-01", "2000-02", "2000-03"], "datetime64[M]")
    full = make_keys(1, inits, 0, 8)
    np.testing.assert_array_equal(make_keys(1, inits, 0, [6, 2]), full[:, [6, 2]])
    assert not (make_keys(2, inits, 0, 8) == full).any()            # another seed, other keys
    assert not (make_keys(1, inits, 1, 8) == full).any()            # another sample, other keys


@pytest.mark.parametrize("bad", [0, -1, [], [1, 1], [0, -2], [0.5], True])
def test_bad_member_lists_are_refused(bad):
    with pytest.raises(ConfigError, match="member"):
        make_keys(0, np.array(["2000-01"], "datetime64[M]"), 0, bad)


def test_member_draws_do_not_depend_on_the_batch():
    keys = make_keys(0, np.array(["2000-01-01"] * 4, "datetime64[D]"), np.arange(4), 4).reshape(-1)
    k = 5
    alone = KeyedNoise(keys[k:k + 1])
    batch4 = KeyedNoise(keys[4:8])
    batch16 = KeyedNoise(keys)
    for _ in range(2):  # successive draws continue each key's own stream
        a, b, c = alone.randn((3, 4)), batch4.randn((3, 4)), batch16.randn((3, 4))
        assert torch.equal(a[0], b[k - 4]) and torch.equal(a[0], c[k])
    # brute force: the stream of a generator seeded by the key alone
    g = torch.Generator().manual_seed(int(keys[k]))
    first, second = torch.randn((3, 4), generator=g), torch.randn((3, 4), generator=g)
    again = KeyedNoise([keys[k]])
    assert torch.equal(again.randn((3, 4))[0], first) and torch.equal(again.randn((3, 4))[0], second)
    assert KeyedNoise(keys).randn((2,), dtype=torch.float64).dtype == torch.float64


# -- registry ------------------------------------------------------------------------------------
def test_reading_the_registry_imports_no_torch():
    code = ("import sys\nfrom xearthformer.models import registry\n"
            "registry.families(); registry.family('earthformer'); registry.family_for_bundle_class('Earthformer')\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_registry_lookups_and_their_errors():
    row = registry.family("earthformer")
    assert registry.resolve(row.network) is Earthformer and registry.resolve(row.config) is EarthformerConfig
    assert registry.family_for_bundle_class("Earthformer") is row and row.datasets == ("sevir", "enso", "sevir-lr")
    assert registry.presets() == presets() and registry.presets("earthformer")["tiny"] == presets()["tiny"]
    with pytest.raises(ConfigError, match="unknown model family 'diffusion'.*earthformer, prediff"):
        registry.family("diffusion")
    with pytest.raises(ConfigError, match="'os.system'.*Earthformer"):
        registry.family_for_bundle_class("os.system")
    with pytest.raises(ConfigError, match="unknown earthformer preset 'huge'.*tiny"):
        registry.build("earthformer", "huge")
    with pytest.raises(ConfigError, match="module:attribute"):
        registry.resolve("xearthformer.errors")
    with pytest.raises(ConfigError, match="cannot resolve"):
        registry.resolve("xearthformer.errors:Nope")


def test_register_family_refuses_duplicates(monkeypatch):
    monkeypatch.setattr(registry, "_FAMILIES", registry.families())
    row = registry.Family("mini", network="xearthformer.models.earthformer.network:Earthformer",
                          config="xearthformer.models.earthformer.config:EarthformerConfig",
                          presets="xearthformer.models.earthformer.config:presets",
                          objective="xearthformer.training.objectives:MaskedMSE", bundle_classes=("Mini",))
    assert registry.register_family(row) is row and registry.family("mini") is row
    with pytest.raises(ConfigError, match="already registered"):
        registry.register_family(row)
    with pytest.raises(ConfigError, match="already belong to family 'earthformer'"):
        registry.register_family(dataclasses.replace(row, name="other", bundle_classes=("Earthformer",)))
    with pytest.raises(ConfigError, match="module:attribute"):
        registry.Family("bad", network="no colon", config="a:b", presets="a:b", objective="a:b")


# -- the shared config base ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Small(ModelConfig):
    shape: tuple[int, ...]
    depths: tuple[int, ...] = (1, 1)
    attn_drop: float = 0.1
    ffn_drop: float = 0.2
    units: int = 8


def test_model_config_serialises_copies_and_drops_dropout_by_one_rule():
    cfg = Small.from_dict({"shape": [2, 3], "depths": [4]})
    assert cfg.shape == (2, 3) and cfg.depths == (4,)                # lists become tuples
    assert Small.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["shape"] == [2, 3]
    quiet = cfg.without_dropout()
    assert (quiet.attn_drop, quiet.ffn_drop, quiet.units) == (0.0, 0.0, 8)
    with pytest.raises(ConfigError, match="unknown Small field.*'nope'.*valid fields: shape"):
        Small.from_dict({"shape": [1], "nope": 1})
    with pytest.raises(ConfigError, match="lacks \\['shape'\\]"):
        Small.from_dict({"units": 3})
    with pytest.raises(ConfigError, match="unknown Small field"):
        cfg.replace(unit=3)
    assert Small(shape=[1, 2]).shape == (1, 2)                        # built directly, too


def test_earthformer_config_uses_the_shared_base():
    cfg = presets()["tiny"]
    assert isinstance(cfg, ModelConfig)
    drops = [f for f in cfg.field_names() if f.endswith("_drop")]
    assert sorted(drops) == ["attn_drop", "ffn_drop", "proj_drop"]
    assert all(getattr(presets()["small"].without_dropout(), f) == 0.0 for f in drops)


def test_block_options_take_the_config_fields_by_name():
    cfg = presets()["sevir"]
    opts = BlockOptions.from_config(cfg)
    names = [f.name for f in dataclasses.fields(BlockOptions)]
    assert len(names) == 15 and set(names) <= set(cfg.field_names())
    assert all(getattr(opts, n) == getattr(cfg, n) for n in names)


# -- the protocol --------------------------------------------------------------------------------
def test_earthformer_implements_the_deterministic_protocol():
    torch.manual_seed(0)
    model = Earthformer(presets()["tiny"].replace(input_shape=(3, 8, 8, 1), target_shape=(2, 8, 8, 1))).eval()
    assert isinstance(model, ForecastModel) and Earthformer.stochastic is False
    x = torch.randn(2, 3, 8, 8, 1)
    with torch.no_grad():
        y = model.predict(x, keys=torch.zeros(2, 5, dtype=torch.int64))
        assert y.shape == (2, 1, 2, 8, 8, 1) and torch.equal(y[:, 0], model(x))
    with pytest.raises(ConfigError, match="deterministic.*steps"):
        model.predict(x, steps=10)


def test_activation_checkpointing_switch_updates_config_and_blocks():
    model = Earthformer(presets()["tiny"])
    model.set_activation_checkpointing(True)
    assert model.config.checkpoint_level == 2
    levels = {m.opts.checkpoint_level for m in model.modules() if isinstance(getattr(m, "opts", None), BlockOptions)}
    assert levels == {2}
    model.set_activation_checkpointing(False)
    assert model.config.checkpoint_level == 0
