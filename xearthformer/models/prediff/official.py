"""Load official PreDiff state_dicts (VAE, UNet denoiser, alignment network) strictly.

Each loader takes a state_dict that is already loaded (plain PyTorch tensors, e.g. from
``torch.load(path, weights_only=True)``), builds the network of the given config (default:
the official SEVIR-LR one) and loads the weights key for key. Anything that does not fit is
named: missing and unexpected keys, shape and dtype mismatches, and ``relative_position_index``
buffers whose values differ from the ones the cuboid sizes imply.

Lightning checkpoints are accepted as the official export reads them: a ``{"state_dict": ...}``
wrapper is opened, and the network's own entries are taken from under the prefix the official
Lightning modules use (``torch_nn_module.`` for the trained network of each script,
``first_stage_model.`` for the VAE inside the diffusion and alignment modules, ``model.``),
dropping the rest (``loss.*``, ``model_ema.*``, ``logvar``...). The official pretrained files are
already plain state_dicts.

>>> import torch
>>> state = torch.load("pretrained_sevirlr_vae_8x8x64_v1.pt", weights_only=True)  # doctest: +SKIP
>>> vae = load_official_vae(state)                                               # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ...errors import CheckpointError
from ..official_io import check_index_buffers, check_state_dict
from .alignment import NoisyCuboidTransformerEncoder
from .config import AlignmentConfig, UNetConfig, VAEConfig
from .unet import CuboidTransformerUNet
from .vae import FrameVAE

__all__ = ["LIGHTNING_PREFIXES", "load_official_alignment", "load_official_unet", "load_official_vae",
           "load_strict"]

#: key prefixes of the official Lightning modules, tried in this order after no prefix
LIGHTNING_PREFIXES = ("torch_nn_module.", "first_stage_model.", "model.")


def _candidates(state: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = [("", dict(state))]
    for prefix in LIGHTNING_PREFIXES:
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if sub:
            found.append((prefix, sub))
    return found


def _select(state: Any, expected: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The entries of ``state`` meant for a network with the ``expected`` keys."""
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"expected a state_dict (a mapping of names to tensors), got {type(state).__name__}")
    candidates = _candidates(state)
    for _, sub in candidates:
        if set(sub) == set(expected):
            return sub
    # none fits exactly: report against the candidate that shares most keys
    return max(candidates, key=lambda c: len(set(c[1]) & set(expected)))[1]


def load_strict(model: nn.Module, state: Mapping[str, Any], what: str) -> nn.Module:
    """Load ``state`` into ``model`` key for key (after the Lightning prefixes are resolved).

    Raises
    ------
    CheckpointError
        Naming every missing/unexpected key and shape/dtype mismatch, or a relative-position
        index buffer with other values than this network's cuboid sizes give.
    """
    expected = model.state_dict()
    sub = _select(state, expected)
    bad = [k for k, v in sub.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"a state_dict maps names to tensors; these entries of the {what} are not: {bad[:10]}")
    check_state_dict(sub, expected, what,
                     hint="Is it an official PreDiff checkpoint of this network, built with this config?")
    check_index_buffers(model, sub)
    sub = {k: v.to(expected[k].dtype) for k, v in sub.items()}  # (float vs integer kinds checked above)
    model.load_state_dict(sub, strict=True)
    return model.eval()


def load_official_vae(state_dict: Mapping[str, Any], config: VAEConfig | None = None) -> FrameVAE:
    """The frame VAE with official weights (default config: SEVIR-LR), in eval mode on the CPU.

    The official file: ``pretrained_sevirlr_vae_8x8x64_v1.pt`` (keys ``encoder.*``, ``decoder.*``,
    ``quant_conv.*``, ``post_quant_conv.*``).
    """
    model = FrameVAE(config or VAEConfig())
    return load_strict(model, state_dict, "the PreDiff frame VAE")  # type: ignore[return-value]


def load_official_unet(state_dict: Mapping[str, Any], config: UNetConfig | None = None) -> CuboidTransformerUNet:
    """The Earthformer-UNet denoiser with official weights (default config: SEVIR-LR), eval mode.

    The official file: ``pretrained_sevirlr_earthformerunet_v1.pt`` (the raw, non-EMA weights).
    """
    model = CuboidTransformerUNet(config or UNetConfig())
    return load_strict(model, state_dict, "the PreDiff Earthformer-UNet denoiser")  # type: ignore[return-value]


def load_official_alignment(state_dict: Mapping[str, Any],
                            config: AlignmentConfig | None = None) -> NoisyCuboidTransformerEncoder:
    """The alignment network with official weights (default config: SEVIR-LR avg-intensity), eval mode.

    The official file: ``pretrained_sevirlr_alignment_avg_x_cuboid_v1.pt``.
    """
    model = NoisyCuboidTransformerEncoder(config or AlignmentConfig())
    return load_strict(model, state_dict, "the PreDiff alignment network")  # type: ignore[return-value]
