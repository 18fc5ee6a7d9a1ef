"""Official pretrained weights: download on request, convert, return a Forecaster; ``xearthformer convert``.

This is the only module of xearthformer that touches the network, and only when a user calls
:func:`pretrained` (or :func:`fetch`). An entry of :data:`REGISTRY` may hold several files
(``{part: (url, filename, sha256)}``: PreDiff's VAE, denoiser and alignment network are
three); the entry's family (:mod:`xearthformer.models.registry`) turns the files into a
Forecaster with its ``official_loader``. Files go to a cache folder (``XEARTHFORMER_CACHE``,
else ``$XDG_CACHE_HOME/xearthformer``, else ``~/.cache/xearthformer``). Downloads resume:
bytes arrive in ``<name>.part`` and an interrupted download continues with an HTTP Range
request. Once a file's SHA-256 is recorded in :data:`REGISTRY` it is checked; until then the
computed hash is reported in the Forecaster's metadata so it can be recorded.

Offline? Put the file (same name) in the cache folder by hand; the error message says where.

>>> import xearthformer as xef
>>> model = xef.pretrained("earthformer-enso")            # doctest: +SKIP
>>> fc = sst.earthformer.forecast(model)                   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError, DownloadError
from .models import registry

if TYPE_CHECKING:  # pragma: no cover
    from .models.base import Forecaster


@dataclass(frozen=True)
class Pretrained:
    """One downloadable set of official checkpoint files.

    Attributes
    ----------
    files : mapping
        ``{part: (url, filename, sha256)}``: where the official README publishes each file,
        its name in the cache, and its expected SHA-256 (None until recorded; then it is not
        checked). Earthformer has one part, ``"weights"``.
    preset : str
        Official preset the files load into (passed to the family's official loader).
    description : str
        One line for listings and errors.
    family : str
        The model family (:mod:`xearthformer.models.registry`) whose official loader reads
        the files.
    """

    files: Mapping[str, tuple[str, str, str | None]]
    preset: str
    description: str
    family: str = "earthformer"

    @property
    def urls(self) -> dict[str, str]:
        """``{part: url}``."""
        return {part: url for part, (url, _, _) in self.files.items()}

    @property
    def filenames(self) -> dict[str, str]:
        """``{part: filename in the cache}``."""
        return {part: name for part, (_, name, _) in self.files.items()}


def one_file(url: str, sha256: str | None, preset: str, description: str,
             family: str = "earthformer", part: str = "weights") -> Pretrained:
    """An entry of a single file, named in the cache as the URL's last path component."""
    return Pretrained({part: (url, url.rsplit("/", 1)[-1], sha256)}, preset, description, family)


_BASE = "https://earthformer.s3.amazonaws.com/pretrained_checkpoints/"
#: where gaozhihan/PreDiff's download.py fetches its checkpoints (file ids from that file)
_PREDIFF_BASE = "https://hkustconnect-my.sharepoint.com/:u:/g/personal/zgaoag_connect_ust_hk/"
#: name -> checkpoint files; URLs from the official READMEs (amazon-science/earth-forecasting-transformer,
#: gaozhihan/PreDiff).
REGISTRY: dict[str, Pretrained] = {
    "earthformer-sevir": one_file(
        _BASE + "earthformer_sevir.pt", None, "sevir",
        "SEVIR VIL nowcasting: 13 frames of VIL/255 (384x384, 5 min) -> next 12 frames"),
    "earthformer-enso": one_file(
        _BASE + "earthformer_icarenso2021.pt", None, "enso",
        "ICAR-ENSO: 12 months of min-max-scaled SST anomaly (24x48, lon 95-330) -> next 14 months"),
    # the official PreDiff release: three plain state_dicts, no SHA-256 published (None: the
    # computed hashes are reported in the Forecaster's metadata so they can be recorded)
    "prediff-sevirlr": Pretrained(
        {part: (_PREDIFF_BASE + file_id + "&download=1", filename, None) for part, (filename, file_id) in {
            "vae": ("pretrained_sevirlr_vae_8x8x64_v1.pt",
                    "EZ-BfMnX-dhFrccXtLuCB78BPs3xBc-ke1BG4_9Jf7UblQ?e=bMplKs"),
            "denoiser": ("pretrained_sevirlr_earthformerunet_v1.pt",
                         "EUp432GSXplCuhN7-WUF6YsBK4WrWiL8A9RZCA1Pf9D0Ag?e=eY6hcQ"),
            "alignment": ("pretrained_sevirlr_alignment_avg_x_cuboid_v1.pt",
                          "EWHH7y6w9D5Dg01YNX99IFQBA3tCR2a7s7z7Xv0BiNLV7Q?e=Hd9jCH"),
        }.items()},
        "sevirlr",
        "PreDiff SEVIR-LR ensembles: 7 frames of VIL/255 (128x128, 10 min) -> next 6 frames "
        "(frame VAE, Earthformer-UNet denoiser, average-intensity alignment network)",
        family="prediff"),
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
    from .progress import progress_bar

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
            with open(part, "ab" if resumed else "wb") as f, progress_bar(
                total=total, progress=progress, initial=offset, unit="B", unit_scale=True,
                desc=dest.name,
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


def fetch(name: str, cache: str | os.PathLike | None = None, progress: bool | None = None,
          part: str | None = None) -> Path:
    """Path of a file of the official checkpoint ``name`` in the cache, downloading it if missing.

    Parameters
    ----------
    name
        A key of :data:`REGISTRY` (``"earthformer-sevir"``, ``"earthformer-enso"``).
    cache
        Folder to use instead of :func:`cache_dir`.
    progress
        Progress bar (None: only on a terminal).
    part
        Which file of the entry; may be omitted when it has only one.

    Examples
    --------
    >>> fetch("earthformer-enso")                                # doctest: +SKIP
    PosixPath('/home/me/.cache/xearthformer/earthformer_icarenso2021.pt')
    """
    entry = _entry(name)
    if part is None:
        if len(entry.files) != 1:
            raise ConfigError(f"{name} has several files {sorted(entry.files)}; pass part=... "
                              "(or use pretrained(), which fetches them all).")
        part = next(iter(entry.files))
    if part not in entry.files:
        raise ConfigError(f"{name} has no file {part!r}; its parts are {sorted(entry.files)}.")
    url, filename, sha256 = entry.files[part]
    dest = (cache_dir() if cache is None else Path(cache).expanduser()) / filename
    if dest.exists():
        if sha256 is not None and file_sha256(dest) != sha256.lower():
            raise DownloadError(
                f"{dest} has SHA-256 {file_sha256(dest)}, expected {sha256}; delete it to "
                f"download it again, or replace it with a good copy of {url}"
            )
        return dest
    return download(url, dest, sha256=sha256, progress=progress)


def pretrained(name: str, cache: str | os.PathLike | None = None, progress: bool | None = None
               ) -> Forecaster:
    """The official pretrained model ``name`` as a ready :class:`~xearthformer.Forecaster`.

    Downloads the checkpoint files on first use (see :func:`fetch`) and converts them with
    the official loader of the entry's family (Earthformer:
    :func:`xearthformer.models.earthformer.official.official_forecaster`, which attaches the
    official data layout: variables, scaling, grid, context and lead).

    Parameters
    ----------
    name
        ``"earthformer-sevir"``, ``"earthformer-enso"`` or ``"prediff-sevirlr"`` (see
        :data:`REGISTRY`).
    cache, progress
        See :func:`fetch`.

    Returns
    -------
    xearthformer.Forecaster
        In eval mode on the CPU; ``metadata`` records the source URL and the file's SHA-256
        (for an entry of several files: ``{part: ...}`` of each).

    Examples
    --------
    >>> import xearthformer as xef
    >>> enso = xef.pretrained("earthformer-enso")              # doctest: +SKIP
    >>> enso.context, enso.lead                                # doctest: +SKIP
    (12, 14)
    """
    entry = _entry(name)
    paths = {part: fetch(name, cache=cache, progress=progress, part=part) for part in entry.files}
    forecaster = load_official_files(entry.family, paths, entry.preset)
    forecaster.model.eval()
    hashes = {part: file_sha256(path) for part, path in paths.items()}
    single = len(paths) == 1
    forecaster.metadata.update({
        "pretrained": name, "description": entry.description,
        "source": next(iter(entry.urls.values())) if single else entry.urls,
        "sha256": next(iter(hashes.values())) if single else hashes})
    return forecaster


def load_official_files(family: str, files: Mapping[str, str | os.PathLike[str]], preset: str) -> Forecaster:
    """``files`` (part -> path) of an official checkpoint as a Forecaster, by ``family``'s
    official loader (:mod:`xearthformer.models.registry`)."""
    row = registry.family(family)
    if row.official_loader is None:
        with_loader = sorted(n for n, f in registry.families().items() if f.official_loader)
        raise ConfigError(f"the {family} family has no official checkpoints to load; families "
                          f"with official weights: {with_loader}.")
    return registry.resolve(row.official_loader)(files, preset)


# ----------------------------------------------------------------------------------------------
# command line: xearthformer convert
# ----------------------------------------------------------------------------------------------
def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``xearthformer convert``."""
    parser.add_argument("source", nargs="+",
                        help="the official checkpoint file (.pt state_dict); for families with "
                             "several files: PART=PATH for each (PreDiff: vae=, denoiser=, "
                             "optional alignment=)")
    parser.add_argument("output", help="bundle to write (.xef)")
    parser.add_argument("--preset", required=True,
                        help="which official model the checkpoint is (Earthformer: sevir or enso; "
                             "PreDiff: sevirlr)")
    parser.add_argument("--family", default="earthformer",
                        help="model family of the checkpoint (default: earthformer)")


def _source_files(sources: list[str]) -> dict[str, str]:
    """``["model.pt"]`` -> ``{"weights": "model.pt"}``; ``["vae=a.pt", ...]`` -> by part."""
    if len(sources) == 1 and "=" not in sources[0]:
        return {"weights": sources[0]}
    files = dict(item.split("=", 1) for item in sources if "=" in item)
    if len(files) != len(sources):
        raise ConfigError(f"several checkpoint files are given as PART=PATH; got {sources}.")
    return files


def run_convert(args: argparse.Namespace) -> int:
    """Convert an official checkpoint into a ``.xef`` bundle; returns the exit code."""
    from .checkpoint import save

    files = _source_files(args.source)
    forecaster = load_official_files(args.family, files, args.preset)
    forecaster.metadata.update({
        "source": f"official {args.family} checkpoint",
        "converted_from": {part: os.path.basename(os.fspath(path)) for part, path in files.items()}
        if len(files) > 1 else os.path.basename(os.fspath(next(iter(files.values())))),
        "preset": args.preset})
    save(forecaster, args.output)
    n = sum(p.numel() for p in forecaster.model.parameters())
    print(f"wrote {args.output}: official {args.preset} {args.family}, {n:,} parameters")
    return 0
