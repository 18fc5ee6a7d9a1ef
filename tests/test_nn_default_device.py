"""The cached masks and relative-position indices of ``xearthformer.nn`` are built on the CPU
whatever the default device, so a model built on the meta device (to list its keys and shapes
at no cost) does not leave meta tensors in the cache for the next, real model."""

from __future__ import annotations

import torch

from xearthformer.nn.cuboid import CuboidSelfAttention
from xearthformer.nn.decomposition import relative_position_index, self_attention_mask
from xearthformer.nn.patterns import Decomposition


def test_meta_construction_does_not_poison_the_cache():
    d = Decomposition((1, 11, 3), shift_size=(0, 5, 1))  # sizes no other test uses
    relative_position_index.cache_clear()
    self_attention_mask.cache_clear()
    with torch.device("meta"):
        meta = CuboidSelfAttention(8, 2, d)
        mask = self_attention_mask((2, 11, 3), d, "zeros")
    assert meta.qkv.weight.is_meta
    assert mask is not None and mask.device.type == "cpu"
    real = CuboidSelfAttention(8, 2, d)
    assert real.relative_position_index.device.type == "cpu"
    assert torch.equal(real.relative_position_index, relative_position_index((1, 11, 3), (1, 11, 3), (1, 11, 3)))
    out = real(torch.randn(1, 2, 11, 3, 8))  # runs: the cached mask is a real tensor
    assert out.shape == (1, 2, 11, 3, 8) and torch.isfinite(out).all()
