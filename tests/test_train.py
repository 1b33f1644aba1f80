import csv
import io
import json

import pytest
import torch
from typer.testing import CliRunner

from glassdetect.cli import app
from glassdetect.evaluate import evaluate
from glassdetect.train import TrainConfig, train

from synth import assert_interrupted_run_resumes_exactly, make_checker_tree

FAST = dict(pretrained=False, workers=0, threads=1, progress=False, device="cpu")
EVAL_KEYS = {"n", "accuracy", "balanced_accuracy", "real_accuracy", "fake_accuracy", "auc", "ap", "f1", "precision",
             "recall", "ece", "conf_correct", "conf_incorrect"}


@pytest.fixture(scope="module")
def checker_data(tmp_path_factory):
    return make_checker_tree(tmp_path_factory.mktemp("checker"), n_groups=48)


def test_glass_learns_native_resolution_signal_baseline_cannot(checker_data, tmp_path):
    """The point of the method: a faint pixel-level pattern that a 224 resize erases.

    Same data, same backbone, same optimiser settings; only the views differ.
    """
    common = dict(data=str(checker_data), backbone="test_convnext", k=2, epochs=3, batch_size=8,
                  lr_global=1e-3, lr_local=1e-3, lr_head=1e-3, seed=0, **FAST)
    acc = {}
    for arch in ("glass", "standard"):
        train(TrainConfig(out=str(tmp_path / arch), arch=arch, **common))
        res = evaluate(tmp_path / arch / "best", checker_data, split="test", workers=0, device="cpu", progress=False)
        assert res["n"] >= 12
        acc[arch] = res["accuracy"]
    assert acc["glass"] >= 0.9, acc
    assert acc["standard"] <= 0.7, acc


def test_resume_equals_uninterrupted(checker_data, tmp_path):
    common = dict(data=str(checker_data), arch="glass", backbone="test_resnet", k=2, epochs=2, batch_size=16,
                  lr_global=1e-3, lr_local=1e-3, lr_head=1e-3, dropout=0.3, seed=3, **FAST)
    train(TrainConfig(out=str(tmp_path / "full"), **common))
    assert_interrupted_run_resumes_exactly(tmp_path / "full", tmp_path / "cut", **common)


def test_cli_train_then_evaluate(checker_data, tmp_path):
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--data", str(checker_data), "--arch", "glass", "--backbone", "test_resnet",
                                 "--no-pretrained", "--epochs", "2", "--out", str(run), "--workers", "0",
                                 "--threads", "1", "-k", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    for name in ("best/model.safetensors", "best/config.json", "last/model.safetensors", "last/trainer_state.pt",
                 "metrics.jsonl", "curves.png", "split.csv", "summary.json"):
        assert (run / name).is_file(), name
    cfg = json.loads((run / "best/config.json").read_text())
    assert cfg["model"]["arch"] == "glass" and cfg["model"]["k"] == 2 and cfg["train"]["seed"] == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2

    out = tmp_path / "m.json"
    r = CliRunner().invoke(app, ["evaluate", str(run / "best"), "--data", str(checker_data), "--out", str(out),
                                 "--workers", "0", "--threads", "1", "--draws", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert EVAL_KEYS <= set(res)
    assert res["split"] == "test" and res["draws"] == 2 and res["mean_spread"] >= 0
    assert out.with_suffix(".reliability.png").stat().st_size > 1000
    # deterministic evaluation: the same checkpoint on the same data gives the same numbers
    again = evaluate(run / "best", checker_data, draws=2, workers=0, device="cpu", progress=False)
    assert again["auc"] == res["auc"] and again["accuracy"] == res["accuracy"]

    r = CliRunner().invoke(app, ["predict", str(run / "best"), str(checker_data / "real" / "s000.png"),
                                 str(tmp_path / "missing.png"), "--workers", "0", "--threads", "1"])
    assert r.exit_code == 1
    rows = list(csv.DictReader(io.StringIO(r.stdout)))  # CSV: path,fake_probability,decision,...,error
    assert rows[0]["path"] == str(checker_data / "real" / "s000.png") and 0 <= float(rows[0]["fake_probability"]) <= 1
    assert "file not found" in rows[1]["error"]


def test_per_generator_metrics_from_manifest(checker_data, tmp_path):
    """A manifest that names generators gets per-generator metrics."""
    rows = ["path,label,group,generator,split"]
    for i, p in enumerate(sorted((checker_data / "fake").glob("*.png"))):
        gen = "genA" if i % 2 else "genB"
        split = "train" if i < 32 else ("val" if i < 40 else "test")
        rows.append(f"{p},fake,{p.stem},{gen},{split}")
        rows.append(f"{checker_data / 'real' / p.name},real,{p.stem},,{split}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    train(TrainConfig(data=str(manifest), out=str(tmp_path / "run"), arch="standard", backbone="test_resnet",
                      epochs=1, batch_size=16, **FAST))
    res = evaluate(tmp_path / "run/best", manifest, workers=0, device="cpu", progress=False)
    assert res["split"] == "test" and res["n"] == 16
    assert set(res["per_generator"]) == {"genA", "genB"}
    assert res["per_generator"]["genA"]["n_fake"] == 4


def test_training_skips_bad_images_and_never_touches_user_files(tiny_tree, bad_images_dir, tmp_path):
    """Bad files inside the training data are reported with path and reason, skipped and
    counted; the run completes and every user file is byte-identical afterwards."""
    import shutil

    from conftest import sha256

    bad_dir, expected = bad_images_dir
    broken = [n for n, e in expected.items() if not e.ok]
    for i, name in enumerate(broken):  # spread them over both classes
        shutil.copy(bad_dir / name, tiny_tree / ("real" if i % 2 else "fake") / f"broken_{name}")
    odd = tiny_tree / "fake" / 'say "cheese", twice.png'  # a quote and a comma in the path
    odd.write_bytes(b"not an image, \"really\"")
    big = tiny_tree / "real" / "huge.png"  # over the (lowered) pixel limit
    from PIL import Image

    Image.new("RGB", (900, 900)).save(big)
    before = {p: sha256(p) for p in tiny_tree.rglob("*") if p.is_file()}

    torch.set_num_threads(2)  # the caller's count; the run uses threads=1 and gives it back
    try:
        summary = train(TrainConfig(data=str(tiny_tree), out=str(tmp_path / "run"), arch="glass",
                                    backbone="test_resnet", k=2, epochs=1, batch_size=4, max_pixels=700 * 700,
                                    split_fractions=(0.5, 0.5, 0.0), **FAST))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    after = {p: sha256(p) for p in tiny_tree.rglob("*") if p.is_file()}
    assert before == after  # nothing modified, nothing added inside the data
    reported = (tmp_path / "run" / "bad_images.csv").read_text()
    with open(tmp_path / "run" / "bad_images.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["path", "reason"] and all(len(r) == 2 for r in rows)
    reasons = dict(rows[1:])
    # Every bad file lands in train or val (no test split here), so every one is reported.
    assert summary["bad_images"] == len(broken) + 2 == len(reasons)
    for name in broken:
        assert f"broken_{name}" in reported
    assert "huge.png" in reported and "pixel limit" in reported
    assert "not a recognised image format" in reasons[str(odd)]
    assert (tmp_path / "run" / "best" / "model.safetensors").exists()
