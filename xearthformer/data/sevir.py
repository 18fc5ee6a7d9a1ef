"""SEVIR reader: the catalog CSV plus HDF5 event files, as lazy labelled xarray data.

SEVIR stores one storm event per row of an HDF5 dataset (``vil`` shape ``(N, H, W, T)``,
uint8, ``T = 49`` frames 5 minutes apart, ``H = W = 384`` 1-km pixels). The catalog
(``CATALOG.csv``) maps each event ``id`` to its file and row. This module reproduces the
Earthformer protocol exactly:

- catalog rules, in the official order: ``start < time_utc <= end``, then ``pct_missing == 0``,
  then one image type, then every id that still occurs more than once is dropped (all copies);
- events in lexicographic id order (``R...`` before ``S...``), as pandas ``groupby`` gives;
- date splits: train ``(-, 2019-01-01]``, val ``(2019-01-01, 2019-06-01]``, test ``(2019-06-01, -)``;
- windows of 13 input + 12 target frames every 12 frames (3 per 49-frame event), event-major.

Nothing is read before it is needed: :func:`open_sevir` returns Dask-backed arrays with one
chunk per event, and :func:`sevir_windows` slices them lazily, so a test-set evaluation streams.
Shapes come from the files (``H``, ``W``, ``T`` are never assumed to be 384/49).

>>> ds = open_sevir("~/data/sevir", split="test")          # doctest: +SKIP
>>> win = sevir_windows(ds)       # (sample, step, y, x), lazy    # doctest: +SKIP
>>> x = scale(win.vil.isel(sample=slice(0, 8), step=slice(0, 13)).values)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import DataError

#: SEVIR VIL event thresholds on the 0-255 pixel scale (Earthformer's CSI protocol: an event
#: is ``value >= threshold``); the metrics, evaluation and the storms demo all use these
SEVIR_THRESHOLDS: tuple[int, ...] = (16, 74, 133, 160, 181, 219)

# official split boundaries; (start, end] with None = open
SPLITS: dict[str, tuple[str | None, str | None]] = {
    "train": (None, "2019-01-01"),
    "val": ("2019-01-01", "2019-06-01"),
    "test": ("2019-06-01", None),
}
FRAME_STEP = np.timedelta64(5, "m")   # SEVIR frames are 5 minutes apart
IN_LEN, OUT_LEN, STRIDE = 13, 12, 12  # official cfg_sevir.yaml: seq_len 25, stride 12
CATALOG_COLUMNS = ("id", "img_type", "file_name", "file_index", "time_utc", "pct_missing")


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as err:  # pragma: no cover - h5py is installed in CI
        raise ImportError(
            "reading SEVIR needs h5py, which is not installed; install it with "
            "`pip install xearthformer[data]` (or `pip install h5py`)"
        ) from err
    return h5py


def _split_bounds(
    split: str | None, start: Any, end: Any
) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    if split is not None:
        if split not in SPLITS:
            raise DataError(f"unknown SEVIR split {split!r}; expected one of {sorted(SPLITS)}")
        if start is not None or end is not None:
            raise DataError("give either split=... or start=/end=, not both")
        start, end = SPLITS[split]
    return (None if start is None else pd.Timestamp(start),
            None if end is None else pd.Timestamp(end))


def read_catalog(
    catalog: str | os.PathLike | pd.DataFrame,
    split: str | None = None,
    start: Any = None,
    end: Any = None,
    img_type: str = "vil",
    pct_missing: float | None = 0.0,
) -> pd.DataFrame:
    """The SEVIR catalog filtered by the official rules, one row per event, in event order.

    Parameters
    ----------
    catalog
        Path of ``CATALOG.csv`` or an already read DataFrame (with ``time_utc`` parsed or not).
    split
        ``"train"``, ``"val"`` or ``"test"`` (official date boundaries), or None.
    start, end
        Keep ``start < time_utc <= end`` (either may be None); only when ``split`` is None.
    img_type
        Image type to keep (``"vil"`` in Earthformer).
    pct_missing
        Keep rows with ``pct_missing == pct_missing`` (official: 0); None keeps all rows.

    Returns
    -------
    pandas.DataFrame
        Indexed by event ``id`` (sorted lexicographically, as the official loader orders them),
        with at least ``file_name``, ``file_index``, ``time_utc``.

    Examples
    --------
    >>> cat = read_catalog("sevir/CATALOG.csv", split="test")    # doctest: +SKIP
    >>> cat.index[:2].tolist()                                    # doctest: +SKIP
    ['R19060100238460', 'R19060100238461']
    """
    if isinstance(catalog, pd.DataFrame):
        cat = catalog.copy()
    else:
        path = Path(catalog).expanduser()
        if not path.is_file():
            raise DataError(
                f"SEVIR catalog {str(path)!r} not found; expected the CATALOG.csv of the SEVIR "
                "release (aws s3 cp --no-sign-request s3://sevir/CATALOG.csv <root>/)"
            )
        cat = pd.read_csv(path, low_memory=False)
    missing = [c for c in CATALOG_COLUMNS if c not in cat.columns]
    if missing:
        raise DataError(
            f"SEVIR catalog lacks columns {missing}; found {list(cat.columns)}; "
            f"expected at least {list(CATALOG_COLUMNS)}"
        )
    cat["time_utc"] = pd.to_datetime(cat["time_utc"])
    lo, hi = _split_bounds(split, start, end)
    # official order of the rules matters: a duplicated id whose other copy was removed by
    # the date or missing-data rule survives the duplicate rule.
    if lo is not None:
        cat = cat[cat.time_utc > lo]
    if hi is not None:
        cat = cat[cat.time_utc <= hi]
    if pct_missing is not None:
        cat = cat[cat.pct_missing == pct_missing]
    cat = cat[cat.img_type == img_type]
    cat = cat[~cat.id.duplicated(keep=False)]
    cat = cat.sort_values("id", kind="stable").set_index("id")
    cat["file_index"] = cat["file_index"].astype(np.int64)
    return cat


class _H5Dataset:
    """Picklable, lazily opened view of one HDF5 dataset (for ``dask.array.from_array``).

    The file is opened on each read, so Dask workers (threads or processes) never share an
    h5py handle and nothing stays open between reads.
    """

    def __init__(self, path: str, key: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.key, self.shape, self.dtype = path, key, shape, np.dtype(dtype)
        self.ndim = len(shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        with _h5py().File(self.path, "r") as f:
            return f[self.key][index]


def _file_arrays(data_dir: Path, files: Sequence[str], key: str) -> list[_H5Dataset]:
    h5py = _h5py()
    out = []
    for name in files:
        path = data_dir / name
        if not path.is_file():
            raise DataError(
                f"SEVIR file {str(path)!r} listed in the catalog is missing; expected the "
                f"catalog's file_name under {str(data_dir)!r} (download s3://sevir/data/{key})"
            )
        with h5py.File(path, "r") as f:
            if key not in f:
                raise DataError(f"{str(path)!r} has no dataset {key!r}; found {sorted(f)}")
            dset = f[key]
            out.append(_H5Dataset(str(path), key, tuple(dset.shape), dset.dtype))
    shapes = {a.shape[1:] for a in out}
    if len(shapes) > 1:
        raise DataError(f"SEVIR {key} files disagree on (H, W, T): {sorted(shapes)}")
    return out


def _frame_offsets(cat: pd.DataFrame, n_frames: int, step: np.timedelta64 = FRAME_STEP) -> np.ndarray:
    """Frame times relative to ``time_utc`` (timedelta64[m]).

    SEVIR's ``minute_offsets`` column lists them (``-120:-115:...:120`` for VIL). A catalog
    listing ``k (n_frames - 1) + 1`` offsets describes files that keep every k-th frame (the
    SEVIR-LR catalog is the SEVIR one copied as it is, beside files of every 2nd frame): every
    k-th offset is used. Without the column the frames are centred on ``time_utc`` at ``step``.
    """
    if "minute_offsets" in cat.columns and len(cat):
        first = str(cat["minute_offsets"].iloc[0])
        try:
            minutes = np.array([int(v) for v in first.split(":")])
        except ValueError:
            minutes = np.array([])
        if minutes.size == n_frames:
            return minutes.astype("timedelta64[m]")
        if n_frames > 1 and minutes.size > n_frames and (minutes.size - 1) % (n_frames - 1) == 0:
            return minutes[::(minutes.size - 1) // (n_frames - 1)].astype("timedelta64[m]")
    return ((np.arange(n_frames) - n_frames // 2) * step).astype("timedelta64[m]")


def open_sevir(
    root: str | os.PathLike,
    split: str | None = None,
    start: Any = None,
    end: Any = None,
    img_type: str = "vil",
    catalog: str | os.PathLike | pd.DataFrame | None = None,
    pct_missing: float | None = 0.0,
    *,
    frame_step: np.timedelta64 = FRAME_STEP,
) -> xr.Dataset:
    """Open SEVIR events lazily as ``(event, time, y, x)`` (one Dask chunk per event).

    Parameters
    ----------
    root
        SEVIR folder holding ``CATALOG.csv`` and ``data/`` (``data/vil/2019/SEVIR_VIL_...h5``).
    split, start, end, img_type, pct_missing
        Catalog selection, see :func:`read_catalog` (official rules and order).
    catalog
        Another catalog path or DataFrame (default ``root/CATALOG.csv``).
    frame_step
        Time between frames when the catalog has no ``minute_offsets`` (SEVIR: 5 minutes).

    Returns
    -------
    xarray.Dataset
        ``<img_type>(event, time, y, x)`` in the file's dtype (VIL: uint8 pixel code 0-255),
        coordinates ``event`` (id), ``time`` (offset from ``time_utc``, timedelta),
        ``time_utc(event)``, ``valid_time(event, time)``, ``file_name``/``file_index(event)``,
        ``y``/``x`` (pixel indices).

    Examples
    --------
    >>> ds = open_sevir("sevir", split="test")                   # doctest: +SKIP
    >>> ds.vil.dims                                              # doctest: +SKIP
    ('event', 'time', 'y', 'x')
    """
    import dask.array as da

    if img_type == "lght":
        raise DataError("img_type 'lght' holds point lists, not frames; use 'vil', 'ir069', 'ir107' or 'vis'")
    root = Path(root).expanduser()
    cat = read_catalog(root / "CATALOG.csv" if catalog is None else catalog,
                       split=split, start=start, end=end, img_type=img_type, pct_missing=pct_missing)
    files = sorted(cat.file_name.unique())
    arrays = _file_arrays(root / "data", files, img_type)
    if arrays:
        height, width, n_frames = arrays[0].shape[1:]
        first_row = {name: 0 for name in files}
        total = 0
        for name, arr in zip(files, arrays):
            first_row[name] = total
            total += arr.shape[0]
        bad = cat[cat.file_index >= cat.file_name.map({n: a.shape[0] for n, a in zip(files, arrays)})]
        if len(bad):
            raise DataError(
                f"catalog rows point past the end of their file, e.g. id {bad.index[0]!r} -> "
                f"{bad.file_name.iloc[0]!r}[{bad.file_index.iloc[0]}]; the catalog does not match the data"
            )
        # one dask array over all referenced files, then one row per event in event order
        stacked = da.concatenate(
            [da.from_array(a, chunks=(1, *a.shape[1:]), asarray=True, lock=False) for a in arrays]
        )
        rows = cat.file_name.map(first_row).to_numpy() + cat.file_index.to_numpy()
        data = stacked[rows].transpose(0, 3, 1, 2)            # N,H,W,T -> event,time,y,x
        dtype = arrays[0].dtype
    else:
        height = width = n_frames = 0
        data = da.zeros((0, 0, 0, 0), dtype=np.uint8)
        dtype = np.dtype(np.uint8)
    offsets = _frame_offsets(cat, n_frames, frame_step)
    time_utc = cat.time_utc.to_numpy().astype("datetime64[ns]")
    ds = xr.Dataset(
        {img_type: (("event", "time", "y", "x"), data)},
        coords={
            "event": cat.index.to_numpy().astype(str),
            "time": ("time", offsets.astype("timedelta64[ns]"),
                     {"long_name": "time relative to the event's time_utc"}),
            "y": ("y", np.arange(height), {"long_name": "pixel row", "units": "1"}),
            "x": ("x", np.arange(width), {"long_name": "pixel column", "units": "1"}),
            "time_utc": ("event", time_utc, {"long_name": "event reference time (frame at offset 0)"}),
            "valid_time": (("event", "time"), time_utc[:, None] + offsets.astype("timedelta64[ns]")[None],
                           {"standard_name": "time"}),
            "file_name": ("event", cat.file_name.to_numpy().astype(str)),
            "file_index": ("event", cat.file_index.to_numpy()),
        },
        attrs={"source": "SEVIR", "catalog_rules": "start < time_utc <= end; pct_missing == 0; "
               "duplicated ids dropped; ids sorted"},
    )
    if img_type == "vil":
        ds[img_type].attrs.update(long_name="vertically integrated liquid (SEVIR pixel code)",
                                  units="1", valid_range=[0, 255])
    ds[img_type].encoding["dtype"] = dtype
    return ds


def sevir_windows(
    source: str | os.PathLike | xr.Dataset,
    split: str | None = "test",
    in_len: int = IN_LEN,
    out_len: int = OUT_LEN,
    stride: int = STRIDE,
    img_type: str = "vil",
) -> xr.Dataset:
    """Cut the official input+target windows from SEVIR events, lazily.

    Windows start at frames ``0, stride, 2*stride, ...`` while ``in_len + out_len`` frames fit
    (official: 13 + 12 frames every 12 -> 3 windows per 49-frame event), ordered event-major
    (all windows of event 0, then event 1, ...), exactly as the official test loader.

    Parameters
    ----------
    source
        A SEVIR root folder (opened with :func:`open_sevir` and ``split``) or a Dataset from
        :func:`open_sevir` (``split`` is then ignored: the Dataset is already selected).
    split
        Official split when ``source`` is a folder.
    in_len, out_len, stride
        Context frames, target frames, window stride (official 13, 12, 12).
    img_type
        Variable to window.

    Returns
    -------
    xarray.Dataset
        ``<img_type>(sample, step, y, x)`` with ``step`` the offset from the window's last
        input frame (``step <= 0``: input, ``step > 0``: target), and per-sample coordinates
        ``event``, ``window_start`` (frame index) and ``init_time``. Attributes ``context``
        and ``lead`` give the split point.

    Examples
    --------
    >>> win = sevir_windows("sevir", split="test")                # doctest: +SKIP
    >>> x = win.vil.isel(sample=slice(0, 2), step=slice(0, win.attrs["context"]))  # doctest: +SKIP
    """
    ds = source if isinstance(source, xr.Dataset) else open_sevir(source, split=split, img_type=img_type)
    if img_type not in ds:
        raise DataError(f"variable {img_type!r} not in the SEVIR dataset; found {list(ds.data_vars)}")
    if ds.sizes["event"] == 0:
        raise DataError("no SEVIR event passed the catalog selection (split/dates, pct_missing, "
                        "img_type); check the catalog and the split")
    seq_len = in_len + out_len
    n_frames = ds.sizes["time"]
    if min(in_len, out_len, stride) < 1:
        raise DataError(f"in_len, out_len and stride must be >= 1; got {in_len}, {out_len}, {stride}")
    if seq_len > n_frames:
        raise DataError(
            f"a window of {in_len}+{out_len} frames does not fit events of {n_frames} frames; "
            "use shorter in_len/out_len"
        )
    starts = np.arange(0, n_frames - seq_len + 1, stride)
    var = ds[img_type]
    pieces = [var.isel(time=slice(s, s + seq_len)).drop_vars(["time", "valid_time"], errors="ignore")
              .rename(time="step") for s in starts]
    win = xr.concat(pieces, dim="window", coords="minimal", compat="override", join="override")
    win = win.transpose("event", "window", "step", "y", "x")
    n_events = ds.sizes["event"]
    data = win.data.reshape((n_events * len(starts), seq_len, *win.shape[3:]))
    step = ds.time.values[:seq_len] - ds.time.values[in_len - 1]
    event = np.repeat(ds.event.values, len(starts))
    window_start = np.tile(starts, n_events)
    init_time = (np.repeat(ds.time_utc.values, len(starts))
                 + ds.time.values[window_start + in_len - 1])
    out = xr.Dataset(
        {img_type: (("sample", "step", "y", "x"), data, dict(var.attrs))},
        coords={
            "sample": np.arange(event.size),
            "step": ("step", step, {"long_name": "time after the last input frame"}),
            "y": ds.y, "x": ds.x,
            "event": ("sample", event),
            "window_start": ("sample", window_start),
            "init_time": ("sample", init_time, {"standard_name": "forecast_reference_time"}),
        },
        attrs={"context": in_len, "lead": out_len, "stride": stride, "source": "SEVIR"},
    )
    return out


def scale(vil: Any) -> np.ndarray:
    """Official Earthformer scaling of SEVIR pixel codes to [0, 1], bit for bit.

    The official loader multiplies float32 data by the float32-rounded ``1/255`` (which differs
    from dividing by 255 in the last bit for about half the codes).

    >>> float(scale(np.uint8(255)))
    1.0
    """
    return np.asarray(vil, dtype=np.float32) * np.float32(1.0 / 255.0)
