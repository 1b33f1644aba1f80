"""Final runs, the paper's protocol: one configuration, several seeds, mean ± std on a held-out test set.

1. The data's train/val/test split is fixed once: the split stored in the data (manifest
   column or ``train/val/test`` folders) or else the grouped, stratified split that
   ``glassdetect train`` draws with ``split_seed`` (by default the configuration's own
   ``split_seed``, i.e. the very split the hyperparameter search ran on, so its test images
   stayed unseen; a configuration written before ``split_seed`` existed drew it with ``seed``).
2. Train and val are merged and a small validation split (``val_fraction``, default 5 %, grouped
   by source and stratified by label) is carved back out for model selection (the best epoch);
   the model trains on the rest. As in the paper's reference code the carve-out is drawn once,
   with ``holdout_seed`` (default 606), so every seed selects on the same images;
   ``holdout_seed=None`` redraws it with each training seed (glassdetect's earlier protocol).
3. Every seed trains ``epochs`` epochs (default 50, the paper's; ``None``: the configuration's).
4. Each seed's best checkpoint is evaluated on the test split with
   :func:`glassdetect.evaluation.evaluate.evaluate`; metrics are aggregated over seeds as mean ± std
   (:mod:`glassdetect.evaluation.report`) into ``OUT/final.json`` and ``OUT/final.md``.

Every seed runs in ``OUT/seed-<S>/`` (its manifest ``data.csv``, the training run, ``test.json``).
Re-running skips seeds that already have ``test.json`` and resumes interrupted training (only on
the ``data.csv`` it started with: other split options are refused with the seed's folder named).
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..data.splits import Sample, assign_splits, carve_val, check_no_leak, load_samples
from ..evaluation.metrics import FPR_POINTS, tpr_key
from ..evaluation.report import aggregate, markdown_table, per_run_table

# The columns of final.md and of the CLI summary (docs/metrics.md defines every metric).
SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "auc", "ap", "f1", "f1_weighted", "eer", tpr_key(0.10), "nll",
                   "ece")
# Per-seed numbers kept in final.json and aggregated as mean ± std (evaluate() also returns lists and paths).
KEEP = ("n", "accuracy", "balanced_accuracy", "real_accuracy", "fake_accuracy", "auc", "ap", "f1", "precision",
        "recall", "precision_weighted", "recall_weighted", "f1_weighted", "threshold", "fpr_at_threshold",
        "tpr_at_threshold", "eer", *(tpr_key(f) for f in FPR_POINTS), "oracle_accuracy", "nll", "ece", "conf_all",
        "conf_correct", "conf_incorrect", "mean_spread", "seconds_per_image")


# The paper's final-run protocol (the reference code's FINAL_VALID_PERCENTAGE, MAIN_SEED, TRAIN_EPOCH).
PAPER_SEEDS = (100, 200, 300, 400, 500)
PAPER_HOLDOUT = 0.05
PAPER_HOLDOUT_SEED = 606
PAPER_EPOCHS = 50


def fixed_split(samples: Sequence[Sample], fractions: tuple[float, float, float], split_seed: int) -> list[Sample]:
    """The train/val/test split every seed shares (the data's own split wins where it has one)."""
    out = assign_splits(samples, fractions, split_seed)
    check_no_leak(out)
    if not any(s.split == "test" for s in out):
        raise ValueError("final runs need a test split (give the data one, or a non-zero test fraction)")
    return out


def carve_validation(samples: Sequence[Sample], val_fraction: float, seed: int) -> list[Sample]:
    """Merge train and val, then carve ``val_fraction`` of it back out (grouped, stratified, seeded).
    Test samples are untouched."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction (--holdout) must be in (0, 1), got {val_fraction}")
    pool = [replace(s, split="train") for s in samples if s.split in ("train", "val")]
    test = [s for s in samples if s.split == "test"]
    if not pool:
        raise ValueError("no training images (train + val is empty)")
    out = carve_val(pool + test, val_fraction, seed)  # tiny data: at least one group goes to val
    check_no_leak(out)
    return out


def _manifest_text(samples: Sequence[Sample], class_names: Sequence[str]) -> str:
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["path", "label", "group", "generator", "split"])
    for s in samples:
        w.writerow([s.path, class_names[s.label], s.group, s.generator, s.split])
    return buf.getvalue()


def write_manifest(samples: Sequence[Sample], path: Path, class_names: Sequence[str]) -> Path:
    """A manifest (absolute paths) that ``glassdetect train``/``evaluate`` read with its splits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        fh.write(_manifest_text(samples, class_names))
    return path


def _seed_manifest(samples: Sequence[Sample], run_dir: Path, class_names: Sequence[str], resume: bool) -> Path:
    """``RUN/data.csv``; an interrupted run resumes only on the manifest it started with."""
    path = run_dir / "data.csv"
    if resume and path.is_file() and path.read_bytes() != _manifest_text(samples, class_names).encode("utf-8"):
        raise ValueError(f"{path}: the interrupted run in {run_dir} was split differently (other data, "
                         f"--split-seed, --holdout or --holdout-seed); rerun with its options or delete {run_dir}")
    return write_manifest(samples, path, class_names)


def load_config(config: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(config, Mapping):
        return dict(config)
    d = json.loads(Path(config).read_text())
    if not isinstance(d, dict):
        raise ValueError(f"{config}: expected a JSON object of training options")
    return d


def run_final(
    config: str | Path | Mapping[str, Any],
    data: str | Path,
    out: str | Path,
    seeds: Sequence[int] = PAPER_SEEDS,
    val_fraction: float = PAPER_HOLDOUT,
    split_seed: int | None = None,
    draws: int = 1,
    overrides: Mapping[str, Any] | None = None,
    name: str | None = None,
    holdout_seed: int | None = PAPER_HOLDOUT_SEED,
    epochs: int | None = PAPER_EPOCHS,
) -> dict:
    """Train and test one configuration under several seeds; returns what ``OUT/final.json`` holds.

    ``val_fraction``: the share of train + val held out for model selection, drawn with
    ``holdout_seed`` (``None``: with each training seed). ``epochs``: per seed (``None``: the
    configuration's; an ``epochs`` in ``overrides`` wins). ``split_seed``: the fixed split's
    (``None``: the configuration's ``split_seed``).
    """
    from ..evaluation.evaluate import evaluate
    from ..training.train import TrainConfig, train

    if not 0 < val_fraction < 1:  # before anything is read or written
        raise ValueError(f"val_fraction (--holdout) must be in (0, 1), got {val_fraction}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    opts = load_config(config)
    if epochs is not None:
        opts["epochs"] = epochs
    opts.update(overrides or {})
    opts.update(data=str(data), out=str(out), resume=False)
    base = TrainConfig.from_dict(opts)  # validates the keys
    if split_seed is not None:
        base = replace(base, split_seed=split_seed)
    split_seed = base.split_seed
    samples = load_samples(data, base.class_names)
    if not samples:
        raise ValueError(f"{data}: no images found")
    fixed = fixed_split(samples, base.split_fractions, split_seed)
    shared = None if holdout_seed is None else carve_validation(fixed, val_fraction, holdout_seed)
    name = name or f"{base.arch} · {base.backbone}" + (f" · K={base.k}" if base.arch == "glass" else "")

    runs: list[dict] = []
    for seed in seeds:
        run_dir = out / f"seed-{seed}"
        test_json = run_dir / "test.json"
        if test_json.is_file():
            res = json.loads(test_json.read_text())
        else:
            resume = (run_dir / "last" / "trainer_state.pt").is_file()
            carved = shared if shared is not None else carve_validation(fixed, val_fraction, seed)
            manifest = _seed_manifest(carved, run_dir, base.class_names, resume)
            cfg = replace(base, seed=seed, data=str(manifest), out=str(run_dir), resume=resume)
            train(cfg)
            res = evaluate(run_dir / "best", manifest, split="test", draws=draws, out=test_json,
                           batch_size=cfg.batch_size, workers=cfg.workers, device=cfg.device, threads=cfg.threads,
                           seed=0, progress=cfg.progress)
        runs.append({"seed": seed, **{k: res.get(k) for k in KEEP if k in res}})

    agg = aggregate([{k: v for k, v in r.items() if k != "seed"} for r in runs])
    result = {
        "name": name, "config": {k: v for k, v in json.loads(json.dumps(asdict(base), default=str)).items()
                                 if k not in ("out", "resume", "seed")},
        "data": str(data), "seeds": list(seeds), "split_seed": split_seed, "val_fraction": val_fraction,
        "holdout_seed": holdout_seed, "epochs": base.epochs, "draws": draws,
        "std": "sample standard deviation over seeds (ddof=1)",
        "n_test": runs[0].get("n") if runs else 0, "runs": runs, "aggregate": agg,
    }
    (out / "final.json").write_text(json.dumps(result, indent=2))
    (out / "final.md").write_text(final_markdown(result))
    return result


def final_markdown(result: Mapping[str, Any]) -> str:
    metrics = [m for m in SUMMARY_METRICS if m in result["aggregate"]]
    seeds = ", ".join(str(s) for s in result["seeds"])
    return (
        f"# Final runs: {result['name']}\n\n"
        f"Test split of `{result['data']}` (n = {result['n_test']}), {len(result['seeds'])} seeds ({seeds}); "
        f"train + val merged, {result['val_fraction']:.0%} carved out {_carved_how(result)} for model selection; "
        f"{result.get('epochs', '?')} epochs per seed; mean ± sample std over seeds.\n\n"
        + markdown_table({result["name"]: result["aggregate"]}, metrics, name_header="model")
        + "\n## Per seed\n\n"
        + per_run_table(result["runs"], metrics)
    )


def _carved_how(result: Mapping[str, Any]) -> str:
    seed = result.get("holdout_seed")
    return "per seed" if seed is None else f"once (seed {seed})"
