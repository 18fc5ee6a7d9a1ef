"""The spatial grid of data versus the model's: reading a :class:`Grid` from data, and
matching data onto the model grid (flipped axes, the other longitude convention, a larger
domain).

>>> iy, ix = match_grid(ds, find_axes(ds), spec)                   # doctest: +SKIP
>>> ds.isel(lat=iy, lon=ix)   # the model's grid, in the model's order  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..errors import DataError
from .axes import Axes
from .spec import DataSpec, Grid, jsonable


def grid_from(ds: xr.Dataset, ax: Axes) -> Grid:
    coord_attrs = {}
    for name in {ax.y, ax.x, ax.lat, ax.lon} - {None}:
        if name in ds.variables:
            coord_attrs[name] = jsonable(dict(ds[name].attrs))
    lat_values = lon_values = None
    if ax.projected and ax.lat is not None and ax.lon is not None:
        lat_values = ds[ax.lat].transpose(ax.y, ax.x).values.astype(np.float64)
        lon_values = ds[ax.lon].transpose(ax.y, ax.x).values.astype(np.float64)
    gm_attrs = dict(ds[ax.grid_mapping].attrs) if ax.grid_mapping else {}
    return Grid(
        y=ax.y, x=ax.x,
        y_values=np.asarray(ds[ax.y].values if ax.y in ds.variables else np.arange(ds.sizes[ax.y])),
        x_values=np.asarray(ds[ax.x].values if ax.x in ds.variables else np.arange(ds.sizes[ax.x])),
        lat=ax.lat, lon=ax.lon, lat_values=lat_values, lon_values=lon_values,
        coord_attrs=coord_attrs, grid_mapping=ax.grid_mapping,
        grid_mapping_attrs=jsonable(gm_attrs),
    )


def _spacing(values: np.ndarray) -> float:
    d = np.abs(np.diff(np.asarray(values, dtype=np.float64)))
    return float(np.median(d)) if d.size else 1.0


def _match_axis(source: np.ndarray, target: np.ndarray, periodic: bool) -> np.ndarray | None:
    """Index into ``source`` of each ``target`` value, or None when one has no match.

    Tolerance: 1e-6 of the grid spacing, widened to float32 rounding of the coordinate
    values (many files store lat/lon as float32; a model fitted on float64 coordinates must
    still accept them).
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if source.size == 0:
        return None
    magnitude = float(np.abs(target).max()) if target.size else 0.0
    tol = max(1e-6 * _spacing(target), 4 * float(np.finfo(np.float32).eps) * magnitude, 1e-12)
    diff = target[:, None] - source[None, :]
    if periodic:  # longitudes: compare on the circle, so 0..360 matches -180..180
        diff = (diff + 180.0) % 360.0 - 180.0
    dist = np.abs(diff)
    index = dist.argmin(axis=1)
    if (dist[np.arange(target.size), index] > tol).any():
        return None
    return index


def _describe_axis(values: np.ndarray) -> str:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 1:
        return f"1 value ({v[0]:g})"
    return f"{v.size} values from {v[0]:g} to {v[-1]:g} (step {np.diff(v).mean():g})"


def match_grid(ds: xr.Dataset, ax: Axes, spec: DataSpec) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (iy, ix) with ``ds.isel(y=iy, x=ix)`` == the spec grid, in spec order.

    Handles flipped axes (descending latitude), the longitude convention (0..360 vs
    -180..180, rolled) and inputs that cover a larger domain than the model's.
    """
    g = spec.grid
    if ax.projected != g.projected:
        kind = {True: "projected (y/x)", False: "regular lat/lon"}
        raise DataError(
            f"the data is on a {kind[ax.projected]} grid, the model on a {kind[g.projected]} "
            "grid. Fix: regrid the data to the model grid (e.g. with xESMF)."
        )
    iy_ix = []
    for dim, values, label in ((ax.y, g.y_values, "latitude" if not g.projected else "y"),
                               (ax.x, g.x_values, "longitude" if not g.projected else "x")):
        source = ds[dim].values if dim in ds.variables else np.arange(ds.sizes[dim])
        index = _match_axis(source, values, periodic=(label == "longitude"))
        if index is None:
            raise DataError(
                f"the data's {label} ({dim}: {_describe_axis(source)}) differs from the model's "
                f"({_describe_axis(values)}). Fix: regrid the data to the model grid, e.g. "
                f"ds.interp({dim}=<model {label} values>) or xESMF for conservative regridding."
            )
        iy_ix.append(index)
    return iy_ix[0], iy_ix[1]
