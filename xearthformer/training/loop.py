"""The training loop on tensors: AdamW, warm-up + cosine, clipping, AMP, early stopping, resume,
DDP, EMA of the weights, checkpoints and progress bars, written once for every model family.

This module knows nothing about xarray: it trains any ``torch.nn.Module`` on a
:class:`WindowSource` (anything with ``len()`` and ``get(indices) -> (x, y, mask)``) by
minimising an objective (:mod:`xearthformer.training.objectives`; default: the masked MSE).
:mod:`xearthformer.training.labelled` builds the sources from labelled data.

Reproducibility: the shuffling order and the torch random state (dropout) of epoch ``e``
are derived from ``(seed, e)`` only, and the learning rate is a pure function of the step,
so resuming from the end-of-epoch checkpoint ``last.pt`` continues exactly as an
uninterrupted run would.

Distributed: when ``torch.distributed`` is initialised with several processes, every
global batch is split between the ranks and the model is wrapped in
``DistributedDataParallel``. The loss of a rank is its share of the *global* mean
(``sum over ranks of total / sum over ranks of count``), so the gradient is that of one
process seeing the whole global batch.

EMA: with ``TrainConfig(ema_decay=d)`` an exponential moving average of the weights is kept
(decay ``min(d, (1 + n) / (10 + n))`` at the n-th update, after every optimizer step), saved
in ``last.pt``, restored on resume and returned as ``FitResult.ema_state``. The state files,
the EMA and the loss curve are :mod:`xearthformer.training.state`'s.

>>> from xearthformer.training.loop import TrainConfig, TensorSource, fit
>>> src = TensorSource(x, y)                                       # doctest: +SKIP
>>> result = fit(model, src, None, TrainConfig(epochs=3, batch_size=4))   # doctest: +SKIP
>>> result.history["train_loss"]                                   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..device import compiled, resolve_device
from ..errors import ConfigError, ShapeError, TrainingError
from ..parallel import distributed_info
from ..progress import progress_bar, tqdm_class
from .objectives import Batch, LossTerms, MaskedMSE, Objective
from .state import LAST_STATE, LOSS_CURVE, RunProgress, WeightsEMA, plot_loss_curve, restore, save_state

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


# ----------------------------------------------------------------------------------------------
# configuration and data sources
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of :func:`fit`.

    Attributes
    ----------
    epochs : int
        Number of passes over the training windows.
    batch_size : int
        Global batch size (split over the processes under DDP).
    lr : float
        Peak learning rate of AdamW.
    weight_decay : float
        AdamW weight decay.
    warmup : float
        Fraction of all steps with a linear warm-up from ``lr * min_lr_ratio`` to ``lr``.
    min_lr_ratio : float
        The cosine decay ends at ``lr * min_lr_ratio``.
    clip_grad : float or None
        Max global gradient norm (None: no clipping).
    precision : str
        ``"auto"`` (bf16 autocast on CUDA, fp32 on CPU, where emulated bf16 is ~9x slower),
        ``"bf16"``, ``"fp16"`` (CUDA, with a gradient scaler) or ``"fp32"``.
    activation_checkpointing : bool
        Recompute activations in the backward pass (less memory, ~30% more compute).
    patience : int or None
        Early stopping: stop after this many epochs without a lower validation loss.
    seed : int
        Seed of initialisation-independent randomness (shuffling, dropout).
    steps_per_epoch : int or None
        Cap on optimizer steps per epoch (a random subset of windows each epoch).
    progress : bool or None
        Show tqdm progress bars (None: only on a terminal).
    compile : bool or str
        Run the network through :func:`torch.compile` (True: the ``inductor`` backend, or a
        backend name; see :func:`xearthformer.device.compiled`). Same results as eager; never
        required. Not stored as a difference that matters when resuming.
    ema_decay : float or None
        Keep an exponential moving average of the weights with this decay (in (0, 1), e.g.
        0.999; warm-up ``min(decay, (1 + n) / (10 + n))``); None: no EMA.

    Examples
    --------
    >>> TrainConfig(epochs=2, batch_size=4).lr
    0.001
    """

    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup: float = 0.1
    min_lr_ratio: float = 0.01
    clip_grad: float | None = 1.0
    precision: str = "auto"
    activation_checkpointing: bool = False
    patience: int | None = None
    seed: int = 0
    steps_per_epoch: int | None = None
    progress: bool | None = None
    ema_decay: float | None = None
    compile: bool | str = False

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got epochs={self.epochs}, "
                              f"batch_size={self.batch_size}.")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r} is unknown; expected one of {PRECISIONS}.")
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"warmup is a fraction of all steps in [0, 1), got {self.warmup}.")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be >= 1 or None, got {self.patience}.")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in (0, 1) (e.g. 0.999) or None, got {self.ema_decay}.")
        if not (self.lr >= 0 and self.weight_decay >= 0):
            raise ConfigError(f"lr and weight_decay must be >= 0, got lr={self.lr}, "
                              f"weight_decay={self.weight_decay}; the default lr is 1e-3.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of the settings."""
        return dataclasses.asdict(self)


class WindowSource(Protocol):
    """Training windows addressed by integer index.

    ``get(indices)`` returns ``(x, y, mask)``: float32 ``(n, T_in, H, W, C_in)``, float32
    ``(n, T_out, H, W, C_out)`` and bool (or None for "all valid") of ``y``'s shape.
    """

    def __len__(self) -> int: ...

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]: ...


class TensorSource:
    """A :class:`WindowSource` over in-memory arrays.

    Parameters
    ----------
    x, y : array-like
        ``(N, T_in, H, W, C_in)`` inputs and ``(N, T_out, H, W, C_out)`` targets.
    mask : array-like, optional
        bool like ``y``: True where the target is observed.

    Examples
    --------
    >>> src = TensorSource(np.zeros((3, 2, 4, 4, 1)), np.zeros((3, 1, 4, 4, 1)))
    >>> len(src), src.get(np.array([0, 2]))[0].shape
    (3, (2, 2, 4, 4, 1))
    """

    def __init__(self, x: Any, y: Any, mask: Any = None) -> None:
        self.x = np.asarray(x, dtype=np.float32)
        self.y = np.asarray(y, dtype=np.float32)
        self.mask = None if mask is None else np.asarray(mask, dtype=bool)
        if self.x.ndim != 5 or self.y.ndim != 5 or len(self.x) != len(self.y):
            raise ShapeError(f"TensorSource needs x (N, T, H, W, C) and y (N, T', H, W, C') with the "
                             f"same N; got x {self.x.shape}, y {self.y.shape}.")
        if self.mask is not None and self.mask.shape != self.y.shape:
            raise ShapeError(f"mask shape {self.mask.shape} differs from y shape {self.y.shape}; "
                             "pass a bool mask shaped like y.")

    def __len__(self) -> int:
        return len(self.x)

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        m = None if self.mask is None else self.mask[indices]
        return self.x[indices], self.y[indices], m


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes
    ----------
    model : nn.Module
        The trained model (unwrapped from DDP), holding the best weights when a validation
        source was given, else the last.
    history : dict
        ``step_loss``, ``lr`` (per step), ``train_loss``, ``val_loss``, ``epoch_seconds``
        (per epoch; val_loss is NaN without validation).
    best_epoch : int or None
        1-based epoch with the lowest validation loss.
    stopped_early : bool
        True when early stopping ended the run.
    ema_state : dict or None
        With ``ema_decay``: a state_dict (CPU) of the model with the averaged weights, for
        ``model.load_state_dict``; None otherwise.
    """

    model: nn.Module
    history: dict[str, list[float]]
    best_epoch: int | None = None
    stopped_early: bool = False
    ema_state: dict[str, torch.Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# small pure helpers (tested directly)
# ----------------------------------------------------------------------------------------------
def lr_at(step: int, total_steps: int, config: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then cosine decay.

    Examples
    --------
    >>> cfg = TrainConfig(lr=1.0, warmup=0.4, min_lr_ratio=0.0)
    >>> [round(lr_at(s, 5, cfg), 3) for s in range(5)]
    [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    peak, floor = config.lr, config.lr * config.min_lr_ratio
    warm = int(round(config.warmup * total_steps))
    if step < warm:
        return floor + (peak - floor) * (step + 1) / warm
    decay = max(1, total_steps - warm - 1)
    progress = min(1.0, (step - warm) / decay)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32).

    Examples
    --------
    >>> autocast_dtype("auto", torch.device("cpu")) is None
    True
    """
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on the CPU.")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def epoch_order(n: int, seed: int, epoch: int, steps: int | None, batch_size: int) -> np.ndarray:
    """Shuffled window order of ``epoch``, a function of ``(seed, epoch)`` only."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    if steps is not None:
        order = order[: steps * batch_size]
    return order


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Switch on activation checkpointing in ``model``.

    A model that checkpoints itself (one with ``set_activation_checkpointing``, as every
    family's network should have; or a config with ``checkpoint_level`` > 0) is asked to
    do so; otherwise each direct child of the model's ``ModuleList``s is recomputed in the
    backward pass.
    """
    if hasattr(model, "set_activation_checkpointing"):
        model.set_activation_checkpointing(True)
        return
    if getattr(getattr(model, "config", None), "checkpoint_level", 0):
        return
    from torch.utils.checkpoint import checkpoint

    wrapped = 0
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            for i, child in enumerate(module):
                if not isinstance(child, _Checkpointed):
                    module[i] = _Checkpointed(child, checkpoint)
                    wrapped += 1
    if wrapped == 0:
        raise ConfigError(f"activation checkpointing: {type(model).__name__} has no block list to "
                          "checkpoint; pass activation_checkpointing=False.")


class _Checkpointed(nn.Module):
    """Recompute ``inner`` in the backward pass (only while training with gradients)."""

    def __init__(self, inner: nn.Module, checkpoint: Callable[..., Any]) -> None:
        super().__init__()
        self.inner = inner
        self._checkpoint = checkpoint

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.training and torch.is_grad_enabled():
            return self._checkpoint(self.inner, *args, use_reentrant=False, **kwargs)
        return self.inner(*args, **kwargs)


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _epoch_rng(seed: int, epoch: int, device: torch.device) -> Iterator[None]:
    """Seed torch from (seed, epoch) for this epoch without touching the caller's RNG."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(np.random.default_rng([seed, epoch, 7]).integers(2**62)))
        yield


def _shard(indices: np.ndarray, rank: int, world: int) -> np.ndarray:
    return np.array_split(indices, world)[rank]


def _to_device(arrays: tuple[np.ndarray, np.ndarray, np.ndarray | None], device: torch.device
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    x, y, m = arrays
    nb = device.type == "cuda"
    return (torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device, non_blocking=nb),
            torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)).to(device, non_blocking=nb),
            None if m is None else torch.from_numpy(np.ascontiguousarray(m, dtype=bool)).to(device))


def _all_sum(values: list[float], device: torch.device, world: int) -> list[float]:
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


Augment = Callable[[np.ndarray, np.ndarray, "np.ndarray | None", np.random.Generator],
                   tuple[np.ndarray, np.ndarray, "np.ndarray | None"]]


def _batches(source: WindowSource, order: np.ndarray, batch_size: int, rank: int, world: int,
             augment: Augment | None = None, seed: int = 0, epoch: int = 0,
             ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None, float]]:
    """This rank's part of each global batch, loaded one batch ahead in a thread.

    Yields ``(x, y, mask, scale)``; ``scale`` is 0 for a dummy sample that keeps a rank
    without windows in the collective backward pass (the last, short batch under DDP).
    ``augment`` gets a generator seeded by (seed, epoch, batch, rank): resumable.
    """
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

    def load(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, float]:
        chunk = chunks[k]
        mine = _shard(chunk, rank, world)
        scale = 1.0 if len(mine) else 0.0
        x, y, m = source.get(np.sort(mine) if len(mine) else chunk[:1])
        if augment is not None:
            x, y, m = augment(x, y, m, np.random.default_rng([seed, epoch, k, rank]))
        return x, y, m, scale

    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(load, 0) if chunks else None
        for k in range(len(chunks)):
            batch = future.result()
            if k + 1 < len(chunks):
                future = pool.submit(load, k + 1)
            yield batch


def evaluate_loss(model: nn.Module, source: WindowSource, batch_size: int,
                  objective: Objective | None = None, device: Any = "auto",
                  precision: str = "auto") -> float:
    """The objective's loss (default: the masked MSE) of ``model`` over every window of
    ``source``, all ranks together: ``sum of totals / sum of counts``.

    Examples
    --------
    >>> evaluate_loss(model, TensorSource(x, y), batch_size=4)       # doctest: +SKIP
    """
    device = resolve_device(device)
    rank, world = distributed_info()
    amp = autocast_dtype(precision, device)
    was_training = model.training
    model.eval()
    total, denom = 0.0, 0.0
    order = np.arange(len(source))
    objective = MaskedMSE() if objective is None else objective
    with torch.no_grad():
        for x, y, m, scale in _batches(source, order, batch_size, rank, world):
            batch = Batch(*_to_device((x, y, m), device))
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                terms = objective(model, batch)
            total += float(terms.total) * scale
            denom += float(terms.count) * scale
    model.train(was_training)
    total, denom = _all_sum([total, denom], device, world)
    return total / denom if denom > 0 else float("nan")


def fit(
    model: nn.Module,
    train: WindowSource,
    val: WindowSource | None = None,
    config: TrainConfig | None = None,
    objective: Objective | None = None,
    device: Any = "auto",
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | bool | None = None,
    on_epoch_end: Callable[[int, dict[str, list[float]], bool, nn.Module], bool | None] | None = None,
    augment: Augment | None = None,
) -> FitResult:
    """Train ``model`` on the windows of ``train``; validate on ``val`` after every epoch.

    Parameters
    ----------
    model : nn.Module
        The network; the objective calls it.
    train, val : WindowSource
        Training and (optional) validation windows.
    config : TrainConfig
        Optimisation settings (default ``TrainConfig()``).
    objective : Objective, optional
        The loss on a batch (:mod:`xearthformer.training.objectives`); default
        ``MaskedMSE()`` (unweighted masked MSE of ``model(x)`` against ``y``). An
        ``nn.Module`` objective is moved to ``device``.
    device : str or torch.device
        ``"auto"``: CUDA if available (``LOCAL_RANK`` under torchrun), else CPU.
    checkpoint_dir : path-like, optional
        Where ``last.pt`` (full training state, every epoch), ``best.pt`` (best weights)
        and ``loss_curve.png`` go (rank 0 writes them).
    resume : path-like or bool, optional
        A ``last.pt`` to continue from (True: ``checkpoint_dir/last.pt``). With the same
        config and data the result equals that of an uninterrupted run.
    on_epoch_end : callable, optional
        ``f(epoch, history, is_best, model)`` after each epoch's checkpoint; returning True
        stops training (used by :mod:`xearthformer.training.labelled` to write bundles).
    augment : callable, optional
        ``f(x, y, mask, rng) -> (x, y, mask)`` applied to every training batch (numpy), e.g.
        :func:`xearthformer.training.data.roll_augment`; ``rng`` is seeded from
        (seed, epoch, batch), so augmented runs stay reproducible and resumable.

    Returns
    -------
    FitResult

    Examples
    --------
    >>> res = fit(model, TensorSource(x, y), config=TrainConfig(epochs=2))   # doctest: +SKIP
    """
    config = config or TrainConfig()
    device = resolve_device(device)
    rank, world = distributed_info()
    amp = autocast_dtype(config.precision, device)
    if len(train) == 0:
        raise ShapeError("no training windows; the training period must hold at least one full "
                         "context + lead window.")
    model = model.to(device)
    if config.activation_checkpointing:
        enable_activation_checkpointing(model)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    net = compiled(net, config.compile)  # shares the parameters of ``model``, which is saved
    objective = MaskedMSE() if objective is None else objective
    if isinstance(objective, nn.Module):
        objective.to(device)
    optimizer = _make_optimizer(model, config)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    steps = math.ceil(len(train) / config.batch_size)
    if config.steps_per_epoch is not None:
        steps = min(steps, config.steps_per_epoch)
    total_steps = steps * config.epochs
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    run = RunProgress()
    ema = WeightsEMA(model, config.ema_decay) if config.ema_decay is not None else None
    if resume:
        path = (ckdir / LAST_STATE) if resume is True and ckdir is not None else Path(resume)  # type: ignore[arg-type]
        run = restore(path, model, optimizer, scaler, config, rank, ema)

    # only rank 0 shows bars and epoch lines
    progress = config.progress if rank == 0 else False
    stopped = False
    for epoch in range(run.epoch, config.epochs):
        t0 = time.perf_counter()
        net.train()
        order = epoch_order(len(train), config.seed, epoch, config.steps_per_epoch, config.batch_size)
        losses = []
        logs: dict[str, list[float]] = {}
        bar = progress_bar(total=steps, progress=progress, desc=f"epoch {epoch + 1}/{config.epochs}",
                           leave=False, dynamic_ncols=True)
        with _epoch_rng(config.seed, epoch, device):
            for batch in _batches(train, order, config.batch_size, rank, world, augment, config.seed, epoch):
                lr = lr_at(run.step, total_steps, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss, step_logs = _train_step(net, model, optimizer, scaler, batch, objective, amp, device,
                                              config.clip_grad)
                if not math.isfinite(loss):  # every rank sees the same (global) loss
                    raise TrainingError(
                        f"the training loss became {loss} at epoch {epoch + 1}, step {run.step + 1} "
                        f"(learning rate {lr:.3g}): the run stops instead of returning a model whose "
                        "forecasts are NaN. xef.train checks its inputs and normalisation constants to "
                        "be finite, so there the optimisation diverged. Fix: a lower lr, precision='fp32', gradient "
                        "clipping (clip_grad); with a checkpoint_dir, last.pt holds the last "
                        "completed epoch.")
                if ema is not None:
                    ema.update(model)
                losses.append(loss)
                for name, value in step_logs.items():
                    logs.setdefault(name, []).append(value)
                run.history["step_loss"].append(loss)
                run.history["lr"].append(lr)
                run.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4g}", lr=f"{lr:.2e}")
        bar.close()
        val_loss = evaluate_loss(net, val, config.batch_size, objective, device, config.precision) \
            if val is not None and len(val) > 0 else float("nan")
        for name, values in logs.items():
            run.history.setdefault(f"train_{name}", []).append(float(np.mean(values)))
        is_best = run.end_epoch(epoch, float(np.mean(losses)), val_loss, time.perf_counter() - t0, model)
        if rank == 0 and progress is not False:
            tqdm_class().write(f"epoch {epoch + 1}/{config.epochs}: train loss {run.history['train_loss'][-1]:.4g}"
                       + ("" if math.isnan(val_loss) else
                          f", val loss {val_loss:.4g}" + (" (best)" if is_best else "")))
        if ckdir is not None and rank == 0:
            save_state(ckdir, model, optimizer, scaler, run, config, is_best, ema)
        stop = bool(on_epoch_end(epoch + 1, run.history, is_best, model)) if on_epoch_end else False
        if world > 1:
            dist.barrier()
        if config.patience is not None and run.bad >= config.patience:
            stopped = True
            if rank == 0:
                tqdm_class().write(f"early stopping: no lower validation loss for {run.bad} epochs "
                           f"(best {run.best:.4g} at epoch {run.best_epoch})")
            break
        if stop:
            break
    if run.best_state is not None:
        model.load_state_dict(run.best_state)
    if ckdir is not None and rank == 0 and run.history["step_loss"]:
        plot_loss_curve(run.history, ckdir / LOSS_CURVE)
    return FitResult(model=model, history=run.history, best_epoch=run.best_epoch, stopped_early=stopped,
                     ema_state=None if ema is None else ema.model_state(model))


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on 1-D parameters (norm scales, biases)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)


def _train_step(net: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, batch: tuple[np.ndarray, np.ndarray, np.ndarray | None, float],
                objective: Objective, amp: torch.dtype | None, device: torch.device,
                clip_grad: float | None) -> tuple[float, dict[str, float]]:
    """One optimizer step on this rank's share of a global batch; returns the global loss and
    the objective's logs (averaged over ranks)."""
    _, world = distributed_info()
    xb, yb, mb, scale = batch
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        terms: LossTerms = objective(net, Batch(*_to_device((xb, yb, mb), device)))
    s, d = terms.total, terms.count
    d_global = _all_sum([float(d) * scale], device, world)[0]
    if d_global <= 0:
        raise ShapeError("a training batch has no valid target point (all masked); check the "
                         "data's land/missing mask.")
    # DDP averages gradients over ranks: multiply by world so the sum is the global mean.
    loss = s * scale * world / d_global
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip_grad is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    names = sorted(terms.logs)
    sums = _all_sum([float(s.detach()) * scale, *(float(terms.logs[k]) for k in names)], device, world)
    return sums[0] / d_global, {k: v / world for k, v in zip(names, sums[1:])}
