"""Official pretrained Earthformer weights: download on request, convert, return a Forecaster.

This is the only module of xearthformer that touches the network, and only when a user calls
:func:`pretrained` (or :func:`fetch`). Files go to a cache folder (``XEARTHFORMER_CACHE``, else
``$XDG_CACHE_HOME/xearthformer``, else ``~/.cache/xearthformer``). Downloads resume: bytes
arrive in ``<name>.part`` and an interrupted download continues with an HTTP Range request.
Once a file's SHA-256 is recorded in :data:`REGISTRY` it is checked; until then the computed
hash is reported in the Forecaster's metadata so it can be recorded.

Offline? Put the file (same name) in the cache folder by hand; the error message says where.

>>> import xearthformer as xef
>>> model = xef.pretrained("earthformer-enso")            # doctest: +SKIP
>>> fc = sst.earthformer.forecast(model)                   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, DownloadError


@dataclass(frozen=True)
class Pretrained:
    """One downloadable official checkpoint.

    Attributes
    ----------
    url : str
        Where the official README publishes it.
    sha256 : str or None
        Expected SHA-256 of the file; None until recorded (then it is not checked).
    preset : str
        Official preset it loads into (``xearthformer.models.earthformer.official.load_official(preset=...)``).
    description : str
        One line for listings and errors.
    """

    url: str
    sha256: str | None
    preset: str
    description: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_BASE = "https://earthformer.s3.amazonaws.com/pretrained_checkpoints/"
#: name -> checkpoint; URLs from the official README (amazon-science/earth-forecasting-transformer).
REGISTRY: dict[str, Pretrained] = {
    "earthformer-sevir": Pretrained(
        _BASE + "earthformer_sevir.pt", None, "sevir",
        "SEVIR VIL nowcasting: 13 frames of VIL/255 (384x384, 5 min) -> next 12 frames"),
    "earthformer-enso": Pretrained(
        _BASE + "earthformer_icarenso2021.pt", None, "enso",
        "ICAR-ENSO: 12 months of min-max-scaled SST anomaly (24x48, lon 95-330) -> next 14 months"),
}

_CHUNK = 1 << 20


def cache_dir() -> Path:
    """The download folder: ``XEARTHFORMER_CACHE``, else ``$XDG_CACHE_HOME/xearthformer``,
    else ``~/.cache/xearthformer`` (not created here).

    >>> os.environ["XEARTHFORMER_CACHE"] = "/data/xef"; str(cache_dir())   # doctest: +SKIP
    '/data/xef'
    """
    env = os.environ.get("XEARTHFORMER_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "xearthformer"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _by_hand(url: str, dest: Path) -> str:
    return (f"to install it by hand, download {url} on a machine with internet access and put it "
            f"at {dest} (or set XEARTHFORMER_CACHE to a folder that holds {dest.name})")


def _check_hash(path: Path, sha256: str | None, url: str, dest: Path) -> None:
    if sha256 is None:
        return
    found = file_sha256(path)
    if found != sha256.lower():
        path.unlink()
        raise DownloadError(
            f"SHA-256 of the file from {url} is {found}, expected {sha256}; the corrupt file was "
            f"deleted. Run again to download it afresh, or {_by_hand(url, dest)}"
        )


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    progress: bool | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial download.

    Bytes are written to ``dest + ".part"``; when it exists the request asks for the rest
    (HTTP ``Range``) and appends, or starts again if the server ignores ranges. The file is
    renamed to ``dest`` only when complete and (when ``sha256`` is given) its hash matches.

    Parameters
    ----------
    url
        http(s) or file URL.
    dest
        Final path; its folder is created.
    sha256
        Expected hex SHA-256, or None to skip the check.
    progress
        Show a tqdm bar; None shows it only on a terminal.
    timeout
        Seconds to wait for the server on connect and on each read.

    Returns
    -------
    pathlib.Path
        ``dest``.

    Raises
    ------
    DownloadError
        Offline/unreachable (the message says where to put the file by hand), HTTP error,
        interrupted transfer (run again to resume), or hash mismatch (the file is deleted).

    Examples
    --------
    >>> download("https://example.org/w.pt", "/tmp/w.pt")        # doctest: +SKIP
    PosixPath('/tmp/w.pt')
    """
    from .progress import tqdm_class

    tqdm = tqdm_class()

    dest = Path(dest).expanduser()
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "xearthformer"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            # the range starts at or past the end: either the .part is already complete
            # (interrupted before the rename) or the file changed upstream; check the size
            total = _total_from_content_range(err.headers.get("Content-Range"))
            if total == offset:
                _check_hash(part, sha256, url, dest)
                os.replace(part, dest)
                return dest
            part.unlink()
            return download(url, dest, sha256, progress, timeout)
        raise DownloadError(f"the server answered HTTP {err.code} {err.reason} for {url}; "
                            f"{_by_hand(url, dest)}") from err
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"could not download {url} ({reason}); this machine may be offline: "
                            f"{_by_hand(url, dest)}") from err
    with response:
        resumed = offset > 0 and response.status == 206
        if offset and not resumed:
            offset = 0    # the server sent the whole file: start again
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        done = offset
        try:
            with open(part, "ab" if resumed else "wb") as f, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, desc=dest.name,
                disable=None if progress is None else not progress,
            ) as bar:
                while True:
                    block = response.read(_CHUNK)
                    if not block:
                        break
                    f.write(block)
                    done += len(block)
                    bar.update(len(block))
        except (OSError, http.client.HTTPException) as err:
            raise DownloadError(
                f"the download of {url} stopped after {done} of {total or '?'} bytes ({err!r}); "
                f"run again to resume from {part}"
            ) from err
    if total is not None and done != total:
        raise DownloadError(f"the download of {url} stopped after {done} of {total} bytes; "
                            f"run again to resume from {part}")
    _check_hash(part, sha256, url, dest)
    os.replace(part, dest)
    return dest


def _total_from_content_range(value: str | None) -> int | None:
    match = re.search(r"/(\d+)\s*$", value or "")
    return int(match.group(1)) if match else None


def _entry(name: str) -> Pretrained:
    if name not in REGISTRY:
        listing = "; ".join(f"{k}: {v.description}" for k, v in REGISTRY.items())
        raise ConfigError(f"unknown pretrained model {name!r}; available: {listing}")
    return REGISTRY[name]


def fetch(name: str, cache: str | os.PathLike | None = None, progress: bool | None = None) -> Path:
    """Path of the official checkpoint ``name`` in the cache, downloading it if missing.

    Parameters
    ----------
    name
        A key of :data:`REGISTRY` (``"earthformer-sevir"``, ``"earthformer-enso"``).
    cache
        Folder to use instead of :func:`cache_dir`.
    progress
        Progress bar (None: only on a terminal).

    Examples
    --------
    >>> fetch("earthformer-enso")                                # doctest: +SKIP
    PosixPath('/home/me/.cache/xearthformer/earthformer_icarenso2021.pt')
    """
    entry = _entry(name)
    dest = (cache_dir() if cache is None else Path(cache).expanduser()) / entry.filename
    if dest.exists():
        if entry.sha256 is not None and file_sha256(dest) != entry.sha256.lower():
            raise DownloadError(
                f"{dest} has SHA-256 {file_sha256(dest)}, expected {entry.sha256}; delete it to "
                f"download it again, or replace it with a good copy of {entry.url}"
            )
        return dest
    return download(entry.url, dest, sha256=entry.sha256, progress=progress)


def pretrained(name: str, cache: str | os.PathLike | None = None, progress: bool | None = None) -> Any:
    """The official pretrained Earthformer ``name`` as a ready :class:`~xearthformer.Forecaster`.

    Downloads the checkpoint on first use (see :func:`fetch`), converts it with
    :func:`xearthformer.models.earthformer.official.load_official`, and attaches the official data layout
    (variables, scaling, grid, context and lead) from ``official_spec(preset)``.

    Parameters
    ----------
    name
        ``"earthformer-sevir"`` or ``"earthformer-enso"`` (see :data:`REGISTRY`).
    cache, progress
        See :func:`fetch`.

    Returns
    -------
    xearthformer.Forecaster
        In eval mode on the CPU; ``metadata`` records the source URL and the file's SHA-256.

    Examples
    --------
    >>> import xearthformer as xef
    >>> enso = xef.pretrained("earthformer-enso")              # doctest: +SKIP
    >>> enso.context, enso.lead                                # doctest: +SKIP
    (12, 14)
    """
    from .checkpoint import Forecaster
    from .models.earthformer.official import load_official, official_spec

    entry = _entry(name)
    path = fetch(name, cache=cache, progress=progress)
    model = load_official(path, preset=entry.preset)
    model.eval()
    metadata = {"pretrained": name, "source": entry.url, "sha256": file_sha256(path),
                "description": entry.description}
    return Forecaster(model, official_spec(entry.preset), metadata=metadata)
