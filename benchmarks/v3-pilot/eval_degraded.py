"""Robustness and noise reliance of trained checkpoints, on the validation split only.

    python benchmarks/v3-pilot/eval_degraded.py --data runs/bench-v3-pilot/manifest.csv --out runs/v3-evaldeg \\
        --degrade "jpeg:q=75;social" runs/v3-pilot/D/residual-unfrozen/seed0/best ...

For each checkpoint: the validation AUC (overall, training families, left-out family; the demo's rule,
:func:`glassdetect.studies.demo.per_groups`) clean and after each degradation (applied to both
classes, drawn per image from its content as every evaluation degradation is); and how much its score
follows the image's noise level: the Spearman correlation, within each class, between the fake
probability on the clean images and the Immerkær noise σ of the image (the audit's ``noise``
property). A detector that reads the noise level instead of the generator's trace scores smooth
images as fake whatever their class: a strongly negative correlation inside both classes. The test
split is never read. Writes OUT/eval_degraded.json and OUT/eval_degraded.md.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from glassdetect.data.audit.properties import noise_sigma
from glassdetect.evaluation.evaluate import evaluate
from glassdetect.studies.demo import per_groups


def noise_levels(predictions_csv: Path, cache: Path) -> dict[str, float]:
    """Immerkær σ (grey levels, BT.601 luma) of every image in a predictions CSV; cached in ``cache``."""
    known = json.loads(cache.read_text()) if cache.exists() else {}
    with open(predictions_csv, newline="") as f:
        paths = [r["path"] for r in csv.DictReader(f)]
    for p in paths:
        if p not in known:
            with Image.open(p) as im:
                known[p] = noise_sigma(np.asarray(im.convert("L"), dtype=np.float32))
    cache.write_text(json.dumps(known))
    return known


def spearman(x: list[float], y: list[float]) -> float:
    rx, ry = (np.argsort(np.argsort(v)).astype(float) for v in (x, y))
    return float(np.corrcoef(rx, ry)[0, 1])


def noise_reliance(predictions_csv: Path, noise: dict[str, float]) -> dict[str, float]:
    """Spearman(fake probability, noise σ) within each class."""
    by_class: dict[str, tuple[list, list]] = {}
    with open(predictions_csv, newline="") as f:
        for r in csv.DictReader(f):
            xs, ys = by_class.setdefault(r["label"], ([], []))
            xs.append(float(r["fake_probability"]))
            ys.append(noise[r["path"]])
    return {f"rho_{label}": spearman(xs, ys) for label, (xs, ys) in sorted(by_class.items())}


def summary(predictions_csv: Path, manifest: Path, overall: float) -> dict[str, float]:
    groups = per_groups(predictions_csv, manifest)
    seen = groups.get("family_seen", {})
    return {"all": overall, "seen": seen.get("yes", {}).get("auc"), "left_out": seen.get("no", {}).get("auc")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--degrade", default="jpeg:q=75;social", help="';'-separated degradation specs")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    specs = ["none"] + [s for s in a.degrade.split(";") if s]
    rows = []
    for ckpt in a.checkpoints:
        name = "/".join(ckpt.parts[-3:-1])
        row: dict = {"checkpoint": str(ckpt), "name": name}
        for spec in specs:
            res_path = a.out / name.replace("/", "_") / f"val_{spec.replace(':', '_').replace(',', '_')}.json"
            res_path.parent.mkdir(parents=True, exist_ok=True)
            if not res_path.exists():
                evaluate(ckpt, a.data, split="val", out=res_path, workers=0, device="cpu", threads=a.threads,
                         progress=False, degrade=None if spec == "none" else spec)
            res = json.loads(res_path.read_text())
            preds = res_path.with_suffix(".predictions.csv")
            row[spec] = summary(preds, a.data, res["auc"])
            if spec == "none":
                row.update(noise_reliance(preds, noise_levels(preds, a.out / "noise.json")))
        rows.append(row)
        print(f"[eval_degraded] {name}: " + json.dumps({k: v for k, v in row.items() if k != "checkpoint"}), flush=True)
        (a.out / "eval_degraded.json").write_text(json.dumps(rows, indent=2))
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["| checkpoint | " + " | ".join(f"{s} all / seen / left-out" for s in specs)
             + " | Spearman(score, noise) real / fake |", "|---" * (len(specs) + 2) + "|"]
    for r in rows:
        cells = [" / ".join(fmt(r[s][k]) for k in ("all", "seen", "left_out")) for s in specs]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {fmt(r.get('rho_real'))} / {fmt(r.get('rho_fake'))} |")
    (a.out / "eval_degraded.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
