"""forecast.py: predict_tensor, eager/lazy/distributed forecasts, resumable writing."""

from __future__ import annotations

import logging
import os
import threading

import cloudpickle
import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import zarr

from xearthformer import archive as A
from xearthformer import cf, layout
from xearthformer import forecast as F
from xearthformer.models.base import Forecaster
from xearthformer.device import resolve_device
from xearthformer.errors import ConfigError, DataError, ModelTypeError
from xearthformer.models.earthformer.network import Earthformer

CONTEXT, LEAD = 4, 3


def make_data(n_time: int = 30, calendar: str | None = None, seed: int = 0) -> xr.Dataset:
    """6-hourly (time, lat, lon) temperature on a 16 x 16 grid."""
    rng = np.random.default_rng(seed)
    if calendar is None:
        time = pd.date_range("2000-01-01", periods=n_time, freq="6h")
    else:
        time = xr.date_range("2000-02-27", periods=n_time, freq="6h", calendar=calendar, use_cftime=True)
    base = np.sin(np.linspace(0, 6, n_time))[:, None, None] * 5 + 280
    return xr.Dataset(
        {"t2m": (("time", "lat", "lon"), (base + rng.normal(0, 2, (n_time, 16, 16))).astype("f4"),
                 {"standard_name": "air_temperature", "units": "K", "long_name": "2 m temperature"})},
        coords={"time": time,
                "lat": ("lat", np.linspace(-30, 30, 16), {"standard_name": "latitude", "units": "degrees_north"}),
                "lon": ("lon", np.linspace(0, 90, 16), {"standard_name": "longitude", "units": "degrees_east"})},
        attrs={"institution": "Synthetic Lab"},
    )


def make_forecaster(ds: xr.Dataset, seed: int = 0) -> Forecaster:
    spec = layout.fit_spec(ds, "t2m", context=CONTEXT, lead=LEAD)
    torch.manual_seed(seed)
    model = Earthformer.from_preset("tiny", input_shape=spec.input_shape, target_shape=spec.target_shape)
    return Forecaster(model, spec)


@pytest.fixture(scope="module")
def data() -> xr.Dataset:
    return make_data()


@pytest.fixture(scope="module")
def model(data) -> Forecaster:
    return make_forecaster(data)


def brute_force(ds: xr.Dataset, fc: Forecaster, init_positions) -> np.ndarray:
    """Reference forecast: windows cut by hand, z-score by hand, one model call per init."""
    ch = fc.spec.targets[0]
    out = []
    with torch.no_grad():
        for p in init_positions:
            window = (ds.t2m.values[p - CONTEXT + 1:p + 1].astype("f8") - ch.offset) / ch.scale
            y = fc.model.eval()(torch.from_numpy(window[None, ..., None].astype("f4")))
            out.append(y[0, ..., 0].double().numpy() * ch.scale + ch.offset)
    return np.stack(out).astype("f4")


def raising_scheduler(dsk, keys, **kwargs):
    raise AssertionError("something was computed")


# ----------------------------------------------------------------------------------------------
# predict_tensor
# ----------------------------------------------------------------------------------------------
class Scale(torch.nn.Module):
    """y = 2 x, with a dropout that would randomise the output in training mode."""

    def __init__(self):
        super().__init__()
        self.drop = torch.nn.Dropout(0.5)
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(int(x.shape[0]))
        assert not torch.is_grad_enabled()
        return self.drop(2 * x)


def test_predict_tensor_batches_eval_mode_and_restores_training():
    net = Scale().train()
    x = np.random.default_rng(0).normal(size=(7, 2, 3, 3, 1)).astype("f4")
    y = F.predict_tensor(net, x, batch_size=3, device="auto")
    # a bare module is a deterministic family: one member, (N, M=1, T, H, W, C)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == (7, 1, *x.shape[1:])
    np.testing.assert_array_equal(y[:, 0], 2 * x)           # eval mode: dropout off
    assert net.calls == [3, 3, 1] and net.training            # batches; training mode restored
    y2 = F.predict_tensor(net, torch.from_numpy(x), batch_size=None, progress=True)
    np.testing.assert_array_equal(y2, y)
    assert net.calls[-1] == 7                                 # default batch covers 7 samples
    assert str(resolve_device("auto")) == ("cuda" if torch.cuda.is_available() else "cpu")


def test_predict_tensor_errors():
    with pytest.raises(ModelTypeError):
        F.predict_tensor(object(), np.zeros((1, 1, 1, 1, 1), "f4"))
    with pytest.raises(ConfigError, match="batch_size"):
        F.predict_tensor(Scale(), np.zeros((1, 1, 1, 1, 1), "f4"), batch_size=0)


def test_predict_tensor_accepts_a_forecaster(data, model):
    x = layout.encode_inputs(data, model.spec, layout.init_times(data, model.spec)[:2])
    with torch.no_grad():
        ref = model.model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(F.predict_tensor(model, x, batch_size=2)[:, 0], ref)


# ----------------------------------------------------------------------------------------------
# eager forecasts
# ----------------------------------------------------------------------------------------------
def test_eager_forecast_matches_brute_force(data, model):
    fc = F.forecast(data, model, batch_size=1)
    positions = np.arange(CONTEXT - 1, data.sizes["time"])
    np.testing.assert_allclose(fc.t2m.transpose("init_time", "lead_time", "lat", "lon").values,
                               brute_force(data, model, positions), rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(fc.init_time.values, data.time.values[positions])
    lead = np.arange(1, LEAD + 1) * np.timedelta64(6, "h")
    np.testing.assert_array_equal(fc.lead_time.values, lead.astype("m8[ns]"))
    np.testing.assert_array_equal(fc.valid_time.values,
                                  fc.init_time.values[:, None] + fc.lead_time.values[None, :])
    assert fc.attrs["Conventions"] == "CF-1.8" and fc.attrs["institution"] == "Synthetic Lab"
    assert fc.t2m.attrs["units"] == "K" and fc.t2m.attrs["standard_name"] == "air_temperature"


def test_init_and_lead_selection(data, model):
    full = F.forecast(data, model, batch_size=1)
    some = F.forecast(data, model, init=slice("2000-01-03", "2000-01-04"), lead=2, batch_size=1)
    assert some.sizes["lead_time"] == 2 and some.sizes["init_time"] == 8
    xr.testing.assert_equal(some.t2m, full.t2m.sel(init_time=some.init_time).isel(lead_time=slice(0, 2)))
    picked = F.forecast(data, model, init=[data.time.values[5], data.time.values[9]], batch_size=1)
    np.testing.assert_array_equal(picked.init_time.values, data.time.values[[5, 9]])
    for bad in (0, LEAD + 1, 1.5):
        with pytest.raises(ConfigError, match="lead"):
            F.forecast(data, model, lead=bad)
    with pytest.raises(DataError):
        F.forecast(data, model, init=[data.time.values[0]])          # no context before it


def test_bare_module_gets_a_type_error_that_says_how_to_wrap(data, model):
    with pytest.raises(TypeError, match=r"Forecaster\(model, spec\)") as err:
        F.forecast(data, model.model)
    assert isinstance(err.value, ModelTypeError)
    with pytest.raises(ModelTypeError, match="xearthformer.load"):
        F.forecast(data, "model.xef")


def test_input_named_like_forecast_coords_does_not_collide(data, model):
    # ERA5 as the CDS now writes it: the time dim is `valid_time`, plus scalar/1-D extras
    era5 = data.rename(time="valid_time").assign_coords(
        number=0, expver=("valid_time", ["0001"] * data.sizes["time"]))
    era5.valid_time.attrs.update(standard_name="time")
    fc = F.forecast(era5, model, batch_size=8)
    assert fc.valid_time.dims == ("init_time", "lead_time")
    assert "number" not in fc.coords and "expver" not in fc.coords
    # float32 rounding only: BLAS kernels may round differently for differently aligned buffers
    # (seen as one ulp after other tests had run in the same process), so not bit-for-bit
    xr.testing.assert_allclose(fc.t2m, F.forecast(data, model, batch_size=8).t2m, rtol=1e-6, atol=0)
    lazy = F.forecast(era5.chunk(valid_time=10), model, batch_size=8)
    xr.testing.assert_allclose(lazy.t2m.compute(), fc.t2m, rtol=1e-6, atol=0)


def test_noleap_forecast_is_cf_compliant_and_round_trips(tmp_path):
    from tests.cfcheck import cf_errors

    ds = make_data(calendar="noleap")
    model = make_forecaster(ds)
    fc = F.forecast(ds, model, batch_size=4)
    # 2000-02-28 18h + 6 h is 03-01 in a noleap calendar (no Feb 29)
    assert fc.valid_time.values[0, -1].calendar == "noleap"
    path = str(tmp_path / "noleap.nc")
    fc.to_netcdf(path)
    assert cf_errors(path) == []
    back = cf.open_forecast(path).load()
    xr.testing.assert_identical(back.drop_encoding(), fc.drop_encoding())


def test_iris_monthly_analysis_end_to_end(tmp_path):
    """An Iris-written monthly analysis (forecast_period/forecast_reference_time on the input):
    calendar-step leads are integers in months, the provenance coordinates are dropped."""
    from tests.cfcheck import cf_errors
    from tests.test_cf import IRIS_OSTIA

    ostia = xr.open_dataset(IRIS_OSTIA).isel(longitude=slice(0, 24))
    spec = layout.fit_spec(ostia, "surface_temperature", context=3, lead=2)
    torch.manual_seed(0)
    net = Earthformer.from_preset("tiny", input_shape=spec.input_shape, target_shape=spec.target_shape)
    fc = F.forecast(ostia, Forecaster(net, spec), init=slice("2008", "2009"), batch_size=8)
    assert fc.lead_time.values.tolist() == [1, 2] and fc.lead_time.attrs["units"] == "months"
    assert "forecast_period" not in fc.variables and "forecast_reference_time" not in fc.variables
    assert fc.cf["forecast_period"].name == "lead_time"
    assert fc.surface_temperature.attrs["standard_name"] == "surface_temperature"
    path = str(tmp_path / "ostia_fc.nc")
    fc.to_netcdf(path)
    assert cf_errors(path) == []


# ----------------------------------------------------------------------------------------------
# lazy forecasts
# ----------------------------------------------------------------------------------------------
def counting_input(ds: xr.Dataset, chunk: int):
    """``ds`` as Dask with ``chunk`` steps per block; returns it and the list of blocks read."""
    reads: list[int] = []
    lock = threading.Lock()

    def load(block, block_info=None):
        with lock:
            reads.append(block_info[0]["chunk-location"][0])
        return block

    arr = da.from_array(ds.t2m.values, chunks=(chunk, -1, -1)).map_blocks(load, dtype="f4")
    return ds.assign(t2m=(ds.t2m.dims, arr, ds.t2m.attrs)), reads


def test_lazy_forecast_computes_nothing_and_matches_eager(data, model):
    lazy_in, reads = counting_input(data, 7)
    with dask.config.set(scheduler=raising_scheduler):
        lazy = F.forecast(lazy_in, model, batch_size=1)
    assert reads == []
    assert lazy.t2m.chunks[0] == (4, 7, 7, 7, 2)    # one output chunk per input time chunk
    eager = F.forecast(data, model, batch_size=1)
    with dask.config.set(scheduler="threads"):
        xr.testing.assert_identical(lazy.compute().drop_attrs(), eager.drop_attrs())
    assert lazy.attrs["Conventions"] == "CF-1.8"


def test_each_task_reads_exactly_its_context_windows(data, model):
    lazy_in, reads = counting_input(data, 5)
    fc = F.forecast(lazy_in, model, chunk=4, batch_size=4)
    starts = np.cumsum((0,) + fc.t2m.chunks[0])
    positions = np.arange(CONTEXT - 1, data.sizes["time"])           # time index of each init
    for a, b in zip(starts[:-1], starts[1:]):
        reads.clear()
        with dask.config.set(scheduler="sync"):
            fc.isel(init_time=slice(a, b)).compute()
        first = positions[a] - CONTEXT + 1                             # earliest context step
        last = positions[b - 1]
        assert sorted(reads) == list(range(first // 5, last // 5 + 1)), (a, b, reads)


def test_bundle_is_one_graph_key(data, model):
    fc = F.forecast(data.chunk(time=5), model, chunk=3)
    graph = dict(fc.t2m.data.__dask_graph__())
    n_tasks = len(fc.t2m.chunks[0])
    assert n_tasks == 9
    model_bytes = len(cloudpickle.dumps(model))
    # distributed serialises tasks one by one: the model must be inside one of them only
    per_task = sum(len(cloudpickle.dumps(v)) for v in graph.values())
    assert per_task < 2 * model_bytes
    assert sum(1 for k in graph if str(k).startswith("xearthformer-bundle")) == 1


def test_worker_thread_rule():
    assert F._worker_threads(cores=16, nthreads=4, env="") == 4
    assert F._worker_threads(cores=2, nthreads=4, env="") == 1
    assert F._worker_threads(cores=16, nthreads=1, env="2") == 2


def test_local_cluster_matches_eager(data, model):
    """The one LocalCluster test: 2 worker processes, identical values to the eager run."""
    import distributed

    lazy_in = data.chunk(time=8)
    eager = F.forecast(data, model, batch_size=1)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=logging.ERROR) as cluster, \
            distributed.Client(cluster) as client:
        result = F.forecast(lazy_in, model, batch_size=1).compute()
        threads = client.run(lambda: (torch.get_num_threads(),
                                      getattr(F._configure_worker_threads, "done", False)))
    xr.testing.assert_identical(result.drop_attrs(), eager.drop_attrs())
    assert all(n == 1 for n, _ in threads.values())          # no oversubscription on 2 cores
    assert any(done for _, done in threads.values())


# ----------------------------------------------------------------------------------------------
# resumable writing
# ----------------------------------------------------------------------------------------------
def test_write_zarr_resumes_and_redoes_unrecorded_chunks(tmp_path, data, model):
    lazy = F.forecast(data.chunk(time=10), model, chunk=5, batch_size=5)
    eager = F.forecast(data, model, batch_size=5)
    path = str(tmp_path / "fc.zarr")
    first = A.write_forecast(lazy, path, progress=False)
    assert (first.inits_done, first.chunks_done, first.chunks_skipped) == (27, 6, 0)
    done = zarr.open_group(path).attrs[A.DONE_ATTR]
    assert sorted(map(tuple, done)) == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 25), (25, 27)]
    reference = {v: np.array(zarr.open_group(path)[v]) for v in ("t2m", "valid_time", "init_time")}
    # simulate a kill: chunk 2 written only halfway (garbage) and never recorded
    zarr.open_group(path, mode="r+")["t2m"][10:12] = -999.0
    zarr.open_group(path, mode="r+").attrs[A.DONE_ATTR] = [d for d in done if d != [10, 15]]
    again = A.write_forecast(lazy, path, progress=False)
    assert (again.inits_done, again.chunks_done, again.chunks_skipped) == (5, 1, 5)
    for v, values in reference.items():
        np.testing.assert_array_equal(np.array(zarr.open_group(path)[v]), values)
    back = cf.open_forecast(path)
    xr.testing.assert_equal(back.t2m.load(), eager.t2m)
    assert back.lead_time.attrs["standard_name"] == "forecast_period"
    assert "standard_name" in back.init_time.attrs and back.attrs["Conventions"] == "CF-1.8"


def test_write_zarr_refuses_a_different_forecast(tmp_path, data, model):
    path = str(tmp_path / "fc.zarr")
    A.write_forecast(F.forecast(data.chunk(time=10), model, chunk=5), path, progress=False)
    other = F.forecast(data.chunk(time=10), model, chunk=5, lead=2)
    with pytest.raises(DataError, match="different forecast"):
        A.write_forecast(other, path, progress=False)
    assert A.write_forecast(other, path, progress=False, overwrite=True).inits_done == 27
    os.makedirs(tmp_path / "plain.zarr")
    xr.Dataset({"a": ("x", [1])}).to_zarr(tmp_path / "plain.zarr", mode="w")
    with pytest.raises(DataError, match="not an xearthformer forecast store"):
        A.write_forecast(other, str(tmp_path / "plain.zarr"), progress=False)
    irregular = F.forecast(data.chunk(time=(6, 10, 14)), model)
    with pytest.raises(DataError, match="regular"):
        A.write_forecast(irregular, str(tmp_path / "irregular.zarr"), progress=False)
    assert not os.path.exists(tmp_path / "irregular.zarr")


def test_write_netcdf_one_file_per_chunk(tmp_path, data, model):
    from tests.cfcheck import cf_errors

    lazy = F.forecast(data.chunk(time=10), model, chunk=10)
    out = tmp_path / "nc"
    summary = A.write_forecast(lazy, out, "netcdf", progress=False)
    assert (out / A.MARKER_FILE).is_file()                           # the folder's record
    files = sorted(n for n in os.listdir(out) if n != A.MARKER_FILE)
    assert summary.chunks_done == 3 and files == [
        "forecast_20000101T180000.nc", "forecast_20000104T060000.nc", "forecast_20000106T180000.nc"]
    os.remove(out / files[1])
    (out / "forecast_20000104T060000.partial-0123abcd.nc").write_bytes(b"half a file")  # a kill
    assert A.write_forecast(lazy, out, "netcdf", progress=False).chunks_done == 1
    assert sorted(n for n in os.listdir(out) if n != A.MARKER_FILE) == files
    assert cf_errors(str(out / files[0])) == []
    back = xr.open_mfdataset(sorted(str(p) for p in out.glob("forecast_*.nc")), decode_timedelta=True).load()
    xr.testing.assert_allclose(back.t2m, F.forecast(data, model).t2m, rtol=1e-6, atol=1e-4)
