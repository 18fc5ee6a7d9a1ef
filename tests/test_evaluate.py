"""evaluate(): streamed scores equal the metrics module called once on all windows."""

from __future__ import annotations

import importlib
import json
import os
import sys
import types

import numpy as np
import pytest
import torch
import xarray as xr

from tests.test_data_icar_enso import make_icar_enso
from tests.test_data_sevir import make_sevir
from tests.test_hub import ENSO_V1
from xearthformer import metrics
from xearthformer.checkpoint import save
from xearthformer.models.base import Forecaster
from xearthformer.cli import main
from xearthformer.data import icar_enso, sevir
from xearthformer.errors import ConfigError
from xearthformer.evaluate import PUBLISHED, evaluate
from xearthformer.forecast import predict_tensor
from xearthformer.layout import Channel, DataSpec, Grid, TimeStep
from xearthformer.models.earthformer.network import Earthformer
from xearthformer.models.earthformer.official import load_official, official_spec

ENSO_GROUPS = (("CMIP6", 1, 2), ("CMIP5", 3, 1))     # test model CMIP5-3: 36 months, 11 windows


def tiny(variable: str, context: int, lead: int, shape: tuple[int, int], offset: float,
         scale: float, step: TimeStep, gain: float) -> Forecaster:
    """A random tiny Earthformer in a Forecaster; ``gain`` spreads its outputs over the range."""
    torch.manual_seed(0)
    model = Earthformer.from_preset("tiny", input_shape=(context, *shape, 1), target_shape=(lead, *shape, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(gain)
    ch = Channel(variable, method="minmax", offset=offset, scale=scale)
    grid = Grid(y="y", x="x", y_values=np.arange(shape[0]), x_values=np.arange(shape[1]),
                lat=None, lon=None)
    return Forecaster(model, DataSpec(inputs=(ch,), targets=(ch,), grid=grid, step=step,
                                      context=context, lead=lead))


@pytest.fixture(scope="module")
def sevir_case(tmp_path_factory):
    root = tmp_path_factory.mktemp("sevir")
    make_sevir(root)
    return root, tiny("vil", 13, 12, (32, 32), 0.0, 255.0, TimeStep(5, "minutes"), 1.5)


def test_sevir_scores_equal_metrics_on_all_windows(sevir_case):
    root, model = sevir_case
    scores = evaluate(model, "sevir", root, split="val", batch_size=4, device="cpu", progress=False)
    # reference: every window at once, straight through the metrics module
    win = sevir.sevir_windows(root, split="val")
    codes = win.vil.values.astype(np.float32)                        # (6, 25, 32, 32)
    y = predict_tensor(model, (codes[:, :13] / 255)[..., None], batch_size=6, device="cpu")[:, 0]
    pred = xr.DataArray(y[..., 0] * 255, dims=("init_time", "lead_time", "y", "x"))
    obs = xr.DataArray(codes[:, 13:], dims=pred.dims)
    csi = metrics.csi(pred, obs, thresholds=list(metrics.SEVIR_THRESHOLDS), protocol="sevir")
    assert scores.attrs["n_samples"] == 6
    np.testing.assert_allclose(scores.csi.values, csi.values, rtol=1e-12)
    np.testing.assert_allclose(float(scores.csi_m),
                               float(metrics.csi_m(pred, obs, protocol="sevir")), rtol=1e-12)
    assert float(scores.csi_219) == pytest.approx(float(csi.sel(threshold=219)), rel=1e-12)
    assert float(scores.csi_181) == pytest.approx(float(csi.sel(threshold=181)), rel=1e-12)
    np.testing.assert_allclose(float(scores.mse), float(metrics.mse(pred / 255, obs / 255, dim=list(pred.dims))),
                               rtol=1e-5)
    np.testing.assert_allclose(float(scores.mae), float(metrics.mae(pred / 255, obs / 255, dim=list(pred.dims))),
                               rtol=1e-5)
    # the scores are informative: some events are hit, not all
    assert 0 < float(scores.csi_m) < 1 and int(scores.hits.sum()) > 0
    # per-lead counts add up to the pooled ones; official batching drops nothing for 6 windows
    per_lead = metrics.contingency(pred, obs, list(metrics.SEVIR_THRESHOLDS), dim=["init_time", "y", "x"])
    np.testing.assert_array_equal(scores.hits.transpose(*per_lead.hits.dims).values, per_lead.hits.values)


def test_sevir_cli_prints_published_numbers(sevir_case, tmp_path, capsys):
    root, model = sevir_case
    path = tmp_path / "m.xef"
    save(model, path)
    out = tmp_path / "scores.json"
    code = main(["evaluate", "--model", str(path), "--dataset", "sevir", "--data-dir", str(root),
                 "--max-samples", "3", "--official-batching", "--batch-size", "2", "--device", "cpu",
                 "--no-progress", "--output", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "csi_m" in text and f"{PUBLISHED['sevir']['csi_m']:.4g}" in text
    saved = json.loads(out.read_text())
    assert saved["n_samples"] == 2                  # 3 windows, odd one dropped
    direct = evaluate(model, "sevir", root, max_samples=2, batch_size=2, device="cpu", progress=False)
    assert saved["csi_m"] == pytest.approx(float(direct.csi_m), rel=1e-12)


def test_enso_scores_equal_metrics_on_all_windows(tmp_path):
    make_icar_enso(tmp_path, groups=ENSO_GROUPS)
    ds = icar_enso.open_icar_enso(tmp_path, groups=ENSO_GROUPS)
    lo, span = icar_enso.SST_MIN, icar_enso.SST_MAX - icar_enso.SST_MIN
    model = tiny("sst", 12, 14, (24, 48), lo, span, TimeStep(1, "months"), 1.0)
    scores = evaluate(model, "enso", ds, batch_size=4, device="cpu", progress=False)
    win = icar_enso.icar_enso_windows(ds, split="test")
    sst = win.sst.values
    assert sst.dtype == np.float32                     # official scaling, in float32
    y = predict_tensor(model, icar_enso.scale_sst(sst[:, :12])[..., None], batch_size=11, device="cpu")[:, 0]
    pred = xr.DataArray(y[..., 0] * span + lo, dims=("init_time", "lead_time", "lat", "lon"),
                        coords={"lat": win.lat, "lon": win.lon, "lead_time": np.arange(1, 15)})
    index = metrics.nino34_index(pred, protocol="icar-enso")
    observed = xr.DataArray(win.nino_target.values, dims=("init_time", "lead_time"),
                            coords={"lead_time": index.lead_time.values})
    skill = metrics.c_nino34(index, observed, protocol="icar-enso")
    assert scores.attrs["n_samples"] == 11 and scores.attrs["models"] == "CMIP5-3"
    np.testing.assert_allclose(scores.cor.values, skill.cor.values, rtol=1e-6)
    assert float(scores.c_nino34_m) == pytest.approx(float(skill.c_nino34_m), rel=1e-6)
    assert float(scores.c_nino34_wm) == pytest.approx(float(skill.c_nino34_wm), rel=1e-6)
    target = xr.DataArray(icar_enso.scale_sst(sst[:, 12:]), dims=pred.dims)
    mse = metrics.mse(icar_enso.scale_sst(pred), target, dim=list(pred.dims))
    assert float(scores.mse) == pytest.approx(float(mse), rel=1e-5)


def test_model_must_fit_the_protocol(sevir_case):
    root, _ = sevir_case
    wrong = tiny("vil", 12, 12, (32, 32), 0.0, 255.0, TimeStep(5, "minutes"), 1.0)
    with pytest.raises(ConfigError, match="13 -> 12"):
        evaluate(wrong, "sevir", root, progress=False)
    with pytest.raises(ConfigError, match="neither a file nor a pretrained name"):
        evaluate(str(root / "missing.xef"), "sevir", root)
    with pytest.raises(ConfigError, match="unknown dataset"):
        evaluate(wrong, "nbody", root)


def import_official_enso(monkeypatch) -> types.SimpleNamespace:
    """The official ENSO loader and score functions, with stand-ins for the packages they
    import but do not need here (omegaconf config, pytorch_lightning, torchmetrics)."""
    config = types.ModuleType("earthformer.config")
    config.cfg = types.SimpleNamespace(datasets_dir=os.devnull)
    lightning = types.ModuleType("pytorch_lightning")
    lightning.LightningDataModule = object
    torchmetrics = types.ModuleType("torchmetrics")
    torchmetrics.Metric = object
    for name, module in (("earthformer.config", config), ("pytorch_lightning", lightning),
                         ("torchmetrics", torchmetrics)):
        monkeypatch.setitem(sys.modules, name, module)
    for name in ("earthformer.datasets.enso.enso_dataloader", "earthformer.metrics.enso"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    loader = importlib.import_module("earthformer.datasets.enso.enso_dataloader")
    scores = importlib.import_module("earthformer.metrics.enso")
    return types.SimpleNamespace(loader=loader, scores=scores)


@pytest.mark.official
def test_enso_matches_the_official_test_pipeline(tmp_path, monkeypatch):
    # the official model, data cut, index and scores (test oracles) against evaluate() with the
    # converted weights and the official spec, on the same synthetic files
    from earthformer.cuboid_transformer.cuboid_transformer import CuboidTransformerModel

    official = import_official_enso(monkeypatch)
    make_icar_enso(tmp_path, groups=ENSO_GROUPS)
    torch.manual_seed(0)
    net = CuboidTransformerModel(**ENSO_V1).eval()
    model = Forecaster(load_official(net.state_dict(), preset="enso"), official_spec("enso"))
    # 3 windows in 2 batches: the full-size ENSO model costs ~1 s per window on one core
    ours = evaluate(model, "enso", icar_enso.open_icar_enso(tmp_path, groups=ENSO_GROUPS),
                    batch_size=2, max_samples=3, device="cpu", progress=False)

    raw = xr.open_dataset(tmp_path / "CMIP_train.nc")
    raw = raw.sel(lon=raw.lon[(raw.lon >= 95) & (raw.lon <= 330)])
    nino = xr.open_dataset(tmp_path / "CMIP_label.nc").nino.values
    sst5 = official.loader.data_transform(raw.sst.values[2:], num_years_per_model=1)
    nino5 = official.loader.data_transform(nino[2:], num_years_per_model=1)
    test = official.loader.cmip_dataset(None, None, sst5[..., -1:], nino5[..., -1:], samples_gap=1,
                                        in_len=12, out_len=14)
    sst = torch.from_numpy(test.sst[:3]).float()
    with torch.no_grad():
        pred = net(sst[:, :12, ..., None])[..., 0]
    nino_pred = official.scores.sst_to_nino(pred)
    target = torch.from_numpy(test.target_nino[:3]).float()
    acc, _ = official.scores.compute_enso_score(nino_pred, target)
    wacc, _ = official.scores.compute_enso_score(nino_pred, target, acc_weight="default")
    assert len(test) == 11 and ours.attrs["n_samples"] == 3
    assert float(ours.c_nino34_m) == pytest.approx(float(acc) / 12, abs=1e-5)
    assert float(ours.c_nino34_wm) == pytest.approx(float(wacc) / 12, abs=1e-4)
    assert float(ours.mse) == pytest.approx(float(torch.mean((pred - sst[:, 12:]) ** 2)), rel=1e-4)


def test_evaluate_takes_its_batch_from_the_memory_planner(sevir_case, monkeypatch):
    from xearthformer import memory
    from xearthformer.forecast import plan_inference

    root, model = sevir_case
    reference = evaluate(model, "sevir", root, split="val", batch_size=4, device="cpu", progress=False)
    per = plan_inference(model.model, model.spec.input_shape, 1).per_item
    fixed = 4 * 2 * int(np.prod(model.spec.target_shape))        # the output array of 2 windows
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, str(int((fixed + 2.5 * per) / memory.SAFETY)))
    assert plan_inference(model.model, model.spec.input_shape, 16).batch_size < 16
    planned = evaluate(model, "sevir", root, split="val", device="cpu", progress=False)
    np.testing.assert_allclose(planned.csi.values, reference.csi.values, rtol=1e-12)
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "1MiB")
    with pytest.raises(ConfigError, match="not enough memory"):
        evaluate(model, "sevir", root, split="val", device="cpu", progress=False)
