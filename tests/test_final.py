"""Final runs (train+val merged, seeded validation carve-out, held-out test) and the report helpers."""
from __future__ import annotations

import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from glassdetect.cli import app
from glassdetect.data.splits import load_samples
from glassdetect.studies.final import carve_validation, fixed_split, run_final
from glassdetect.evaluation.report import aggregate, markdown_table
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
            "--epochs", "1", "--workers", "0", "--threads", "1", "--device", "cpu", "--quiet"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "final.json").read_text())
    assert res["seeds"] == [100, 200] and [run["seed"] for run in res["runs"]] == [100, 200]
    assert (res["val_fraction"], res["holdout_seed"], res["epochs"]) == (0.05, 606, 1)
    acc = res["aggregate"]["accuracy"]
    assert acc["values"] == [run["accuracy"] for run in res["runs"]] and acc["n"] == 2
    assert res["n_test"] == res["runs"][0]["n"] == res["runs"][1]["n"] > 0
    for seed in (100, 200):
        test = json.loads((out / f"seed-{seed}" / "test.json").read_text())
        assert test["split"] == "test" and test["accuracy"] == res["runs"][[100, 200].index(seed)]["accuracy"]
        cfg = json.loads((out / f"seed-{seed}" / "best" / "config.json").read_text())["train"]
        assert cfg["seed"] == seed and cfg["k"] == 2 and cfg["lr_head"] == 1e-3
    # the same test images for every seed, and (the paper's protocol) the same validation holdout
    split = lambda seed, name: {line.split(",")[0] for line in (out / f"seed-{seed}" / "data.csv").read_text().splitlines()  # noqa: E731
                                if line.endswith("," + name)}
    assert split(100, "test") == split(200, "test")
    assert split(100, "val") == split(200, "val") and split(100, "val")
    md = (out / "final.md").read_text()
    assert "| model | accuracy |" in md and "±" in md and "## Per seed" in md
    assert "5% carved out once (seed 606)" in md and "1 epochs per seed" in md
    # a re-run reuses the finished seeds
    stamp = (out / "seed-100" / "test.json").stat().st_mtime_ns
    assert CliRunner().invoke(app, args).exit_code == 0
    assert (out / "seed-100" / "test.json").stat().st_mtime_ns == stamp


def _fake_runs(monkeypatch) -> list:
    """train/evaluate stand-ins: record each seed's TrainConfig and its manifest's splits, train nothing."""
    import glassdetect.evaluation.evaluate
    import glassdetect.training.train

    seen = []

    def train(cfg, on_epoch_end=None):
        seen.append((cfg, {s.path: s.split for s in load_samples(cfg.data)}))
        return {}

    def evaluate(checkpoint, manifest, split=None, **kw):
        return {"n": sum(v == "test" for v in seen[-1][1].values()), "accuracy": 0.5 + 0.1 * len(seen)}

    monkeypatch.setattr(glassdetect.training.train, "train", train)
    monkeypatch.setattr(glassdetect.evaluation.evaluate, "evaluate", evaluate)
    return seen


@pytest.fixture
def big_manifest(tmp_path):
    """200 real/fake source pairs (files need not exist: training and evaluation are faked)."""
    rows = ["path,label,group"] + [f"{c}/s{i:03d}.png,{c},s{i:03d}" for i in range(200) for c in ("real", "fake")]
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_final_defaults_follow_the_paper(big_manifest, tmp_path, monkeypatch):
    """5 % of train+val held out once with seed 606 (the same images for every seed), 50 epochs per
    seed whatever the config says, the config's split seed for the fixed split."""
    seen = _fake_runs(monkeypatch)
    config = {"arch": "standard", "backbone": "test_resnet", "epochs": 3, "seed": 1, "split_seed": 4}
    res = run_final(config, big_manifest, tmp_path / "out", seeds=(100, 200, 300))
    assert [cfg.seed for cfg, _ in seen] == [100, 200, 300] and {cfg.epochs for cfg, _ in seen} == {50}
    val = [{p for p, sp in splits.items() if sp == "val"} for _, splits in seen]
    assert val[0] == val[1] == val[2]
    pool = sum(sp in ("train", "val") for sp in seen[0][1].values())
    assert 0.04 <= len(val[0]) / pool <= 0.06
    fixed = fixed_split(load_samples(big_manifest), (0.7, 0.15, 0.15), split_seed=4)
    expected = carve_validation(fixed, 0.05, 606)
    assert seen[0][1] == {s.path: s.split for s in expected}
    assert (res["split_seed"], res["holdout_seed"], res["val_fraction"], res["epochs"]) == (4, 606, 0.05, 50)
    assert res["aggregate"]["accuracy"]["n"] == 3


def test_final_old_protocol_one_option_away(big_manifest, tmp_path, monkeypatch):
    """holdout_seed=None redraws the holdout with each seed; epochs=None keeps the config's; a config
    without split_seed splits with its seed (as before split_seed existed)."""
    seen = _fake_runs(monkeypatch)
    config = {"arch": "standard", "backbone": "test_resnet", "epochs": 3, "seed": 7}
    res = run_final(config, big_manifest, tmp_path / "out", seeds=(100, 200), val_fraction=0.1, holdout_seed=None,
                    epochs=None)
    assert {cfg.epochs for cfg, _ in seen} == {3} and res["split_seed"] == 7 and res["holdout_seed"] is None
    val = [{p for p, sp in splits.items() if sp == "val"} for _, splits in seen]
    assert val[0] != val[1]
    fixed = fixed_split(load_samples(big_manifest), (0.7, 0.15, 0.15), split_seed=7)
    assert seen[1][1] == {s.path: s.split for s in carve_validation(fixed, 0.1, 200)}
    assert "carved out per seed" in (tmp_path / "out" / "final.md").read_text()


def test_final_resume_refuses_another_holdout(big_manifest, tmp_path, monkeypatch):
    """An interrupted seed resumes only on the data.csv it started with."""
    _fake_runs(monkeypatch)
    config = {"arch": "standard", "backbone": "test_resnet", "epochs": 3}
    out = tmp_path / "out"
    run_final(config, big_manifest, out, seeds=(100,), holdout_seed=None)  # the old protocol's data.csv
    state = out / "seed-100" / "last" / "trainer_state.pt"
    state.parent.mkdir(parents=True)
    state.write_bytes(b"interrupted")
    with pytest.raises(ValueError, match="seed-100.*split differently"):
        run_final(config, big_manifest, out, seeds=(100,))
    run_final(config, big_manifest, out, seeds=(100,), holdout_seed=None)  # the same options resume
    with pytest.raises(ValueError, match=r"--holdout\) must be in \(0, 1\), got 1.5"):
        run_final(config, big_manifest, tmp_path / "never", val_fraction=1.5)
    assert not (tmp_path / "never").exists()  # refused before anything was written
