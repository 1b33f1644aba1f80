"""Final runs, the paper's protocol: one configuration, several seeds, mean ± std on a held-out test set.

1. The data's train/val/test split is fixed once: the split stored in the data (manifest
   column or ``train/val/test`` folders) or else the grouped, stratified split that
   ``glassdetect train`` draws with ``split_seed`` (by default the configuration's own seed,
   i.e. the very split the hyperparameter search ran on, so its test images stayed unseen).
2. For every seed, train and val are merged and a small validation split (``val_fraction`` of
   it, grouped by source and stratified by label, drawn with that seed) is carved back out for
   model selection (the best epoch); the model trains on the rest.
3. Each seed's best checkpoint is evaluated on the test split with
   :func:`glassdetect.evaluate.evaluate`; metrics are aggregated over seeds as mean ± std
   (:mod:`glassdetect.report`) into ``OUT/final.json`` and ``OUT/final.md``.

Every seed runs in ``OUT/seed-<S>/`` (its manifest ``data.csv``, the training run, ``test.json``).
Re-running skips seeds that already have ``test.json`` and resumes interrupted training.
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from .data import Sample, assign_splits, check_no_leak, load_samples
from .metrics import FPR_POINTS, tpr_key
from .report import aggregate, markdown_table, per_run_table

# The columns of final.md and of the CLI summary (docs/metrics.md defines every metric).
SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "auc", "ap", "f1", "f1_weighted", "eer", tpr_key(0.10), "nll",
                   "ece")
# Per-seed numbers kept in final.json and aggregated as mean ± std (evaluate() also returns lists and paths).
KEEP = ("n", "accuracy", "balanced_accuracy", "real_accuracy", "fake_accuracy", "auc", "ap", "f1", "precision",
        "recall", "precision_weighted", "recall_weighted", "f1_weighted", "threshold", "fpr_at_threshold",
        "tpr_at_threshold", "eer", *(tpr_key(f) for f in FPR_POINTS), "oracle_accuracy", "nll", "ece", "conf_all",
        "conf_correct", "conf_incorrect", "mean_spread", "seconds_per_image")


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
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    pool = [replace(s, split="") for s in samples if s.split in ("train", "val")]
    test = [s for s in samples if s.split == "test"]
    if not pool:
        raise ValueError("no training images (train + val is empty)")
    carved = assign_splits(pool, (1.0 - val_fraction, val_fraction, 0.0), seed)
    if not any(s.split == "val" for s in carved):  # tiny data: make sure model selection has something
        first = carved[0].group
        carved = [replace(s, split="val") if s.group == first else s for s in carved]
    out = carved + test
    check_no_leak(out)
    return out


def write_manifest(samples: Sequence[Sample], path: Path, class_names: Sequence[str]) -> Path:
    """A manifest (absolute paths) that ``glassdetect train``/``evaluate`` read with its splits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "group", "generator", "split"])
        for s in samples:
            w.writerow([s.path, class_names[s.label], s.group, s.generator, s.split])
    return path


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
    seeds: Sequence[int] = (100, 200, 300, 400, 500),
    val_fraction: float = 0.1,
    split_seed: int | None = None,
    draws: int = 1,
    overrides: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> dict:
    """Train and test one configuration under several seeds; returns what ``OUT/final.json`` holds."""
    from .evaluate import evaluate
    from .train import TrainConfig, train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    opts = {**load_config(config), **(overrides or {})}
    opts.update(data=str(data), out=str(out), resume=False)
    base = TrainConfig.from_dict(opts)  # validates the keys
    split_seed = base.seed if split_seed is None else split_seed
    samples = load_samples(data, base.class_names)
    if not samples:
        raise ValueError(f"{data}: no images found")
    fixed = fixed_split(samples, base.split_fractions, split_seed)
    name = name or f"{base.arch} · {base.backbone}" + (f" · K={base.k}" if base.arch == "glass" else "")

    runs: list[dict] = []
    for seed in seeds:
        run_dir = out / f"seed-{seed}"
        test_json = run_dir / "test.json"
        if test_json.is_file():
            res = json.loads(test_json.read_text())
        else:
            manifest = write_manifest(carve_validation(fixed, val_fraction, seed), run_dir / "data.csv",
                                      base.class_names)
            resume = (run_dir / "last" / "trainer_state.pt").is_file()
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
        "draws": draws, "std": "sample standard deviation over seeds (ddof=1)",
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
        f"train + val merged, {result['val_fraction']:.0%} carved out per seed for model selection; "
        f"mean ± sample std over seeds.\n\n"
        + markdown_table({result["name"]: result["aggregate"]}, metrics, name_header="model")
        + "\n## Per seed\n\n"
        + per_run_table(result["runs"], metrics)
    )
