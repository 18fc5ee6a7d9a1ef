"""Ensemble figures: each returns a Figure with the expected axes and content, and saves a PNG
(Agg backend, no display)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import xarray as xr

import xearthformer  # noqa: F401
from xearthformer import metrics
from xearthformer.errors import DataError

from tests.test_metrics_common import make_forecast, make_observed

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def case():
    obs = make_observed(n_time=10, ny=8, nx=8, scale=10.0)
    ens = make_forecast(obs, n_init=4, n_lead=3, noise=3.0, members=5, seed=4)
    return ens, obs


def _saved(fig, tmp_path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    fig.savefig(path, dpi=40)
    assert path.stat().st_size > 1000


def test_plot_rank_histogram(case, tmp_path):
    ens, obs = case
    hist = metrics.rank_histogram(ens, obs).sum("lead_time")
    fig = metrics.plot_rank_histogram(hist)
    (ax,) = fig.axes
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, hist.values / hist.values.sum())
    assert ax.get_lines()[0].get_ydata()[0] == pytest.approx(1 / 6)  # the flat line
    assert "chi2" in ax.get_title()
    _saved(fig, tmp_path, "rank")
    with pytest.raises(DataError, match="sum"):
        metrics.plot_rank_histogram(metrics.rank_histogram(ens, obs))


def test_plot_reliability(case, tmp_path):
    ens, obs = case
    diagram = metrics.reliability(ens, obs, threshold=[4.0, 7.0], bins=5,
                                  dim=["init_time", "lead_time", "lat", "lon"])
    fig = metrics.plot_reliability(diagram)
    top, bottom = fig.axes
    assert len(top.get_lines()) == 3  # the diagonal and one line per threshold
    np.testing.assert_allclose(top.get_lines()[2].get_ydata(),
                               diagram.observed_frequency.sel(threshold=7.0).values)
    assert len(bottom.get_lines()) == 2
    _saved(fig, tmp_path, "reliability")
    with pytest.raises(DataError, match="reliability"):
        metrics.plot_reliability(xr.Dataset({"x": 1}))


def test_plot_rapsd(case, tmp_path):
    ens, obs = case
    fc = ens.isel(member=0, drop=True)
    spectra = metrics.rapsd(fc, obs, dim=["init_time"])
    fig = metrics.plot_rapsd(spectra)
    (ax,) = fig.axes
    assert len(ax.get_lines()) == 2 * 3  # forecast and observed, per lead time
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(),
                               spectra.forecast.isel(lead_time=0).values[1:])
    _saved(fig, tmp_path, "rapsd")


def test_plot_members(case, tmp_path):
    ens, obs = case
    fig = metrics.plot_members(ens, observed=obs, context=obs, init_index=3, members=3)
    rows = 1 + 1 + 1 + 3  # context, truth, ensemble mean, members
    images = [ax for ax in fig.axes if ax.get_images()]
    assert len(images) == rows * 3
    assert len(fig.axes) == rows * 3 + 1  # plus the colour bar
    limits = {im.get_clim() for ax in images for im in ax.get_images()}
    assert len(limits) == 1  # one colour scale
    mean_row = images[2 * 3:3 * 3]
    np.testing.assert_allclose(mean_row[0].get_images()[0].get_array(),
                               ens.isel(init_time=3, lead_time=0).mean("member").values)
    assert mean_row[0].get_ylabel() == "ensemble mean" and mean_row[0].get_title() == "+1 h"
    assert images[2].get_title() == "+0 min"  # the last context frame is the init time
    _saved(fig, tmp_path, "members")
    just_members = metrics.plot_members(ens, members=2)
    assert len([ax for ax in just_members.axes if ax.get_images()]) == (1 + 2) * 3
    early = metrics.plot_members(ens, context=obs, init_index=0, members=1)
    assert not early.axes[1].get_visible()  # one context frame only: the rest of the row is empty
    with pytest.raises(DataError, match="member"):
        metrics.plot_members(ens.isel(member=0, drop=True))


def test_plot_members_labels_daily_context_in_days():
    obs = make_observed(n_time=10, ny=6, nx=6, freq="D", scale=10.0)
    ens = make_forecast(obs, n_init=4, n_lead=3, noise=3.0, members=2, seed=4)
    fig = metrics.plot_members(ens, context=obs, init_index=3, members=1)
    titles = [ax.get_title() for ax in fig.axes if ax.get_images()]
    assert titles[:3] == ["-2 d", "-1 d", "+0 d"]  # not "-2880 min"
    assert titles[3:6] == ["+1 d", "+2 d", "+3 d"]
