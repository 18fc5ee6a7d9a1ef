"""What a training run keeps between epochs and across restarts: the state files, the EMA of
the weights, the run's progress (history, best epoch, early-stopping count) and the loss curve.

``last.pt`` (every epoch) holds everything resuming needs: model, optimizer, gradient scaler,
EMA, history and counters; ``best.pt`` the best weights so far; both are written to a temporary
name and renamed, so an interrupted run never leaves a half-written file, and read back with
``torch.load(weights_only=True)``. :func:`xearthformer.training.loop.fit` drives them.

>>> state = load_state("runs/sst/last.pt")                         # doctest: +SKIP
>>> state["epoch"], state["step"]                                  # doctest: +SKIP
(12, 96)
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from ..parallel import unwrap_model

#: file names inside ``checkpoint_dir``
LAST_STATE = "last.pt"
BEST_STATE = "best.pt"
LOSS_CURVE = "loss_curve.png"
STATE_VERSION = 1


def _state_dict_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in unwrap_model(model).state_dict().items()}


class WeightsEMA:
    """Exponential moving average of a model's trainable parameters.

    The n-th update (n = 0, 1, ...) uses decay ``min(decay, (1 + n) / (10 + n))``: early on the
    average follows the weights closely, later it forgets slowly.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].mul_(d).add_(p.detach(), alpha=1.0 - d)
        self.updates += 1

    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's state_dict (CPU) with the averaged parameters in place of the trained ones."""
        state = _state_dict_cpu(model)
        state.update({k: v.detach().to("cpu", copy=True) for k, v in self.shadow.items()})
        return state

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "shadow": {k: v.detach().to("cpu", copy=True)
                                                    for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)


def load_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training state file (``last.pt``) written by :func:`fit`; safe (weights only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training state at {path}; resume needs the {LAST_STATE} that "
                                "fit() writes into checkpoint_dir.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or not a state file
        raise CheckpointError(f"{path} is not a readable xearthformer training state ({err}); "
                              f"expected the {LAST_STATE} written by fit().") from err
    if not isinstance(state, dict) or state.get("format") != "xearthformer-train-state":
        raise CheckpointError(f"{path} is not an xearthformer training state; pass the {LAST_STATE} "
                              "file from a training run's checkpoint_dir.")
    if state.get("version", 0) > STATE_VERSION:
        raise CheckpointError(f"{path} has training-state version {state['version']}, newer than "
                              f"{STATE_VERSION}; upgrade xearthformer.")
    return state


@dataclass
class RunProgress:
    """Where a run stands: everything besides model/optimizer that resuming restores."""

    history: dict[str, list[float]] = field(default_factory=lambda: {
        "step_loss": [], "lr": [], "train_loss": [], "val_loss": [], "epoch_seconds": []})
    epoch: int = 0  # epochs done
    step: int = 0  # optimizer steps done
    best: float = math.inf
    best_epoch: int | None = None
    bad: int = 0  # epochs since the best validation loss
    best_state: dict[str, torch.Tensor] | None = None

    def end_epoch(self, epoch: int, train_loss: float, val_loss: float, seconds: float,
                  model: nn.Module) -> bool:
        """Record an epoch; returns True when its validation loss is the best so far."""
        self.epoch = epoch + 1
        self.history["train_loss"].append(train_loss)
        self.history["val_loss"].append(val_loss)
        self.history["epoch_seconds"].append(seconds)
        if val_loss < self.best:
            self.best, self.best_epoch, self.bad = val_loss, epoch + 1, 0
            self.best_state = _state_dict_cpu(model)
            return True
        if not math.isnan(val_loss):
            self.bad += 1
        return False


def save_state(ckdir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, run: RunProgress, config: Any, is_best: bool,
                ema: WeightsEMA | None = None) -> None:
    """Write ``best.pt`` after a best epoch, then ``last.pt`` (everything resuming needs).

    ``last.pt`` carries the best weights too, so a job killed between the two writes still
    resumes with the right best weights (``best.pt`` is the users' copy of them).
    """
    ckdir.mkdir(parents=True, exist_ok=True)
    if is_best:
        _atomic_save({"format": "xearthformer-best-weights", "model": run.best_state,
                      "epoch": run.epoch, "val_loss": run.best}, ckdir / BEST_STATE)
    state = {"format": "xearthformer-train-state", "version": STATE_VERSION,
             "model": _state_dict_cpu(model), "optimizer": optimizer.state_dict(),
             "scaler": scaler.state_dict() if scaler.is_enabled() else {},
             "history": run.history, "epoch": run.epoch, "step": run.step, "best": run.best,
             "best_epoch": run.best_epoch, "bad_epochs": run.bad, "config": config.to_dict(),
             "best_model": run.best_state}
    if ema is not None:
        state["ema"] = ema.state_dict()
    _atomic_save(state, ckdir / LAST_STATE)


def restore(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler, config: Any, rank: int, ema: WeightsEMA | None = None
             ) -> RunProgress:
    """Load ``last.pt`` (and the ``best.pt`` beside it) into the model, optimizer and EMA."""
    state = load_state(path)
    model.load_state_dict(state["model"])
    if ema is not None:
        if "ema" not in state:
            raise CheckpointError(f"{path} holds no EMA of the weights (it was written without "
                                  "ema_decay); resume with the TrainConfig it was trained with.")
        ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    run = RunProgress(history={k: list(v) for k, v in state["history"].items()},
                    epoch=int(state["epoch"]), step=int(state["step"]), best=float(state["best"]),
                    best_epoch=state["best_epoch"], bad=int(state["bad_epochs"]))
    if state.get("best_model") is not None:
        run.best_state = state["best_model"]
    elif (path.parent / BEST_STATE).is_file():  # a last.pt written before it carried the best weights
        run.best_state = torch.load(path.parent / BEST_STATE, map_location="cpu", weights_only=True)["model"]
    ignore = ("progress", "compile")  # settings that do not change the numbers
    saved = {**type(config)().to_dict(), **state["config"]}  # fields added since keep their defaults
    same = {k: v for k, v in saved.items() if k not in ignore} == \
        {k: v for k, v in config.to_dict().items() if k not in ignore}
    if not same and rank == 0:
        warnings.warn("resuming with a different TrainConfig than the checkpoint's; the run will "
                      "not equal an uninterrupted one.", stacklevel=3)
    return run


def _atomic_save(obj: Any, path: Path) -> None:
    # Write then rename, so an interrupted run never leaves a half-written checkpoint.
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def plot_loss_curve(history: dict[str, list[float]], path: str | os.PathLike[str]) -> Path:
    """Plot training loss per step (and per-epoch train/validation loss) to a PNG.

    Examples
    --------
    >>> plot_loss_curve({"step_loss": [1.0, 0.5], "train_loss": [0.7], "val_loss": [0.8]},
    ...                 "loss.png")                               # doctest: +SKIP
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    steps = np.arange(1, len(history["step_loss"]) + 1)
    ax.plot(steps, history["step_loss"], color="0.7", lw=0.8, label="train (per step)")
    n_ep = len(history.get("train_loss", []))
    if n_ep:
        per_epoch = len(steps) / n_ep
        ends = per_epoch * np.arange(1, n_ep + 1)
        ax.plot(ends, history["train_loss"], "o-", color="C0", label="train (epoch mean)")
        val = np.asarray(history.get("val_loss", []), dtype=float)
        if val.size and np.isfinite(val).any():
            ax.plot(ends, val, "s-", color="C1", label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training objective (e.g. masked weighted MSE, normalised units)")
    if np.all(np.asarray(history["step_loss"]) > 0):
        ax.set_yscale("log")
    ax.legend()
    ax.set_title("xearthformer training loss")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
