"""The cross-generator protocol (GenImage / CNNDetection style): train on some generators, test on every one.

    glassdetect crossgen --data DATA --train-on A --train-on A,B --arch both --seeds 0,1,2

Every ``--train-on`` value is one *row*: a model is trained on the fakes of the named generators
only, then tested against every generator of the data (the *columns*); the cell is the test AUC.
The diagonal (a generator the row was trained on) is in-distribution, the rest measures how the
detector generalises to generators it never saw.

Data, split by split (the data's own train/val/test split; data without one is split once, by
source group with seed ``split_seed``, and that split is shared by every row):

* **train** — the row's generators' training fakes plus the reals *paired* with them: for each
  fake, the real of the same source group with the same file name (its pair partner in the
  offline benchmark and in ImageFolder trees); a fake without such a partner brings every real of
  its group. Pairing keeps the two classes balanced and matched in content and pixel history, so
  the model cannot learn "this photo was used for a fake". ``reals="all"`` instead takes every
  real of the split (more reals, unbalanced classes).
* **val** — the same rule within the validation split (model selection sees the row's generators
  only: the held-out generators stay unseen until the test).
* **test** — column G = G's test fakes + *all* test reals. The reals are the same in every column
  (and every row), so the columns are comparable: they differ only in which fakes are scored.

Runs are cached per (row, architecture, seed) under ``OUT/runs/<row>/<arch>/seed<N>/``: a run
whose finished ``summary.json`` has the same training configuration and data is not trained
again, only evaluated; an interrupted one resumes. Results: ``OUT/results.json`` (per-seed AUCs
per cell, mean and std over seeds, the held-out mean) and ``OUT/results.md`` (one train × test
table per architecture, ``mean ± std`` over seeds, the command that made it).
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..data.splits import Sample, assign_splits, check_no_leak, load_samples, write_split
from ..fsutil import write_text_atomic
from ..training.train import TrainConfig, train
from ..training.config import Recipe

ARCH_NAMES = {"glass": "GLASS", "standard": "baseline"}
REALS_RULES = ("paired", "all")


@dataclass
class CrossgenConfig(Recipe):  # the training recipe's fields (default: the offline demo's), then crossgen's own
    data: str = ""
    out: str = "runs/crossgen"
    train_on: tuple[tuple[str, ...], ...] = ()  # one row per entry
    archs: tuple[str, ...] = ("glass", "standard")
    seeds: tuple[int, ...] = (0,)
    reals: str = "paired"  # paired | all (see the module docstring)
    split_seed: int = 0  # only for data without a split
    command: str = ""  # recorded in results.md
    extra: dict = field(default_factory=dict)  # any other TrainConfig field

    def train_config(self, manifest: Path, out: Path, arch: str, seed: int) -> TrainConfig:
        return TrainConfig(data=str(manifest), out=str(out), arch=arch, seed=seed, progress=False,
                           **self.recipe_fields(), **self.extra)


def parse_rows(values: Sequence[str]) -> list[tuple[str, ...]]:
    """``["A", "A,B"]`` -> ``[("A",), ("A", "B")]`` (each row's generators sorted, duplicate rows dropped)."""
    rows: list[tuple[str, ...]] = []
    for value in values:
        row = tuple(sorted({g.strip() for g in str(value).split(",") if g.strip()}))
        if not row:
            raise ValueError(f"--train-on {value!r}: name at least one generator")
        if row not in rows:
            rows.append(row)
    return rows


def parse_archs(text: str) -> tuple[str, ...]:
    """``glass``, ``baseline`` (or ``standard``) or ``both`` -> the model architectures to train."""
    table = {"glass": ("glass",), "baseline": ("standard",), "standard": ("standard",), "both": ("glass", "standard")}
    if text not in table:
        raise ValueError(f"--arch {text!r}: use glass, baseline or both")
    return table[text]


def row_name(row: Sequence[str]) -> str:
    return "+".join(row)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in text) or "_"


# ------------------------------------------------------------------------------ data

def load_split(data: str | Path, split_seed: int = 0) -> list[Sample]:
    """Every sample with its split: the data's own, else one grouped split made here (seed ``split_seed``)."""
    samples = load_samples(data)
    if not samples:
        raise ValueError(f"{data}: no images found")
    samples = assign_splits(samples, seed=split_seed)
    check_no_leak(samples)
    return samples


def fake_counts(samples: Sequence[Sample], split: str) -> Counter:
    """Fakes per generator in ``split`` (fakes without a generator are not counted)."""
    return Counter(s.generator for s in samples if s.label == 1 and s.split == split and s.generator)


def top_generators(samples: Sequence[Sample], n: int) -> list[str]:
    """The ``n`` generators with the most training fakes (ties broken by name)."""
    counts = fake_counts(samples, "train")
    return sorted(counts, key=lambda g: (-counts[g], g))[:n]


def _pair_key(s: Sample) -> tuple[str, str, str]:
    return s.split, s.group, Path(s.path).name


def row_samples(samples: Sequence[Sample], row: Sequence[str], reals: str = "paired",
                splits: Sequence[str] = ("train", "val")) -> list[Sample]:
    """The training and validation images of one row: its generators' fakes and the reals the rule picks."""
    if reals not in REALS_RULES:
        raise ValueError(f"reals {reals!r}: use one of {', '.join(REALS_RULES)}")
    fakes = [s for s in samples if s.label == 1 and s.split in splits and s.generator in row]
    real_pool = [s for s in samples if s.label == 0 and s.split in splits]
    if reals == "all":
        return fakes + real_pool
    by_pair = {_pair_key(s): s for s in real_pool}
    by_group: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for s in real_pool:
        by_group[(s.split, s.group)].append(s)
    chosen: dict[str, Sample] = {}
    for f in fakes:
        partner = by_pair.get(_pair_key(f))
        for r in [partner] if partner is not None else by_group[(f.split, f.group)]:
            chosen[r.path] = r
    return fakes + sorted(chosen.values(), key=lambda s: s.path)


def check_rows(samples: Sequence[Sample], rows: Sequence[Sequence[str]], data: str | Path) -> None:
    """Every generator a row names must have training and validation fakes."""
    for split in ("train", "val"):
        have = fake_counts(samples, split)
        for row in rows:
            missing = [g for g in row if not have[g]]
            if missing:
                known = ", ".join(sorted(fake_counts(samples, "train"))) or "none"
                raise ValueError(f"{data}: no {split} fakes of generator(s) {', '.join(missing)} "
                                 f"(generators with training fakes: {known})")


# ------------------------------------------------------------------------------ one run

def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _run_key(tc: TrainConfig, manifest: Path) -> dict:
    key = {k: v for k, v in asdict(tc).items() if k not in ("out", "data", "progress", "resume", "workers", "threads")}
    return json.loads(json.dumps({"train": key, "data_sha256": _digest(manifest)}, default=str))


def train_cached(tc: TrainConfig, manifest: Path, log: Callable[[str], None]) -> tuple[dict, bool]:
    """(summary, trained now?): a finished run with the same key is reused, an interrupted one resumed."""
    out = Path(tc.out)
    key_path, summary_path = out / "crossgen_key.json", out / "summary.json"
    key = _run_key(tc, manifest)
    same = key_path.exists() and json.loads(key_path.read_text()) == key
    if same and summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if len(summary.get("history", [])) == tc.epochs:
            log(f"{out}: already trained, evaluating only")
            return summary, False
    out.mkdir(parents=True, exist_ok=True)
    if not same:
        summary_path.unlink(missing_ok=True)
    write_text_atomic(key_path, json.dumps(key, indent=2))
    tc.resume = same
    return train(tc), True


def generator_aucs(checkpoint: Path, data: Path, cfg: CrossgenConfig, out: Path) -> dict:
    """Per generator: AUC of its test fakes against all test reals, and the counts (one pass over the test split)."""
    from ..evaluation.evaluate import evaluate

    res = evaluate(checkpoint, data, split="test", out=out, batch_size=cfg.batch_size, workers=cfg.workers,
                   device=cfg.device, threads=cfg.threads, progress=False)
    per = res.get("per_generator") or {}
    return {"auc": {g: v["auc"] for g, v in per.items()}, "n_fake": {g: v["n_fake"] for g, v in per.items()},
            "overall_auc": res["auc"], "n": res["n"], "errors": len(res["errors"])}


# ------------------------------------------------------------------------------ the protocol

def _stats(values: Sequence[float | None]) -> dict:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    arr = np.asarray(vals)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "n": len(vals)}


def summarise_row(row: Sequence[str], arch: str, per_seed: dict[int, dict], columns: Sequence[str]) -> dict:
    """One table row: per-seed AUCs per column, their mean/std, and the held-out mean (columns not trained on)."""
    held_out = [g for g in columns if g not in row]
    held = {s: (float(np.mean([r["auc"][g] for g in held_out if r["auc"].get(g) is not None]))
                if any(r["auc"].get(g) is not None for g in held_out) else None)
            for s, r in per_seed.items()}
    return {
        "train_on": list(row), "arch": arch,
        "per_seed": {str(s): {"auc": r["auc"], "held_out_mean": held[s], "overall_auc": r["overall_auc"],
                              "train_s": r.get("train_s"), "best_epoch": r.get("best_epoch")}
                     for s, r in per_seed.items()},
        "auc": {g: _stats([r["auc"].get(g) for r in per_seed.values()]) for g in columns},
        "held_out_mean": _stats(list(held.values())),
    }


def _log(msg: str) -> None:
    print(f"[crossgen {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def crossgen(cfg: CrossgenConfig, log: Callable[[str], None] = _log) -> dict:
    """Train every (row, arch, seed) (cached), test each on every generator; write results.json and results.md."""
    t_start = time.perf_counter()
    if cfg.reals not in REALS_RULES:
        raise ValueError(f"reals {cfg.reals!r}: use one of {', '.join(REALS_RULES)}")
    rows = [tuple(r) for r in cfg.train_on]
    if not rows:
        raise ValueError("crossgen: give at least one --train-on row")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    samples = load_split(cfg.data, cfg.split_seed)
    check_rows(samples, rows, cfg.data)
    columns = sorted(fake_counts(samples, "test"))
    if not columns or not any(s.label == 0 and s.split == "test" for s in samples):
        raise ValueError(f"{cfg.data}: the test split needs reals and fakes with a generator")
    full = out / "data.csv"  # every image with the split every row uses
    write_split(samples, full)
    results = []
    for row in rows:
        manifest = out / "runs" / _slug(row_name(row)) / "manifest.csv"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        write_split(row_samples(samples, row, cfg.reals), manifest)
        for arch in cfg.archs:
            per_seed = {seed: _one_run(cfg, manifest, full, arch, seed, row, log) for seed in cfg.seeds}
            results.append(summarise_row(row, arch, per_seed, columns))
    result = {
        "config": asdict(cfg) | {"train_on": [list(r) for r in rows]}, "columns": columns,
        "test": {"n_real": sum(s.label == 0 and s.split == "test" for s in samples),
                 "n_fake": dict(fake_counts(samples, "test"))},
        "train_fakes": dict(fake_counts(samples, "train")), "val_fakes": dict(fake_counts(samples, "val")),
        "rows": results, "seconds": time.perf_counter() - t_start,
    }
    write_text_atomic(out / "results.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(out / "results.md", markdown(result))
    log(f"done in {result['seconds'] / 60:.1f} min -> {out / 'results.md'}")
    return result


def _one_run(cfg: CrossgenConfig, manifest: Path, full: Path, arch: str, seed: int, row: Sequence[str],
             log: Callable[[str], None]) -> dict:
    run_dir = manifest.parent / arch / f"seed{seed}"
    tc = cfg.train_config(manifest, run_dir, arch, seed)
    log(f"{ARCH_NAMES.get(arch, arch)} on {row_name(row)}, seed {seed}")
    summary, _ = train_cached(tc, manifest, log)
    ckpt = run_dir / "best"
    res = generator_aucs(ckpt, full, cfg, run_dir / "test_eval.json")
    res["train_s"] = sum(h["seconds"] for h in summary["history"])
    res["best_epoch"] = json.loads((ckpt / "config.json").read_text()).get("epoch")
    res["n_train"], res["n_val"] = summary.get("n_train"), summary.get("n_val")
    shown = ", ".join(f"{g} {_fmt(v)}" for g, v in res["auc"].items())
    log(f"{ARCH_NAMES.get(arch, arch)} on {row_name(row)}, seed {seed}: test AUC {shown}")
    return res


# ------------------------------------------------------------------------------ report

def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _cell(stat: dict, n_seeds: int) -> str:
    if stat.get("mean") is None:
        return "n/a"
    return _fmt(stat["mean"]) if n_seeds < 2 else f"{_fmt(stat['mean'])} ± {_fmt(stat['std'])}"


def table(result: dict, arch: str) -> str:
    """The train × test AUC table of one architecture (Markdown; in-distribution cells in bold)."""
    cols = result["columns"]
    lines = ["| train on ↓ / test on → | " + " | ".join(cols) + " | held-out mean |",
             "|---|" + "---:|" * (len(cols) + 1)]
    for r in (r for r in result["rows"] if r["arch"] == arch):
        n = len(r["per_seed"])
        cells = [f"**{_cell(r['auc'][g], n)}**" if g in r["train_on"] else _cell(r["auc"][g], n) for g in cols]
        lines.append(f"| {row_name(r['train_on'])} | " + " | ".join(cells) + f" | {_cell(r['held_out_mean'], n)} |")
    return "\n".join(lines) + "\n"


def command_line(cfg: CrossgenConfig) -> str:
    """The ``glassdetect crossgen`` command that reproduces ``cfg`` (every row and recipe option spelled out)."""
    import shlex

    arch = {("glass",): "glass", ("standard",): "baseline"}.get(tuple(cfg.archs), "both")
    args = ["crossgen", "--data", cfg.data, "--out", cfg.out]
    for row in cfg.train_on:
        args += ["--train-on", ",".join(row)]
    args += ["--arch", arch, "--seeds", ",".join(str(s) for s in cfg.seeds), "--reals", cfg.reals,
             "--backbone", cfg.backbone, "--weights", cfg.weights or "", "-k", str(cfg.k), "--epochs", str(cfg.epochs),
             "--batch", str(cfg.batch_size), "--freeze", str(cfg.freeze), "--workers", str(cfg.workers),
             "--threads", str(cfg.threads), "--device", cfg.device]
    if cfg.pretrained:
        args.append("--pretrained")
    return "glassdetect " + shlex.join(args)


def markdown(result: dict) -> str:
    cfg = result["config"]
    seeds = ", ".join(str(s) for s in cfg["seeds"])
    parts = [
        "# Cross-generator AUC (train on the row's generators, test on every generator)\n",
        f"Command: `{cfg['command'] or command_line(CrossgenConfig(**cfg))}`\n",
        f"Data: `{cfg['data']}`. Recipe: {cfg['backbone']} (weights `{cfg['weights']}`), K={cfg['k']}, "
        f"batch {cfg['batch_size']}, {cfg['epochs']} epochs, seeds {seeds}"
        + (" (mean ± std over seeds)" if len(cfg["seeds"]) > 1 else "") + ".\n",
        f"Training and validation: the row's fakes and the reals {_reals_text(cfg['reals'])}. "
        f"Test column G: G's test fakes against the same {result['test']['n_real']} test reals in every column "
        "(test fakes per column: " + ", ".join(f"{g} {n}" for g, n in sorted(result["test"]["n_fake"].items()))
        + "). **Bold**: a generator the row was trained on; held-out mean: the mean over the other columns.\n",
    ]
    for arch in cfg["archs"]:
        parts += [f"## {ARCH_NAMES.get(arch, arch)}\n", table(result, arch)]
    parts.append(f"Total time {result['seconds'] / 60:.1f} min (cached runs are evaluated only).\n")
    return "\n".join(parts)


def _reals_text(rule: str) -> str:
    return ("paired with them (each fake's partner: same source group and file name)" if rule == "paired"
            else "of the whole split")
