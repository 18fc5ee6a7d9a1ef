"""Opening archives of files: glob patterns to paths, and NetCDF files or a Zarr store opened
lazily as one dataset. Training (``xearthformer train``) and archive forecasting
(``xearthformer forecast``) read their input the same way, through here.

>>> ds = open_archive(input_paths(["data/sst_*.nc"]))            # doctest: +SKIP
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

import xarray as xr

from ..errors import DataError


def input_paths(patterns: Sequence[str]) -> list[str]:
    """The files that glob ``patterns`` match (sorted per pattern); a path without wildcards is
    kept as it is when it exists (e.g. a Zarr directory).

    Raises
    ------
    DataError
        Nothing matches.
    """
    paths: list[str] = []
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if not found and not glob.has_magic(pattern) and os.path.exists(pattern):
            found = [pattern]
        paths.extend(found)
    if not paths:
        raise DataError(f"--input {' '.join(patterns)} matches no file; expected NetCDF/Zarr paths.")
    return paths


def open_archive(paths: Sequence[str]) -> xr.Dataset:
    """Open NetCDF files (or one Zarr store) lazily, combined along time."""
    if len(paths) == 1 and (paths[0].rstrip("/").endswith(".zarr") or os.path.isdir(paths[0])):
        return xr.open_zarr(paths[0])
    return xr.open_mfdataset(paths, combine="by_coords", data_vars="minimal", coords="minimal",
                             compat="override", join="outer")
