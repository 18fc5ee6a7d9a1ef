"""The real SST sample used by the demo: OSTIA monthly means from ``iris-sample-data``.

The PyPI package ``iris-sample-data`` ships ``sample_data/ostia_monthly.nc``: OSTIA monthly
mean sea surface temperature (variable ``surface_temperature``, K), April 2006 to September
2010 (54 months), a tropical band 5S to 4.4N (18 latitudes, 0.56 deg) by all longitudes
(432, 0.83 deg); land is NaN. Iris wrote extra coordinates (``forecast_period``,
``forecast_reference_time`` and bounds) that describe how the file was made, not a forecast;
:func:`open_ostia` drops them by default so they cannot be mistaken for forecast axes.

>>> from xearthformer.data.samples import open_ostia
>>> sst = open_ostia()                                   # doctest: +SKIP
>>> sst.surface_temperature.shape                        # doctest: +SKIP
(54, 18, 432)
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import xarray as xr

from ..errors import DataError

OSTIA_FILE = "ostia_monthly.nc"
OSTIA_VARIABLE = "surface_temperature"
_INSTALL_HINT = "pip install iris-sample-data   (or: pip install 'xearthformer[demo]')"
# Iris-written provenance coordinates that are not part of the observations.
_IRIS_EXTRAS = ("forecast_period", "forecast_reference_time", "forecast_reference_time_bnds")


def sample_data_dir() -> Path:
    """Return the ``sample_data`` directory of the installed ``iris-sample-data`` package.

    Raises
    ------
    DataError
        If the package is not installed (the message says how to install it).

    Examples
    --------
    >>> sample_data_dir().name                           # doctest: +SKIP
    'sample_data'
    """
    try:
        module = importlib.import_module("iris_sample_data")
    except ImportError as err:
        raise DataError(
            "the real-data demo needs the OSTIA sample from the package 'iris-sample-data', "
            f"which is not installed ({err}); install it with: {_INSTALL_HINT}"
        ) from err
    path = getattr(module, "path", None) or os.path.join(os.path.dirname(module.__file__), "sample_data")
    return Path(path)


def ostia_path() -> Path:
    """Return the path of ``ostia_monthly.nc`` inside ``iris-sample-data``.

    Examples
    --------
    >>> ostia_path().name                                # doctest: +SKIP
    'ostia_monthly.nc'
    """
    path = sample_data_dir() / OSTIA_FILE
    if not path.is_file():
        raise DataError(
            f"found the package 'iris-sample-data' but not its file {path}; expected "
            f"sample_data/{OSTIA_FILE} (shipped since version 2.0); reinstall with: "
            f"pip install --force-reinstall iris-sample-data"
        )
    return path


def open_ostia(chunks: Any = None, keep_iris_coords: bool = False) -> xr.Dataset:
    """Open the OSTIA monthly SST sample as an xarray Dataset (lazy, nothing loaded).

    Parameters
    ----------
    chunks
        Passed to :func:`xarray.open_dataset` (e.g. ``{"time": 12}`` for Dask arrays).
    keep_iris_coords
        Keep the Iris provenance coordinates ``forecast_period`` / ``forecast_reference_time``
        (dropped by default: they would clash with the CF names of forecast output).

    Returns
    -------
    xarray.Dataset
        ``surface_temperature`` (time, latitude, longitude) in K, land NaN, with its
        ``latitude_longitude`` grid mapping and ``time_bnds``.

    Examples
    --------
    >>> ds = open_ostia()                                # doctest: +SKIP
    >>> str(ds.time[0].dt.strftime("%Y-%m").item())      # doctest: +SKIP
    '2006-04'
    """
    ds = xr.open_dataset(ostia_path(), chunks=chunks)
    if not keep_iris_coords:
        ds = ds.drop_vars([name for name in _IRIS_EXTRAS if name in ds.variables])
        var = ds[OSTIA_VARIABLE]
        var.encoding.pop("coordinates", None)
    gm = ds[OSTIA_VARIABLE].attrs.get("grid_mapping")
    if gm in ds.variables and "long_name" not in ds[gm].attrs:
        # Iris leaves the grid mapping unnamed; CF highly recommends a long_name
        ds[gm].attrs["long_name"] = "coordinate reference system"
    return ds
