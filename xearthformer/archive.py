"""Forecasting a whole archive into Zarr (or one NetCDF file per chunk), resumably and without
touching anyone else's files, and the ``xearthformer forecast`` command that drives it.

:func:`write_forecast` computes a (lazy) forecast unit by unit (an init-time chunk, and for
ensembles a block of members: one unit per Dask chunk) and records finished units in the store,
so a killed run picks up where it stopped. :func:`add_forecast_arguments` /
:func:`run_forecast` are the command line (see :mod:`xearthformer.cli`); it opens its input with
:func:`xearthformer.data.files.open_archive`.

How existing data are protected:

* A store (Zarr) or NetCDF output folder this tool wrote carries a **record** of what it holds
  (its marker: the ``xearthformer_store`` attribute of the Zarr group, the file
  ``.xearthformer-store.json`` in a NetCDF folder): the bundle's ``bundle_sha256``, an input
  fingerprint (file names, sizes, modification times and a hash of the time coordinate), the
  init times, lead, chunking, variables and, for ensembles, the members, seed and every
  sampling option. Finished units are listed as ``[init start, init stop]`` (plus
  ``[member start, member stop]`` for ensembles) in ``xearthformer_done``; a NetCDF file exists
  only once complete (written to a temporary name, then renamed).
* Resuming compares the record with the requested forecast and refuses any difference, naming
  it (another model, a changed input file, other members...): a store never mixes two forecasts.
* ``overwrite`` replaces only a store with the marker; anything else at the output path (a
  folder of other files, a plain file) is refused and left as it is. The old store is first
  renamed aside (``<output>.replaced-<id>``) and removed only after the new one is complete.
* An output that equals, contains or lies inside an input is refused.

>>> fc = forecast(open_archive(["a.nc", "b.nc"]), model, chunk=8)  # doctest: +SKIP
>>> print(write_forecast(fc, "out.zarr"))                          # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from .data.files import input_paths, open_archive
from .errors import ConfigError, DataError
from .forecast import DIGEST_ATTR, ensemble, find_time_dim, forecast
from .layout import format_time

#: group attribute of a Zarr forecast store: finished units, [init start, init stop] (plus
#: [member start, member stop] for ensembles), positions along the dims
DONE_ATTR = "xearthformer_done"
#: group attribute of a Zarr store (JSON text): the record of what the store holds; its marker
STORE_ATTR = "xearthformer_store"
#: the marker and record of a NetCDF output folder
MARKER_FILE = ".xearthformer-store.json"
STORE_KIND = "xearthformer forecast store"
STORE_VERSION = 1
_REPLACED = ".replaced-"


@dataclass
class WriteSummary:
    """What :func:`write_forecast` did.

    Examples
    --------
    >>> summary = write_forecast(fc, "out.zarr")                      # doctest: +SKIP
    >>> print(WriteSummary("out.zarr", inits_done=120, inits_skipped=0, chunks_done=15,
    ...                    chunks_skipped=0, seconds=42.0))
    120 init times forecast (15 chunks), 0 skipped as already done (0 chunks), in 42.0 s -> out.zarr
    """

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


# ----------------------------------------------------------------------------------------------
# units of work
# ----------------------------------------------------------------------------------------------
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


def _slices(sizes: Sequence[int]) -> list[slice]:
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


@dataclass(frozen=True)
class _Unit:
    """One unit of work: init-time positions, and member positions for ensembles."""

    init: slice
    member: slice | None = None

    @property
    def done(self) -> list[int]:
        m = [] if self.member is None else [self.member.start, self.member.stop]
        return [self.init.start, self.init.stop, *m]

    def region(self) -> dict[str, slice]:
        return {"init_time": self.init} if self.member is None else \
            {"init_time": self.init, "member": self.member}


def _units(fc: xr.Dataset) -> list[_Unit]:
    inits = _slices(fc.chunksizes["init_time"])
    if "member" not in fc.dims:
        return [_Unit(s) for s in inits]
    members = _slices(fc.chunksizes["member"])
    return [_Unit(s, m) for s in inits for m in members]


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


# ----------------------------------------------------------------------------------------------
# the record: what a store holds
# ----------------------------------------------------------------------------------------------
def _times_sha256(values: Any) -> str:
    v = np.asarray(values)
    if v.dtype.kind == "M":
        data = v.astype("datetime64[ns]").view(np.int64).tobytes()
    else:
        data = "\n".join(format_time(t) + "|" + str(getattr(t, "calendar", "")) for t in v.ravel()).encode()
    return hashlib.sha256(data).hexdigest()


def _stat(path: str) -> tuple[int, int]:
    """(size, mtime in ns) of a file; of a directory (a Zarr store), its metadata files'."""
    if not os.path.isdir(path):
        st = os.stat(path)
        return int(st.st_size), int(st.st_mtime_ns)
    found = [os.path.join(path, n) for n in (".zmetadata", "zarr.json", ".zattrs", ".zgroup")
             if os.path.isfile(os.path.join(path, n))]
    stats = [os.stat(f) for f in found] or [os.stat(path)]
    return int(sum(st.st_size for st in stats)), int(max(st.st_mtime_ns for st in stats))


def input_fingerprint(paths: Sequence[str | os.PathLike[str]], ds: xr.Dataset | None = None) -> dict[str, Any]:
    """What identifies the input of a forecast: each file's name, size and modification time
    (a Zarr store: those of its metadata files) and a SHA-256 of the time coordinate of the
    opened data (``ds``).

    Examples
    --------
    >>> input_fingerprint(["a.nc"], ds)["files"]                      # doctest: +SKIP
    [['a.nc', 81234, 1764000000000000000]]
    """
    files = []
    for p in paths:
        p = os.fspath(p)
        size, mtime = _stat(p)
        files.append([os.path.basename(os.path.normpath(p)), size, mtime])
    out: dict[str, Any] = {"files": files}
    if ds is not None:
        times = ds[find_time_dim(ds)].values
        out.update(time_sha256=_times_sha256(times), n_time=int(np.asarray(times).size))
    return out


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def store_record(fc: xr.Dataset, format: str = "zarr", inputs: Mapping[str, Any] | None = None,
                 settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The record a store of ``fc`` carries (JSON-able): bundle digest, input fingerprint
    (:func:`input_fingerprint`), variables, sizes, init times, lead, chunking, members and the
    ``settings`` that made it (seed, sampling options...)."""
    inits = fc["init_time"].values
    chunks = {"init_time": int(fc.chunksizes["init_time"][0]) if fc.chunksizes.get("init_time") else None,
              "member": int(fc.chunksizes["member"][0]) if fc.chunksizes.get("member") else None}
    record = {
        "kind": STORE_KIND,
        "version": STORE_VERSION,
        "format": format,
        "bundle_sha256": fc.attrs.get(DIGEST_ATTR),
        "variables": sorted(map(str, fc.data_vars)),
        "sizes": {str(k): int(v) for k, v in fc.sizes.items()},
        "init": {"first": format_time(inits[0]), "last": format_time(inits[-1]), "count": int(inits.size),
                 "sha256": _times_sha256(inits)},
        "lead": int(fc.sizes.get("lead_time", 0)),
        "chunks": chunks,
        "members": None if "member" not in fc.coords else [int(m) for m in fc["member"].values],
        "inputs": None if inputs is None else dict(inputs),
        "settings": dict(settings or {}),
    }
    return _jsonable(record)


_WHAT = {"bundle_sha256": "the model (bundle digest)", "inputs": "the input files",
         "variables": "the variables", "sizes": "the forecast's sizes", "init": "the init times",
         "lead": "the lead", "chunks": "the chunking (--chunk / --member-block)",
         "members": "the members", "settings": "the forecast settings", "format": "the format"}


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 70 else text[:67] + "..."


def _input_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> str:
    old, new = old or {}, new or {}
    before = {f[0]: f[1:] for f in old.get("files", [])}
    after = {f[0]: f[1:] for f in new.get("files", [])}
    notes = [f"{n} is new" for n in after if n not in before]
    notes += [f"{n} is gone" for n in before if n not in after]
    for name in before.keys() & after.keys():
        if before[name][0] != after[name][0]:
            notes.append(f"{name} changed size ({before[name][0]} -> {after[name][0]} bytes)")
        elif before[name][1] != after[name][1]:
            notes.append(f"{name} was modified since")
    if old.get("time_sha256") != new.get("time_sha256"):
        notes.append("the time coordinate differs")
    return "; ".join(sorted(notes)) or "the fingerprint differs"


def record_differences(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """What differs between a store's record and the one a forecast would write, in words."""
    out = []
    for key in sorted(set(stored) | set(wanted)):
        a, b = stored.get(key), wanted.get(key)
        if a == b:
            continue
        what = _WHAT.get(key, key)
        if key == "inputs":
            out.append(f"{what}: {_input_changes(a, b)}")
        elif key == "bundle_sha256":
            out.append(f"{what}: the store holds {str(a)[:12]}..., this run uses {str(b)[:12]}...")
        elif key == "settings" and isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    out.append(f"{what}: {k} {_short(a.get(k))} in the store, {_short(b.get(k))} now")
        else:
            out.append(f"{what}: {_short(a)} in the store, {_short(b)} now")
    return out


# ----------------------------------------------------------------------------------------------
# what is at the output path
# ----------------------------------------------------------------------------------------------
def _zarr_attrs(path: str) -> dict[str, Any] | None:
    import zarr

    try:
        return dict(zarr.open_group(path, mode="r").attrs)
    except Exception:  # noqa: BLE001 - not a (readable) Zarr group: not ours
        return None


def read_store_record(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The record of the xearthformer store (Zarr) or NetCDF output folder at ``path``; None
    when ``path`` holds no such marker. A store written before records existed gives
    ``{"kind": STORE_KIND, "version": 0}``."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return None
    marker = os.path.join(path, MARKER_FILE)
    if os.path.isfile(marker):
        try:
            with open(marker) as f:
                record = json.load(f)
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("kind") == STORE_KIND else None
    attrs = _zarr_attrs(path)
    if attrs is None:
        return None
    if STORE_ATTR in attrs:
        try:
            record = json.loads(attrs[STORE_ATTR])
        except (TypeError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("kind") == STORE_KIND else None
    if DONE_ATTR in attrs:  # written by an xearthformer before records
        return {"kind": STORE_KIND, "version": 0, "format": "zarr"}
    return None


def _refuse_overlap(path: str, inputs: Sequence[str]) -> None:
    out = os.path.realpath(path)
    for p in inputs:
        real = os.path.realpath(os.fspath(p))
        contains = real.startswith(out.rstrip(os.sep) + os.sep)
        inside = out.startswith(real.rstrip(os.sep) + os.sep)
        if out == real or contains or inside:
            how = "is" if out == real else ("contains" if contains else "lies inside")
            raise ConfigError(
                f"--output {path} {how} the input {p}: writing (or --overwrite) there could destroy "
                "the input. Fix: choose an output outside the inputs, e.g. a sibling folder.")


def _refuse_file_parent(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise ConfigError(f"--output {path} lies under {parent}, which is a file, not a folder. "
                          "Fix: choose an output path in a folder.")


def _move_aside(path: str) -> str:
    aside = f"{path.rstrip('/')}{_REPLACED}{uuid.uuid4().hex[:8]}"
    os.replace(path, aside)
    return aside


def _remove_replaced(path: str) -> None:
    """Delete stores that an ``overwrite`` moved aside (only ours: they carry the marker)."""
    import glob

    for old in glob.glob(glob.escape(path.rstrip("/")) + _REPLACED + "*"):
        if read_store_record(old) is not None:
            shutil.rmtree(old, ignore_errors=True)


def _remove_partials(path: str) -> None:
    """Delete temporary files a killed writer left behind (zarr and we write ``*.partial``
    files and rename them into place, so these are never part of the data)."""
    for root, _, files in os.walk(path):
        for name in files:
            if name.endswith(".partial") or ".partial-" in name:
                os.remove(os.path.join(root, name))


def _prepare(path: str, format: str, record: dict[str, Any], overwrite: bool) -> str | None:
    """Check what is at ``path``: nothing (None), our store to resume (None) or to replace
    (moved aside; returns where), or anything else (refused)."""
    if os.path.isfile(path) or os.path.islink(path) and not os.path.isdir(path):
        raise DataError(
            f"--output {path} is an existing file, not a forecast store; it is never replaced. "
            "Fix: choose another --output.")
    if not os.path.isdir(path) or not os.listdir(path):
        return None
    stored = read_store_record(path)
    if stored is None:
        raise DataError(
            f"{path} exists but is not an xearthformer forecast store (no {STORE_ATTR!r} marker"
            f"{' file ' + MARKER_FILE if format == 'netcdf' else ''}): it is left as it is, and "
            "--overwrite replaces only stores this tool wrote. Fix: choose a new --output.")
    if stored.get("format", "zarr") != format:
        raise DataError(f"{path} is an xearthformer {stored.get('format')} store, but --format {format} "
                        "was asked for. Fix: choose a new --output, or the store's format.")
    if overwrite:
        return _move_aside(path)
    if stored.get("version", 0) < 1:
        raise DataError(
            f"{path} was written by an older xearthformer that kept no record of what it holds, so "
            "resuming cannot check that it is the same forecast. Fix: --overwrite (overwrite=True) "
            "to start over, or a new --output.")
    diffs = record_differences(stored, record)
    if diffs:
        raise DataError(
            f"{path} holds a different forecast than the one requested: " + "; ".join(diffs)
            + ". A store holds one forecast: resume with the same model, inputs and options, or "
            "start over with --overwrite (overwrite=True), or choose a new --output.")
    return None


def _create_zarr(path: str, fc: xr.Dataset, record: dict[str, Any]) -> None:
    """Write metadata + coordinates (+ the record) to a temporary store, then rename it into
    place, so a kill during creation never leaves a half-made store at ``path``."""
    for dim in ("init_time", "member"):
        sizes = fc.chunksizes.get(dim)
        if sizes and (len(set(sizes[:-1])) > 1 or sizes[-1] > sizes[0]):
            fix = "chunk=N (CLI: --chunk N)" if dim == "init_time" else "member_chunk=B (CLI: --member-block B)"
            raise DataError(f"Zarr needs regular {dim} chunks; got sizes {sizes}. Forecast with {fix}.")
    tmp = f"{path.rstrip('/')}.partial-{uuid.uuid4().hex[:8]}"
    template = fc.copy()
    template.attrs[DONE_ATTR] = []
    template.attrs[STORE_ATTR] = json.dumps(record, sort_keys=True)
    with _quiet_zarr():
        template.to_zarr(tmp, mode="w-", compute=False)
    if os.path.isdir(path):  # an empty folder made for it
        os.rmdir(path)
    os.replace(tmp, path)


def _create_netcdf_folder(path: str, record: dict[str, Any]) -> None:
    os.makedirs(path, exist_ok=True)
    marker = os.path.join(path, MARKER_FILE)
    if not os.path.exists(marker):
        tmp = f"{marker}.partial-{uuid.uuid4().hex[:8]}"
        with open(tmp, "w") as f:
            json.dump(record, f, sort_keys=True, indent=1)
        os.replace(tmp, marker)


def _mark_done(path: str, done: list[list[int]]) -> None:
    import zarr

    zarr.open_group(path, mode="r+").attrs[DONE_ATTR] = sorted(done)


def _netcdf_name(path: str, fc: xr.Dataset, unit: _Unit) -> str:
    name = f"forecast_{format_time(fc['init_time'].values[unit.init.start], compact=True)}"
    if unit.member is not None:
        members = fc["member"].values
        name += f"_members{int(members[unit.member.start]):04d}-{int(members[unit.member.stop - 1]):04d}"
    return os.path.join(path, name + ".nc")


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
    inputs: Sequence[str | os.PathLike[str]] | None = None,
    fingerprint: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> WriteSummary:
    """Write a (lazy) forecast unit by unit, resumably, without touching others' data.

    A unit is one init-time chunk of ``fc`` (for ensembles: one init-time chunk x one member
    chunk, see ``member_chunk`` of :func:`xearthformer.forecast.ensemble`), so host memory holds
    one unit at a time. Zarr: a template store (metadata, coordinates and the record) is created
    first, then every unit is computed and written into its region; only after its data is
    written is the unit recorded in the store's ``xearthformer_done`` attribute. Killed and
    restarted with the same forecast, recorded units are skipped; a unit interrupted mid-write
    is redone, so the final data are identical to an uninterrupted run. NetCDF: ``path`` is a
    folder with one file per unit, written to a temporary name and renamed into place (atomic),
    so a file that exists is complete. See the module docstring for the record and the rules
    that protect existing data.

    Parameters
    ----------
    fc : xr.Dataset
        A forecast from :func:`forecast`/:func:`ensemble`, normally lazy.
    path : path-like
        Zarr store, or folder for NetCDF files (local file system).
    format : {"zarr", "netcdf"}
    overwrite : bool
        Replace an existing store of this tool instead of resuming it (moved aside, removed
        once the new one is complete). Anything else at ``path`` is refused either way.
    progress : bool or None
        Progress bar over units (None: on a terminal).
    client : distributed.Client, optional
        Compute units on this cluster, all submitted at once.
    inputs : sequence of path-like, optional
        The input files: an output equal to, containing or inside one is refused; without
        ``fingerprint`` they are fingerprinted for the record (names, sizes, times).
    fingerprint : mapping, optional
        The input fingerprint to record (:func:`input_fingerprint`, with the time hash).
    settings : mapping, optional
        Further settings the forecast depends on (seed, sampling options...), recorded and
        compared on resume.

    Returns
    -------
    WriteSummary

    Raises
    ------
    DataError
        ``path`` holds something else than a store of this tool, a store of a different
        forecast (the message names what differs), or irregular chunks for Zarr.
    ConfigError
        ``path`` equals, contains or lies inside an input, or lies under a file.

    Examples
    --------
    >>> fc = forecast(archive, model, chunk=8)                      # lazy  # doctest: +SKIP
    >>> print(write_forecast(fc, "out.zarr", inputs=files))         # doctest: +SKIP
    120 init times forecast (15 chunks), 0 skipped ... -> out.zarr
    """
    import glob

    from .progress import progress_bar

    if format not in ("zarr", "netcdf"):
        raise ConfigError(f"format must be 'zarr' or 'netcdf', got {format!r}.")
    path = os.fspath(path)
    t0 = time.perf_counter()
    if inputs is not None:
        _refuse_overlap(path, [os.fspath(p) for p in inputs])
    _refuse_file_parent(path)
    fc = _for_writing(fc)
    units = _units(fc)
    if fingerprint is None and inputs is not None:
        fingerprint = input_fingerprint(inputs)
    record = store_record(fc, format, fingerprint, settings)
    if format == "zarr":
        for stale in glob.glob(glob.escape(path.rstrip("/")) + ".partial-*"):
            if read_store_record(stale) is not None:
                shutil.rmtree(stale, ignore_errors=True)       # a template a kill interrupted
    _prepare(path, format, record, overwrite)  # resume, move an old store aside, or refuse

    if format == "zarr":
        if not os.path.isdir(path) or not os.listdir(path):
            _create_zarr(path, fc, record)
        _remove_partials(path)
        done = [list(map(int, d)) for d in (_zarr_attrs(path) or {}).get(DONE_ATTR, [])]
        finished = {tuple(d) for d in done}
        pending = [i for i, u in enumerate(units) if tuple(u.done) not in finished]
    else:
        _create_netcdf_folder(path, record)
        _remove_partials(path)
        names = [_netcdf_name(path, fc, u) for u in units]
        pending = [i for i, name in enumerate(names) if not os.path.exists(name)]

    skipped = len(units) - len(pending)
    pieces = {i: fc.isel(units[i].region()) for i in pending}
    bar = progress_bar(total=len(units), progress=progress, initial=skipped, unit="chunk",
                       desc="forecast")
    try:
        for i, piece in _compute_pieces(pieces, client):
            if format == "zarr":
                with _quiet_zarr():
                    _data_only(piece).to_zarr(path, region=units[i].region(), mode="r+")
                done.append(units[i].done)
                _mark_done(path, done)
            else:
                tmp = f"{names[i][:-3]}.partial-{uuid.uuid4().hex[:8]}.nc"
                piece.to_netcdf(tmp)
                os.replace(tmp, names[i])
            bar.update(1)
    finally:
        bar.close()
    # the new store is complete: now the one it replaced (and any a killed run left) may go
    _remove_replaced(path)
    n_done = len({t for i in pending for t in range(units[i].init.start, units[i].init.stop)})
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


def _parse_sampling(items: Sequence[str] | None) -> dict[str, Any]:
    """``["steps=20", "control={\"n\": 2}"]`` -> ``{"steps": 20, "control": {"n": 2}}``
    (values are JSON when they parse, else text).

    >>> _parse_sampling(["steps=20", "sampler=ddim"])
    {'steps': 20, 'sampler': 'ddim'}
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--sampling expects KEY=VALUE, got {item!r} (e.g. --sampling steps=20).")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def add_forecast_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``xearthformer forecast``."""
    parser.add_argument("--model", required=True, help="model bundle (.xef)")
    parser.add_argument("--input", required=True, nargs="+",
                        help="NetCDF/Zarr archive: glob pattern(s) or paths, opened lazily")
    parser.add_argument("--output", required=True,
                        help="Zarr store, or directory of NetCDF files with --format netcdf (never "
                             "an input; an existing one is resumed, or replaced with --overwrite "
                             "only when this tool wrote it)")
    parser.add_argument("--format", choices=("zarr", "netcdf"), default="zarr",
                        help="zarr (default): one store; netcdf: OUTPUT is a directory with one "
                             "file per init-time chunk (and member block)")
    parser.add_argument("--init", default=None,
                        help="init times: '2009', '2009-01..2010-12' (or 2009:2010), or a comma list")
    parser.add_argument("--lead", type=int, default=None, help="lead steps (default: the model's)")
    parser.add_argument("--chunk", type=int, default=None,
                        help="init times per chunk (unit of work and of resuming; default: "
                             "the input's time chunk)")
    parser.add_argument("--members", type=int, default=None,
                        help="stochastic families: write an ensemble of N members (a member dim) "
                             "instead of the ensemble mean")
    parser.add_argument("--member-block", type=int, default=None,
                        help="members per unit of work (and Zarr chunk); default: as many as fit in "
                             "memory, at most all")
    parser.add_argument("--seed", type=int, default=0, help="seed of the ensemble's noise (default 0)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (stochastic families)")
    parser.add_argument("--sampler", default=None, help="sampler name (stochastic families)")
    parser.add_argument("--sampling", nargs="*", default=[], metavar="KEY=VALUE",
                        help="further sampling options of the family, values as JSON "
                             "(e.g. --sampling 'control={\"n\": 2}')")
    parser.add_argument("--range-margin", type=float, default=None,
                        help="accept inputs this many training ranges beyond the training min/max "
                             "(default 1; see xearthformer.layout.validation)")
    parser.add_argument("--batch-size", type=int, default=None, help="samples per model call")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--scheduler", default=None, help="address of a dask.distributed scheduler")
    group.add_argument("--workers", type=int, default=None,
                       help="start a local Dask cluster with N worker processes")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over instead of resuming (only a store this tool wrote is "
                             "replaced, and only once the new one is complete)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _member_block(args: argparse.Namespace, model: Any, ds: xr.Dataset, chunk: int, members: int) -> int:
    """The member block: as given, or the most members whose unit fits the memory planner
    (shared by the local workers)."""
    from .forecast import chunk_bytes
    from .layout import sample_dims
    from .memory import available_bytes, plan_batch

    samples = chunk * int(np.prod([c.size for c in sample_dims(ds, model.spec).values()] or [1]))
    lead = model.lead if args.lead is None else args.lead
    per_member = chunk_bytes(model.spec, samples, 1, lead) - chunk_bytes(model.spec, samples, 0, lead)
    share = available_bytes() // max(1, args.workers or 1)
    return plan_batch(per_member, items=members, fixed=chunk_bytes(model.spec, samples, 0, lead),
                      requested=args.member_block, available=share, setting="--member-block",
                      what="members per unit", fixes="Or: a smaller --chunk.").batch_size


def run_forecast(args: argparse.Namespace) -> int:
    """Run ``xearthformer forecast``; returns the exit code."""
    from .checkpoint import load
    from .layout.validation import DEFAULT_RANGE_MARGIN
    from .models.base import is_stochastic

    model = load(args.model, device="cpu")
    paths = input_paths(args.input)
    _refuse_overlap(args.output, paths)  # before anything is opened or computed
    ds = open_archive(paths)
    sampling = _parse_sampling(args.sampling)
    sampling.update({k: v for k, v in (("steps", args.steps), ("sampler", args.sampler)) if v is not None})
    margin = DEFAULT_RANGE_MARGIN if args.range_margin is None else args.range_margin
    if args.members is not None and not is_stochastic(model):
        raise ConfigError(f"--members {args.members}: {type(model.model).__name__} is deterministic (one "
                          "forecast per input, no ensemble); drop --members.")
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
        common = dict(init=_parse_init(args.init), lead=args.lead, batch_size=args.batch_size,
                      device=args.device, chunk=chunk, range_margin=margin,
                      source=f"xearthformer forecast with {os.path.basename(args.model)}")
        settings: dict[str, Any] = {}  # what the numbers depend on (not batch, device, margin)
        if args.members is not None:
            block = _member_block(args, model, ds, chunk, args.members)
            fc = ensemble(ds, model, members=args.members, seed=args.seed, member_chunk=block,
                          **common, **sampling)
            settings.update(seed=args.seed, sampling=sampling)
        else:
            fc = forecast(ds, model, **common, **sampling)
            if is_stochastic(model):  # the mean of members drawn with this seed
                settings.update(seed=0, sampling=sampling)
        summary = write_forecast(fc, args.output, args.format, overwrite=args.overwrite,
                                 progress=False if args.no_progress else None, client=client,
                                 inputs=paths, fingerprint=input_fingerprint(paths, ds),
                                 settings=settings)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    print(summary)
    return 0
