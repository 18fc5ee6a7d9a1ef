"""The memory planner (``xearthformer.memory``): batch sizes chosen to fit, refusals that name the
setting to change, and the halve-and-retry on out-of-memory errors. Limits are injected with
``XEARTHFORMER_MEMORY_LIMIT``: no test needs more than a few megabytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xearthformer import forecast as F
from xearthformer import memory as M
from xearthformer.errors import ConfigError, XEarthformerWarning
from xearthformer.models.earthformer.network import Earthformer

from tests.test_forecast import make_data, make_forecaster


@pytest.fixture(scope="module")
def data():
    return make_data(n_time=20)


@pytest.fixture(scope="module")
def model(data):
    return make_forecaster(data)


class Counting(torch.nn.Module):
    """Wraps a forecaster's network and records the batch size of every call."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(int(x.shape[0]))
        return self.inner(x)

    def inference_bytes_per_sample(self):
        return self.inner.inference_bytes_per_sample()


def test_parse_bytes_and_plan_arithmetic():
    assert M.parse_bytes("2MiB") == 2 * 2**20 and M.parse_bytes("1.5 kb") == 1500
    for bad in ("lots", "-1MB", "0", "3 parsecs"):
        with pytest.raises(ConfigError, match="memory"):
            M.parse_bytes(bad)
    # budget = 0.7 * 10 000 - 1 000 = 6 000 bytes: 60 items of 100 bytes fit
    plan = M.plan_batch(100, items=1000, fixed=1000, available=10_000)
    assert plan.batch_size == 60 and plan.needed <= M.SAFETY * 10_000
    assert M.plan_batch(100, items=1000, fixed=1000, available=10_000, default=16).batch_size == 16
    assert M.plan_batch(100, items=5, available=10_000).batch_size == 5           # never above the work
    assert M.plan_batch(100, items=1000, requested=60, available=10_000, fixed=1000).batch_size == 60
    with pytest.raises(ConfigError, match=r"batch_size=61 .*at most 60 .*pass batch_size=60"):
        M.plan_batch(100, items=1000, requested=61, available=10_000, fixed=1000)
    with pytest.raises(ConfigError, match="not enough memory for one sample"):
        M.plan_batch(100, items=10, fixed=6950, available=10_000)


def test_injected_limit_replaces_the_system_figure(monkeypatch):
    assert M.available_bytes() > 0
    monkeypatch.setenv(M.MEMORY_LIMIT_ENV, "3MiB")
    assert M.available_bytes() == 3 * 2**20 == M.available_bytes("cpu")


def _per_sample(model):
    spec = model.spec
    return (M.activation_bytes(model.model, spec.input_shape, spec.target_shape)
            + 8 * (np.prod(spec.input_shape) + np.prod(spec.target_shape)))


def test_forecast_picks_a_batch_that_fits_and_gives_the_same_numbers(data, model, monkeypatch):
    reference = F.forecast(data, model, progress=False)
    counting = Counting(model.model)
    small = F.Forecaster(counting, model.spec)
    per = _per_sample(model)
    n = data.sizes["time"] - model.spec.context + 1
    out = 4 * n * np.prod(model.spec.target_shape)
    # room for three samples per call (and the chunk's output), but not for four
    limit = int((out + 3.5 * per) / M.SAFETY)
    assert F.chunk_bytes(model.spec, n) < M.SAFETY * limit          # the chunk itself fits
    monkeypatch.setenv(M.MEMORY_LIMIT_ENV, str(limit))
    got = F.forecast(data, small, progress=False)
    assert max(counting.calls) == 3 and sum(counting.calls) == n
    np.testing.assert_allclose(got.t2m.values, reference.t2m.values, rtol=1e-6, atol=1e-5)


def test_refusals_name_the_setting_to_change(data, model, monkeypatch):
    per = _per_sample(model)
    n = data.sizes["time"] - model.spec.context + 1
    out = 4 * n * np.prod(model.spec.target_shape)
    monkeypatch.setenv(M.MEMORY_LIMIT_ENV, str(int((out + 3.5 * per) / M.SAFETY)))
    with pytest.raises(ConfigError, match=r"batch_size=8 needs .* at most 3 samples fit.*batch_size=3"):
        F.forecast(data, model, batch_size=8, progress=False)
    monkeypatch.setenv(M.MEMORY_LIMIT_ENV, "64KiB")               # not even the chunk fits
    with pytest.raises(ConfigError, match=r"forecast chunk of 17 init time.*chunk=N / --chunk N"):
        F.forecast(data, model, progress=False)


def test_an_ensemble_too_large_for_one_chunk_is_refused_before_it_runs(monkeypatch):
    from tests.test_toy_family import make_data as toy_data
    from tests.toy_family import TOY
    from xearthformer import layout
    from xearthformer.models import registry

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "_FAMILIES", registry.families())
        registry.register_family(TOY)
        ds = toy_data(n_time=12)
        spec = layout.fit_spec(ds, "z", context=2, lead=2)
        net = registry.build("toy", "default", input_shape=spec.input_shape, target_shape=spec.target_shape)
        toy = F.Forecaster(net, spec)
        need = F.chunk_bytes(spec, 11 * 2, members=1000)
        monkeypatch.setenv(M.MEMORY_LIMIT_ENV, str(int(need / 2)))
        with pytest.raises(ConfigError, match=r"1000 member\(s\).*--member-block"):
            F.ensemble(ds, toy, members=1000, progress=False)
        few = F.ensemble(ds, toy, members=4, progress=False)      # the same call with fewer members fits
        assert few.sizes["member"] == 4


class FakeOOM(torch.nn.Module):
    """y = 2x, but "runs out of memory" for batches larger than ``limit``."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(int(x.shape[0]))
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} GiB")
        return 2 * x


def test_out_of_memory_halves_the_batch_and_retries():
    x = np.random.default_rng(0).normal(size=(11, 2, 3, 3, 1)).astype("f4")
    net = FakeOOM(limit=3)
    with pytest.warns(XEarthformerWarning, match="out of memory") as record:
        y = F.predict_tensor(net, x, batch_size=8, device="cpu")
    assert "8 samples per model call; retrying with 4" in str(record[0].message)
    np.testing.assert_array_equal(y[:, 0], 2 * x)                  # every sample, once, in order
    assert net.calls[:3] == [8, 4, 2] and sum(c for c in net.calls if c <= 3) == 11
    with pytest.warns(XEarthformerWarning), \
            pytest.raises(ConfigError, match="out of memory on cpu with a single sample"):
        F.predict_tensor(FakeOOM(limit=0), x, batch_size=4, device="cpu")
    with pytest.raises(ValueError, match="boom"):                   # other errors are not retried
        F.predict_tensor(_Raises(), x, device="cpu")


class _Raises(torch.nn.Module):
    def forward(self, x):
        raise ValueError("boom")


def test_earthformer_estimate_is_within_a_factor_of_the_measured_peak():
    # the family estimate against the peak resident memory measured for these shapes
    # (benchmarks/bench_memory.py, batches of 16 on the CPU): ~4.0 MB and ~12 MB per sample
    tiny = Earthformer.from_preset("tiny", input_shape=(6, 32, 32, 1), target_shape=(6, 32, 32, 1))
    assert 0.8 * 4.0e6 < tiny.inference_bytes_per_sample() < 1.6 * 4.0e6
    small = Earthformer.from_preset("small", input_shape=(6, 32, 64, 1), target_shape=(6, 32, 64, 1))
    assert 12e6 * 0.8 < small.inference_bytes_per_sample() < 12e6 * 1.6
    # the default estimate for networks without one errs on the generous side
    generic = M.activation_bytes(torch.nn.Linear(4, 4), (6, 32, 64, 1), (6, 32, 64, 1))
    assert generic > 0
