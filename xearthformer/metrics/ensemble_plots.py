"""Figures of ensemble verification: rank histogram, reliability diagram, spectra, member strips.

Each function returns a ``matplotlib.figure.Figure`` built without pyplot (no global state, no
GUI backend needed) and imports matplotlib only when called (it is an optional dependency:
the ``demo`` and ``test`` extras). Save with ``fig.savefig("name.png")``.

>>> fig = plot_rank_histogram(metrics.rank_histogram(ens, obs).sum("lead_time"))  # doctest: +SKIP
>>> fig.savefig("rank_histogram.png")                                              # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import xarray as xr

from ..errors import DataError
from ._common import INIT, LEAD, MEMBER, prepare_pair, single_variable, to_xarray
from .plot import _lead_values
from .pooling import spatial_dims as find_spatial_dims


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _only_dims(obj: xr.DataArray, allowed: tuple[Hashable, ...], what: str,
               max_extra: int = 0) -> list[Hashable]:
    """The dims of ``obj`` beyond ``allowed`` (at most ``max_extra`` of them)."""
    extra = [d for d in obj.dims if d not in allowed]
    if len(extra) > max_extra:
        raise DataError(
            f"{what} has dims {list(obj.dims)}; expected {list(allowed)}"
            + (f" plus at most {max_extra} more (one line each)" if max_extra else "")
            + f". Select or reduce the others first, e.g. .sum({extra[-1]!r}) or "
            f".isel({extra[-1]}=0)"
        )
    return extra


def _label(dim: Hashable, value: Any) -> str:
    if isinstance(value, np.timedelta64):
        minutes = value / np.timedelta64(1, "m")
        return f"{dim}={minutes / 60:g} h" if minutes % 60 == 0 else f"{dim}={minutes:g} min"
    if isinstance(value, (float, np.floating)):
        return f"{dim}={value:g}"
    return f"{dim}={value}"


def plot_rank_histogram(histogram: xr.DataArray, ax: Any = None, rank_dim: Hashable = "rank",
                        flatness: bool = True) -> Any:
    """Bar chart of a rank histogram as relative frequencies, with the flat line 1 / (M + 1).

    Parameters
    ----------
    histogram
        Counts along ``rank_dim`` only (e.g. ``rank_histogram(ens, obs, dim=None).sum("lead_time")``).
    ax
        Axes to draw on (default: a new figure).
    flatness
        Put the chi-square statistic and p-value of :func:`rank_histogram_flatness` in the title.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plot_rank_histogram(xr.DataArray([3, 5, 4], dims="rank"))  # doctest: +SKIP
    """
    from .probabilistic import rank_histogram_flatness

    histogram = single_variable(to_xarray(histogram), "the rank histogram")
    _only_dims(histogram, (rank_dim,), "the rank histogram")
    counts = np.asarray(histogram.values, dtype=float)
    total = counts.sum()
    if total <= 0:
        raise DataError("the rank histogram is empty (no counts); nothing to plot")
    fig = ax.figure if ax is not None else _new_figure(5.0, 3.2)
    ax = ax if ax is not None else fig.subplots()
    ranks = np.asarray(histogram[rank_dim].values) if rank_dim in histogram.coords \
        else np.arange(counts.size)
    ax.bar(ranks, counts / total, width=0.85, color="tab:blue", label="observed rank")
    ax.axhline(1.0 / counts.size, color="k", ls="--", lw=1, label="flat (reliable)")
    ax.set_xlabel("rank of the observation among the members")
    ax.set_ylabel("relative frequency")
    if flatness:
        test = rank_histogram_flatness(histogram, rank_dim)
        ax.set_title(f"chi2 = {float(test.chi2):.1f} (dof {int(test.dof)}), "
                     f"p = {float(test.p_value):.2g}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_reliability(diagram: xr.Dataset, hue: Hashable | None = None) -> Any:
    """Reliability diagram (top) and sharpness histogram (bottom) from :func:`reliability`.

    Parameters
    ----------
    diagram
        The Dataset of :func:`~xearthformer.metrics.events.reliability`; besides
        ``forecast_probability`` it may have one more dim (e.g. ``threshold``), drawn as one
        line per value.
    hue
        That dim (default: the one other dim, if any).

    Returns
    -------
    matplotlib.figure.Figure
        Two axes: the diagram with the diagonal, and the counts per bin.

    Examples
    --------
    >>> fig = plot_reliability(reliability(ens, obs, threshold=[16, 74], dim=None))  # doctest: +SKIP
    """
    from .events import BIN_DIM

    missing = [v for v in ("observed_frequency", "mean_forecast_probability", "count")
               if v not in getattr(diagram, "data_vars", {})]
    if missing:
        raise DataError(f"expected the Dataset returned by reliability(); it lacks {missing}")
    freq = diagram["observed_frequency"]
    extra = _only_dims(freq, (BIN_DIM,), "the reliability diagram", max_extra=1)
    line_dim = hue if hue is not None else (extra[0] if extra else None)
    fig = _new_figure(5.0, 5.6)
    top, bottom = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    top.plot([0, 1], [0, 1], color="k", ls="--", lw=1, label="perfectly reliable")
    values = diagram[line_dim].values if line_dim is not None else [None]
    for value in values:
        sel = diagram if value is None else diagram.sel({line_dim: value})
        x = sel["mean_forecast_probability"].values
        x = np.where(np.isnan(x), sel[BIN_DIM].values, x)
        label = "ensemble" if value is None else _label(line_dim, value)
        top.plot(x, sel["observed_frequency"].values, marker="o", label=label)
        counts = sel["count"].values.astype(float)
        bottom.step(sel[BIN_DIM].values, np.where(counts > 0, counts, np.nan), where="mid",
                    marker=".", label=label)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("observed relative frequency")
    top.legend(fontsize=8)
    top.grid(True, alpha=0.3)
    bottom.set_yscale("log")  # sharpness spans decades: most forecasts say 0 or 1
    bottom.set_xlabel("forecast probability")
    bottom.set_ylabel("forecasts")
    fig.tight_layout()
    return fig


def plot_rapsd(spectra: xr.DataArray | xr.Dataset, hue: Hashable | None = None,
               ax: Any = None) -> Any:
    """Log-log plot of radially averaged power spectra against spatial frequency.

    Parameters
    ----------
    spectra
        From :func:`~xearthformer.metrics.spectral.rapsd`: a DataArray, or the Dataset with
        ``forecast`` and ``observed`` (one line style each), along ``wavenumber`` plus at
        most one more dim (e.g. ``lead_time``), one line per value. The zero wavenumber (the
        domain mean) is left out of the log axes.
    hue
        That extra dim (default: the one other dim, if any).
    ax
        Axes to draw on (default: a new figure).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plot_rapsd(rapsd(fc, obs, dim=["init_time"]))  # doctest: +SKIP
    """
    from .spectral import WAVENUMBER

    ds = spectra.to_dataset(name=spectra.name or "rapsd") if isinstance(spectra, xr.DataArray) \
        else spectra
    if not ds.data_vars or any(WAVENUMBER not in v.dims for v in ds.data_vars.values()):
        raise DataError(f"expected spectra along {WAVENUMBER!r} (the output of rapsd)")
    fig = ax.figure if ax is not None else _new_figure(5.5, 4.0)
    ax = ax if ax is not None else fig.subplots()
    styles = ("-", "--", ":", "-.")
    colours = [f"C{i}" for i in range(10)]
    for v, (name, da) in enumerate(ds.data_vars.items()):
        extra = _only_dims(da, (WAVENUMBER,), f"spectrum {name!r}", max_extra=1)
        line_dim = hue if hue is not None else (extra[0] if extra else None)
        da = da.isel({WAVENUMBER: slice(1, None)})
        x = da["frequency"].values if "frequency" in da.coords else da[WAVENUMBER].values
        values = da[line_dim].values if line_dim is not None else [None]
        for c, value in enumerate(values):
            line = da if value is None else da.sel({line_dim: value})
            label = str(name) if value is None else f"{name} {_label(line_dim, value)}"
            ax.loglog(x, line.transpose(WAVENUMBER).values, ls=styles[v % len(styles)],
                      color=colours[c % len(colours)], label=label)
    ax.set_xlabel("spatial frequency (cycles per grid spacing)")
    ax.set_ylabel("power spectral density")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_members(
    ensemble: Any,
    observed: Any = None,
    context: Any = None,
    init_index: int = 0,
    members: int = 4,
    member_dim: Hashable = MEMBER,
    cmap: str = "turbo",
    vmin: float | None = None,
    vmax: float | None = None,
) -> Any:
    """Frame strip of an ensemble forecast: rows are the context, the truth, the ensemble mean
    and the first ``members`` members; columns are lead times; one colour scale for all.

    Parameters
    ----------
    ensemble
        ``(init_time, lead_time, member, y, x)`` with a 2-D ``valid_time`` (any other dim must
        be selected first, e.g. ``.sel(control=2)``).
    observed
        Optional observations on ``time`` (aligned to ``valid_time``): the truth row.
    context
        Optional observations on ``time``: the context row shows the last frames up to and
        including the init time (as many as there are lead times).
    init_index
        Which ``init_time`` to draw.
    members
        How many member rows (the first ones).
    cmap, vmin, vmax
        Colour map and scale (default: the range of everything drawn).

    Returns
    -------
    matplotlib.figure.Figure
        ``rows x lead times`` image axes plus one colour bar.

    Examples
    --------
    >>> fig = plot_members(ens, observed=vil, context=vil, members=3)  # doctest: +SKIP
    """
    ens = single_variable(to_xarray(ensemble), "the ensemble")
    for needed in (INIT, LEAD, member_dim):
        if needed not in ens.dims:
            raise DataError(f"the ensemble has dims {list(ens.dims)}; expected {needed!r} "
                            "(a forecast with members)")
    truth = None
    if observed is not None:
        ens, obs = prepare_pair(ens, observed)
        truth = single_variable(obs, "observed").isel({INIT: init_index})
    one = ens.isel({INIT: init_index})
    ydim, xdim = find_spatial_dims(one)
    _only_dims(one, (LEAD, member_dim, ydim, xdim), "the ensemble at one init time")
    n_leads = one.sizes[LEAD]
    rows: list[tuple[str, list[np.ndarray], list[str]]] = []
    lead_titles = _step_titles(one[LEAD]) if LEAD in one.coords else \
        [f"+{k}" for k in range(1, n_leads + 1)]
    if context is not None:
        rows.append(_context_row(context, ens[INIT].values[init_index], n_leads, ydim, xdim))
    if truth is not None:
        rows.append(("truth", [truth.isel({LEAD: k}).transpose(ydim, xdim).values
                               for k in range(n_leads)], lead_titles))
    mean = one.mean(member_dim, skipna=False)
    rows.append(("ensemble mean", [mean.isel({LEAD: k}).transpose(ydim, xdim).values
                                   for k in range(n_leads)], lead_titles))
    labels = one[member_dim].values if member_dim in one.coords else np.arange(one.sizes[member_dim])
    for m in range(min(members, one.sizes[member_dim])):
        frames = one.isel({member_dim: m})
        rows.append((f"member {labels[m]}", [frames.isel({LEAD: k}).transpose(ydim, xdim).values
                                            for k in range(n_leads)], lead_titles))
    shown = np.concatenate([f.ravel() for _, frames, _ in rows for f in frames])
    lo = float(np.nanmin(shown)) if vmin is None else vmin
    hi = float(np.nanmax(shown)) if vmax is None else vmax
    n_cols = max(len(frames) for _, frames, _ in rows)
    fig = _new_figure(1.6 * n_cols + 1.0, 1.6 * len(rows))
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    image = None
    for r, (name, frames, titles) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(frames):
                ax.set_visible(False)
                continue
            image = ax.imshow(frames[c], vmin=lo, vmax=hi, cmap=cmap, origin="lower")
            ax.set_title(titles[c], fontsize=7)
        axes[r, 0].set_ylabel(name, fontsize=8)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8,
                 label=str(ens.attrs.get("units", "")) or None)
    return fig


def _step_titles(offsets: xr.DataArray) -> list[str]:
    """Signed frame titles (``+10 min``, ``-2 d``) in the unit the lead axis uses, so daily
    context frames do not read ``-1440 min``."""
    numbers, axis_label = _lead_values(offsets)
    unit = axis_label.split("(")[-1].rstrip(")") if "(" in axis_label else ""
    unit = {"minutes": "min", "hours": "h", "days": "d"}.get(unit, unit)
    return [f"{v:+g} {unit}".rstrip() for v in np.asarray(numbers)]


def _context_row(context: Any, init: Any, n_frames: int, ydim: Hashable, xdim: Hashable
                 ) -> tuple[str, list[np.ndarray], list[str]]:
    from ._common import TIME, standard_time

    ctx = single_variable(standard_time(to_xarray(context)), "context")
    if TIME not in ctx.dims:
        raise DataError(f"the context has dims {list(ctx.dims)}; expected observations on 'time'")
    before = ctx.sel({TIME: slice(None, init)})
    if before.sizes[TIME] == 0:
        raise DataError(f"the context holds no time at or before the init time {init}")
    before = before.isel({TIME: slice(-n_frames, None)})
    times = before[TIME].values
    if np.issubdtype(times.dtype, np.datetime64):
        titles = _step_titles(xr.DataArray(times - np.datetime64(init, "ns")))
    else:  # cftime or numbers: the times as they are
        titles = [str(t) for t in times]
    frames = [before.isel({TIME: k}).transpose(ydim, xdim).values for k in range(len(times))]
    return "context", frames, titles
