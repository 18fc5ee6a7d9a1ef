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

    Examples
    --------
    >>> import os, tempfile, xarray as xr
    >>> folder = tempfile.mkdtemp()
    >>> for year in (2000, 2001):
    ...     xr.Dataset({"sst": ("time", [0.0])}, {"time": [year]}).to_netcdf(os.path.join(folder, f"sst_{year}.nc"))
    >>> [os.path.basename(p) for p in input_paths([os.path.join(folder, "sst_*.nc")])]
    ['sst_2000.nc', 'sst_2001.nc']
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


def _open_one(path: str) -> None:
    """Open one file on its own, to name it when the archive as a whole cannot be opened."""
    try:
        xr.open_dataset(path).close()
    except Exception as err:  # noqa: BLE001 - any reader error: the file is the problem
        raise DataError(
            f"cannot read {path} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "expected a NetCDF file or a Zarr store. Fix: leave it out of --input or repair it."
        ) from err


def open_archive(paths: Sequence[str]) -> xr.Dataset:
    """Open NetCDF files (or one Zarr store) lazily, combined along time.

    Every file must be on the first file's grid (:func:`xearthformer.layout.validation.check_same_grid`):
    one that is not is named in the error, as is one that cannot be read at all.

    Raises
    ------
    DataError
        A file cannot be read, or is on another grid than the first.

    Examples
    --------
    >>> import os, tempfile, numpy as np, pandas as pd, xarray as xr
    >>> folder = tempfile.mkdtemp()
    >>> for year in ("2000", "2001"):
    ...     time = pd.date_range(year, periods=12, freq="MS")
    ...     sst = xr.DataArray(np.zeros((12, 2, 3)), dims=("time", "lat", "lon"),
    ...                        coords={"time": time, "lat": [0.0, 1.0], "lon": [0.0, 1.0, 2.0]}, name="sst")
    ...     sst.to_netcdf(os.path.join(folder, f"sst_{year}.nc"))
    >>> ds = open_archive(input_paths([os.path.join(folder, "sst_*.nc")]))
    >>> ds.sizes["time"], ds.sst.chunks is not None                  # lazy, on Dask
    (24, True)
    """
    from ..errors import XEarthformerError
    from ..layout.axes import find_coord
    from ..layout.validation import check_same_grid

    if len(paths) == 1 and (paths[0].rstrip("/").endswith(".zarr") or os.path.isdir(paths[0])):
        try:
            return xr.open_zarr(paths[0])
        except Exception as err:  # noqa: BLE001 - name the store and the reason
            raise DataError(f"cannot open {paths[0]} as a Zarr store ({type(err).__name__}: {err}). "
                            "Fix: pass a Zarr store or NetCDF files.") from err
    first: dict[str, object] = {}

    def same_grid(ds: xr.Dataset) -> xr.Dataset:
        source = str(ds.encoding.get("source", "a file"))
        if not first:
            first.update(grid=xr.Dataset(coords=ds.coords), name=source, time=find_coord(ds, "time"))
        else:
            check_same_grid(first["grid"], ds, str(first["name"]), source,  # type: ignore[arg-type]
                            time=first["time"])  # type: ignore[arg-type]
        return ds

    try:
        return xr.open_mfdataset(paths, combine="by_coords", data_vars="minimal", coords="minimal",
                                 compat="override", join="outer", preprocess=same_grid)
    except XEarthformerError:
        raise
    except Exception as err:  # noqa: BLE001 - find the file that cannot be read, or say why
        for path in paths:
            _open_one(path)
        raise DataError(
            f"the files {list(paths)[:3]}{'...' if len(paths) > 3 else ''} cannot be combined into one "
            f"dataset along time ({type(err).__name__}: {err}). Fix: pass files of one variable set "
            "and grid whose time ranges do not overlap."
        ) from err
