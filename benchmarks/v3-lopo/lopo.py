"""Leave-one-package-out: train on two of the benchmark's three photo packages, test on the third.

    python benchmarks/v3-lopo/lopo.py --data runs/demo/bench/manifest.csv --out runs/lopo --seeds 0

For each package P (``lomiri``, ``mate``, ``plasma``: the Debian wallpaper packages the version-3
photos come from) a manifest OUT/P/manifest.csv that points at the benchmark's own files: train and
validation rows of the other two packages, test rows of P only (both its training-family and its
left-out-family pairs). GLASS and the resize-only baseline train on it with the demo's version-3
recipe (:func:`glassdetect.studies.demo.demo_config`: same model, optimisation, window, epochs,
best epoch by validation accuracy) and are evaluated on P's test pairs: AUC overall, on the training
families' pairs and on the left-out family's pairs (the demo's rule, a group's fakes against the
reals of its own pairs). The benchmark's photo split already keeps every photo in one split; this
also keeps every *package* out of training and model selection. Writes OUT/lopo.json and OUT/lopo.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

from glassdetect.evaluation.evaluate import evaluate
from glassdetect.studies.demo import demo_config, per_groups
from glassdetect.training.train import train

ARCHS = ("glass", "standard")


def package_manifest(manifest: Path, package: str, out: Path) -> Path:
    """OUT/manifest.csv: train/val rows of the other packages, test rows of ``package``; absolute paths."""
    with open(manifest, newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, list(reader)
    keep = [dict(r, path=str((manifest.parent / r["path"]).resolve())) for r in rows
            if (r["split"] == "test") == (r["package"] == package)]
    if not any(r["split"] == "test" for r in keep):
        raise ValueError(f"{manifest}: no test rows of package {package!r}")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(keep)
    return out / "manifest.csv"


def run_package(manifest: Path, package: str, seeds: list[int], a: argparse.Namespace) -> dict:
    data = package_manifest(manifest, package, a.out / package)
    cfg = demo_config(3, out=str(a.out / package), threads=a.threads, workers=a.workers)
    row: dict = {"package": package}
    for arch in ARCHS:
        per_seed = []
        for seed in seeds:
            tc = cfg.train_config(arch, seed, data)
            t0 = time.perf_counter()
            train(tc)
            res = evaluate(Path(tc.out) / "best", data, split="test", out=Path(tc.out) / "test.json",
                           workers=a.workers, threads=a.threads, progress=False)
            groups = per_groups(Path(tc.out) / "test.predictions.csv", data)
            per_seed.append({"seed": seed, "auc": res["auc"], "n": res["n"],
                             "training_families": groups["family_seen"]["yes"]["auc"],
                             "left_out": groups["family_seen"]["no"]["auc"], "seconds": time.perf_counter() - t0})
            print(f"[lopo] {package} {arch} seed {seed}: " + json.dumps(per_seed[-1]), flush=True)
        row[arch] = per_seed
    return row


def summary(runs: list[dict], key: str) -> str:
    vals = [r[key] for r in runs if r[key] is not None]
    if not vals:
        return "–"
    return f"{statistics.mean(vals):.3f}" + (f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else "")


def markdown(rows: list[dict]) -> str:
    lines = ["| test package | test images | GLASS AUC | GLASS training families | GLASS left-out family | baseline AUC "
             "| baseline training families | baseline left-out family |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g, s = r["glass"], r["standard"]
        lines.append(f"| {r['package']} | {g[0]['n']} | {summary(g, 'auc')} | {summary(g, 'training_families')} | "
                     f"{summary(g, 'left_out')} | {summary(s, 'auc')} | {summary(s, 'training_families')} | "
                     f"{summary(s, 'left_out')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True, help="a version-3 benchmark's manifest.csv")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--packages", default="lomiri,mate,plasma")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=0)
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    rows = []
    for package in a.packages.split(","):
        rows.append(run_package(a.data, package, seeds, a))
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "lopo.json").write_text(json.dumps(rows, indent=2))
        (a.out / "lopo.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
