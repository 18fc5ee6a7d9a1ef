"""Reading official checkpoints safely, for every family's importer.

Files are read with ``torch.load(weights_only=True)`` (or safetensors), so a checkpoint can never
run code; Lightning checkpoints (``{"state_dict": ...}`` with a common key prefix) are reduced
to the plain state_dict; :func:`check_state_dict` compares it key by key and shape by shape with
the state_dict a family's network expects and names every difference.

>>> state = read_state_dict("earthformer_icarenso2021.pt")                # doctest: +SKIP
>>> check_state_dict(state, model.state_dict(), "the official 'enso' Earthformer")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import CheckpointError

#: prefix of the keys in official Lightning training checkpoints (stripped if every key has it)
LIGHTNING_PREFIX = "torch_nn_module."
_SHOW = 10  # how many offending keys a message lists


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """The object stored in a ``.pt``/``.ckpt`` (weights only) or ``.safetensors`` file.

    Raises
    ------
    CheckpointError
        The file needs code to unpickle (it is never executed), or is not valid safetensors.
    FileNotFoundError
        No such file.
    """
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


def as_state_dict(obj: Any, prefix: str = LIGHTNING_PREFIX) -> dict[str, torch.Tensor]:
    """A plain ``{name: tensor}`` state_dict from a state_dict or a Lightning checkpoint (its
    ``state_dict``, with ``prefix`` stripped when every key has it)."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]  # a Lightning checkpoint
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"a state_dict maps names to tensors; these entries are not tensors: {bad[:_SHOW]}")
    if prefix and obj and all(k.startswith(prefix) for k in obj):
        obj = {k[len(prefix):]: v for k, v in obj.items()}
    return dict(obj)


def read_state_dict(path_or_state_dict: str | os.PathLike[str] | Mapping[str, torch.Tensor],
                    prefix: str = LIGHTNING_PREFIX) -> dict[str, torch.Tensor]:
    """:func:`as_state_dict` of a file (read with :func:`read_checkpoint`) or of a mapping."""
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        return as_state_dict(read_checkpoint(path_or_state_dict), prefix)
    return as_state_dict(path_or_state_dict, prefix)


def _listing(keys: list[str]) -> str:
    more = f" ... and {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def check_state_dict(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], what: str,
                     hint: str = "") -> None:
    """Raise CheckpointError naming every missing/unexpected key and shape/dtype mismatch.

    ``what`` names the target (``"the official 'sevir' Earthformer"``); ``hint`` ends the message
    (e.g. a question about where the file came from).
    """
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
        raise CheckpointError(f"this state_dict does not fit {what}: " + "; ".join(problems)
                              + (f". {hint}" if hint else "."))


def cast_like(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with floating tensors in the expected dtypes and integer ones as int64."""
    return {k: (v.to(expected[k].dtype) if v.is_floating_point() else v.long()) for k, v in state.items()}


def check_index_buffers(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """The relative-position index buffers are derived data: they must equal their formula
    (a checkpoint built with other cuboid sizes would otherwise load and attend wrongly)."""
    for name, module in model.named_modules():
        if hasattr(module, "relative_position_index"):
            key = f"{name}.relative_position_index"
            if not torch.equal(state[key].long(), module.relative_position_index):
                raise CheckpointError(
                    f"{key} holds other values than the official relative-position index of this layer; "
                    "the checkpoint was built with a different cuboid size")
