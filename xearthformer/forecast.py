"""Forecasting labelled data: eager and lazy (Dask, chunked over init time).

Two layers, each usable alone:

* :func:`predict_tensor` - the one place the torch model runs for inference (eval mode,
  ``torch.inference_mode``, batching, device placement, optional progress bar). Training,
  the demo and ``evaluate`` reuse it.
* :func:`forecast` - labelled data in, CF forecast dataset out (``init_time``,
  ``lead_time``, 2-D ``valid_time``). On Dask-backed input the result is lazy, one task per
  init-time chunk; each task reads just the context windows it needs, and the model bundle
  is a single graph key, so a ``dask.distributed`` cluster ships it once to each worker.

Writing a whole archive's forecast resumably, and the ``xearthformer forecast`` command,
are :mod:`xearthformer.archive`'s job. The labelled <-> tensor conversion is
:mod:`xearthformer.layout`'s; CF naming is :mod:`xearthformer.cf`'s.

>>> fc = forecast(sst, model, init=slice("2009", "2010"))            # doctest: +SKIP
>>> y = predict_tensor(model, x, batch_size=8)                       # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from . import cf
from .errors import ConfigError, DataError, ModelTypeError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .checkpoint import Forecaster

#: default number of samples per model call
DEFAULT_BATCH_SIZE = 16


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


def predict_tensor(
    forecaster: Any,
    x: np.ndarray | torch.Tensor,
    batch_size: int | None = None,
    device: Any = "auto",
    progress: bool | None = False,
) -> np.ndarray:
    """Run the model on an (N, T_in, H, W, C_in) array; the one inference entry point.

    The model runs in eval mode under ``torch.inference_mode``, ``batch_size`` samples at a
    time, on ``device`` (the model is moved there, in place). A model that was in training
    mode is put back into training mode afterwards.

    Parameters
    ----------
    forecaster : Forecaster or torch.nn.Module
        The bundle (its ``.model`` runs) or a bare network.
    x : np.ndarray or torch.Tensor
        Normalised inputs, float, shape (N, T_in, H, W, C_in).
    batch_size : int, optional
        Samples per call (default ``DEFAULT_BATCH_SIZE``).
    device : str or torch.device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:1"``...
    progress : bool or None
        Show a tqdm bar over batches; None shows it only on a terminal.

    Returns
    -------
    np.ndarray
        float32 (N, T_out, H, W, C_out) on the CPU.

    Raises
    ------
    ModelTypeError
        ``forecaster`` holds no torch module.
    ShapeError
        From the model, when ``x`` does not fit it.

    Examples
    --------
    >>> net = torch.nn.Identity()                                   # doctest: +SKIP
    >>> predict_tensor(net, np.zeros((3, 2, 4, 4, 1), "f4"), batch_size=2).shape  # doctest: +SKIP
    (3, 2, 4, 4, 1)
    """
    import torch
    from .progress import tqdm_class

    tqdm = tqdm_class()

    from .device import resolve_device

    module = _torch_module(forecaster)
    dev = resolve_device(device)
    n = int(x.shape[0])
    bs = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
    if bs < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size}.")
    was_training = module.training
    module.eval()
    module.to(dev)
    chunks: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            starts = range(0, n, bs)
            for start in tqdm(starts, total=len(starts), desc="forecast", unit="batch",
                              disable=(None if progress is None else not progress)):
                xb = x[start:start + bs]
                xb = xb if isinstance(xb, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(xb))
                yb = module(xb.to(device=dev, dtype=torch.float32))
                chunks.append(yb.detach().to("cpu", torch.float32).numpy())
    finally:
        if was_training:
            module.train()
    if not chunks:
        raise DataError("predict_tensor got no samples (N = 0); expected at least one input window.")
    return np.concatenate(chunks, axis=0)


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
def check_forecaster(model: Any) -> Forecaster:
    """Return ``model`` if it is a :class:`~xearthformer.Forecaster`, else raise a
    :class:`~xearthformer.errors.ModelTypeError` that says how to get one."""
    from .checkpoint import Forecaster

    if isinstance(model, Forecaster):
        return model
    try:
        import torch

        is_module = isinstance(model, torch.nn.Module)
    except ImportError:  # pragma: no cover
        is_module = False
    if is_module:
        raise ModelTypeError(
            f"got a bare torch module ({type(model).__name__}); forecasting labelled data needs "
            "a xearthformer.Forecaster, which also knows the variables, normalisation, grid and "
            "time step. Wrap it: xearthformer.Forecaster(model, spec) with spec from "
            "xearthformer.layout.fit_spec(...), or load a bundle: xearthformer.load('model.xef'). "
            "For raw tensors use xearthformer.forecast.predict_tensor(model, x)."
        )
    raise ModelTypeError(
        f"expected a xearthformer.Forecaster, got {type(model).__name__}. Train one with "
        "xearthformer.train(...) or load one with xearthformer.load('model.xef')."
    )


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


def _is_lazy(obj: xr.Dataset | xr.DataArray, names: Sequence[Hashable]) -> bool:
    if isinstance(obj, xr.DataArray):
        return obj.chunks is not None
    return any(obj[n].chunks is not None for n in names if n in obj.data_vars)


def forecast(
    obj: xr.Dataset | xr.DataArray,
    model: Forecaster,
    init: Any = None,
    lead: int | None = None,
    batch_size: int | None = None,
    device: Any = "auto",
    *,
    chunk: int | None = None,
    progress: bool | None = None,
    source: str | None = None,
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
        Samples per model call (default ``DEFAULT_BATCH_SIZE``).
    device : str or torch.device
        ``"auto"`` uses CUDA when available (on each Dask worker: that worker's device).
    chunk : int, optional
        Lazy input only: init times per output chunk. Default: one output chunk per input
        time chunk (each task then reads its own chunk plus the context tail of the one
        before).
    progress : bool or None
        Eager runs: progress bar over batches (None: on a terminal). Lazy runs report
        through Dask's diagnostics (``dask.diagnostics.ProgressBar``, the dashboard).
    source : str, optional
        Global ``source`` attribute (default names xearthformer and its version).

    Returns
    -------
    xr.Dataset
        CF-1.8 forecast (see :func:`xearthformer.cf.to_cf`): one variable per target, dims
        ``(init_time, lead_time, ..., y, x)``, 2-D ``valid_time``; chunked over ``init_time``
        when ``obj`` is Dask-backed, and then nothing is computed until asked.

    Raises
    ------
    ModelTypeError
        ``model`` is not a Forecaster.
    ConfigError
        ``lead`` out of range.
    DataError
        From :mod:`xearthformer.layout` (missing variables, wrong grid or step, no context).

    Examples
    --------
    >>> fc = forecast(sst, model, init=slice("2009", "2010"))        # doctest: +SKIP
    >>> fc = sst.chunk(time=24).earthformer.forecast(model)         # lazy  # doctest: +SKIP
    """
    from . import layout

    fc = check_forecaster(model)
    n_lead = _n_leads(lead, fc)
    inits = layout.init_times(obj, fc.spec, init)
    if len(inits) == 0:
        raise DataError(f"no init time selected by init={init!r}; expected at least one.")
    if _is_lazy(obj, fc.spec.variables):
        out = _forecast_lazy(obj, fc, inits, n_lead, batch_size, device, chunk)
    else:
        x = layout.encode_inputs(obj, fc.spec, inits)
        y = predict_tensor(fc, x, batch_size=batch_size, device=device, progress=progress)
        out = layout.decode(y[:, :n_lead], fc.spec, inits, lead=n_lead, like=obj)
    return cf.to_cf(out, source=source, like=obj,
                    history=f"forecast with xearthformer.forecast (lead {n_lead} steps of {fc.spec.step})")


# -- the lazy path -----------------------------------------------------------------------------
def find_time_dim(obj: xr.Dataset | xr.DataArray) -> str:
    """Name of ``obj``'s time dimension (found with :func:`xearthformer.layout.find_axes`)."""
    from . import layout

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
                   n_lead: int, batch_size: int | None, device: Any,
                   dims: dict[Hashable, tuple[Hashable, ...]]) -> dict[Hashable, np.ndarray]:
    """One Dask task: the context windows of ``inits`` (already loaded) -> decoded values."""
    from . import layout

    _configure_worker_threads()
    data = _join_lazy(skeleton, arrays, layout_of)
    x = layout.encode_inputs(data, forecaster.spec, inits)
    y = predict_tensor(forecaster, x, batch_size=batch_size, device=device)
    out = layout.decode(y[:, :n_lead], forecaster.spec, inits, lead=n_lead, like=data)
    return {name: np.asarray(out[name].transpose(*d).values) for name, d in dims.items()}


def _forecast_lazy(obj: xr.Dataset | xr.DataArray, fc: Forecaster, inits: np.ndarray, n_lead: int,
                   batch_size: int | None, device: Any, chunk: int | None) -> xr.Dataset:
    import dask
    import dask.array as da

    from . import layout

    spec = fc.spec
    if isinstance(obj, xr.DataArray):
        name = spec.variables[0] if len(spec.variables) == 1 else obj.name
        obj = obj.to_dataset(name=name)
    time_dim = find_time_dim(obj)
    data = obj[spec.variables]
    # structure (names, dims, coords, attrs) from one init decoded from zeros
    n_samples = int(np.prod([v.size for v in layout.sample_dims(data, spec).values()] or [1]))
    zeros = np.zeros((n_samples, n_lead, *spec.grid.shape, spec.n_targets), np.float32)
    template = layout.decode(zeros, spec, inits[:1], lead=n_lead, like=data)
    dims = {name: template[name].dims for name in template.data_vars}

    token = uuid.uuid4().hex
    # one graph key holds the bundle: distributed sends it to each worker once
    bundle = dask.delayed(fc, name=f"xearthformer-bundle-{token}")
    groups = _init_groups(data, time_dim, inits, chunk)
    parts: dict[Hashable, list[Any]] = {name: [] for name in dims}
    for i, group in enumerate(groups):
        window = data.isel({time_dim: layout.required_time_slice(data, spec, group)})
        skeleton, arrays = _split_lazy(window)
        layout_of = {n: (window[n].dims, dict(window[n].attrs), n in window.coords) for n in arrays}
        task = dask.delayed(_predict_chunk)(skeleton, arrays, layout_of, bundle, group, n_lead,
                                            batch_size, device, dims,
                                            dask_key_name=f"xearthformer-forecast-{token}-{i}")
        for name, d in dims.items():
            shape = tuple(len(group) if dim == "init_time" else template.sizes[dim] for dim in d)
            parts[name].append(da.from_delayed(task[name], shape=shape, dtype=template[name].dtype,
                                               name=f"xearthformer-{name}-{token}-{i}"))

    coords = layout.time_coords(inits, spec.step, n_lead)
    base = template.drop_vars([c for c in template.coords if "init_time" in template[c].dims])
    out = xr.Dataset(coords=base.coords, attrs=template.attrs)
    out = out.assign_coords(init_time=coords["init_time"])
    for name, d in dims.items():
        out[name] = xr.Variable(d, da.concatenate(parts[name], axis=d.index("init_time")),
                                template[name].attrs)
    return out.assign_coords(valid_time=coords["valid_time"])
