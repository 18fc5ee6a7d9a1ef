"""Fuzzing: malformed Datasets, damaged bundle files and odd arguments through the validation, ``load``,
``forecast``/``ensemble`` (tiny models) and the metrics. Each call either returns a correct result
or raises one of the project's documented exceptions (:class:`xearthformer.errors.XEarthformerError`
and its subclasses): never an IndexError, KeyError, RuntimeError or RecursionError from inside.

The strategies mutate a valid case: they corrupt values (inf, fill values, NaN), dtypes, units and
packing attributes, the time axis (gaps, duplicates, order, time zones, integers), the grid (flips,
the other longitude convention, shifts, missing rows, renamed or extra dims), init selections, and
the bytes of a bundle (truncation, flipped bytes, edited header fields). Mutations that keep the
meaning of the data (flips, longitude convention, chunking, dim order) must give the same forecast.

CI runs a fixed seed (``derandomize``) and ``XEARTHFORMER_FUZZ_EXAMPLES`` examples per test (default
60, about 10 s in all on 2 cores); a longer search: ``XEARTHFORMER_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz.py``
(add ``XEARTHFORMER_FUZZ_RANDOM=1`` for a new random seed each run).
"""

from __future__ import annotations

import datetime
import json
import os
import struct
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import xearthformer as xef
from xearthformer import checkpoint, layout, metrics
from xearthformer import forecast as F
from xearthformer.errors import XEarthformerError
from xearthformer.layout import validation as V
from xearthformer.models import registry

from tests.test_forecast import make_data, make_forecaster
from tests.test_toy_family import make_data as toy_data
from tests.toy_family import TOY

EXAMPLES = int(os.environ.get("XEARTHFORMER_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize=not os.environ.get("XEARTHFORMER_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def base():
    data = make_data(n_time=8)
    return data, make_forecaster(data)


@pytest.fixture(scope="module")
def reference(base):
    data, model = base
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return F.forecast(data, model, progress=False, device="cpu")


def _mostly(data, usual, odd):
    """``usual`` three times in four, else one of the ``odd`` values."""
    return data.draw(st.one_of(st.just(usual), st.just(usual), st.just(usual), st.sampled_from(odd)))


def outcome(call):
    """``call()``'s result, or None when it raised one of the project's exceptions (both are
    counted: ``pytest --hypothesis-show-statistics`` shows how often each happened)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = call()
        except XEarthformerError as err:
            event(f"refused: {type(err).__name__}")
            return None
    event("answered")
    return result


# ----------------------------------------------------------------------------------------------
# malformed datasets
# ----------------------------------------------------------------------------------------------
def _values(ds, draw, how):
    ds = ds.copy(deep=True)
    v = ds.t2m.values
    t, y, x = (draw(st.integers(0, n - 1)) for n in v.shape)
    if how == "all-nan":
        v[...] = np.nan
    elif how == "nan-step":
        v[t] = np.nan
    else:
        v[t, y, x] = {"inf": np.inf, "-inf": -np.inf, "fill": 9.969209968386869e36, "huge": 1e25,
                      "nan": np.nan, "cold": -60.0}[how]
    ds["t2m"] = (ds.t2m.dims, v, ds.t2m.attrs)
    return ds


def _dtype(ds, draw):
    kind = draw(st.sampled_from(["f8", "f2", "i4", "bool", "str", "complex", "datetime"]))
    v = np.nan_to_num(ds.t2m.values, nan=0.0, posinf=0.0, neginf=0.0) if kind == "i4" else ds.t2m.values
    new = {"f8": v.astype("f8"), "f2": v.astype("f2"), "i4": v.astype("i4"), "bool": v > 280,
           "str": v.astype(str), "complex": v.astype("c8"),
           "datetime": np.full(v.shape, np.datetime64("2000-01-01"))}[kind]
    return ds.assign(t2m=(ds.t2m.dims, new, ds.t2m.attrs))


def _attrs(ds, draw):
    attrs = dict(ds.t2m.attrs)
    change = draw(st.sampled_from(["units", "drop-units", "packing"]))
    if change == "units":
        attrs["units"] = draw(st.sampled_from(["K", "kelvin", "degC", "degF", "m", "1", "banana", "", " k ",
                                               "days since 2000-01-01", "K m-1"]) | st.text(max_size=8))
    elif change == "drop-units":
        attrs.pop("units", None)
    else:
        attrs[draw(st.sampled_from(list(V.PACKING_ATTRS)))] = draw(st.sampled_from([0.01, 273.15, -32767, 1e20]))
    out = ds.copy()
    out.t2m.attrs = attrs
    return out


def _time(ds, draw):
    how = draw(st.sampled_from(["drop", "duplicate", "reverse", "shuffle", "integers", "tz", "cftime",
                                "360_day", "shift-one"]))
    t = pd.DatetimeIndex(ds.time.values)
    if how == "drop":
        return ds.isel(time=[i for i in range(ds.sizes["time"]) if i != draw(st.integers(0, ds.sizes["time"] - 1))])
    if how == "duplicate":
        i = draw(st.integers(0, ds.sizes["time"] - 1))
        return ds.isel(time=sorted(list(range(ds.sizes["time"])) + [i]))
    if how == "reverse":
        return ds.isel(time=slice(None, None, -1))
    if how == "shuffle":
        return ds.isel(time=draw(st.permutations(range(ds.sizes["time"]))))
    if how == "integers":
        return ds.assign_coords(time=np.arange(ds.sizes["time"]))
    if how == "tz":
        return ds.assign_coords(time=t.tz_localize("UTC"))
    if how in ("cftime", "360_day"):
        cal = "noleap" if how == "cftime" else "360_day"
        return ds.assign_coords(time=xr.date_range("2000-01-01", periods=t.size, freq="6h", calendar=cal,
                                                   use_cftime=True))
    values = t.values.copy()
    values[draw(st.integers(1, t.size - 1))] += np.timedelta64(1, "h")
    return ds.assign_coords(time=values)


def _grid(ds, draw):
    how = draw(st.sampled_from(["flip-lat", "lon-180", "lon+360", "shift-lat", "drop-row", "rename-dims",
                                "transpose", "extra-dim", "rename-var", "drop-lat-coord", "bigger"]))
    if how == "flip-lat":
        return ds.isel(lat=slice(None, None, -1)), True
    if how == "lon-180":
        lon = ((ds.lon.values + 180) % 360) - 180
        return ds.assign_coords(lon=("lon", lon, ds.lon.attrs)), True
    if how == "lon+360":
        return ds.assign_coords(lon=("lon", ds.lon.values + 360, ds.lon.attrs)), True
    if how == "shift-lat":
        return ds.assign_coords(lat=("lat", ds.lat.values + 0.1, ds.lat.attrs)), False
    if how == "drop-row":
        return ds.isel(lat=slice(1, None)), False
    if how == "rename-dims":
        return ds.rename(lat="y", lon="x"), False
    if how == "transpose":
        return ds.transpose("lon", "time", "lat"), True
    if how == "extra-dim":
        return ds.expand_dims(site=[1, 2]).transpose("time", "site", "lat", "lon"), False
    if how == "rename-var":
        return ds.rename(t2m="temperature"), False
    if how == "drop-lat-coord":
        return ds.drop_vars("lat"), False
    bigger = xr.concat([ds, ds.assign_coords(lat=ds.lat + 60)], dim="lat")
    return bigger, True


def _init(ds, draw):
    times = ds.time.values if ds.time.dtype.kind == "M" else None
    options = [None, slice("2000-01-02", None), "2000-01-02T06", datetime.date(2000, 1, 2),
               pd.Timestamp("2000-01-02", tz="UTC"), "1999", 3, ["2000-01-02T00", "2000-01-02T12"],
               "2000-01-02T00:00+02:00", slice("2000-01-03", "2000-01-01")]
    if times is not None:
        options.append(times[-1])
    return draw(st.sampled_from(options))


_ORDER = ["values", "attrs", "time", "dtype", "grid", "chunk"]  # each applies to what the one before left


@st.composite
def malformed(draw, data):
    """(dataset, init, same_meaning): a mutated copy of ``data``; ``same_meaning`` when every
    mutation keeps the data's meaning (the forecast must then equal the reference)."""
    ds, same = data, True
    kinds = draw(st.lists(st.sampled_from(_ORDER), min_size=1, max_size=3, unique=True))
    for kind in sorted(kinds, key=_ORDER.index):
        if kind == "values":
            ds, same = _values(ds, draw, draw(st.sampled_from(
                ["inf", "-inf", "fill", "huge", "nan", "cold", "all-nan", "nan-step"]))), False
        elif kind == "dtype":
            ds, same = _dtype(ds, draw), False
        elif kind == "attrs":
            ds, same = _attrs(ds, draw), False
        elif kind == "time":
            ds, same = _time(ds, draw), False
        elif kind == "grid":
            ds, kept = _grid(ds, draw)
            same = same and kept
        else:
            ds = ds.chunk({"time": draw(st.integers(1, 9))})
    init = _init(data, draw) if draw(st.booleans()) else None
    return ds, init, same and init is None


def _on_reference_grid(fc):
    """``fc`` with longitudes in 0..360 and both axes ascending, like the reference."""
    fc = fc.assign_coords(lon=fc.lon % 360)
    return fc.sortby("lat").sortby("lon")


@FUZZ
@given(st.data())
def test_forecast_of_malformed_data_is_right_or_a_project_error(base, reference, data):
    clean, model = base
    ds, init, same = data.draw(malformed(clean))
    lead = _mostly(data, None, [1, 0, 99, 2.5, "2", True])
    batch = _mostly(data, None, [1, 0, -1, 3.0, True, 10**9])
    margin = _mostly(data, 1.0, [None, 0, -1.0, float("nan"), "1", 1e300])
    if data.draw(st.booleans()) and "t2m" in ds:
        ds = ds.t2m                                               # a DataArray
    same = same and lead is None and margin == 1.0 and not isinstance(ds, xr.DataArray)
    result = outcome(lambda: F.forecast(ds, model, init=init, lead=lead, batch_size=batch, range_margin=margin,
                                        progress=False, device="cpu").compute())
    if result is None:
        return
    var = next(iter(result.data_vars))
    assert set(result[var].dims) >= {"init_time", "lead_time"}
    assert not np.isinf(result[var].values).any()
    assert result.attrs["xearthformer_bundle_sha256"] == checkpoint.bundle_digest(model)
    if same:
        got = _on_reference_grid(result[var].transpose("init_time", "lead_time", "lat", "lon"))
        ref = reference.t2m.sel(init_time=got.init_time)
        np.testing.assert_array_equal(got.lon.values, ref.lon.values)
        np.testing.assert_array_equal(got.lat.values, ref.lat.values)
        np.testing.assert_allclose(got.values, ref.values, rtol=1e-5, atol=1e-3)


@pytest.fixture(scope="module")
def toy():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "_FAMILIES", registry.families())
        registry.register_family(TOY)
        ds = toy_data(n_time=8)
        spec = layout.fit_spec(ds, "z", context=2, lead=2)
        net = registry.build("toy", "default", input_shape=spec.input_shape, target_shape=spec.target_shape)
        yield ds, F.Forecaster(net, spec)


@FUZZ
@given(st.data())
def test_ensemble_of_odd_requests_is_right_or_a_project_error(toy, data):
    ds, model = toy
    members = _mostly(data, 3, [1, [0, 5], [2], 0, -1, [1, 1], 2.5, "4", [], None, True, 10**7])
    seed = _mostly(data, 0, [1, -5, 2**70, "0", None, 1.5])
    sampling = _mostly(data, {}, [{"temperature": 0.0}, {"temperature": "hot"}, {"steps": 5}])
    chunked = data.draw(st.booleans())
    member_chunk = _mostly(data, None, [1, 2, 0, -3, 2.0])
    source = ds.chunk(time=3) if chunked else ds
    if data.draw(st.booleans()):  # a damaged value somewhere
        source = source.copy(deep=True)
        source["z"][data.draw(st.integers(0, 7)), 0, 1, 1] = data.draw(st.sampled_from([np.inf, np.nan, 1e31]))
    result = outcome(lambda: F.ensemble(source, model, members=members, seed=seed, progress=False,
                                        device="cpu", member_chunk=member_chunk, **sampling).compute())
    if result is None:
        return
    n = members if isinstance(members, int) else len(members)
    assert result.sizes["member"] == n and np.isfinite(result.z.values).all()


# ----------------------------------------------------------------------------------------------
# damaged bundle files
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle_bytes(base, tmp_path_factory):
    _, model = base
    path = tmp_path_factory.mktemp("bundle") / "m.xef"
    checkpoint.save(model, path)
    return path.read_bytes()


def _header(raw):
    size = struct.unpack("<Q", raw[:8])[0]
    return size, json.loads(raw[8:8 + size])


def _with_header(raw, header):
    size = struct.unpack("<Q", raw[:8])[0]
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + raw[8 + size:]


@st.composite
def damaged(draw, raw):
    how = draw(st.sampled_from(["truncate", "flip", "flip-header", "field", "field-json", "length",
                                "garbage", "empty", "tensor-entry"]))
    if how == "truncate":
        return raw[:draw(st.integers(0, len(raw) - 1))], False
    if how in ("flip", "flip-header"):
        size = struct.unpack("<Q", raw[:8])[0]
        hi = 8 + size if how == "flip-header" else len(raw)
        data = bytearray(raw)
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, hi - 1))
            data[i] ^= draw(st.integers(1, 255))
        return bytes(data), False
    if how in ("field", "field-json"):
        _, header = _header(raw)
        meta = header["__metadata__"]
        key = draw(st.sampled_from(sorted(meta) + ["extra"]))
        value = draw(st.sampled_from(["", "null", "[]", "{}", "1e309", "{\"a\": " * 50 + "1" + "}" * 50,
                                      "\"text\"", "2", "-1", "NaN", "{\"inputs\": []}"]))
        if how == "field-json" and key in ("spec", "model_config"):
            obj = json.loads(meta[key])
            sub = draw(st.sampled_from(sorted(obj)))
            obj[sub] = draw(st.sampled_from([None, [], {}, -1, 1e308, "x", [[1]]]))
            value = json.dumps(obj)
        meta[key] = value
        resigned = draw(st.booleans())
        if resigned:  # an edit with a matching checksum: the checks behind it are reached
            meta["bundle_sha256"] = checkpoint.metadata_digest(meta)
        return _with_header(raw, header), resigned
    if how == "length":
        return struct.pack("<Q", draw(st.integers(0, 2**64 - 1))) + raw[8:], False
    if how == "tensor-entry":
        _, header = _header(raw)
        name = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
        header[name] = draw(st.sampled_from([{}, {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]},
                                             {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "x"]))
        return _with_header(raw, header), False
    if how == "empty":
        return b"", False
    return draw(st.binary(min_size=0, max_size=64)), False


@FUZZ
@given(st.data())
def test_load_of_a_damaged_bundle_is_the_bundle_or_a_project_error(base, bundle_bytes, tmp_path_factory, data):
    _, model = base
    path = tmp_path_factory.mktemp("damaged") / "m.xef"
    raw, resigned = data.draw(damaged(bundle_bytes))
    path.write_bytes(raw)
    loaded = outcome(lambda: xef.load(path))
    if loaded is None:
        return
    if resigned:  # a deliberate edit with a matching checksum: a coherent bundle, or refused
        assert tuple(loaded.model.config.input_shape) == loaded.spec.input_shape
        return
    # whatever loads is the original: the checksums leave nothing else
    assert loaded.spec == model.spec
    original = model.model.state_dict()
    for key, value in loaded.model.state_dict().items():
        assert (value == original[key]).all(), key


# ----------------------------------------------------------------------------------------------
# the validation module and the metrics
# ----------------------------------------------------------------------------------------------
@FUZZ
@given(got=st.one_of(st.none(), st.text(max_size=12), st.sampled_from(["K", "degC", "kg m-2 s-1", "%"])),
       want=st.one_of(st.none(), st.text(max_size=12), st.sampled_from(["K", "kelvin", "mm h-1", "1"])),
       values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=6),
       init=st.one_of(st.none(), st.dates(), st.datetimes(timezones=st.just(datetime.timezone.utc)),
                      st.text(max_size=30), st.integers()))
def test_validation_checks_answer_or_raise_a_project_error(got, want, values, init):
    outcome(lambda: V.check_units(got, want, "v"))
    outcome(lambda: V.unit_conversion(got, want))
    checked = outcome(lambda: V.check_finite(np.array(values, dtype="f4"), "v") or True)
    assert (checked is None) == bool(np.any(np.abs(np.array(values, "f4")) >= V.FILL_MAGNITUDE))
    outcome(lambda: V.init_labels(init))
    outcome(lambda: layout.infer_step(np.array(values, dtype="f4")))


_VALUE_CHANGES = ["units", "inf", "nan", "lon", "shift-time", "lazy", "packing", "daily-vs-monthly"]
_SHAPE_CHANGES = ["no-time", "numpy", "rename"]


@st.composite
def score_pairs(draw):
    """A forecast (init_time, lead_time, lat, lon) and observations on time, then changed:
    units, values, longitude convention, times, laziness, packing attributes, a monthly lead;
    at most one change of shape last (no time, a bare numpy array, another variable name)."""
    obs = make_data(n_time=10)
    fc = obs.isel(time=slice(3, 7)).rename(time="init_time").expand_dims(lead_time=[np.timedelta64(6, "h")])
    fc = fc.transpose("init_time", "lead_time", "lat", "lon")
    fc = fc.assign_coords(valid_time=fc.init_time + fc.lead_time)
    changes = draw(st.lists(st.sampled_from(_VALUE_CHANGES), unique=True, max_size=2))
    changes += draw(st.lists(st.sampled_from(_SHAPE_CHANGES), max_size=1))
    for how in changes:
        if how == "units":
            obs = obs.copy()
            obs.t2m.attrs["units"] = draw(st.sampled_from(["degC", "kelvin", "banana", ""]))
        elif how in ("inf", "nan"):
            obs = _values(obs, draw, how)
        elif how == "lon":
            obs = obs.assign_coords(lon=("lon", ((obs.lon.values + 180) % 360) - 180, obs.lon.attrs))
        elif how == "shift-time":
            obs = obs.assign_coords(time=obs.time.values + np.timedelta64(1, "D"))
        elif how == "lazy":
            obs = obs.chunk(time=3)
        elif how == "packing":
            obs = obs.copy()
            obs.t2m.attrs["scale_factor"] = 0.01
        elif how == "daily-vs-monthly":
            fc = fc.assign_coords(lead_time=("lead_time", [1], {"units": "months"}))
        elif how == "no-time":
            obs = obs.isel(time=0)
        elif how == "numpy":
            obs = obs.t2m.values
        else:
            obs = obs.rename(t2m="other")
    return fc, obs


@FUZZ
@given(pair=score_pairs(), score=st.sampled_from(["rmse", "mae", "acc", "crps", "csi"]))
def test_scores_of_odd_pairs_are_right_or_a_project_error(pair, score):
    fc, obs = pair

    def run():
        if score == "csi":
            out = metrics.csi(fc, obs, thresholds=[280.0])
        elif score == "crps":
            out = metrics.crps(fc.expand_dims(member=[0, 1]), obs)
        else:
            out = getattr(metrics, score)(fc, obs)
        return out.compute()

    result = outcome(run)
    if result is None:
        return
    values = np.asarray(result.to_array() if isinstance(result, xr.Dataset) else result)
    assert not np.isinf(values).any()
