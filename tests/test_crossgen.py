"""`glassdetect crossgen`: train on some generators, test on every one; train × test AUC table."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from glassdetect.studies import crossgen as cg
from glassdetect.cli import app

GENS = ("gen_a", "gen_b", "gen_c")
SPLIT_OF = {"g0": "train", "g1": "train", "g2": "val", "g3": "test"}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """4 source groups (2 train, 1 val, 1 test), each with one real/fake pair per generator (24 images)."""
    root = tmp_path_factory.mktemp("crossgen_data")
    rows = []
    for gi, (group, split) in enumerate(SPLIT_OF.items()):
        for j, gen in enumerate(GENS):
            name = f"{group}_{j}.png"
            for label in ("real", "fake"):
                make_image(root / label / name, 240, 256, seed=100 * gi + 10 * j + (label == "fake"))
                rows.append([f"{label}/{name}", label, group, gen if label == "fake" else "", split])
    path = root / "manifest.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "group", "generator", "split"])
        w.writerows(rows)
    return path


def _config(manifest: Path, out: Path, **kw) -> cg.CrossgenConfig:
    base = {"data": str(manifest), "out": str(out), "train_on": (("gen_a",), ("gen_a", "gen_b")), "archs": ("glass",),
                "seeds": (0,), "backbone": "test_resnet", "weights": None, "pretrained": False, "k": 2, "epochs": 1, "batch_size": 4,
                "freeze": 0, "workers": 0, "threads": 1, "device": "cpu"}
    return cg.CrossgenConfig(**{**base, **kw})


def test_parse_rows_and_archs():
    assert cg.parse_rows(["b,a", "a", "a, b"]) == [("a", "b"), ("a",)]
    with pytest.raises(ValueError, match="at least one generator"):
        cg.parse_rows([" , "])
    assert cg.parse_archs("both") == ("glass", "standard") and cg.parse_archs("baseline") == ("standard",)
    with pytest.raises(ValueError, match="--arch"):
        cg.parse_archs("resnet")


def test_row_samples_paired_all_and_group_fallback(manifest):
    samples = cg.load_split(manifest)
    row = cg.row_samples(samples, ("gen_b",))
    fakes = [s for s in row if s.label == 1]
    reals = [s for s in row if s.label == 0]
    assert {s.generator for s in fakes} == {"gen_b"} and {s.split for s in row} == {"train", "val"}
    # each fake's partner: same split, group and file name; classes balanced
    assert sorted((s.group, Path(s.path).name) for s in reals) == sorted((s.group, Path(s.path).name) for s in fakes)
    every = cg.row_samples(samples, ("gen_b",), reals="all")
    assert sum(s.label == 0 for s in every) == 9  # 3 groups (train + val) x 3 reals
    # a fake without a same-named partner brings the reals of its group
    renamed = [s if s.label == 0 else type(s)(**{**s.__dict__, "path": s.path + ".x"}) for s in samples]
    fallback = cg.row_samples(renamed, ("gen_b",))
    assert sum(s.label == 0 for s in fallback) == 9
    with pytest.raises(ValueError, match="reals"):
        cg.row_samples(samples, ("gen_b",), reals="some")
    assert cg.top_generators(samples, 2) == ["gen_a", "gen_b"]  # all tie at 2: by name


def _predictions(run_dir: Path) -> list[dict]:
    with open(run_dir / "test_eval.predictions.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_crossgen_table_same_reals_and_cache(manifest, tmp_path, monkeypatch):
    out = tmp_path / "cg"
    res = cg.crossgen(_config(manifest, out), log=lambda m: None)
    assert res["columns"] == list(GENS) and res["test"]["n_real"] == 3
    assert [(r["train_on"], r["arch"]) for r in res["rows"]] == [(["gen_a"], "glass"), (["gen_a", "gen_b"], "glass")]
    for r in res["rows"]:
        assert set(r["auc"]) == set(GENS) and set(r["per_seed"]) == {"0"}
        run_dir = out / "runs" / "+".join(r["train_on"]) / "glass" / "seed0"
        # trained on the row's generators only, with their partner reals
        with open(run_dir.parent.parent / "manifest.csv", newline="") as fh:
            used = list(csv.DictReader(fh))
        assert {u["generator"] for u in used if u["label"] == "1"} == set(r["train_on"])
        assert sum(u["label"] == "0" for u in used) == sum(u["label"] == "1" for u in used)
        # every column: that generator's test fakes against the same (all) test reals
        preds = _predictions(run_dir)
        real_p = [float(p["fake_probability"]) for p in preds if p["label"] == "real"]
        assert len(real_p) == 3
        for g in GENS:
            fake_p = [float(p["fake_probability"]) for p in preds if p["generator"] == g]
            expect = roc_auc_score([0] * len(real_p) + [1] * len(fake_p), real_p + fake_p)
            assert r["per_seed"]["0"]["auc"][g] == pytest.approx(expect)
            assert r["auc"][g]["mean"] == pytest.approx(expect) and r["auc"][g]["std"] == 0.0
        held = [r["per_seed"]["0"]["auc"][g] for g in GENS if g not in r["train_on"]]
        assert r["held_out_mean"]["mean"] == pytest.approx(np.mean(held))
    md = (out / "results.md").read_text()
    assert "| gen_a+gen_b | **" in md and "held-out mean" in md
    assert json.loads((out / "results.json").read_text())["rows"] == res["rows"]

    # a re-run only evaluates: training is not called again, the table is the same
    def no_training(tc):
        raise AssertionError(f"retrained {tc.out}")

    monkeypatch.setattr(cg, "train", no_training)
    again = cg.crossgen(_config(manifest, out), log=lambda m: None)
    assert [r["auc"] for r in again["rows"]] == [r["auc"] for r in res["rows"]]
    # a changed recipe is trained again
    with pytest.raises(AssertionError, match="retrained"):
        cg.crossgen(_config(manifest, out, epochs=2), log=lambda m: None)


def test_cli_crossgen_rows_top_and_errors(manifest, tmp_path):
    out = tmp_path / "cli"
    common = ["crossgen", "--data", str(manifest), "--backbone", "test_resnet", "--weights", "", "-k", "2",
              "--epochs", "1", "--batch", "4", "--freeze", "0", "--workers", "0", "--threads", "1", "--device", "cpu",
              "--out", str(out)]
    r = CliRunner().invoke(app, [*common, "--train-on", "gen_c", "--top", "1", "--arch", "baseline"])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert [(row["train_on"], row["arch"]) for row in res["rows"]] == [(["gen_c"], "standard"), (["gen_a"], "standard")]
    md = (out / "results.md").read_text()
    assert "## baseline" in md and "## GLASS" not in md and "--train-on gen_c --train-on gen_a --arch baseline" in md
    bad = CliRunner().invoke(app, [*common, "--train-on", "gen_z"])
    assert bad.exit_code == 2 and "gen_z" in bad.output
