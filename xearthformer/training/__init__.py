"""Training: one loop for every model family, and ``xearthformer.train`` on labelled data.

- :mod:`.loop` -- the tensor loop (AdamW, warm-up + cosine, AMP, DDP, resume, early stopping,
  EMA, checkpoints, progress bars) taking an objective; knows no xarray
- :mod:`.state` -- what a run keeps across epochs and restarts (``last.pt``, ``best.pt``,
  the EMA of the weights, the loss curve)
- :mod:`.objectives` -- the :class:`~.objectives.Objective` protocol and the losses
  (Earthformer's masked, area-weighted MSE is :class:`~.objectives.MaskedMSE`)
- :mod:`.data` -- the time split and the window sources cut from labelled data
- :mod:`.labelled` -- ``xearthformer.train`` (labelled data in, a Forecaster out) and the
  ``xearthformer train`` command
- :mod:`.prediff` -- ``xearthformer.train_prediff``: the PreDiff VAE, then its denoiser, with
  their objectives

Importing this package imports nothing heavy; the names below load their module on first use.

>>> from xearthformer.training import train                       # doctest: +SKIP
>>> model = train(sst, preset="tiny", context=6, lead=3, epochs=2)   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"train": "labelled", "fit": "loop", "TrainConfig": "loop", "MaskedMSE": "objectives",
         "train_prediff": "prediff"}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'xearthformer.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
