"""Choosing the torch device: one rule for training, forecasting and loading bundles.

>>> resolve_device("cpu").type
'cpu'
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .errors import ConfigError


def resolve_device(device: Any = "auto") -> torch.device:
    """The torch device meant by ``device``.

    ``"auto"`` (or None) is CUDA when this PyTorch sees a GPU, else the CPU; under torchrun the
    GPU is the process's own (``LOCAL_RANK``), elsewhere the current one (a Dask-CUDA worker's
    visible device). Anything else goes through :func:`explicit_device`.

    >>> resolve_device(torch.device("cpu"))
    device(type='cpu')
    """
    if isinstance(device, torch.device):
        return device
    if device is None or (isinstance(device, str) and device == "auto"):
        if not torch.cuda.is_available():
            return torch.device("cpu")
        rank = os.environ.get("LOCAL_RANK")
        return torch.device("cuda", int(rank)) if rank is not None else torch.device("cuda")
    return explicit_device(device)


def explicit_device(device: Any) -> torch.device:
    """``torch.device(device)``, with a ConfigError for a malformed name or a device this
    machine lacks (instead of torch's RuntimeError/AssertionError deep inside ``.to()``).

    >>> explicit_device("cpu").type
    'cpu'
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(
            f"device {device!r} is not a valid torch device; expected 'auto', 'cpu', 'cuda' or "
            "'cuda:N'."
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r} asks for CUDA, but this PyTorch sees no CUDA GPU "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda is not None}). "
            "Fix: use device='auto' or 'cpu', or install a CUDA build of PyTorch."
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
            f"(0..{torch.cuda.device_count() - 1}). Fix: pick one of those or device='auto'."
        )
    return dev


#: the ``torch.compile`` backend of ``compile=True``
COMPILE_BACKEND = "inductor"


def compiled(fn: Any, compile: bool | str | None = False) -> Any:
    """``fn`` (a module or a function) through :func:`torch.compile`, or ``fn`` itself.

    ``compile`` is False/None (no compilation: the default, never required), True (the
    ``inductor`` backend, which needs a C++ compiler on the CPU) or the name of a backend
    (e.g. ``"aot_eager"``: quick to compile, for tests). Compiled code computes what eager code
    does; on the CPU the first call compiles for seconds to minutes, so it pays off only for
    long training runs or many forecasts of one shape.

    >>> compiled(abs) is abs
    True
    >>> compiled(abs, "aot_eager")(-2)  # doctest: +SKIP
    2
    """
    if compile is None or compile is False:
        return fn
    if compile is True:
        backend = COMPILE_BACKEND
    elif isinstance(compile, str):
        backend = compile
        valid = torch.compiler.list_backends(exclude_tags=())
        if backend not in valid:
            raise ConfigError(f"compile={compile!r} is no torch.compile backend; valid: True (inductor), "
                              f"False, or one of {', '.join(sorted(valid))}.")
    else:
        raise ConfigError(f"compile must be True, False or a torch.compile backend name, got {compile!r}.")
    return torch.compile(fn, backend=backend)
