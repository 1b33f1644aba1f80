"""Hyperparameter search: spaces, SQLite resume, failed and pruned trials, the hand-off to
``train --config``, and two worker processes sharing one study on a real PostgreSQL server."""
from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import fields
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("yaml")

import torch  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import glassdetect.studies.tune as tune_mod  # noqa: E402
from glassdetect.cli import app  # noqa: E402
from glassdetect.training.train import TrainConfig  # noqa: E402
from glassdetect.studies.tune import SpaceError, load_space, to_train_fields, tune  # noqa: E402
from synth import make_checker_tree  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Tiny trials: K and the batch pinned, learning rates / decay / dropout searched.
SPACE_YAML = """\
space:
  k: 2
  batch_size: 4
  lr_local: null
  wd_local: null
  lr_global: {type: float, low: 1e-4, high: 1e-2, log: true}
"""
FAST = ["--backbone", "test_resnet", "--no-pretrained", "--epochs", "1", "--workers", "0", "--threads", "1",
        "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return make_checker_tree(tmp_path_factory.mktemp("tune_data"), n_groups=8, size=256)


@pytest.fixture(scope="module")
def space_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("space") / "space.yaml"
    p.write_text(SPACE_YAML)
    return p


def _study(out: Path, name: str):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def test_default_spaces_and_yaml_overrides(tmp_path):
    glass = load_space("glass")
    assert glass["batch_size"]["choices"] == [16, 32, 64]
    assert glass["dropout"]["choices"] == [0.0, 0.1, 0.2, 0.3]
    assert glass["k"]["choices"] == [2, 4, 6, 8, 10]
    assert (glass["lr_global"]["low"], glass["lr_global"]["high"], glass["lr_global"]["log"]) == (1e-6, 1e-4, True)
    assert (glass["lr_head"]["low"], glass["lr_head"]["high"]) == (5e-6, 1e-3)
    assert (glass["wd_local"]["low"], glass["wd_local"]["high"]) == (1e-7, 1e-3)
    assert glass["wd_head"] == 0.0  # attention + classifier without weight decay, as in the reference
    assert "lr_local" not in load_space("glass", shared_backbone=True)
    std = load_space("standard")
    assert set(std) == {"batch_size", "dropout", "lr", "weight_decay"}
    assert std["batch_size"]["choices"] == [32, 64, 128]  # the reference's baseline batches
    assert (std["lr"]["low"], std["lr"]["high"], std["lr"]["log"]) == (1e-6, 1e-4, True)
    assert to_train_fields({"lr": 3e-5, "weight_decay": 1e-6, "dropout": 0.1}) == {
        "lr_global": 3e-5, "lr_head": 3e-5, "wd_global": 1e-6, "wd_head": 1e-6, "dropout": 0.1}
    assert set(to_train_fields(std)) <= {f.name for f in fields(TrainConfig)}

    p = tmp_path / "s.yaml"
    p.write_text("k: {type: categorical, choices: [2, 4]}\nlr_head: {type: float, low: 1e-5, high: 1e-3, log: true}\n"
                 "epochs: {type: int, low: 2, high: 6, step: 2}\ndropout: 0.1\nlr_local: null\n")
    s = load_space("glass", p)
    assert s["k"] == {"type": "categorical", "choices": [2, 4]}
    assert s["lr_head"]["low"] == 1e-5 and isinstance(s["lr_head"]["low"], float)  # YAML's "1e-5" string
    assert s["epochs"] == {"type": "int", "low": 2, "high": 6, "log": False, "step": 2}
    assert s["dropout"] == 0.1 and "lr_local" not in s
    for bad in ("nonsense: {type: float, low: 0, high: 1}", "data: x", "k: {type: categorical, choices: []}",
                "lr_head: {type: float, low: 0, high: 1, log: true}", "k: {type: normal}"):
        p.write_text(bad)
        with pytest.raises(SpaceError):
            load_space("glass", p)


def _fake_train(accuracy_of):
    """A stand-in for train(): reports a made-up validation accuracy per epoch, no model."""

    def fake(cfg, on_epoch_end=None):
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        hist = []
        for epoch in range(cfg.epochs):
            rec = {"epoch": epoch + 1, "val_accuracy": accuracy_of(cfg, epoch)}
            hist.append(rec)
            if on_epoch_end is not None:
                on_epoch_end(epoch, rec)
        return {"best_val_accuracy": max(h["val_accuracy"] for h in hist), "history": hist}

    return fake


def test_hyperband_prunes_and_sqlite_study_resumes(small_data, tmp_path, monkeypatch):
    """Pruned and completed trials are kept when the command is run again; new trials are added."""
    # accuracy grows with the head's learning rate, so the pruner has something to rank
    monkeypatch.setattr(tune_mod, "train", _fake_train(lambda cfg, e: min(1.0, cfg.lr_head * 1000) * (e + 1) / cfg.epochs))
    base = TrainConfig(data=str(small_data), arch="glass", epochs=9, seed=1, progress=False)
    out = tmp_path / "study"
    first = tune(base, out, trials=12, study_name="s")
    states = first["trials"]
    assert first["n_trials"] == 12 and states["complete"] + states["pruned"] == 12
    assert states["pruned"] >= 1, states
    pruned = [t for t in _study(out, "s").trials if t.state.name == "PRUNED"]
    assert all(t.user_attrs["pruned_at_epoch"] < 9 for t in pruned)
    assert all(max(t.intermediate_values) == t.user_attrs["pruned_at_epoch"] for t in pruned)

    second = tune(base, out, trials=3, study_name="s")
    assert second["n_trials"] == 15
    trials = _study(out, "s").trials
    assert [t.number for t in trials] == list(range(15))
    # the first run's trials are untouched, and the re-run did not repeat their parameters
    assert sum(t.state.name == "PRUNED" for t in trials[:12]) == states["pruned"]
    assert all(t.params not in [u.params for u in trials[:12]] for t in trials[12:])
    assert (out / "trials.csv").read_text().count("\n") == 16


def test_failed_trial_is_recorded_and_study_goes_on(small_data, tmp_path, monkeypatch):
    real = tune_mod.train
    calls = []

    def flaky(cfg, on_epoch_end=None):
        calls.append(cfg.out)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real(cfg, on_epoch_end)

    monkeypatch.setattr(tune_mod, "train", flaky)
    base = TrainConfig(data=str(small_data), backbone="test_resnet", pretrained=False, epochs=1, k=2, batch_size=4,
                       workers=0, threads=1, device="cpu", progress=False)
    out = tmp_path / "study"
    res = tune(base, out, trials=2, study_name="f", space={"lr_head": {"type": "float", "low": 1e-4, "high": 1e-2,
                                                                      "log": True}})
    assert res["trials"]["fail"] == 1 and res["trials"]["complete"] == 1
    failed, done = _study(out, "f").trials
    assert failed.state.name == "FAIL" and "OutOfMemoryError: CUDA out of memory" in failed.user_attrs["fail_reason"]
    assert done.state.name == "COMPLETE" and Path(done.user_attrs["run_dir"]).name == "0001"
    assert (Path(done.user_attrs["run_dir"]) / "best" / "model.safetensors").is_file()
    assert "OutOfMemoryError" in (out / "trials.csv").read_text()


def test_cli_tune_then_train_with_best_config(small_data, space_file, tmp_path):
    """tune writes best_config.json; `train --config` takes it (all keys are TrainConfig fields)."""
    out = tmp_path / "tune"
    r = CliRunner().invoke(app, ["tune", "--data", str(small_data), "--out", str(out), "--arch", "glass",
                                 "--trials", "2", "--space", str(space_file), "--seed", "3", *FAST])
    assert r.exit_code == 0, r.output
    assert (out / "study.db").is_file()
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0000", "0001"]
    best = json.loads((out / "best.json").read_text())
    cfg = json.loads((out / "best_config.json").read_text())
    assert set(cfg) <= {f.name for f in fields(TrainConfig)}
    assert not {"data", "out", "resume", "device", "workers", "threads"} & set(cfg)
    assert cfg["k"] == 2 and cfg["batch_size"] == 4 and cfg["backbone"] == "test_resnet" and cfg["seed"] == 3
    assert cfg["lr_global"] == best["best"]["params"]["lr_global"]
    assert cfg["lr_head"] == best["best"]["params"]["lr_head"]

    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--config", str(out / "best_config.json"), "--data", str(small_data),
                                 "--out", str(run), "--workers", "0", "--threads", "1", "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output
    used = json.loads((run / "best" / "config.json").read_text())["train"]
    for key in ("lr_global", "lr_head", "wd_global", "wd_head", "dropout", "k", "batch_size", "pretrained", "seed"):
        assert used[key] == cfg[key], key
    # the same split as the trials (same seed): the hand-off trains on what was tuned on
    assert (run / "split.csv").read_text() == (out / "trials" / "0000" / "split.csv").read_text()


def _record_pruner(monkeypatch) -> list[tuple[int, int, int]]:
    """Replace Optuna's HyperbandPruner by one that records (min_resource, max_resource, reduction_factor)."""
    seen: list[tuple[int, int, int]] = []

    class Recording(optuna.pruners.HyperbandPruner):
        def __init__(self, min_resource=1, max_resource="auto", reduction_factor=3, **kw):
            seen.append((min_resource, max_resource, reduction_factor))
            super().__init__(min_resource=min_resource, max_resource=max_resource, reduction_factor=reduction_factor,
                             **kw)

    monkeypatch.setattr(optuna.pruners, "HyperbandPruner", Recording)
    return seen


def test_cli_hyperband_defaults_are_the_papers(small_data, tmp_path, monkeypatch):
    """No Hyperband options: the paper's 5 / 25 / 3 with its 25 epochs per trial; explicit options
    reach the pruner; a min_resource above the epochs is refused, naming both."""
    seen = _record_pruner(monkeypatch)
    monkeypatch.setattr(tune_mod, "train", _fake_train(lambda cfg, e: 0.5))
    base = ["tune", "--data", str(small_data), "--trials", "1", "--quiet"]
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert seen == [(5, 25, 3)]
    best = json.loads((tmp_path / "a" / "best.json").read_text())
    assert best["hyperband"] == {"min_resource": 5, "max_resource": 25, "reduction_factor": 3}
    assert _study(tmp_path / "a", "glassdetect-glass-resnet50").trials[0].user_attrs["epochs_done"] == 25

    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "b"), "--epochs", "12", "--min-resource", "2",
                                 "--max-resource", "10", "--reduction-factor", "2"])
    assert r.exit_code == 0, r.output
    assert seen[-1] == (2, 10, 2)
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "c"), "--epochs", "3"])
    assert r.exit_code == 0 and seen[-1] == (3, 3, 3), r.output  # short trials: min_resource follows
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "d"), "--epochs", "3", "--min-resource", "5"])
    assert r.exit_code == 2 and "min_resource 5 exceeds max_resource 3" in r.output


def test_cli_trial_budget_defaults_to_the_papers(small_data, tmp_path, monkeypatch):
    """No --trials: 100 GLASS / 50 baseline trials for the whole study (a re-run completes it);
    an explicit --trials keeps meaning 'this many more'."""
    calls = []

    def optimize(self, func, n_trials=None, timeout=None, catch=(), callbacks=None, **kw):
        caps = [c._n_trials for c in callbacks or [] if isinstance(c, optuna.study.MaxTrialsCallback)]
        calls.append((n_trials, caps))

    monkeypatch.setattr(optuna.study.Study, "optimize", optimize)
    for arch, expected in (("glass", (100, [100])), ("standard", (50, [50]))):
        r = CliRunner().invoke(app, ["tune", "--data", str(small_data), "--arch", arch, "--out", str(tmp_path / arch),
                                     "--quiet"])
        assert r.exit_code == 1 and "no trial has completed" in r.output  # optimize did nothing
        assert calls[-1] == expected, arch
    r = CliRunner().invoke(app, ["tune", "--data", str(small_data), "--out", str(tmp_path / "x"), "--trials", "7"])
    assert calls[-1] == (7, [])


# ------------------------------------------------------------------------------- PostgreSQL

def _pg_bin() -> Path | None:
    for cand in [shutil.which("initdb"), *sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)]:
        if cand and Path(cand).is_file():
            return Path(os.path.realpath(cand)).parent
    return None


@pytest.fixture(scope="module")
def postgres_url():
    """A throw-away PostgreSQL server on a free loopback port (initdb refuses root: run it as postgres/nobody)."""
    pytest.importorskip("psycopg2", reason="psycopg2-binary is not installed")
    bindir = _pg_bin()
    if bindir is None or not (bindir / "pg_ctl").is_file():
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed: apt-get install postgresql")
    user = None
    if os.geteuid() == 0:
        import pwd

        for name in ("postgres", "nobody"):
            try:
                pwd.getpwnam(name)
                user = name
                break
            except KeyError:
                continue
        if user is None:
            pytest.skip("running as root and no 'postgres' or 'nobody' user to run initdb as")
    root = Path(tempfile.mkdtemp(prefix="gd-pg-"))
    if user:
        shutil.chown(root, user)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data, log = root / "data", root / "server.log"
    run = lambda args: subprocess.run(args, user=user, check=True, capture_output=True, text=True, timeout=60)  # noqa: E731
    try:
        run([str(bindir / "initdb"), "-D", str(data), "-U", "gd", "--auth=trust", "-E", "UTF8", "--no-locale",
             "--no-sync"])
        run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "30", "start", "-o",
             f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"])
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"could not start a PostgreSQL server: {getattr(exc, 'stderr', exc)}")
    try:
        yield f"postgresql+psycopg2://gd@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], user=user,
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_postgres_study(small_data, space_file, postgres_url, tmp_path):
    """Worker 1 runs as a separate process (the CLI), worker 0 in this one, at the same time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    args = lambda w: ["tune", "--data", str(small_data), "--out", str(tmp_path / f"w{w}"), "--storage", postgres_url,  # noqa: E731
                      "--study", "shared", "--trials", "2", "--worker", str(w), "--space", str(space_file), *FAST]
    other = subprocess.Popen([sys.executable, "-m", "glassdetect.cli", *args(1)], env=env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        r = CliRunner().invoke(app, args(0))
        output = other.communicate(timeout=300)[0]
    finally:
        if other.poll() is None:
            other.kill()
    assert r.exit_code == 0, r.output
    assert other.returncode == 0, output[-3000:]
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.trials
    assert len(trials) == 4 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert sorted(t.user_attrs["worker"] for t in trials) == [0, 0, 1, 1]
    # each trial trained in its own run directory, in the folder of the worker that ran it
    dirs = {t.user_attrs["run_dir"] for t in trials}
    assert len(dirs) == 4 and all((Path(d) / "summary.json").is_file() for d in dirs)
    assert all(Path(t.user_attrs["run_dir"]).parent.parent.name == f"w{t.user_attrs['worker']}" for t in trials)
    # each worker's report counts the whole study as it stood when it finished
    seen = [json.loads((tmp_path / f"w{w}" / "best.json").read_text())["n_trials"] for w in (0, 1)]
    assert max(seen) == 4 and min(seen) >= 2
    assert "gd@" in json.loads((tmp_path / "w0" / "best.json").read_text())["storage"]
