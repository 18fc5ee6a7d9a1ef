"""SEVIR-LR reader: PreDiff's low-resolution SEVIR (VIL, 25 frames of 128 x 128, 10 minutes apart).

PreDiff (NeurIPS 2023) derives SEVIR-LR from SEVIR with its ``downsample_sevir.py``: of each
event's 49 frames (5 minutes apart) every 2nd is kept, from the first (-> 25 frames, 10 minutes
apart), and each frame is max-pooled over 3 x 3 pixel blocks (``skimage.measure.block_reduce``
with ``np.max``) -> 384 x 384 becomes 128 x 128. This module reads either

- **SEVIR itself** (``CATALOG.csv`` + ``data/vil/...h5`` of 49 frames, read by
  :mod:`xearthformer.data.sevir`), downsampled here lazily, event by event, exactly that way; or
- **the SEVIR-LR files**, as ``downsample_sevir.py`` writes them: ``CATALOG.csv`` (the SEVIR
  catalog, copied as it is: its ``minute_offsets`` still list 49 offsets, of which every 2nd
  applies) and ``data/<the catalog's file_name>`` holding one HDF5 dataset ``vil`` of shape
  ``(N, 128, 128, 25)`` (``N, H, W, T``; no ``id`` dataset), uint8 codes. The published
  ``sevir_lr.zip`` (no longer downloadable) unpacks to a ``sevir_lr/`` folder that the official
  loader reads the same way (``<root>/CATALOG.csv``, ``<root>/data``); its exact contents were
  not inspected here, so this reader supports what ``downsample_sevir.py`` writes, and
  :func:`write_sevir_lr` writes the same from SEVIR.

Which one a folder holds is told by the files' frame count (49: SEVIR, 25: SEVIR-LR). Shapes
otherwise come from the files (a grid not divisible by 3 is pooled like ``block_reduce``:
the far edge blocks are padded with zeros, which for codes >= 0 is the max of what is there).

The protocol (PreDiff's ``cfg.yaml``): catalog rules as SEVIR's (``pct_missing == 0``,
duplicated ids dropped, ids sorted), windows of 7 context + 6 target frames every 6 frames
(``seq_len 13, stride 6`` -> 3 windows per event), test split = events with ``time_utc`` after
2019-06-01. The official train/val split is a *random* 10 % of the windows before that date
(``torch.utils.data.random_split``), so only ``split="trainval"`` (all of them) is offered here;
hold out a fraction at training time (``xef.train(..., val=0.1)``). Values are SEVIR's uint8
pixel codes; ``scaled=True`` (or :func:`xearthformer.data.sevir.scale`) gives the official
``01`` rescale (code / 255 -> [0, 1]); a model's spec normalises the codes itself.

>>> win = sevir_lr_windows("~/data/sevir", split="test")     # doctest: +SKIP
>>> win.vil.shape                                            # doctest: +SKIP
(..., 13, 128, 128)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import DataError
from . import sevir

RAW_FRAMES, LR_FRAMES = 49, 25         # frames per event in SEVIR and in SEVIR-LR
TIME_FACTOR, SPACE_FACTOR = 2, 3       # downsample_sevir.py: downsample_dict {'vil': (2, 3, 3)}
LR_FRAME_STEP = np.timedelta64(10, "m")
IN_LEN, OUT_LEN, STRIDE = 7, 6, 6      # PreDiff cfg.yaml: seq_len 13 (7 + 6), stride 6
TEST_START = "2019-06-01"              # train_test_split_date [2019, 6, 1]
SPLITS: dict[str, tuple[str | None, str | None]] = {
    "test": (TEST_START, None),        # time_utc > 2019-06-01
    "trainval": (None, TEST_START),    # time_utc <= 2019-06-01 (official: random 10 % is val)
}
RESOLUTIONS = ("auto", "sevir", "lr")


def downsample(vil: Any, time_factor: int = TIME_FACTOR, space_factor: int = SPACE_FACTOR) -> np.ndarray:
    """PreDiff's SEVIR -> SEVIR-LR downsampling of ``(..., T, H, W)`` frames.

    Keeps frames ``0, time_factor, 2 * time_factor, ...`` and takes the maximum over
    ``space_factor x space_factor`` pixel blocks. Blocks at the far edges of a grid that
    ``space_factor`` does not divide are padded with zeros first, as
    ``skimage.measure.block_reduce`` does (``cval=0``): for the non-negative VIL codes that is
    the maximum of the pixels present. The dtype is kept.

    Parameters
    ----------
    vil
        Array of frames, time, then the two spatial axes last.
    time_factor, space_factor
        Official 2 and 3.

    Returns
    -------
    numpy.ndarray
        ``(..., ceil(T / time_factor), ceil(H / space_factor), ceil(W / space_factor))``.

    Examples
    --------
    >>> x = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    >>> downsample(x).tolist()          # frame 0 kept, its 3 x 3 maximum
    [[[8]]]
    """
    x = np.asarray(vil)
    if x.ndim < 3:
        raise DataError(f"downsample needs (..., T, H, W) frames; got shape {x.shape}")
    if int(time_factor) < 1 or int(space_factor) < 1:
        raise DataError(f"time_factor and space_factor must be >= 1; got {time_factor}, {space_factor}")
    x = x[..., ::int(time_factor), :, :]
    k = int(space_factor)
    h, w = x.shape[-2:]
    ph, pw = -h % k, -w % k
    if ph or pw:
        pad = [(0, 0)] * (x.ndim - 2) + [(0, ph), (0, pw)]
        x = np.pad(x, pad, constant_values=0)
    blocks = x.reshape(*x.shape[:-2], (h + ph) // k, k, (w + pw) // k, k)
    return blocks.max(axis=(-3, -1))


def _resolution(n_frames: int, resolution: str) -> str:
    if resolution not in RESOLUTIONS:
        raise DataError(f"unknown resolution {resolution!r}; expected one of {RESOLUTIONS}")
    if resolution != "auto":
        return resolution
    if n_frames == RAW_FRAMES:
        return "sevir"
    if n_frames == LR_FRAMES:
        return "lr"
    raise DataError(
        f"the files hold events of {n_frames} frames: neither SEVIR ({RAW_FRAMES}) nor SEVIR-LR "
        f"({LR_FRAMES}); pass resolution='sevir' (downsample them) or resolution='lr' (read as they are)"
    )


def open_sevir_lr(
    root: str | os.PathLike,
    split: str | None = "test",
    resolution: str = "auto",
    catalog: Any = None,
    scaled: bool = False,
) -> xr.Dataset:
    """Open SEVIR-LR events lazily as ``(event, time, y, x)`` (one Dask chunk per event).

    Parameters
    ----------
    root
        A SEVIR folder (downsampled here) or a SEVIR-LR folder (``CATALOG.csv`` + ``data/``).
    split
        ``"test"`` (``time_utc`` after 2019-06-01), ``"trainval"`` (up to it) or None (all).
    resolution
        ``"auto"`` (by the files' frame count), ``"sevir"`` (downsample) or ``"lr"`` (as stored).
    catalog
        Another catalog path or DataFrame (default ``root/CATALOG.csv``).
    scaled
        Return float32 code / 255 (the official ``01`` rescale) instead of the uint8 codes.

    Returns
    -------
    xarray.Dataset
        ``vil(event, time, y, x)`` with the coordinates of
        :func:`xearthformer.data.sevir.open_sevir` (``time`` 10 minutes apart, ``y``/``x`` the
        low-resolution pixel indices); attribute ``source = "SEVIR-LR"``.

    Examples
    --------
    >>> ds = open_sevir_lr("~/data/sevir", split="test")       # doctest: +SKIP
    >>> ds.vil.shape[1:]                                       # doctest: +SKIP
    (25, 128, 128)
    """
    if split is not None and split not in SPLITS:
        raise DataError(f"unknown SEVIR-LR split {split!r}; expected one of {sorted(SPLITS)} or None")
    start, end = SPLITS[split] if split is not None else (None, None)
    ds = sevir.open_sevir(root, start=start, end=end, catalog=catalog, frame_step=LR_FRAME_STEP)
    kind = _resolution(ds.sizes["time"], resolution)
    var = ds["vil"]
    if kind == "sevir":
        ds = ds.isel(time=slice(None, None, TIME_FACTOR))       # times and valid_time follow
        data = ds["vil"].data.rechunk({1: -1, 2: -1, 3: -1})
        h, w = (-(-n // SPACE_FACTOR) for n in data.shape[2:])
        data = data.map_blocks(downsample, 1, SPACE_FACTOR, dtype=data.dtype,
                               chunks=(data.chunks[0], data.chunks[1], (h,), (w,)))
        keep = {k: v for k, v in ds.coords.items() if not {"y", "x"} & set(v.dims)}
        ds = xr.Dataset(
            {"vil": (var.dims, data, dict(var.attrs))},
            coords={**keep,
                    "y": ("y", np.arange(h), dict(ds.y.attrs)),
                    "x": ("x", np.arange(w), dict(ds.x.attrs))},
            attrs=dict(ds.attrs))
    if scaled:
        ds["vil"] = ds["vil"].copy(data=ds["vil"].data.map_blocks(sevir.scale, dtype=np.float32))
        ds["vil"].attrs = {"long_name": "vertically integrated liquid (SEVIR pixel code / 255)",
                           "units": "1", "valid_range": [0.0, 1.0]}
        ds["vil"].encoding = {}          # not the codes' uint8: a written file keeps the floats
    ds.attrs.update(source="SEVIR-LR",
                    downsampling=("as stored" if kind == "lr" else
                                  f"frames 0, {TIME_FACTOR}, {2 * TIME_FACTOR}, ...; "
                                  f"{SPACE_FACTOR}x{SPACE_FACTOR} max-pool (PreDiff downsample_sevir.py)"))
    return ds


def write_sevir_lr(
    sevir_root: str | os.PathLike,
    out_root: str | os.PathLike,
    events_per_read: int = 64,
    progress: bool | None = None,
) -> Path:
    """Write SEVIR-LR files from SEVIR, as PreDiff's ``downsample_sevir.py`` does.

    The published ``sevir_lr.zip`` can no longer be downloaded; this makes the same layout
    (about 1/18 of the size) once, so later reads skip the full-resolution files:
    ``out_root/CATALOG.csv`` (SEVIR's catalog, copied as it is) and, for every VIL file the
    catalog names, ``out_root/data/<file_name>`` holding one dataset ``vil``
    ``(N, H/3, W/3, 25)`` uint8 (every event of the file, downsampled by :func:`downsample`).
    Unlike the official script, which reads each file whole, events are read
    ``events_per_read`` at a time.

    Parameters
    ----------
    sevir_root
        SEVIR folder (``CATALOG.csv`` + ``data/vil/...``).
    out_root
        New folder; refused if it exists (as the official script does).
    events_per_read
        Events read and downsampled at once (memory: ~7 MB each).
    progress
        Progress bar over files (None: only on a terminal).

    Returns
    -------
    pathlib.Path
        ``out_root``, ready for :func:`open_sevir_lr`.

    Examples
    --------
    >>> write_sevir_lr("~/data/sevir", "~/data/sevir_lr")           # doctest: +SKIP
    >>> win = sevir_lr_windows("~/data/sevir_lr", split="test")     # doctest: +SKIP
    """
    import shutil

    from ..progress import progress_bar

    src, out = Path(sevir_root).expanduser(), Path(out_root).expanduser()
    if out.exists():
        raise DataError(f"{str(out)!r} exists; write_sevir_lr makes a new folder. Remove it or pick another.")
    catalog = src / "CATALOG.csv"
    if not catalog.is_file():
        raise DataError(f"SEVIR catalog {str(catalog)!r} not found; expected a SEVIR folder "
                        "(CATALOG.csv + data/vil/...)")
    cat = pd.read_csv(catalog, usecols=["img_type", "file_name"], low_memory=False)
    files = sorted(cat.file_name[cat.img_type == "vil"].unique())       # every VIL file it names
    arrays = sevir._file_arrays(src / "data", files, "vil")
    (out / "data").mkdir(parents=True)
    shutil.copyfile(src / "CATALOG.csv", out / "CATALOG.csv")
    step = max(1, int(events_per_read))
    for name, arr in progress_bar(list(zip(files, arrays)), progress=progress, desc="sevir-lr", unit="file"):
        n, h, w, t = arr.shape
        shape = (n, -(-h // SPACE_FACTOR), -(-w // SPACE_FACTOR), -(-t // TIME_FACTOR))
        path = out / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with sevir._h5py().File(path, "w") as f:
            dset = f.create_dataset("vil", shape=shape, dtype=arr.dtype, maxshape=(None, *shape[1:]))
            for i in range(0, n, step):
                frames = arr[i:i + step].transpose(0, 3, 1, 2)                # N,H,W,T -> N,T,H,W
                dset[i:i + step] = downsample(frames).transpose(0, 2, 3, 1)
    return out


def sevir_lr_windows(
    source: str | os.PathLike | xr.Dataset,
    split: str | None = "test",
    in_len: int = IN_LEN,
    out_len: int = OUT_LEN,
    stride: int = STRIDE,
    resolution: str = "auto",
) -> xr.Dataset:
    """PreDiff's SEVIR-LR windows (7 context + 6 target frames every 6 frames), lazily.

    Parameters
    ----------
    source
        A SEVIR or SEVIR-LR folder (see :func:`open_sevir_lr`) or a Dataset from it (``split``
        and ``resolution`` are then ignored).
    split, resolution
        As for :func:`open_sevir_lr`.
    in_len, out_len, stride
        Context frames, target frames, window stride (official 7, 6, 6).

    Returns
    -------
    xarray.Dataset
        ``vil(sample, step, y, x)`` and the coordinates of
        :func:`xearthformer.data.sevir.sevir_windows`, event-major (3 windows per event).

    Examples
    --------
    >>> win = sevir_lr_windows("~/data/sevir_lr", split="test")          # doctest: +SKIP
    >>> context = win.vil.isel(step=slice(0, win.attrs["context"]))       # doctest: +SKIP
    """
    ds = source if isinstance(source, xr.Dataset) else open_sevir_lr(source, split, resolution)
    win = sevir.sevir_windows(ds, in_len=in_len, out_len=out_len, stride=stride)
    win.attrs["source"] = "SEVIR-LR"
    return win
