"""`glassdetect cost`: memory and time against K, line fits, JSON + PNG, baseline alongside."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from glassdetect.bench.cost import line_fit, parse_crops
from glassdetect.cli import app


def test_old_module_name_still_imports():
    import glassdetect.bench.cost as moved
    import glassdetect.cost as old

    assert old.measure_cost is moved.measure_cost and old.parse_crops is parse_crops


def test_parse_crops_and_line_fit():
    assert parse_crops("1-4") == [1, 2, 3, 4]
    assert parse_crops("1,2,4,8") == [1, 2, 4, 8]
    assert parse_crops("1-3,8, 16") == [1, 2, 3, 8, 16]
    for bad in ("0-3", "", "x"):
        with pytest.raises(ValueError):
            parse_crops(bad)
    fit = line_fit([1, 2, 4], [12.0, 14.0, 18.0])
    assert fit["intercept"] == pytest.approx(10.0) and fit["slope"] == pytest.approx(2.0) and fit["r2"] == pytest.approx(1.0)
    assert line_fit([1, 1], [1.0, 2.0]) is None


def test_cli_cost_quick_test_resnet(tmp_path):
    out = tmp_path / "cost"
    r = CliRunner().invoke(app, ["cost", "--backbone", "test_resnet", "--quick", "--crops", "1,3", "--batch", "1",
                                 "--device", "cpu", "--threads", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "cost.json").read_text())
    assert res["crops"] == [1, 3] and [row["k"] for row in res["glass"]] == [1, 3]
    assert res["cpu_microbatch"] == 4  # inference timed on the models' own CPU evaluation path
    for row in [*res["glass"], res["standard"]]:
        assert row["train_step_s"] > 0 and row["infer_s_per_image"] > 0
        assert row["train_peak_mb"] is None or row["train_peak_mb"] >= 0
    # No timing order is asserted (timings belong in benchmarks, not unit tests); the fit must be
    # the least-squares line through the measured points.
    import numpy as np

    ks = np.array([row["k"] for row in res["glass"]], float)
    ys = np.array([row["train_step_s"] for row in res["glass"]], float)
    slope, intercept = np.polyfit(ks, ys, 1)
    fit = res["fits"]["train_step_s"]
    assert set(fit) == {"intercept", "slope", "r2"}
    assert fit["slope"] == pytest.approx(slope, rel=1e-6, abs=1e-12)
    assert fit["intercept"] == pytest.approx(intercept, rel=1e-6, abs=1e-12)
    assert res["glass_parameters"] > res["standard"]["parameters"]
    assert (out / "cost.png").stat().st_size > 5000
