"""Import the official Earthformer weights (``earthformer`` 0.2.1, amazon-science) safely.

The ``sevir`` and ``enso`` presets of :class:`~xearthformer.models.earthformer.network.Earthformer` have
exactly the official module tree, so an official state_dict loads key for key (including the
``relative_position_index`` buffers, which are checked against the values they must have).
The importer never unpickles code: files are read with ``torch.load(weights_only=True)``.

Compatibility. For the same weights and input, outputs equal the official
``CuboidTransformerModel`` built from its v1 YAML to float32 round-off (tested to 1e-5 in
eval mode, also for other patterns, padding and global-vector settings). xearthformer
deliberately differs from the official code only off those paths:

* ``padding_type="ignore"`` with global vectors: the official global-to-local mask is in grid
  order while its keys are in cuboid order (it masks the wrong positions); xearthformer masks
  the padded ones.
* ``padding_type="nearest"``: the official code stretches the whole axis by nearest
  interpolation; xearthformer repeats the edge values.
* Cuboid attention with zero padding in *cross*-attention (a ``cross_KxK`` pattern on a
  grid that K does not divide) crashes in the official code; it works here.
* Patch merging also pads the time axis when needed (the official code skips padding when
  only T needs it, and then fails).

Command line: ``xearthformer convert official.pt out.xef --preset sevir|enso`` wraps the
model with the data description of the official dataset (:func:`official_spec`) into a
:class:`~xearthformer.checkpoint.Forecaster` bundle.

>>> model = load_official("earthformer_icarenso2021.pt", preset="enso")   # doctest: +SKIP
>>> model(x).shape                                                        # doctest: +SKIP
torch.Size([1, 14, 24, 48, 1])
"""

from __future__ import annotations

import argparse
import os
import pickle
from collections.abc import Mapping
from typing import Any

import torch

from ...errors import CheckpointError, ConfigError

OFFICIAL_PRESETS = ("sevir", "enso")
#: prefix of the keys in official Lightning training checkpoints (stripped if every key has it)
_LIGHTNING_PREFIX = "torch_nn_module."
_SHOW = 10  # how many offending keys a message lists


def _read(path: str | os.PathLike[str]) -> Any:
    if os.fspath(path).endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(os.fspath(path), device="cpu")
        except SafetensorError as err:
            raise CheckpointError(f"{os.fspath(path)!r} is not a valid safetensors file: {err}") from err
    try:
        return torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError) as err:
        why = (str(err).splitlines() or [""])[0][:300]
        raise CheckpointError(
            f"refused to load {os.fspath(path)!r}: it is not a plain tensor state_dict that loads with "
            f"torch.load(weights_only=True) ({type(err).__name__}: {why}). "
            "Files that need code to unpickle are never executed; re-save the weights with "
            "torch.save(model.state_dict(), path) in a trusted environment."
        ) from err


def _as_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]  # a Lightning checkpoint
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"a state_dict maps names to tensors; these entries are not tensors: {bad[:_SHOW]}")
    if obj and all(k.startswith(_LIGHTNING_PREFIX) for k in obj):
        obj = {k[len(_LIGHTNING_PREFIX):]: v for k, v in obj.items()}
    return dict(obj)


def _listing(keys: list[str]) -> str:
    more = f" ... and {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def check_state_dict(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise CheckpointError naming every missing/unexpected key and shape/dtype mismatch."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [k for k, v in expected.items() if k in state and state[k].shape != v.shape]
    shapes = [f"{k}: got {tuple(state[k].shape)}, expected {tuple(expected[k].shape)}" for k in wrong_shape]
    kinds = [f"{k}: got {state[k].dtype}, expected {'a float' if v.is_floating_point() else 'an integer'} dtype"
             for k, v in expected.items()
             if k in state and k not in wrong_shape and state[k].is_floating_point() != v.is_floating_point()]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {_listing(shapes)}")
    if kinds:
        problems.append(f"{len(kinds)} dtype mismatch(es): {_listing(kinds)}")
    if problems:
        raise CheckpointError(
            f"this state_dict does not fit {what}: " + "; ".join(problems)
            + ". Is it an official Earthformer checkpoint of that preset?")


def _check_index_buffers(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """The relative-position index buffers are derived data: they must equal their formula."""
    for name, module in model.named_modules():
        if hasattr(module, "relative_position_index"):
            key = f"{name}.relative_position_index"
            if not torch.equal(state[key].long(), module.relative_position_index):
                raise CheckpointError(
                    f"{key} holds other values than the official relative-position index of this layer; "
                    "the checkpoint was built with a different cuboid size")


def load_official(path_or_state_dict: str | os.PathLike[str] | Mapping[str, torch.Tensor],
                  preset: str = "sevir") -> Any:
    """Earthformer of an official preset, with the official weights.

    Parameters
    ----------
    path_or_state_dict
        A ``.pt`` file (the official pretrained checkpoints are plain state_dicts), a
        ``.safetensors`` file, or the state_dict itself. Lightning checkpoints (``state_dict`` with the
        ``torch_nn_module.`` prefix) are accepted too.
    preset
        ``"sevir"`` (earthformer_sevir.pt) or ``"enso"`` (earthformer_icarenso2021.pt).

    Returns
    -------
    Earthformer
        In eval mode, float32, on the CPU.

    Raises
    ------
    CheckpointError
        The file needs code to unpickle, or keys are missing/unexpected, or shapes differ
        (all named in the message).
    ConfigError
        Unknown preset.
    """
    from .network import Earthformer

    if preset not in OFFICIAL_PRESETS:
        raise ConfigError(f"preset must be one of {OFFICIAL_PRESETS} (the official checkpoints), got {preset!r}")
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        raw = _read(path_or_state_dict)
    else:
        raw = path_or_state_dict
    state = _as_state_dict(raw)
    model = Earthformer.from_preset(preset)
    expected = model.state_dict()
    check_state_dict(state, expected, f"the official {preset!r} Earthformer")
    _check_index_buffers(model, state)
    state = {k: (v.to(expected[k].dtype) if v.is_floating_point() else v.long()) for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------- data description

def official_spec(preset: str) -> Any:
    """The :class:`~xearthformer.layout.DataSpec` of an official preset's data set.

    ``sevir``: VIL (SEVIR pixel code 0-255) scaled by 1/255, 13 -> 12 frames at 5 minutes on
    the 384 x 384 patch of 1 km pixels. ``enso``: ICAR-ENSO SST anomalies (min-max scaled
    with the official constants), 12 -> 14 months on the 24 x 48 grid (lat -55..60,
    lon 95..330, 5 degrees).
    """
    import numpy as np

    from ...layout import Channel, DataSpec, Grid, TimeStep

    if preset == "sevir":
        vil = Channel("vil", method="scale", offset=0.0, scale=255.0,
                      attrs={"units": "1", "long_name": "vertically integrated liquid (SEVIR pixel code)"})
        grid = Grid(y="y", x="x", y_values=np.arange(384), x_values=np.arange(384), lat=None, lon=None,
                    coord_attrs={"y": {"long_name": "pixel row (1 km pixels)", "units": "1"},
                                 "x": {"long_name": "pixel column (1 km pixels)", "units": "1"}})
        return DataSpec(inputs=(vil,), targets=(vil,), grid=grid, step=TimeStep(5, "minutes"),
                        context=13, lead=12)
    if preset == "enso":
        sst_min, sst_max = -16.549121856689453, 10.198975563049316  # official min-max constants
        sst = Channel("sst", method="minmax", offset=sst_min, scale=sst_max - sst_min,
                      attrs={"units": "degC", "long_name": "sea surface temperature anomaly"})
        grid = Grid(y="lat", x="lon", y_values=np.arange(-55.0, 60.1, 5.0), x_values=np.arange(95.0, 330.1, 5.0),
                    lat="lat", lon="lon",
                    coord_attrs={"lat": {"standard_name": "latitude", "units": "degrees_north"},
                                 "lon": {"standard_name": "longitude", "units": "degrees_east"}})
        return DataSpec(inputs=(sst,), targets=(sst,), grid=grid, step=TimeStep(1, "months"),
                        context=12, lead=14)
    raise ConfigError(f"preset must be one of {OFFICIAL_PRESETS}, got {preset!r}")


# ------------------------------------------------------------------------------------------ CLI

def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``xearthformer convert``."""
    parser.add_argument("source", help="official Earthformer checkpoint (.pt state_dict)")
    parser.add_argument("output", help="bundle to write (.xef)")
    parser.add_argument("--preset", required=True, choices=OFFICIAL_PRESETS,
                        help="which official model the checkpoint is (sevir or enso)")


def run_convert(args: argparse.Namespace) -> int:
    """Convert an official checkpoint into a ``.xef`` bundle; returns the exit code."""
    from ...checkpoint import Forecaster, save

    model = load_official(args.source, preset=args.preset)
    metadata = {"source": "official Earthformer checkpoint (earthformer 0.2.1)",
                "converted_from": os.path.basename(os.fspath(args.source)), "preset": args.preset}
    save(Forecaster(model, official_spec(args.preset), metadata=metadata), args.output)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.output}: official {args.preset} Earthformer, {n:,} parameters")
    return 0
