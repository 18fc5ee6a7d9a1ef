"""Synthetic storm cells for nowcasting demos and tests (a SEVIR-VIL-like 0-255 field).

Storm cells are Gaussian blobs that are born, grow, peak and decay (a half-sine life cycle)
while they drift with a common steering flow plus a small random velocity of their own. The
field is the maximum over cells, on the 0-255 pixel code that SEVIR uses for vertically
integrated liquid (VIL), so the SEVIR CSI thresholds (16, 74, 133, 160, 181, 219) are
meaningful on it. Everything is drawn from one seeded generator: the same arguments always
give the same dataset.

>>> from xearthformer.data.storms import storms
>>> ds = storms(n_times=24, size=(32, 32), seed=1)
>>> ds.vil.dims, float(ds.vil.max()) <= 255
(('time', 'y', 'x'), True)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import ConfigError
from .sevir import SEVIR_THRESHOLDS  # noqa: F401  (the storms are scored at these)


def _cell_table(rng: np.random.Generator, n_times: int, ny: int, nx: int,
                cells_per_frame: float) -> dict[str, np.ndarray]:
    """Draw every cell's birth, lifetime, peak, size, start position and velocity."""
    # Cells born before frame 0 are allowed so that the first frames are not empty.
    max_life = 48
    span = n_times + max_life
    n_cells = max(1, rng.poisson(cells_per_frame * span))
    steering = rng.normal(0.0, 0.6, size=2)  # px/frame, shared by all cells (a steering flow)
    return {
        "birth": rng.uniform(-max_life, n_times, n_cells),
        "life": rng.uniform(16, max_life, n_cells),
        "peak": rng.uniform(90, 255, n_cells),
        "sigma": rng.uniform(1.5, 4.0, n_cells) * max(ny, nx) / 64 + 1.0,
        "y0": rng.uniform(-0.1 * ny, 1.1 * ny, n_cells),
        "x0": rng.uniform(-0.1 * nx, 1.1 * nx, n_cells),
        "vy": steering[0] + rng.normal(0.0, 0.2, n_cells),
        "vx": steering[1] + rng.normal(0.0, 0.2, n_cells),
    }


def storm_field(n_times: int, ny: int, nx: int, seed: int = 0,
                cells_per_frame: float = 0.25) -> np.ndarray:
    """Return the storm field as a float32 array ``(n_times, ny, nx)`` on the 0-255 scale.

    Parameters
    ----------
    n_times, ny, nx
        Number of frames and grid size.
    seed
        Seed of the random generator; equal seeds give equal fields.
    cells_per_frame
        Mean number of new cells per frame over the domain.

    Examples
    --------
    >>> storm_field(4, 16, 16, seed=0).shape
    (4, 16, 16)
    """
    if n_times < 1 or ny < 1 or nx < 1:
        raise ConfigError(f"storm_field needs positive sizes, got n_times={n_times}, size=({ny}, {nx}); "
                          "pass n_times >= 1 and a size of at least (1, 1).")
    rng = np.random.default_rng(seed)
    c = _cell_table(rng, n_times, ny, nx, cells_per_frame)
    yy = np.arange(ny, dtype=np.float32)[:, None]
    xx = np.arange(nx, dtype=np.float32)[None, :]
    out = np.zeros((n_times, ny, nx), dtype=np.float32)
    for t in range(n_times):
        age = t - c["birth"]
        alive = np.flatnonzero((age >= 0) & (age <= c["life"]))
        for i in alive:
            phase = age[i] / c["life"][i]
            envelope = np.sin(np.pi * phase)  # grows, peaks mid-life, decays
            amp = c["peak"][i] * envelope
            sigma = c["sigma"][i] * (0.6 + 0.6 * envelope)  # a growing cell also widens
            cy = c["y0"][i] + c["vy"][i] * age[i]
            cx = c["x0"][i] + c["vx"][i] * age[i]
            r2 = (yy - cy) ** 2 + (xx - cx) ** 2
            np.maximum(out[t], amp * np.exp(-r2 / (2.0 * sigma**2)), out=out[t])
    # Integer codes like SEVIR's uint8 VIL, kept as float32 for the model.
    return np.clip(np.round(out), 0, 255).astype(np.float32)


def storms(n_times: int = 96, size: tuple[int, int] = (64, 64), seed: int = 0,
           step_minutes: int = 5, pixel_km: float = 2.0,
           start: str = "2024-06-01T12:00", cells_per_frame: float = 0.25) -> xr.Dataset:
    """Synthetic moving, growing and decaying storm cells as a CF-labelled xarray Dataset.

    Parameters
    ----------
    n_times
        Number of frames.
    size
        Grid size ``(ny, nx)``.
    seed
        Random seed; the same arguments always give the same dataset.
    step_minutes
        Time step between frames (SEVIR: 5 minutes).
    pixel_km
        Grid spacing of the projection coordinates ``x``/``y`` in km.
    start
        Time of the first frame.
    cells_per_frame
        Mean number of new storm cells per frame.

    Returns
    -------
    xarray.Dataset
        Variable ``vil`` (time, y, x), float32 on the 0-255 SEVIR VIL code, with coordinates
        ``time``, ``y`` and ``x`` carrying CF ``axis``/``standard_name``/``units`` attributes.

    Examples
    --------
    >>> ds = storms(n_times=12, size=(16, 16))
    >>> ds.vil.attrs["units"], ds.x.attrs["axis"]
    ('1', 'X')
    """
    ny, nx = (int(s) for s in size)
    data = storm_field(n_times, ny, nx, seed=seed, cells_per_frame=cells_per_frame)
    time = pd.date_range(start, periods=n_times, freq=f"{int(step_minutes)}min")
    y = (np.arange(ny) * pixel_km).astype(np.float64)
    x = (np.arange(nx) * pixel_km).astype(np.float64)
    ds = xr.Dataset(
        {"vil": (("time", "y", "x"), data, {
            "long_name": "synthetic vertically integrated liquid (SEVIR 0-255 pixel code)",
            "units": "1",
            "valid_min": np.float32(0.0),
            "valid_max": np.float32(255.0),
        })},
        coords={
            "time": ("time", time, {"standard_name": "time", "axis": "T", "long_name": "time"}),
            "y": ("y", y, {"standard_name": "projection_y_coordinate", "axis": "Y", "units": "km",
                           "long_name": "y distance on the synthetic plane"}),
            "x": ("x", x, {"standard_name": "projection_x_coordinate", "axis": "X", "units": "km",
                           "long_name": "x distance on the synthetic plane"}),
        },
        attrs={
            "Conventions": "CF-1.8",
            "title": "Synthetic storm cells (xearthformer.data.storms)",
            "source": f"xearthformer.data.storms.storms(seed={seed})",
            "comment": "Gaussian cells born at random, drifting with a common steering flow, "
                       "growing and decaying over a half-sine life cycle; values are SEVIR-like VIL codes.",
        },
    )
    return ds
