"""Recipe pilot: which training augmentation (and freezing) generalises best, judged on the
offline benchmark's *validation* split only (clean and degraded), with several seeds.

Builds the version-2 offline benchmark from given photo and model files (no registry needed, so
it runs on a machine without network, e.g. a lent GPU), then trains GLASS (EfficientNet-Lite0,
the demo's settings) once per (configuration, seed) and evaluates each best checkpoint on the
validation split under the sweep ``--sweep``. The test split is never evaluated here.

    python benchmarks/recipe/pilot.py --photos DIR --models DIR --weights lite0.safetensors \\
        --out runs/pilot --device cuda --workers 14 --budget 420

``--photos``: a folder holding ``<package>/<path inside the package>`` for every photo of
``glassdetect.studies.offline_bench.PHOTOS``; ``--models``: the generators' ``<name>.param``/``.bin``.
Writes ``OUT/pilot.json`` and ``OUT/pilot.md``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from glassdetect.studies import offline_bench as ob
from glassdetect.evaluation.robustness import robustness
from glassdetect.training.train import TrainConfig, train

# (name, augment spec, freeze); trained in this order until the time budget runs out
CONFIGS = [
    ("none", "none", 2),
    ("standard", "standard", 2),
    ("light", "resize:f=0.5-1,p=0.3+jpeg:q=60-100,p=0.5", 2),
    ("strong", "strong", 2),
    ("mild", "resize:f=0.5-1,p=0.3+blur:sigma=0-1.5,p=0.3+jpeg:q=50-100,p=0.5", 2),
    ("light-f0", "resize:f=0.5-1,p=0.3+jpeg:q=60-100,p=0.5", 0),
    ("standard-f0", "standard", 0),
    ("mild-f0", "resize:f=0.5-1,p=0.3+blur:sigma=0-1.5,p=0.3+jpeg:q=50-100,p=0.5", 0),
]


def build(photos_dir: Path, models_dir: Path, out: Path, threads: int, quick: bool) -> Path:
    spec = ob.SPECS["small"]
    refs = spec.photos[::6] if quick else spec.photos
    photos = [ob.photo_from_file(r, photos_dir / r.package / r.path) for r in refs]
    ups = {}
    for g in spec.generators:
        gen = ob.GENERATORS[g]
        runner = ob.NcnnRunner(models_dir / f"{g}.param", models_dir / f"{g}.bin", num_threads=threads)
        ups[g] = ob.Upscaler(g, gen.scale, lambda a, r=runner, s=gen.scale: ob.tiled_upscale(a, r, s, spec.tile, spec.tile_pad))
    return ob.build_bench(out, photos, spec, 0, ups, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=Path, required=True)
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--configs", default="", help="comma-separated config names (default: all, in order)")
    ap.add_argument("--sweep", default="jpeg:q=75;social;blur:sigma=1;resize:f=0.5")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds; no new run starts after this")
    ap.add_argument("--quick", action="store_true", help="a few photos, for a smoke test")
    a = ap.parse_args()
    t0 = time.perf_counter()
    a.out.mkdir(parents=True, exist_ok=True)
    manifest = build(a.photos, a.models, a.out / "bench", max(1, a.threads or 8), a.quick)
    print(f"[pilot] bench built in {time.perf_counter() - t0:.0f} s", flush=True)
    names = [n for n in a.configs.split(",") if n] or [c[0] for c in CONFIGS]
    configs = [c for c in CONFIGS if c[0] in names]
    seeds = [int(s) for s in a.seeds.split(",")]
    results: dict = {"sweep": a.sweep, "epochs": a.epochs, "seeds": seeds, "split": "val", "runs": {}}
    for seed in seeds:  # seed-major: every configuration gets the first seed before any gets a second
        for name, aug, freeze in configs:
            if time.perf_counter() - t0 > a.budget:
                print(f"[pilot] budget reached, skipping {name} seed {seed}", flush=True)
                continue
            t1 = time.perf_counter()
            tc = TrainConfig(data=str(manifest), out=str(a.out / name / f"seed{seed}"), arch="glass",
                             backbone="efficientnet_lite0", pretrained=False, weights=a.weights, k=4,
                             epochs=a.epochs, batch_size=8, lr_global=1e-4, lr_local=1e-4, lr_head=1e-3,
                             wd_global=1e-4, wd_local=1e-4, wd_head=1e-4, dropout=0.1, freeze=freeze, seed=seed,
                             workers=a.workers, threads=a.threads, device=a.device, augment=aug, progress=False)
            summary = train(tc)
            rob = robustness({name: [str(Path(tc.out) / "best")]}, manifest, a.out / name / f"seed{seed}" / "val",
                             sweep=a.sweep, split="val", workers=a.workers, device=a.device, threads=a.threads,
                             progress=False, plots=False)
            pts = {k: v["auc"]["mean"] for k, v in rob["models"][name]["points"].items()}
            accs = {k: (v["real_accuracy"]["mean"], v["fake_accuracy"]["mean"])
                    for k, v in rob["models"][name]["points"].items()}
            run = {"augment": aug, "freeze": freeze, "seed": seed, "val_auc": pts, "val_real_fake_acc": accs,
                   "mean_val_auc": sum(pts.values()) / len(pts), "best_epoch": max(
                       summary["history"], key=lambda h: h["val_accuracy"])["epoch"],
                   "val_auc_by_epoch": [h.get("val_auc") for h in summary["history"]],
                   "seconds": time.perf_counter() - t1}
            results["runs"].setdefault(name, []).append(run)
            print(f"[pilot] {name} seed {seed}: mean val AUC {run['mean_val_auc']:.3f} "
                  + " ".join(f"{k}={v:.3f}" for k, v in pts.items()) + f" ({run['seconds']:.0f} s)", flush=True)
            (a.out / "pilot.json").write_text(json.dumps(results, indent=2))
    lines = ["| config | augment | freeze | seeds | mean val AUC | " + " | ".join(results["runs"][next(iter(results["runs"]))][0]["val_auc"]) + " |"]
    lines.append("|---" * (5 + len(results["runs"][next(iter(results["runs"]))][0]["val_auc"])) + "|")
    for name, runs in results["runs"].items():
        keys = list(runs[0]["val_auc"])
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        lines.append(f"| {name} | `{runs[0]['augment']}` | {runs[0]['freeze']} | {len(runs)} | "
                     f"{mean([r['mean_val_auc'] for r in runs]):.3f} | "
                     + " | ".join(f"{mean([r['val_auc'][k] for r in runs]):.3f}" for k in keys) + " |")
    (a.out / "pilot.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    print(f"[pilot] done in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
