"""Statistics of the future (registry, records, gradients, units) and control targets that need
no future data: every value against a brute-force numpy computation or a closed form."""

import json
import math
import warnings

import numpy as np
import pytest
import torch

from xearthformer.errors import CheckpointError, ConfigError, ShapeError, XEarthformerWarning
from xearthformer.layout import Channel
from xearthformer.models.prediff.control import (ControlRequest, ControlStats, parse_control,
                                                 resolve_target)
from xearthformer.models.prediff.statistics import (STATISTICS, DataUnits, StatisticScale, as_statistic,
                                                    check_statistic, statistic, statistic_from_record)

torch.manual_seed(0)
X = torch.rand(3, 4, 5, 6, 2, dtype=torch.float64) * 200.0  # (N, T, H, W, C), "VIL" 0-200
XN = X.numpy()


# ------------------------------------------------------------------------------- values

def test_mean_intensity_is_the_mean_over_the_target_or_per_frame():
    seq = statistic("mean_intensity")(X)
    assert seq.shape == (3, 1)
    np.testing.assert_allclose(seq.numpy()[:, 0], [XN[n].mean() for n in range(3)], rtol=1e-12)
    frame = statistic("mean_intensity", over="frame")(X)
    assert frame.shape == (3, 4)
    np.testing.assert_allclose(frame.numpy(), [[XN[n, t].mean() for t in range(4)] for n in range(3)], rtol=1e-12)
    one = statistic("mean_intensity", channel=1)(X)
    np.testing.assert_allclose(one.numpy()[:, 0], [XN[n, ..., 1].mean() for n in range(3)], rtol=1e-12)


def test_area_above_tends_to_the_counted_fraction_and_stays_in_0_1():
    sharp = statistic("area_above", threshold=133.0, width=1e-6)(X).numpy()[:, 0]
    counted = [(XN[n] > 133.0).mean() for n in range(3)]
    # a pixel within a few widths of the threshold counts partly: at most one such pixel here
    np.testing.assert_allclose(sharp, counted, atol=1.0 / X[0].numel())
    smooth = statistic("area_above", threshold=133.0, width=20.0)(X)
    assert bool(((smooth > 0) & (smooth < 1)).all())
    # exactly 0.5 per pixel at the threshold
    at = statistic("area_above", threshold=7.0)(torch.full((1, 2, 3, 3, 1), 7.0))
    assert float(at) == 0.5


def test_sequence_statistics_are_the_frame_mean_of_their_per_frame_version():
    for stat in (statistic("mean_intensity"), statistic("area_above", threshold=100.0, width=5.0)):
        frame = stat.per_frame()
        assert frame.params["over"] == "frame"
        torch.testing.assert_close(frame(X).mean(dim=1, keepdim=True), stat(X))
    assert statistic("max").per_frame() is None  # the mean of frame maxima is not the maximum


def test_soft_max_lies_between_mean_and_max_and_tends_to_the_max():
    for temperature in (50.0, 5.0, 0.5):
        soft = statistic("max", temperature=temperature)(X).numpy()[:, 0]
        assert all(XN[n].mean() <= soft[n] <= XN[n].max() for n in range(3))
    cold = statistic("max", temperature=1e-3)(X).numpy()[:, 0]
    # T log mean exp(x/T) = max + T log(#argmax / count) -> max
    np.testing.assert_allclose(cold, XN.reshape(3, -1).max(axis=1), atol=1e-3 * math.log(X[0].numel()) + 1e-9)
    assert float(statistic("max")(torch.full((1, 2, 3, 3, 1), 4.0))) == pytest.approx(4.0)


# --------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("stat", [statistic("mean_intensity"), statistic("area_above", threshold=100.0, width=10.0),
                                  statistic("max", temperature=5.0), statistic("mean_intensity", over="frame")])
def test_a_step_along_the_gradient_raises_the_statistic(stat):
    x = X.clone().requires_grad_(True)
    value = stat(x)
    (grad,) = torch.autograd.grad(value.sum(), x)
    after = stat(X + 1e-2 * grad / grad.abs().max())
    assert bool((after > value.detach()).all())
    after = stat(X - 1e-2 * grad / grad.abs().max())
    assert bool((after < value.detach()).all())


def test_gradients_in_closed_form():
    x = X.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(statistic("mean_intensity")(x).sum(), x)
    torch.testing.assert_close(grad, torch.full_like(X, 1.0 / X[0].numel()))
    # the soft maximum's gradient is a softmax over the pixels: all weight at the max as T -> 0
    (grad,) = torch.autograd.grad(statistic("max", temperature=1e-2)(x).sum(), x)
    flat = grad.reshape(3, -1)
    assert torch.equal(flat.argmax(dim=1), X.reshape(3, -1).argmax(dim=1))
    torch.testing.assert_close(flat.sum(dim=1), torch.ones(3, dtype=torch.float64))


def test_check_statistic_accepts_smooth_and_refuses_non_differentiable_callables():
    value = check_statistic(statistic("area_above", threshold=100.0), X[:, :, :, :, :1].float())
    assert value.shape == (3, 1) and not value.requires_grad
    bad = {
        "detached": lambda x: x.detach().mean(dim=(1, 2, 3, 4))[:, None],
        "numpy": lambda x: torch.from_numpy(x.detach().numpy().mean(axis=(1, 2, 3, 4))[:, None]),
        "hard threshold": lambda x: (x > 100.0).float().mean(dim=(1, 2, 3, 4))[:, None],
        "rounded": lambda x: torch.round(x).mean(dim=(1, 2, 3, 4))[:, None],
    }
    for name, fn in bad.items():
        with pytest.raises(ConfigError, match="Fix: compute it from x with differentiable"):
            check_statistic(as_statistic(fn), X)
    with pytest.raises(ShapeError, match=r"must return a tensor \(N, K\) with N = 3"):
        check_statistic(as_statistic(lambda x: x.mean()), X)
    with pytest.raises(ShapeError, match=r"must return a tensor \(N, K\)"):
        as_statistic(lambda x: x.mean(dim=(1, 2, 3, 4)))(X)  # (N,), not (N, K)
    with pytest.raises(ShapeError, match=r"\(N, T, H, W, C\)"):
        statistic("mean_intensity")(X[0])


def test_user_callable_works_for_the_session_but_cannot_be_stored():
    stat = as_statistic(lambda x: x.amax(dim=(1, 2, 3, 4))[:, None])
    np.testing.assert_allclose(stat(X).numpy()[:, 0], XN.reshape(3, -1).max(axis=1))
    assert not stat.storable and stat.components(4) is None
    with pytest.raises(ConfigError, match="never code"):
        stat.to_record()
    assert stat.same_as(stat) and not stat.same_as(as_statistic(lambda x: x.amax(dim=(1, 2, 3, 4))[:, None]))


# ----------------------------------------------------------------------- registry, records

def test_records_round_trip_through_json_and_rebuild_from_the_registry():
    for stat in (statistic("mean_intensity", over="frame"), statistic("area_above", threshold=133, width=2),
                 statistic("max", temperature=3.0, channel=0)):
        record = json.loads(json.dumps(stat.to_record()))
        again = statistic_from_record(record)
        assert again.same_as(stat) and again.label == stat.label
        torch.testing.assert_close(again(X), stat(X))
    assert as_statistic({"name": "area_above", "params": {"threshold": 5}}).same_as(
        statistic("area_above", threshold=5.0))
    assert statistic("area_above", threshold=5).same_as(statistic("area_above", threshold=5.0, width=1.0))
    assert not statistic("area_above", threshold=5).same_as(statistic("area_above", threshold=6))


def test_unknown_statistics_and_parameters_are_refused_with_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown statistic 'median'.*mean_intensity"):
        statistic("median")
    with pytest.raises(ConfigError, match="no parameter.*'thresh'.*threshold"):
        statistic("area_above", thresh=1.0)
    with pytest.raises(ConfigError, match="needs a threshold"):
        statistic("area_above")
    with pytest.raises(ConfigError, match="width must be > 0"):
        statistic("area_above", threshold=1.0, width=0)
    with pytest.raises(ConfigError, match="over must be one of"):
        statistic("mean_intensity", over="time")
    with pytest.raises(CheckpointError, match="cannot be rebuilt.*version that wrote it"):
        statistic_from_record({"name": "future_statistic", "params": {}})
    with pytest.raises(CheckpointError):
        statistic_from_record(["mean_intensity"])
    with pytest.raises(ShapeError, match="channel=5"):
        statistic("mean_intensity", channel=5)(X)
    assert set(STATISTICS) == {"mean_intensity", "area_above", "max"}


def test_bounds_are_the_attainable_range():
    assert statistic("mean_intensity").bounds((0.0, 255.0)) == (0.0, 255.0)
    assert statistic("area_above", threshold=1.0).bounds((0.0, 255.0)) == (0.0, 1.0)
    assert statistic("max").bounds(None) == (-math.inf, math.inf)
    assert as_statistic(lambda x: x).bounds((0.0, 1.0)) == (-math.inf, math.inf)


# ------------------------------------------------------------------------------ the scales

def test_the_scale_of_normalised_data_equals_the_statistic_of_normalised_data():
    offset, scale = 10.0, 255.0
    xn = (X - offset) / scale
    cases = [(statistic("mean_intensity", over="frame"), statistic("mean_intensity", over="frame")),
             (statistic("max", temperature=5.0), statistic("max", temperature=5.0 / scale)),
             (statistic("area_above", threshold=133.0, width=2.0),
              statistic("area_above", threshold=(133.0 - offset) / scale, width=2.0 / scale))]
    for physical, on_normalised in cases:
        s = StatisticScale.of_normalised_data(physical, offset, scale)
        torch.testing.assert_close(s.to_network(physical(X)), on_normalised(xn))
        torch.testing.assert_close(s.to_physical(on_normalised(xn)), physical(X))
    with pytest.raises(ConfigError, match="train_alignment"):
        StatisticScale.of_normalised_data(as_statistic(lambda x: x), 0.0, 1.0)


def test_standardising_scale_round_trips_and_checks_components():
    s = StatisticScale.standardising([1.0, 2.0, 3.0], [0.5, 1.0, 2.0])
    y = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(s.to_physical(s.to_network(y)), y)
    torch.testing.assert_close(s.to_network(torch.tensor([[1.0, 2.0, 3.0]])), torch.zeros(1, 3))
    assert StatisticScale.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(ShapeError, match="another statistic"):
        s.to_network(torch.zeros(2, 2))
    with pytest.raises(ConfigError, match="never varies"):
        StatisticScale.standardising([1.0], [0.0])
    with pytest.raises(CheckpointError):
        StatisticScale.from_dict({"offset": [0.0]})


def test_data_units_match_the_channel_normalisation():
    chans = [Channel("vil", method="scale", offset=0.0, scale=255.0, attrs={"units": "1"}, range=(0.0, 1.0)),
             Channel("t", method="zscore", offset=280.0, scale=5.0, attrs={"units": "1"}, range=(-3.0, 2.0))]
    units = DataUnits.from_channels(chans)
    raw = np.array([[51.0, 290.0], [255.0, 265.0]])
    normalised = np.stack([c.normalise(raw[:, k]) for k, c in enumerate(chans)], axis=-1)
    np.testing.assert_allclose(units.to_normalised(torch.tensor(raw)).numpy(), normalised, rtol=1e-6)
    np.testing.assert_allclose(units.to_physical(torch.tensor(normalised, dtype=torch.float64)).numpy(), raw,
                               rtol=1e-6)
    assert units.range == (0.0, 290.0) and units.units == "1"
    assert DataUnits.from_channels(chans[:1]).range == (0.0, 255.0)
    with pytest.raises(ConfigError, match="anomalies.*normalisation='zscore'"):
        DataUnits.from_channels([Channel("sst", method="anomaly")])


# --------------------------------------------------------------------------- control targets

STATS = ControlStats(mu=(0.4, 1.0), sigma=(0.3, 0.1), count=50)


def test_n_sigma_targets_per_component():
    target = resolve_target(parse_control({"n": 2}), samples=3, components=2, stats=STATS)
    assert target.shape == (3, 2)
    np.testing.assert_allclose(target.numpy(), [[0.4 + 2 * 0.3, 1.0 + 2 * 0.1]] * 3)
    per = resolve_target(parse_control({"n": [1, -1]}), samples=1, components=2, stats=STATS)
    np.testing.assert_allclose(per.numpy(), [[0.7, 0.9]])


def test_targets_below_the_attainable_range_are_clipped_with_a_warning():
    with pytest.warns(XEarthformerWarning, match=r"below the attainable minimum 0.*skewed.*clipped"):
        target = resolve_target(parse_control({"n": -2}), samples=2, components=2, stats=STATS,
                                bounds=(0.0, 255.0), label="mean_intensity")
    np.testing.assert_allclose(target.numpy(), [[0.0, 0.8]] * 2)  # 0.4 - 0.6 < 0 clipped; 0.8 kept
    with pytest.warns(XEarthformerWarning, match="above the attainable maximum 1"):
        resolve_target(parse_control({"value": 1.5}), samples=1, components=1, bounds=(0.0, 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_target(parse_control({"n": 1}), samples=2, components=2, stats=STATS, bounds=(0.0, 255.0))


def test_absolute_and_callable_targets():
    value = resolve_target(parse_control({"value": 0.3}), samples=2, components=1)
    np.testing.assert_allclose(value.numpy(), [[0.3], [0.3]])
    context = torch.rand(2, 3, 4, 4, 1)
    twice = resolve_target(parse_control(lambda ctx: 2 * ctx.mean(dim=(1, 2, 3, 4))), samples=2, components=1,
                           context=context)
    np.testing.assert_allclose(twice.numpy()[:, 0], 2 * context.numpy().mean(axis=(1, 2, 3, 4)), rtol=1e-6)
    with pytest.raises(ShapeError, match=r"must return the target \(N, K\) = \(2, 3\).*got shape \(2, 2\)"):
        resolve_target(parse_control(lambda ctx: torch.zeros(2, 2)), samples=2, components=3, context=context)
    with pytest.raises(ConfigError, match="non-finite"):
        resolve_target(parse_control(lambda ctx: torch.full((2, 1), math.nan)), samples=2, components=1,
                       context=context)


def test_targets_of_the_wrong_shape_and_missing_stats_name_the_fix():
    with pytest.raises(ShapeError, match="3 components but the statistic has K = 2. Fix"):
        resolve_target(parse_control({"value": [1, 2, 3]}), samples=1, components=2)
    with pytest.raises(ShapeError, match="stored mu/sigma"):
        resolve_target(parse_control({"n": 1}), samples=1, components=6, stats=STATS)
    with pytest.raises(ConfigError, match=r"xef.control_stats\(model, ds\)"):
        resolve_target(parse_control({"n": 1}), samples=1, components=1)


def test_parse_control_forms_and_refusals():
    req = parse_control({"statistic": "area_above", "threshold": 133, "n": 3, "scale": 20})
    assert req.statistic.same_as(statistic("area_above", threshold=133.0)) and req.n == (3.0,)
    assert req.scale == 20.0
    assert json.loads(req.to_attrs()) == {"n": 3.0, "scale": 20.0, "statistic": {
        "name": "area_above", "params": {"threshold": 133.0, "width": 1.0, "over": "sequence", "channel": None}}}
    assert parse_control({"n": -4}).label == "n=-4" and parse_control({"value": 0.25}).label == "value=0.25"
    assert parse_control(req) is req and isinstance(parse_control(lambda c: c), ControlRequest)
    refusals = [({"n": 1, "value": 2}, "exactly one"), ({}, "exactly one"), ({"m": 1}, "unknown control key"),
                ({"n": "2"}, "finite number"), ({"n": math.inf}, "finite number"), ({"n": 1, "scale": -1}, ">= 0"),
                ({"statistic": "median", "n": 1}, "unknown statistic"), (3, "must be a dict")]
    for control, match in refusals:
        with pytest.raises(ConfigError, match=match):
            parse_control(control)


def test_control_stats_estimate_and_round_trip():
    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, 1.0, size=(200, 3))
    stats = ControlStats.estimate(values, period=("2020-01-01", "2020-12-31"))
    np.testing.assert_allclose(stats.mu, values.mean(axis=0))
    np.testing.assert_allclose(stats.sigma, values.std(axis=0))
    assert stats.count == 200 and stats.conditioning == "none"
    assert ControlStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats
    with pytest.raises(ShapeError, match="at least 2 windows"):
        ControlStats.estimate(values[:1])
    with pytest.raises(CheckpointError):
        ControlStats.from_dict({"mu": [1.0]})
