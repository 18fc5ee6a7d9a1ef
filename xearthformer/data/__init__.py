"""Data sets and files: readers for the official SEVIR, SEVIR-LR and ICAR-ENSO files, the OSTIA
SST sample that the demo uses, a generator of synthetic storm cells, and opening NetCDF/Zarr
archives (:mod:`.files`). Each loads lazily on first use.

>>> from xearthformer.data.storms import storms   # a submodule's name: import it from there
>>> storms(n_times=4, size=(16, 16)).vil.shape
(4, 16, 16)
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "open_sevir": "sevir", "sevir_windows": "sevir", "read_catalog": "sevir",
    "open_sevir_lr": "sevir_lr", "sevir_lr_windows": "sevir_lr",
    "open_icar_enso": "icar_enso", "icar_enso_windows": "icar_enso",
    "open_ostia": "samples", "ostia_path": "samples",
    "open_archive": "files", "input_paths": "files",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'xearthformer.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
