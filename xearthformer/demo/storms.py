"""``xearthformer demo --case storms``: nowcasting synthetic storm cells, scored by CSI.

A small Earthformer learns to continue 6 five-minute frames of synthetic moving, growing and
decaying storm cells (:mod:`xearthformer.data.storms`, SEVIR-like 0-255 VIL code, 288 frames
of 48x48 pixels) for 6 frames. It is trained on the first 75% of the record (its last 20% for
validation and best-epoch selection) and scored on the rest with the critical success index
at the SEVIR thresholds, pooled over pixels, init times and leads (Earthformer's protocol),
against persistence.

>>> run_storms(Path("xef-demo"))                                   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from ..data.sevir import SEVIR_THRESHOLDS
from ..data.storms import storms
from .baselines import persistence

if TYPE_CHECKING:
    from ..models.base import Forecaster

CONTEXT, LEAD = 6, 6
N_TIMES, SIZE = 288, (48, 48)
TEST_FRACTION = 0.25
PRESET, EPOCHS, LR = "small", 5, 2e-3
MODEL_FILE = "storms_model.xef"
# VIL codes 0-255 scaled to 0-1 (the SEVIR convention), not z-scored: zero stays zero
VIL_SCALE = {"vil": {"method": "scale", "offset": 0.0, "scale": 255.0}}


def storms_data(quick: bool = False, seed: int = 0) -> tuple[xr.Dataset, int]:
    """The demo's synthetic storms and the index of the first test frame (both cases share it)."""
    n_times = 96 if quick else N_TIMES
    ds = storms(n_times=n_times, size=SIZE, seed=seed)
    return ds, int(round(n_times * (1 - TEST_FRACTION)))


def held_out_inits(ds: xr.Dataset, split: int) -> slice:
    """Init times of the test part: from the last training frame to the last with a full lead."""
    times = ds["time"].values
    return slice(times[split - 1], times[-LEAD - 1])


def train_storms_model(train_ds: xr.Dataset, out: Path, epochs: int | None = None, quick: bool = False,
                       seed: int = 0, device: str = "auto") -> Forecaster:
    """Train the deterministic storms Earthformer (the ``small`` preset) and save it as
    ``out/storms_model.xef``."""
    from ..checkpoint import save
    from ..training.labelled import train

    forecaster = train(
        train_ds, preset=PRESET, variables=["vil"], context=CONTEXT, lead=LEAD,
        epochs=epochs if epochs is not None else (1 if quick else EPOCHS), batch_size=4, val=0.2,
        device=device, checkpoint_dir=out / "checkpoints", seed=seed, lr=LR,
        normalization=VIL_SCALE, progress=True, steps_per_epoch=2 if quick else None)
    save(forecaster, out / MODEL_FILE)
    return forecaster


def run_storms(out: Path, epochs: int | None = None, quick: bool = False, seed: int = 0,
               device: str = "auto") -> dict[str, Any]:
    """The storms demo; returns the CSI rows and output paths."""
    from .. import metrics
    from .plots import plot_storm_frames

    ds, split = storms_data(quick, seed)
    n_times = ds.sizes["time"]
    train_ds = ds.isel(time=slice(0, split))
    print(f"synthetic storms: {n_times} frames of {SIZE[0]}x{SIZE[1]} (5 min, 2 km); training on "
          f"the first {split}, testing on the last {n_times - split}")
    forecaster = train_storms_model(train_ds, out, epochs, quick, seed, device)
    fc = ds.earthformer.forecast(forecaster, init=held_out_inits(ds, split), progress=False)
    fc_path = out / "storms_forecast.nc"
    fc.to_netcdf(fc_path)

    obs = ds["vil"]
    model_fc = fc["vil"].load()
    forecasts = {"earthformer": model_fc, "persistence": persistence(obs, model_fc)}
    csi = {name: metrics.csi(f, obs, thresholds=list(SEVIR_THRESHOLDS), dim=list(f.dims))
           for name, f in forecasts.items()}
    print(f"\nCSI on the test part ({model_fc.sizes['init_time']} init times x {LEAD} leads, "
          "pooled over pixels, inits and leads; events are value >= threshold):\n")
    head = "| forecast | " + " | ".join(f"CSI-{t}" for t in SEVIR_THRESHOLDS) + " | CSI-M |"
    lines = [head, "|" + "---|" * (len(SEVIR_THRESHOLDS) + 2)]
    rows = []
    for name, score in csi.items():
        values = np.asarray(score.values, dtype=float)
        rows.append({"forecast": name, **{f"csi_{t}": float(v) for t, v in zip(SEVIR_THRESHOLDS, values)},
                     "csi_m": float(np.nanmean(values))})
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {np.nanmean(values):.3f} |")
    table = "\n".join(lines)
    print(table)
    (out / "storms_skill.md").write_text(table + "\n")
    frames = plot_storm_frames(model_fc, obs, out / "storms_frames.png")
    return {"rows": rows, "forecast": fc_path, "frames": frames, "model": out / MODEL_FILE}
