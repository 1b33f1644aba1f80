"""Hyperparameter search: Optuna, a seeded TPE sampler and a Hyperband pruner on validation accuracy.

Every trial is an ordinary :func:`glassdetect.training.train.train` run in ``OUT/trials/NNNN/`` whose
per-epoch validation accuracy is reported to the pruner (``on_epoch_end``); a trial the pruner
stops early is recorded as *pruned*, one that raises (CUDA out of memory, a bad image set, ...)
as *failed* with its reason in the user attribute ``fail_reason``, and the study goes on.

The study lives in an RDB: ``OUT/study.db`` (SQLite) by default, or any SQLAlchemy URL such as
``postgresql://user:pass@host/db``, which lets many workers (machines, GPUs) share one study.
Running the command again continues the study: finished trials are kept, new ones are added,
and trials of a worker that died are marked failed once their heartbeat goes stale.

Search space (defaults follow the paper's reference code)::

    GLASS     batch_size {16, 32, 64}, dropout {0, .1, .2, .3}, k {2, 4, 6, 8, 10},
              lr_global, lr_local in [1e-6, 1e-4] (log), lr_head in [5e-6, 1e-3] (log),
              wd_global, wd_local in [1e-7, 1e-3] (log); wd_head pinned to 0
    standard  batch_size {32, 64, 128}, dropout as above; lr in [1e-6, 1e-4] (log);
              weight_decay in [1e-7, 1e-3] (log)

The budget follows the paper too: 100 GLASS / 50 baseline trials (:data:`PAPER_TRIALS`, complete
plus pruned, counted over the whole study) of 25 epochs, and a Hyperband pruner with
min_resource 5, max_resource the epochs per trial (25) and reduction factor 3 (:class:`Hyperband`).

``lr`` and ``weight_decay`` are aliases: ``lr`` sets both ``lr_global`` (the baseline's backbone)
and ``lr_head`` (its classifier), ``weight_decay`` sets ``wd_global`` and ``wd_head`` — one
learning rate and one weight decay for the whole baseline network.

A YAML file (``--space``) is merged over the default space. Its top level (or a ``space:``
mapping) names TrainConfig fields or the aliases::

    k: {type: categorical, choices: [2, 4]}
    lr_head: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
    epochs: {type: int, low: 2, high: 6, step: 2}
    dropout: 0.1        # a plain value pins the parameter (it is no longer searched)
    lr_local: null      # null removes a default parameter (training's own value applies)

The best trial's parameters are written to ``OUT/best_config.json``, a file of TrainConfig
fields that ``glassdetect train --config OUT/best_config.json --data ... --out ...`` accepts.
"""
from __future__ import annotations

import csv
import gc
import json
import math
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from ..training.train import TrainConfig, train

ALIASES: dict[str, tuple[str, ...]] = {"lr": ("lr_global", "lr_head"), "weight_decay": ("wd_global", "wd_head")}
DROPOUT = {"type": "categorical", "choices": [0.0, 0.1, 0.2, 0.3]}
DEFAULT_SPACES: dict[str, dict[str, Any]] = {
    "glass": {
        "batch_size": {"type": "categorical", "choices": [16, 32, 64]},
        "dropout": DROPOUT,
        "lr_global": {"type": "float", "low": 1e-6, "high": 1e-4, "log": True},
        "lr_local": {"type": "float", "low": 1e-6, "high": 1e-4, "log": True},
        "lr_head": {"type": "float", "low": 5e-6, "high": 1e-3, "log": True},
        "wd_global": {"type": "float", "low": 1e-7, "high": 1e-3, "log": True},
        "wd_local": {"type": "float", "low": 1e-7, "high": 1e-3, "log": True},
        "k": {"type": "categorical", "choices": [2, 4, 6, 8, 10]},
        "wd_head": 0.0,  # attention + classifier: no weight decay, as in the reference
    },
    "standard": {
        "batch_size": {"type": "categorical", "choices": [32, 64, 128]},
        "dropout": DROPOUT,
        "lr": {"type": "float", "low": 1e-6, "high": 1e-4, "log": True},
        "weight_decay": {"type": "float", "low": 1e-7, "high": 1e-3, "log": True},
    },
}
# The paper's search budget: trials per study (complete + pruned) and epochs per trial.
PAPER_TRIALS = {"glass": 100, "standard": 50}
PAPER_EPOCHS = 25
# Fields a search may not touch: where data and runs live, and run-control switches.
NOT_SEARCHABLE = {"data", "out", "resume", "progress"}
# Fields left out of best_config.json: paths and machine-specific runtime settings.
NOT_HANDED_OFF = {"data", "out", "resume", "progress", "device", "workers", "threads"}


class SpaceError(ValueError):
    pass


def _train_fields() -> set[str]:
    return {f.name for f in fields(TrainConfig)}


def _check_entry(name: str, spec: Any) -> Any:
    """Validate (and normalise) one space entry: a distribution mapping, a fixed value, or None."""
    known = _train_fields() | set(ALIASES)
    if name not in known or name in NOT_SEARCHABLE:
        raise SpaceError(f"search space: {name!r} is not a searchable training option "
                         f"(use TrainConfig fields or {', '.join(sorted(ALIASES))})")
    if spec is None or not isinstance(spec, Mapping):
        return spec
    kind = spec.get("type")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"search space: {name}: categorical needs a non-empty list 'choices'")
        extra = set(spec) - {"type", "choices"}
        if extra:
            raise SpaceError(f"search space: {name}: unknown keys {sorted(extra)}")
        return {"type": "categorical", "choices": list(choices)}
    if kind in ("float", "int"):
        extra = set(spec) - {"type", "low", "high", "log", "step"}
        if extra:
            raise SpaceError(f"search space: {name}: unknown keys {sorted(extra)}")
        cast = float if kind == "float" else int
        try:  # YAML 1.1 reads "1e-6" as a string; accept it
            low, high = cast(float(spec["low"])), cast(float(spec["high"]))
            step = None if spec.get("step") is None else cast(float(spec["step"]))
        except KeyError:
            raise SpaceError(f"search space: {name}: {kind} needs 'low' and 'high'") from None
        except (TypeError, ValueError):
            raise SpaceError(f"search space: {name}: low/high/step must be numbers") from None
        log = bool(spec.get("log", False))
        if not low < high:
            raise SpaceError(f"search space: {name}: need low < high, got {low}, {high}")
        if log and low <= 0:
            raise SpaceError(f"search space: {name}: a log range needs low > 0")
        if log and step is not None:
            raise SpaceError(f"search space: {name}: 'step' and 'log' cannot be combined")
        out = {"type": kind, "low": low, "high": high, "log": log}
        if step is not None:
            out["step"] = step
        return out
    raise SpaceError(f"search space: {name}: type must be categorical, float or int (got {kind!r})")


@dataclass(frozen=True)
class Hyperband:
    """Optuna's HyperbandPruner settings; resources are epochs. The paper's: 5 / 25 / 3."""

    min_resource: int = 5
    max_resource: int = PAPER_EPOCHS
    reduction_factor: int = 3

    @classmethod
    def for_epochs(cls, epochs: int, min_resource: int | None = None, max_resource: int | None = None,
                   reduction_factor: int = 3) -> "Hyperband":
        """Settings for trials of ``epochs`` epochs: ``max_resource`` defaults to ``epochs`` and
        ``min_resource`` to 5 (or ``max_resource`` when that is smaller); explicit values are checked."""
        top = max(int(epochs), 1) if max_resource is None else int(max_resource)
        low = min(cls.min_resource, top) if min_resource is None else int(min_resource)
        if low < 1 or reduction_factor < 2:
            raise ValueError(f"hyperband: need min_resource >= 1 and reduction_factor >= 2 "
                             f"(got {low}, {reduction_factor})")
        if low > top:
            raise ValueError(f"hyperband: min_resource {low} exceeds max_resource {top} "
                             f"(epochs per trial: {epochs})")
        return cls(low, top, int(reduction_factor))

    def pruner(self):
        import optuna

        return optuna.pruners.HyperbandPruner(min_resource=self.min_resource, max_resource=self.max_resource,
                                              reduction_factor=self.reduction_factor)


def default_space(arch: str, shared_backbone: bool = False) -> dict[str, Any]:
    if arch not in DEFAULT_SPACES:
        raise SpaceError(f"no default search space for arch {arch!r}")
    space = {k: dict(v) if isinstance(v, Mapping) else v for k, v in DEFAULT_SPACES[arch].items()}
    if shared_backbone:  # one backbone: the local group does not exist
        space.pop("lr_local", None), space.pop("wd_local", None)
    return space


def load_space(arch: str, path: str | Path | None = None, shared_backbone: bool = False) -> dict[str, Any]:
    """The default space of ``arch`` with the YAML file at ``path`` merged over it."""
    space: dict[str, Any] = default_space(arch, shared_backbone)
    if path is None:
        return space
    import yaml

    doc = yaml.safe_load(Path(path).read_text()) or {}
    if isinstance(doc, Mapping) and isinstance(doc.get("space"), Mapping) and len(doc) == 1:
        doc = doc["space"]
    if not isinstance(doc, Mapping):
        raise SpaceError(f"{path}: a search space is a mapping of parameter names")
    for name, spec in doc.items():
        spec = _check_entry(str(name), spec)
        if spec is None:
            space.pop(name, None)
            for target in ALIASES.get(name, ()):
                space.pop(target, None)
        else:
            space[name] = spec
    return space


def suggest(trial, space: Mapping[str, Any]) -> dict[str, Any]:
    """Draw one value per searched parameter; fixed values pass through."""
    params: dict[str, Any] = {}
    for name, spec in space.items():
        if not isinstance(spec, Mapping):
            params[name] = spec
        elif spec["type"] == "categorical":
            params[name] = trial.suggest_categorical(name, spec["choices"])
        elif spec["type"] == "float":
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec["log"], step=spec.get("step"))
        else:
            params[name] = trial.suggest_int(name, spec["low"], spec["high"], log=spec["log"], step=spec.get("step", 1))
    return params


def to_train_fields(params: Mapping[str, Any]) -> dict[str, Any]:
    """Search parameters -> TrainConfig fields (aliases expanded; an explicit field wins over an alias)."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        for target in ALIASES.get(name, ()):
            out.setdefault(target, value)
    out.update({k: v for k, v in params.items() if k not in ALIASES})
    return out


def hand_off_config(base: TrainConfig, params: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON config for ``glassdetect train --config``: the base run's options plus the best
    trial's (searched and pinned) parameters."""
    d = json.loads(json.dumps(asdict(base), default=str))
    d.update(to_train_fields(params))
    return {k: v for k, v in d.items() if k not in NOT_HANDED_OFF}


def storage_url(storage: str | None, out: Path) -> str:
    """``None`` -> ``sqlite:///OUT/study.db``; a bare path -> a SQLite file; a URL is kept."""
    if storage is None:
        return f"sqlite:///{(out / 'study.db').resolve()}"
    if "://" not in storage:
        return f"sqlite:///{Path(storage).resolve()}"
    return storage


def make_storage(url: str, heartbeat_interval: int = 60, grace_period: int = 180, attempts: int = 5):
    """An Optuna RDB storage with heartbeats (a dead worker's running trials are failed after
    ``grace_period`` s). Workers that start together may race to create the schema; the loser retries."""
    import warnings

    import optuna

    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 120}}  # several local workers wait for the file lock
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                  heartbeat_interval=heartbeat_interval, grace_period=grace_period)
        except ImportError:
            raise
        except Exception:  # noqa: BLE001 - e.g. "relation already exists" from a concurrent create
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1) + random.random())
    raise AssertionError("unreachable")


def _finite(x: Any) -> float | None:
    return None if x is None or not isinstance(x, (int, float)) or math.isnan(x) else float(x)


def tune(
    base: TrainConfig,
    out: str | Path,
    trials: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    space: Mapping[str, Any] | str | Path | None = None,
    worker: int = 0,
    max_trials: int | None = None,
    timeout: float | None = None,
    reduction_factor: int = 3,
    min_resource: int | None = None,
    max_resource: int | None = None,
) -> dict:
    """Run ``trials`` more trials of the study (created or continued); returns a summary.

    ``trials=None``: the paper's budget, :data:`PAPER_TRIALS` of ``base.arch``, for the whole
    study (``max_trials`` defaults to it too, so a re-run completes an interrupted study).
    ``worker`` distinguishes parallel workers of one study (it enters the sampler's seed).
    ``max_trials`` caps the study's finished (complete or pruned) trials across all workers.
    Hyperband: see :meth:`Hyperband.for_epochs` (defaults 5 / ``base.epochs`` / 3).
    """
    import optuna
    from optuna.trial import TrialState

    from ..data.splits import load_samples

    hyperband = Hyperband.for_epochs(base.epochs, min_resource, max_resource, reduction_factor)
    trials, max_trials = _budget(base.arch, trials, max_trials)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not load_samples(base.data, base.class_names):  # fail once here, not once per trial
        raise ValueError(f"{base.data}: no images found")
    if space is None or isinstance(space, (str, Path)):
        space = load_space(base.arch, space, base.shared_backbone)
    else:
        space = {k: _check_entry(k, v) for k, v in space.items()}
    url = storage_url(storage, out)
    study_name = study_name or f"glassdetect-{base.arch}-{base.backbone}"
    rdb = make_storage(url)
    # Continue an existing study; the sampler's seed also depends on how far the study has got,
    # so a re-run draws new start-up points instead of repeating the first run's.
    study = optuna.create_study(
        storage=rdb, study_name=study_name, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.RandomSampler(seed=0),  # replaced below, once the study's size is known
        pruner=hyperband.pruner(),
    )
    seed = base.seed * 1_000_003 + worker * 10_007 + len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(seed=seed)
    study.set_user_attr("arch", base.arch)
    study.set_user_attr("backbone", base.backbone)
    study.set_user_attr("hyperband", asdict(hyperband))
    objective = _objective(base, space, out / "trials", worker)
    callbacks = []
    if max_trials is not None:
        callbacks.append(optuna.study.MaxTrialsCallback(max_trials, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    study.optimize(objective, n_trials=trials, timeout=timeout, catch=(Exception,), callbacks=callbacks)
    return write_results(study, base, out, url)


def _objective(base: TrainConfig, space: Mapping[str, Any], trials_dir: Path, worker: int):
    """Optuna's objective: train one trial's options, report validation accuracy per epoch (Hyperband
    prunes on it, never after the last epoch), return the best epoch's accuracy."""
    import optuna
    import torch

    def objective(trial: "optuna.Trial") -> float:
        params = suggest(trial, space)
        run_dir = trials_dir / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("train_options", to_train_fields(params))  # pinned values included
        opts = {**asdict(base), **to_train_fields(params), "out": str(run_dir), "resume": False}
        epochs = int(opts["epochs"])
        done = [0]

        def report(epoch: int, rec: dict) -> None:
            done[0] = epoch + 1
            acc = _finite(rec.get("val_accuracy"))
            if acc is None:
                return
            trial.report(acc, step=epoch + 1)
            # never after the last epoch: the run is finished, its result counts
            if epoch + 1 < epochs and trial.should_prune():
                trial.set_user_attr("pruned_at_epoch", epoch + 1)
                raise optuna.TrialPruned(f"epoch {epoch + 1}: validation accuracy {acc:.4f}")

        try:
            summary = train(TrainConfig.from_dict(opts), on_epoch_end=report)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:2000])
            raise
        finally:
            trial.set_user_attr("epochs_done", done[0])
            if torch.cuda.is_available():  # hand a failed or finished trial's GPU memory back
                gc.collect()
                torch.cuda.empty_cache()
        best = _finite(summary.get("best_val_accuracy"))
        if best is None:
            raise ValueError("no validation accuracy (empty validation split?)")
        return best

    return objective


def _budget(arch: str, trials: int | None, max_trials: int | None) -> tuple[int, int | None]:
    """(trials this worker runs, the study's cap): ``trials=None`` is the paper's budget for the study."""
    if trials is not None:
        return trials, max_trials
    if arch not in PAPER_TRIALS:
        raise ValueError(f"no paper trial budget for arch {arch!r}: pass trials")
    paper = PAPER_TRIALS[arch]
    return paper, paper if max_trials is None else max_trials


def write_results(study, base: TrainConfig, out: Path, url: str) -> dict:
    """``OUT/trials.csv`` (every trial), ``OUT/best.json`` and ``OUT/best_config.json``; returns the summary."""
    from optuna.trial import TrialState

    all_trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in all_trials) for s in TrialState}
    names = sorted({p for t in all_trials for p in t.params})
    with open(out / "trials.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["number", "state", "value", "epochs_done", "worker", *names, "run_dir", "fail_reason"])
        for t in all_trials:
            ua = t.user_attrs
            w.writerow([t.number, t.state.name, "" if t.value is None else t.value, ua.get("epochs_done", ""),
                        ua.get("worker", ""), *[t.params.get(p, "") for p in names], ua.get("run_dir", ""),
                        ua.get("fail_reason", "")])
    summary: dict[str, Any] = {"study": study.study_name, "storage": _redact(url), "trials": counts,
                               "n_trials": len(all_trials), "hyperband": study.user_attrs.get("hyperband"),
                               "best": None, "best_config": None}
    complete = [t for t in all_trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        config = hand_off_config(base, best.user_attrs.get("train_options", best.params))
        (out / "best_config.json").write_text(json.dumps(config, indent=2))
        summary["best"] = {"number": best.number, "value": best.value, "params": best.params,
                           "run_dir": best.user_attrs.get("run_dir")}
        summary["best_config"] = str(out / "best_config.json")
    (out / "best.json").write_text(json.dumps(summary, indent=2))
    return summary


def _redact(url: str) -> str:
    """Hide a password in an RDB URL before it is written to disk."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - best effort only
        return url
