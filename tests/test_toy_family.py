"""The model-family seam, proved by a stochastic toy family (``tests/toy_family.py``) that only the
registry knows: it trains with the shared loop, saves and loads as a bundle, and forecasts (the
member mean) and ensembles through the accessor, eager and lazy, with members that do not
depend on the batch size, the chunking or the other members asked for."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xearthformer as xef
from tests.cfcheck import cf_errors
from tests.toy_family import TOY, ToyNet
from xearthformer import forecast as F
from xearthformer import layout
from xearthformer.checkpoint import read_metadata
from xearthformer.errors import ConfigError, DataError, ModelTypeError
from xearthformer.models import registry
from xearthformer.models.keys import make_keys

CONTEXT, LEAD = 2, 2


@pytest.fixture(scope="module")
def toy():
    """The toy family, registered for this module's tests (in a copy of the table, restored after)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "_FAMILIES", registry.families())
        yield registry.register_family(TOY)


def make_data(n_time: int = 40, seed: int = 0) -> xr.Dataset:
    """An AR(1) field, x[t+1] = 0.8 x[t] + noise, on 6 x 6 points at 2 sites (an extra dim)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n_time, 2, 6, 6), np.float32)
    x[0] = rng.normal(size=(2, 6, 6))
    for t in range(1, n_time):
        x[t] = 0.8 * x[t - 1] + 0.3 * rng.normal(size=(2, 6, 6))
    return xr.Dataset(
        {"z": (("time", "site", "lat", "lon"), 10 + x, {"units": "m", "long_name": "toy height"})},
        coords={"time": pd.date_range("2001-01-01", periods=n_time, freq="D"),
                "site": ("site", np.array([10, 20], "i4"), {"long_name": "site number"}),
                "lat": ("lat", np.linspace(-5, 5, 6), {"standard_name": "latitude", "units": "degrees_north"}),
                "lon": ("lon", np.linspace(0, 10, 6), {"standard_name": "longitude", "units": "degrees_east"})})


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture(scope="module")
def trained(toy, data, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("toy")
    model = xef.train(data, family="toy", preset="default", context=CONTEXT, lead=LEAD, epochs=3,
                      batch_size=8, val=0.25, lr=0.05, seed=0, device="cpu", progress=False,
                      checkpoint_dir=tmp_path / "run")
    return model, tmp_path


def test_toy_trains_with_the_shared_loop_and_round_trips_as_a_bundle(trained):
    model, tmp = trained
    assert isinstance(model.model, ToyNet) and model.metadata["training"]["family"] == "toy"
    history = model.metadata["training"]["history"]
    assert history["train_loss"][-1] < history["train_loss"][0]          # the NLL goes down
    assert len(history["train_sigma"]) == 3                                # the objective's logs
    assert (tmp / "run" / "best.xef").is_file() and (tmp / "run" / "last.pt").is_file()
    xef.save(model, tmp / "toy.xef")
    assert read_metadata(tmp / "toy.xef")["model_class"] == "ToyNet"
    loaded = xef.load(tmp / "toy.xef")
    assert isinstance(loaded.model, ToyNet) and loaded.spec == model.spec
    for a, b in zip(model.model.state_dict().values(), loaded.model.state_dict().values()):
        assert (a == b).all()


def test_a_bundle_of_an_unregistered_family_is_refused(trained, monkeypatch):
    model, tmp = trained
    xef.save(model, tmp / "toy.xef")
    monkeypatch.delitem(registry._FAMILIES, "toy")
    with pytest.raises(xef.CheckpointError, match="class 'ToyNet'.*knows \\['Earthformer', 'PreDiff'\\]"):
        xef.load(tmp / "toy.xef")


def test_ensemble_through_the_accessor(trained, data, tmp_path):
    model, _ = trained
    ens = data.earthformer.ensemble(model, members=4, device="cpu", progress=False)
    assert ens.z.dims == ("init_time", "lead_time", "member", "site", "lat", "lon")
    assert ens.member.values.tolist() == [0, 1, 2, 3] and ens.member.attrs["standard_name"] == "realization"
    assert ens.sizes["init_time"] == data.sizes["time"] - CONTEXT + 1
    values = ens.z.values
    assert np.isfinite(values).all()
    assert not np.allclose(values[:, :, 0], values[:, :, 1])          # members differ
    assert not np.allclose(values[..., 0, :, :], values[..., 1, :, :])  # so do the sites' draws
    path = str(tmp_path / "ens.nc")
    ens.to_netcdf(path)
    assert cf_errors(path) == []


def test_member_k_is_the_same_whatever_the_batch_and_alone(trained, data):
    model, _ = trained
    kwargs = dict(init=slice("2001-01-05", "2001-01-12"), device="cpu", progress=False)
    runs = [F.ensemble(data, model, members=4, batch_size=bs, **kwargs).z.values for bs in (1, 4, 16)]
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], runs[2])
    alone = F.ensemble(data, model, members=[2], batch_size=3, **kwargs)
    assert alone.member.values.tolist() == [2]
    np.testing.assert_array_equal(alone.z.values[:, :, 0], runs[0][:, :, 2])
    other_seed = F.ensemble(data, model, members=4, seed=1, **kwargs).z.values
    assert not np.allclose(other_seed, runs[0])


def test_member_noise_is_the_keys_noise(trained, data):
    # brute force: member m of sample (t, site) is mean + sigma * randn drawn from key(seed, t, site, m)
    import torch

    model, _ = trained
    inits = layout.init_times(data, model.spec)[:2]
    x = layout.encode_inputs(data, model.spec, inits)
    keys = make_keys(5, np.repeat(inits, 2), np.tile([0, 1], 2), [0, 3])
    y = F.predict_tensor(model, x, keys=keys, batch_size=3, device="cpu")
    net = model.model
    for n in range(4):
        for j in range(2):
            g = torch.Generator().manual_seed(int(keys[n, j]))
            eps = torch.randn((LEAD, 6, 6, 1), generator=g).numpy()
            with torch.no_grad():
                mean = float(net.scale) * x[n, -1]
                sigma = float(torch.exp(net.log_sigma))
            np.testing.assert_allclose(y[n, j], mean + sigma * eps, rtol=1e-5, atol=1e-6)


def test_forecast_of_a_stochastic_family_is_the_member_mean(trained, data, tmp_path):
    model, _ = trained
    fc = data.earthformer.forecast(model, device="cpu", progress=False)
    assert "member" not in fc.dims and fc.z.attrs["cell_methods"] == "realization: mean"
    ens = F.ensemble(data, model, members=8, seed=0, device="cpu", progress=False)
    xr.testing.assert_allclose(fc.z, ens.z.mean("member"), rtol=1e-6, atol=1e-6)
    fewer = F.forecast(data, model, members=2, seed=3, device="cpu", progress=False)
    xr.testing.assert_allclose(fewer.z, F.ensemble(data, model, members=2, seed=3, device="cpu",
                                                   progress=False).z.mean("member"), rtol=1e-6, atol=1e-6)
    path = str(tmp_path / "mean.nc")
    fc.to_netcdf(path)
    assert cf_errors(path) == []


def test_sampling_options_reach_the_family(trained, data):
    model, _ = trained
    cold = F.ensemble(data, model, members=3, temperature=0.0, device="cpu", progress=False).z
    np.testing.assert_allclose(cold.isel(member=0).values, cold.isel(member=2).values)  # no noise
    with pytest.raises(ConfigError, match="temperature"):
        F.ensemble(data, model, members=3, steps=10, device="cpu", progress=False)


def test_lazy_ensemble_computes_nothing_and_matches_eager(trained, data):
    model, _ = trained
    eager = F.ensemble(data, model, members=3, device="cpu", progress=False)
    with dask.config.set(scheduler="sync"):
        for chunk in (None, 5):
            with dask.config.set(scheduler=_raising):
                lazy = data.chunk(time=9).earthformer.ensemble(model, members=3, device="cpu", chunk=chunk)
            assert lazy.z.chunks is not None
            xr.testing.assert_identical(lazy.compute().drop_attrs(), eager.drop_attrs())
        lazy_mean = F.forecast(data.chunk(time=9), model, device="cpu").compute()
    xr.testing.assert_identical(lazy_mean.drop_attrs(),
                                F.forecast(data, model, device="cpu", progress=False).drop_attrs())


def _raising(*args, **kwargs):
    raise AssertionError("something was computed while building the lazy ensemble")


def test_lazy_ensemble_on_a_distributed_cluster(trained, data):
    import distributed

    model, _ = trained
    eager = F.ensemble(data, model, members=2, device="cpu", progress=False)
    # in-process workers keep it cheap; worker processes are tested once, in test_forecast
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=":0", silence_logs=logging.ERROR) as cluster, \
            distributed.Client(cluster):
        result = F.ensemble(data.chunk(time=20), model, members=2, device="cpu").compute()
    xr.testing.assert_identical(result.drop_attrs(), eager.drop_attrs())


def test_ensemble_refusals(trained, data):
    model, _ = trained
    with pytest.raises(DataError, match='rename\\(member="input_member"\\)'):
        F.ensemble(data.rename(site="member"), model, members=2)
    for bad in (0, [], [1, 1], [-1], 2.5, True):
        with pytest.raises(ConfigError, match="member"):
            F.ensemble(data, model, members=bad)
    with pytest.raises(ConfigError, match="seed"):
        F.ensemble(data, model, members=2, seed="0")


def test_deterministic_families_refuse_ensembles_and_members():
    from tests.test_forecast import make_data as earth_data
    from tests.test_forecast import make_forecaster

    ds = earth_data(n_time=8)
    fc = make_forecaster(ds)
    with pytest.raises(ModelTypeError, match="deterministic.*forecast"):
        ds.earthformer.ensemble(fc)
    with pytest.raises(ConfigError, match="deterministic"):
        F.forecast(ds, fc, members=4)
    with pytest.raises(ConfigError, match="sampling options"):
        F.forecast(ds, fc, steps=10)
    assert "cell_methods" not in F.forecast(ds, fc, progress=False).t2m.attrs


def test_no_family_branches_outside_the_registry():
    # a new family is a folder in models/ plus a registry row: nothing above models/ may ask
    # which family it has in hand
    package = Path(xef.__file__).parent
    pattern = re.compile(r"family\s*==|==\s*['\"]earthformer['\"]|isinstance\([^)]*Earthformer\b|"
                         r"type\([^)]*\)\s*(is|==)\s*Earthformer\b")
    offenders = [f"{path.relative_to(package)}:{i}" for path in package.rglob("*.py")
                 if path.parent.name not in ("models", "earthformer") or path.name == "__init__.py"
                 for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
