"""Synthetic storm cells: seeded, CF-labelled, on the 0-255 scale; cells move, grow and decay."""

from __future__ import annotations

import numpy as np
import pytest

from xearthformer import layout
from xearthformer.data import storms as storms_mod
from xearthformer.data.storms import SEVIR_THRESHOLDS, storm_field, storms
from xearthformer.errors import ConfigError


def test_seeded_and_labelled():
    a = storms(n_times=20, size=(24, 32), seed=3)
    b = storms(n_times=20, size=(24, 32), seed=3)
    c = storms(n_times=20, size=(24, 32), seed=4)
    assert a.identical(b) and not np.array_equal(a.vil.values, c.vil.values)
    assert a.vil.dims == ("time", "y", "x") and a.vil.shape == (20, 24, 32)
    v = a.vil.values
    assert v.min() >= 0 and v.max() <= 255 and np.array_equal(v, np.round(v))  # integer VIL codes
    assert (np.diff(a.time.values) == np.timedelta64(5, "m")).all()
    ax = layout.find_axes(a)  # the CF attributes are enough for the axis lookup
    assert (ax.time, ax.y, ax.x) == ("time", "y", "x")
    assert a.x.attrs["standard_name"] == "projection_x_coordinate" and a.attrs["Conventions"] == "CF-1.8"


def test_a_single_cell_moves_with_its_velocity_and_grows_then_decays(monkeypatch):
    # one cell, born at frame 0, living 30 frames, known velocity: check the field against it
    table = {"birth": np.array([0.0]), "life": np.array([30.0]), "peak": np.array([200.0]),
             "sigma": np.array([3.0]), "y0": np.array([20.0]), "x0": np.array([10.0]),
             "vy": np.array([0.5]), "vx": np.array([1.0])}
    monkeypatch.setattr(storms_mod, "_cell_table", lambda *a, **k: table)
    field = storm_field(31, 48, 64)
    yy, xx = np.mgrid[:48, :64]
    for t in (5, 15, 25):
        w = field[t]
        cy, cx = (w * yy).sum() / w.sum(), (w * xx).sum() / w.sum()
        assert cy == pytest.approx(20.0 + 0.5 * t, abs=0.05) and cx == pytest.approx(10.0 + 1.0 * t, abs=0.05)
    mass = field.sum(axis=(1, 2))  # grows with the amplitude and the width, then decays
    top = int(np.argmax(mass))
    assert 12 <= top <= 18  # half-sine life cycle peaks mid-life
    assert np.all(np.diff(mass[:top + 1]) > 0) and np.all(np.diff(mass[top:]) < 0)
    # grid maxima stay within the sampling loss of the analytic amplitude
    expected = 200 * np.sin(np.pi * np.arange(31) / 30)
    peaks = field.reshape(31, -1).max(axis=1)
    assert np.all(peaks <= expected + 0.5) and np.all(peaks[5:26] >= 0.9 * expected[5:26])


def test_default_demo_field_reaches_the_high_sevir_thresholds():
    v = storms(n_times=96, size=(48, 48), seed=0).vil.values
    frac = [(v >= t).mean() for t in SEVIR_THRESHOLDS]
    assert all(f > 0 for f in frac)
    assert all(a >= b for a, b in zip(frac, frac[1:]))  # rarer events at higher thresholds
    assert 0.02 < frac[0] < 0.6


def test_bad_sizes_raise():
    with pytest.raises(ConfigError, match="positive"):
        storm_field(0, 8, 8)
