"""Recipe pilot on benchmark version 3: which training levers make GLASS learn the generator,
judged on the *validation* split only — on validation photos paired with the training families
and, separately, with a family left out of training. The test split is never read here.

    python benchmarks/v3-pilot/pilot.py --data runs/bench-v3-pilot/manifest.csv --out runs/v3-pilot \\
        --configs base,crop,residual --seeds 0 --epochs 6

Each configuration is a set of TrainConfig overrides on top of :data:`BASE` (the demo's recipe on
EfficientNet-Lite0 with the offline ImageNet weights, plus training windows drawn afresh each epoch
from the benchmark's whole-region pairs). For every run the best checkpoint (by validation accuracy,
as in every run) is evaluated on the validation split; AUC is reported over all validation images and
per value of the manifest's ``history``, ``family`` and ``family_seen`` columns, by the demo's rule: a
value's fakes against the reals of the same pairs (a version-3 real carries its partner's family). Writes OUT/pilot.json and OUT/pilot.md.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from glassdetect.evaluation.evaluate import evaluate
from glassdetect.studies.demo import per_groups
from glassdetect.training.train import TrainConfig, train

WINDOW = "window:side=1024-1536"
BASE = TrainConfig(arch="glass", backbone="efficientnet_lite0", pretrained=False,
                   weights="offline:efficientnet_lite0.pypi_in1k", k=4, batch_size=8, lr_global=1e-4,
                   lr_local=1e-4, lr_head=1e-3, dropout=0.1, freeze=2, augment=f"{WINDOW}+standard", progress=False)
V3 = {"local_input": "residual", "freeze": 0, "augment": WINDOW, "cpu_amp": True}  # the demo's version-3 recipe
# name -> overrides of BASE; trained in the order given by --configs
CONFIGS: dict[str, dict] = {
    "base": {},
    "baseline": {"arch": "standard"},
    "crop": {"crop_loss": 0.5},
    "residual": {"local_input": "residual"},
    "crop+residual": {"crop_loss": 0.5, "local_input": "residual"},
    "unfrozen": {"freeze": 0},
    "residual-unfrozen": {"local_input": "residual", "freeze": 0},
    "crop+residual-unfrozen": {"local_input": "residual", "freeze": 0, "crop_loss": 0.5},
    "residual-unfrozen-accum2": {"local_input": "residual", "freeze": 0, "batch_size": 4, "accum": 2},  # half the activations
    "residual-unfrozen-lr3x": {"local_input": "residual", "freeze": 0, "lr_global": 3e-4, "lr_local": 3e-4, "lr_head": 3e-3},
    "lr3x": {"lr_global": 3e-4, "lr_local": 3e-4, "lr_head": 3e-3},
    "no-augment": {"augment": WINDOW},
    "residual-unfrozen-noaug": {"local_input": "residual", "freeze": 0, "augment": WINDOW},
    "residual-unfrozen-mild": {"local_input": "residual", "freeze": 0, "augment": f"{WINDOW}+mild"},
    "residual-unfrozen-noaug-bf16": {"local_input": "residual", "freeze": 0, "augment": WINDOW, "cpu_amp": True},
    "residual-unfrozen-jpeg": {"local_input": "residual", "freeze": 0, "augment": f"{WINDOW}+jpeg:q=50-100,p=0.5"},
    "k8": {"k": 8},
    # the demo's version-3 recipe (residual local input, unfrozen, no augmentation, bf16 steps) plus one lever
    "v3-k8": {**V3, "k": 8},
    "v3-hessian": {**V3, "local_input": "hessian"},
    "v3-ema": {**V3, "ema": 0.95},
    "v3-paired": {**V3, "paired": True},  # a real and its fake side by side in a batch, same window and crops
    "v3-paired-rank": {**V3, "paired": True, "pair_loss": 1.0},  # + each fake ranked above its own real
    # the local backbone cut after its first feature levels (3: stride 8, 40 channels; 4: stride 16, 112)
    "v3-depth3": {**V3, "local_depth": 3},
    "v3-depth4": {**V3, "local_depth": 4},
    "v3-bneval": {**V3, "bn_eval": True},  # BatchNorm on its running statistics in training too
    "v3-depth4-bneval": {**V3, "local_depth": 4, "bn_eval": True},
    "v3-reg": {**V3, "dropout": 0.3, "wd_global": 0.05, "wd_local": 0.05, "wd_head": 0.05},
    # crops and training windows on multiples of 12: every crop at the same phase of the upscaler's pattern
    "residual-unfrozen-align12": {"local_input": "residual", "freeze": 0, "crop_align": 12,
                                  "augment": "window:side=1024-1536,align=12+standard"},
    "residual-unfrozen-align12-noaug": {"local_input": "residual", "freeze": 0, "crop_align": 12,
                                        "augment": "window:side=1024-1536,align=12"},
}


def grouped_auc(predictions_csv: Path, manifest: Path, overall: float) -> dict:
    """AUC overall and per value of each grouping column, by the demo's rule
    (:func:`glassdetect.studies.demo.per_groups`: a value's fakes against its own pairs' reals)."""
    groups = per_groups(predictions_csv, manifest)
    return {"all": overall, **{f"{col}={v}": m["auc"] for col, vals in groups.items() for v, m in vals.items()}}


def run_one(name: str, seed: int, a: argparse.Namespace) -> dict:
    out = a.out / name / f"seed{seed}"
    cfg = replace(BASE, data=str(a.data), out=str(out), epochs=a.epochs, seed=seed, workers=a.workers,
                  threads=a.threads, device=a.device, **CONFIGS[name])
    t0 = time.perf_counter()
    summary = train(cfg)
    train_s = time.perf_counter() - t0
    res = evaluate(out / "best", a.data, split="val", out=out / "val.json", workers=a.workers,
                   device=a.device, threads=a.threads, progress=False)
    aucs = grouped_auc(out / "val.predictions.csv", a.data, res["auc"])
    hist = summary["history"]
    return {"config": name, "overrides": CONFIGS[name], "seed": seed, "val_auc": aucs,
            "val_real_acc": res.get("real_accuracy"), "val_fake_acc": res.get("fake_accuracy"),
            "best_epoch": max(hist, key=lambda h: h["val_accuracy"])["epoch"],
            "val_auc_by_epoch": [h.get("val_auc") for h in hist], "train_seconds": train_s}


def markdown(runs: list[dict]) -> str:
    keys = sorted({k for r in runs for k in r["val_auc"]}, key=lambda k: (k != "all", k))
    lines = ["| config | seed | " + " | ".join(keys) + " | best epoch | val AUC by epoch | train s |",
             "|---" * (5 + len(keys)) + "|"]
    fmt = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
    for r in runs:
        lines.append(f"| {r['config']} | {r['seed']} | " + " | ".join(fmt(r["val_auc"].get(k)) for k in keys)
                     + f" | {r['best_epoch']} | {' '.join(fmt(x) for x in r['val_auc_by_epoch'])} | {r['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True, help="the version-3 manifest")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--configs", default="base,crop,residual")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--budget", type=float, default=3600.0, help="seconds; no new run starts after this")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    t0, runs = time.perf_counter(), []
    for seed in (int(s) for s in a.seeds.split(",")):
        for name in a.configs.split(","):
            if time.perf_counter() - t0 > a.budget:
                print(f"[pilot] budget reached, skipping {name} seed {seed}", flush=True)
                continue
            runs.append(run_one(name, seed, a))
            print(f"[pilot] {name} seed {seed}: " + " ".join(f"{k}={v:.3f}" for k, v in runs[-1]["val_auc"].items()
                                                                if v is not None), flush=True)
            (a.out / "pilot.json").write_text(json.dumps(runs, indent=2))
            (a.out / "pilot.md").write_text(markdown(runs))
    print(markdown(runs), flush=True)


if __name__ == "__main__":
    main()
