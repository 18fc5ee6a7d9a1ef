"""Training objectives: what the loop minimises, one family's loss at a time.

An :class:`Objective` maps ``(model, batch)`` to :class:`LossTerms`: a ``total`` (a sum over
this process's share of the batch) and a ``count`` (what that sum is averaged over). The loop
minimises ``sum over ranks of total / sum over ranks of count``, so a distributed run has
exactly the gradient of one process seeing the whole global batch, whatever the objective.
Objectives call ``model(x)`` (never a method of it: under DistributedDataParallel only a call
synchronises gradients), may hold frozen modules of their own (a VAE; an ``nn.Module``
objective is moved to the training device) and may draw randomness from torch's global RNG,
which the loop forks per epoch so that resuming stays exact.

>>> loss = MaskedMSE(weights=None)
>>> model = torch.nn.Identity()
>>> terms = loss(model, Batch(torch.ones(1, 1, 1, 2, 1), torch.zeros(1, 1, 1, 2, 1), None))
>>> float(terms.total), float(terms.count)
(2.0, 2.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import nn

from ..errors import ShapeError


class Batch(NamedTuple):
    """One training batch on the training device: inputs ``(n, T_in, H, W, C_in)``, targets
    ``(n, T_out, H, W, C_out)`` and the targets' validity mask (bool like ``y``, or None)."""

    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor | None


@dataclass
class LossTerms:
    """What an objective returns for one batch.

    Attributes
    ----------
    total : Tensor
        Scalar sum of the loss over this process's points (differentiable).
    count : Tensor or float
        What ``total`` is averaged over (e.g. the weighted number of valid points).
    logs : dict
        Extra scalar diagnostics (``{"nll": ...}``), averaged per epoch into the history as
        ``train_<name>``.
    """

    total: torch.Tensor
    count: torch.Tensor | float
    logs: dict[str, float] = field(default_factory=dict)


class Objective(Protocol):
    """``objective(model, batch) -> LossTerms``; see the module docstring."""

    def __call__(self, model: nn.Module, batch: Batch) -> LossTerms: ...


def masked_loss_terms(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None,
                      weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of weighted squared errors and the sum of weights, over valid points only.

    The loss is ``sum / denominator``. Keeping both terms lets distributed processes
    combine them into the exact global mean.

    Parameters
    ----------
    pred, target : Tensor
        ``(N, T, H, W, C)``.
    mask : Tensor or None
        bool like ``target`` (None: all valid).
    weights : Tensor or None
        Broadcastable to ``target`` (e.g. ``(H, W, 1)`` cos-latitude weights).

    Examples
    --------
    >>> p, t = torch.ones(1, 1, 1, 2, 1), torch.zeros(1, 1, 1, 2, 1)
    >>> m = torch.tensor([True, False]).view(1, 1, 1, 2, 1)
    >>> [float(v) for v in masked_loss_terms(p, t, m, None)]
    [1.0, 1.0]
    """
    if pred.shape != target.shape:
        raise ShapeError(f"model output {tuple(pred.shape)} differs from target {tuple(target.shape)}; "
                         "the model's target_shape must match the data's (lead, H, W, C_out).")
    w = point_weights(target, mask, weights)
    # Replace masked targets first: NaN there would turn 0 * NaN into NaN gradients.
    clean = torch.where(w > 0, target.float(), torch.zeros((), dtype=torch.float32, device=target.device))
    err = (pred.float() - clean) ** 2
    return (err * w).sum(), w.sum()


def point_weights(target: torch.Tensor, mask: torch.Tensor | None, weights: torch.Tensor | None
                  ) -> torch.Tensor:
    """Per-point loss weights like ``target``: ``weights`` broadcast, zero where ``mask`` is False."""
    w = torch.ones_like(target) if weights is None else torch.broadcast_to(weights.to(target.dtype), target.shape)
    if mask is not None:
        w = w * mask.to(target.dtype)
    return w


class WeightedObjective:
    """Base of objectives with per-point loss weights (numpy, broadcastable to the targets,
    e.g. cos(latitude)): :meth:`weights_on` gives them as a tensor on the batch's device.
    Every family's default objective is built as ``factory(weights=...)``."""

    def __init__(self, weights: Any = None) -> None:
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float32)
        self._on: dict[torch.device, torch.Tensor] = {}

    def weights_on(self, device: torch.device) -> torch.Tensor | None:
        if self.weights is None:
            return None
        if device not in self._on:
            self._on[device] = torch.as_tensor(self.weights, device=device)
        return self._on[device]


class MaskedMSE(WeightedObjective):
    """Earthformer's objective: the masked, weighted mean squared error.

    ``total`` is the weighted squared error summed over valid points, ``count`` the summed
    weights of those points (:func:`masked_loss_terms`).

    Parameters
    ----------
    weights : array-like, optional
        Loss weights broadcastable to ``(T_out, H, W, C_out)``, e.g. ``(H, W, 1)`` cos(lat).
    """

    def __call__(self, model: nn.Module, batch: Batch) -> LossTerms:
        pred = model(batch.x)
        total, count = masked_loss_terms(pred, batch.y, batch.mask, self.weights_on(batch.y.device))
        return LossTerms(total, count)
