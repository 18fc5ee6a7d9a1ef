"""Forecasting labelled data, for every model family: eager and lazy (Dask, chunked over init time).

Three entry points, each usable alone:

* :func:`predict_tensor` - the one place a network runs for inference (eval mode,
  ``torch.inference_mode``, batching, device placement, optional progress bar), through the
  family protocol's ``predict`` (:class:`~xearthformer.models.base.ForecastModel`). Training,
  the demo and ``evaluate`` reuse it.
* :func:`forecast` - labelled data in, CF forecast dataset out (``init_time``,
  ``lead_time``, 2-D ``valid_time``). A stochastic family's forecast is the mean of
  ``members=8`` members (``cell_methods = "realization: mean"``).
* :func:`ensemble` - the same with a ``member`` dim (stochastic families only); ``members``
  is a count or a list of member indices, and every member is reproducible alone: its noise
  comes from a key of (seed, init time, sample, member) (:mod:`xearthformer.models.keys`).

On Dask-backed input the result is lazy, one task per init-time chunk; each task reads just
the context windows it needs, and the model bundle is a single graph key, so a
``dask.distributed`` cluster ships it once to each worker.

Writing a whole archive's forecast resumably, and the ``xearthformer forecast`` command,
are :mod:`xearthformer.archive`'s job. The labelled <-> tensor conversion is
:mod:`xearthformer.layout`'s; CF naming is :mod:`xearthformer.cf`'s.

>>> fc = forecast(sst, model, init=slice("2009", "2010"))            # doctest: +SKIP
>>> ens = ensemble(radar, prediff, members=16, seed=1)               # doctest: +SKIP
>>> y = predict_tensor(model, x, batch_size=8)        # (N, M, T, H, W, C)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import uuid
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from . import cf, layout
from .errors import ConfigError, DataError, ModelTypeError, ShapeError, XEarthformerWarning
from .layout.validation import DEFAULT_RANGE_MARGIN
from .models.base import Forecaster, check_forecaster, is_stochastic
from .models.keys import make_keys, member_indices

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: default number of samples (or, for stochastic families, (sample, member) pairs) per model call
DEFAULT_BATCH_SIZE = 16
#: members averaged by :func:`forecast` on a stochastic family
FORECAST_MEMBERS = 8
#: members of :func:`ensemble` by default
ENSEMBLE_MEMBERS = 16
#: the variables' ``cell_methods`` of a forecast that is an ensemble mean
ENSEMBLE_MEAN = "realization: mean"
#: most tasks (init-time chunks x member blocks) a lazy forecast may be split into
MAX_TASKS = 100_000
#: global attribute of every forecast: the ``bundle_sha256`` of the bundle that made it
DIGEST_ATTR = "xearthformer_bundle_sha256"


# ----------------------------------------------------------------------------------------------
# running the model
# ----------------------------------------------------------------------------------------------
def _torch_module(model: Any) -> torch.nn.Module:
    import torch

    module = getattr(model, "model", model)
    if not isinstance(module, torch.nn.Module):
        raise ModelTypeError(
            f"predict_tensor needs a Forecaster or a torch.nn.Module; got {type(model).__name__}."
        )
    return module


def _keys_array(keys: Any, n: int) -> np.ndarray:
    k = keys.detach().cpu().numpy() if hasattr(keys, "detach") else np.asarray(keys)
    if k.ndim != 2 or k.shape[0] != n or k.shape[1] < 1 or k.dtype.kind not in "iu":
        raise ShapeError(f"keys must be an (N, M) int64 array with N = {n} (one key per sample and "
                         f"member), got {getattr(k, 'shape', None)} of dtype {k.dtype}; make them "
                         "with xearthformer.models.keys.make_keys.")
    return k.astype(np.int64)


def _rows(x: Any, index: np.ndarray) -> Any:
    import torch

    if isinstance(x, torch.Tensor):
        return x[torch.from_numpy(index)]
    return x[index]


def predict_tensor(
    forecaster: Any,
    x: np.ndarray | torch.Tensor,
    *,
    keys: Any = None,
    batch_size: int | None = None,
    device: Any = "auto",
    progress: bool | None = None,
    compile: bool | str = False,
    **sampling: Any,
) -> np.ndarray:
    """Run a network on an (N, T_in, H, W, C_in) array; the one inference entry point.

    The network runs in eval mode under ``torch.inference_mode`` on ``device`` (moved there,
    in place; a network that was in training mode is put back afterwards), through its
    family's ``predict``. Deterministic families run ``batch_size`` samples per call and give
    M = 1; stochastic ones run ``batch_size`` (sample, member) pairs per call, each pair with
    its own key, so a member's values do not depend on the batch size.

    Parameters
    ----------
    forecaster : Forecaster or torch.nn.Module
        The bundle (its ``.model`` runs) or a bare network; a module without ``predict``
        is treated as a deterministic ``module(x)``.
    x : np.ndarray or torch.Tensor
        Normalised inputs, float, shape (N, T_in, H, W, C_in).
    keys : array-like or Tensor, optional
        (N, M) int64 noise keys (:func:`xearthformer.models.keys.make_keys`); required by
        stochastic families, ignored by deterministic ones.
    batch_size : int, optional
        Samples (or pairs) per call (default ``DEFAULT_BATCH_SIZE``).
    device : str or torch.device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:1"``...
    progress : bool or None
        Show a tqdm bar over batches; None shows it only on a terminal.
    compile : bool or str
        Run the family's ``predict`` through :func:`torch.compile` (True: ``inductor``, or a
        backend name; :func:`xearthformer.device.compiled`). Same values as eager to float32
        round-off; the first batch of each shape compiles (seconds to minutes on a CPU).
    **sampling
        The family's sampling options (steps, sampler, guidance...); deterministic families
        take none.

    Returns
    -------
    np.ndarray
        float32 (N, M, T_out, H, W, C_out) on the CPU, always 6-d.

    Raises
    ------
    ModelTypeError
        ``forecaster`` holds no torch module.
    ConfigError
        A stochastic family without ``keys``, or sampling options a family does not take.
    ShapeError
        From the network, when ``x`` does not fit it, or malformed ``keys``.

    Examples
    --------
    >>> net = torch.nn.Identity()                                   # doctest: +SKIP
    >>> predict_tensor(net, np.zeros((3, 2, 4, 4, 1), "f4"), batch_size=2).shape  # doctest: +SKIP
    (3, 1, 2, 4, 4, 1)
    """
    import torch

    from .device import compiled, resolve_device
    from .memory import is_out_of_memory
    from .progress import progress_bar

    module = _torch_module(forecaster)
    dev = resolve_device(device)
    n = int(x.shape[0])
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size}.")
    if n == 0:
        raise DataError("predict_tensor got no samples (N = 0); expected at least one input window.")
    run = getattr(module, "predict", None)
    if run is None:
        if sampling:
            raise ConfigError(f"{type(module).__name__} has no predict method and takes no sampling "
                              f"options; got {sorted(sampling)}.")
        run = _plain_predict(module)
    run = compiled(run, compile)
    if bool(getattr(module, "stochastic", False)):
        if keys is None:
            raise ConfigError(
                f"{type(module).__name__} is stochastic: predict_tensor needs keys=(N, M) noise keys, "
                "one per sample and member (xearthformer.models.keys.make_keys); or use "
                "xearthformer.forecast.ensemble / forecast on labelled data.")
        k = _keys_array(keys, n)
        rows = np.repeat(np.arange(n), k.shape[1])
        cols: np.ndarray | None = np.tile(np.arange(k.shape[1]), n)
        members = k.shape[1]
    else:
        rows, cols, members = np.arange(n), None, 1
    bs = plan_inference(module, tuple(x.shape[1:]), rows.size, members, batch_size, dev).batch_size
    was_training = module.training
    module.eval()
    module.to(dev)
    out: np.ndarray | None = None
    bar = progress_bar(total=rows.size, progress=progress, desc="forecast", unit="sample")
    try:
        with torch.inference_mode():
            i = 0
            while i < rows.size:
                r = rows[i:i + bs]
                c = None if cols is None else cols[i:i + bs]
                xb = _rows(x, r) if c is not None else x[int(r[0]):int(r[-1]) + 1]
                xb = xb if isinstance(xb, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(xb))
                xb = xb.to(device=dev, dtype=torch.float32)
                try:
                    if c is None:
                        yb = run(xb, **sampling)
                    else:
                        yb = run(xb, keys=torch.from_numpy(k[r, c][:, None]), **sampling)
                except Exception as err:  # noqa: BLE001 - only allocation failures are handled
                    if not is_out_of_memory(err):
                        raise
                    bs = _halved(bs, len(r), dev, err)
                    continue
                yb = _checked(yb, len(r), module)
                if out is None:
                    out = np.empty((n, members, *yb.shape[2:]), dtype=np.float32)
                values = yb.detach().to("cpu", torch.float32).numpy()
                if c is None:
                    out[r] = values
                else:
                    out[r, c] = values[:, 0]
                i += len(r)
                bar.update(len(r))
    finally:
        bar.close()
        if was_training:
            module.train()
    assert out is not None
    return out


def plan_inference(module: Any, input_shape: tuple[int, ...], items: int, members: int = 1,
                   batch_size: int | None = None, device: Any = None) -> Any:
    """The memory plan of :func:`predict_tensor`: ``items`` samples (or (sample, member)
    pairs) of ``input_shape`` through ``module`` on ``device``
    (:func:`xearthformer.memory.plan_batch`). Per item: the network's activations
    (:func:`xearthformer.memory.activation_bytes`) and the batch's input and output copies;
    fixed: the output array (host) and, on an accelerator the weights are not on yet, the
    weights.

    Raises
    ------
    ConfigError
        Not even one item fits, or ``batch_size`` does not (the message names the largest
        batch that does).
    """
    from .memory import activation_bytes, plan_batch

    out_shape = tuple(getattr(getattr(module, "config", None), "target_shape", input_shape))
    per_item = activation_bytes(module, input_shape, out_shape) + 8 * (math.prod(input_shape)
                                                                       + math.prod(out_shape))
    out_bytes = 4 * (items // max(1, members)) * members * math.prod(out_shape)
    on_device = getattr(device, "type", "cpu") != "cpu"
    fixed = out_bytes
    if on_device:
        elsewhere = [p for p in module.parameters() if p.device.type != device.type
                     or (device.index is not None and p.device.index != device.index)]
        fixed = sum(p.numel() * p.element_size() for p in elsewhere)
    return plan_batch(per_item, items=items, fixed=fixed, requested=batch_size,
                      default=DEFAULT_BATCH_SIZE, device=device if on_device else None,
                      what="(sample, member) pairs" if members > 1 else "samples",
                      fixes="Other fixes: fewer init times per chunk (chunk=, --chunk), fewer "
                            "members per block (--member-block), or device='cpu'.")


def _halved(bs: int, tried: int, device: Any, err: BaseException) -> int:
    """The batch size after an out-of-memory error with a batch of ``tried`` (half of it)."""
    if tried <= 1:
        raise ConfigError(
            f"out of memory on {device} with a single sample per model call ({str(err).splitlines()[0]}). "
            "Fix: run on another device (device='cpu'), free memory used by other processes, or "
            "forecast a smaller grid.") from err
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        torch.cuda.empty_cache()
    new = max(1, min(bs, tried) // 2)
    warnings.warn(f"out of memory on {device} with {tried} samples per model call; retrying with {new}.",
                  XEarthformerWarning, stacklevel=3)
    return new


def _plain_predict(module: Any) -> Any:
    """``predict`` of a bare deterministic module: ``module(x)`` with a member axis of 1."""
    def predict(x: Any, **_: Any) -> Any:
        return module(x)[:, None]

    return predict


def _checked(y: Any, rows: int, module: Any) -> Any:
    if y.dim() != 6 or y.shape[0] != rows or y.shape[1] != 1:
        raise ShapeError(
            f"{type(module).__name__}.predict returned shape {tuple(y.shape)} for {rows} inputs; the "
            "family protocol says (N, M, T_out, H, W, C_out) with one member per key (M = 1 here).")
    return y


def _worker_threads(cores: int, nthreads: int, env: str) -> int:
    """Torch threads for one task slot: ``OMP_NUM_THREADS`` if set, else cores / slots."""
    if env.strip().isdigit() and int(env) > 0:
        return int(env)
    return max(1, cores // max(1, nthreads))


def _configure_worker_threads() -> None:
    """On a dask.distributed worker, set torch's thread count once per process.

    The nanny exports ``OMP_NUM_THREADS`` (1 by default) to worker processes; that value
    wins. Without it, the cores this process may use are shared among the worker's threads,
    so that several workers on one node do not oversubscribe it.
    """
    if getattr(_configure_worker_threads, "done", False) or "distributed" not in sys.modules:
        return
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(_worker_threads(cores, worker.state.nthreads,
                                          os.environ.get("OMP_NUM_THREADS", "")))
    _configure_worker_threads.done = True  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------------------
# labelled forecasts
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Members:
    """What to draw: which members (None for a deterministic family), with which seed, and
    whether the result is their mean (forecast) or the members themselves (ensemble); and how
    the network runs (sampling options, ``torch.compile`` setting)."""

    indices: np.ndarray | None = None
    seed: int = 0
    mean: bool = False
    sampling: dict[str, Any] = field(default_factory=dict)
    compile: bool | str = False


def _n_leads(lead: int | None, forecaster: Forecaster) -> int:
    if lead is None:
        return int(forecaster.lead)
    if isinstance(lead, (bool, np.bool_)) or not isinstance(lead, (int, np.integer)) \
            or not 1 <= int(lead) <= forecaster.lead:
        raise ConfigError(
            f"lead must be an integer number of steps from 1 to the model's {forecaster.lead}; "
            f"got {lead!r}. Pass lead=None for all of them."
        )
    return int(lead)


def _seed(seed: Any) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be an integer, got {seed!r}.")
    return int(seed)


def forecast(
    obj: xr.Dataset | xr.DataArray,
    model: Forecaster,
    init: Any = None,
    lead: int | None = None,
    batch_size: int | None = None,
    device: Any = "auto",
    *,
    members: int | Sequence[int] | None = None,
    seed: int = 0,
    chunk: int | None = None,
    progress: bool | None = None,
    source: str | None = None,
    range_margin: float | None = DEFAULT_RANGE_MARGIN,
    control: Any = None,
    compile: bool | str = False,
    **sampling: Any,
) -> xr.Dataset:
    """Forecast from labelled data; lazy (Dask) when ``obj`` is Dask-backed.

    Parameters
    ----------
    obj : xr.Dataset or xr.DataArray
        Data with the model's variables, grid and time step (any CF names).
    model : Forecaster
        A trained bundle; a bare ``nn.Module`` raises :class:`ModelTypeError`.
    init : None, str, slice, datetime-like or sequence
        Init times (time of the last context step): None for every possible one, a label
        slice such as ``slice("2009", "2010")``, or a list of times.
    lead : int, optional
        Number of lead steps to keep, 1 to the model's (default all).
    batch_size : int, optional
        Samples per model call (default ``DEFAULT_BATCH_SIZE``; stochastic families: (sample,
        member) pairs).
    device : str or torch.device
        ``"auto"`` uses CUDA when available (on each Dask worker: that worker's device).
    members, seed : optional
        Stochastic families only: the forecast is the mean of these members (default
        ``FORECAST_MEMBERS`` = 8; a count or member indices) drawn with ``seed`` (see
        :func:`ensemble`). A deterministic family refuses ``members``.
    chunk : int, optional
        Lazy input only: init times per output chunk. Default: one output chunk per input
        time chunk (each task then reads its own chunk plus the context tail of the one
        before).
    progress : bool or None
        Eager runs: progress bar over batches (None: on a terminal). Lazy runs report
        through Dask's diagnostics (``dask.diagnostics.ProgressBar``, the dashboard).
    source : str, optional
        Global ``source`` attribute (default names xearthformer and its version).
    range_margin : float or None
        Inputs outside the training min/max widened by this many times its width on each side
        are refused (default ``DEFAULT_RANGE_MARGIN`` = 1; see
        :func:`xearthformer.layout.validation.check_range`): fill values and data in other
        units do not pass, real extremes do. None skips the check.
    control : dict, callable or list of them, optional
        Knowledge control of a stochastic family's members before they are averaged; as for
        :func:`ensemble`.
    compile : bool or str
        Run the network through :func:`torch.compile` (see :func:`predict_tensor`); never
        required.
    **sampling
        The family's sampling options (stochastic families).

    Returns
    -------
    xr.Dataset
        CF-1.8 forecast (see :func:`xearthformer.cf.to_cf`): one variable per target, dims
        ``(init_time, lead_time, ..., y, x)``, 2-D ``valid_time``; chunked over ``init_time``
        when ``obj`` is Dask-backed, and then nothing is computed until asked. An ensemble
        mean's variables carry ``cell_methods = "realization: mean"``; the global attribute
        ``xearthformer_bundle_sha256`` names the bundle that made it
        (:func:`xearthformer.checkpoint.bundle_digest`).

    Raises
    ------
    ModelTypeError
        ``model`` is not a Forecaster.
    ConfigError
        ``lead`` out of range; ``members`` for a deterministic family.
    DataError
        From :mod:`xearthformer.layout` (missing variables, wrong grid or step, no context,
        wrong units, infinite or fill values, inputs outside the training range).

    Examples
    --------
    >>> fc = forecast(sst, model, init=slice("2009", "2010"))        # doctest: +SKIP
    >>> fc = sst.chunk(time=24).earthformer.forecast(model)         # lazy  # doctest: +SKIP
    """
    fc = check_forecaster(model)
    if control is not None:
        def run(options: dict[str, Any]) -> xr.Dataset:
            return forecast(obj, fc, init, lead, batch_size, device, members=members, seed=seed, chunk=chunk,
                            progress=progress, source=source, range_margin=range_margin, compile=compile,
                            **sampling, **options)

        return _controlled(fc, control, run)
    if is_stochastic(fc):
        plan = _Members(member_indices(FORECAST_MEMBERS if members is None else members), _seed(seed),
                        mean=True, sampling=sampling, compile=compile)
    else:
        if members is not None:
            raise ConfigError(f"members={members!r}: {type(fc.model).__name__} is deterministic (one "
                              "forecast per input); drop members.")
        plan = _Members(sampling=sampling, compile=compile)
    out, n_lead = _labelled(obj, fc, init, lead, batch_size, device, chunk, progress, plan, range_margin)
    history = f"forecast with xearthformer.forecast (lead {n_lead} steps of {fc.spec.step})"
    if plan.mean:
        for name in out.data_vars:
            out[name].attrs["cell_methods"] = ENSEMBLE_MEAN
        history = (f"forecast with xearthformer.forecast: mean of {plan.indices.size} members "
                   f"(seed {plan.seed}), lead {n_lead} steps of {fc.spec.step}")
    return _stamped(cf.to_cf(out, source=source, like=obj, history=history), fc)


def ensemble(
    obj: xr.Dataset | xr.DataArray,
    model: Forecaster,
    members: int | Sequence[int] = ENSEMBLE_MEMBERS,
    seed: int = 0,
    init: Any = None,
    lead: int | None = None,
    batch_size: int | None = None,
    device: Any = "auto",
    *,
    chunk: int | None = None,
    progress: bool | None = None,
    source: str | None = None,
    range_margin: float | None = DEFAULT_RANGE_MARGIN,
    member_chunk: int | None = None,
    control: Any = None,
    **sampling: Any,
) -> xr.Dataset:
    """An ensemble forecast from labelled data (stochastic families); lazy on Dask input.

    Member ``m`` of the sample at init time ``t`` (and position ``s`` along the input's extra
    dims) draws all its noise from the key of ``(seed, t, s, m)``
    (:func:`xearthformer.models.keys.make_keys`): it is the same whatever the batch size, the
    chunking, or the other members asked for, so ``members=[7]`` regenerates member 7 alone.

    Parameters
    ----------
    obj : xr.Dataset or xr.DataArray
        As for :func:`forecast`; it must not have a ``member`` dim of its own.
    model : Forecaster
        A bundle of a stochastic family.
    members : int or sequence of int
        A count (members 0..members-1, default ``ENSEMBLE_MEMBERS`` = 16) or member indices.
    seed : int
        Seed of the ensemble: other seeds give other, independent members.
    init, lead, batch_size, device, chunk, progress, source, range_margin, **sampling
        As for :func:`forecast`.
    member_chunk : int, optional
        Lazy input only: members per task (and per ``member`` chunk of the result), so a task
        holds ``chunk`` init times x ``member_chunk`` members, not the whole ensemble, in
        memory. Default: all members in one task.
    control : dict, callable or list of them, optional
        Knowledge control (families that have it, e.g. PreDiff with an alignment network):
        ``{"n": 2}`` (mu + 2 sigma of the control statistic over the training period),
        ``{"value": v}`` (physical units), ``{"statistic": "area_above", "threshold": 133,
        "n": 3}``, a callable ``f(context) -> (N, K)``; see
        :mod:`xearthformer.models.prediff.control`. The output's ``control*`` attributes record
        it. A list sweeps several: the result gets a ``control`` dim (labels such as ``"n=+2"``,
        with a ``control_n`` coordinate). Members keep their seeds: the same member index gives
        the same noise under every control.

    Returns
    -------
    xr.Dataset
        CF-1.8 forecast with a ``member`` dim (int coordinate of the member indices,
        standard_name ``realization``) after ``lead_time``.

    Raises
    ------
    ModelTypeError
        ``model`` is not a Forecaster, or its family is deterministic (use :func:`forecast`).
    DataError
        ``obj`` already has a ``member`` dim.
    ConfigError
        Bad ``members``/``seed``/``lead``.

    Examples
    --------
    >>> ens = ensemble(radar, model, members=16, seed=0)              # doctest: +SKIP
    >>> again = ensemble(radar, model, members=[7])                   # doctest: +SKIP
    >>> bool((ens.sel(member=[7]) == again).all())                    # doctest: +SKIP
    True
    """
    fc = check_forecaster(model)
    if not is_stochastic(fc):
        raise ModelTypeError(
            f"{type(fc.model).__name__} is deterministic: it has one forecast per input, not an "
            "ensemble. Use xearthformer.forecast.forecast (ds.earthformer.forecast) instead.")
    if "member" in obj.dims:
        raise DataError(
            "the input already has a 'member' dim, which the ensemble's own member dim would "
            "collide with. Fix: rename it first, e.g. ds.rename(member=\"input_member\"); each "
            "input member is then forecast as its own sample.")
    if control is not None:
        def run(options: dict[str, Any]) -> xr.Dataset:
            return ensemble(obj, fc, members, seed, init, lead, batch_size, device, chunk=chunk, progress=progress,
                            source=source, range_margin=range_margin, member_chunk=member_chunk,
                            **sampling, **options)

        return _controlled(fc, control, run)
    plan = _Members(member_indices(members), _seed(seed), mean=False, sampling=sampling)
    out, n_lead = _labelled(obj, fc, init, lead, batch_size, device, chunk, progress, plan, range_margin,
                            member_chunk)
    history = (f"ensemble of {plan.indices.size} members (seed {plan.seed}) with "
               f"xearthformer.forecast.ensemble (lead {n_lead} steps of {fc.spec.step})")
    return _stamped(cf.to_cf(out, source=source, like=obj, history=history), fc)


def _controlled(fc: Forecaster, control: Any, run: Any) -> xr.Dataset:
    """Ensembles under knowledge control: one, or a ``control`` dim for a list of controls."""
    from .models import registry

    row = registry.family_of(fc)
    if row.control is None:
        raise ConfigError(f"the {row.name!r} family has no knowledge control; control= needs a family that "
                          "has one (PreDiff with an alignment network).")
    hook = registry.resolve(row.control)
    sweep = isinstance(control, (list, tuple))
    controls = list(control) if sweep else [control]
    if not controls:
        raise ConfigError("control=[] sweeps nothing; give one control or a list of them, e.g. "
                          "[{'n': k} for k in (-2, 0, 2)].")
    prepared = [hook(fc, c) for c in controls]  # every request is checked before any sampling
    names = [str(attrs.get("control_label", i)) for i, (_, attrs) in enumerate(prepared)]
    if len(set(names)) != len(names):
        raise ConfigError(f"control= lists the same control twice: {names}")
    outs, history = [], ""
    for options, attrs in prepared:
        out = run(options)
        history = out.attrs.get("history", "")
        out.attrs.update({k: v for k, v in attrs.items() if k != "control_label"})
        out.attrs["history"] = f"{history}; knowledge control {attrs.get('control', '')}"
        outs.append(out)
    if not sweep:
        return outs[0]
    requests = [json.loads(o.attrs["control"]) if "control" in o.attrs else {} for o in outs]
    shared = {k: v for k, v in outs[0].attrs.items()
              if all(k in o.attrs and np.array_equal(o.attrs[k], v) for o in outs)}
    n = [float(r["n"]) if isinstance(r.get("n"), (int, float)) else np.nan for r in requests]
    result = xr.concat(outs, dim="control", coords="minimal", compat="override", combine_attrs="drop")
    for name, variable in outs[0].variables.items():  # "drop" empties the variables' CF attributes too
        if name in result.variables:
            result[name].attrs = dict(variable.attrs)
    result = result.assign_coords(control=("control", names), control_n=("control", n))
    result["control"].attrs["long_name"] = "knowledge-control request"
    result["control_n"].attrs["long_name"] = "target in training-period sigmas from the training mean (NaN: other)"
    result.attrs.update(shared)
    result.attrs["control"] = json.dumps(requests)
    result.attrs["history"] = f"{history}; knowledge control sweep {result.attrs['control']}"
    return result


def _stamped(out: xr.Dataset, fc: Forecaster) -> xr.Dataset:
    """``out`` with the digest of the bundle that made it (one global attribute)."""
    from .checkpoint import bundle_digest

    out.attrs[DIGEST_ATTR] = bundle_digest(fc)
    return out


def _range_margin(margin: Any, fc: Forecaster) -> float | None:
    """The checked margin; a warning (once per call) when the spec has no training ranges."""
    if margin is None:
        return None
    if isinstance(margin, bool) or not isinstance(margin, (int, float, np.integer, np.floating)) \
            or not np.isfinite(margin) or margin < 0:
        raise ConfigError(f"range_margin must be a number >= 0 (a multiple of the training range) "
                          f"or None to skip the range check; got {margin!r}.")
    missing = [c.name for c in fc.spec.inputs if c.range is None]
    if missing:
        warnings.warn(
            f"the model's spec stores no training range for {missing} (a bundle written before "
            "ranges were kept, format 1, or a spec built by hand): the range check is skipped for "
            "them, so inputs in other units or with undecoded fill values are not caught there. "
            "Fix: retrain, or re-fit the spec on the training data (layout.fit_spec).",
            XEarthformerWarning, stacklevel=3)
    return float(margin)


def _labelled(obj: xr.Dataset | xr.DataArray, fc: Forecaster, init: Any, lead: int | None,
              batch_size: int | None, device: Any, chunk: int | None, progress: bool | None,
              plan: _Members, range_margin: Any = DEFAULT_RANGE_MARGIN,
              member_chunk: int | None = None) -> tuple[xr.Dataset, int]:
    """The decoded (not yet CF-encoded) forecast, eager or lazy, and its number of leads."""
    n_lead = _n_leads(lead, fc)
    margin = _range_margin(range_margin, fc)
    inits = layout.init_times(obj, fc.spec, init)
    if len(inits) == 0:
        raise DataError(f"no init time selected by init={init!r}; expected at least one.")
    if layout.is_lazy(obj, names=fc.spec.variables):
        return _forecast_lazy(obj, fc, inits, n_lead, batch_size, device, chunk, plan, margin,
                              member_chunk), n_lead
    return _predict_decode(obj, fc, inits, n_lead, batch_size, device, progress, plan, margin), n_lead


def _predict_decode(data: xr.Dataset | xr.DataArray, fc: Forecaster, inits: np.ndarray, n_lead: int,
                    batch_size: int | None, device: Any, progress: bool | None,
                    plan: _Members, range_margin: float | None = None) -> xr.Dataset:
    """Encode the windows of ``inits``, run the network, decode: one eager forecast or one
    Dask task's share of a lazy one."""
    _check_chunk_memory(data, fc, inits, n_lead, plan)
    x = layout.encode_inputs(data, fc.spec, inits, range_margin=range_margin)
    keys = None
    if plan.indices is not None:
        per_init = x.shape[0] // len(inits)  # samples along the input's extra dims
        keys = make_keys(plan.seed, np.repeat(inits, per_init), np.tile(np.arange(per_init), len(inits)),
                         plan.indices)
    y = predict_tensor(fc, x, keys=keys, batch_size=batch_size, device=device, progress=progress,
                       compile=plan.compile, **plan.sampling)[:, :, :n_lead]
    if plan.mean:
        y = y.mean(axis=1, keepdims=True)
    members = None if plan.mean or plan.indices is None else plan.indices
    return layout.decode(y, fc.spec, inits, lead=n_lead, like=data, members=members)


def chunk_bytes(spec: Any, n_samples: int, members: int = 1, n_lead: int | None = None) -> int:
    """Host memory a forecast chunk of ``n_samples`` samples x ``members`` holds at once besides
    the model calls (:func:`plan_inference`): its input windows while they are encoded (16 B per
    value: raw, float64 and float32 copies) and its outputs while they are decoded (20 B per
    value: the model's float32, a reordered copy, the float64 de-normalisation, the result).

    >>> chunk_bytes(spec, 8, members=4)                       # doctest: +SKIP
    """
    lead = spec.lead if n_lead is None else n_lead
    inputs = n_samples * math.prod(spec.input_shape)
    outputs = n_samples * members * lead * math.prod(spec.target_shape[1:])
    return 16 * inputs + 20 * outputs


def _check_chunk_memory(data: Any, fc: Forecaster, inits: np.ndarray, n_lead: int, plan: _Members,
                        n_inits: int | None = None) -> None:
    """Refuse a chunk (``n_inits`` init times, default all of ``inits``) that does not fit."""
    from .memory import check_fits

    per_init = int(np.prod([c.size for c in layout.sample_dims(data, fc.spec).values()] or [1]))
    members = 1 if plan.indices is None else int(plan.indices.size)
    n_inits = len(inits) if n_inits is None else n_inits
    check_fits(chunk_bytes(fc.spec, n_inits * per_init, members, n_lead),
               what=f"a forecast chunk of {n_inits} init time(s) x {per_init} sample(s) x {members} member(s)",
               fixes="forecast fewer init times at once (init=..., or Dask input with chunk=N / --chunk N), "
                     "fewer members at once (members=[...] in blocks, --member-block B), or fewer leads (lead=).")


# -- the lazy path -----------------------------------------------------------------------------
def find_time_dim(obj: xr.Dataset | xr.DataArray) -> str:
    """Name of ``obj``'s time dimension (found with :func:`xearthformer.layout.find_axes`)."""
    name = layout.find_axes(obj).time
    if name is None:  # pragma: no cover - init_times already required a time axis
        raise DataError(f"no time axis found among dims {list(obj.dims)}.")
    return name


def _init_groups(obj: xr.Dataset | xr.DataArray, time_dim: str, inits: np.ndarray,
                 chunk: int | None) -> list[np.ndarray]:
    """Split ``inits`` into output chunks: ``chunk`` at a time, or by input time chunk."""
    if chunk is not None:
        if int(chunk) < 1:
            raise ConfigError(f"chunk must be a positive number of init times, got {chunk}.")
        return [inits[i:i + int(chunk)] for i in range(0, len(inits), int(chunk))]
    sizes = obj.chunksizes.get(time_dim) if isinstance(obj, xr.Dataset) else \
        dict(zip(obj.dims, obj.chunks or ())).get(time_dim)
    if not sizes:
        return [inits]
    positions = obj.indexes[time_dim].get_indexer(inits)
    block = np.searchsorted(np.cumsum(sizes), positions, side="right")
    return [inits[block == b] for b in np.unique(block)]


def _split_lazy(window: xr.Dataset) -> tuple[xr.Dataset, dict[Hashable, Any]]:
    """``window`` without its Dask-backed variables, and those variables' Dask arrays.

    Handing the arrays (not the Dataset) to ``dask.delayed`` makes the task depend on just
    their chunks: a Dataset would be embedded in the task as a whole sub-graph.
    """
    import dask.array as da

    lazy = {name: var.data for name, var in window.variables.items() if isinstance(var.data, da.Array)}
    return window.drop_vars(list(lazy)), lazy


def _join_lazy(skeleton: xr.Dataset, arrays: dict[Hashable, np.ndarray],
               layout_of: dict[Hashable, tuple[tuple[Hashable, ...], dict[str, Any], bool]]) -> xr.Dataset:
    """Inverse of :func:`_split_lazy` once the arrays are loaded."""
    data = skeleton.copy()
    coords = []
    for name, values in arrays.items():
        dims, attrs, is_coord = layout_of[name]
        data[name] = xr.Variable(dims, values, attrs)
        if is_coord:
            coords.append(name)
    return data.set_coords(coords)


def _predict_chunk(skeleton: xr.Dataset, arrays: dict[Hashable, np.ndarray],
                   layout_of: dict[Hashable, Any], forecaster: Forecaster, inits: np.ndarray,
                   n_lead: int, batch_size: int | None, device: Any, plan: _Members,
                   dims: dict[Hashable, tuple[Hashable, ...]], range_margin: float | None = None
                   ) -> dict[Hashable, np.ndarray]:
    """One Dask task: the context windows of ``inits`` (already loaded) -> decoded values."""
    _configure_worker_threads()
    data = _join_lazy(skeleton, arrays, layout_of)
    out = _predict_decode(data, forecaster, inits, n_lead, batch_size, device, False, plan, range_margin)
    return {name: np.asarray(out[name].transpose(*d).values) for name, d in dims.items()}


def _member_blocks(plan: _Members, member_chunk: int | None, n_groups: int = 1) -> list[_Members]:
    """The plan split into blocks of at most ``member_chunk`` members (one task each, for each
    of ``n_groups`` init-time chunks; refused beyond :data:`MAX_TASKS` tasks)."""
    if plan.mean or plan.indices is None or member_chunk is None:
        n_blocks = 1
    elif isinstance(member_chunk, bool) or not isinstance(member_chunk, (int, np.integer)) or member_chunk < 1:
        raise ConfigError(f"member_chunk must be a positive number of members per task, got {member_chunk!r}.")
    else:
        n_blocks = -(-plan.indices.size // int(member_chunk))
    if n_groups * n_blocks > MAX_TASKS:
        raise ConfigError(
            f"this forecast would be {n_groups} init-time chunk(s) x {n_blocks} member block(s) = "
            f"{n_groups * n_blocks} tasks, more than the {MAX_TASKS} a Dask graph handles well. "
            "Fix: a larger chunk= (--chunk) or member_chunk= (--member-block).")
    if n_blocks == 1:
        return [plan]
    return [dataclasses.replace(plan, indices=plan.indices[j:j + int(member_chunk)])
            for j in range(0, plan.indices.size, int(member_chunk))]


def _forecast_lazy(obj: xr.Dataset | xr.DataArray, fc: Forecaster, inits: np.ndarray, n_lead: int,
                   batch_size: int | None, device: Any, chunk: int | None, plan: _Members,
                   range_margin: float | None = None, member_chunk: int | None = None) -> xr.Dataset:
    import dask
    import dask.array as da

    spec = fc.spec
    if isinstance(obj, xr.DataArray):
        name = spec.variables[0] if len(spec.variables) == 1 else obj.name
        obj = obj.to_dataset(name=name)
    time_dim = find_time_dim(obj)
    data = obj[spec.variables]
    # structure (names, dims, coords, attrs) from one init (and one member) decoded from zeros
    n_samples = int(np.prod([v.size for v in layout.sample_dims(data, spec).values()] or [1]))
    members = None if plan.mean or plan.indices is None else plan.indices
    m_axis = () if members is None else (1,)
    zeros = np.zeros((n_samples, *m_axis, n_lead, *spec.grid.shape, spec.n_targets), np.float32)
    template = layout.decode(zeros, spec, inits[:1], lead=n_lead, like=data,
                             members=None if members is None else members[:1])
    dims = {name: template[name].dims for name in template.data_vars}
    groups = _init_groups(data, time_dim, inits, chunk)
    blocks = _member_blocks(plan, member_chunk, len(groups))
    # refuse now, not in a worker, a task that cannot fit (the largest chunk x block)
    largest = max(blocks, key=lambda b: 0 if b.indices is None else b.indices.size)
    _check_chunk_memory(data, fc, inits, n_lead, largest, n_inits=max(len(g) for g in groups))

    token = uuid.uuid4().hex
    # one graph key holds the bundle: distributed sends it to each worker once
    bundle = dask.delayed(fc, name=f"xearthformer-bundle-{token}")
    parts: dict[Hashable, list[Any]] = {name: [] for name in dims}
    for i, group in enumerate(groups):
        window = data.isel({time_dim: layout.required_time_slice(data, spec, group)})
        skeleton, arrays = _split_lazy(window)
        layout_of = {n: (window[n].dims, dict(window[n].attrs), n in window.coords) for n in arrays}
        row: dict[Hashable, list[Any]] = {name: [] for name in dims}
        for j, block in enumerate(blocks):
            tag = f"{i}" if len(blocks) == 1 else f"{i}-{j}"
            task = dask.delayed(_predict_chunk)(skeleton, arrays, layout_of, bundle, group, n_lead,
                                                batch_size, device, block, dims, range_margin,
                                                dask_key_name=f"xearthformer-forecast-{token}-{tag}")
            for name, d in dims.items():
                shape = tuple(len(group) if dim == "init_time" else
                              block.indices.size if dim == "member" else template.sizes[dim] for dim in d)
                row[name].append(da.from_delayed(task[name], shape=shape, dtype=template[name].dtype,
                                                 name=f"xearthformer-{name}-{token}-{tag}"))
        for name, d in dims.items():
            parts[name].append(row[name][0] if len(blocks) == 1 else
                               da.concatenate(row[name], axis=d.index("member")))

    coords = layout.time_coords(inits, spec.step, n_lead)
    base = template.drop_vars([c for c in template.coords if "init_time" in template[c].dims])
    out = xr.Dataset(coords=base.drop_vars("member", errors="ignore").coords, attrs=template.attrs)
    out = out.assign_coords(init_time=coords["init_time"])
    if members is not None:
        out = out.assign_coords(member=xr.DataArray(members, dims="member", attrs=dict(layout.MEMBER_ATTRS)))
    for name, d in dims.items():
        out[name] = xr.Variable(d, da.concatenate(parts[name], axis=d.index("init_time")),
                                template[name].attrs)
    return out.assign_coords(valid_time=coords["valid_time"])
