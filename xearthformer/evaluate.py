"""Score a model on SEVIR or ICAR-ENSO with the protocol of the Earthformer paper.

The test set is streamed in batches (never loaded whole): windows come lazily from
:mod:`xearthformer.data.sevir` / :mod:`xearthformer.data.icar_enso`, the model runs through
:func:`xearthformer.forecast.predict_tensor`, and only running totals are kept.

SEVIR (13 -> 12 frames of VIL): hits/misses/false alarms at thresholds 16, 74, 133, 160, 181,
219 (pixel code, event ``>=``) summed over every window, pixel *and lead*, then CSI with
``eps = 1e-4`` (``metrics.csi(..., protocol="sevir")``); CSI-M is their mean. MSE/MAE on the
[0, 1] scale (code / 255). Predictions are never clipped.

SEVIR-LR (PreDiff: 7 -> 6 frames of 128 x 128 VIL, 10 minutes apart; read from SEVIR or
SEVIR-LR files by :mod:`xearthformer.data.sevir_lr`): the same counts, CSI-M and MSE/MAE, plus
the pooled CSI of DGMR/PreDiff (forecast and observation max-pooled over 4 x 4 and 16 x 16
pixel blocks, stride = block, before thresholding: the official ``sevir_pool{4,16}`` mode). A
stochastic bundle (PreDiff) is run ``members`` times per window, each member drawn from its
own key (seed, window init time, window number, member): every member is scored as a forecast
of its own, the counts summed over all of them (the official code scores each sample
independently), and the ensemble adds CRPS (pixel, 4 and 16 px max-pooled; [0, 1] scale) and
the CSI/MSE of the ensemble mean.

ICAR-ENSO (12 -> 14 months of SST anomaly): the predicted Nino3.4 index is
``metrics.nino34_index(..., protocol="icar-enso")`` (the official 33-point box, 3-month
forward mean: 12 leads); the observed index is the label file's. C-Nino3.4-M/WM from
``metrics.c_nino34(..., protocol="icar-enso")``. MSE/MAE on the official min-max scale.

Model inputs are normalised with the Forecaster's own spec (one input and one target
channel; methods zscore/minmax/scale/none) through :meth:`xearthformer.layout.Channel.normalise`
and outputs de-normalised with it, so a model trained with xearthformer is scored exactly like
the converted official weights. Which data sets a model may be scored on is its family's
``datasets`` in :mod:`xearthformer.models.registry`.

>>> scores = evaluate("earthformer-enso", "enso", "~/data/icar_enso_2021")   # doctest: +SKIP
>>> float(scores.c_nino34_m)                                                # doctest: +SKIP

Command line: ``xearthformer evaluate --model M.xef --dataset sevir --data-dir ~/data/sevir``;
``--dataset sevir-lr --members 8 --steps 20 --sampler ddim --seed 0`` for an ensemble.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .errors import ConfigError, DataError
from .forecast import DEFAULT_BATCH_SIZE, plan_inference, predict_tensor
from .layout import Channel
from .models import registry
from .models.base import Forecaster, check_forecaster, is_stochastic
from .models.keys import make_keys, member_indices
from .progress import progress_bar

#: published Earthformer test scores (DESIGN.md table); the CLI prints ours beside them. The
#: PreDiff repository states no SEVIR-LR numbers (its paper's tables are not verified here).
PUBLISHED: dict[str, dict[str, float]] = {
    "sevir": {"csi_m": 0.4419, "csi_219": 0.1791, "csi_181": 0.2848, "mse": 3.6957e-3},
    "enso": {"c_nino34_m": 0.7329, "c_nino34_wm": 2.259, "mse": 2.546e-4},
    "sevir-lr": {},
}
DATASETS = tuple(PUBLISHED)
#: scores the table of :func:`format_scores` shows besides the published ones
HEADLINE: dict[str, tuple[str, ...]] = {
    "sevir-lr": ("csi_m", "csi_m_pool4", "csi_m_pool16", "csi_219", "mse", "crps",
                 "crps_pool4", "crps_pool16", "ens_mean_csi_m", "ens_mean_mse"),
}
#: pooled-CSI/CRPS block sizes of the SEVIR-LR protocol (DGMR, PreDiff), in pixels
POOLS = (4, 16)
#: members per window when a stochastic bundle is scored and ``members`` is not given
EVALUATE_MEMBERS = 8
_METHODS = ("zscore", "minmax", "scale", "none")


# ----------------------------------------------------------------------------------------------
# model loading and (de)normalisation with the model's own spec
# ----------------------------------------------------------------------------------------------
def _load_model(model: Any) -> Forecaster:
    """A Forecaster from a Forecaster, a ``.xef`` path or a pretrained name."""
    if not isinstance(model, (str, os.PathLike)):
        return check_forecaster(model)
    path = Path(model).expanduser()
    if path.exists():
        from .checkpoint import load

        return load(path)
    from .hub import REGISTRY, pretrained

    if str(model) in REGISTRY:
        return pretrained(str(model))
    raise ConfigError(
        f"model {str(model)!r} is neither a file nor a pretrained name; expected a .xef bundle "
        f"(xearthformer.save) or one of {sorted(REGISTRY)}"
    )


def _channel(forecaster: Forecaster) -> tuple[Channel, Channel]:
    """The single input and target channel of the model's spec (checked)."""
    spec = forecaster.spec
    if spec.n_inputs != 1 or spec.n_targets != 1:
        raise ConfigError(
            f"evaluate needs a model with one input and one target channel (the data set's "
            f"single variable); this one has inputs {spec.input_channel_names} and targets "
            f"{[c.name for c in spec.targets]}"
        )
    for ch in (spec.inputs[0], spec.targets[0]):
        if ch.method not in _METHODS:
            raise ConfigError(
                f"channel {ch.name!r} is normalised with {ch.method!r}; evaluate supports "
                f"{_METHODS} (the official protocols need no climatology)"
            )
    return spec.inputs[0], spec.targets[0]


def _predict(forecaster: Forecaster, raw: np.ndarray, ch_in: Channel, ch_out: Channel,
             batch_size: int, device: Any, keys: np.ndarray | None = None,
             sampling: dict[str, Any] | None = None) -> np.ndarray:
    """Raw (N, T_in, H, W) inputs -> raw (N, M, T_out, H, W) predictions: normalise with the
    model's input channel, run the model (stochastic ones: one member per key), de-normalise
    with its target channel (in float32, as the official protocols scale)."""
    x = ch_in.normalise(raw, dtype=np.float32)[..., None]
    y = predict_tensor(forecaster, x, keys=keys, batch_size=batch_size, device=device, progress=False,
                       **(sampling or {}))
    return ch_out.denormalise(y[..., 0], dtype=np.float32).astype(np.float32)


def _blocks(n: int, batch_size: int, progress: bool | None, desc: str) -> Any:
    """Start indices of the blocks of ``batch_size`` windows the test set is streamed in."""
    starts = range(0, n, batch_size)
    return progress_bar(starts, progress=progress, total=len(starts), desc=desc, unit="batch")


def _check_fit(forecaster: Forecaster, context: int, lead: int, shape: tuple[int, int], name: str) -> None:
    spec = forecaster.spec
    if (spec.context, spec.lead) != (context, lead) or tuple(spec.grid.shape) != tuple(shape):
        raise ConfigError(
            f"the {name} protocol needs a model {context} -> {lead} steps on a {shape[0]}x"
            f"{shape[1]} grid; this model does {spec.context} -> {spec.lead} on "
            f"{spec.grid.shape[0]}x{spec.grid.shape[1]}"
        )


# ----------------------------------------------------------------------------------------------
# SEVIR
# ----------------------------------------------------------------------------------------------
def _evaluate_sevir(forecaster: Forecaster, data_dir: Any, split: str, batch_size: int, device: Any,
                    max_samples: int | None, official_batching: bool, progress: bool | None
                    ) -> xr.Dataset:
    from .data import sevir
    from .metrics import contingency, scores_from_counts
    from .metrics.categorical import SEVIR_EPS, SEVIR_THRESHOLDS

    win = sevir.sevir_windows(data_dir, split=split)
    var = win["vil"]
    n_in, n_out = win.attrs["context"], win.attrs["lead"]
    _check_fit(forecaster, n_in, n_out, (win.sizes["y"], win.sizes["x"]), "SEVIR")
    ch_in, ch_out = _channel(forecaster)
    n = win.sizes["sample"] if max_samples is None else min(max_samples, win.sizes["sample"])
    if official_batching:
        n -= n % 2      # official loader: micro-batches of 2, an odd last window is dropped
    if n < 1:
        raise DataError(f"no SEVIR windows to score in split {split!r} under {data_dir}")
    lead = win.step.values[n_in:]
    counts: xr.Dataset | None = None
    sq = ab = 0.0
    for i0 in _blocks(n, batch_size, progress, "evaluate sevir"):
        block = var.isel(sample=slice(i0, min(i0 + batch_size, n))).values    # uint8 codes
        x = block[:, :n_in].astype(np.float32)
        obs = block[:, n_in:].astype(np.float32)
        pred = _predict(forecaster, x, ch_in, ch_out, batch_size, device)[:, 0]  # pixel code
        dims = ("init_time", "lead_time", "y", "x")
        c = contingency(xr.DataArray(pred, dims=dims, coords={"lead_time": lead}),
                        xr.DataArray(obs, dims=dims, coords={"lead_time": lead}),
                        thresholds=list(SEVIR_THRESHOLDS), dim=["init_time", "y", "x"],
                        protocol="sevir")
        counts = c if counts is None else counts + c
        err = pred.astype(np.float64) / 255.0 - sevir.scale(obs.astype(np.uint8))
        sq += float(np.square(err).sum())
        ab += float(np.abs(err).sum())
    size = n * n_out * var.shape[2] * var.shape[3]
    pooled = scores_from_counts(counts.sum("lead_time"), SEVIR_EPS)
    by_lead = scores_from_counts(counts, SEVIR_EPS)
    out = xr.Dataset(
        {
            "csi_m": pooled.csi.mean("threshold"),
            "csi_219": pooled.csi.sel(threshold=219.0),
            "csi_181": pooled.csi.sel(threshold=181.0),
            "mse": xr.DataArray(sq / size),
            "mae": xr.DataArray(ab / size),
            "csi": pooled.csi, "pod": pooled.pod, "sucr": pooled.sucr,
            "csi_by_lead": by_lead.csi,
            **{k: counts[k] for k in ("hits", "misses", "false_alarms")},
        },
        attrs={"dataset": "sevir", "split": split, "n_samples": int(n),
               "protocol": "Earthformer SEVIR: counts pooled over samples, pixels and leads; "
                           "eps 1e-4; MSE/MAE on VIL/255"},
    )
    return out.drop_vars([v for v in out.coords if v not in ("threshold", "lead_time")])


# ----------------------------------------------------------------------------------------------
# SEVIR-LR (PreDiff)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Draws:
    """The members to draw per window (None: a deterministic bundle), their seed and the
    family's sampling options."""

    members: np.ndarray | None
    seed: int = 0
    sampling: dict[str, Any] = field(default_factory=dict)


def _draws(forecaster: Forecaster, members: Any, steps: int | None, sampler: str | None,
           seed: Any) -> _Draws:
    sampling = {k: v for k, v in (("steps", steps), ("sampler", sampler)) if v is not None}
    if not is_stochastic(forecaster):
        if members is not None or sampling:
            given = (["members"] if members is not None else []) + sorted(sampling)
            raise ConfigError(f"{type(forecaster.model).__name__} is deterministic (one forecast per "
                              f"window); drop {', '.join(given)} (--members/--steps/--sampler).")
        return _Draws(None)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be an integer, got {seed!r}.")
    return _Draws(member_indices(EVALUATE_MEMBERS if members is None else members), int(seed), sampling)


def _pooled_counts(pred: xr.DataArray, obs: xr.DataArray, dims: list[str],
                   pools: tuple[int, ...] = (1, *POOLS)) -> dict[int, xr.Dataset]:
    """SEVIR-protocol counts per threshold and lead, max-pooled over each of ``pools`` blocks
    (1: the pixel scale)."""
    from .metrics import contingency
    from .metrics.categorical import SEVIR_THRESHOLDS

    return {p: contingency(pred, obs, thresholds=list(SEVIR_THRESHOLDS), dim=dims,
                           pool=None if p == 1 else p, protocol="sevir") for p in pools}


def _crps_sums(ens: xr.DataArray, obs: xr.DataArray) -> dict[int, tuple[float, int]]:
    """(sum of pointwise CRPS, number of points) at the pixel scale and max-pooled over each of
    :data:`POOLS`; a one-member ensemble's CRPS is its absolute error."""
    from .metrics import crps
    from .metrics.pooling import pool

    out = {}
    for p in (1, *POOLS):
        e, o = (ens, obs) if p == 1 else (pool(ens, p, "max"), pool(obs, p, "max"))
        point = crps(e, o, dim=[]) if e.sizes["member"] > 1 else abs(e.isel(member=0) - o)
        out[p] = (float(point.sum()), int(point.size))
    return out


def _evaluate_sevir_lr(forecaster: Forecaster, data_dir: Any, split: str, batch_size: int, device: Any,
                       max_samples: int | None, progress: bool | None, draws: _Draws) -> xr.Dataset:
    from .data import sevir, sevir_lr
    from .metrics import scores_from_counts
    from .metrics.categorical import SEVIR_EPS

    win = sevir_lr.sevir_lr_windows(data_dir, split=split)
    var = win["vil"]
    n_in, n_out = win.attrs["context"], win.attrs["lead"]
    _check_fit(forecaster, n_in, n_out, (win.sizes["y"], win.sizes["x"]), "SEVIR-LR")
    ch_in, ch_out = _channel(forecaster)
    n = win.sizes["sample"] if max_samples is None else min(max_samples, win.sizes["sample"])
    if n < 1:
        raise DataError(f"no SEVIR-LR windows to score in split {split!r} under {data_dir}")
    lead = win.step.values[n_in:]
    dims = ("init_time", "member", "lead_time", "y", "x")
    counts: dict[int, xr.Dataset] = {}
    mean_counts: xr.Dataset | None = None
    sums = {"sq": 0.0, "ab": 0.0, "mean_sq": 0.0, "mean_ab": 0.0}
    crps_sums: dict[int, list[float]] = {p: [0.0, 0] for p in (1, *POOLS)}
    for i0 in _blocks(n, batch_size, progress, "evaluate sevir-lr"):
        rows = np.arange(i0, min(i0 + batch_size, n))
        block = var.isel(sample=slice(rows[0], rows[-1] + 1)).values          # uint8 codes
        x, obs = block[:, :n_in].astype(np.float32), block[:, n_in:].astype(np.float32)
        keys = None if draws.members is None else make_keys(
            draws.seed, win.init_time.values[rows], rows, draws.members)
        pred = _predict(forecaster, x, ch_in, ch_out, batch_size, device, keys, draws.sampling)
        p_da = xr.DataArray(pred, dims=dims, coords={"lead_time": lead})
        o_da = xr.DataArray(obs, dims=("init_time", "lead_time", "y", "x"), coords={"lead_time": lead})
        for p, c in _pooled_counts(p_da, o_da, ["init_time", "member", "y", "x"]).items():
            counts[p] = c if p not in counts else counts[p] + c
        truth = sevir.scale(block[:, n_in:])                                   # official /255
        err = pred.astype(np.float64) / 255.0 - truth[:, None]
        sums["sq"] += float(np.square(err).sum())
        sums["ab"] += float(np.abs(err).sum())
        if draws.members is not None:
            mean = p_da.astype(np.float64).mean("member")
            c = _pooled_counts(mean, o_da, ["init_time", "y", "x"], pools=(1,))[1]
            mean_counts = c if mean_counts is None else mean_counts + c
            mean_err = mean.values / 255.0 - truth
            sums["mean_sq"] += float(np.square(mean_err).sum())
            sums["mean_ab"] += float(np.abs(mean_err).sum())
            ens01 = p_da.astype(np.float64) / 255.0
            obs01 = xr.DataArray(truth.astype(np.float64), dims=o_da.dims)
            for p, (total, points) in _crps_sums(ens01, obs01).items():
                crps_sums[p][0] += total
                crps_sums[p][1] += points
    n_members = 1 if draws.members is None else draws.members.size
    size = n * n_out * var.shape[2] * var.shape[3]
    pooled = {p: scores_from_counts(c.sum("lead_time"), SEVIR_EPS) for p, c in counts.items()}
    scores: dict[str, Any] = {
        "csi_m": pooled[1].csi.mean("threshold"),
        "csi_219": pooled[1].csi.sel(threshold=219.0),
        "csi_181": pooled[1].csi.sel(threshold=181.0),
        "mse": xr.DataArray(sums["sq"] / (size * n_members)),
        "mae": xr.DataArray(sums["ab"] / (size * n_members)),
        "csi": pooled[1].csi, "pod": pooled[1].pod, "sucr": pooled[1].sucr,
        "csi_by_lead": scores_from_counts(counts[1], SEVIR_EPS).csi,
        **{k: counts[1][k] for k in ("hits", "misses", "false_alarms")},
    }
    for p in POOLS:
        scores[f"csi_pool{p}"] = pooled[p].csi
        scores[f"csi_m_pool{p}"] = pooled[p].csi.mean("threshold")
    attrs: dict[str, Any] = {"dataset": "sevir-lr", "split": split, "n_samples": int(n), "members": n_members}
    if draws.members is not None:
        assert mean_counts is not None
        mean_scores = scores_from_counts(mean_counts.sum("lead_time"), SEVIR_EPS)
        scores.update({
            "crps": xr.DataArray(crps_sums[1][0] / crps_sums[1][1]),
            **{f"crps_pool{p}": xr.DataArray(crps_sums[p][0] / crps_sums[p][1]) for p in POOLS},
            "ens_mean_csi": mean_scores.csi,
            "ens_mean_csi_m": mean_scores.csi.mean("threshold"),
            "ens_mean_mse": xr.DataArray(sums["mean_sq"] / size),
            "ens_mean_mae": xr.DataArray(sums["mean_ab"] / size),
        })
        attrs.update(seed=draws.seed, **{k: str(v) for k, v in draws.sampling.items()})
    attrs["protocol"] = (
        "PreDiff SEVIR-LR: 7 -> 6 frames; counts pooled over samples, members, pixels and leads; "
        f"eps 1e-4; pooled CSI/CRPS: {'/'.join(map(str, POOLS))} px max-pool, stride = pool; "
        "MSE/MAE/CRPS on VIL/255")
    out = xr.Dataset(scores, attrs=attrs)
    return out.drop_vars([v for v in out.coords if v not in ("threshold", "lead_time")])


# ----------------------------------------------------------------------------------------------
# ICAR-ENSO
# ----------------------------------------------------------------------------------------------
def _evaluate_enso(forecaster: Forecaster, data_dir: Any, split: str, batch_size: int, device: Any,
                   max_samples: int | None, progress: bool | None) -> xr.Dataset:
    from .data import icar_enso
    from .metrics import c_nino34, nino34_index

    ds = data_dir if isinstance(data_dir, xr.Dataset) else icar_enso.open_icar_enso(data_dir)
    # the split's models are small (one CMIP5 run is ~12 MB of SST): read them once
    models = icar_enso.split_models(ds.model.values.tolist(), split)
    chosen = ds[["sst", "nino"]].sel(model=models).load()
    win = icar_enso.icar_enso_windows(chosen, split=None)
    n_in, n_out = win.attrs["context"], win.attrs["lead"]
    _check_fit(forecaster, n_in, n_out, (win.sizes["lat"], win.sizes["lon"]), "ICAR-ENSO")
    ch_in, ch_out = _channel(forecaster)
    n = win.sizes["sample"] if max_samples is None else min(max_samples, win.sizes["sample"])
    if n < 1:
        raise DataError(f"no ICAR-ENSO windows to score in split {split!r}")
    coords = {"lat": win.lat, "lon": win.lon, "lead_time": np.arange(1, n_out + 1)}
    indices = []
    sq = ab = 0.0
    for i0 in _blocks(n, batch_size, progress, "evaluate enso"):
        sst = win.sst.isel(sample=slice(i0, min(i0 + batch_size, n))).values
        pred = _predict(forecaster, sst[:, :n_in], ch_in, ch_out, batch_size, device)[:, 0]  # degC anomaly
        index = nino34_index(
            xr.DataArray(pred, dims=("init_time", "lead_time", "lat", "lon"),
                         coords={**coords, "init_time": np.arange(i0, i0 + len(pred))}),
            protocol="icar-enso")
        indices.append(index)
        err = (icar_enso.scale_sst(pred.astype(np.float64))
               - icar_enso.scale_sst(sst[:, n_in:].astype(np.float64)))
        sq += float(np.square(err).sum())
        ab += float(np.abs(err).sum())
    forecast_index = xr.concat(indices, dim="init_time")
    observed = win.nino_target.isel(sample=slice(0, n)).values
    observed_index = xr.DataArray(
        observed, dims=("init_time", "lead_time"),
        coords={"init_time": np.arange(n), "lead_time": forecast_index.lead_time.values})
    skill = c_nino34(forecast_index, observed_index, protocol="icar-enso")
    size = n * n_out * win.sizes["lat"] * win.sizes["lon"]
    return xr.Dataset(
        {
            "c_nino34_m": skill.c_nino34_m,
            "c_nino34_wm": skill.c_nino34_wm,
            "mse": xr.DataArray(sq / size),
            "mae": xr.DataArray(ab / size),
            "cor": skill.cor,
            "nino_rmse": skill.rmse,
        },
        attrs={"dataset": "enso", "split": split, "n_samples": int(n),
               "models": ", ".join(models),
               "protocol": "Earthformer ICAR-ENSO: predicted index from the 24x48 SST box, "
                           "observed index from the label file; MSE/MAE on the min-max scale"},
    )


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------
def evaluate(
    model: Any,
    dataset: str,
    data_dir: str | os.PathLike,
    split: str = "test",
    batch_size: int | None = None,
    device: Any = "auto",
    max_samples: int | None = None,
    official_batching: bool = False,
    progress: bool | None = None,
    *,
    members: int | Any = None,
    steps: int | None = None,
    sampler: str | None = None,
    seed: int = 0,
) -> xr.Dataset:
    """Score ``model`` on SEVIR or ICAR-ENSO with the Earthformer paper's protocol, or on
    SEVIR-LR with PreDiff's.

    Parameters
    ----------
    model
        A :class:`~xearthformer.Forecaster`, a ``.xef`` path, or a pretrained name
        (``"earthformer-sevir"``, ``"earthformer-enso"``; downloads on first use).
    dataset
        ``"sevir"``, ``"enso"`` or ``"sevir-lr"``.
    data_dir
        SEVIR root (``CATALOG.csv`` + ``data/``), the ICAR-ENSO folder (``CMIP_*.nc``), or for
        ``"sevir-lr"`` a SEVIR or SEVIR-LR root (:mod:`xearthformer.data.sevir_lr`).
    split
        ``"test"`` (the paper's numbers), ``"val"`` or ``"train"``; SEVIR-LR: ``"test"`` or
        ``"trainval"``.
    batch_size
        Windows per model call; only one batch is in memory at a time. None: as many as fit
        (at most ``DEFAULT_BATCH_SIZE``; :func:`xearthformer.forecast.plan_inference`).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``...
    max_samples
        Score only the first windows (quick checks); None scores all.
    official_batching
        SEVIR only: drop the last window when their number is odd, as the official loader
        (micro-batches of 2, one GPU) does, to score exactly the windows of the official run.
    progress
        Progress bar over batches (None: only on a terminal).
    members, steps, sampler, seed
        SEVIR-LR with a stochastic bundle only: members per window (a count, default
        ``EVALUATE_MEMBERS`` = 8, or member indices), the family's sampling steps and sampler
        (None: its defaults) and the seed of the members' noise keys. A deterministic bundle
        refuses them.

    Returns
    -------
    xarray.Dataset
        SEVIR: ``csi_m``, ``csi_219``, ``csi_181``, ``mse``, ``mae`` (scalars), ``csi``,
        ``pod``, ``sucr`` per threshold, ``csi_by_lead`` and the counts per lead/threshold.
        SEVIR-LR: the same (counts over every member) plus ``csi_pool4``/``csi_pool16`` per
        threshold and their means ``csi_m_pool4``/``csi_m_pool16``; for a stochastic bundle
        also ``crps``, ``crps_pool4``, ``crps_pool16`` ([0, 1] scale), ``ens_mean_csi`` (per
        threshold), ``ens_mean_csi_m``, ``ens_mean_mse`` and ``ens_mean_mae``.
        ENSO: ``c_nino34_m``, ``c_nino34_wm``, ``mse``, ``mae``, ``cor`` and ``nino_rmse``
        per lead. Attributes name the data set, split, sample count and the published values
        (``published_<score>``).

    Examples
    --------
    >>> s = evaluate("sevir_model.xef", "sevir", "~/data/sevir", batch_size=8)   # doctest: +SKIP
    >>> print(format_scores(s))                                                   # doctest: +SKIP
    >>> e = evaluate("prediff.xef", "sevir-lr", "~/data/sevir_lr", members=8, steps=20)  # doctest: +SKIP
    >>> float(e.crps), float(e.ens_mean_csi_m)                                   # doctest: +SKIP
    """
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    if dataset != "sevir-lr" and (members is not None or steps is not None or sampler is not None):
        raise ConfigError(f"members/steps/sampler score ensembles, which only the sevir-lr protocol "
                          f"does; drop them for {dataset!r} or use dataset='sevir-lr'.")
    if batch_size is not None and int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    forecaster = _load_model(model)
    if batch_size is None:  # the one memory planner picks the block of windows streamed at once
        from .device import resolve_device

        batch_size = plan_inference(forecaster.model, forecaster.spec.input_shape, DEFAULT_BATCH_SIZE,
                                    device=resolve_device(device)).batch_size
    row = registry.family_of(forecaster)
    if dataset not in row.datasets:
        raise ConfigError(f"the {row.name} family is not scored on {dataset!r}; its data sets are "
                          f"{list(row.datasets) or 'none'}.")
    if dataset == "sevir":
        scores = _evaluate_sevir(forecaster, data_dir, split, int(batch_size), device,
                                 max_samples, official_batching, progress)
    elif dataset == "sevir-lr":
        scores = _evaluate_sevir_lr(forecaster, data_dir, split, int(batch_size), device, max_samples,
                                    progress, _draws(forecaster, members, steps, sampler, seed))
    else:
        scores = _evaluate_enso(forecaster, data_dir, split, int(batch_size), device,
                                max_samples, progress)
    scores.attrs.update({f"published_{k}": v for k, v in PUBLISHED[dataset].items()})
    return scores


def format_scores(scores: xr.Dataset) -> str:
    """A small table of the headline scores beside the published Earthformer numbers.

    Examples
    --------
    >>> s = xr.Dataset({"mse": 0.002}, attrs={"dataset": "sevir", "split": "test", "n_samples": 3})
    >>> print(format_scores(s).splitlines()[1])
    metric              this model     published
    """
    dataset = scores.attrs.get("dataset", "")
    published = PUBLISHED.get(dataset, {})
    lines = [f"{dataset} {scores.attrs.get('split', '')} split, "
             f"{scores.attrs.get('n_samples', '?')} windows",
             f"{'metric':<16}{'this model':>14}{'published':>14}"]
    names = list(published) + [k for k in (*HEADLINE.get(dataset, ()), "mae")
                               if k in scores and k not in published]
    for name in names:
        ours = f"{float(scores[name]):.4g}" if name in scores else "-"
        ref = f"{published[name]:.4g}" if name in published else "-"
        lines.append(f"{name:<16}{ours:>14}{ref:>14}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``xearthformer evaluate``."""
    parser.add_argument("--model", required=True,
                        help="a .xef bundle, or a pretrained name (earthformer-sevir, earthformer-enso)")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data-dir", required=True,
                        help="SEVIR root (CATALOG.csv + data/), the ICAR-ENSO folder (CMIP_*.nc), or "
                             "for sevir-lr a SEVIR or SEVIR-LR root")
    parser.add_argument("--split", default="test", choices=("train", "val", "test", "trainval"),
                        help="test (default); sevir/enso also train, val; sevir-lr also trainval")
    parser.add_argument("--members", type=int, default=None,
                        help=f"sevir-lr, stochastic bundles: members per window (default {EVALUATE_MEMBERS})")
    parser.add_argument("--steps", type=int, default=None,
                        help="sevir-lr, stochastic bundles: sampling steps (default: the family's)")
    parser.add_argument("--sampler", default=None,
                        help="sevir-lr, stochastic bundles: sampler name (default: the family's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the members' noise (default 0)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"windows per model call (default: as many as fit, at most {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda:0...")
    parser.add_argument("--max-samples", type=int, default=None,
                        help="score only the first N windows (a quick check)")
    parser.add_argument("--official-batching", action="store_true",
                        help="SEVIR: drop an odd last window as the official loader does")
    parser.add_argument("--output", default=None,
                        help="also write all scores to this file (.nc NetCDF, or .json headline scores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``xearthformer evaluate``; prints the scores beside the published ones."""
    scores = evaluate(args.model, args.dataset, args.data_dir, split=args.split,
                      batch_size=args.batch_size, device=args.device,
                      max_samples=args.max_samples, official_batching=args.official_batching,
                      progress=False if args.no_progress else None, members=args.members,
                      steps=args.steps, sampler=args.sampler, seed=args.seed)
    print(format_scores(scores))
    if args.output:
        out = Path(args.output)
        if out.suffix == ".json":
            headline = {k: float(v) for k, v in scores.data_vars.items() if v.ndim == 0}
            out.write_text(json.dumps({**headline, **scores.attrs}, indent=2, default=str))
        else:
            scores.to_netcdf(out)
        print(f"scores written to {out}")
    return 0
