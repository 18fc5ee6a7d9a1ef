"""Train an Earthformer on labelled (xarray / NetCDF / Zarr) data: ``xearthformer.train``.

:func:`train` composes the pieces: :func:`~xearthformer.training.data.split_by_time` splits
the record at one time (no window straddles it), :func:`xearthformer.layout.fit_spec` fits
the normalisation on the training period only, windows are cut lazily batch by batch
(:class:`~xearthformer.training.data.XarrayWindows`), and
:func:`xearthformer.training.loop.fit` optimises the model. The result is a
:class:`~xearthformer.checkpoint.Forecaster` ready for ``ds.earthformer.forecast``.

Under ``torchrun --nproc_per_node N -m xearthformer train ...`` each process trains on its
share of every batch with DistributedDataParallel (NCCL on GPUs, gloo on CPUs).

>>> import xearthformer as xef
>>> model = xef.train(sst, preset="small", variables="sst", context=6, lead=6,
...                   epochs=20, val="2009-10", checkpoint_dir="runs/sst")    # doctest: +SKIP
>>> fc = sst.earthformer.forecast(model, init=slice("2009-10", None))        # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import ConfigError, DataError
from .data import XarrayWindows, estimated_bytes, is_lazy, split_by_time

#: Encoded windows up to this size are cached in memory when the data are not Dask-backed.
CACHE_LIMIT_BYTES = 512 * 2**20
BEST_BUNDLE = "best.xef"
LAST_BUNDLE = "last.xef"


def default_variables(ds: xr.Dataset) -> list[str]:
    """Data variables that vary in time over the grid (bounds and grid mappings excluded).

    Examples
    --------
    >>> default_variables(sst)                                        # doctest: +SKIP
    ['sst']
    """
    from ..layout import find_axes

    ax = find_axes(ds)
    return [str(name) for name, v in ds.data_vars.items()
            if {ax.time, ax.y, ax.x} <= set(v.dims) and np.issubdtype(v.dtype, np.number)]


def init_distributed() -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1); returns
    (rank, world size). NCCL when CUDA is available, else gloo. A no-op otherwise."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available() and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _jsonable_history(history: dict[str, list[float]]) -> dict[str, list[float | None]]:
    return {k: [None if not math.isfinite(v) else float(v) for v in vals] for k, vals in history.items()}


def _period_str(period: slice | None) -> list[str] | None:
    return None if period is None else [str(period.start)[:19], str(period.stop)[:19]]


def train(
    ds: xr.Dataset | xr.DataArray,
    preset: str = "small",
    variables: str | Sequence[str] | None = None,
    targets: str | Sequence[str] | None = None,
    context: int = 12,
    lead: int = 14,
    epochs: int = 20,
    batch_size: int = 8,
    val: Any = 0.2,
    device: Any = "auto",
    checkpoint_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    *,
    lr: float = 1e-3,
    weight_decay: float = 1e-5,
    warmup: float = 0.1,
    clip_grad: float | None = 1.0,
    precision: str = "auto",
    activation_checkpointing: bool = False,
    patience: int | None = None,
    normalization: Any = "zscore",
    static: Sequence[str] = (),
    calendar: Sequence[str] = (),
    coslat: bool = True,
    steps_per_epoch: int | None = None,
    resume: str | os.PathLike[str] | bool | None = None,
    progress: bool | None = None,
    cache: bool | str = "auto",
    augment: Any = None,
    **model_overrides: Any,
) -> Any:
    """Train an Earthformer on ``ds`` and return a Forecaster (model + data spec).

    Parameters
    ----------
    ds : xr.Dataset or xr.DataArray
        Data with a time axis and a lat/lon (or projected y/x) grid; NumPy-, Dask- or
        Zarr-backed. Dask/Zarr data are never loaded whole: each batch reads its windows.
    preset : str
        Earthformer preset (``"small"``, ``"tiny"``, ``"enso"``, ``"sevir"``).
    variables, targets : str or sequence of str, optional
        Input and predicted variables (default: every gridded time-varying variable;
        targets default to the inputs).
    context, lead : int
        Input steps and predicted steps per window.
    epochs, batch_size : int
        Passes over the training windows; global batch size.
    val : float, str, slice or None
        Validation period at the end of the record: a fraction of the time steps, a start
        time (e.g. ``"2009-10"``), a slice, or None (no validation, no early stopping).
    device : str
        ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda:1"``...
    checkpoint_dir : path-like, optional
        Receives ``last.pt`` (resumable state), ``best.pt``, ``best.xef``/``last.xef``
        bundles and ``loss_curve.png``.
    seed : int
        Seed of the model initialisation, the shuffling and dropout.
    lr, weight_decay, warmup, clip_grad, precision, activation_checkpointing, patience, steps_per_epoch
        See :class:`xearthformer.training.loop.TrainConfig`. ``precision="auto"``: bf16
        autocast on CUDA, fp32 on CPU.
    normalization, static, calendar
        See :func:`xearthformer.layout.fit_spec`; statistics come from the training period.
    coslat : bool
        Weight the loss by cos(latitude) on lat/lon grids (land/missing points are always
        masked out of the loss).
    resume : path-like or bool, optional
        Continue from a ``last.pt`` (True: ``checkpoint_dir/last.pt``).
    progress : bool, optional
        Progress bars with loss and learning rate (default: when on a terminal).
    augment : callable, optional
        Batch augmentation ``f(x, y, mask, rng)``, e.g.
        :func:`xearthformer.training.data.roll_augment` for zonally periodic data.
    cache : bool or "auto"
        Keep encoded windows in memory. "auto": yes for in-memory data whose windows take
        less than 512 MiB, never for Dask/Zarr-backed data.
    **model_overrides
        Earthformer config fields, e.g. ``base_units=32``, ``proj_drop=0.0``.

    Returns
    -------
    xearthformer.Forecaster
        ``metadata["training"]`` holds the periods, window counts, settings and history.

    Examples
    --------
    >>> fc = train(sst, preset="tiny", context=6, lead=3, epochs=2)   # doctest: +SKIP
    >>> fc.spec.input_shape                                           # doctest: +SKIP
    (6, 24, 72, 1)
    """
    import torch

    from .. import layout
    from ..checkpoint import Forecaster, save
    from ..models.earthformer.network import Earthformer
    from .loop import TrainConfig, fit

    rank, world = init_distributed()
    if isinstance(ds, xr.DataArray):
        ds = ds.to_dataset(name=ds.name or "variable")
    variables = list(default_variables(ds) if variables is None else
                     ([variables] if isinstance(variables, str) else variables))
    if not variables:
        raise DataError(f"no gridded time-varying variable found in {sorted(map(str, ds.data_vars))}; "
                        "pass variables=[...] explicitly.")
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         warmup=warmup, clip_grad=clip_grad, precision=precision,
                         activation_checkpointing=activation_checkpointing, patience=patience,
                         seed=seed, steps_per_epoch=steps_per_epoch, progress=progress)
    split = split_by_time(ds, val)
    spec = layout.fit_spec(ds, variables, targets, context=context, lead=lead,
                           normalization=normalization, period=split.train_period,
                           static=static, calendar=calendar)
    train_inits = layout.init_times(split.train_data, spec, targets=True)
    val_inits = None
    if split.val_data is not None:
        n_val = split.val_data.sizes[spec.time_name]
        if n_val < context + lead:
            raise DataError(
                f"the validation period {_period_str(split.val_period)} has {n_val} time steps, "
                f"fewer than one window (context {context} + lead {lead} = {context + lead}); "
                "pass a larger val, shorter windows, or val=None.")
        val_inits = layout.init_times(split.val_data, spec, targets=True)

    def source(data: xr.Dataset | None, inits: Any) -> XarrayWindows | None:
        if data is None or inits is None:
            return None
        keep = cache is True or (cache == "auto" and not is_lazy(data)
                                 and estimated_bytes(len(inits), spec) < CACHE_LIMIT_BYTES)
        return XarrayWindows(data, spec, inits, cache=bool(keep))

    train_src, val_src = source(split.train_data, train_inits), source(split.val_data, val_inits)
    weights = None
    if coslat and not spec.grid.projected:
        weights = layout.area_weights(spec)[:, :, None]  # (H, W, 1) broadcasts over lead/channels

    if activation_checkpointing:
        # Earthformer checkpoints its own attention and FFN blocks at level 2
        model_overrides.setdefault("checkpoint_level", 2)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Earthformer.from_preset(preset, input_shape=spec.input_shape,
                                        target_shape=spec.target_shape, **model_overrides)

    info = {"preset": preset, "train_period": _period_str(split.train_period),
            "val_period": _period_str(split.val_period),
            "windows": {"train": len(train_src), "val": 0 if val_src is None else len(val_src)},
            "coslat_weighted_loss": weights is not None, "config": config.to_dict(),
            "augment": None if augment is None else getattr(augment, "description", repr(augment)),
            "world_size": world}
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None

    def write_bundles(epoch: int, history: dict[str, list[float]], is_best: bool, net: Any) -> bool:
        if ckdir is None or rank != 0:
            return False
        meta = {"training": {**info, "epoch": epoch, "history": _jsonable_history(history)}}
        save(Forecaster(net, spec, metadata=meta), ckdir / LAST_BUNDLE)
        if is_best:
            save(Forecaster(net, spec, metadata=meta), ckdir / BEST_BUNDLE)
        return False

    result = fit(model, train_src, val_src, config, weights=weights, device=device,
                 checkpoint_dir=ckdir, resume=resume, on_epoch_end=write_bundles, augment=augment)
    meta = {"training": {**info, "history": _jsonable_history(result.history),
                         "best_epoch": result.best_epoch, "stopped_early": result.stopped_early}}
    result.model.eval()
    return Forecaster(result.model, spec, metadata=meta)


# ----------------------------------------------------------------------------------------------
# command line: xearthformer train
# ----------------------------------------------------------------------------------------------
def open_input(paths: Sequence[str]) -> xr.Dataset:
    """Open NetCDF files (globs allowed) or one Zarr store lazily, with Dask (the same reader
    as ``xearthformer forecast``).

    Examples
    --------
    >>> ds = open_input(["data/sst_*.nc"])                           # doctest: +SKIP
    """
    from ..archive import input_paths, open_archive

    return open_archive(input_paths(paths))


def _split_names(values: Sequence[str] | None) -> list[str] | None:
    if not values:
        return None
    return [n for v in values for n in v.split(",") if n]


def _parse_val(text: str) -> Any:
    if text.lower() in ("none", "0", ""):
        return None
    try:
        value = float(text)
    except ValueError:
        return text  # a start date such as 2009-10
    # "2009" is a year (a start date), not a fraction
    return value if value < 1 else text


def _parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r} (e.g. --set base_units=32).")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``xearthformer train``."""
    parser.add_argument("--input", nargs="+", required=True,
                        help="NetCDF files or globs (quote them) or one Zarr store")
    parser.add_argument("--variables", nargs="+", help="input variables (default: all gridded ones)")
    parser.add_argument("--targets", nargs="+", help="predicted variables (default: the inputs)")
    parser.add_argument("--output", required=True, help="where to write the model bundle (.xef)")
    parser.add_argument("--preset", default="small", help="Earthformer preset (default: small)")
    parser.add_argument("--context", type=int, default=12, help="input steps (default 12)")
    parser.add_argument("--lead", type=int, default=14, help="predicted steps (default 14)")
    parser.add_argument("--epochs", type=int, default=20,
                        help="passes over the training windows (default 20)")
    parser.add_argument("--batch-size", type=int, default=8, help="global batch size")
    parser.add_argument("--val", type=_parse_val, default=0.2,
                        help="validation period: fraction at the end, start date, or none")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                        help="auto: bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--patience", type=int, default=None, help="early-stopping patience (epochs)")
    parser.add_argument("--normalization", default="zscore",
                        help="zscore | anomaly | minmax | none (statistics from the training period)")
    parser.add_argument("--no-coslat", action="store_true", help="do not weight the loss by cos(lat)")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="recompute activations in the backward pass to save memory")
    parser.add_argument("--steps-per-epoch", type=int, default=None,
                        help="at most this many optimiser steps per epoch (default: a full pass)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--checkpoint-dir", default=None, help="resumable checkpoints + loss curve")
    parser.add_argument("--resume", action="store_true", help="continue from CHECKPOINT_DIR/last.pt")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling, dropout")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="model config overrides, e.g. --set base_units=32 proj_drop=0.1")


def run_train(args: argparse.Namespace) -> int:
    """Run ``xearthformer train``; only rank 0 writes the bundle under torchrun."""
    from ..checkpoint import save

    if args.resume and not args.checkpoint_dir:
        raise ConfigError("--resume needs --checkpoint-dir (the folder holding last.pt).")
    ds = open_input(args.input)
    forecaster = train(
        ds, preset=args.preset, variables=_split_names(args.variables),
        targets=_split_names(args.targets), context=args.context, lead=args.lead,
        epochs=args.epochs, batch_size=args.batch_size, val=args.val, device=args.device,
        checkpoint_dir=args.checkpoint_dir, seed=args.seed, lr=args.lr, precision=args.precision,
        patience=args.patience, normalization=args.normalization, coslat=not args.no_coslat,
        activation_checkpointing=args.activation_checkpointing,
        steps_per_epoch=args.steps_per_epoch, resume=True if args.resume else None,
        **_parse_overrides(args.set))
    rank, _ = init_distributed()
    if rank == 0:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        save(forecaster, args.output)
        print(f"wrote {args.output}")
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0
