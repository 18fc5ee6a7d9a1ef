"""Ensemble products: exceedance probability and quantiles against numpy, their CF attributes
(compliance-checker on the written file), the accessor methods and laziness."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr

import xearthformer  # noqa: F401  (registers the accessor)
from xearthformer import cf, metrics
from xearthformer.errors import DataError

from tests.cfcheck import cf_errors
from tests.test_cf import make_forecast
from tests.test_metrics_properties import raise_if_computes


@pytest.fixture(scope="module")
def ensemble() -> xr.Dataset:
    return cf.to_cf(make_forecast(members=6, seed=3))


def test_probability_is_the_fraction_of_members_at_or_above(ensemble):
    t2m = ensemble.t2m
    thresholds = [275.0, 280.0, float(t2m.values.flat[7])]  # the last equals one member exactly
    got = metrics.probability(t2m, thresholds)
    member_axis = t2m.dims.index("member")
    for k, thr in enumerate(thresholds):
        ref = (t2m.values >= np.float32(thr)).mean(member_axis)
        np.testing.assert_array_equal(got.isel(threshold=k).transpose(*t2m.isel(member=0).dims).values,
                                      ref)
    scalar = metrics.probability(t2m, 280.0)
    assert "threshold" not in scalar.dims and float(scalar.threshold) == 280.0
    np.testing.assert_array_equal(scalar.values, got.sel(threshold=280.0).values)


def test_probability_cf_attributes(ensemble):
    got = metrics.probability(ensemble.t2m.assign_attrs(cell_methods="area: mean"), [280.0])
    assert got.name == "probability_of_air_temperature_above_threshold"
    assert got.attrs["units"] == "1"
    assert got.attrs["long_name"] == got.name
    assert "standard_name" not in got.attrs  # not in the CF table: see the module notes
    assert got.attrs["cell_methods"] == "area: mean realization: mean"
    thr = got.threshold
    assert thr.attrs["units"] == "K" and thr.attrs["standard_name"] == "air_temperature"
    assert thr.attrs["spp__relative_to_threshold"] == "greater_than_or_equal_to"
    assert "member" not in got.coords
    # without a standard_name the variable's name is used
    plain = metrics.probability(ensemble.t2m.drop_attrs().rename("vil"), 280.0)
    assert plain.name == "probability_of_vil_above_threshold"
    assert "units" not in plain.threshold.attrs


def test_products_write_cf_compliant_files(ensemble, tmp_path):
    prob = metrics.probability(ensemble, [278.0, 282.0])
    assert isinstance(prob, xr.Dataset) and prob.attrs["Conventions"] == ensemble.attrs["Conventions"]
    path = str(tmp_path / "probability.nc")
    prob.to_netcdf(path)
    assert cf_errors(path) == []
    quant = metrics.quantile(ensemble, [0.1, 0.5, 0.9])
    path = str(tmp_path / "quantile.nc")
    quant.to_netcdf(path)
    assert cf_errors(path) == []
    back = xr.open_dataset(path)
    assert back.t2m.attrs["standard_name"] == "air_temperature" and back.t2m.attrs["units"] == "K"
    assert back["quantile"].attrs["units"] == "1"


def test_quantile_equals_numpy(ensemble):
    t2m = ensemble.t2m
    got = metrics.quantile(t2m, [0.0, 0.25, 0.5, 1.0])
    ref = np.quantile(t2m.values, [0.0, 0.25, 0.5, 1.0], axis=t2m.dims.index("member"))
    np.testing.assert_allclose(got.transpose("quantile", ...).values, ref, rtol=1e-6)
    assert got.attrs["standard_name"] == "air_temperature" and got.attrs["units"] == "K"
    median = metrics.quantile(t2m, 0.5, method="nearest")
    assert "quantile" not in median.dims
    np.testing.assert_allclose(median.values, np.quantile(t2m.values, 0.5, axis=2, method="nearest"))
    with pytest.raises(DataError, match="percentiles"):
        metrics.quantile(t2m, 50)


def test_products_skip_missing_members_and_need_members():
    ens = xr.DataArray(np.array([[1.0, np.nan, 3.0], [np.nan, np.nan, np.nan]]), dims=("x", "member"))
    np.testing.assert_array_equal(metrics.probability(ens, 2.0).values, [0.5, np.nan])
    np.testing.assert_array_equal(metrics.quantile(ens, 0.5).values, [2.0, np.nan])
    with pytest.raises(DataError, match="member"):
        metrics.probability(ens.rename(member="m"), 2.0)
    with pytest.raises(DataError, match="member_dim"):
        metrics.quantile(ens.rename(member="m"), 0.5)
    np.testing.assert_array_equal(
        metrics.probability(ens.rename(member="m"), 2.0, member_dim="m").values, [0.5, np.nan])


def test_accessor_methods_delegate_and_stay_lazy(ensemble):
    t2m = ensemble.t2m
    xr.testing.assert_identical(t2m.earthformer.probability([280.0]),
                                metrics.probability(t2m, [280.0]))
    xr.testing.assert_identical(ensemble.earthformer.quantile([0.5]), metrics.quantile(ensemble, [0.5]))
    lazy_input = ensemble.chunk({"init_time": 1, "member": 2})
    with dask.config.set(scheduler=raise_if_computes):
        prob = lazy_input.earthformer.probability([279.0, 281.0])
        quant = lazy_input.t2m.earthformer.quantile([0.1, 0.9])
    assert prob[next(iter(prob.data_vars))].chunks is not None and quant.chunks is not None
    xr.testing.assert_allclose(prob.compute(), metrics.probability(ensemble, [279.0, 281.0]))
    xr.testing.assert_allclose(quant.compute(), metrics.quantile(t2m, [0.1, 0.9]))
