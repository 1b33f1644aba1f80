"""Evaluation-time crop count and crop draws for trained GLASS checkpoints, on the validation split.

    python benchmarks/v3-pilot/eval_k.py --data runs/bench-v3-pilot/manifest.csv --out runs/v3-evalk \\
        --ks 4,8,16 --draws 1,4 runs/v3-pilot/D/residual-unfrozen/seed0/best ...

GLASS's attention pools any number of crops, so a checkpoint trained with K crops can be evaluated
with more: each (K, draws) point evaluates a copy of the checkpoint whose config names that K (the
weights file is linked, not copied); ``draws`` averages the probabilities of independent crop draws.
Reports the validation AUC overall and per ``family_seen`` / ``history`` value (the demo's rule,
:func:`glassdetect.studies.demo.per_groups`). The test split is never read. Writes OUT/eval_k.json
and OUT/eval_k.md.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from glassdetect.evaluation.evaluate import evaluate
from glassdetect.studies.demo import per_groups


def with_k(ckpt: Path, k: int, where: Path) -> Path:
    """A copy of ``ckpt`` (config rewritten, weights linked) whose model uses ``k`` crops."""
    cfg = json.loads((ckpt / "config.json").read_text())
    if cfg["model"]["arch"] != "glass":
        raise ValueError(f"{ckpt}: not a GLASS checkpoint")
    cfg["model"]["k"] = k
    where.mkdir(parents=True, exist_ok=True)
    (where / "config.json").write_text(json.dumps(cfg, indent=2))
    link = where / "model.safetensors"
    if not link.exists():
        os.symlink((ckpt / "model.safetensors").resolve(), link)
    return where


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--ks", default="4,8,16")
    ap.add_argument("--draws", default="1")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    rows = []
    for ckpt in a.checkpoints:
        name = "/".join(ckpt.parts[-3:-1])
        for k in (int(x) for x in a.ks.split(",")):
            for draws in (int(x) for x in a.draws.split(",")):
                where = a.out / name.replace("/", "_") / f"k{k}"
                res_path = where / f"val_d{draws}.json"
                if not res_path.exists():
                    t0 = time.perf_counter()
                    evaluate(with_k(ckpt, k, where / "ckpt"), a.data, split="val", draws=draws, out=res_path,
                             workers=0, device="cpu", threads=a.threads, progress=False)
                    print(f"[eval_k] {name} K={k} draws={draws}: {time.perf_counter() - t0:.0f} s", flush=True)
                res = json.loads(res_path.read_text())
                groups = per_groups(res_path.with_suffix(".predictions.csv"), a.data)
                row = {"checkpoint": name, "k": k, "draws": draws, "auc": res["auc"]}
                row.update({f"{col}={v}": m["auc"] for col, vals in groups.items() if col != "family" for v, m in vals.items()})
                rows.append(row)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "eval_k.json").write_text(json.dumps(rows, indent=2))
    cols = sorted({c for r in rows for c in r} - {"checkpoint", "k", "draws", "auc"})
    lines = ["| checkpoint | K | draws | val AUC | " + " | ".join(cols) + " |", "|---|---|---|---|" + "---|" * len(cols)]
    for r in rows:
        lines.append(f"| {r['checkpoint']} | {r['k']} | {r['draws']} | {r['auc']:.3f} | "
                     + " | ".join(f"{r[c]:.3f}" if r.get(c) is not None else "–" for c in cols) + " |")
    (a.out / "eval_k.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
