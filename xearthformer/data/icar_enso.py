"""ICAR-ENSO 2021 reader: the Tianchi "AI Earth" NetCDF files as monthly series per model.

The files store each climate model's run as rows of 36 consecutive months (row ``y`` holds
January of year ``y`` ... December of year ``y + 2``), models one after another:
``CMIP_train.nc`` (sst, t300, ua, va; dims ``year, month, lat, lon`` = 4645, 36, 24, 72) holds
15 CMIP6 models x 151 rows, then 17 CMIP5 models x 140 rows; ``CMIP_label.nc`` holds the
Nino3.4 index ``nino(year, month)`` with the same rows; ``SODA_train.nc``/``SODA_label.nc``
hold one reanalysis of 100 rows. :func:`open_icar_enso` unfolds every model into one
continuous monthly series (rows 0, 3, 6, ... plus the tail of the last row, as the official
code does: ``12 * (rows + 2)`` months) on a ``(model, time)`` grid; models never mix.
Shorter models (CMIP5) are NaN-padded at the end; ``n_months(model)`` says where they stop.

:func:`icar_enso_windows` cuts the official samples: 12 input + 14 target months at stride 1
inside each model, on the cropped grid ``95 <= lon <= 330`` (24 x 48), with the label file's
Nino3.4 for target months 1-12. Splits are by model: test = the last model (CMIP5 #17),
val = the one before (CMIP5 #16), train = all others.

The files give no calendar years; ``time`` starts in January of a nominal ``start_year``.

>>> ds = open_icar_enso("enso_round1_train_20210201")              # doctest: +SKIP
>>> ds.sst.dims                                                    # doctest: +SKIP
('model', 'time', 'lat', 'lon')
>>> win = icar_enso_windows(ds, split="test")  # 1679 samples     # doctest: +SKIP
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

# official min-max scaling of SST anomalies (min/max over CMIP6 and CMIP5)
SST_MIN = -16.549121856689453
SST_MAX = 10.198975563049316
IN_LEN, OUT_LEN, STRIDE = 12, 14, 1          # official earthformer_enso_v1.yaml
NINO_WINDOW = 3                              # the label is a 3-month (forward) running mean
LON_RANGE = (95.0, 330.0)                    # official crop, both ends included
ROW_MONTHS, ROW_STEP = 36, 12                # each row: 36 months, next row starts 12 later
SUBFOLDER = "enso_round1_train_20210201"     # the unzipped competition archive
# source -> (file prefix, ((group, models, rows per model), ...)) in file order
SOURCES: dict[str, tuple[str, tuple[tuple[str, int, int], ...]]] = {
    "cmip": ("CMIP", (("CMIP6", 15, 151), ("CMIP5", 17, 140))),
    "soda": ("SODA", (("SODA", 1, 100),)),
}
SPLITS = ("train", "val", "test")


def unfold(rows: Any) -> Any:
    """One model's rows of 36 overlapping months -> its continuous monthly series.

    Keeps rows 0, 3, 6, ... whole and appends the last ``((n - 1) mod 3) * 12`` months of the
    final row, giving ``12 * (n + 2)`` months. Works on NumPy and Dask arrays (lazily).

    Parameters
    ----------
    rows
        Array ``(n_rows, 36, ...)``.

    Returns
    -------
    Array ``(12 * (n_rows + 2), ...)``.

    Examples
    --------
    >>> rows = np.arange(4)[:, None] * 12 + np.arange(36)        # month numbers
    >>> unfold(rows).tolist() == list(range(72))
    True
    """
    n = rows.shape[0]
    if n < 1 or rows.shape[1] != ROW_MONTHS:
        raise DataError(f"expected rows of shape (n >= 1, {ROW_MONTHS}, ...); got {tuple(rows.shape)}")
    per_row = ROW_MONTHS // ROW_STEP
    whole = rows[::per_row]
    series = whole.reshape((whole.shape[0] * ROW_MONTHS, *rows.shape[2:]))
    remain = (n - 1) % per_row
    if remain:
        tail = rows[-1, ROW_MONTHS - remain * ROW_STEP:]
        series = _concat([series, tail])
    return series


def _concat(arrays: Sequence[Any]) -> Any:
    if any(type(a).__module__.startswith("dask") for a in arrays):
        import dask.array as da

        return da.concatenate(arrays, axis=0)
    return np.concatenate(arrays, axis=0)


def _find_files(data_dir: Path, prefix: str) -> tuple[Path, Path]:
    for folder in (data_dir, data_dir / SUBFOLDER):
        train, label = folder / f"{prefix}_train.nc", folder / f"{prefix}_label.nc"
        if train.is_file() and label.is_file():
            return train, label
    raise DataError(
        f"{prefix}_train.nc and {prefix}_label.nc not found in {str(data_dir)!r} (or its "
        f"{SUBFOLDER}/ subfolder); expected the unzipped ICAR-ENSO 2021 training archive "
        "enso_round1_train_20210201.zip (Tianchi 'AI Earth' competition)"
    )


def _model_labels(groups: Sequence[tuple[str, int, int]]) -> list[tuple[str, str, int]]:
    """(label, group, rows) per model, e.g. ('CMIP5-17', 'CMIP5', 140)."""
    out = []
    for name, n_models, n_rows in groups:
        width = len(str(n_models))
        for m in range(n_models):
            label = name if n_models == 1 else f"{name}-{m + 1:0{width}d}"
            out.append((label, name, n_rows))
    return out


def open_icar_enso(
    data_dir: str | os.PathLike,
    source: str = "cmip",
    variables: Sequence[str] | None = None,
    groups: Sequence[tuple[str, int, int]] | None = None,
    start_year: int = 1850,
) -> xr.Dataset:
    """Open ICAR-ENSO files lazily as continuous monthly series per model.

    Parameters
    ----------
    data_dir
        Folder with ``CMIP_train.nc`` + ``CMIP_label.nc`` (or ``SODA_*``), or its parent.
    source
        ``"cmip"`` (the files Earthformer uses) or ``"soda"``.
    variables
        Variables of the train file to read (default: all, e.g. sst, t300, ua, va).
    groups
        ``(group, n_models, rows_per_model)`` in file order; default the real layout of
        ``source``. Give it for files with another layout (e.g. reduced test files).
    start_year
        Nominal calendar year of each model's first January (the files carry none).

    Returns
    -------
    xarray.Dataset
        Variables ``(model, time, lat, lon)`` and ``nino(model, time)``, Dask-backed with one
        chunk per model; coordinates ``model`` (``"CMIP6-01"``...), ``group(model)``,
        ``n_months(model)`` (valid length; NaN after it), ``time`` (month starts), lat, lon.

    Examples
    --------
    >>> ds = open_icar_enso("icar_enso_2021")                             # doctest: +SKIP
    >>> int(ds.n_months.sel(model="CMIP5-17"))                            # doctest: +SKIP
    1704
    """
    import dask.array as da

    if source not in SOURCES:
        raise DataError(f"unknown ICAR-ENSO source {source!r}; expected one of {sorted(SOURCES)}")
    prefix, default_groups = SOURCES[source]
    groups = tuple(default_groups if groups is None else groups)
    train_path, label_path = _find_files(Path(data_dir).expanduser(), prefix)
    models = _model_labels(groups)
    sizes = [rows for _, _, rows in models]
    train = xr.open_dataset(train_path, engine="netcdf4")
    label = xr.open_dataset(label_path, engine="netcdf4")
    for name, ds, dims in ((train_path.name, train, ("year", "month", "lat", "lon")),
                           (label_path.name, label, ("year", "month"))):
        if ds.sizes.get("year") != sum(sizes):
            raise DataError(
                f"{name} has {ds.sizes.get('year')} rows (dim 'year'); the layout {list(groups)} "
                f"expects {sum(sizes)}; pass groups=[(name, n_models, rows_per_model), ...] "
                "matching the file"
            )
        missing = [d for d in dims if d not in ds.dims]
        if missing:
            raise DataError(f"{name} lacks dims {missing}; found {dict(ds.sizes)}, expected {dims}")
    if "nino" not in label:
        raise DataError(f"{label_path.name} has no variable 'nino'; found {list(label.data_vars)}")
    variables = [v for v in train.data_vars if train[v].dims] if variables is None else list(variables)
    unknown = [v for v in variables if v not in train]
    if unknown:
        raise DataError(f"{train_path.name} has no variables {unknown}; found {list(train.data_vars)}")

    # one dask chunk per model, aligned with the model blocks of rows
    train = train[variables].transpose("year", "month", "lat", "lon").chunk({"year": tuple(sizes)})
    nino = label["nino"].transpose("year", "month").chunk({"year": tuple(sizes)})
    n_months = np.array([ROW_STEP * (rows + ROW_MONTHS // ROW_STEP - 1) for rows in sizes])
    length = int(n_months.max())

    def series(data: Any) -> Any:
        """(rows, 36, ...) of all models -> (model, time, ...) NaN-padded."""
        out, start = [], 0
        for rows in sizes:
            s = unfold(data[start:start + rows])
            start += rows
            if s.shape[0] < length:
                dtype = np.result_type(s.dtype, np.float32)
                pad = da.full((length - s.shape[0], *s.shape[1:]), np.nan, dtype=dtype)
                s = da.concatenate([s.astype(dtype), pad], axis=0)
            out.append(s)
        return da.stack(out, axis=0)

    time = pd.date_range(f"{start_year:04d}-01-01", periods=length, freq="MS")
    data_vars = {
        v: (("model", "time", "lat", "lon"), series(train[v].data), dict(train[v].attrs))
        for v in variables
    }
    data_vars["nino"] = (("model", "time"), series(nino.data),
                         {"long_name": "Nino3.4 index (3-month running mean, current and next 2 months)",
                          **label["nino"].attrs})
    ds = xr.Dataset(
        data_vars,
        coords={
            "model": [m for m, _, _ in models],
            "group": ("model", [g for _, g, _ in models]),
            "n_months": ("model", n_months),
            "time": ("time", time, {"standard_name": "time",
                                    "comment": f"nominal calendar: the files give no years; first January = {start_year}"}),
            "lat": train["lat"] if "lat" in train.coords else ("lat", np.arange(train.sizes["lat"])),
            "lon": train["lon"] if "lon" in train.coords else ("lon", np.arange(train.sizes["lon"])),
        },
        attrs={"source": f"ICAR-ENSO 2021 {prefix}", "rows_per_model": str(list(groups))},
    )
    if "sst" in ds:
        ds["sst"].attrs.setdefault("long_name", "sea surface temperature anomaly")
        ds["sst"].attrs.setdefault("units", "degC")
    return ds


def split_models(models: Sequence[str], split: str | None) -> list[str]:
    """Official model-wise split: test = last model, val = the one before, train = the rest.

    >>> split_models(["a", "b", "c", "d"], "val")
    ['c']
    """
    models = list(models)
    if split is None:
        return models
    if split not in SPLITS:
        raise DataError(f"unknown ICAR-ENSO split {split!r}; expected one of {SPLITS} or None")
    if len(models) < 3:
        raise DataError(f"a train/val/test split needs >= 3 models; found {len(models)}: use split=None")
    return {"train": models[:-2], "val": models[-2:-1], "test": models[-1:]}[split]


def _crop_lon(ds: xr.Dataset, lon_range: tuple[float, float] | None) -> xr.Dataset:
    if lon_range is None:
        return ds
    lon = ds["lon"].values
    keep = (lon >= lon_range[0]) & (lon <= lon_range[1])
    if not keep.any():
        raise DataError(f"no longitude in {lon_range}; the data has lon {lon.min()}..{lon.max()}")
    return ds.isel(lon=np.flatnonzero(keep))


def icar_enso_windows(
    source: str | os.PathLike | xr.Dataset,
    split: str | None = "test",
    in_len: int = IN_LEN,
    out_len: int = OUT_LEN,
    stride: int = STRIDE,
    variables: Sequence[str] = ("sst",),
    lon_range: tuple[float, float] | None = LON_RANGE,
) -> xr.Dataset:
    """Cut the official ICAR-ENSO samples, lazily, model by model.

    Parameters
    ----------
    source
        A folder (opened with :func:`open_icar_enso`) or a Dataset from it.
    split
        ``"train"``, ``"val"``, ``"test"`` (model-wise) or None for all models.
    in_len, out_len, stride
        Input months, target months, window stride (official 12, 14, 1).
    variables
        Gridded variables to window (official: sst only).
    lon_range
        Longitudes kept, both ends included (official 95-330); None keeps all.

    Returns
    -------
    xarray.Dataset
        ``<var>(sample, step, lat, lon)`` unscaled, with ``step`` in months after the last
        input month (``<= 0`` input, ``> 0`` target), and ``nino_target(sample, nino_lead)``:
        the label file's index at target months ``1 .. out_len - 2``. Per-sample coordinates
        ``model``, ``window_start`` (month index in the model's series) and ``init_time``.
        Samples run model by model, then by start month, as in the official loader.

    Examples
    --------
    >>> win = icar_enso_windows("icar_enso_2021", split="test")           # doctest: +SKIP
    >>> win.sst.shape                                                     # doctest: +SKIP
    (1679, 26, 24, 48)
    """
    import dask.array as da
    from dask.array.lib.stride_tricks import sliding_window_view

    ds = source if isinstance(source, xr.Dataset) else open_icar_enso(source)
    missing = [v for v in (*variables, "nino") if v not in ds]
    if missing:
        raise DataError(f"variables {missing} not in the ICAR-ENSO dataset; found {list(ds.data_vars)}")
    if min(in_len, stride) < 1 or out_len < NINO_WINDOW:
        raise DataError(f"need in_len >= 1, stride >= 1, out_len >= {NINO_WINDOW}; "
                        f"got {in_len}, {out_len}, {stride}")
    ds = _crop_lon(ds.sel(model=split_models(ds.model.values.tolist(), split)), lon_range)
    span = in_len + out_len
    n_lead = out_len - NINO_WINDOW + 1
    pieces: dict[str, list[Any]] = {v: [] for v in (*variables, "nino")}
    model, start, init = [], [], []
    for i, name in enumerate(ds.model.values):
        n_months = int(ds.n_months.values[i])
        starts = np.arange(0, n_months - span + 1, stride)
        if starts.size == 0:
            continue
        for v in (*variables, "nino"):
            # window s holds months s ... s + span - 1 of this model only (never its padding)
            series = da.asarray(ds[v].data)[i, :n_months]      # loaded data works too
            view = sliding_window_view(series, span, axis=0)[::stride]
            view = da.moveaxis(view, -1, 1)                      # (window, step, ...)
            pieces[v].append(view if v != "nino" else view[:, in_len:in_len + n_lead])
        model += [name] * starts.size
        start.append(starts)
        init.append(ds.time.values[starts + in_len - 1])
    if not model:
        raise DataError(f"no model is long enough for a window of {span} months")
    out = xr.Dataset(
        {v: (("sample", "step", "lat", "lon"), da.concatenate(pieces[v]), dict(ds[v].attrs))
         for v in variables},
        coords={
            "sample": np.arange(len(model)),
            "step": ("step", np.arange(span) - (in_len - 1), {"units": "months",
                                                              "long_name": "months after the last input month"}),
            "nino_lead": ("nino_lead", np.arange(1, n_lead + 1), {"units": "months"}),
            "lat": ds.lat, "lon": ds.lon,
            "model": ("sample", np.array(model)),
            "window_start": ("sample", np.concatenate(start)),
            "init_time": ("sample", np.concatenate(init), {"standard_name": "forecast_reference_time"}),
        },
        attrs={"context": in_len, "lead": out_len, "stride": stride, "source": ds.attrs.get("source", "")},
    )
    out["nino_target"] = (("sample", "nino_lead"), da.concatenate(pieces["nino"]),
                          {"long_name": "Nino3.4 label of the target months (label file)"})
    return out


def scale_sst(sst: Any) -> Any:
    """Official min-max scaling of SST anomalies: ``(x - SST_MIN) / (SST_MAX - SST_MIN)``.

    >>> float(scale_sst(np.float32(SST_MAX)))
    1.0
    """
    return (sst - SST_MIN) / (SST_MAX - SST_MIN)


def unscale_sst(x: Any) -> Any:
    """Inverse of :func:`scale_sst` (official ``scale_back_sst``): ``x * range + SST_MIN``."""
    return (SST_MAX - SST_MIN) * x + SST_MIN
