"""Which epoch-selection rule would have served the pilot runs best: the validation AUC of the epoch
each rule picks, from the runs' own ``metrics.jsonl`` (no training, no evaluation).

    python benchmarks/v3-pilot/selection.py runs/v3-pilot*/

Rules: best validation accuracy (the paper's, what training keeps in ``best/``), lowest validation
loss, the last epoch, and — as a ceiling, not a rule — the highest validation AUC. The AUC of an
epoch picked by a validation metric and read on the same validation images is optimistic; the last
epoch's is not. Runs with fewer than 4 epochs are skipped.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

RULES = {"accuracy": ("val_accuracy", max), "loss": ("val_loss", min)}


def picks(history: list[dict]) -> dict[str, float]:
    """Validation AUC of the epoch each rule picks (the first such epoch on ties, as training does)."""
    out = {}
    for name, (key, best) in RULES.items():
        target = best(r[key] for r in history)
        out[name] = next(r["val_auc"] for r in history if r[key] == target)
    out["last"] = history[-1]["val_auc"]
    out["max AUC (ceiling)"] = max(r["val_auc"] for r in history)
    return out


def main() -> None:
    roots = [Path(a) for a in sys.argv[1:]] or [Path("runs")]
    rows = []
    for root in roots:
        for f in sorted(root.rglob("metrics.jsonl")):
            history = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            if len(history) >= 4 and all(r.get("val_auc") is not None for r in history):
                rows.append((str(f.parent), picks(history)))
    if not rows:
        raise SystemExit("no runs with 4 or more epochs found")
    names = list(rows[0][1])
    print("| run | " + " | ".join(names) + " |\n|---" * 1 + "|---" * len(names) + "|")
    for run, p in rows:
        print(f"| {run} | " + " | ".join(f"{p[n]:.3f}" for n in names) + " |")
    print(f"| mean of {len(rows)} runs | " + " | ".join(f"{statistics.mean(p[n] for _, p in rows):.3f}" for n in names) + " |")


if __name__ == "__main__":
    main()
