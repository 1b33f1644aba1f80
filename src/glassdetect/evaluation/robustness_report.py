"""The robustness sweep's reports: Markdown tables and AUC-against-strength plots
(see :mod:`glassdetect.evaluation.robustness` for what they show)."""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Mapping, Sequence

from .report import format_mean_std

# Where each curve's "no degradation" end lies on its strength axis (the clean point is drawn there);
# JPEG/WebP q=100 is not lossless, but it is the mildest setting. resize:long=N has no such end.
CLEAN_STRENGTH = {("jpeg", "q"): 100.0, ("webp", "q"): 100.0, ("blur", "sigma"): 0.0, ("noise", "sigma"): 0.0,
                  ("resize", "f"): 1.0}
AXIS_LABEL = {("jpeg", "q"): "JPEG quality", ("webp", "q"): "WebP quality", ("blur", "sigma"): "Gaussian blur σ (px)",
              ("noise", "sigma"): "Gaussian noise σ (grey levels)", ("resize", "f"): "resize factor (not resized back)",
              ("resize", "long"): "long side after downscaling (px)"}


def _slug(text: str, limit: int = 60) -> str:
    s = re.sub(r"[^A-Za-z0-9.=_-]+", "_", text).strip("._")
    return s[:limit] or "x"


def _delta(stat: Mapping | None, ref: Mapping | None) -> str:
    if not stat or not ref or stat.get("mean") is None or ref.get("mean") is None:
        return ""
    d = stat["mean"] - ref["mean"]
    return f" ({'+' if d >= 0 else '−'}{abs(d):.3f})"


def _ms(stat: Mapping | None, digits: int) -> str:
    """``mean ± std``; just the mean for a single seed (its std says nothing)."""
    if stat and stat.get("mean") is not None and stat.get("n", 0) == 1:
        return f"{stat['mean']:.{digits}f}"
    return format_mean_std(stat, digits)


def _split_text(result: Mapping) -> str:
    split = result["split"]
    if split == "all":
        return "all images"
    return f"the {split if isinstance(split, str) else '/'.join(split)} split"


def _clean_name(result: Mapping) -> str | None:
    for p in result["points"]:
        if p.get("identity"):
            return p["name"]
    return None


def markdown(result: Mapping, digits: int = 3) -> str:
    """Markdown for a :func:`robustness` result: an AUC table and an accuracy table, one row per
    sweep point and one column per model (``mean ± std`` over seeds)."""
    models = list(result["models"])
    clean = _clean_name(result)
    seeds = ", ".join(f"{m} {result['models'][m]['seeds']}" for m in models)
    ns = sorted({int(v) for m in models for s in result["models"][m]["points"].values()
                 for v in (s.get("n") or {}).get("values", [])})
    n_text = f"{ns[0]} images" if len(ns) == 1 else f"{ns[0]}–{ns[-1]} images" if ns else "no images"
    head = ["| degradation | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    lines = [
        f"Robustness sweep `{result['sweep']}` on {_split_text(result)} of `{result['data']}` ({n_text}); "
        f"mean ± std over seeds (seeds per model: {seeds}; a single seed shows its value alone).",
        "",
        "AUC (in brackets: change from clean):",
        "",
        *head,
    ]
    for p in result["points"]:
        cells = []
        for m in models:
            pts = result["models"][m]["points"]
            stat = pts.get(p["name"], {}).get("auc")
            extra = "" if p["name"] == clean or clean is None else _delta(stat, pts.get(clean, {}).get("auc"))
            cells.append(_ms(stat, digits) + extra)
        lines.append(f"| {p['label']} | " + " | ".join(cells) + " |")
    lines += ["", "Accuracy at each checkpoint's stored threshold (in brackets: accuracy on real / fake images):",
              "", *head]
    for p in result["points"]:
        cells = []
        for m in models:
            s = result["models"][m]["points"].get(p["name"], {})
            r, f = (s.get(k, {}).get("mean") for k in ("real_accuracy", "fake_accuracy"))
            sub = f" (real {'n/a' if r is None else f'{r:.{digits}f}'} / fake {'n/a' if f is None else f'{f:.{digits}f}'})"
            cells.append(_ms(s.get("accuracy"), digits) + sub)
        lines.append(f"| {p['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _line_families(points: Sequence[Mapping]) -> "OrderedDict[str, list[Mapping]]":
    """``{curve name: its points}`` for the curves with more than one strength."""
    fams: OrderedDict[str, list[Mapping]] = OrderedDict()
    for p in points:
        if p.get("curve"):
            fams.setdefault(p["curve"], []).append(p)
    return OrderedDict((f, ps) for f, ps in fams.items() if len({q["strength"] for q in ps}) > 1)


def plot(result: Mapping, out: str | Path) -> list[str]:
    """Write ``robustness_<family>.png`` per multi-strength family and ``robustness_summary.png``
    for single-point ones; return the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = Path(out)
    written: list[str] = []
    models = list(result["models"])
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    clean = _clean_name(result)
    lines = _line_families(result["points"])

    def auc(model: str, name: str | None) -> tuple[float, float] | None:
        s = result["models"][model]["points"].get(name or "", {}).get("auc")
        return None if not s or s.get("mean") is None else (s["mean"], s.get("std", 0.0))

    for family, pts in lines.items():
        fig, ax = plt.subplots(figsize=(5.5, 4))
        kind_axis = (pts[0]["kind"], pts[0]["axis"])
        ref = CLEAN_STRENGTH.get(kind_axis)
        strengths = [p["strength"] for p in pts]
        for i, m in enumerate(models):
            xy = [(p["strength"], auc(m, p["name"])) for p in pts]
            ref_auc = auc(m, clean) if ref is not None and clean is not None else None
            if ref_auc is not None and ref not in strengths:  # (jpeg q=100 itself is a point: marker only)
                xy.append((ref, ref_auc))
            xy = sorted((x, v) for x, v in xy if v is not None)
            if not xy:
                continue
            x = np.array([x for x, _ in xy])
            mu = np.array([v[0] for _, v in xy])
            sd = np.array([v[1] for _, v in xy])
            c = colours[i % len(colours)]
            seeds = result["models"][m]["seeds"]
            ax.plot(x, mu, "o-", color=c, label=f"{m} ({seeds} seed{'s' if seeds != 1 else ''})")
            ax.fill_between(x, mu - sd, mu + sd, color=c, alpha=0.2, lw=0)
            if ref_auc is not None:  # the clean point: an open square at the family's no-degradation end
                ax.plot([ref], [ref_auc[0]], "s", mfc="white", mec=c, ms=8, zorder=3)
        ax.axhline(0.5, color="gray", ls=":", lw=1, label="chance")
        if (ref is not None and ref >= max(strengths)) or kind_axis[1] == "long":  # milder as the value grows: clean end left
            ax.invert_xaxis()
        ax.set_xlabel(AXIS_LABEL.get(kind_axis, f"{family} {kind_axis[1]}")
                      + (f"  (□ = clean, drawn at {ref:g})" if ref is not None and clean is not None else ""))
        ax.set_ylabel("AUC")
        ax.set_title(f"AUC under {family.replace('_', ' ')} · {_split_text(result)}")
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        name = f"robustness_{_slug(family)}.png"
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(name)

    in_lines = {p["name"] for ps in lines.values() for p in ps}
    single = [p for p in result["points"] if not p.get("identity") and p["name"] not in in_lines]
    if single:
        bars = ([p for p in result["points"] if p.get("identity")][:1]) + single
        fig, ax = plt.subplots(figsize=(max(4.5, 1.2 * len(bars) * max(1, len(models)) ** 0.5 + 2), 4))
        width = 0.8 / max(len(models), 1)
        for i, m in enumerate(models):
            vals = [auc(m, p["name"]) for p in bars]
            xs = np.arange(len(bars)) + (i - (len(models) - 1) / 2) * width
            ax.bar(xs, [v[0] if v else np.nan for v in vals], width, yerr=[v[1] if v else 0 for v in vals],
                   capsize=3, color=colours[i % len(colours)], label=m)
        ax.axhline(0.5, color="gray", ls=":", lw=1)
        ax.set_xticks(np.arange(len(bars)), [p["label"] for p in bars], rotation=20, ha="right")
        ax.set_ylabel("AUC (mean ± std over seeds)")
        ax.set_ylim(0, 1)
        ax.set_title("AUC under single-setting degradations")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "robustness_summary.png", dpi=100)
        plt.close(fig)
        written.append("robustness_summary.png")
    return written
