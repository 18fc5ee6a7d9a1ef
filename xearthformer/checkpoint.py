"""The one-file model bundle of a :class:`~xearthformer.models.base.Forecaster`: :func:`save` and :func:`load`.

A bundle is a single safetensors file. Tensors: the model's state_dict under ``model.``
and the spec's arrays (climatology, static fields, land masks, 2-D lat/lon) under ``spec.``.
JSON in the safetensors header metadata: the bundle format version, the package version,
the model class and config, and the :class:`~xearthformer.layout.DataSpec`. Loading parses
JSON and raw tensors only, so it never executes code from the file: the model class is
looked up in :mod:`xearthformer.models.registry` (a family's ``bundle_classes``), never
imported by the name the file gives. Training checkpoints (optimizer state etc.) are separate
files owned by :mod:`xearthformer.training`; bundles are what users share.

>>> fc = Forecaster(model, spec)                                     # doctest: +SKIP
>>> save(fc, "sst.xef"); fc2 = load("sst.xef")                       # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from typing import Any

import numpy as np

from ._version import __version__
from .errors import CheckpointError, ConfigError, ModelTypeError
from .layout import DataSpec
from .models import registry
from .models.base import Forecaster

#: bundle format written by :func:`save`; :func:`load` refuses anything newer.
FORMAT = "xearthformer-bundle"
FORMAT_VERSION = 1
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header size


def _model_class_name(model: Any) -> str:
    try:
        registry.family_of(model)
    except ConfigError as err:
        raise ModelTypeError(f"cannot save a {type(model).__name__}: {err}") from err
    return type(model).__name__


def save(forecaster: Forecaster, path: str | os.PathLike[str]) -> None:
    """Write ``forecaster`` to one safetensors file (suggested suffix ``.xef``).

    The file is written to a temporary name and renamed, so a crash never leaves a
    half-written bundle under ``path``.

    Raises
    ------
    ModelTypeError
        ``forecaster`` is not a :class:`Forecaster`.
    FileNotFoundError
        The folder of ``path`` does not exist.

    Examples
    --------
    >>> save(fc, tmp_path / "sst.xef")                                # doctest: +SKIP
    """
    import torch
    from safetensors.torch import save_file

    from .parallel import unwrap_model

    if not isinstance(forecaster, Forecaster):
        raise ModelTypeError(
            f"save() takes a xearthformer.Forecaster, got {type(forecaster).__name__}. "
            "Fix: wrap the model: Forecaster(model, spec)."
        )
    model, spec = unwrap_model(forecaster.model), forecaster.spec
    tensors: dict[str, Any] = {}
    # clone: safetensors refuses tensors that share storage (views, tied weights)
    for key, value in model.state_dict().items():
        tensors[f"model.{key}"] = value.detach().to("cpu").contiguous().clone()
    for key, value in spec.arrays().items():
        tensors[f"spec.{key}"] = torch.from_numpy(np.ascontiguousarray(value).copy())
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "xearthformer_version": forecaster.version,
        "model_class": _model_class_name(model),
        "model_config": json.dumps(model.config.to_dict()),
        "spec": json.dumps(spec.to_dict()),
        "metadata": json.dumps(forecaster.metadata, default=str),
        "tensors_sha256": tensors_digest(tensors),
    }
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):  # else mkstemp reports a puzzling temporary file name
        raise FileNotFoundError(
            f"cannot save to {path}: the folder {folder} does not exist. "
            "Fix: create it first (os.makedirs(folder, exist_ok=True))."
        )
    fd, tmp = tempfile.mkstemp(prefix=".xef-", dir=folder)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def tensors_digest(tensors: dict[str, Any]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``tensors`` (in name order).

    Stored in the bundle's header, it lets :func:`load` detect damaged weights: safetensors
    itself has no checksum, so a flipped bit would otherwise load silently.
    """
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


_RESAVE = ("The bundle's header was edited or damaged. Fix: save the model again with "
           "xearthformer.save(), or get an intact copy of the file.")


def _reason(err: Exception, max_lines: int = 4) -> str:
    """A short, readable cause: KeyError names the missing field; long messages (a state_dict
    mismatch lists every tensor) are cut to their first lines."""
    if isinstance(err, KeyError):
        return f"missing field {err}"
    lines = str(err).strip().splitlines()
    more = f" ... ({len(lines) - max_lines} more lines)" if len(lines) > max_lines else ""
    return " ".join(line.strip() for line in lines[:max_lines]).rstrip(".") + more


def _hint(err: Exception) -> str:
    """The re-save advice, unless the error is one of ours and says how to fix it already."""
    return "." if isinstance(err, ConfigError) else f". {_RESAVE}"


def _not_a_bundle(path: str, why: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is not an xearthformer bundle ({why}). Bundles are safetensors files written "
        "by xearthformer.save(). Fix: for an official Earthformer checkpoint (.pt/.ckpt), "
        "convert it first: `xearthformer convert` or xearthformer.load_official()."
    )


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed JSON header of a bundle (format, versions, model config, spec) without
    loading any weights.

    Returns
    -------
    dict
        ``format``, ``format_version`` (int), ``xearthformer_version``, ``model_class``,
        ``model_config`` (dict), ``spec`` (dict), ``metadata`` (dict), ``tensors_sha256``
        (the checksum of the weights, see :func:`tensors_digest`).

    Raises
    ------
    CheckpointError
        Not a bundle, or a bundle format newer than this package reads.
    FileNotFoundError
        No such file.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        start = f.read(8)
        if start[:2] == b"PK" or start[:1] == b"\x80":
            raise _not_a_bundle(path, "it is a PyTorch pickle/zip checkpoint")
        if len(start) < 8:
            raise _not_a_bundle(path, "the file is too short")
        (size,) = struct.unpack("<Q", start)
        if size > min(_MAX_HEADER, os.path.getsize(path) - 8):
            raise _not_a_bundle(path, "no valid safetensors header")
        try:
            header = json.loads(f.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise _not_a_bundle(path, "the safetensors header is not JSON") from err
    meta = (header.get("__metadata__") or {}) if isinstance(header, dict) else {}
    if meta.get("format") != FORMAT:
        raise _not_a_bundle(path, f"format {meta.get('format')!r}, expected {FORMAT!r}")
    try:
        version = int(meta["format_version"])
    except (KeyError, ValueError) as err:
        raise CheckpointError(
            f"{path}: bundle has no valid format_version (found "
            f"{meta.get('format_version')!r}, expected an integer 1..{FORMAT_VERSION}). {_RESAVE}"
        ) from err
    if version < 1:
        raise CheckpointError(
            f"{path}: bundle format_version is {version}; valid versions are "
            f"1..{FORMAT_VERSION}. {_RESAVE}"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} uses bundle format version {version} (written by xearthformer "
            f"{meta.get('xearthformer_version', '?')}); this xearthformer {__version__} reads "
            f"versions up to {FORMAT_VERSION}. Fix: upgrade: pip install -U xearthformer."
        )
    try:
        return {
            "format": FORMAT,
            "format_version": version,
            "xearthformer_version": meta.get("xearthformer_version", "unknown"),
            "model_class": meta["model_class"],
            "model_config": _json_object(meta, "model_config"),
            "spec": _json_object(meta, "spec"),
            "metadata": _json_object(meta, "metadata", "{}"),
            "tensors_sha256": meta["tensors_sha256"],
        }
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{path}: bundle header is incomplete or corrupt ({_reason(err)}). {_RESAVE}") from err


def _json_object(meta: dict[str, Any], key: str, default: str | None = None) -> dict[str, Any]:
    """``meta[key]`` parsed as a JSON object; TypeError when it is a list, number..."""
    value = json.loads(meta[key] if default is None else meta.get(key, default))
    if not isinstance(value, dict):
        raise TypeError(f"{key!r} is a JSON {type(value).__name__}, expected an object")
    return value


def load(path: str | os.PathLike[str], device: Any = "cpu") -> Forecaster:
    """Read a bundle written by :func:`save`; never executes code from the file.

    Parameters
    ----------
    path : path-like
    device : str or torch.device
        Where to put the weights (``"auto"``: CUDA when available).

    Returns
    -------
    Forecaster
        With the model in eval mode.

    Raises
    ------
    CheckpointError
        Not a bundle (e.g. an official PyTorch checkpoint: the message points to
        ``xearthformer convert``), a newer format version, unknown model class, or
        weights that do not match the config.
    FileNotFoundError
        No such file.

    Examples
    --------
    >>> fc = load("sst.xef")                                           # doctest: +SKIP
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .device import resolve_device

    path = os.fspath(path)
    device = resolve_device(device)  # a bad device fails here, not as a corrupt file
    meta = read_metadata(path)
    name = meta["model_class"]
    try:
        row = registry.family_for_bundle_class(name)
    except ConfigError as err:
        known = sorted(c for f in registry.families().values() for c in f.bundle_classes)
        raise CheckpointError(
            f"{path} holds a model of class {name!r}; this xearthformer knows {known}. Fix: "
            "upgrade xearthformer, or install the plugin that registers that model family."
        ) from err
    cls = row.bundle_class(name)
    config_cls = registry.resolve(row.config)
    try:
        config = config_cls.from_dict(meta["model_config"])
    except (ConfigError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: cannot rebuild the model config: {_reason(err)}{_hint(err)}") from err
    try:
        # read on the CPU; the model moves to ``device`` below
        tensors = load_file(path, device="cpu")
    except SafetensorError as err:  # e.g. a truncated download or copy
        raise CheckpointError(
            f"{path}: the weights cannot be read ({err}); the file is truncated or damaged "
            f"({os.path.getsize(path)} bytes). Fix: copy or download it again, or re-save the model."
        ) from err
    if meta["tensors_sha256"] != tensors_digest(tensors):
        raise CheckpointError(
            f"{path}: the weights do not match the checksum in the bundle's header: the file is "
            "damaged (or its header was edited). Fix: copy or download it again, or re-save the model."
        )
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    arrays = {k[len("spec."):]: v.cpu().numpy() for k, v in tensors.items() if k.startswith("spec.")}
    try:
        spec = DataSpec.from_dict(meta["spec"], arrays)
    except (ConfigError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: cannot rebuild the data spec: {_reason(err)}{_hint(err)}") from err
    model = cls(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: the weights do not fit a {name} built from the stored config: "
            f"{_reason(err)}. {_RESAVE}"
        ) from err
    model.to(device).eval()
    try:
        return Forecaster(model, spec, metadata=meta["metadata"],
                          version=meta["xearthformer_version"])
    except ConfigError as err:
        raise CheckpointError(f"{path}: model and data spec disagree: {err}") from err

