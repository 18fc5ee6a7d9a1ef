"""Forecasting a whole archive into Zarr (or one NetCDF file per chunk), resumably, and the
``xearthformer forecast`` command that drives it.

:func:`write_forecast` computes a (lazy) forecast from :func:`xearthformer.forecast.forecast`
init-time chunk by init-time chunk and records finished chunks in the store, so a killed run
picks up where it stopped. :func:`add_forecast_arguments` / :func:`run_forecast` are the
command line (see :mod:`xearthformer.cli`); it opens its input with
:func:`xearthformer.data.files.open_archive`.

>>> fc = forecast(open_archive(["a.nc", "b.nc"]), model, chunk=8)  # doctest: +SKIP
>>> print(write_forecast(fc, "out.zarr"))                          # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from .data.files import input_paths, open_archive
from .errors import ConfigError, DataError
from .forecast import find_time_dim, forecast
from .layout import format_time

#: group attribute of a Zarr forecast store: [start, stop) init-time index ranges written
DONE_ATTR = "xearthformer_done"


@dataclass
class WriteSummary:
    """What :func:`write_forecast` did."""

    path: str
    inits_done: int
    inits_skipped: int
    chunks_done: int
    chunks_skipped: int
    seconds: float

    def __str__(self) -> str:
        return (f"{self.inits_done} init times forecast ({self.chunks_done} chunks), "
                f"{self.inits_skipped} skipped as already done ({self.chunks_skipped} chunks), "
                f"in {self.seconds:.1f} s -> {self.path}")


def _for_writing(fc: xr.Dataset) -> xr.Dataset:
    """``fc`` with Dask data variables (one chunk when eager), their zarr chunks those of
    Dask, and coordinates loaded (the template writes them; region writes never do)."""
    fc = fc.copy()
    for name in fc.data_vars:
        if fc[name].chunks is None:
            fc[name] = fc[name].chunk()
        for key in ("chunks", "preferred_chunks"):
            fc[name].encoding.pop(key, None)
    lazy = [n for n in fc.coords if fc[n].chunks is not None]
    return fc.assign_coords({n: fc[n].compute() for n in lazy}) if lazy else fc


def _chunk_slices(fc: xr.Dataset) -> list[slice]:
    sizes = fc.chunksizes["init_time"]
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _data_only(piece: xr.Dataset) -> xr.Dataset:
    """Data variables of a region write (coordinates are in the template already)."""
    return piece.drop_vars(list(piece.coords)).reset_coords(drop=True)


@contextlib.contextmanager
def _quiet_zarr() -> Iterator[None]:
    """Silence zarr's note that consolidated metadata is not yet in the v3 spec (xarray
    writes it by default and reads it first)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        yield


def _zarr_attrs(path: str) -> dict[str, Any]:
    import zarr

    return dict(zarr.open_group(path, mode="r").attrs)


def _mark_done(path: str, done: list[list[int]]) -> None:
    import zarr

    zarr.open_group(path, mode="r+").attrs[DONE_ATTR] = sorted(done)


def _check_store(path: str, fc: xr.Dataset) -> list[list[int]]:
    """Validate an existing store against ``fc``; return its done ranges."""
    attrs = _zarr_attrs(path)
    if DONE_ATTR not in attrs:
        raise DataError(
            f"{path} exists but is not an xearthformer forecast store (no {DONE_ATTR!r} "
            "attribute). Choose a new --output, or pass overwrite=True / --overwrite."
        )
    old = xr.open_zarr(path, decode_timedelta=True)
    same = (list(old.data_vars) == list(fc.data_vars)
            and dict(old.sizes) == dict(fc.sizes)
            and np.array_equal(old["init_time"].values, fc["init_time"].values)
            and np.array_equal(old["lead_time"].values, fc["lead_time"].values))
    if same:
        same = all(old[v].encoding.get("chunks", (None,))[old[v].dims.index("init_time")]
                   == fc.chunksizes["init_time"][0] for v in fc.data_vars)
    if not same:
        raise DataError(
            f"{path} holds a different forecast (variables {list(old.data_vars)}, sizes "
            f"{dict(old.sizes)}) than the one requested ({list(fc.data_vars)}, {dict(fc.sizes)}, "
            "or a different init-time chunking). Resume with the same --input/--init/--lead/"
            "--chunk, or choose a new --output / --overwrite."
        )
    return [list(map(int, r)) for r in attrs[DONE_ATTR]]


def _remove_partials(path: str) -> None:
    """Delete temporary files a killed writer left behind (zarr and we write ``*.partial``
    files and rename them into place, so these are never part of the data)."""
    for root, _, files in os.walk(path):
        for name in files:
            if name.endswith(".partial") or ".partial-" in name:
                os.remove(os.path.join(root, name))


def _create_store(path: str, fc: xr.Dataset) -> None:
    """Write metadata + coordinates to a temporary store, then rename it into place, so a
    kill during creation never leaves a half-made store at ``path``."""
    sizes = fc.chunksizes["init_time"]
    if len(set(sizes[:-1])) > 1 or sizes[-1] > sizes[0]:
        raise DataError(
            f"Zarr needs regular init-time chunks; got sizes {sizes}. Forecast with "
            "chunk=N (CLI: --chunk N)."
        )
    tmp = f"{path.rstrip('/')}.partial-{uuid.uuid4().hex[:8]}"
    template = fc.copy()
    template.attrs[DONE_ATTR] = []
    with _quiet_zarr():
        template.to_zarr(tmp, mode="w-", compute=False)
    os.replace(tmp, path)


def _compute_pieces(pieces: dict[int, xr.Dataset], client: Any) -> Iterable[tuple[int, xr.Dataset]]:
    """Yield (index, computed piece) as pieces finish: on ``client`` all at once (one graph,
    so the bundle travels once per worker), else one after the other."""
    if client is None:
        for i, piece in pieces.items():
            yield i, piece.compute()
        return
    from distributed import as_completed

    order = list(pieces)
    futures = client.compute([pieces[i] for i in order])
    index = {f.key: i for f, i in zip(futures, order)}
    for future in as_completed(futures):
        result = future.result()
        yield index[future.key], result
        future.release()


def write_forecast(
    fc: xr.Dataset,
    path: str | os.PathLike[str],
    format: str = "zarr",
    *,
    overwrite: bool = False,
    progress: bool | None = None,
    client: Any = None,
) -> WriteSummary:
    """Write a (lazy) forecast init-time chunk by init-time chunk, resumably.

    Zarr: a template store (metadata + coordinates) is created first, then every chunk is
    computed and written into its region; only after its data is written is the chunk
    recorded in the store's ``xearthformer_done`` attribute. Killed and restarted with the
    same forecast, chunks already recorded are skipped; a chunk interrupted mid-write is
    simply redone, so the final data are identical to an uninterrupted run.
    NetCDF: ``path`` is a directory with one file per chunk, written to a temporary name and
    renamed into place (atomic), so a file that exists is complete.

    Parameters
    ----------
    fc : xr.Dataset
        A forecast from :func:`forecast`, normally lazy; its ``init_time`` chunks are the
        units of work (regular chunks for Zarr).
    path : path-like
        Zarr store, or directory for NetCDF files (local file system).
    format : {"zarr", "netcdf"}
    overwrite : bool
        Delete an existing store/directory first instead of resuming it.
    progress : bool or None
        tqdm bar over chunks (None: on a terminal).
    client : distributed.Client, optional
        Compute chunks on this cluster, all submitted at once.

    Returns
    -------
    WriteSummary

    Raises
    ------
    DataError
        An existing store holds a different forecast, or irregular chunks for Zarr.

    Examples
    --------
    >>> fc = forecast(archive, model, chunk=8)                      # lazy  # doctest: +SKIP
    >>> print(write_forecast(fc, "out.zarr"))                       # doctest: +SKIP
    120 init times forecast (15 chunks), 0 skipped ... -> out.zarr
    """
    import glob
    import shutil

    from .progress import progress_bar

    if format not in ("zarr", "netcdf"):
        raise ConfigError(f"format must be 'zarr' or 'netcdf', got {format!r}.")
    path = os.fspath(path)
    t0 = time.perf_counter()
    if overwrite and os.path.exists(path):
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    fc = _for_writing(fc)
    slices = _chunk_slices(fc)

    if format == "zarr":
        for stale in glob.glob(glob.escape(path.rstrip("/")) + ".partial-*"):
            shutil.rmtree(stale, ignore_errors=True)       # a template a kill interrupted
        if not os.path.exists(path):
            _create_store(path, fc)
        done = _check_store(path, fc)
        _remove_partials(path)
        finished = {(r[0], r[1]) for r in done}
        pending = [i for i, s in enumerate(slices) if (s.start, s.stop) not in finished]
    else:
        os.makedirs(path, exist_ok=True)
        _remove_partials(path)
        names = [os.path.join(path, f"forecast_{format_time(fc['init_time'].values[s.start], compact=True)}.nc")
                 for s in slices]
        pending = [i for i, name in enumerate(names) if not os.path.exists(name)]

    skipped = len(slices) - len(pending)
    pieces = {i: fc.isel(init_time=slices[i]) for i in pending}
    bar = progress_bar(total=len(slices), progress=progress, initial=skipped, unit="chunk",
                       desc="forecast")
    try:
        for i, piece in _compute_pieces(pieces, client):
            if format == "zarr":
                with _quiet_zarr():
                    _data_only(piece).to_zarr(path, region={"init_time": slices[i]}, mode="r+")
                done.append([slices[i].start, slices[i].stop])
                _mark_done(path, done)
            else:
                tmp = f"{names[i][:-3]}.partial-{uuid.uuid4().hex[:8]}.nc"
                piece.to_netcdf(tmp)
                os.replace(tmp, names[i])
            bar.update(1)
    finally:
        bar.close()
    n_done = sum(slices[i].stop - slices[i].start for i in pending)
    return WriteSummary(path=path, inits_done=n_done, inits_skipped=fc.sizes["init_time"] - n_done,
                        chunks_done=len(pending), chunks_skipped=skipped,
                        seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
def _parse_init(text: str | None) -> Any:
    """``"2009"`` -> label; ``"2009..2010"`` or ``"2009:2010"`` -> slice; ``"a,b"`` -> list.

    >>> _parse_init("2009-01..2010-12")
    slice('2009-01', '2010-12', None)
    """
    if text is None:
        return None
    if "," in text:
        return [t.strip() for t in text.split(",") if t.strip()]
    if ".." in text:
        start, stop = text.split("..", 1)
        return slice(start or None, stop or None)
    if text.count(":") == 1 and "T" not in text and " " not in text:
        start, stop = text.split(":", 1)
        return slice(start or None, stop or None)
    return text


def add_forecast_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``xearthformer forecast``."""
    parser.add_argument("--model", required=True, help="model bundle (.xef)")
    parser.add_argument("--input", required=True, nargs="+",
                        help="NetCDF/Zarr archive: glob pattern(s) or paths, opened lazily")
    parser.add_argument("--output", required=True,
                        help="Zarr store, or directory of NetCDF files with --format netcdf")
    parser.add_argument("--format", choices=("zarr", "netcdf"), default="zarr",
                        help="zarr (default): one store; netcdf: OUTPUT is a directory with one "
                             "file per init-time chunk")
    parser.add_argument("--init", default=None,
                        help="init times: '2009', '2009-01..2010-12' (or 2009:2010), or a comma list")
    parser.add_argument("--lead", type=int, default=None, help="lead steps (default: the model's)")
    parser.add_argument("--chunk", type=int, default=None,
                        help="init times per chunk (unit of work and of resuming; default: "
                             "the input's time chunk)")
    parser.add_argument("--batch-size", type=int, default=None, help="samples per model call")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--scheduler", default=None, help="address of a dask.distributed scheduler")
    group.add_argument("--workers", type=int, default=None,
                       help="start a local Dask cluster with N worker processes")
    parser.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_forecast(args: argparse.Namespace) -> int:
    """Run ``xearthformer forecast``; returns the exit code."""
    from .checkpoint import load

    model = load(args.model, device="cpu")
    ds = open_archive(input_paths(args.input))
    client = cluster = None
    if args.scheduler or args.workers:
        from distributed import Client, LocalCluster

        if args.scheduler:
            client = Client(args.scheduler)
        else:
            cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True)
            client = Client(cluster)
    try:
        chunk = args.chunk
        if chunk is None:
            time_dim = find_time_dim(ds)
            sizes = ds.chunksizes.get(time_dim)
            chunk = int(sizes[0]) if sizes else 8
        fc = forecast(ds, model, init=_parse_init(args.init), lead=args.lead,
                      batch_size=args.batch_size, device=args.device, chunk=chunk,
                      source=f"xearthformer forecast with {os.path.basename(args.model)}")
        summary = write_forecast(fc, args.output, args.format, overwrite=args.overwrite,
                                 progress=False if args.no_progress else None, client=client)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    print(summary)
    return 0
