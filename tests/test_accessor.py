"""``.earthformer.forecast``: a thin facade over xearthformer.forecast.forecast."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import torch
import xarray as xr

import xearthformer  # noqa: F401  (registers the accessor)
from xearthformer import forecast as F
from xearthformer.errors import ModelTypeError

from tests.test_forecast import make_data, make_forecaster, raising_scheduler


@pytest.fixture(scope="module")
def data():
    return make_data(n_time=16)


@pytest.fixture(scope="module")
def model(data):
    return make_forecaster(data)


def test_dataset_accessor_equals_the_function(data, model):
    via_accessor = data.earthformer.forecast(model, init=slice("2000-01-02", None), lead=2, batch_size=3)
    direct = F.forecast(data, model, init=slice("2000-01-02", None), lead=2, batch_size=3)
    xr.testing.assert_identical(via_accessor.drop_attrs(), direct.drop_attrs())
    assert via_accessor.sizes["lead_time"] == 2
    assert via_accessor.init_time.values[0] == np.datetime64("2000-01-02T00:00")


def test_dataarray_accessor_and_renamed_array(data, model):
    direct = F.forecast(data, model, batch_size=4)
    renamed = data.t2m.rename("temperature")          # a single-variable model takes any name
    via = renamed.earthformer.forecast(model, batch_size=4)
    xr.testing.assert_identical(via.drop_attrs(), direct.drop_attrs())


def test_lazy_through_the_accessor(data, model):
    with dask.config.set(scheduler=raising_scheduler):
        lazy = data.chunk(time=6).earthformer.forecast(model, batch_size=1)
    assert lazy.t2m.chunks is not None
    eager = data.earthformer.forecast(model, batch_size=1)
    xr.testing.assert_identical(lazy.compute(scheduler="sync").drop_attrs(), eager.drop_attrs())
    lazy_da = data.t2m.chunk(time=6).earthformer.forecast(model, batch_size=1)
    xr.testing.assert_identical(lazy_da.compute(scheduler="sync").drop_attrs(), eager.drop_attrs())


def test_bare_module_is_a_type_error(data, model):
    with pytest.raises(TypeError) as err:
        data.earthformer.forecast(model.model)
    assert isinstance(err.value, ModelTypeError)
    assert "Forecaster(model, spec)" in str(err.value) and "xearthformer.load" in str(err.value)
    with pytest.raises(ModelTypeError):
        data.earthformer.forecast(torch.nn.Linear(2, 2))
