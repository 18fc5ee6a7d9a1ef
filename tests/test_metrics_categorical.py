"""Categorical scores against brute-force counts, xskillscore and the official SEVIR metric."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import xarray as xr
import xskillscore as xs

import xearthformer  # noqa: F401
from xearthformer import metrics
from xearthformer.errors import DataError

from tests.test_metrics_common import make_forecast, make_observed, observed_on_forecast

THR = [16.0, 74.0, 133.0, 160.0, 181.0, 219.0]


def brute_counts(f: np.ndarray, o: np.ndarray, thr: float):
    """Loop over every point: (hits, misses, false alarms, correct negatives), NaN skipped."""
    h = m = fa = cn = 0
    for fv, ov in zip(f.ravel(), o.ravel()):
        if np.isnan(fv) or np.isnan(ov):
            continue
        fe, oe = fv >= thr, ov >= thr
        h += fe and oe
        m += (not fe) and oe
        fa += fe and not oe
        cn += (not fe) and (not oe)
    return h, m, fa, cn


@pytest.fixture(scope="module")
def pair():
    obs = make_observed(n_time=8, ny=6, nx=6)
    obs[0, 0, :3] = np.nan  # missing points are skipped
    fc = make_forecast(obs, n_init=4, n_lead=3, noise=50.0)
    fc[1, 2, 3, 3] = np.nan
    fc[0, 0, 1, 1] = 74.0  # value == threshold is an event
    return fc, obs


def test_contingency_matches_brute_force_per_lead(pair):
    fc, obs = pair
    o = observed_on_forecast(fc, obs)
    got = metrics.contingency(fc, obs, thresholds=THR)
    assert set(got.dims) == {"lead_time", "threshold"}
    for k, thr in enumerate(THR):
        for lead in range(fc.sizes["lead_time"]):
            h, m, fa, cn = brute_counts(fc.values[:, lead], o[:, lead], thr)
            row = got.isel(threshold=k, lead_time=lead)
            assert (int(row.hits), int(row.misses), int(row.false_alarms),
                    int(row.correct_negatives)) == (h, m, fa, cn)


def test_scores_from_brute_force_counts(pair):
    fc, obs = pair
    o = observed_on_forecast(fc, obs)
    h, m, fa, _ = brute_counts(fc.values, o, 133.0)
    kw = dict(thresholds=133.0, dim=None)
    assert float(metrics.csi(fc, obs, **kw).mean()) != 0
    full = dict(thresholds=133.0, dim=["init_time", "lead_time", "lat", "lon"])
    assert float(metrics.csi(fc, obs, **full)) == pytest.approx(h / (h + m + fa))
    assert float(metrics.pod(fc, obs, **full)) == pytest.approx(h / (h + m))
    assert float(metrics.sucr(fc, obs, **full)) == pytest.approx(h / (h + fa))
    assert float(metrics.frequency_bias(fc, obs, **full)) == pytest.approx((h + fa) / (h + m))


def test_scalar_threshold_gives_no_dim_and_list_always_does(pair):
    fc, obs = pair
    assert "threshold" not in metrics.csi(fc, obs, thresholds=100.0).dims
    one = metrics.csi(fc, obs, thresholds=[100.0])
    assert one.sizes["threshold"] == 1
    np.testing.assert_allclose(one.isel(threshold=0).values,
                               metrics.csi(fc, obs, thresholds=100.0).values)
    assert metrics.csi(fc, obs).sizes["threshold"] == 6  # SEVIR defaults
    np.testing.assert_array_equal(metrics.csi(fc, obs).threshold.values, THR)


def test_against_xskillscore_contingency(pair):
    fc, obs = pair
    o = xr.DataArray(observed_on_forecast(fc, obs), dims=fc.dims, coords=fc.coords)
    edges = np.array([-np.inf, 133.0, np.inf])
    dims = ["init_time", "lat", "lon"]
    table = xs.Contingency(o, fc, edges, edges, dim=dims)
    ours = metrics.contingency(fc, obs, thresholds=133.0, dim=dims)
    np.testing.assert_array_equal(ours.hits.values, table.hits(yes_category=2).values)
    np.testing.assert_array_equal(ours.misses.values, table.misses(yes_category=2).values)
    np.testing.assert_array_equal(ours.false_alarms.values,
                                  table.false_alarms(yes_category=2).values)
    np.testing.assert_allclose(metrics.csi(fc, obs, 133.0, dim=dims).values,
                               table.threat_score(yes_category=2).values)
    np.testing.assert_allclose(metrics.sucr(fc, obs, 133.0, dim=dims).values,
                               table.success_ratio(yes_category=2).values)


def test_csi_m_is_mean_over_thresholds(pair):
    fc, obs = pair
    per = metrics.csi(fc, obs, thresholds=THR)
    np.testing.assert_allclose(metrics.csi_m(fc, obs, thresholds=THR).values,
                               per.mean("threshold").values)
    assert "threshold" not in metrics.csi_m(fc, obs).dims


def block_max(a: np.ndarray, k: int) -> np.ndarray:
    """Brute-force k x k max pooling of the last two axes (edge remainder dropped)."""
    ny, nx = a.shape[-2] // k, a.shape[-1] // k
    out = np.empty(a.shape[:-2] + (ny, nx))
    for i in range(ny):
        for j in range(nx):
            out[..., i, j] = np.nanmax(a[..., i * k:(i + 1) * k, j * k:(j + 1) * k], axis=(-2, -1))
    return out


def test_pooled_csi_matches_brute_force_pooling():
    obs = make_observed(n_time=6, ny=8, nx=9)
    fc = make_forecast(obs, n_init=3, n_lead=2)
    o = observed_on_forecast(fc, obs)
    fp, op = block_max(fc.values, 4), block_max(o, 4)
    h, m, fa, _ = brute_counts(fp, op, 181.0)
    got = metrics.csi(fc, obs, thresholds=181.0, pool=4, dim=["init_time", "lead_time", "lat", "lon"])
    assert float(got) == pytest.approx(h / (h + m + fa))
    # overlapping windows (stride 2) against brute force
    got2 = metrics.max_pool(fc, 4, stride=2)
    ref = np.stack([np.stack([fc.values[..., i:i + 4, j:j + 4].max(axis=(-2, -1))
                              for j in range(0, 9 - 3, 2)], -1) for i in range(0, 8 - 3, 2)], -2)
    np.testing.assert_allclose(got2.values, ref)


def test_aggregate_samples_averages_per_sample_scores(pair):
    fc, obs = pair
    o = observed_on_forecast(fc, obs)
    scores = []
    for i in range(fc.sizes["init_time"]):
        h, m, fa, _ = brute_counts(fc.values[i], o[i], 133.0)
        if h + m + fa:
            scores.append(h / (h + m + fa))
    got = metrics.csi(fc, obs, 133.0, dim=["init_time", "lead_time", "lat", "lon"],
                      aggregate="samples")
    assert float(got) == pytest.approx(np.mean(scores))
    pooled = metrics.csi(fc, obs, 133.0, dim=["init_time", "lead_time", "lat", "lon"])
    assert float(pooled) != pytest.approx(float(got))


def test_sevir_protocol_pools_leads_and_uses_eps(pair):
    fc, obs = pair
    o = observed_on_forecast(fc, obs)
    got = metrics.contingency(fc, obs, THR, protocol="sevir")
    assert got.hits.dims == ("threshold",)
    h, m, fa, _ = brute_counts(fc.values, o, 219.0)
    assert int(got.hits.sel(threshold=219.0)) == h
    csi = metrics.csi(fc, obs, THR, protocol="sevir")
    assert float(csi.sel(threshold=219.0)) == pytest.approx(h / (h + m + fa + 1e-4))
    # no event anywhere: 0 with eps (official), NaN without (undefined)
    zero = xr.zeros_like(fc)
    assert metrics.csi(zero, zero, [16.0], protocol="sevir").item() == 0.0
    assert np.isnan(metrics.csi(zero, zero, 16.0, check_range=False).values).all()


def test_thresholds_outside_data_range_are_data_errors(pair):
    fc, obs = pair
    with pytest.raises(DataError, match="outside the data range"):
        metrics.csi(fc, obs, thresholds=[16.0, 1000.0])
    with pytest.raises(DataError, match="outside the data range"):
        metrics.contingency(fc / 255.0, obs / 255.0, thresholds=[16.0])
    # the scale argument fixes the [0, 1] case
    np.testing.assert_allclose(
        metrics.csi(fc / 255.0, obs / 255.0, [16.0], scale=255.0).values,
        metrics.csi(fc, obs, [16.0]).values)
    with pytest.raises(DataError, match="protocol"):
        metrics.csi(fc, obs, 16.0, protocol="nonsense")
    with pytest.raises(DataError, match="aggregate"):
        metrics.csi(fc, obs, 16.0, aggregate="nonsense")


def test_accessor_csi_aligns_time_and_labels(pair):
    fc, obs = pair
    got = fc.earthformer.csi(obs, thresholds=[74, 133])
    assert set(got.dims) == {"lead_time", "threshold"}
    np.testing.assert_allclose(got.values, metrics.csi(fc, obs, [74, 133]).values)
    pooled = fc.earthformer.csi(obs, thresholds=[74], pool=2)
    np.testing.assert_allclose(pooled.values, metrics.csi(fc, obs, [74], pool=2).values)


def _official_sevir_metric():
    """The official SEVIRSkillScore with its two heavy imports stubbed: torchmetrics.Metric
    (only add_state is used) and SEVIRDataLoader.process_data_dict_back (x * 255, see
    reference A3). Thresholding, counting and the score formulas are the official code."""
    import torch

    saved = {k: sys.modules.get(k) for k in
             ("torchmetrics", "earthformer.datasets.sevir.sevir_dataloader",
              "earthformer.metrics.sevir", "earthformer.metrics.skill_scores")}
    tm = types.ModuleType("torchmetrics")

    class Metric(torch.nn.Module):
        def __init__(self, dist_sync_on_step=False, **kwargs):
            super().__init__()

        def add_state(self, name, default, dist_reduce_fx=None):
            setattr(self, name, default.clone())

    tm.Metric = Metric
    loader = types.ModuleType("earthformer.datasets.sevir.sevir_dataloader")

    class SEVIRDataLoader:
        @staticmethod
        def process_data_dict_back(data_dict):
            return {k: v * 255 for k, v in data_dict.items()}

    loader.SEVIRDataLoader = SEVIRDataLoader
    sys.modules["torchmetrics"] = tm
    sys.modules["earthformer.datasets.sevir.sevir_dataloader"] = loader
    try:
        from earthformer.metrics.sevir import SEVIRSkillScore
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return SEVIRSkillScore


@pytest.mark.official
@pytest.mark.parametrize("mode", ["0", "1"])
def test_sevir_protocol_reproduces_official_metric(mode):
    import torch

    SEVIRSkillScore = _official_sevir_metric()
    rng = np.random.default_rng(7)
    # two batches (N, T, H, W, C) on [0, 1], with NaNs and values above 1 (never clipped)
    batches = [rng.uniform(0, 1.05, (2, 4, 12, 12, 1)).astype(np.float32) for _ in range(4)]
    batches[0][0, 0, 0, :4, 0] = np.nan
    official = SEVIRSkillScore(layout="NTHWC", mode=mode, seq_len=4)
    for pred, target in zip(batches[::2], batches[1::2]):
        official.update(torch.from_numpy(pred), torch.from_numpy(target))
    ref = official.compute()
    dims = ("init_time", "lead_time", "y", "x", "c")
    pred = xr.DataArray(np.concatenate(batches[::2]), dims=dims)
    target = xr.DataArray(np.concatenate(batches[1::2]), dims=dims)
    dim = None if mode == "0" else ["init_time", "y", "x", "c"]
    kw = dict(dim=dim, protocol="sevir", scale=255.0)
    for name, ours in (("csi", metrics.csi), ("pod", metrics.pod), ("sucr", metrics.sucr)):
        got = ours(pred, target, THR, **kw)
        for k, thr in enumerate(THR):
            np.testing.assert_allclose(got.isel(threshold=k).values, ref[int(thr)][name],
                                       rtol=1e-5, err_msg=f"{name} at {thr}")
        np.testing.assert_allclose(got.mean("threshold").values, ref["avg"][name], rtol=1e-5)
    np.testing.assert_allclose(metrics.csi_m(pred, target, THR, **kw).values, ref["avg"]["csi"],
                               rtol=1e-5)
    # the official "bias" is (FB / ln 2)^2; ours is the true frequency bias
    fb = metrics.frequency_bias(pred, target, THR, **kw)
    np.testing.assert_allclose((fb.isel(threshold=0) / np.log(2)) ** 2, ref[16]["bias"], rtol=1e-4)


def test_scores_from_counts_equal_the_scores_computed_directly():
    from xearthformer.metrics import contingency, csi, pod, scores_from_counts, sucr

    rng = np.random.default_rng(3)
    fc = xr.DataArray(rng.uniform(0, 255, (4, 3, 8, 8)), dims=("init_time", "lead_time", "y", "x"))
    ob = xr.DataArray(rng.uniform(0, 255, (4, 3, 8, 8)), dims=fc.dims)
    thr = [16, 133, 219]
    for protocol, eps in ((None, 0.0), ("sevir", 1e-4)):
        got = scores_from_counts(contingency(fc, ob, thr, protocol=protocol), eps)
        for name, direct in (("csi", csi), ("pod", pod), ("sucr", sucr)):
            np.testing.assert_allclose(got[name].values, direct(fc, ob, thr, protocol=protocol).values)
