"""Degradations applied before the views: build_views / ViewDataset hooks, training augmentation
(--augment) and degraded evaluation (--degrade)."""
from __future__ import annotations

import csv
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import make_checkpoint, make_image
from glassdetect.views import build as V
from glassdetect.cli import app
from glassdetect.data.splits import Sample
from glassdetect.pipeline import ViewDataset
from glassdetect.views.degrade import AUGMENT_PRESETS, parse
from glassdetect.evaluation.evaluate import evaluate
from glassdetect.views.sampling import eval_degrade_rng
from glassdetect.training.train import TrainConfig, train
from glassdetect.views.build import ViewSpec, build_views, content_id, decode, resize_global

from synth import assert_interrupted_run_resumes_exactly, make_checker_tree, metrics_history

GLASS = ViewSpec(k=3, patch=64, global_size=32)
BASE = ViewSpec(k=3, patch=64, global_size=32, need_crops=False)
FAST = dict(pretrained=False, workers=0, threads=1, progress=False, device="cpu")


def _same(a: V.Views, b: V.Views) -> bool:
    return (np.array_equal(a.global_view, b.global_view) and np.array_equal(a.crops, b.crops) and a.boxes == b.boxes
            and a.size == b.size)


@pytest.fixture
def jpg(tmp_path):
    path = tmp_path / "a.jpg"
    make_image(path, 300, 420, seed=3)
    return path


def test_no_or_identity_degradation_leaves_views_unchanged(jpg):
    for spec in (GLASS, BASE):
        ref = build_views(jpg, spec)
        for d in (None, parse(""), parse("blur:sigma=0"), parse("jpeg:q=50,p=0")):
            assert _same(build_views(jpg, spec, degrade=d, degrade_rng=np.random.default_rng(1)), ref)


def test_degradation_comes_before_the_views(jpg):
    """resize:f=0.5 shrinks the image the crops are sampled from; the views are cut from the degraded pixels."""
    d = parse("resize:f=0.5")
    full = decode(jpg.read_bytes()).pixels
    small = d(full, np.random.default_rng(0))
    assert small.shape == (150, 210, 3)
    v = build_views(jpg, GLASS, degrade=d)
    assert v.size == (150, 210)
    assert all(0 <= t <= 150 - 64 and 0 <= l <= 210 - 64 for t, l in v.boxes)
    assert np.array_equal(v.crops, V.cut_crops(small, v.boxes, 64))
    assert np.array_equal(v.global_view, resize_global(small, 32))
    # the baseline decodes in full too (no reduced-scale draft): the same degraded pixels as GLASS
    b = build_views(jpg, BASE, degrade=d)
    assert b.size == (150, 210) and np.array_equal(b.global_view, v.global_view) and b.crops.shape[0] == 0


def test_degradation_sees_the_exif_upright_image(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 200×300, displayed 300×200
    path = tmp_path / "rot.jpg"
    make_image(path, 200, 300, seed=4, exif=exif)
    d = parse("resize:long=150")
    v = build_views(path, GLASS, degrade=d)
    assert v.size == (150, 100)
    upright = decode(path.read_bytes()).pixels
    assert np.array_equal(v.global_view, resize_global(d(upright, np.random.default_rng(0)), 32))


def test_evaluation_degradation_is_a_function_of_content_name_and_draw(jpg, tmp_path):
    d = parse("noise:sigma=2-6")
    data = jpg.read_bytes()
    copy = tmp_path / "renamed.jpeg"
    copy.write_bytes(data)
    a = build_views(jpg, GLASS, degrade=d)
    assert _same(a, build_views(copy, GLASS, degrade=d))  # the file name plays no part
    assert _same(a, build_views(data, GLASS, degrade=d))
    rng = eval_degrade_rng(content_id(data), d.name, 0)
    assert np.array_equal(a.global_view, resize_global(d(decode(data).pixels, rng), 32))
    assert a.boxes == build_views(jpg, GLASS).boxes  # the crop stream does not depend on the degradation
    other = build_views(jpg, GLASS, degrade=d, draw=1)
    assert not np.array_equal(a.global_view, other.global_view)
    assert not np.array_equal(a.global_view, build_views(jpg, GLASS, degrade=parse("noise:sigma=2-6.5")).global_view)


def test_failing_degradation_is_a_bad_image_not_a_crash(jpg, monkeypatch):
    import glassdetect.views.imageops as D

    monkeypatch.setattr(D, "WEBP_MAX_SIDE", 100)
    with pytest.raises(V.ImageError, match="cannot apply degradation webp:q=80"):
        build_views(jpg, GLASS, degrade=parse("webp:q=80"))


def _samples(tmp_path, n=3):
    out = []
    for i in range(n):
        p = tmp_path / f"s{i}.png"
        make_image(p, 180 + 20 * i, 260, seed=10 + i)
        out.append(Sample(str(p), i % 2, f"g{i}", p.name))
    return out


def test_training_dataset_degradation_per_seed_epoch_index(tmp_path):
    samples = _samples(tmp_path)
    ds = ViewDataset(samples, GLASS, train=True, seed=5, degrade="resize:f=0.5-0.9+noise:sigma=1-3")
    assert ds.degrade == parse("resize:f=0.5-0.9+noise:sigma=1-3")
    item = lambda d, i: (d[i]["global"].numpy().tobytes(), d[i]["crops"].numpy().tobytes(), d[i]["boxes"].tolist())
    again = ViewDataset(samples, GLASS, train=True, seed=5, degrade=parse("resize:f=0.5-0.9+noise:sigma=1-3"))
    for i in range(len(samples)):
        assert item(ds, i) == item(again, i)  # same (seed, epoch, index): identical
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers
    assert item(clone, 1) == item(ds, 1)
    first = [item(ds, i) for i in range(len(samples))]
    ds.set_epoch(1)
    second = [item(ds, i) for i in range(len(samples))]
    assert all(a[0] != b[0] for a, b in zip(first, second))  # fresh degradation draws every epoch
    # the degradation is applied before the crops: their boxes lie inside the shrunken image
    for i, s in enumerate(samples):
        h, w = np.asarray(Image.open(s.path)).shape[:2]
        boxes = ds[i]["boxes"].tolist()
        assert all(t + 64 <= int(h * 0.9 + 0.5) and l + 64 <= int(w * 0.9 + 0.5) for t, l in boxes), (boxes, h, w)
    # the degradation stream is independent of the crop stream: a size-keeping degradation keeps the boxes
    plain = ViewDataset(samples, GLASS, train=True, seed=5)
    noisy = ViewDataset(samples, GLASS, train=True, seed=5, degrade="noise:sigma=3")
    for i in range(len(samples)):
        assert plain[i]["boxes"].tolist() == noisy[i]["boxes"].tolist()
        assert not torch.equal(plain[i]["crops"], noisy[i]["crops"])
    assert ViewDataset(samples, GLASS, degrade="none").degrade is None
    with pytest.raises(ValueError, match="'jpg'"):
        ViewDataset(samples, GLASS, degrade="jpg:q=50")


@pytest.fixture(scope="module")
def small_checker(tmp_path_factory):
    return make_checker_tree(tmp_path_factory.mktemp("aug_checker"), n_groups=10, size=256)


def test_augmented_training_resumes_exactly(small_checker, tmp_path, monkeypatch):
    """--augment standard: degradations reach every training image (never validation), and a run
    stopped after epoch 1 and resumed equals an uninterrupted one."""
    calls = []
    real = V._degraded_views
    monkeypatch.setattr(V, "_degraded_views", lambda *a: calls.append((a[6].name, a[7] is not None)) or real(*a))
    run = tmp_path / "full"
    r = CliRunner().invoke(app, ["train", "--data", str(small_checker), "--out", str(run), "--arch", "glass",
                                 "--backbone", "test_resnet", "--no-pretrained", "-k", "2", "--epochs", "2",
                                 "--batch-size", "4", "--lr-head", "1e-3", "--lr-global", "1e-3", "--lr-local", "1e-3",
                                 "--seed", "3", "--workers", "0", "--threads", "1", "--device", "cpu", "--quiet",
                                 "--augment", "standard"])
    assert r.exit_code == 0, r.output
    summary = json.loads((run / "summary.json").read_text())
    standard = parse(AUGMENT_PRESETS["standard"]).name
    assert summary["augment"] == standard
    assert json.loads((run / "last" / "config.json").read_text())["train"]["augment"] == "standard"
    assert len(calls) == 2 * summary["n_train"] and set(calls) == {(standard, True)}  # train only, train RNG

    common = dict(data=str(small_checker), arch="glass", backbone="test_resnet", k=2, epochs=2, batch_size=4,
                  lr_global=1e-3, lr_local=1e-3, lr_head=1e-3, seed=3, augment="standard", **FAST)
    assert_interrupted_run_resumes_exactly(run, tmp_path / "cut", **common)
    # the augmentation changes what is learnt
    train(TrainConfig(out=str(tmp_path / "plain"), **{**common, "augment": "none", "epochs": 1}))
    assert metrics_history(tmp_path / "plain")[0][0] != metrics_history(run)[0][0]


def test_bad_augment_spec_fails_before_training(small_checker, tmp_path):
    r = CliRunner().invoke(app, ["train", "--data", str(small_checker), "--out", str(tmp_path / "r"), "--backbone",
                                 "test_resnet", "--no-pretrained", "--augment", "blur:sigma=1+jpeg:quality=50"])
    assert r.exit_code == 2 and "'quality'" in r.output, r.output
    assert not (tmp_path / "r").exists()


def _probs(path):
    with open(path.with_suffix(".predictions.csv")) as fh:
        return [float(row["fake_probability"]) for row in csv.DictReader(fh)]


def test_degraded_evaluation_differs_from_clean_and_is_deterministic(small_checker, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", k=2)
    kw = dict(split="all", workers=0, device="cpu", threads=1, progress=False, batch_size=8)
    clean = evaluate(ckpt, small_checker, out=tmp_path / "clean.json", **kw)
    jpeg = evaluate(ckpt, small_checker, out=tmp_path / "jpeg.json", degrade="jpeg:q=50", **kw)
    assert clean["degrade"] == "none" and jpeg["degrade"] == "jpeg:q=50" and jpeg["n"] == clean["n"] == 20
    assert _probs(tmp_path / "clean.json") != _probs(tmp_path / "jpeg.json")
    out = tmp_path / "again.json"
    r = CliRunner().invoke(app, ["evaluate", str(ckpt), "--data", str(small_checker), "--split", "all", "--out",
                                 str(out), "--workers", "0", "--threads", "1", "--device", "cpu", "--batch-size", "8",
                                 "--degrade", "jpeg:q=050", "--quiet"])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["degrade"] == "jpeg:q=50"
    assert _probs(out) == _probs(tmp_path / "jpeg.json")
    r = CliRunner().invoke(app, ["evaluate", str(ckpt), "--data", str(small_checker), "--degrade", "jpeg:q=500"])
    assert r.exit_code == 2 and "q='500'" in r.output, r.output
