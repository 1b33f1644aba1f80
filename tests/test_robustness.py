"""`glassdetect robustness`: checkpoints × degradation sweep, cache, seeds -> mean ± std, reports, plots."""
import json
import shutil

import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import make_checkpoint, sha256
from glassdetect.evaluation import evaluate as ev
from glassdetect.cli import app
from glassdetect.evaluation.robustness import checkpoint_id, group_checkpoints, markdown, robustness

FAST = dict(workers=0, threads=1, device="cpu", progress=False, batch_size=8)
SWEEP = "jpeg:q=50;blur:sigma=2"
MORE = "jpeg:q=50;jpeg:q=30;blur:sigma=2"


@pytest.fixture(scope="module")
def data(_tiny_tree_template, tmp_path_factory):
    dst = tmp_path_factory.mktemp("rob") / "data"
    shutil.copytree(_tiny_tree_template, dst)
    return dst


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("rob_ckpt")
    return [make_checkpoint(root / f"seed{s}" / "best", s, k=2, patch=64, global_size=64) for s in (0, 1)]


@pytest.fixture(scope="module")
def first(data, ckpts, tmp_path_factory):
    """One real sweep, shared: (result, out dir, image hashes before, evaluate calls made)."""
    before = {p: sha256(p) for p in sorted(data.rglob("*")) if p.is_file()}
    out = tmp_path_factory.mktemp("rob_out") / "out"
    calls = []
    real = ev.evaluate

    def counting(*a, **kw):
        calls.append(kw.get("degrade"))
        return real(*a, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(ev, "evaluate", counting)
    try:
        res = robustness(ckpts, data, out, sweep=SWEEP, split="all", **FAST)
    finally:
        mp.undo()
    return res, out, before, calls


@pytest.fixture
def count_calls(monkeypatch):
    calls = []
    real = ev.evaluate

    def counting(*a, **kw):
        calls.append(kw.get("degrade"))
        return real(*a, **kw)

    monkeypatch.setattr(ev, "evaluate", counting)
    return calls


def test_sweep_writes_every_model_and_point(first, ckpts, data):
    res, out, before, calls = first
    names = [p["name"] for p in res["points"]]
    assert len(names) == 3 and res["points"][0]["identity"] and res["points"][0]["family"] == "clean"
    assert len(calls) == 2 * 3  # every (checkpoint, point) once
    assert calls.count(None) == 2  # the clean point is a plain evaluation
    on_disk = json.loads((out / "robustness.json").read_text())
    assert on_disk["models"].keys() == {"glass"}  # default label: the arch; both checkpoints are seeds
    model = on_disk["models"]["glass"]
    assert model["seeds"] == 2 and model["checkpoints"] == [str(c) for c in ckpts]
    for name in names:
        point = model["points"][name]
        for metric in ("auc", "accuracy", "real_accuracy", "fake_accuracy"):
            assert point[metric]["n"] == 2 and len(point[metric]["values"]) == 2
            assert 0.0 <= point[metric]["mean"] <= 1.0 and point[metric]["std"] >= 0.0
        assert point["n"]["values"] == [24, 24]
        assert [r["points"][name]["auc"] for r in model["runs"]] == point["auc"]["values"]
    assert on_disk["split"] == "all" and on_disk["sweep"] == SWEEP
    # The degradations change the scores (they really were applied) ...
    runs = model["runs"][0]["points"]
    assert runs[names[1]] != runs[names[0]] or runs[names[2]] != runs[names[0]]
    # ... and the files were only read.
    assert {p: sha256(p) for p in sorted(data.rglob("*")) if p.is_file()} == before
    # One cache file per (checkpoint, point).
    assert len(list((out / "cache").glob("*/*.json"))) == 6
    assert {d.name for d in (out / "cache").iterdir()} == {checkpoint_id(c) for c in ckpts}
    cached = [json.loads(f.read_text())["result"]["degrade"] for f in (out / "cache").glob("*/*.json")]
    assert sorted(cached) == sorted(names * 2) and names[0] == "none"  # evaluate() saw each degradation


def test_clean_point_equals_plain_evaluate(first, ckpts, data):
    res, *_ = first
    clean = res["points"][0]["name"]
    plain = ev.evaluate(ckpts[1], data, split="all", workers=0, threads=1, device="cpu", progress=False)
    got = res["models"]["glass"]["runs"][1]["points"][clean]
    assert got["auc"] == plain["auc"] and got["accuracy"] == plain["accuracy"]


def test_markdown_and_plots(first):
    res, out, *_ = first
    md = (out / "robustness.md").read_text()
    assert md == markdown(res)
    lines = md.splitlines()
    for p in res["points"]:
        assert sum(line.startswith(f"| {p['label']} |") for line in lines) == 2  # AUC and accuracy tables
    assert "| degradation | glass |" in md and " ± " in md and "real " in md
    # A single strength per family: no line plot, one summary bar chart.
    assert res["plots"] == ["robustness_summary.png"]
    with Image.open(out / "robustness_summary.png") as im:
        assert im.format == "PNG" and im.size[0] > 100


def test_rerun_uses_cache_and_added_point_computes_only_it(first, ckpts, data, tmp_path, count_calls):
    res, out0, before, _ = first
    out = shutil.copytree(out0, tmp_path / "out")
    again = robustness(ckpts, data, out, sweep=SWEEP, split="all", **FAST)
    assert count_calls == []
    assert again["models"] == res["models"]
    more = robustness(ckpts, data, out, sweep=MORE, split="all", **FAST)
    assert len(count_calls) == 2 and len(set(count_calls)) == 1 and "30" in count_calls[0]
    assert len(more["points"]) == 4
    assert "robustness_jpeg.png" in more["plots"] and (out / "robustness_jpeg.png").is_file()
    with Image.open(out / "robustness_jpeg.png") as im:
        assert im.format == "PNG"
    old = {p["name"] for p in res["points"]}
    for name in old:  # the old points are the cached numbers
        assert more["models"]["glass"]["points"][name] == res["models"]["glass"]["points"][name]
    assert {p: sha256(p) for p in sorted(data.rglob("*")) if p.is_file()} == before


def test_cache_invalidated_by_changed_checkpoint_or_settings(first, ckpts, data, tmp_path, monkeypatch):
    """A recalibrated checkpoint (new config.json) gets a new id; other data settings recompute."""
    _, out0, *_ = first
    out = shutil.copytree(out0, tmp_path / "out")
    ckpt = shutil.copytree(ckpts[0], tmp_path / "ck" / "best")
    calls = []

    def fake(checkpoint, data, **kw):
        calls.append((str(checkpoint), kw["degrade"], kw["draws"]))
        return {"n": 2, "auc": 0.5, "accuracy": 0.5, "real_accuracy": 1.0, "fake_accuracy": 0.0}

    monkeypatch.setattr(ev, "evaluate", fake)
    robustness([ckpt], data, out, sweep=SWEEP, split="all", **FAST)
    assert len(calls) == 3  # a copy is another checkpoint (another path)
    robustness([ckpt], data, out, sweep=SWEEP, split="all", **FAST)
    assert len(calls) == 3
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model"]["threshold"] = 0.7
    (ckpt / "config.json").write_text(json.dumps(cfg))
    robustness([ckpt], data, out, sweep=SWEEP, split="all", **FAST)
    assert len(calls) == 6
    robustness([ckpt], data, out, sweep=SWEEP, split="all", draws=2, **FAST)
    assert len(calls) == 9 and calls[-1][2] == 2
    for f in (out / "cache" / checkpoint_id(ckpt)).glob("*.json"):
        f.write_text("{truncated")  # an unreadable cache file is recomputed
    res = robustness([ckpt], data, out, sweep=SWEEP, split="all", draws=2, **FAST)
    assert len(calls) == 12
    assert res["models"]["glass"]["runs"][0]["threshold"] == 0.7


def test_group_checkpoints(ckpts, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ckpts[0], run / "best")
    std = make_checkpoint(tmp_path / "std", 0, arch="standard", global_size=64)
    g = group_checkpoints([str(ckpts[0]), ckpts[1], run, std, ckpts[0]])
    assert list(g) == ["glass", "standard"]
    assert g["glass"] == [ckpts[0], ckpts[1], run / "best"] and g["standard"] == [std]
    pattern = str(ckpts[0].parent.parent / "seed*" / "best")
    g = group_checkpoints([f"mine={pattern}", f"base={std}"])
    assert dict(g) == {"mine": list(ckpts), "base": [std]}
    assert dict(group_checkpoints({"x": ckpts[1], "y": [ckpts[0]]})) == {"x": [ckpts[1]], "y": [ckpts[0]]}
    with pytest.raises(FileNotFoundError):
        group_checkpoints([tmp_path / "nothing"])
    with pytest.raises(FileNotFoundError, match="no checkpoint matches"):
        group_checkpoints([f"a={tmp_path}/none*"])


def test_default_split_needs_splits(ckpts, data, tmp_path, count_calls):
    with pytest.raises(ValueError, match="--split test"):
        robustness(ckpts, data, tmp_path / "out", sweep=SWEEP, **FAST)
    assert count_calls == []
    with pytest.raises(ValueError, match="q"):
        robustness(ckpts, data, tmp_path / "out", sweep="jpeg:q=500", split="all", **FAST)
    assert count_calls == []


def test_cli(first, ckpts, data, tmp_path, count_calls):
    _, out0, before, _ = first
    out = shutil.copytree(out0, tmp_path / "out")
    r = CliRunner().invoke(app, ["robustness", f"a={ckpts[0]}", f"b={ckpts[1]}", "--data", str(data), "--out", str(out),
                                 "--sweep", SWEEP, "--split", "all", "--workers", "0", "--threads", "1",
                                 "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output
    assert count_calls == []  # the cache is per checkpoint, whatever its label
    res = json.loads((out / "robustness.json").read_text())
    assert list(res["models"]) == ["a", "b"] and res["models"]["a"]["seeds"] == 1
    assert "| degradation | a | b |" in (out / "robustness.md").read_text()
    assert "| degradation | a | b |" in r.stdout
    bad = CliRunner().invoke(app, ["robustness", str(ckpts[0]), "--data", str(data), "--out", str(tmp_path / "o2"),
                                   "--sweep", SWEEP, "--workers", "0", "--device", "cpu", "--quiet"])
    assert bad.exit_code == 2 and "split" in bad.output


def test_identity_points_reuse_clean_and_curves(ckpts, data, tmp_path, monkeypatch):
    calls = []

    def fake(checkpoint, data, **kw):
        calls.append(kw["degrade"])
        auc = {None: 0.9}.get(kw["degrade"], 0.6)
        return {"n": 4, "auc": auc, "accuracy": 0.5, "real_accuracy": 0.5, "fake_accuracy": 0.5}

    monkeypatch.setattr(ev, "evaluate", fake)
    sweep = "blur:sigma=0;blur:sigma=1;blur:sigma=2;resize:long=300;resize:long=200;blur:sigma=2+jpeg:q=50;social"
    res = robustness({"m": ckpts[0]}, data, tmp_path, sweep=sweep, split="all", **FAST)
    assert None in calls and "blur:sigma=0" not in calls and len(calls) == 7  # σ=0 is the clean evaluation
    pts = {p["label"]: p for p in res["points"]}
    assert pts["blur σ0"]["identity"] and res["models"]["m"]["points"]["blur:sigma=0"]["auc"]["mean"] == 0.9
    assert pts["blur σ1"]["curve"] == "blur" and pts["resize ≤300"]["curve"] == "resize_long"
    assert "curve" not in pts["social"] and "curve" not in pts["blur σ2 + jpeg q50"]
    assert res["plots"] == ["robustness_blur.png", "robustness_resize_long.png", "robustness_summary.png"]
    assert all((tmp_path / f).is_file() for f in res["plots"])
    md = markdown(res)
    assert "| blur σ1 | 0.600 (−0.300) |" in md and "| clean | 0.900 |" in md
