"""Plot scores against lead time (matplotlib, imported only when called)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..errors import DataError
from ._common import LEAD


def _lead_values(lead: xr.DataArray) -> tuple[np.ndarray, str]:
    """Numbers for the x axis and its label: timedeltas in minutes/hours, else as given."""
    values = lead.values
    if np.issubdtype(values.dtype, np.timedelta64):
        minutes = values / np.timedelta64(1, "m")
        if np.nanmax(np.abs(minutes)) >= 48 * 60:
            return minutes / 1440.0, "lead time (days)"
        if np.nanmax(np.abs(minutes)) >= 180:
            return minutes / 60.0, "lead time (hours)"
        return minutes, "lead time (minutes)"
    units = lead.attrs.get("units")
    return values, f"lead time ({units})" if units else "lead time"


def plot_by_lead(
    scores: xr.Dataset | xr.DataArray,
    variables: Sequence[Hashable] | None = None,
    hue: Hashable | None = None,
    ax: Any = None,
    lead_dim: Hashable = LEAD,
    **kwargs: Any,
) -> Any:
    """Line plot of scores against lead time; returns the matplotlib Axes.

    Parameters
    ----------
    scores
        A DataArray or Dataset with a ``lead_time`` dim (other dims are drawn one line per
        value, e.g. one per ``threshold``). For a Dataset, every variable with ``lead_time``
        (or those in ``variables``) gets its own lines.
    hue
        The dim to draw as separate lines (default: the one other dim, if any).
    ax
        Axes to draw on (default: a new figure).
    kwargs
        Passed to ``Axes.plot``.

    Examples
    --------
    >>> ax = csi(fc, obs, thresholds=[16, 74]).earthformer.plot_by_lead()  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    ds = scores.to_dataset(name=scores.name or "score") if isinstance(scores, xr.DataArray) \
        else scores
    names = list(variables) if variables is not None else [
        n for n, v in ds.data_vars.items() if lead_dim in v.dims
    ]
    if not names:
        raise DataError(
            f"nothing to plot: no variable has a {lead_dim!r} dim (variables: "
            f"{list(ds.data_vars)}). Score with the default dim=None to keep lead_time"
        )
    if ax is None:
        _, ax = plt.subplots()
    for name in names:
        da = ds[name]
        if lead_dim not in da.dims:
            raise DataError(f"variable {name!r} has no {lead_dim!r} dim (dims {list(da.dims)})")
        x, xlabel = _lead_values(da[lead_dim]) if lead_dim in da.coords else (
            np.arange(1, da.sizes[lead_dim] + 1), "lead")
        others = [d for d in da.dims if d != lead_dim]
        line_dim = hue if hue is not None else (others[0] if len(others) == 1 else None)
        if len(others) > (1 if line_dim else 0):
            raise DataError(
                f"{name!r} has dims {list(da.dims)}; reduce it to {lead_dim!r} plus at most one "
                "dim for the lines (hue=...)"
            )
        if line_dim is None:
            ax.plot(x, da.values, marker="o", label=str(name), **kwargs)
        else:
            for value in da[line_dim].values:
                line = da.sel({line_dim: value}).transpose(lead_dim)
                ax.plot(x, line.values, marker="o", label=f"{name} {line_dim}={value:g}"
                        if np.isscalar(value) and np.issubdtype(type(value), np.number)
                        else f"{name} {line_dim}={value}", **kwargs)
        ax.set_xlabel(xlabel)
    ax.set_ylabel(names[0] if len(names) == 1 else "score")
    ax.legend()
    ax.grid(True, alpha=0.3)
    return ax
