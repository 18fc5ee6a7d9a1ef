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

The whole family: :func:`load_official_prediff` reads the official files (VAE, denoiser and,
optionally, the alignment network) into one :class:`~.family.PreDiff`, and
:func:`official_forecaster` (the registry's official loader, used by
``xearthformer.pretrained("prediff-sevirlr")`` and ``xearthformer convert --family prediff``)
adds the SEVIR-LR data description (:func:`sevirlr_spec`).

>>> import torch
>>> state = torch.load("pretrained_sevirlr_vae_8x8x64_v1.pt", weights_only=True)  # doctest: +SKIP
>>> vae = load_official_vae(state)                                               # doctest: +SKIP
>>> net = load_official_prediff(vae="pretrained_sevirlr_vae_8x8x64_v1.pt",       # doctest: +SKIP
...                             denoiser="pretrained_sevirlr_earthformerunet_v1.pt")
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...errors import CheckpointError, ConfigError
from ..official_io import check_index_buffers, check_state_dict, read_checkpoint
from .alignment import NoisyCuboidTransformerEncoder
from .config import AlignmentConfig, UNetConfig, VAEConfig
from .family import PreDiff, PreDiffConfig, presets
from .unet import CuboidTransformerUNet
from .vae import FrameVAE

if TYPE_CHECKING:  # pragma: no cover
    from ...layout import DataSpec
    from ..base import Forecaster

__all__ = ["ALIGNMENT_NAME", "LIGHTNING_PREFIXES", "OFFICIAL_FILES", "PARTS", "load_official_alignment",
           "load_official_prediff", "load_official_unet", "load_official_vae", "load_strict",
           "official_forecaster", "sevirlr_spec"]

#: the parts of an official PreDiff checkpoint set (hub entries, ``xearthformer convert``)
PARTS = ("vae", "denoiser", "alignment")
#: the official SEVIR-LR file of each part (gaozhihan/PreDiff ``src/prediff/utils/download.py``)
OFFICIAL_FILES = {
    "vae": "pretrained_sevirlr_vae_8x8x64_v1.pt",
    "denoiser": "pretrained_sevirlr_earthformerunet_v1.pt",
    "alignment": "pretrained_sevirlr_alignment_avg_x_cuboid_v1.pt",
}
#: the name the official alignment network (future average intensity) gets in ``PreDiff.alignments``
ALIGNMENT_NAME = "avg_x"

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


def _state(source: Any, part: str) -> Any:
    """A part's state_dict: a file read with ``torch.load(weights_only=True)`` (or safetensors),
    or a mapping as it is (prefixes are resolved by :func:`load_strict`)."""
    if isinstance(source, (str, os.PathLike)):
        return read_checkpoint(source)
    if isinstance(source, Mapping):
        return source
    raise CheckpointError(f"the {part} must be a checkpoint path or a state_dict, got {type(source).__name__}")


def load_official_prediff(vae: Any, denoiser: Any, alignment: Any = None,
                          config: PreDiffConfig | None = None,
                          alignment_config: AlignmentConfig | None = None) -> PreDiff:
    """A :class:`~.family.PreDiff` with the official weights of each part, in eval mode on the CPU.

    Parameters
    ----------
    vae, denoiser : path-like or mapping
        The official ``.pt`` files (read with ``torch.load(weights_only=True)``; they are plain
        state_dicts) or state_dicts; Lightning checkpoints are accepted (``state_dict`` wrapper,
        ``torch_nn_module.``/``first_stage_model.``/``model.`` prefixes stripped).
    alignment : path-like or mapping, optional
        The official alignment network (future average intensity); it becomes
        ``net.alignments["avg_x"]`` and an entry of ``config.alignments``.
    config : PreDiffConfig, optional
        Default: the ``sevirlr`` preset (7 -> 6 frames of 128 x 128 x 1). ``weights`` is set to
        ``"raw"``: the official release holds the non-EMA denoiser weights.
    alignment_config : AlignmentConfig, optional
        The alignment network's architecture; default: the official one for this config's
        noisy latents.

    Raises
    ------
    CheckpointError
        A file that needs code to unpickle, or a state_dict whose keys or shapes do not fit the
        part (missing and unexpected keys and mismatched shapes are named).

    Examples
    --------
    >>> net = load_official_prediff(vae="pretrained_sevirlr_vae_8x8x64_v1.pt",      # doctest: +SKIP
    ...                             denoiser="pretrained_sevirlr_earthformerunet_v1.pt",
    ...                             alignment="pretrained_sevirlr_alignment_avg_x_cuboid_v1.pt")
    >>> sorted(net.alignments)                                                      # doctest: +SKIP
    ['avg_x']
    """
    cfg = (config or presets()["sevirlr"]).replace(weights="raw")
    if alignment is not None:
        latent = tuple(cfg.unet_config.target_shape)
        align = alignment_config or AlignmentConfig(input_shape=latent)
        entry = {"name": ALIGNMENT_NAME, "config": align.to_dict(),
                 "source": OFFICIAL_FILES["alignment"]}
        cfg = cfg.replace(alignments=(*[a for a in cfg.alignments if a["name"] != ALIGNMENT_NAME], entry))
    net = PreDiff(cfg)
    load_strict(net.vae, _state(vae, "vae"), "the PreDiff frame VAE")
    load_strict(net.denoiser, _state(denoiser, "denoiser"), "the PreDiff Earthformer-UNet denoiser")
    if alignment is not None:
        load_strict(net.alignments[ALIGNMENT_NAME], _state(alignment, "alignment"), "the PreDiff alignment network")
    return net.eval()


def sevirlr_spec() -> DataSpec:
    """The data description of SEVIR-LR (the official PreDiff data set): VIL (SEVIR pixel code
    0-255) scaled by 1/255, 7 -> 6 frames at 10 minutes on 128 x 128 pixels (SEVIR's 384 x 384
    1 km patch max-pooled 3 x 3)."""
    import numpy as np

    from ...layout import Channel, DataSpec, Grid, TimeStep

    vil = Channel("vil", method="scale", offset=0.0, scale=255.0, range=(0.0, 1.0),
                  attrs={"units": "1", "long_name": "vertically integrated liquid (SEVIR pixel code)"})
    grid = Grid(y="y", x="x", y_values=np.arange(128), x_values=np.arange(128), lat=None, lon=None,
                coord_attrs={"y": {"long_name": "pixel row (3 km pixels)", "units": "1"},
                             "x": {"long_name": "pixel column (3 km pixels)", "units": "1"}})
    return DataSpec(inputs=(vil,), targets=(vil,), grid=grid, step=TimeStep(10, "minutes"), context=7, lead=6)


def official_forecaster(files: Mapping[str, Any], preset: str = "sevirlr",
                        metadata: dict[str, Any] | None = None) -> Forecaster:
    """The registry's official loader: ``files`` (part -> path; parts ``"vae"``, ``"denoiser"``
    and optionally ``"alignment"``) as a Forecaster on the SEVIR-LR data description.

    Used by :func:`xearthformer.hub.pretrained` and ``xearthformer convert --family prediff
    vae=... denoiser=... [alignment=...]``.
    """
    from ..base import Forecaster

    if preset != "sevirlr":
        raise ConfigError(f"the official PreDiff checkpoints are of the 'sevirlr' preset, got {preset!r}")
    unknown = sorted(set(files) - set(PARTS))
    missing = [p for p in ("vae", "denoiser") if p not in files]
    if unknown or missing:
        raise CheckpointError(f"official PreDiff checkpoints are the parts vae, denoiser and (optional) alignment; "
                              f"got {sorted(files)}" + (f", missing {missing}" if missing else "")
                              + (f", unknown {unknown}" if unknown else "")
                              + ". Fix: xearthformer convert --family prediff --preset sevirlr "
                                "vae=VAE.pt denoiser=UNET.pt [alignment=ALIGN.pt] out.xef")
    net = load_official_prediff(files["vae"], files["denoiser"], files.get("alignment"))
    return Forecaster(net, sevirlr_spec(), metadata=metadata)
