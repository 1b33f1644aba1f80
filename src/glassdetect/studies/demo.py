"""The offline demo: GLASS vs the resize-only baseline on real camera photos vs neural
super-resolution fakes, on genuinely pretrained EfficientNet-Lite0 weights, several seeds.

    glassdetect demo --size small --seeds 0,1,2 --out runs/demo

Steps (each resumable: a rerun skips finished work):
1. build the offline benchmark (``glassdetect data build-offline-bench``; version 2: both members
   of every pair share their pixel history) and audit it (``glassdetect data audit``);
2. choose the training augmentation on the *validation* split: GLASS is trained with each
   candidate (first seed only) and the candidate with the best mean validation AUC over clean
   and degraded validation images wins; never the test split;
3. train both models for every seed with that augmentation, on the same data, epochs and backbone;
4. evaluate each best checkpoint on the clean test split (95 % bootstrap interval of the AUC over
   source photos) and under the robustness sweep (``glassdetect robustness``);
5. write ``OUT/results.json``, ``OUT/results.md`` (+ the sweep's plots) and print the tables.

Model selection uses the validation split only; the test split is touched once per checkpoint
and degradation.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..evaluation.evaluate import clear_cached, evaluate
from ..evaluation.report import aggregate, format_mean_std as _pm
from ..training.train import TrainConfig, train
from ..training.config import Recipe

ARCHS = ("glass", "standard")
TABLE_METRICS = ("accuracy", "real_accuracy", "fake_accuracy", "auc", "ap", "ece")


@dataclass
class DemoConfig(Recipe):  # the training recipe's fields (train_config.Recipe), then the demo's own
    # The version-3 recipe that the validation pilot chose (benchmarks/v3-pilot/results.md: unfrozen
    # backbones with the residual local input led on the left-out family, 0.657 vs 0.605 for the
    # version-2 recipe; validation AUC peaks by epoch 3 of 5; no augmentation beyond the fresh window:
    # 0.720 vs 0.682 with `standard`, also ahead under JPEG q75 and `social`); ``VERSION_DEFAULTS[2]``
    # restores version 2's. Sixth pass: GLASS's local backbone cut after its 4th feature level (stride
    # 16, 112 channels; ``local_depth``) with 10 epochs: its validation AUC still climbs after epoch 5,
    # where the whole backbone's has stalled (10 epochs of the whole backbone: 0.725, seed 0).
    epochs: int = 10
    freeze: int = 0
    local_input: str = "residual"
    local_depth: int = 4
    out: str = "runs/demo"
    size: str = "pilot"  # version 3: pilot (fits the demo's hour on two vCPUs, build included), small, full
    bench: str | None = None  # default OUT/bench
    bench_seed: int = 0
    # Benchmark version: 2 (crop pairs, two histories, eight generators of two families) or 3 (whole
    # regions, four histories + shared post-processing, six families, two of them left out of training:
    # validation and test each pair every window with a training family and with a left-out one).
    bench_version: int = 3
    heldout_families: tuple[str, ...] | None = None  # version 3: (validation, test); None = the builder's default
    # Version 3 trains on whole-region pairs: every epoch cuts a fresh window of this size from each
    # (a degradation step put in front of the chosen augmentation; validation and test are fixed windows).
    window: str = "window:side=1024-1536"
    reference: bool = True  # score the training-free 2x2-phase reference detector on the same test images
    seeds: tuple[int, ...] = (0, 1, 2)
    bootstrap: int = 1000
    archs: tuple[str, ...] = ARCHS
    # Training augmentation: chosen among the candidates on the validation split (clean and the
    # degradations of ``select_sweep``), unless ``augment`` names one.
    # Version 3: none (the pilot's choice: blur and JPEG augmentation cost 0.04 of validation AUC, clean
    # and degraded; benchmarks/v3-pilot/results.md). None: choose among the candidates.
    augment: str | None = "none"
    augment_candidates: tuple[str, ...] = ("mild", "standard")
    select_sweep: str = "jpeg:q=75;social;blur:sigma=1"
    sweep: str = "demo"  # the robustness sweep on the test split
    # Decision rule: temperature and threshold fitted on the validation split, the threshold so that
    # at most this share of the validation reals is called fake (None: keep 0.5, the argmax).
    target_fpr: float | None = 0.1
    extra: dict = field(default_factory=dict)

    def train_config(self, arch: str, seed: int, data: Path, augment: str = "none") -> TrainConfig:
        return TrainConfig(
            data=str(data), out=str(Path(self.out) / arch / _slug(augment) / f"seed{seed}"), arch=arch,
            augment=self.training_augment(augment), seed=seed, resume=True, **self.recipe_fields(), **self.extra,
        )

    def training_augment(self, augment: str) -> str:
        """The augmentation a run trains with: version 3 cuts its window first."""
        if self.bench_version < 3 or not self.window:
            return augment
        return self.window if augment in ("", "none") else f"{self.window}+{augment}"


# Each benchmark version's recipe where it differs from DemoConfig's (version 3's) defaults:
# version 2 keeps the recipe of the version-2 demo (the README's earlier tables).
VERSION_DEFAULTS: dict[int, dict] = {
    2: {"size": "small", "epochs": 7, "freeze": 2, "local_input": "rgb", "local_depth": 0, "augment": None,
        "cpu_amp": False},
    3: {},
}


def demo_config(bench_version: int = 3, **overrides) -> DemoConfig:
    """The demo's configuration for ``bench_version``: its recipe (:data:`VERSION_DEFAULTS`), the
    runtime that uses the machine (:func:`glassdetect.training.config.fast_recipe`: every CPU for torch
    and one decode worker, or decode workers beside a GPU), then ``overrides``
    (``augment="select"``: choose it on validation among ``augment_candidates``)."""
    from ..training.config import fast_recipe

    if bench_version not in VERSION_DEFAULTS:
        raise ValueError(f"demo: benchmark version {bench_version} (choose from {sorted(VERSION_DEFAULTS)})")
    given = dict(overrides)
    if given.get("augment") == "select":  # choose among the candidates on validation
        given["augment"] = None
    fast = fast_recipe(device=given.get("device", "auto"))
    runtime = {"threads": fast.threads, "workers": fast.workers, "cpu_amp": fast.cpu_amp}
    return DemoConfig(bench_version=bench_version, **{**runtime, **VERSION_DEFAULTS[bench_version], **given})


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text) or "none"


def _log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _train_once(tc: TrainConfig) -> dict:
    """Train unless an identical finished run exists; resume an interrupted one."""
    summary = Path(tc.out) / "summary.json"
    if summary.exists():
        done = json.loads(summary.read_text())
        if done.get("epochs") == tc.epochs and len(done.get("history", [])) == tc.epochs:
            _log(f"{tc.out}: already trained, skipping")
            return done
    clear_cached()  # the last evaluated model goes before the training's peak (train() then hands it back)
    return train(tc)


def _calibrate_once(ckpt: Path, data: Path, cfg: DemoConfig) -> None:
    """Temperature and threshold on the validation split, stored in the checkpoint (once per checkpoint;
    the evaluation records the threshold and temperature it used)."""
    if cfg.target_fpr is None:
        return
    from ..evaluation.calibrate import calibrate

    done = json.loads((ckpt / "config.json").read_text()).get("calibration") or {}
    if done.get("target_fpr") != cfg.target_fpr or done.get("split") != "val":
        calibrate(ckpt, data, "val", workers=cfg.workers, device=cfg.device, threads=cfg.threads,
                  progress=False, target_fpr=cfg.target_fpr)


def _eval_once(ckpt: Path, data: Path, out: Path, cfg: DemoConfig) -> dict:
    model_cfg = json.loads((ckpt / "config.json").read_text())["model"]
    if out.exists():
        old = json.loads(out.read_text())
        if old.get("checkpoint") == str(ckpt) and old.get("threshold") == model_cfg.get("threshold") \
                and old.get("temperature") == model_cfg.get("temperature"):
            return old
    res = evaluate(ckpt, data, split="test", out=out, workers=cfg.workers, device=cfg.device, threads=cfg.threads,
                   bootstrap=cfg.bootstrap, seed=0, progress=True)
    res.update(threshold=model_cfg.get("threshold"), temperature=model_cfg.get("temperature"))
    out.write_text(json.dumps(res, indent=2))
    return res


def _build(bench: Path, cfg: DemoConfig) -> Path:
    from .offline_bench import build_offline_bench
    from .offline_bench.v3 import build_offline_bench_v3

    if cfg.bench_version == 3:
        kw = {"heldout": tuple(cfg.heldout_families)} if cfg.heldout_families else {}
        # the super-resolvers run one thread per process: one process per CPU (~1.7 GB each)
        return build_offline_bench_v3(bench, cfg.size, cfg.bench_seed, workers=os.cpu_count() or 1, **kw)
    if cfg.bench_version != 2:
        raise ValueError(f"demo: benchmark version {cfg.bench_version} (2 or 3)")
    return build_offline_bench(bench, cfg.size, cfg.bench_seed)


def _reference_once(data: Path, out: Path, cfg: DemoConfig) -> dict | None:
    """The training-free reference detector on the test split (threshold from the validation reals)."""
    if not cfg.reference:
        return None
    if out.exists():
        return json.loads(out.read_text())
    from ..evaluation.reference import evaluate_reference

    res = evaluate_reference(data, "test", out=out, target_fpr=cfg.target_fpr or 0.1)
    res["per_group"] = per_groups(out.with_suffix(".predictions.csv"), data, res.get("threshold") or 0.5)
    out.write_text(json.dumps(res, indent=2))
    return res


def run_demo(cfg: DemoConfig) -> dict:
    from ..data.audit import audit, format_report
    from .offline_bench import BENCH_VERSION
    from ..evaluation.robustness import robustness

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    t_start = time.perf_counter()
    bench = Path(cfg.bench) if cfg.bench else out / "bench"
    _log(f"1/5 building the {cfg.size} offline benchmark in {bench}")
    meta_path = bench / "bench.json"
    if cfg.bench and meta_path.exists() and json.loads(meta_path.read_text()).get("status") == "complete":
        manifest = bench / "manifest.csv"  # a finished benchmark given by the caller: used as it is
    else:
        manifest = _build(bench, cfg)
    bench_meta = json.loads(meta_path.read_text())
    timings = {"build_s": time.perf_counter() - t_start}

    _log("1/5 auditing the benchmark for properties that separate the classes")
    report = audit(manifest, progress=False)
    audit_json = report.to_json()
    (out / "audit.json").write_text(json.dumps(audit_json, indent=2, default=str))
    audit_md = format_report(report)
    (out / "audit.md").write_text(audit_md)
    print(audit_md)
    timings["audit_s"] = time.perf_counter() - t_start - timings["build_s"]

    t0 = time.perf_counter()
    selection = select_augment(cfg, manifest)
    chosen = selection["chosen"]
    timings["select_s"] = time.perf_counter() - t0
    _log(f"2/5 augmentation chosen on validation: {chosen!r}")

    per_run: dict[str, list[dict]] = {a: [] for a in cfg.archs}
    train_s: dict[str, list[float]] = {a: [] for a in cfg.archs}
    ckpts: dict[str, list[str]] = {a: [] for a in cfg.archs}
    n_runs, done = len(cfg.archs) * len(cfg.seeds), 0
    for seed in cfg.seeds:
        for arch in cfg.archs:
            done += 1
            tc = cfg.train_config(arch, seed, manifest, chosen)
            _log(f"3/5 training {arch} seed {seed} ({done}/{n_runs}), {cfg.epochs} epochs, augment {chosen!r}")
            summary = _train_once(tc)  # train() hands freed memory back before and after the run
            train_s[arch].append(sum(h["seconds"] for h in summary["history"]))
            ckpt = Path(tc.out) / "best"
            ckpts[arch].append(str(ckpt))
            _calibrate_once(ckpt, manifest, cfg)
            res = _eval_once(ckpt, manifest, Path(tc.out) / "eval_clean.json", cfg)
            res["seed"] = seed
            res["best_epoch"] = json.loads((ckpt / "config.json").read_text())["epoch"]
            groups = per_groups(Path(tc.out) / "eval_clean.predictions.csv", manifest, res.get("threshold") or 0.5)
            res.update({f"per_{col}": g for col, g in groups.items()})
            per_run[arch].append(res)
            _log(f"4/5 {arch} seed {seed} clean test: AUC {res['auc']:.3f} acc {res['accuracy']:.3f}")

    _log(f"4/5 robustness sweep {cfg.sweep!r} on the test split")
    sweep = robustness(ckpts, manifest, out / "robustness", sweep=cfg.sweep, split="test", workers=cfg.workers,
                       device=cfg.device, threads=cfg.threads, progress=False, log=_log)
    results = summarise(per_run, train_s)
    reference = _reference_once(manifest, out / "reference" / "test.json", cfg)
    if reference is not None:
        results["reference"] = {k: reference.get(k) for k in ("auc", "ap", "accuracy", "real_accuracy", "fake_accuracy",
                                                               "per_generator", "per_group", "threshold", "arch")}
    timings["total_s"] = time.perf_counter() - t_start
    results["robustness"] = sweep
    results["audit"] = {"verdict": audit_json.get("verdict"), "flags": audit_json.get("flags")}
    results["augment_selection"] = selection
    results["meta"] = {"config": asdict(cfg), "timings": timings, "version": bench_meta.get("version", 1),
                       "code_bench_version": BENCH_VERSION,
                       "bench": bench_meta.get("counts") or bench_meta.get("pairs"),  # version 2 | version 3
                       "histories": bench_meta.get("histories") or bench_meta.get("pairs_by_history"),
                       "heldout": bench_meta.get("heldout")}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    md = markdown(results, cfg)
    (out / "results.md").write_text(md)
    print(md)
    _log(f"5/5 done in {timings['total_s'] / 60:.1f} min → {out / 'results.json'}")
    return results


def select_augment(cfg: DemoConfig, manifest: Path) -> dict:
    """Train GLASS (first seed) with each candidate augmentation and pick the one with the best
    mean validation AUC over the clean validation split and ``cfg.select_sweep``'s degradations."""
    from ..evaluation.robustness import robustness

    if cfg.augment is not None:
        return {"chosen": cfg.augment, "candidates": {}, "note": "given, not selected"}
    seed = cfg.seeds[0]
    ckpts = {}
    for cand in cfg.augment_candidates:
        tc = cfg.train_config("glass", seed, manifest, cand)
        _log(f"2/5 selection: training glass seed {seed} with augment {cand!r}")
        _train_once(tc)
        ckpts[cand] = [str(Path(tc.out) / "best")]
    res = robustness(ckpts, manifest, Path(cfg.out) / "select", sweep=cfg.select_sweep, split="val",
                     workers=cfg.workers, device=cfg.device, threads=cfg.threads, progress=False, log=_log)
    scores = {}
    for cand in cfg.augment_candidates:
        aucs = [v["auc"]["mean"] for v in res["models"][cand]["points"].values()]
        scores[cand] = {"mean_val_auc": float(sum(aucs) / len(aucs)), "val_auc": aucs}
    chosen = max(cfg.augment_candidates, key=lambda c: scores[c]["mean_val_auc"])  # ties: the first listed
    return {"chosen": chosen, "candidates": scores, "sweep": cfg.select_sweep, "seed": seed, "split": "val"}


GROUP_COLUMNS = ("history", "family", "family_seen", "package")  # manifest columns reported per value when present


def per_groups(predictions_csv: Path, manifest: Path, threshold: float = 0.5,
               columns: tuple[str, ...] = GROUP_COLUMNS) -> dict[str, dict[str, dict]]:
    """AUC and accuracies (at ``threshold``) per value of each manifest column in ``columns`` that the
    manifest has (``history``: pixel history; version 3's ``family`` and ``family_seen``, which a real
    row takes from its fake partner, so each value's rows are exactly its own pairs)."""
    import csv

    import numpy as np

    from ..evaluation.metrics import binary_metrics

    base = manifest.parent
    with open(manifest, newline="") as fh:
        meta = {str((base / r["path"]).resolve()): r for r in csv.DictReader(fh)}
    with open(predictions_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out: dict[str, dict[str, dict]] = {}
    for col in columns:
        value = {r["path"]: (meta.get(str(Path(r["path"]).resolve())) or {}).get(col) or "" for r in rows}
        for v in sorted(set(value.values()) - {""}):
            sel = [r for r in rows if value[r["path"]] == v]
            prob = np.array([float(r["fake_probability"]) for r in sel])
            labels = np.array([int(r["label"] == "fake") for r in sel])
            m = binary_metrics(prob, labels, threshold)
            out.setdefault(col, {})[v] = {k: m.get(k) for k in ("n", "auc", "accuracy", "real_accuracy", "fake_accuracy")}
    return out


def per_history(predictions_csv: Path, manifest: Path, threshold: float = 0.5) -> dict[str, dict]:
    """AUC and accuracies (at ``threshold``) per pixel history (``history`` column of a version-2/3 manifest)."""
    return per_groups(predictions_csv, manifest, threshold, ("history",)).get("history", {})


def _numeric(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def summarise(per_run: dict[str, list[dict]], train_s: dict[str, list[float]]) -> dict:
    """results[arch]["clean"] = {metric: {"mean", "std", "values"}, "per_generator", "per_history", "per_seed"}."""
    results: dict = {}
    for arch, runs in per_run.items():
        agg = aggregate([_numeric(r) for r in runs])
        for key in ("per_generator", *(f"per_{c}" for c in GROUP_COLUMNS)):
            names = sorted({g for r in runs for g in r.get(key) or {}})
            agg[key] = {g: aggregate([_numeric(r[key][g]) for r in runs if g in (r.get(key) or {})]) for g in names}
        agg["per_seed"] = [{"seed": r["seed"], "auc": r["auc"], "auc_ci95": r.get("auc_ci95"),
                            "accuracy": r["accuracy"], "best_epoch": r["best_epoch"]} for r in runs]
        results[arch] = {"clean": agg, "train_seconds": aggregate([{"s": s} for s in train_s[arch]])["s"]}
    return results


_GROUP_TITLES = {
    "family_seen": "Generator family seen in training (`yes`) or left out of it (`no`)",
    "family": "Per generator family (a family's fakes against their own pairs' reals)",
    "history": "Per pixel history",
    "package": "Per photo package (the test photos of each; not leave-one-package-out: every package is in training too)",
}


def _group_tables(results: dict, archs: list[str]) -> list[str]:
    """AUC and real accuracy per value of each grouping column, for every model and the reference."""
    ref = (results.get("reference") or {}).get("per_group") or {}
    lines: list[str] = []
    for col in _GROUP_TITLES:  # the report's order
        values = sorted(results[archs[0]]["clean"].get(f"per_{col}") or {})
        if not values:
            continue
        lines += ["", f"{_GROUP_TITLES[col]} (clean test split; AUC | real accuracy at the stored threshold):", "",
                  "| model | " + " | ".join(f"{v} AUC | {v} real acc." for v in values) + " |",
                  "|---|" + "---|---|" * len(values)]
        for arch in archs:
            g = results[arch]["clean"][f"per_{col}"]
            lines.append(f"| {arch} | " + " | ".join(
                f"{_pm(g[v].get('auc'))} | {_pm(g[v].get('real_accuracy'))}" if v in g else "– | –" for v in values) + " |")
        if col in ref:
            g = ref[col]
            cell = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
            lines.append("| reference (2×2-phase, training-free) | " + " | ".join(
                f"{cell(g[v].get('auc'))} | {cell(g[v].get('real_accuracy'))}" if v in g else "– | –" for v in values) + " |")
    return lines


def markdown(results: dict, cfg: DemoConfig) -> str:
    from ..evaluation.robustness import markdown as sweep_markdown

    archs = [a for a in ARCHS if a in results]
    sel = results.get("augment_selection", {})
    lines = [
        f"Benchmark version {results.get('meta', {}).get('version')}; backbone {cfg.backbone} ({cfg.weights}), "
        f"K = {cfg.k}, local input `{cfg.local_input}`, "
        f"{f'local backbone cut after feature level {cfg.local_depth}, ' if cfg.local_depth else ''}"
        f"{cfg.freeze} parameter groups frozen, {cfg.epochs} epochs, "
        f"batch {cfg.batch_size}{', bf16 CPU training steps' if cfg.cpu_amp else ''}, training augmentation `{sel.get('chosen')}` "
        f"({'chosen on validation' if sel.get('candidates') else 'given'}), seeds {', '.join(map(str, cfg.seeds))}; mean ± std over seeds; test split "
        "(source photos never seen in training); accuracies at each checkpoint's stored threshold ("
        + (f"temperature and threshold fitted on the validation split, at most {cfg.target_fpr:.0%} of its reals "
           "called fake" if cfg.target_fpr is not None else "0.5") + ").",
        "",
        "| model | accuracy | real acc. | fake acc. | AUC | AP | ECE | inference s/image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arch in archs:
        r = results[arch]["clean"]
        lines.append(f"| {arch} | " + " | ".join(_pm(r.get(m)) for m in TABLE_METRICS)
                     + f" | {_pm(r.get('seconds_per_image'), 3)} |")
    gens = sorted(results[archs[0]]["clean"]["per_generator"])
    lines += ["", "AUC per generator (clean test split; all real test images vs that generator's fakes):", "",
              "| model | " + " | ".join(gens) + " |", "|---|" + "---|" * len(gens)]
    for arch in archs:
        pg = results[arch]["clean"]["per_generator"]
        lines.append(f"| {arch} | " + " | ".join(_pm(pg[g].get("auc")) if g in pg else "–" for g in gens) + " |")
    lines += _group_tables(results, archs)
    lines += ["", "AUC per seed with a 95 % bootstrap interval over source photos:", "",
              "| model | " + " | ".join(f"seed {s}" for s in cfg.seeds) + " |", "|---|" + "---|" * len(cfg.seeds)]
    for arch in archs:
        cells = []
        for ps in results[arch]["clean"]["per_seed"]:
            ci = ps.get("auc_ci95")
            cells.append(f"{ps['auc']:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{ps['auc']:.3f}")
        lines.append(f"| {arch} | " + " | ".join(cells) + " |")
    if results.get("robustness"):
        lines += ["", f"Robustness sweep `{cfg.sweep}` (test split, both classes degraded identically, "
                  "whole image before the views):", "", sweep_markdown(results["robustness"])]
    if sel.get("candidates"):
        lines += ["", f"Augmentation selection (GLASS, seed {sel.get('seed')}, validation split; clean + "
                  f"`{sel.get('sweep')}`):", "", "| candidate | mean val AUC | val AUC per point |", "|---|---|---|"]
        for cand, sc in sel["candidates"].items():
            lines.append(f"| {cand}{' (chosen)' if cand == sel['chosen'] else ''} | {sc['mean_val_auc']:.3f} | "
                         + ", ".join(f"{a:.3f}" for a in sc["val_auc"]) + " |")
    if results.get("audit"):
        a = results["audit"]
        lines += ["", f"Shortcut audit of the benchmark: {a.get('verdict')}"]
    lines += ["", "Training time per run (s): " + ", ".join(f"{a} {_pm(results[a]['train_seconds'], 0)}" for a in archs), ""]
    return "\n".join(lines)
