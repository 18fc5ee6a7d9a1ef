"""Radially averaged power spectral density (RAPSD) of 2-D fields, frame by frame.

Blurry forecasts lose power at small scales (high wavenumbers) long before their scores show
it; comparing the spectrum of forecasts with that of the observations shows how much. The
PSD of a frame is ``|FFT2(field)|^2 / (ny nx)`` (so white noise of variance s^2 has a flat
spectrum at s^2, and by Parseval the PSD's mean over all FFT coefficients is the mean
square), averaged over rings of integer radial wavenumber ``k`` (cycles per domain length
L = max(ny, nx)), ``k = 0 .. L // 2`` (``.. L // 2 - 1`` for even L): the definition of
pysteps' ``rapsd``. On a non-square grid both axes are measured in cycles per L, so a ring
is a ring in physical wavenumber (pysteps measures each axis in its own index steps).

>>> import numpy as np, xarray as xr
>>> noise = xr.DataArray(np.random.default_rng(0).normal(size=(64, 64)), dims=("y", "x"))
>>> psd = rapsd(noise)
>>> flat = float(psd.isel(wavenumber=slice(1, None)).mean())   # about the variance, 1
>>> psd.dims, psd.sizes["wavenumber"], bool(abs(flat - 1) < 0.1)
(('wavenumber',), 32, True)
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..errors import DataError
from ._common import (
    KEEP_BY_DEFAULT,
    Dims,
    XArray,
    is_lazy,
    prepare_pair,
    reduce_dims,
    single_variable,
    to_xarray,
)
from .pooling import spatial_dims as find_spatial_dims

WAVENUMBER = "wavenumber"


def radial_wavenumbers(ny: int, nx: int) -> tuple[np.ndarray, int]:
    """Integer radial wavenumber of every FFT coefficient of an ny x nx frame (numpy's FFT
    order, cycles per L = max(ny, nx)) and the number of rings kept."""
    length = max(ny, nx)
    ky = np.fft.fftfreq(ny) * length
    kx = np.fft.fftfreq(nx) * length
    radius = np.rint(np.hypot(ky[:, None], kx[None, :])).astype(int)
    n_rings = length // 2 + 1 if length % 2 else length // 2
    return radius, n_rings


def _rapsd_numpy(frames: np.ndarray, n_rings: int, normalize: bool) -> np.ndarray:
    ny, nx = frames.shape[-2:]
    radius, _ = radial_wavenumbers(ny, nx)
    power = np.abs(np.fft.fft2(frames)) ** 2 / (ny * nx)
    flat_radius = radius.ravel()
    order = np.argsort(flat_radius, kind="stable")
    ring_of = flat_radius[order]
    keep = ring_of < n_rings  # corners beyond the largest full ring are left out
    counts = np.bincount(ring_of[keep], minlength=n_rings)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    flat = power.reshape(power.shape[:-2] + (-1,))[..., order[keep]]
    sums = np.add.reduceat(flat, starts, axis=-1)
    spectrum = sums / counts
    if normalize:
        spectrum = spectrum / spectrum.sum(-1, keepdims=True)
    return spectrum


def _frame_rapsd(field: xr.DataArray, ydim: Hashable, xdim: Hashable, spacing: float,
                 normalize: bool) -> xr.DataArray:
    ny, nx = field.sizes[ydim], field.sizes[xdim]
    _, n_rings = radial_wavenumbers(ny, nx)
    if is_lazy(field):  # the FFT needs whole frames
        field = field.chunk({ydim: -1, xdim: -1})
    out = xr.apply_ufunc(
        _rapsd_numpy, field,
        input_core_dims=[[ydim, xdim]], output_core_dims=[[WAVENUMBER]],
        kwargs={"n_rings": n_rings, "normalize": normalize},
        dask="parallelized", output_dtypes=[float],
        dask_gufunc_kwargs={"output_sizes": {WAVENUMBER: n_rings}},
    )
    length = max(ny, nx)
    k = np.arange(n_rings)
    with np.errstate(divide="ignore"):
        wavelength = np.where(k > 0, length * spacing / np.maximum(k, 1), np.inf)
    out = out.assign_coords({
        WAVENUMBER: (WAVENUMBER, k, {"long_name": "radial wavenumber (cycles per domain length)",
                                     "units": "1"}),
        "frequency": (WAVENUMBER, k / (length * spacing),
                      {"long_name": "spatial frequency (cycles per unit of spacing)"}),
        "wavelength": (WAVENUMBER, wavelength,
                       {"long_name": "wavelength (units of spacing)"}),
    })
    return out


def rapsd(
    field: Any,
    observed: Any = None,
    dim: Dims = (),
    spatial_dims: Sequence[Hashable] | None = None,
    spacing: float = 1.0,
    normalize: bool = False,
) -> XArray:
    """Radially averaged power spectral density of every 2-D frame of ``field``.

    Parameters
    ----------
    field
        A DataArray (or one-variable Dataset) with two spatial dims; every other dim is a
        separate frame.
    observed
        Optional observations: then both are returned, aligned (observations on ``time`` are
        matched to the forecast's ``valid_time``), as variables ``forecast`` and ``observed``.
    dim
        Dims to average the spectra over. Default ``()``: one spectrum per frame; ``None``:
        every dim except ``lead_time``, ``threshold``, ``member``, ``control``.
    spatial_dims
        The ``(y, x)`` dims; default the lat/lon dims (see
        :func:`~xearthformer.metrics.pooling.spatial_dims`).
    spacing
        Grid spacing, for the ``frequency`` and ``wavelength`` coordinates (default 1: in
        grid points).
    normalize
        Divide each spectrum by its sum (compare shapes, not amplitudes).

    Returns
    -------
    DataArray, or Dataset with ``observed``
        Named ``rapsd``, along ``wavenumber`` (integer rings ``0 .. L // 2``, with
        ``frequency`` and ``wavelength`` coordinates), in the squared units of the data. A
        frame with NaN gives NaN (fill missing values first, e.g. ``field.fillna(0)``).
        Lazy on Dask input.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> wave = xr.DataArray(np.cos(2 * np.pi * 4 * np.arange(16) / 16)[None, :].repeat(16, 0),
    ...                     dims=("y", "x"))
    >>> int(rapsd(wave).argmax("wavenumber"))         # all the power is in ring 4
    4
    """
    if observed is not None:
        fc, obs = prepare_pair(field, observed)
        fc, obs = single_variable(fc, "forecast"), single_variable(obs, "observed")
        ydim, xdim = find_spatial_dims(fc, spatial_dims)
        parts = {"forecast": fc, "observed": obs}
    else:
        fc = single_variable(to_xarray(field), "the field")
        ydim, xdim = find_spatial_dims(fc, spatial_dims)
        parts = {"rapsd": fc}
    if min(fc.sizes[ydim], fc.sizes[xdim]) < 2:
        raise DataError(f"a spectrum needs at least 2 x 2 grid points; the frames are "
                        f"{fc.sizes[ydim]} x {fc.sizes[xdim]}")
    spectra = {}
    for name, part in parts.items():
        spectrum = _frame_rapsd(part, ydim, xdim, float(spacing), normalize)
        dims = reduce_dims(spectrum, dim, keep=(*KEEP_BY_DEFAULT, WAVENUMBER))
        spectrum = spectrum.mean(dims) if dims else spectrum
        spectrum.attrs = {"long_name": "radially averaged power spectral density"
                          + (f" of the {name}" if name != "rapsd" else "")}
        if not normalize and "units" in part.attrs:
            spectrum.attrs["units"] = f"({part.attrs['units']})^2"
        spectra[name] = spectrum.rename("rapsd")
    if observed is None:
        return spectra["rapsd"]
    return xr.Dataset(spectra)
