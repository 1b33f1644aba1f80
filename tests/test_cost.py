"""`glassdetect cost`: memory and time against K, line fits, JSON + PNG, baseline alongside."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from glassdetect.bench.cost import line_fit, parse_crops
from glassdetect.cli import app


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


def test_cli_cost_absolute_peak_and_batch_32(tmp_path):
    """The paper's quantities: absolute peak memory next to the increase, at the paper's batch of 32."""
    out = tmp_path / "cost32"
    r = CliRunner().invoke(app, ["cost", "--backbone", "test_resnet", "--quick", "--crops", "1", "--batch", "32",
                                 "--steps", "1", "--warmup", "1", "--device", "cpu", "--threads", "1", "--out", str(out)],
                            env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "abs" in r.output  # both memory columns in the printed table
    res = json.loads((out / "cost.json").read_text())
    assert res["batch"] == 32
    import sys

    for row in [*res["glass"], res["standard"]]:
        for phase in ("train", "infer"):
            delta, total = row[f"{phase}_peak_mb"], row[f"{phase}_peak_total_mb"]
            if sys.platform.startswith("linux"):
                # CPU absolute figure: the process's peak RSS in the phase, at least the increase and the start
                assert total is not None and delta is not None and total >= delta
                assert total >= res["process_rss_start_mb"] > 0
    assert res["fits"]["train_peak_total_mb"] is None  # a single K: no line


def test_cli_cost_data_trains_each_k(tmp_path, tiny_tree, monkeypatch):
    """--data D --epochs E: GLASS trained at each K on D; validation accuracy/AUC per K in cost.json and the plot."""
    out = tmp_path / "costacc"
    args = ["cost", "--backbone", "test_resnet", "--quick", "--crops", "1,2", "--batch", "2", "--steps", "1",
            "--warmup", "0", "--device", "cpu", "--threads", "1", "--out", str(out), "--data", str(tiny_tree),
            "--epochs", "1", "--train-batch", "4", "--workers", "0"]
    r = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    res = json.loads((out / "cost.json").read_text())
    acc = res["accuracy"]
    assert acc["split"] == "val" and acc["settings"]["epochs"] == 1 and acc["settings"]["backbone"] == "test_resnet"
    assert [row["k"] for row in acc["rows"]] == [1, 2]
    for row in acc["rows"]:
        summary = json.loads((out / "accuracy" / f"k{row['k']}" / "summary.json").read_text())
        assert row["val_accuracy"] == pytest.approx(summary["best_val_accuracy"])
        assert row["val_auc"] == summary["history"][0]["val_auc"] and row["best_epoch"] == 1
        cfg = json.loads((out / "accuracy" / f"k{row['k']}" / "best" / "config.json").read_text())
        assert cfg["model"]["k"] == row["k"]
    assert "val acc" in r.output
    assert (out / "cost.png").stat().st_size > 5000
    # a re-run reuses the trained runs
    import glassdetect.training.train as train_mod

    monkeypatch.setattr(train_mod, "train", lambda cfg: (_ for _ in ()).throw(AssertionError("retrained")))
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "cost.json").read_text())["accuracy"]["rows"] == acc["rows"]


def test_cli_cost_data_errors(tmp_path):
    r = CliRunner().invoke(app, ["cost", "--backbone", "test_resnet", "--quick", "--data", str(tmp_path / "missing"),
                                 "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "missing" in r.output
