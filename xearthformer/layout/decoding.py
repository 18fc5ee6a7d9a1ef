"""Model output -> labelled forecast dataset on the input's own grid: de-normalisation,
forecast time coordinates, extra (sample) dims, levels, land mask and grid coordinates.
CF attributes/encoding of the result are :mod:`xearthformer.cf`'s job.

>>> fc = decode(model(torch.from_numpy(x)), spec, inits, like=sst)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..errors import ShapeError
from .axes import XArray, find_axes
from .dataview import as_dataset
from .encoding import sample_dims
from .grid import match_grid
from .spec import DataSpec
from .timeaxis import lead_steps, time_coords, time_parts


def _to_numpy(y: Any) -> np.ndarray:
    if hasattr(y, "detach"):  # a torch tensor; no torch import needed here
        y = y.detach().float().cpu().numpy()
    return np.asarray(y, dtype=np.float32)


def decode(
    y: Any,
    spec: DataSpec,
    init_times: Any,
    lead: int | Sequence[int] | None = None,
    like: XArray | None = None,
) -> xr.Dataset:
    """Model output -> labelled forecast dataset.

    Parameters
    ----------
    y : array-like
        (N, L, H, W, C_out) normalised model output (np.ndarray or torch tensor);
        N = n_init * prod(extra sizes) as produced by :func:`encode_inputs`.
    spec : DataSpec
    init_times : array-like
        The n_init init times used to encode.
    lead : int or sequence of int, optional
        Step counts of the L leads (default 1..L).
    like : xr.Dataset or xr.DataArray, optional
        The input data: the output then uses its grid orientation, longitude convention,
        coordinate names/values and extra (sample) dims. Default: the spec's grid.

    Returns
    -------
    xr.Dataset
        One variable per target, dims ``(init_time, lead_time, *extra, [level], y, x)``,
        coords ``lead_time`` (timedelta or int + units), 2-D ``valid_time``, the grid's
        lat/lon (2-D on projected grids) and grid mapping; variable attrs from the spec;
        NaN where :attr:`DataSpec.land_mask` says.

    Raises
    ------
    ShapeError
        ``y`` does not have the shape the spec, init times and extra dims imply.

    Examples
    --------
    >>> fc = decode(model(torch.from_numpy(x)), spec, inits, like=sst)  # doctest: +SKIP
    """
    values = _to_numpy(y)
    init = np.atleast_1d(np.asarray(init_times))
    h, w = spec.grid.shape
    extra: dict[str, xr.DataArray] = sample_dims(like, spec) if like is not None else {}
    e_sizes = tuple(int(c.size) for c in extra.values())
    n_expected = init.size * int(np.prod(e_sizes, dtype=np.int64))
    if values.ndim != 5 or values.shape[0] != n_expected or values.shape[2:] != (h, w, spec.n_targets):
        sizes = dict(zip(extra, e_sizes, strict=True))
        raise ShapeError(
            f"model output has shape {values.shape}; expected ({n_expected}, L, {h}, {w}, "
            f"{spec.n_targets}) for {init.size} init times x extra dims {sizes} "
            f"on the model grid with channels {[c.name for c in spec.targets]}."
        )
    n_lead = values.shape[1]
    steps = lead_steps(n_lead if lead is None else lead)
    if steps.size != n_lead:
        raise ShapeError(f"got {steps.size} lead steps for an output with {n_lead} leads.")
    coords = time_coords(init, spec.step, steps)
    # (n_init, *E, L, H, W, C) -> (n_init, L, *E, H, W, C)
    values = values.reshape((init.size, *e_sizes, n_lead, h, w, spec.n_targets))
    n_e = len(e_sizes)
    values = values.transpose((0, 1 + n_e, *range(1, 1 + n_e), *range(2 + n_e, values.ndim)))
    months = time_parts(coords["valid_time"].values.ravel())["month"].reshape(init.size, n_lead)
    fields = {}
    for k, ch in enumerate(spec.targets):
        x = values[..., k].astype(np.float64) * ch.scale + ch.offset
        if ch.method == "anomaly":
            clim = spec.climatology[ch.name][months - 1]  # (n_init, L, H, W)
            x = x + clim.reshape(clim.shape[:2] + (1,) * n_e + clim.shape[2:])
        if ch.name in spec.land_mask:
            x = np.where(spec.land_mask[ch.name], np.float32(np.nan), x)
        fields[ch.name] = x.astype(np.float32)
    grid_coords, y_dim, x_dim, order_y, order_x, gm = _output_grid(spec, like)
    dims = ("init_time", "lead_time", *extra, y_dim, x_dim)
    out = xr.Dataset(coords={**coords, **extra, **grid_coords})
    for var in dict.fromkeys(c.variable for c in spec.targets):
        chans = [c for c in spec.targets if c.variable == var]
        stack = [fields[c.name][..., order_y, :][..., order_x] for c in chans]
        attrs = dict(chans[0].attrs)
        if gm is not None:
            attrs["grid_mapping"] = gm
        if chans[0].level is None:
            out[var] = xr.DataArray(stack[0], dims=dims, attrs=attrs)
        else:
            vdim = spec.vertical or "level"
            data = np.stack(stack, axis=-3)
            out[var] = xr.DataArray(data, dims=(*dims[:-2], vdim, y_dim, x_dim), attrs=attrs)
            out = out.assign_coords({vdim: xr.DataArray([c.level for c in chans], dims=vdim,
                                                        attrs=dict(spec.vertical_attrs))})
    return out


def _output_grid(spec: DataSpec, like: XArray | None
                 ) -> tuple[dict[str, Any], str, str, np.ndarray, np.ndarray, str | None]:
    """Coords, dim names and the permutation from spec order to the output's order."""
    g = spec.grid
    if like is None:
        order_y, order_x = np.arange(g.shape[0]), np.arange(g.shape[1])
        coords = {g.y: xr.DataArray(g.y_values, dims=g.y, attrs=dict(g.coord_attrs.get(g.y, {}))),
                  g.x: xr.DataArray(g.x_values, dims=g.x, attrs=dict(g.coord_attrs.get(g.x, {})))}
        if g.projected and g.lat_values is not None:
            for name, vals in ((g.lat, g.lat_values), (g.lon, g.lon_values)):
                coords[name] = xr.DataArray(vals, dims=(g.y, g.x),
                                            attrs=dict(g.coord_attrs.get(name, {})))
        gm = g.grid_mapping
        if gm is not None:
            coords[gm] = xr.DataArray(np.int32(0), attrs=dict(g.grid_mapping_attrs))
        return coords, g.y, g.x, order_y, order_x, gm
    ds = as_dataset(like, spec)
    ax = find_axes(ds)
    iy, ix = match_grid(ds, ax, spec)
    order_y, order_x = np.argsort(iy, kind="stable"), np.argsort(ix, kind="stable")
    cells = ds.isel({ax.y: iy[order_y], ax.x: ix[order_x]})
    coords = {}
    for name in {ax.y, ax.x, ax.lat, ax.lon} - {None}:
        if name in cells.coords:
            coords[name] = cells[name].reset_coords(drop=True).variable
    gm = ax.grid_mapping
    if gm is not None:
        coords[gm] = ds[gm].variable
    elif spec.grid.grid_mapping is not None:  # e.g. ds[variables] dropped the crs variable
        gm = spec.grid.grid_mapping
        coords[gm] = xr.Variable((), np.int32(0), dict(spec.grid.grid_mapping_attrs))
    return coords, ax.y, ax.x, order_y, order_x, gm
