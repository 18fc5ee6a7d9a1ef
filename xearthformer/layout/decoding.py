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


#: the ensemble member coordinate's attributes (CF: standard_name ``realization``)
MEMBER_ATTRS: dict[str, str] = {"standard_name": "realization", "long_name": "ensemble member",
                                "units": "1"}


def decode(
    y: Any,
    spec: DataSpec,
    init_times: Any,
    lead: int | Sequence[int] | None = None,
    like: XArray | None = None,
    members: Sequence[int] | None = None,
) -> xr.Dataset:
    """Model output -> labelled forecast dataset.

    Parameters
    ----------
    y : array-like
        (N, L, H, W, C_out) or (N, M, L, H, W, C_out) normalised model output (np.ndarray or
        torch tensor); N = n_init * prod(extra sizes) as produced by :func:`encode_inputs`, M
        ensemble members.
    spec : DataSpec
    init_times : array-like
        The n_init init times used to encode.
    lead : int or sequence of int, optional
        Step counts of the L leads (default 1..L).
    like : xr.Dataset or xr.DataArray, optional
        The input data: the output then uses its grid orientation, longitude convention,
        coordinate names/values and extra (sample) dims. Default: the spec's grid.
    members : sequence of int, optional
        The member indices of a 6-d ``y``'s M axis: the output then has a ``member`` dim (an
        int coordinate with these values, attrs :data:`MEMBER_ATTRS`). Without it a 6-d ``y``
        must have M = 1, which is dropped.

    Returns
    -------
    xr.Dataset
        One variable per target, dims ``(init_time, lead_time, [member], *extra, [level], y, x)``,
        coords ``lead_time`` (timedelta or int + units), 2-D ``valid_time``, the grid's
        lat/lon (2-D on projected grids) and grid mapping; variable attrs from the spec;
        NaN where :attr:`DataSpec.land_mask` says.

    Raises
    ------
    ShapeError
        ``y`` does not have the shape the spec, init times, extra dims and members imply.

    Examples
    --------
    >>> fc = decode(model(torch.from_numpy(x)), spec, inits, like=sst)  # doctest: +SKIP
    >>> ens = decode(y6, spec, inits, like=sst, members=[0, 1, 2])     # doctest: +SKIP
    """
    values = _to_numpy(y)
    member_values = _member_axis(values, members)
    if member_values is None and values.ndim == 6:
        values = values[:, 0]
    init = np.atleast_1d(np.asarray(init_times))
    h, w = spec.grid.shape
    extra: dict[str, xr.DataArray] = sample_dims(like, spec) if like is not None else {}
    e_sizes = tuple(int(c.size) for c in extra.values())
    n_expected = init.size * int(np.prod(e_sizes, dtype=np.int64))
    m_shape = () if member_values is None else (member_values.size,)
    body = values.shape[1 + len(m_shape):]
    if values.shape[0] != n_expected or values.shape[1:1 + len(m_shape)] != m_shape or len(body) != 4 \
            or body[1:] != (h, w, spec.n_targets):
        sizes = dict(zip(extra, e_sizes, strict=True))
        want = ", ".join(map(str, (n_expected, *m_shape, "L", h, w, spec.n_targets)))
        raise ShapeError(
            f"model output has shape {values.shape}; expected ({want}) for {init.size} init times x "
            f"extra dims {sizes}{f' x {m_shape[0]} members' if m_shape else ''} "
            f"on the model grid with channels {[c.name for c in spec.targets]}."
        )
    n_lead = body[0]
    steps = lead_steps(n_lead if lead is None else lead)
    if steps.size != n_lead:
        raise ShapeError(f"got {steps.size} lead steps for an output with {n_lead} leads.")
    coords = time_coords(init, spec.step, steps)
    # (n_init, *E, [M], L, H, W, C) -> (n_init, L, [M], *E, H, W, C)
    values = values.reshape((init.size, *e_sizes, *m_shape, n_lead, h, w, spec.n_targets))
    n_e, n_m = len(e_sizes), len(m_shape)
    lead_axis = 1 + n_e + n_m
    values = values.transpose((0, lead_axis, *range(1 + n_e, lead_axis), *range(1, 1 + n_e),
                               *range(lead_axis + 1, values.ndim)))
    n_mid = n_m + n_e  # axes between lead and the grid
    months = time_parts(coords["valid_time"].values.ravel())["month"].reshape(init.size, n_lead)
    fields = {}
    for k, ch in enumerate(spec.targets):
        clim = None
        if ch.method == "anomaly":
            clim = spec.climatology[ch.name][months - 1]  # (n_init, L, H, W)
            clim = clim.reshape(clim.shape[:2] + (1,) * n_mid + clim.shape[2:])
        x = ch.denormalise(values[..., k], clim)
        if ch.name in spec.land_mask:
            x = np.where(spec.land_mask[ch.name], np.float32(np.nan), x)
        fields[ch.name] = x.astype(np.float32)
    grid_coords, y_dim, x_dim, order_y, order_x, gm = _output_grid(spec, like)
    member_dims: tuple[str, ...] = ()
    if member_values is not None:
        member_dims = ("member",)
        coords["member"] = xr.DataArray(member_values, dims="member", attrs=dict(MEMBER_ATTRS))
    dims = ("init_time", "lead_time", *member_dims, *extra, y_dim, x_dim)
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


def _member_axis(values: np.ndarray, members: Sequence[int] | None) -> np.ndarray | None:
    """The member indices labelling axis 1 of a 6-d output (None: no member dim)."""
    if values.ndim not in (5, 6):
        raise ShapeError(f"model output must be 5-d (N, L, H, W, C) or 6-d (N, M, L, H, W, C); "
                         f"got shape {values.shape}.")
    if members is None:
        if values.ndim == 6 and values.shape[1] != 1:
            raise ShapeError(f"model output has {values.shape[1]} members (shape {values.shape}); "
                             "pass members=[...] to label them, or average them first.")
        return None
    if values.ndim != 6:
        raise ShapeError(f"members were given but the model output is 5-d {values.shape}; expected "
                         "(N, M, L, H, W, C).")
    indices = np.asarray(members, dtype=np.int64).reshape(-1)
    if indices.size != values.shape[1]:
        raise ShapeError(f"{indices.size} member indices for an output with {values.shape[1]} members.")
    return indices


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
