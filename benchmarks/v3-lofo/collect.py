"""Leave-one-family-out over the six generator families, from demo runs that each left a different
family out of training (seed 0 of each; one table).

    for rot in srmd,realcugan span,animevideov3 realcugan,srmd animevideov3,span waifu2x-cunet,waifu2x-upconv7; do
        glassdetect demo --heldout-families $rot --seeds 0 --sweep "jpeg:q=75" --threads 1 --out runs/lofo/${rot/,/--}
    done
    python benchmarks/v3-lofo/collect.py runs/demo runs/lofo/*/ --out benchmarks/v3-lofo

Each run's benchmark leaves two families out of training (``--heldout-families VAL,TEST``): VAL's
pairs sit in the validation split, where they take part in choosing the best epoch, TEST's in the
test split, never seen. Only the TEST family is reported as left out, so six runs, one per family as
TEST, give leave-one-family-out over all six (the demo's default run, ``waifu2x-cunet`` as TEST, is
one of them; of a multi-seed run only seed 0 is read). Per run: test AUC of the left-out family's
pairs and of the training families' pairs (the demo's rule: a group's fakes against the reals of its
own pairs) for GLASS, the resize-only baseline and the training-free reference, and the left-out
family under JPEG q75 where the run's sweep has it. Writes OUT/lofo.json and OUT/lofo.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ARCHS = ("glass", "standard")


def seed0(metric: dict, seeds: list[int]) -> float | None:
    """A ``{"values": [...]}`` summary's value for seed 0 (the demo lists values in its seed order)."""
    if metric is None or 0 not in seeds:
        return None
    return metric["values"][seeds.index(0)]


def one_run(run: Path) -> dict:
    r = json.loads((run / "results.json").read_text())
    val_family, test_family = r["meta"]["heldout"]
    seeds = list(r["meta"]["config"]["seeds"])
    row = {"run": str(run), "left_out": test_family, "validation_left_out": val_family, "seeds_read": [0]}
    for arch in ARCHS:
        clean = r[arch]["clean"]
        row[arch] = {"left_out": seed0(clean["per_family_seen"]["no"]["auc"], seeds),
                     "training_families": seed0(clean["per_family_seen"]["yes"]["auc"], seeds),
                     "all": seed0(clean["auc"], seeds)}
    ref = (r.get("reference") or {}).get("per_group") or {}
    row["reference"] = {"left_out": ((ref.get("family_seen") or {}).get("no") or {}).get("auc"),
                        "training_families": ((ref.get("family_seen") or {}).get("yes") or {}).get("auc")}
    return row


def markdown(rows: list[dict]) -> str:
    f = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
    lines = ["| left-out family (test) | validation's left-out | GLASS left-out | baseline left-out | reference left-out "
             "| GLASS training families | baseline training families | reference training families |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['left_out']} | {r['validation_left_out']} | {f(r['glass']['left_out'])} | "
                     f"{f(r['standard']['left_out'])} | {f(r['reference']['left_out'])} | "
                     f"{f(r['glass']['training_families'])} | {f(r['standard']['training_families'])} | "
                     f"{f(r['reference']['training_families'])} |")

    def mean(path: tuple[str, str]) -> str:
        vals = [r[path[0]][path[1]] for r in rows if r[path[0]][path[1]] is not None]
        if not vals:
            return "–"
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.3f} ± {sd:.3f}"

    lines.append(f"| **mean ± std over {len(rows)} families** | | {mean(('glass', 'left_out'))} | "
                 f"{mean(('standard', 'left_out'))} | {mean(('reference', 'left_out'))} | "
                 f"{mean(('glass', 'training_families'))} | {mean(('standard', 'training_families'))} | "
                 f"{mean(('reference', 'training_families'))} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path, help="demo output directories (each with results.json)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    rows = [one_run(r) for r in a.runs if (r / "results.json").exists()]
    rows.sort(key=lambda r: r["left_out"])
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "lofo.json").write_text(json.dumps(rows, indent=2))
    (a.out / "lofo.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
