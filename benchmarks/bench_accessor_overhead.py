"""Overhead of forecasting through ``ds.earthformer.forecast`` versus calling the model.

Both sides forecast the same init times with the same batch size on the same device:

* model:    ``model(x)`` on the already-encoded (N, T, H, W, C) tensors, batch by batch,
            including the copy to the device and back to a NumPy array;
* accessor: ``ds.earthformer.forecast(forecaster, ...)`` from the labelled dataset: windowing,
            normalisation, the same model calls, de-normalisation, labelling, CF attributes.

The ratio accessor / model is printed (target: at most 1.10). A benchmark, not a test:

    python benchmarks/bench_accessor_overhead.py                         # "small" preset, CPU
    python benchmarks/bench_accessor_overhead.py --preset enso --device cuda --n-init 256
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402

import xearthformer  # noqa: E402,F401  (registers the accessor)
from xearthformer import cf, layout  # noqa: E402
from xearthformer.device import resolve_device  # noqa: E402
from xearthformer.models.base import Forecaster  # noqa: E402
from xearthformer.models.earthformer.network import Earthformer, presets  # noqa: E402


def synthetic(n_time: int, h: int, w: int, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    values = 280 + 5 * np.sin(np.linspace(0, 20, n_time))[:, None, None] + rng.normal(0, 1, (n_time, h, w))
    return xr.Dataset(
        {"t2m": (("time", "lat", "lon"), values.astype("f4"),
                 {"standard_name": "air_temperature", "units": "K"})},
        coords={"time": pd.date_range("2000-01-01", periods=n_time, freq="6h"),
                "lat": ("lat", np.linspace(-60, 60, h), {"standard_name": "latitude", "units": "degrees_north"}),
                "lon": ("lon", np.linspace(0, 360, w, endpoint=False),
                        {"standard_name": "longitude", "units": "degrees_east"})},
    )


def timed(fn, repeat: int, sync) -> list[float]:
    fn()  # warm-up (allocations, kernel selection)
    sync()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small", choices=sorted(presets()))
    p.add_argument("--n-init", type=int, default=32, help="init times forecast per run")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = presets()[args.preset]
    context, h, w, _ = cfg.input_shape
    lead = cfg.target_shape[0]
    ds = synthetic(args.n_init + context - 1, h, w)
    spec = layout.fit_spec(ds, "t2m", context=context, lead=lead)
    torch.manual_seed(0)
    model = Earthformer.from_preset(args.preset, input_shape=spec.input_shape, target_shape=spec.target_shape)
    device = resolve_device(args.device)
    model.eval().to(device)
    fc = Forecaster(model, spec)
    inits = layout.init_times(ds, spec)
    x = layout.encode_inputs(ds, spec, inits)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def bare() -> None:
        with torch.inference_mode():
            for i in range(0, len(x), args.batch_size):
                model(torch.from_numpy(x[i:i + args.batch_size]).to(device)).cpu().numpy()

    def accessor() -> None:
        ds.earthformer.forecast(fc, batch_size=args.batch_size, device=device).t2m.values

    y = np.concatenate([model(torch.from_numpy(x[i:i + args.batch_size]).to(device)).detach().cpu().numpy()
                        for i in range(0, len(x), args.batch_size)])

    def labelled_only() -> None:
        # what the accessor adds around the model calls: windows, normalisation, labels, CF
        layout.encode_inputs(ds, spec, inits)
        cf.to_cf(layout.decode(y, spec, inits, like=ds))

    t_label = timed(labelled_only, args.repeat, sync)

    # interleave the two so that drifting machine load hits both alike
    t_model, t_acc = [], []
    for _ in range(args.repeat):
        t_model += timed(bare, 1, sync)
        t_acc += timed(accessor, 1, sync)
    m, a = statistics.median(t_model), statistics.median(t_acc)
    ratio = a / m
    best = min(t_acc) / min(t_model)      # least disturbed by other load on a shared machine
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"preset={args.preset} input={spec.input_shape} n_init={len(inits)} batch={args.batch_size} "
          f"device={device} ({name}) torch_threads={torch.get_num_threads()}")
    print(f"model on tensors: median {m:.3f} s  (runs {', '.join(f'{t:.3f}' for t in t_model)})")
    print(f"accessor:         median {a:.3f} s  (runs {', '.join(f'{t:.3f}' for t in t_acc)})")
    lab = min(t_label)
    print(f"labelled-data work alone (encode + decode + CF, no model): best {lab:.3f} s "
          f"= {100 * lab / min(t_model):.1f} % of the best model time")
    print(f"ratio accessor/model = {ratio:.3f} (medians), {best:.3f} (best runs); "
          f"overhead {100 * (ratio - 1):+.1f} % / {100 * (best - 1):+.1f} %; target <= +10 %")
    return ratio


if __name__ == "__main__":
    main()
