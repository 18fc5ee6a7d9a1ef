"""An ensemble() output in the ensemble ecosystem: xskillscore with no renaming, and the one-call
layouts of pysteps (``ens_number``) and earth2studio (``ensemble``). (The ensemble NetCDF's
compliance-checker run is tests/test_toy_family.py::test_ensemble_through_the_accessor.)"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import xskillscore as xs

import xearthformer as xef
from tests.test_cf import make_forecast
from tests.toy_family import TOY, ToyConfig, ToyNet
from xearthformer import cf, layout
from xearthformer.errors import DataError
from xearthformer.models import registry
from xearthformer.models.base import Forecaster


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return xr.Dataset(
        {"z": (("time", "lat", "lon"), 10 + rng.normal(size=(10, 4, 5)).astype("f4"),
               {"units": "m", "long_name": "toy height"})},
        coords={"time": pd.date_range("2001-01-01", periods=10, freq="30min"),
                "lat": ("lat", np.linspace(-5, 5, 4), {"standard_name": "latitude", "units": "degrees_north"}),
                "lon": ("lon", np.linspace(0, 10, 5), {"standard_name": "longitude", "units": "degrees_east"})})


@pytest.fixture(scope="module")
def ens(data):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "_FAMILIES", registry.families())
        registry.register_family(TOY)
        model = Forecaster(ToyNet(ToyConfig(input_shape=(2, 4, 5, 1), target_shape=(3, 4, 5, 1))),
                           layout.fit_spec(data, "z", context=2, lead=3))
        # the init times whose 3 leads all lie inside the data (so every one can be verified)
        inits = slice(data.time.values[1], data.time.values[6])
        yield data.earthformer.ensemble(model, members=4, seed=1, init=inits, device="cpu", progress=False)


def test_xskillscore_crps_on_an_ensemble_output_needs_no_renaming(data, ens):
    obs = data.z.sel(time=ens.valid_time)                        # (init_time, lead_time, lat, lon)
    crps = xs.crps_ensemble(obs, ens.z, dim=[])                  # member_dim="member" by default
    x = ens.z.transpose("init_time", "lead_time", "lat", "lon", "member").values.astype("f8")
    y = obs.transpose("init_time", "lead_time", "lat", "lon").values
    ref = np.abs(x - y[..., None]).mean(-1) - 0.5 * np.abs(x[..., :, None] - x[..., None, :]).mean((-1, -2))
    np.testing.assert_allclose(crps.transpose("init_time", "lead_time", "lat", "lon").values, ref, rtol=1e-5)
    assert float(crps.mean()) > 0


def test_to_pysteps(ens):
    init = ens.init_time.values[2]
    out = xef.to_pysteps(ens, init=init)
    assert out.z.dims == ("ens_number", "time", "y", "x") and out.attrs["precip_var"] == "z"
    assert out.ens_number.values.tolist() == [1, 2, 3, 4] and out.member.values.tolist() == [0, 1, 2, 3]
    assert out.ens_number.attrs["standard_name"] == "realization"
    np.testing.assert_array_equal(out.time.values, ens.valid_time.sel(init_time=init).values)
    assert out.time.attrs["stepsize"] == 1800 and out.init_time.values == init
    np.testing.assert_array_equal(out.z.values, ens.z.sel(init_time=init).transpose("member", "lead_time", "lat", "lon").values)
    np.testing.assert_array_equal(out.lat.values, ens.lat.values)           # grid coordinates kept
    assert out.lat.dims == ("y",) and out.lead_time.dims == ("time",)
    # member indices survive: member 7 alone is ens_number 8
    alone = xef.to_pysteps(ens.isel(init_time=[0]).assign_coords(member=[7, 8, 9, 10]))
    assert alone.ens_number.values.tolist() == [8, 9, 10, 11]
    with pytest.raises(DataError, match="one init time.*init="):
        xef.to_pysteps(ens)
    with pytest.raises(DataError, match="'member' dim"):
        xef.to_pysteps(ens.isel(member=0))
    with pytest.raises(DataError, match="one field"):
        xef.to_pysteps(ens.assign(w=ens.z * 2), init=init)
    with pytest.raises(DataError, match="timedelta"):
        xef.to_pysteps(cf.to_cf(make_forecast(monthly=True, members=2, n_init=1)))


def test_to_earth2studio(ens):
    out = xef.to_earth2studio(ens)
    assert out.z.dims == ("ensemble", "time", "lead_time", "lat", "lon")
    assert out.ensemble.values.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(out.time.values, ens.init_time.values)
    assert out.lead_time.dtype.kind == "m" and out.valid_time.dims == ("time", "lead_time")
    np.testing.assert_array_equal(out.z.values, ens.z.transpose("member", "init_time", "lead_time", "lat", "lon").values)
    # other latitude/longitude names become lat/lon; a deterministic forecast has no ensemble dim
    named = xef.to_earth2studio(ens.rename(lat="latitude", lon="longitude"))
    assert named.z.dims == ("ensemble", "time", "lead_time", "lat", "lon")
    assert xef.to_earth2studio(ens.isel(member=0, drop=True)).z.dims == ("time", "lead_time", "lat", "lon")
    with pytest.raises(DataError, match="timedelta"):
        xef.to_earth2studio(cf.to_cf(make_forecast(monthly=True, members=2)))
