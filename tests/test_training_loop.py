"""The tensor training loop: loss goes down, schedule, masking, resume, early stopping, DDP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from xearthformer.errors import ConfigError
from xearthformer.training.loop import (
    TensorSource,
    TrainConfig,
    autocast_dtype,
    epoch_order,
    evaluate_loss,
    fit,
    lr_at,
)
from xearthformer.training.objectives import Batch, LossTerms, masked_loss_terms
from xearthformer.training.state import BEST_STATE, LAST_STATE, LOSS_CURVE, load_state


class TinyNet(nn.Module):
    """A small space-time conv net (N, T, H, W, C) -> (N, T_out, H, W, C_out), optional dropout."""

    def __init__(self, t_in: int = 3, t_out: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.t_out = t_out
        self.blocks = nn.ModuleList([nn.Conv2d(t_in, 8, 3, padding=1), nn.Conv2d(8, t_out, 3, padding=1)])
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x[..., 0]  # (N, T, H, W): time as conv channels
        h = self.drop(torch.relu(self.blocks[0](h)))
        return self.blocks[1](h)[..., None]


def advection_data(n: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random fields shifted by one pixel per step: the targets follow from the inputs."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 1, 8, 8)).astype(np.float32)
    frames = np.concatenate([np.roll(base, k, axis=-1) for k in range(5)], axis=1)[..., None]
    return frames[:, :3], frames[:, 3:]


def tiny_earthformer() -> nn.Module:
    """The tiny Earthformer preset on the advection shapes, every dropout off."""
    from xearthformer.models.earthformer.network import Earthformer, presets

    cfg = presets()["tiny"].replace(input_shape=(3, 8, 8, 1), target_shape=(2, 8, 8, 1))
    return Earthformer(cfg.without_dropout())


def predict(model: nn.Module, x: np.ndarray) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x))


def params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# -- pure helpers ------------------------------------------------------------------------------
def test_lr_schedule_matches_closed_form():
    cfg = TrainConfig(lr=2e-3, warmup=0.2, min_lr_ratio=0.05)
    total = 50
    lrs = np.array([lr_at(s, total, cfg) for s in range(total)])
    warm = 10
    floor = 2e-3 * 0.05
    np.testing.assert_allclose(lrs[:warm], floor + (2e-3 - floor) * np.arange(1, warm + 1) / warm)
    k = np.arange(total - warm) / (total - warm - 1)
    np.testing.assert_allclose(lrs[warm:], floor + 0.5 * (2e-3 - floor) * (1 + np.cos(np.pi * k)))
    assert lrs.max() == pytest.approx(2e-3) and lrs[-1] == pytest.approx(floor)


def test_masked_weighted_loss_equals_numpy_and_ignores_masked_garbage():
    rng = np.random.default_rng(1)
    pred = rng.normal(size=(2, 3, 4, 5, 1))
    target = rng.normal(size=pred.shape)
    mask = rng.random(pred.shape) > 0.3
    lat = np.linspace(-60, 60, 4)
    w = np.broadcast_to(np.cos(np.deg2rad(lat))[:, None, None], (4, 5, 1))
    expected = (((pred - target) ** 2) * w * mask).sum() / (np.broadcast_to(w, pred.shape) * mask).sum()
    garbage = np.where(mask, target, np.nan)  # NaN at masked points must not leak
    p = torch.tensor(pred, requires_grad=True)
    s, d = masked_loss_terms(p, torch.tensor(garbage), torch.tensor(mask), torch.tensor(w))
    assert float((s / d).detach()) == pytest.approx(expected, rel=1e-6)  # fp32 accumulation
    (s / d).backward()
    assert torch.isfinite(p.grad).all()
    assert (p.grad[~torch.tensor(mask)] == 0).all()


def test_precision_policy():
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ConfigError, match="CUDA"):
        autocast_dtype("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp8")


def test_epoch_order_depends_only_on_seed_and_epoch():
    a = epoch_order(10, 3, 2, None, 4)
    assert sorted(a) == list(range(10))
    np.testing.assert_array_equal(a, epoch_order(10, 3, 2, None, 4))
    assert not np.array_equal(a, epoch_order(10, 3, 3, None, 4))
    assert len(epoch_order(10, 3, 2, 2, 4)) == 8


# -- the loop ----------------------------------------------------------------------------------
def test_training_lowers_the_loss_and_writes_checkpoints(tmp_path):
    torch.manual_seed(0)
    x, y = advection_data()
    src = TensorSource(x, y)
    model = TinyNet()
    before = evaluate_loss(model, src, batch_size=8)
    cfg = TrainConfig(epochs=6, batch_size=4, lr=1e-2, progress=False)
    res = fit(model, src, TensorSource(*advection_data(8, seed=5)), cfg, checkpoint_dir=tmp_path)
    after = evaluate_loss(res.model, src, batch_size=8)
    assert after < 0.5 * before
    h = res.history
    assert len(h["step_loss"]) == 6 * 6 and len(h["val_loss"]) == 6
    assert res.best_epoch == int(np.nanargmin(h["val_loss"])) + 1
    best = torch.load(tmp_path / BEST_STATE, weights_only=True)
    assert best["epoch"] == res.best_epoch
    # the returned model holds the best weights
    for k, v in res.model.state_dict().items():
        torch.testing.assert_close(v, best["model"][k])
    assert load_state(tmp_path / LAST_STATE)["epoch"] == 6
    assert (tmp_path / LOSS_CURVE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    x, y = advection_data(20)
    cfg = TrainConfig(epochs=4, batch_size=6, lr=5e-3, progress=False)

    def run(ckdir, stop_after=None, resume=None):
        torch.manual_seed(1)
        model = TinyNet(dropout=0.3)  # dropout: the random state must be restored too
        return fit(model, TensorSource(x, y), None, cfg, checkpoint_dir=ckdir, resume=resume,
                   on_epoch_end=(lambda e, *a: e >= stop_after) if stop_after else None)

    full = run(tmp_path / "a")
    part = run(tmp_path / "b", stop_after=2)
    assert len(part.history["train_loss"]) == 2
    torch.manual_seed(99)  # a different caller RNG state must not matter
    resumed = run(tmp_path / "b", resume=True)
    assert resumed.history["step_loss"] == full.history["step_loss"]
    for a, b in zip(params(full.model), params(resumed.model)):
        assert torch.equal(a, b)


def test_resume_keeps_the_best_weights_when_killed_between_the_state_files(tmp_path):
    # validation on negated targets: fitting the training data makes it worse, so the best
    # epoch comes early and no later epoch replaces its weights
    x, y = advection_data(20)
    cfg = TrainConfig(epochs=4, batch_size=6, lr=5e-3, progress=False)

    def run(ckdir, stop_after=None, resume=None):
        torch.manual_seed(1)
        return fit(TinyNet(), TensorSource(x, y), TensorSource(x, -y), cfg, checkpoint_dir=ckdir,
                   resume=resume, on_epoch_end=(lambda e, *a: e >= stop_after) if stop_after else None)

    full = run(tmp_path / "a")
    assert full.best_epoch is not None and full.best_epoch <= 2
    run(tmp_path / "b", stop_after=2)
    (tmp_path / "b" / BEST_STATE).unlink()  # killed after last.pt was written, before best.pt
    resumed = run(tmp_path / "b", resume=True)
    assert resumed.best_epoch == full.best_epoch
    for a, b in zip(params(full.model), params(resumed.model)):
        assert torch.equal(a, b)


def test_early_stopping_stops_after_patience():
    x, y = advection_data(8)
    cfg = TrainConfig(epochs=10, batch_size=4, lr=0.0, min_lr_ratio=0.0, patience=2, progress=False)
    res = fit(TinyNet(), TensorSource(x, y), TensorSource(x, y), cfg)
    # lr 0: the validation loss never improves after epoch 1
    assert res.stopped_early and len(res.history["val_loss"]) == 3 and res.best_epoch == 1


def test_activation_checkpointing_gives_the_same_training():
    x, y = advection_data(8)

    def run(ac):
        torch.manual_seed(0)
        return fit(TinyNet(), TensorSource(x, y), None,
                   TrainConfig(epochs=1, batch_size=4, activation_checkpointing=ac, progress=False))

    a, b = run(False), run(True)
    np.testing.assert_allclose(a.history["step_loss"], b.history["step_loss"], rtol=1e-6)
    assert any(type(m).__name__ == "_Checkpointed" for m in b.model.modules())


# -- DDP on CPU (gloo, 2 processes) ------------------------------------------------------------
def _ddp_worker(rank: int, world: int, store: str, x: np.ndarray, y: np.ndarray, mask: np.ndarray,
                cfg: TrainConfig, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        res = fit(tiny_earthformer(), TensorSource(x, y, mask), TensorSource(x[:5], y[:5], mask[:5]), cfg)
        if rank == 0:
            torch.save({"loss": res.history["step_loss"], "val": res.history["val_loss"],
                        "pred": predict(res.model, x)}, out)
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_one_process(tmp_path):
    x, y = advection_data(11)  # 11 windows, batch 4: the last global batch has 3 (uneven shards)
    mask = np.random.default_rng(0).random(y.shape) > 0.2  # masked loss: global, not per-rank, mean
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, progress=False)
    torch.manual_seed(0)
    single = fit(tiny_earthformer(), TensorSource(x, y, mask), TensorSource(x[:5], y[:5], mask[:5]), cfg)
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), x, y, mask, cfg, str(out)), nprocs=2)
    ddp = torch.load(out, weights_only=True)
    np.testing.assert_allclose(ddp["loss"], single.history["step_loss"], rtol=1e-5)
    np.testing.assert_allclose(ddp["val"], single.history["val_loss"], rtol=1e-5)
    # the trained functions agree (parameters themselves may not: Adam turns the round-off
    # gradients of conv biases followed by GroupNorm, which do not affect the output, into steps)
    torch.testing.assert_close(ddp["pred"], predict(single.model, x), rtol=1e-3, atol=1e-4)
    assert not math.isnan(ddp["val"][-1])


# -- EMA of the weights ------------------------------------------------------------------------
class Constant(nn.Module):
    """Returns its parameter whatever the input: with a linear loss the gradient is constant."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w


G = torch.tensor([1.0, -2.0, 0.25])


def linear_loss(model: nn.Module, batch: Batch) -> LossTerms:
    return LossTerms((model(batch.x) * G).sum(), 1.0)


def _ema_run(decay: float, steps: int) -> tuple[np.ndarray, np.ndarray, float]:
    src = TensorSource(np.zeros((steps, 1, 1, 1, 1)), np.zeros((steps, 1, 1, 1, 1)))
    cfg = TrainConfig(epochs=1, batch_size=1, lr=0.01, warmup=0.0, min_lr_ratio=1.0, clip_grad=None,
                      ema_decay=decay, progress=False)
    model = Constant()
    p0 = model.w.detach().numpy().copy()
    res = fit(model, src, None, cfg, linear_loss, device="cpu")
    # Adam on a constant gradient moves every weight by lr * sign(g) per step: p_k = p0 - k c
    c = 0.01 * G.numpy() / (np.abs(G.numpy()) + 1e-8)
    np.testing.assert_allclose(res.model.w.detach().numpy(), p0 - steps * c, rtol=1e-5)
    return res.ema_state["w"].numpy(), p0, c


def test_ema_during_warm_up_equals_the_closed_form():
    # decay 0.999 never binds in 12 steps: update n uses d_n = (1 + n) / (10 + n), so
    # e_K = p0 - c * sum_k k * 9 / (9 + k) * K! (k + 9)! / (k! (K + 9)!)
    steps = 12
    ema, p0, c = _ema_run(0.999, steps)
    f = math.factorial
    s = sum(k * 9 / (9 + k) * f(steps) * f(k + 9) / (f(k) * f(steps + 9)) for k in range(1, steps + 1))
    np.testing.assert_allclose(ema, p0 - c * s, rtol=1e-5)


def test_ema_with_a_binding_decay_equals_the_closed_form():
    # decay 0.05 < 1/10 binds from the first update: e_K = p0 - c * S with
    # S = K (1 - d^K) - d (1 - K d^(K-1) + (K - 1) d^K) / (1 - d)
    steps, d = 7, 0.05
    ema, p0, c = _ema_run(d, steps)
    s = steps * (1 - d ** steps) - d * (1 - steps * d ** (steps - 1) + (steps - 1) * d ** steps) / (1 - d)
    np.testing.assert_allclose(ema, p0 - c * s, rtol=1e-5)


def test_resume_with_ema_reproduces_an_uninterrupted_run(tmp_path):
    x, y = advection_data(12)
    cfg = TrainConfig(epochs=4, batch_size=4, lr=5e-3, ema_decay=0.9, progress=False)

    def run(ckdir, stop_after=None, resume=None):
        torch.manual_seed(1)
        return fit(TinyNet(dropout=0.3), TensorSource(x, y), None, cfg, checkpoint_dir=ckdir, resume=resume,
                   on_epoch_end=(lambda e, *a: e >= stop_after) if stop_after else None)

    full = run(tmp_path / "a")
    run(tmp_path / "b", stop_after=2)
    assert load_state(tmp_path / "b" / LAST_STATE)["ema"]["updates"] == 2 * 3
    resumed = run(tmp_path / "b", resume=True)
    assert resumed.history["step_loss"] == full.history["step_loss"]
    assert full.ema_state.keys() == resumed.ema_state.keys()
    for k in full.ema_state:
        assert torch.equal(full.ema_state[k], resumed.ema_state[k]), k
    # the average differs from the last weights (it lags them)
    assert not torch.equal(full.ema_state["blocks.0.weight"], full.model.state_dict()["blocks.0.weight"])


def test_ema_decay_is_checked():
    with pytest.raises(ConfigError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)
    assert fit(TinyNet(), TensorSource(*advection_data(4)), None,
               TrainConfig(epochs=1, batch_size=4, progress=False)).ema_state is None
