"""evaluate(dataset="sevir-lr"): PreDiff's protocol, checked against a brute-force numpy computation
on synthetic SEVIR-LR files, with a stochastic toy bundle and the deterministic tiny Earthformer."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from tests.test_data_sevir import make_sevir
from tests.test_data_sevir_lr import make_sevir_lr
from tests.toy_family import TOY, ToyConfig, ToyNet
from xearthformer.checkpoint import save
from xearthformer.cli import main
from xearthformer.data import sevir, sevir_lr
from xearthformer.errors import ConfigError
from xearthformer.evaluate import evaluate, format_scores
from xearthformer.forecast import predict_tensor
from xearthformer.layout import Channel, DataSpec, Grid, TimeStep
from xearthformer.models import registry
from xearthformer.models.base import Forecaster
from xearthformer.models.earthformer.network import Earthformer
from xearthformer.models.keys import make_keys

THRESHOLDS = (16, 74, 133, 160, 181, 219)
SIZE = 16                                     # 48 x 48 SEVIR pixels -> 16 x 16 SEVIR-LR


@pytest.fixture(scope="module")
def toy_family():
    """The toy family, scored on sevir-lr, registered in a copy of the table (restored after)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "_FAMILIES", registry.families())
        yield registry.register_family(dataclasses.replace(TOY, datasets=("sevir-lr",)))


@pytest.fixture(scope="module")
def lr_root(tmp_path_factory):
    base = tmp_path_factory.mktemp("evlr")
    make_sevir(base / "sevir", size=3 * SIZE)
    make_sevir_lr(base / "sevir", base / "sevir_lr")
    return base / "sevir_lr"


def spec() -> DataSpec:
    ch = Channel("vil", method="scale", scale=255.0)
    grid = Grid(y="y", x="x", y_values=np.arange(SIZE), x_values=np.arange(SIZE), lat=None, lon=None)
    return DataSpec(inputs=(ch,), targets=(ch,), grid=grid, step=TimeStep(10, "minutes"), context=7, lead=6)


@pytest.fixture(scope="module")
def toy(toy_family):
    net = ToyNet(ToyConfig(input_shape=(7, SIZE, SIZE, 1), target_shape=(6, SIZE, SIZE, 1), init_sigma=0.15))
    return Forecaster(net, spec())


def brute_scores(pred: np.ndarray, obs: np.ndarray) -> dict[str, float | np.ndarray]:
    """The protocol by hand: ``pred`` (N, M, 6, H, W) and ``obs`` (N, 6, H, W) pixel codes."""
    def csi(p, o):
        out = []
        for thr in THRESHOLDS:
            f, e = p >= thr, np.broadcast_to(o >= thr, p.shape)
            h, m, fa = (f & e).sum(), (~f & e).sum(), (f & ~e).sum()
            out.append(h / (h + m + fa + 1e-4))
        return np.array(out)

    def maxpool(a, k):
        *lead, h, w = a.shape
        return a.reshape(*lead, h // k, k, w // k, k).max(axis=(-3, -1))

    def crps(x, y):  # x (N, M, ...), y (N, ...): E|X - y| - E|X - X'| / 2 over members
        skill = np.abs(x - y[:, None]).mean(1)
        spread = np.abs(x[:, :, None] - x[:, None, :]).mean((1, 2))
        return float((skill - 0.5 * spread).mean())

    p01, o01 = pred.astype(np.float64) / 255, obs.astype(np.float64) / 255
    mean = pred.astype(np.float64).mean(1)
    return {
        "csi": csi(pred, obs[:, None]),
        "csi_pool4": csi(maxpool(pred, 4), maxpool(obs, 4)[:, None]),
        "csi_pool16": csi(maxpool(pred, 16), maxpool(obs, 16)[:, None]),
        "mse": float(((p01 - o01[:, None]) ** 2).mean()),
        "mae": float(np.abs(p01 - o01[:, None]).mean()),
        "crps": crps(p01, o01),
        "crps_pool4": crps(maxpool(p01, 4), maxpool(o01, 4)),
        "crps_pool16": crps(maxpool(p01, 16), maxpool(o01, 16)),
        "ens_mean_csi": csi(mean, obs),
        "ens_mean_mse": float(((mean / 255 - o01) ** 2).mean()),
    }


def test_stochastic_scores_equal_brute_force(toy, lr_root):
    scores = evaluate(toy, "sevir-lr", lr_root, batch_size=4, device="cpu", progress=False,
                      members=3, seed=5)
    win = sevir_lr.sevir_lr_windows(lr_root, split="test")
    codes = win.vil.values                                               # (15, 13, 16, 16) uint8
    keys = make_keys(5, win.init_time.values, np.arange(15), 3)           # (seed, init, window, member)
    y = predict_tensor(toy, sevir.scale(codes[:, :7])[..., None], keys=keys, batch_size=7, device="cpu")
    pred = (y[..., 0].astype(np.float64) * 255).astype(np.float32)        # (15, 3, 6, 16, 16) codes
    ref = brute_scores(pred, codes[:, 7:].astype(np.float32))
    assert scores.attrs["n_samples"] == 15 and scores.attrs["members"] == 3 and scores.attrs["seed"] == 5
    for name in ("csi", "csi_pool4", "csi_pool16", "ens_mean_csi"):
        np.testing.assert_allclose(scores[name].values, ref[name], rtol=1e-9, err_msg=name)
    for name in ("mse", "mae", "crps", "crps_pool4", "crps_pool16", "ens_mean_mse"):
        assert float(scores[name]) == pytest.approx(ref[name], rel=1e-5), name
    assert float(scores.csi_m) == pytest.approx(ref["csi"].mean(), rel=1e-9)
    assert float(scores.csi_m_pool16) == pytest.approx(ref["csi_pool16"].mean(), rel=1e-9)
    assert float(scores.ens_mean_csi_m) == pytest.approx(ref["ens_mean_csi"].mean(), rel=1e-9)
    # informative: events are hit and missed, pooling helps, the members spread (CRPS < MAE)
    assert 0 < float(scores.csi_m) < float(scores.csi_m_pool16) <= 1
    assert 0 < float(scores.crps) < float(scores.mae)
    # the members do not depend on how the windows are batched
    again = evaluate(toy, "sevir-lr", lr_root, batch_size=1, device="cpu", progress=False, members=3,
                     seed=5, max_samples=2)
    first = brute_scores(pred[:2], codes[:2, 7:].astype(np.float32))
    assert float(again.crps) == pytest.approx(first["crps"], rel=1e-5)


def test_deterministic_earthformer_and_full_resolution_input(lr_root):
    torch.manual_seed(0)
    net = Earthformer.from_preset("tiny", input_shape=(7, SIZE, SIZE, 1), target_shape=(6, SIZE, SIZE, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.5)                                  # spread the outputs over the range
    model = Forecaster(net, spec())
    scores = evaluate(model, "sevir-lr", lr_root, batch_size=8, device="cpu", progress=False)
    win = sevir_lr.sevir_lr_windows(lr_root)
    codes = win.vil.values
    y = predict_tensor(model, sevir.scale(codes[:, :7])[..., None], batch_size=15, device="cpu")
    ref = brute_scores((y[..., 0].astype(np.float64) * 255).astype(np.float32), codes[:, 7:].astype(np.float32))
    np.testing.assert_allclose(scores.csi.values, ref["csi"], rtol=1e-9)
    np.testing.assert_allclose(scores.csi_pool4.values, ref["csi_pool4"], rtol=1e-9)
    assert float(scores.mse) == pytest.approx(ref["mse"], rel=1e-5)
    assert "crps" not in scores and "ens_mean_csi" not in scores and scores.attrs["members"] == 1
    # the SEVIR folder the LR files came from scores the same
    full = evaluate(model, "sevir-lr", lr_root.parent / "sevir", batch_size=8, device="cpu", progress=False)
    np.testing.assert_array_equal(full.hits.values, scores.hits.values)
    with pytest.raises(ConfigError, match="deterministic.*members"):
        evaluate(model, "sevir-lr", lr_root, members=4, progress=False)
    with pytest.raises(ConfigError, match="only the sevir-lr protocol"):
        evaluate(model, "sevir", lr_root, steps=10, progress=False)
    table = format_scores(scores)
    assert "csi_m_pool16" in table and "crps" not in table


def test_cli_takes_members_seed_and_sampling_options(toy, lr_root, tmp_path, capsys):
    path = tmp_path / "toy.xef"
    save(toy, path)
    out = tmp_path / "scores.json"
    code = main(["evaluate", "--model", str(path), "--dataset", "sevir-lr", "--data-dir", str(lr_root),
                 "--members", "2", "--seed", "3", "--max-samples", "4", "--batch-size", "3",
                 "--device", "cpu", "--no-progress", "--output", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "sevir-lr test split, 4 windows" in text and "crps" in text and "ens_mean_csi_m" in text
    saved = json.loads(out.read_text())
    direct = evaluate(toy, "sevir-lr", lr_root, members=2, seed=3, max_samples=4, batch_size=3,
                      device="cpu", progress=False)
    assert saved["crps"] == pytest.approx(float(direct.crps), rel=1e-12) and saved["members"] == 2
    other = evaluate(toy, "sevir-lr", lr_root, members=2, seed=4, max_samples=4, device="cpu", progress=False)
    assert float(other.crps) != float(direct.crps)                      # the seed matters
    # sampling options reach the family, which names the ones it takes
    code = main(["evaluate", "--model", str(path), "--dataset", "sevir-lr", "--data-dir", str(lr_root),
                 "--steps", "5", "--sampler", "ddim", "--max-samples", "1", "--device", "cpu", "--no-progress"])
    assert code == 1 and "temperature" in capsys.readouterr().err


def test_a_prediff_bundle_is_scored_on_sevir_lr(lr_root):
    from xearthformer.models.prediff.family import PreDiff, presets

    torch.manual_seed(0)
    net = PreDiff(presets()["tiny"].replace(input_shape=(7, SIZE, SIZE, 1), target_shape=(6, SIZE, SIZE, 1)))
    model = Forecaster(net.eval(), spec())
    scores = evaluate(model, "sevir-lr", lr_root, members=2, steps=2, sampler="ddim", seed=1,
                      max_samples=3, batch_size=2, device="cpu", progress=False)
    win = sevir_lr.sevir_lr_windows(lr_root, split="test")
    codes = win.vil.values[:3]
    keys = make_keys(1, win.init_time.values[:3], np.arange(3), 2)
    y = predict_tensor(model, sevir.scale(codes[:, :7])[..., None], keys=keys, batch_size=3, device="cpu",
                       steps=2, sampler="ddim")
    ref = brute_scores((y[..., 0].astype(np.float64) * 255).astype(np.float32), codes[:, 7:].astype(np.float32))
    assert scores.attrs["members"] == 2 and scores.attrs["n_samples"] == 3
    assert float(scores.crps) == pytest.approx(ref["crps"], rel=1e-4)
    np.testing.assert_allclose(scores.csi.values, ref["csi"], rtol=1e-6)
