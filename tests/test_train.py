import csv
import io
import json

import pytest
import torch
from typer.testing import CliRunner

from glassdetect.cli import app
from glassdetect.evaluation.evaluate import evaluate
from glassdetect.training.train import TrainConfig, _split_samples, train

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


def test_evaluate_reuses_the_last_checkpoints_model_until_its_files_change(checker_data, tmp_path, monkeypatch):
    """A sweep evaluates one checkpoint at many points: one load (its CPU graphs built once); a rewritten
    config (calibration) or another checkpoint loads afresh."""
    import glassdetect.evaluation.evaluate as ev

    train(TrainConfig(data=str(checker_data), out=str(tmp_path / "run"), arch="standard", backbone="test_resnet",
                      epochs=1, batch_size=16, **FAST))
    loads = []
    real_load = ev.load_checkpoint
    monkeypatch.setattr(ev, "load_checkpoint", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    kw = dict(workers=0, device="cpu", progress=False)
    clean = evaluate(tmp_path / "run/best", checker_data, **kw)
    jpeg = evaluate(tmp_path / "run/best", checker_data, degrade="jpeg:q=75", **kw)
    again = evaluate(tmp_path / "run/best", checker_data, **kw)
    assert len(loads) == 1 and again["auc"] == clean["auc"] and jpeg["degrade"] == "jpeg:q=75"
    cfg = tmp_path / "run/best/config.json"
    meta = json.loads(cfg.read_text())
    meta["model"]["threshold"] = 0.9  # what calibration does to a checkpoint
    cfg.write_text(json.dumps(meta, indent=2))
    moved = evaluate(tmp_path / "run/best", checker_data, **kw)
    assert len(loads) == 2 and moved["threshold"] == 0.9
    evaluate(tmp_path / "run/last", checker_data, **kw)
    assert len(loads) == 3


def test_calibrate_then_evaluate_loads_the_checkpoint_once(checker_data, tmp_path, monkeypatch):
    """The demo calibrates each checkpoint and then evaluates it: one load (one set of CPU graphs),
    and the evaluation sees the fitted temperature and threshold exactly as a fresh load would."""
    import glassdetect.evaluation.evaluate as ev
    import glassdetect.models as models
    from glassdetect.evaluation.calibrate import calibrate

    train(TrainConfig(data=str(checker_data), out=str(tmp_path / "run"), arch="glass", backbone="test_resnet",
                      k=2, patch=64, epochs=1, batch_size=16, **FAST))
    loads = []
    real_load = ev.load_checkpoint
    counting = lambda *a, **k: loads.append(a[0]) or real_load(*a, **k)  # noqa: E731
    monkeypatch.setattr(ev, "load_checkpoint", counting)
    monkeypatch.setattr(models, "load_checkpoint", counting)  # any other way in counts too
    kw = dict(workers=0, device="cpu", progress=False)
    report = calibrate(tmp_path / "run/best", checker_data, "val", target_fpr=0.1, **kw)
    shared = evaluate(tmp_path / "run/best", checker_data, **kw)
    assert len(loads) == 1
    assert shared["threshold"] == report["threshold"] and report["temperature_after"] != 1.0
    ev.clear_cached()
    fresh = evaluate(tmp_path / "run/best", checker_data, **kw)
    assert len(loads) == 2
    for key in ("auc", "accuracy", "threshold", "ece", "nll"):
        assert shared[key] == pytest.approx(fresh[key], abs=1e-6), key
    cfg = tmp_path / "run/best/config.json"  # a change beyond the decision fields: the cache lets go
    meta = json.loads(cfg.read_text())
    meta["model"]["k"] = 3
    cfg.write_text(json.dumps(meta, indent=2))
    ev.refresh_cached(tmp_path / "run/best")
    assert not ev._LAST


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


def _split_of(run_or_samples) -> dict[str, set[str]]:
    rows = run_or_samples
    if not isinstance(rows, list):
        with open(rows / "split.csv", newline="", encoding="utf-8") as fh:
            rows = [(r["path"], r["split"], r["group"]) for r in csv.DictReader(fh)]
    else:
        rows = [(s.path, s.split, s.group) for s in rows]
    out: dict[str, set[str]] = {}
    for path, split, _ in rows:
        out.setdefault(split, set()).add(path)
    return out


def test_split_is_independent_of_the_training_seed(checker_data, tmp_path):
    """Two training seeds, one split seed: the same test set (and the same train/val split).
    Another split seed moves it. A config from before split_seed keeps splitting with its seed."""
    split = lambda **kw: _split_of(_split_samples(TrainConfig(data=str(checker_data), **kw), tmp_path))  # noqa: E731
    a, b = split(seed=1), split(seed=2)
    assert a == b and a["test"]
    assert split(seed=1, split_seed=1)["test"] != a["test"]
    assert _split_of(tmp_path) == split(seed=1, split_seed=1)  # the split is saved with the run
    assert TrainConfig.from_dict({"seed": 3}).split_seed == 3
    assert TrainConfig.from_dict({"seed": 3, "split_seed": 0}).split_seed == 0
    assert TrainConfig().split_seed == TrainConfig(seed=5).split_seed == 0


def test_cli_train_on_train_test_tree_carves_val(tmp_path):
    """Kaggle's layout ROOT/{train,test}/{real,fake}: val is carved out of train (grouped, stratified,
    by the split seed, train:val as in --split 0.7,0.15,...); test stays exactly the test folder."""
    root = make_checker_tree(tmp_path / "data" / "train", n_groups=12, size=256)
    for cls in ("real", "fake"):
        (root / ".." / "test" / cls).mkdir(parents=True)
        for i in (9, 10, 11):
            (root / cls / f"s{i:03d}.png").rename(root / ".." / "test" / cls / f"s{i:03d}.png")
    data = tmp_path / "data"
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--data", str(data), "--arch", "standard", "--backbone", "test_resnet",
                                 "--no-pretrained", "--epochs", "1", "--batch-size", "8", "--out", str(run),
                                 "--workers", "0", "--threads", "1", "--split-seed", "5", "--quiet"])
    assert r.exit_code == 0, r.output
    split = _split_of(run)
    assert split["test"] == {str(p.resolve()) for p in (data / "test").rglob("*.png")}
    train_folder = {str(p.resolve()) for p in (data / "train").rglob("*.png")}
    assert split["val"] and split["train"] and split["val"] | split["train"] == train_folder
    stems = lambda paths: {p.rsplit("/", 1)[-1] for p in paths}  # noqa: E731
    assert not stems(split["val"]) & stems(split["train"])  # a source pair never straddles train and val
    assert len(split["val"]) == 4  # 2 of the 9 training pairs: 15/85 of them, rounded to whole groups
    assert {p.split("/")[-2] for p in split["val"]} == {"real", "fake"}  # both classes
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_val"] == 4 and summary["n_test"] == 6
    used = json.loads((run / "best" / "config.json").read_text())["train"]
    assert used["split_seed"] == 5 and used["seed"] == 0
    # evaluate finds the carved validation split through the run's split.csv
    from glassdetect.evaluation.evaluate import evaluate

    res = evaluate(run / "best", data, split="val", workers=0, threads=1, progress=False)
    assert res["n"] == 4 and res["split"] == "val"


def test_cli_train_config_without_split_seed_keeps_its_split(tmp_path):
    """A config written before split_seed existed (e.g. an old best_config.json) drew its split with
    its seed: `train --config` keeps that split; --split-seed on the command line wins."""
    data = make_checker_tree(tmp_path / "data", n_groups=8, size=256)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"arch": "standard", "backbone": "test_resnet", "pretrained": False, "epochs": 1,
                               "batch_size": 8, "seed": 3}))
    expected = {s: _split_of(_split_samples(TrainConfig(data=str(data), split_seed=s), tmp_path)) for s in (0, 3)}
    assert expected[0]["test"] != expected[3]["test"]
    for extra, split_seed in (([], 3), (["--split-seed", "0"], 0)):
        run = tmp_path / f"run{split_seed}"
        r = CliRunner().invoke(app, ["train", "--config", str(old), "--data", str(data), "--out", str(run),
                                     "--workers", "0", "--threads", "1", "--device", "cpu", "--quiet", *extra])
        assert r.exit_code == 0, r.output
        assert _split_of(run) == expected[split_seed]
        assert json.loads((run / "best" / "config.json").read_text())["train"]["split_seed"] == split_seed


def _tiny_run(checker_data, tmp_path, **over):
    """A built (not trained) GLASS run on the checker data and one training batch of it."""
    from glassdetect.pipeline import collate
    from glassdetect.training.distributed import DistInfo
    from glassdetect.training.train import build_run

    cfg = TrainConfig(data=str(checker_data), out=str(tmp_path), backbone="test_resnet", k=2, batch_size=4,
                      dropout=0.0, **{**FAST, **over})
    tmp_path.mkdir(parents=True, exist_ok=True)
    samples = _split_samples(cfg, tmp_path)
    train_s = [s for s in samples if s.split == "train"]
    torch.manual_seed(0)
    run, _ = build_run(cfg, DistInfo(), torch.device("cpu"), tmp_path, train_s, train_s[:2], None)
    batch = collate([run.data.train_ds[i] for i in range(4)])
    return run, batch


def _head_grad(run, batch) -> tuple[float, torch.Tensor]:
    from glassdetect.training.train import _forward_loss

    run.model.train()
    run.model.zero_grad(set_to_none=True)
    loss, _ = _forward_loss(run, batch, batch["label"])
    loss.backward()
    return float(loss.detach()), run.model.head[-1].weight.grad.clone()


def test_crop_loss_adds_the_mean_per_crop_cross_entropy(checker_data, tmp_path):
    """crop_loss 0 is the image loss alone (today's objective); W > 0 adds W × the mean cross-entropy
    of each crop's own logits against its image's label, and changes the gradients."""
    run, batch = _tiny_run(checker_data, tmp_path / "a")
    y = batch["label"]
    with torch.no_grad():
        logits, _ = run.model(batch["global_view"], batch["crops"])
        _, _, crop_logits = run.model.crop_scores(batch["global_view"], batch["crops"])
    image_ce = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1)
    crop_ce = torch.nn.functional.cross_entropy(crop_logits.flatten(0, 1), y.repeat_interleave(2), label_smoothing=0.1)
    loss0, grad0 = _head_grad(run, batch)
    assert loss0 == pytest.approx(float(image_ce), rel=1e-5)
    run.cfg.crop_loss = 0.5
    loss1, grad1 = _head_grad(run, batch)
    assert loss1 == pytest.approx(float(image_ce + 0.5 * crop_ce), rel=1e-5)
    assert not torch.allclose(grad0, grad1)


def test_crop_loss_saved_with_the_run_and_refused_for_the_baseline(checker_data, tmp_path):
    common = dict(data=str(checker_data), backbone="test_resnet", k=2, epochs=1, batch_size=16, **FAST)
    train(TrainConfig(out=str(tmp_path / "glass"), crop_loss=0.25, **common))
    assert json.loads((tmp_path / "glass/last/config.json").read_text())["train"]["crop_loss"] == 0.25
    with pytest.raises(ValueError, match="crop_loss.*standard"):
        train(TrainConfig(out=str(tmp_path / "std"), arch="standard", crop_loss=0.25, **common))
    r = CliRunner().invoke(app, ["train", "--data", str(checker_data), "--out", str(tmp_path / "cli"), "--arch",
                                 "standard", "--backbone", "test_resnet", "--no-pretrained", "--crop-loss", "0.5",
                                 "--workers", "0", "--threads", "1", "--quiet"])
    assert r.exit_code != 0 and "crop_loss" in r.output


def test_train_hands_freed_memory_back_before_and_after_the_run(checker_data, tmp_path, monkeypatch):
    """A process that trains one model after another (demo, tune, final) must not carry the last
    run's heap into the next: train() releases before building and after the run's frame is gone,
    also when the run fails."""
    import gc
    import weakref

    import glassdetect.training.train as train_mod

    calls: list[int] = []  # live GLASS models at each release
    models: list[weakref.ref] = []
    real_create = train_mod.create_model

    def create_model(*a, **kw):
        model = real_create(*a, **kw)
        models.append(weakref.ref(model))
        return model

    def release() -> bool:
        gc.collect()
        calls.append(sum(ref() is not None for ref in models))
        return True

    monkeypatch.setattr(train_mod, "create_model", create_model)
    monkeypatch.setattr(train_mod, "release_memory", release)
    common = dict(data=str(checker_data), backbone="test_resnet", k=2, epochs=1, batch_size=16, **FAST)
    train(TrainConfig(out=str(tmp_path / "ok"), **common))
    assert calls == [0, 0] and models  # before the model exists, and after it is freed
    with pytest.raises(ValueError, match="crop_loss"):
        train(TrainConfig(out=str(tmp_path / "bad"), arch="standard", crop_loss=0.5, **common))
    assert len(calls) == 4
