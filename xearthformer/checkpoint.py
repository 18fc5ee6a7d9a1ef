"""The one-file model bundle of a :class:`~xearthformer.models.base.Forecaster`: :func:`save` and :func:`load`.

A bundle is a single safetensors file. Tensors: the model's state_dict under ``model.``
and the spec's arrays (climatology, static fields, land masks, 2-D lat/lon) under ``spec.``.
JSON in the safetensors header metadata (string fields): the bundle format version, the
package version, the model class and config, the :class:`~xearthformer.layout.DataSpec`, free
metadata, and two checksums. Loading parses JSON and raw tensors only, so it never executes
code from the file: the model class is looked up in :mod:`xearthformer.models.registry` (a
family's ``bundle_classes``), never imported by the name the file gives. Training checkpoints
(optimizer state etc.) are separate files owned by :mod:`xearthformer.training`; bundles are
what users share.

Format 2 (written since this version): ``tensors_sha256`` is the SHA-256 of every tensor's
name, dtype, shape and bytes (:func:`tensors_digest`); ``bundle_sha256`` is the SHA-256 of a
canonical JSON form of *every other* header field, that one included
(:func:`metadata_digest`), so one edited digit of a normalisation constant, of the config or
of any field a family adds makes :func:`load` refuse the file. ``bundle_sha256`` names the
bundle: forecasts carry it (``xearthformer_bundle_sha256``) and archive stores record it.
Format 1 had only ``tensors_sha256``: such bundles still load and forecast the same, with a
warning that their metadata is unchecked.

>>> fc = Forecaster(model, spec)                                     # doctest: +SKIP
>>> save(fc, "sst.xef"); fc2 = load("sst.xef")                       # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import warnings
from typing import Any

import numpy as np

from ._version import __version__
from .errors import CheckpointError, ConfigError, ModelTypeError, XEarthformerWarning
from .layout import DataSpec
from .models import registry
from .models.base import Forecaster

#: bundle format written by :func:`save`; :func:`load` refuses anything newer.
FORMAT = "xearthformer-bundle"
FORMAT_VERSION = 2
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header size
#: the header field holding the checksum of all the others (format 2 on)
DIGEST_FIELD = "bundle_sha256"


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
    from safetensors.torch import save_file

    tensors, metadata = bundle_contents(forecaster)
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
    # the weights were just hashed: bundle_digest() need not read them again
    forecaster._tensors_sha256 = (  # type: ignore[attr-defined]
        _weights_key(forecaster), metadata["tensors_sha256"])


def _check_forecaster(forecaster: Any, what: str) -> None:
    if not isinstance(forecaster, Forecaster):
        raise ModelTypeError(
            f"{what} takes a xearthformer.Forecaster, got {type(forecaster).__name__}. "
            "Fix: wrap the model: Forecaster(model, spec)."
        )


def _tensors(forecaster: Forecaster) -> dict[str, Any]:
    import torch

    from .parallel import unwrap_model

    model, spec = unwrap_model(forecaster.model), forecaster.spec
    tensors: dict[str, Any] = {}
    # clone: safetensors refuses tensors that share storage (views, tied weights)
    for key, value in model.state_dict().items():
        tensors[f"model.{key}"] = value.detach().to("cpu").contiguous().clone()
    for key, value in spec.arrays().items():
        tensors[f"spec.{key}"] = torch.from_numpy(np.ascontiguousarray(value).copy())
    return tensors


def _header(forecaster: Forecaster, tensors_sha256: str, registered: bool = True) -> dict[str, str]:
    """The format-2 header fields of ``forecaster``, ``bundle_sha256`` included (``registered``:
    refuse a network whose family is not in the registry, as :func:`save` must)."""
    from .parallel import unwrap_model

    model = unwrap_model(forecaster.model)
    fields = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "xearthformer_version": forecaster.version,
        "model_class": _model_class_name(model) if registered else type(model).__name__,
        "model_config": json.dumps(model.config.to_dict()),
        "spec": json.dumps(forecaster.spec.to_dict()),
        "metadata": json.dumps(forecaster.metadata, default=str),
        "tensors_sha256": tensors_sha256,
    }
    fields[DIGEST_FIELD] = metadata_digest(fields)
    return fields


def bundle_contents(forecaster: Forecaster) -> tuple[dict[str, Any], dict[str, str]]:
    """The tensors and header fields :func:`save` writes for ``forecaster``.

    Raises
    ------
    ModelTypeError
        ``forecaster`` is not a Forecaster, or its network's family is not registered.
    """
    _check_forecaster(forecaster, "save()")
    tensors = _tensors(forecaster)
    return tensors, _header(forecaster, tensors_digest(tensors))


def _weights_key(forecaster: Forecaster) -> tuple[Any, ...]:
    """Identifies the weights' current values without reading them: each tensor's storage
    and torch's in-place version counter (bumped by every optimiser step, ``load_state_dict``
    and ``copy_``), plus the spec object."""
    from .parallel import unwrap_model

    state = unwrap_model(forecaster.model).state_dict()
    return (id(forecaster.spec),) + tuple(
        (k, v.data_ptr(), v._version, str(v.dtype), tuple(v.shape), str(v.device)) for k, v in state.items())


def bundle_digest(forecaster: Forecaster) -> str:
    """The ``bundle_sha256`` that :func:`save` would write for ``forecaster`` now (the digest of
    a loaded bundle, as long as its weights, spec and metadata are unchanged).

    The weights' checksum is cached on the forecaster and recomputed only when a weight
    changed, so calling this for every forecast is cheap.

    Examples
    --------
    >>> bundle_digest(load("sst.xef")) == read_metadata("sst.xef")["bundle_sha256"]  # doctest: +SKIP
    True
    """
    _check_forecaster(forecaster, "bundle_digest()")
    key = _weights_key(forecaster)
    cached = getattr(forecaster, "_tensors_sha256", None)
    if cached is None or cached[0] != key:
        cached = (key, tensors_digest(_tensors(forecaster)))
        forecaster._tensors_sha256 = cached  # type: ignore[attr-defined]
    return _header(forecaster, cached[1], registered=False)[DIGEST_FIELD]


def metadata_digest(fields: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON form of the header ``fields`` but ``bundle_sha256``.

    Canonical: keys sorted, no whitespace, ASCII only; the values are the strings the header
    stores, so any change of any field (a digit of a normalisation constant in the spec, a
    config field, a field some family adds) changes the digest.

    >>> metadata_digest({"a": "1", "bundle_sha256": "x"}) == metadata_digest({"a": "1"})
    True
    """
    rest = {str(k): v for k, v in fields.items() if k != DIGEST_FIELD}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


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


def _read_header(path: str) -> dict[str, Any]:
    """The raw string fields of a safetensors header's ``__metadata__`` (no checks beyond
    "this is a safetensors file with string metadata")."""
    if os.path.isdir(path):
        raise _not_a_bundle(path, "it is a directory")
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
        except RecursionError as err:  # a "JSON bomb": nesting deeper than Python's stack
            raise _not_a_bundle(path, "the safetensors header nests too deeply") from err
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    if meta.get("format") != FORMAT:
        raise _not_a_bundle(path, f"format {meta.get('format')!r}, expected {FORMAT!r}")
    bad = sorted(str(k) for k, v in meta.items() if not isinstance(v, str))
    if bad:
        raise CheckpointError(f"{path}: bundle header fields {bad} are not text, as safetensors "
                              f"metadata must be. {_RESAVE}")
    return meta


def _format_version(path: str, meta: dict[str, Any]) -> int:
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
    return version


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed JSON header of a bundle (format, versions, model config, spec) without
    loading any weights; from format 2 on the header's checksum is verified.

    Returns
    -------
    dict
        ``format``, ``format_version`` (int), ``xearthformer_version``, ``model_class``,
        ``model_config`` (dict), ``spec`` (dict), ``metadata`` (dict), ``tensors_sha256``
        (the checksum of the weights, see :func:`tensors_digest`), ``bundle_sha256`` (the
        checksum of the header, see :func:`metadata_digest`; None for format 1) and
        ``header_checked`` (False for format 1, whose header has no checksum).

    Raises
    ------
    CheckpointError
        Not a bundle, a bundle format newer than this package reads, or (format 2) a header
        that does not match its checksum.
    FileNotFoundError
        No such file.
    """
    path = os.fspath(path)
    meta = _read_header(path)
    version = _format_version(path, meta)
    digest = meta.get(DIGEST_FIELD)
    if version >= 2:
        if not digest:
            raise CheckpointError(f"{path}: a format-{version} bundle without its {DIGEST_FIELD} "
                                  f"field. {_RESAVE}")
        if metadata_digest(meta) != digest:
            raise CheckpointError(
                f"{path}: the bundle's header (spec, normalisation, config or metadata) does not "
                f"match its checksum: it was edited or damaged, and its forecasts could be wrong. "
                "Fix: copy or download it again, or re-save the model with xearthformer.save().")
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
            DIGEST_FIELD: digest if version >= 2 else None,
            "header_checked": version >= 2,
        }
    except (KeyError, TypeError, ValueError, RecursionError) as err:
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
        ``xearthformer convert``), a newer format version, unknown model class, weights that
        do not match the config, or a header or weights that do not match their checksums.
    FileNotFoundError
        No such file.

    Warns
    -----
    XEarthformerWarning
        A format-1 bundle: its header has no checksum (it loads and forecasts as before).

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
    if not meta["header_checked"]:
        warnings.warn(
            f"{path} is a format-{meta['format_version']} bundle (xearthformer "
            f"{meta['xearthformer_version']}): its weights are checksummed but its metadata (spec, "
            "normalisation, config) is unchecked, so an edit or damage there would go unnoticed. "
            "Fix: re-save it with xearthformer.save() to get the format-2 checksum.",
            XEarthformerWarning, stacklevel=2)
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
    except (ConfigError, KeyError, TypeError, ValueError, IndexError, AttributeError,
            RecursionError) as err:  # whatever a damaged config provokes in from_dict
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
    except (ConfigError, KeyError, TypeError, ValueError, IndexError, AttributeError,
            RecursionError) as err:
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
        forecaster = Forecaster(model, spec, metadata=meta["metadata"],
                                version=meta["xearthformer_version"])
    except ConfigError as err:
        raise CheckpointError(f"{path}: model and data spec disagree: {err}") from err
    # the weights were just hashed: bundle_digest() need not read them again
    forecaster._tensors_sha256 = (  # type: ignore[attr-defined]
        _weights_key(forecaster), meta["tensors_sha256"])
    return forecaster

