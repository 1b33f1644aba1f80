"""Final runs (train+val merged, seeded validation carve-out, held-out test) and the report helpers."""
from __future__ import annotations

import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from glassdetect.cli import app
from glassdetect.data import load_samples
from glassdetect.final import carve_validation, fixed_split
from glassdetect.report import aggregate, markdown_table
from synth import make_checker_tree


def test_aggregate_and_markdown_table():
    runs = [{"accuracy": 0.8, "auc": 0.9, "n": 10, "ok": True, "name": "a", "ece": None},
            {"accuracy": 0.9, "auc": float("nan"), "n": 10, "ece": 0.05},
            {"accuracy": 1.0, "n": 10, "per_generator": {"x": 1}}]
    agg = aggregate(runs)
    assert set(agg) == {"accuracy", "auc", "n", "ece"}  # booleans, strings, dicts, None and NaN are skipped
    assert agg["accuracy"]["mean"] == pytest.approx(0.9)
    assert agg["accuracy"]["std"] == pytest.approx(0.1)  # sample std (ddof=1)
    assert agg["accuracy"]["values"] == [0.8, 0.9, 1.0] and agg["accuracy"]["n"] == 3
    assert agg["auc"] == {"mean": 0.9, "std": 0.0, "values": [0.9], "n": 1}
    table = markdown_table({"GLASS": agg, "baseline": aggregate([{"accuracy": 0.5}, {"accuracy": 0.7}])},
                           ["accuracy", "auc"])
    lines = table.strip().splitlines()
    assert lines[0] == "| run | accuracy | auc |" and lines[1] == "|---|---:|---:|"
    assert lines[2] == "| GLASS | 0.900 ± 0.100 | 0.900 ± 0.000 |"
    assert lines[3] == "| baseline | 0.600 ± 0.141 | n/a |"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_checker_tree(tmp_path_factory.mktemp("final_data"), n_groups=10, size=256)


def test_validation_carve_out_is_grouped_seeded_and_leaves_test_alone(data):
    fixed = fixed_split(load_samples(data), (0.6, 0.2, 0.2), split_seed=0)
    test = sorted(s.path for s in fixed if s.split == "test")
    a, b, a2 = (carve_validation(fixed, 0.25, seed) for seed in (1, 2, 1))
    assert a == a2
    for carved in (a, b):
        assert sorted(s.path for s in carved if s.split == "test") == test
        assert Counter(s.split for s in carved)["val"] >= 2
        groups = {}
        for s in carved:
            assert groups.setdefault(s.group, s.split) == s.split  # a source never straddles splits
    assert {s.path for s in a if s.split == "val"} != {s.path for s in b if s.split == "val"}


def test_cli_final_two_seeds(data, tmp_path):
    config = tmp_path / "best_config.json"
    config.write_text(json.dumps({"arch": "glass", "backbone": "test_resnet", "pretrained": False, "k": 2,
                                  "epochs": 1, "batch_size": 8, "lr_head": 1e-3, "seed": 0}))
    out = tmp_path / "final"
    args = ["final", "--config", str(config), "--seeds", "100,200", "--data", str(data), "--out", str(out),
            "--workers", "0", "--threads", "1", "--device", "cpu", "--quiet"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "final.json").read_text())
    assert res["seeds"] == [100, 200] and [run["seed"] for run in res["runs"]] == [100, 200]
    acc = res["aggregate"]["accuracy"]
    assert acc["values"] == [run["accuracy"] for run in res["runs"]] and acc["n"] == 2
    assert res["n_test"] == res["runs"][0]["n"] == res["runs"][1]["n"] > 0
    for seed in (100, 200):
        test = json.loads((out / f"seed-{seed}" / "test.json").read_text())
        assert test["split"] == "test" and test["accuracy"] == res["runs"][[100, 200].index(seed)]["accuracy"]
        cfg = json.loads((out / f"seed-{seed}" / "best" / "config.json").read_text())["train"]
        assert cfg["seed"] == seed and cfg["k"] == 2 and cfg["lr_head"] == 1e-3
    # the same test images for every seed, different validation carve-outs
    split = lambda seed, name: {line.split(",")[0] for line in (out / f"seed-{seed}" / "data.csv").read_text().splitlines()  # noqa: E731
                                if line.endswith("," + name)}
    assert split(100, "test") == split(200, "test")
    assert split(100, "val") != split(200, "val")
    md = (out / "final.md").read_text()
    assert "| model | accuracy |" in md and "±" in md and "## Per seed" in md
    # a re-run reuses the finished seeds
    stamp = (out / "seed-100" / "test.json").stat().st_mtime_ns
    assert CliRunner().invoke(app, args).exit_code == 0
    assert (out / "seed-100" / "test.json").stat().st_mtime_ns == stamp
