"""Markdown rendering of a shortcut audit (:func:`format_report`); the JSON / CSV writers are
:meth:`AuditReport.write_json` / :meth:`AuditReport.write_csv`."""
from __future__ import annotations

import math
from typing import Any

from .properties import PROPERTY_HELP
from .summary import AuditReport


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "–"
        return f"{x:.{nd}g}" if abs(x) >= 1000 else f"{x:.{nd}f}"
    return str(x)


def format_report(report: AuditReport) -> str:
    """Markdown: verdict, warnings, then a property × split table (class means, AUC, flag)."""
    real, fake = report.class_names[0], report.class_names[-1]
    n_real = sum(r["label_index"] == 0 for r in report.rows)
    n_fake = len(report.rows) - n_real
    lines = [
        f"# Shortcut audit: {report.data}",
        "",
        f"{len(report.rows)} images ({n_real} {real}, {n_fake} {fake}), {len(report.errors)} unreadable; "
        f"splits: {', '.join(report.splits)}; flag at separability ≥ {report.threshold:.2f} "
        f"(max(AUC, 1 − AUC), {fake} = positive) with ≥ {report.min_per_class} images per class "
        f"and Mann–Whitney p ≤ {report.alpha:g}; "
        f"pixel properties on a centre region ≤ {report.max_side or 'full'} px; {report.seconds:.1f} s.",
        "",
        f"**Verdict: {report.verdict}**",
        "",
    ]
    if report.flags:
        lines += [f"- {w}" for w in report.warnings] + [""]
    lines += [
        f"| property | split | n {real} / {fake} | {real} mean | {fake} mean | AUC | p | direction | flag |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in report.summary:
        auc = "–" if e["separability"] is None else f"{e['separability']:.2f}"
        pv = "–" if e["p_value"] is None else f"{e['p_value']:.2g}"
        lines.append(
            f"| {e['property']} | {e['split']} | {e['n_real']} / {e['n_fake']} | {_fmt(e['mean_real'])} | "
            f"{_fmt(e['mean_fake'])} | {auc} | {pv} | "
            f"{e['direction'] or '–'} | {'**FLAG**' if e['flagged'] else ''} |"
        )
    lines += ["", "Properties: " + "; ".join(f"`{k}` {v}" for k, v in PROPERTY_HELP.items()) + "."]
    if report.errors:
        lines += ["", "Unreadable images (skipped):", ""]
        lines += [f"- `{e['key']}`: {e['reason']}" for e in report.errors]
    return "\n".join(lines) + "\n"
