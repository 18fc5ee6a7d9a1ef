"""The demo, reduced (--quick): files, CF compliance, and baseline scores checked by brute force."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from tests.cfcheck import cf_errors
from xearthformer.cli import main
from xearthformer.data.samples import open_ostia, ostia_path
from xearthformer.demo.sst import load_sst
from xearthformer.demo.storms import SIZE, run_storms
from xearthformer.errors import DataError


def parse_table(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def test_ostia_sample_is_found_and_cleaned():
    ds = open_ostia()
    assert ostia_path().name == "ostia_monthly.nc"
    sst = ds.surface_temperature
    assert sst.dims == ("time", "latitude", "longitude") and sst.shape == (54, 18, 432)
    assert "forecast_period" not in ds.variables and "forecast_reference_time" not in ds.variables
    assert sst.isel(time=0).isnull().any()  # land is NaN
    assert "forecast_period" in open_ostia(keep_iris_coords=True).variables


def test_missing_sample_package_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "iris_sample_data", None)  # makes the import fail
    with pytest.raises(DataError, match="pip install iris-sample-data"):
        ostia_path()


def test_quick_sst_demo_writes_cf_forecasts_and_honest_scores(tmp_path, capsys):
    assert main(["demo", "--quick", "--output", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for name in ("sst_forecast.nc", "sst_maps.png", "nino34.png", "skill.md", "sst_model.xef",
                 "checkpoints/loss_curve.png"):
        assert (tmp_path / name).is_file(), name
    assert cf_errors(str(tmp_path / "sst_forecast.nc")) == []
    fc = xr.open_dataset(tmp_path / "sst_forecast.nc")
    assert fc.sizes["init_time"] == 12 and fc.sizes["lead_time"] == 6
    assert fc.init_time.attrs["standard_name"] == "forecast_reference_time"
    assert fc.surface_temperature.attrs["units"] == "K"
    rows = parse_table((tmp_path / "skill.md").read_text())
    assert [int(r["lead (months)"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [int(r["n"]) for r in rows] == [12, 11, 10, 9, 8, 7]
    assert "| 1 | 12 |" in printed and "CPU cores" in printed
    # persistence RMSE by brute force: numpy, cos(lat) weights, ocean points, held-out year
    sst = load_sst().surface_temperature.values.astype(np.float64)
    lat = load_sst().latitude.values.astype(np.float64)
    w = np.broadcast_to(np.cos(np.deg2rad(lat))[:, None], sst.shape[1:])
    for lead in (1, 6):
        num = den = 0.0
        for init in range(41, 53):  # init months 2009-09 .. 2010-08
            if init + lead > 53:
                continue
            err = sst[init] - sst[init + lead]
            ok = np.isfinite(err)
            num += (w[ok] * err[ok] ** 2).sum()
            den += w[ok].sum()
        want = np.sqrt(num / den)
        assert float(rows[lead - 1]["RMSE persistence (K)"]) == pytest.approx(want, abs=1.5e-3)
    acc = [r["ACC climatology"] for r in rows]
    assert acc == ["n/a"] * 6  # a zero-anomaly forecast has no anomaly correlation


def test_quick_storms_demo_reports_csi(tmp_path, capsys):
    result = run_storms(tmp_path, quick=True)
    printed = capsys.readouterr().out
    assert "CSI-219" in printed and "CSI-M" in printed
    for name in ("storms_forecast.nc", "storms_frames.png", "storms_skill.md"):
        assert (tmp_path / name).is_file(), name
    rows = {r["forecast"]: r for r in result["rows"]}
    assert set(rows) == {"earthformer", "persistence"}
    # persistence CSI at 74 by brute force on the same inits/leads
    fc = xr.open_dataset(tmp_path / "storms_forecast.nc")
    from xearthformer.data.storms import storms

    obs = storms(n_times=96, size=SIZE, seed=0).vil
    hits = misses = false = 0
    for init in fc.init_time.values:
        last = obs.sel(time=init).values >= 74
        for lead in fc.lead_time.values:
            o = obs.sel(time=init + lead).values >= 74
            hits += np.sum(last & o)
            misses += np.sum(~last & o)
            false += np.sum(last & ~o)
    assert rows["persistence"]["csi_74"] == pytest.approx(hits / (hits + misses + false), abs=1e-3)
    assert 0 <= rows["earthformer"]["csi_m"] <= 1


def brute_force_scores(ens: np.ndarray, det: np.ndarray, obs: np.ndarray, pers: np.ndarray) -> dict[str, float]:
    """CRPS, MAE, CSI-74 of the ensemble mean and the spread/skill ratio in plain numpy, over
    (init, lead, member, y, x) ensembles and (init, lead, y, x) fields, pooled over every point."""
    e = ens.astype(np.float64)
    o = obs.astype(np.float64)
    m = e.shape[2]
    skill = np.abs(e - o[:, :, None]).mean(2)
    pairs = np.abs(e[:, :, :, None] - e[:, :, None, :]).sum((2, 3)) / (2 * m * m)
    mean = e.mean(2)

    def csi(f: np.ndarray, t: float) -> float:
        hits = np.sum((f >= t) & (o >= t))
        return hits / (hits + np.sum((f < t) & (o >= t)) + np.sum((f >= t) & (o < t)))

    spread = np.sqrt(e.var(2, ddof=1).mean())
    rmse = np.sqrt(((mean - o) ** 2).mean())
    return {"crps": float((skill - pairs).mean()), "mae_det": float(np.abs(det - o).mean()),
            "mae_pers": float(np.abs(pers - o).mean()), "csi_74": csi(mean, 74.0),
            "ratio": float(np.sqrt((m + 1) / m) * spread / rmse)}


def test_quick_storms_ensemble_demo_writes_cf_members_and_scores_them(tmp_path, capsys):
    assert main(["demo", "--case", "storms", "--ensemble", "--quick", "--output", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "spread/skill" in printed and "CPU cores" in printed
    for name in ("storms_ensemble.nc", "storms_ensemble_frames.png", "storms_ensemble_skill.md",
                 "storms_ensemble_skill.json", "storms_prediff.xef", "storms_model.xef"):
        assert (tmp_path / name).is_file(), name
    assert cf_errors(str(tmp_path / "storms_ensemble.nc")) == []
    ens = xr.open_dataset(tmp_path / "storms_ensemble.nc")
    assert ens.member.attrs["standard_name"] == "realization" and ens.sizes["member"] == 2
    rows = {r["forecast"]: r for r in parse_table((tmp_path / "storms_ensemble_skill.md").read_text())}
    assert set(rows) == {"PreDiff ensemble (2 members)", "Earthformer", "persistence"}
    # every score by brute force from the written ensemble, the deterministic model and the truth
    from xearthformer.checkpoint import load
    from xearthformer.data.storms import storms

    obs = storms(n_times=96, size=SIZE, seed=0).vil
    det = obs.to_dataset().earthformer.forecast(load(tmp_path / "storms_model.xef"),
                                                init=ens.init_time.values, progress=False).vil
    assert np.array_equal(det.init_time.values, ens.init_time.values)
    truth = np.stack([[obs.sel(time=t + lead).values for lead in ens.lead_time.values]
                      for t in ens.init_time.values])
    last = np.stack([obs.sel(time=t).values for t in ens.init_time.values])
    want = brute_force_scores(ens.vil.transpose("init_time", "lead_time", "member", "y", "x").values,
                              det.values, truth, np.broadcast_to(last[:, None], truth.shape))
    ours = rows["PreDiff ensemble (2 members)"]
    assert float(ours["CRPS (MAE for point forecasts)"]) == pytest.approx(want["crps"], abs=0.006)
    assert float(rows["Earthformer"]["CRPS (MAE for point forecasts)"]) == pytest.approx(want["mae_det"], abs=0.006)
    assert float(rows["persistence"]["CRPS (MAE for point forecasts)"]) == pytest.approx(want["mae_pers"], abs=0.006)
    assert float(ours["CSI-74"]) == pytest.approx(want["csi_74"], abs=6e-4)
    assert float(ours["spread/skill"]) == pytest.approx(want["ratio"], abs=0.006)
    assert rows["Earthformer"]["spread/skill"] == "n/a"


def test_quick_storms_control_demo_sweeps_n_and_reports_the_achieved_statistic(tmp_path, capsys):
    assert main(["demo", "--case", "storms", "--ensemble", "--control", "--quick", "--output", str(tmp_path)]) == 0
    assert "knowledge control" in capsys.readouterr().out
    for name in ("storms_control.nc", "storms_control_frames.png", "storms_control.md", "storms_control.json",
                 "storms_prediff_control.xef"):
        assert (tmp_path / name).is_file(), name
    assert cf_errors(str(tmp_path / "storms_control.nc")) == []
    sweep = xr.open_dataset(tmp_path / "storms_control.nc").vil
    assert sweep.sizes["control"] == 5 and sweep.sizes["member"] == 2
    info = json.loads((tmp_path / "storms_control.json").read_text())
    rows = info["rows"]
    assert [r["control"] for r in rows][0] == "none" and len(rows) == 6
    # the achieved statistic of each control row by brute force from the written sweep, and the
    # targets mu + n sigma from the bundle's statistics
    vil = sweep.transpose("control", "init_time", "lead_time", "member", "y", "x").values.astype(np.float64)
    per_init = vil.mean(axis=(2, 3, 4, 5))
    for k, row in enumerate(rows[1:]):
        assert row["achieved_mean"] == pytest.approx(per_init[k].mean(), rel=1e-5)
        assert row["achieved_min"] == pytest.approx(per_init[k].min(), rel=1e-5)
    targets = [r["target"] for r in rows[1:]]
    assert np.all(np.diff(targets) >= 0)  # n = -4 ... 4, clipped at the attainable range
    assert main(["demo", "--case", "storms", "--control", "--quick", "--output", str(tmp_path)]) == 1
    assert "use it with --case storms --ensemble" in capsys.readouterr().err
