"""Train a model on labelled (xarray / NetCDF / Zarr) data: ``xearthformer.train``.

:func:`train` composes the pieces, each a helper of its own: the record is split at one time
(:func:`~xearthformer.training.data.split_by_time`, no window straddles it), the
:class:`~xearthformer.layout.DataSpec` is fitted on the training period only
(:func:`xearthformer.layout.fit_spec`), windows are cut lazily batch by batch
(:class:`~xearthformer.training.data.XarrayWindows`), the network and its default objective
come from the family's row in :mod:`xearthformer.models.registry`, and
:func:`xearthformer.training.loop.fit` optimises it, writing bundles as it goes. The result is a
:class:`~xearthformer.models.base.Forecaster` ready for ``ds.earthformer.forecast``.

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
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from .. import layout
from ..errors import ConfigError, DataError, XEarthformerWarning
from ..models import registry
from .data import TimeSplit, XarrayWindows, estimated_bytes, split_by_time

if TYPE_CHECKING:  # pragma: no cover
    from ..models.base import Forecaster, ForecastModel
    from .loop import TrainConfig

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
    ax = layout.find_axes(ds)
    return [str(name) for name, v in ds.data_vars.items()
            if {ax.time, ax.y, ax.x} <= set(v.dims) and np.issubdtype(v.dtype, np.number)]


def _jsonable_history(history: dict[str, list[float]]) -> dict[str, list[float | None]]:
    return {k: [None if not math.isfinite(v) else float(v) for v in vals] for k, vals in history.items()}


def _period_str(period: slice | None) -> list[str] | None:
    return None if period is None else [layout.format_time(period.start), layout.format_time(period.stop)]


def train(
    ds: xr.Dataset | xr.DataArray,
    preset: str = "small",
    variables: str | Sequence[str] | None = None,
    targets: str | Sequence[str] | None = None,
    context: int = 12,
    lead: int = 14,
    epochs: int = 20,
    batch_size: int = 8,
    val: Any = "auto",
    device: Any = "auto",
    checkpoint_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    *,
    family: str = "earthformer",
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
    compile: bool | str = False,
    **model_overrides: Any,
) -> Forecaster:
    """Train a model of ``family`` (default Earthformer) on ``ds`` and return a Forecaster.

    Parameters
    ----------
    ds : xr.Dataset or xr.DataArray
        Data with a time axis and a lat/lon (or projected y/x) grid; NumPy-, Dask- or
        Zarr-backed. Dask/Zarr data are never loaded whole: each batch reads its windows.
    preset : str
        The family's preset (Earthformer: ``"small"``, ``"tiny"``, ``"enso"``, ``"sevir"``;
        see ``xearthformer.presets(family)``), built for the data's shapes.
    variables, targets : str or sequence of str, optional
        Input and predicted variables (default: every gridded time-varying variable;
        targets default to the inputs).
    context, lead : int
        Input steps and predicted steps per window.
    epochs, batch_size : int
        Passes over the training windows; global batch size.
    val : "auto", float, str, slice or None
        Validation period at the end of the record: ``"auto"`` (default: the last 20 % of
        the steps, at least one window; none, with a warning, when the record holds only one
        training window), a fraction of the time steps, a start time (e.g. ``"2009-10"``), a
        slice, or None (no validation, no early stopping).
    device : str
        ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda:1"``...
    checkpoint_dir : path-like, optional
        Receives ``last.pt`` (resumable state), ``best.pt``, ``best.xef``/``last.xef``
        bundles and ``loss_curve.png``.
    seed : int
        Seed of the model initialisation, the shuffling and dropout.
    family : str
        Model family in :mod:`xearthformer.models.registry`; its default objective is the loss
        (Earthformer: the masked, area-weighted MSE). A family with its own ``trainer`` in the
        registry is trained by it with these arguments (``"prediff"``:
        :func:`xearthformer.training.prediff.train_prediff`, VAE then denoiser).
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
    compile : bool or str
        Train through :func:`torch.compile` (True: ``inductor``; or a backend name). Same
        losses as eager; compiling takes seconds to minutes first (see ``benchmarks/README.md``).
    **model_overrides
        Config fields of the family, e.g. ``base_units=32``, ``proj_drop=0.0``.

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
    trainer = registry.family(family).trainer
    if trainer is not None:  # a family that trains in stages (PreDiff: VAE, then denoiser)
        return registry.resolve(trainer)(
            ds, preset=preset, variables=variables, targets=targets, context=context, lead=lead, epochs=epochs,
            batch_size=batch_size, val=val, device=device, checkpoint_dir=checkpoint_dir, seed=seed, family=family,
            lr=lr, weight_decay=weight_decay, warmup=warmup, clip_grad=clip_grad, precision=precision,
            activation_checkpointing=activation_checkpointing, patience=patience, normalization=normalization,
            static=static, calendar=calendar, coslat=coslat, steps_per_epoch=steps_per_epoch, resume=resume,
            progress=progress, cache=cache, augment=augment, **model_overrides)
    from ..parallel import init_distributed
    from .loop import fit

    rank, world = init_distributed()
    ds = _as_dataset(ds)
    config = _train_config(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                           warmup=warmup, clip_grad=clip_grad, precision=precision,
                           activation_checkpointing=activation_checkpointing, patience=patience,
                           seed=seed, steps_per_epoch=steps_per_epoch, progress=progress,
                           compile=compile)
    split = split_by_time(ds, val, window=int(context) + int(lead))
    spec = layout.fit_spec(ds, _variables(ds, variables), targets, context=context, lead=lead,
                           normalization=normalization, period=split.train_period,
                           static=static, calendar=calendar)
    train_src, val_src = window_sources(split, spec, cache)
    weights = loss_weights(spec, coslat)
    model = build_network(family, preset, spec, seed, **model_overrides)
    objective = registry.resolve(registry.family(family).objective)(weights=weights)
    info = {"family": family, "preset": preset, "train_period": _period_str(split.train_period),
            "val_period": _period_str(split.val_period),
            "windows": {"train": len(train_src), "val": 0 if val_src is None else len(val_src)},
            "coslat_weighted_loss": weights is not None, "config": config.to_dict(),
            "augment": None if augment is None else getattr(augment, "description", repr(augment)),
            "world_size": world}
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    result = fit(model, train_src, val_src, config, objective, device=device, checkpoint_dir=ckdir,
                 resume=resume, on_epoch_end=bundle_writer(ckdir, rank, spec, info), augment=augment)
    meta = {"training": {**info, "history": _jsonable_history(result.history),
                         "best_epoch": result.best_epoch, "stopped_early": result.stopped_early}}
    result.model.eval()
    return _forecaster(result.model, spec, meta)


def _as_dataset(ds: xr.Dataset | xr.DataArray) -> xr.Dataset:
    return ds.to_dataset(name=ds.name or "variable") if isinstance(ds, xr.DataArray) else ds


def _variables(ds: xr.Dataset, variables: str | Sequence[str] | None) -> list[str]:
    """The input variables: as given, or every gridded time-varying one."""
    names = list(default_variables(ds) if variables is None else
                 ([variables] if isinstance(variables, str) else variables))
    if not names:
        raise DataError(f"no gridded time-varying variable found in {sorted(map(str, ds.data_vars))}; "
                        "pass variables=[...] explicitly.")
    return names


def _train_config(**settings: Any) -> TrainConfig:
    from .loop import TrainConfig

    return TrainConfig(**settings)


def window_sources(split: TimeSplit, spec: layout.DataSpec, cache: bool | str = "auto"
                   ) -> tuple[XarrayWindows, XarrayWindows | None]:
    """Training and validation windows of a time split (validation None without one).

    ``cache``: keep encoded windows in memory; "auto" does for in-memory data whose windows
    take less than :data:`CACHE_LIMIT_BYTES`, never for Dask/Zarr-backed data.

    Windows without any valid input or target value (gaps in the record, all NaN) are
    skipped, with a warning saying how many.

    Raises
    ------
    DataError
        The validation period is shorter than one window; no training window holds data.
    """
    train_inits = layout.init_times(split.train_data, spec, targets=True)
    val_inits = None
    if split.val_data is not None:
        n_val = split.val_data.sizes[spec.time_name]
        if n_val < spec.context + spec.lead:
            raise DataError(
                f"the validation period {_period_str(split.val_period)} has {n_val} time steps, "
                f"fewer than one window (context {spec.context} + lead {spec.lead} = "
                f"{spec.context + spec.lead}); pass a larger val, shorter windows, or val=None.")
        val_inits = layout.init_times(split.val_data, spec, targets=True)

    def source(data: xr.Dataset, inits: Any, role: str) -> XarrayWindows:
        ok = layout.valid_windows(data, spec, inits)
        if not ok.all():
            warnings.warn(
                f"skipping {int((~ok).sum())} of {ok.size} {role} windows whose inputs or targets are "
                "all missing (NaN: gaps in the record); the other windows are used as they are.",
                XEarthformerWarning, stacklevel=3)
        if role == "training" and not ok.any():
            raise DataError(f"none of the {ok.size} training windows holds data (every one is all NaN "
                            "in its inputs or targets). Fix: check the variables and period.")
        cached = cache is True or (cache == "auto" and not layout.is_lazy(data)
                                   and estimated_bytes(len(inits), spec) < CACHE_LIMIT_BYTES)
        return XarrayWindows(data, spec, inits, cache=bool(cached), keep=ok)

    train_src = source(split.train_data, train_inits, "training")
    val_src = None if split.val_data is None else source(split.val_data, val_inits, "validation")
    return train_src, val_src


def loss_weights(spec: layout.DataSpec, coslat: bool = True) -> np.ndarray | None:
    """Per-point loss weights: (H, W, 1) cos(latitude) on lat/lon grids when ``coslat``
    (broadcasting over lead and channels), else None. Land/missing points are masked out of
    the loss separately, by the targets' mask."""
    if coslat and not spec.grid.projected:
        return layout.area_weights(spec)[:, :, None]
    return None


def build_network(family: str, preset: str, spec: layout.DataSpec, seed: int = 0,
                  **overrides: Any) -> ForecastModel:
    """The family's network of ``preset`` for the spec's shapes, initialised from ``seed``
    (without touching the caller's random state)."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return registry.build(family, preset, input_shape=spec.input_shape,
                              target_shape=spec.target_shape, **overrides)


def _forecaster(model: Any, spec: layout.DataSpec, metadata: dict[str, Any]) -> Forecaster:
    from ..models.base import Forecaster

    return Forecaster(model, spec, metadata=metadata)


def bundle_writer(ckdir: Path | None, rank: int, spec: layout.DataSpec, info: dict[str, Any]
                  ) -> Callable[[int, dict[str, list[float]], bool, Any], bool]:
    """The ``on_epoch_end`` hook of :func:`~xearthformer.training.loop.fit` that writes
    ``last.xef`` (and ``best.xef`` after a best epoch) into ``ckdir`` on rank 0."""
    def write(epoch: int, history: dict[str, list[float]], is_best: bool, net: Any) -> bool:
        if ckdir is None or rank != 0:
            return False
        from ..checkpoint import save

        meta = {"training": {**info, "epoch": epoch, "history": _jsonable_history(history)}}
        save(_forecaster(net, spec, meta), ckdir / LAST_BUNDLE)
        if is_best:
            save(_forecaster(net, spec, meta), ckdir / BEST_BUNDLE)
        return False

    return write


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
    from ..data.files import input_paths, open_archive

    return open_archive(input_paths(paths))


def _split_names(values: Sequence[str] | None) -> list[str] | None:
    if not values:
        return None
    return [n for v in values for n in v.split(",") if n]


def _parse_val(text: str) -> Any:
    if text.lower() in ("none", "0", ""):
        return None
    if text.lower() == "auto":
        return "auto"
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
    parser.add_argument("--family", default="earthformer",
                        help="model family (default: earthformer; see xearthformer.models.registry)")
    parser.add_argument("--preset", default="small", help="the family's preset (default: small)")
    parser.add_argument("--context", type=int, default=12, help="input steps (default 12)")
    parser.add_argument("--lead", type=int, default=14, help="predicted steps (default 14)")
    parser.add_argument("--epochs", type=int, default=20,
                        help="passes over the training windows (default 20)")
    parser.add_argument("--batch-size", type=int, default=8, help="global batch size")
    parser.add_argument("--val", type=_parse_val, default="auto",
                        help="validation period: auto (default: the last 20%%, at least one window), "
                             "a fraction at the end, a start date, or none")
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


def _check_output(output: str, inputs: Sequence[str]) -> None:
    """Refuse an ``--output`` that would replace anything but a bundle (an input, other data)."""
    from ..checkpoint import read_metadata
    from ..data.files import input_paths
    from ..errors import CheckpointError

    if not os.path.exists(output):
        return
    if os.path.realpath(output) in {os.path.realpath(p) for p in input_paths(inputs)}:
        raise ConfigError(f"--output {output} is one of the --input files; it would be replaced by the "
                          "model bundle. Fix: choose another --output, e.g. model.xef.")
    try:
        read_metadata(output)
    except CheckpointError as err:
        raise ConfigError(f"--output {output} exists and is not an xearthformer bundle ({err}); it is not "
                          "replaced. Fix: choose another --output (an existing bundle is replaced).") from err


def run_train(args: argparse.Namespace) -> int:
    """Run ``xearthformer train``; only rank 0 writes the bundle under torchrun."""
    from ..checkpoint import save

    if args.resume and not args.checkpoint_dir:
        raise ConfigError("--resume needs --checkpoint-dir (the folder holding last.pt).")
    _check_output(args.output, args.input)  # before hours of training, not after
    ds = open_input(args.input)
    forecaster = train(
        ds, preset=args.preset, family=args.family, variables=_split_names(args.variables),
        targets=_split_names(args.targets), context=args.context, lead=args.lead,
        epochs=args.epochs, batch_size=args.batch_size, val=args.val, device=args.device,
        checkpoint_dir=args.checkpoint_dir, seed=args.seed, lr=args.lr, precision=args.precision,
        patience=args.patience, normalization=args.normalization, coslat=not args.no_coslat,
        activation_checkpointing=args.activation_checkpointing,
        steps_per_epoch=args.steps_per_epoch, resume=True if args.resume else None,
        **_parse_overrides(args.set))
    from ..parallel import init_distributed

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
