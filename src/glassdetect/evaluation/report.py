"""Aggregating repeated runs: mean ± std over seeds, as JSON-ready dicts and Markdown tables.

``aggregate(runs)`` takes one metrics dict per run (e.g. what :func:`glassdetect.evaluation.evaluate.evaluate`
returns) and summarises every numeric top-level key::

    {"accuracy": {"mean": 0.91, "std": 0.012, "values": [0.90, 0.92, ...], "n": 5}, ...}

``std`` is the sample standard deviation (``ddof=1``; 0.0 for a single run). Values that are
missing, ``None``, NaN or not numbers (booleans, strings, nested dicts) are left out of that key;
a key with no numeric value in any run is left out entirely.

``markdown_table(rows, metrics)`` renders ``{row name: aggregate(...)}`` as a Markdown table with
one ``mean ± std`` column per metric.
"""
from __future__ import annotations

import math
from numbers import Real
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, Real):
        return None
    v = float(v)
    return None if math.isnan(v) else v


def aggregate(runs: Sequence[Mapping]) -> dict:
    """``{metric: {"mean", "std", "values", "n"}}`` over the numeric top-level keys of ``runs``."""
    keys: list[str] = []
    for run in runs:
        for k in run:
            if k not in keys:
                keys.append(k)
    out: dict[str, dict] = {}
    for k in keys:
        values = [x for x in (_number(run.get(k)) for run in runs) if x is not None]
        if not values:
            continue
        arr = np.asarray(values, dtype=float)
        out[k] = {
            "mean": float(arr.mean()),
            "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
            "values": values,
            "n": len(values),
        }
    return out


def format_mean_std(stat: Mapping | None, digits: int = 3, scale: float = 1.0) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    return f"{stat['mean'] * scale:.{digits}f} ± {stat.get('std', 0.0) * scale:.{digits}f}"


def markdown_table(rows: Mapping[str, Mapping], metrics: Sequence[str], digits: int = 3,
                   name_header: str = "run") -> str:
    """A Markdown table: one row per entry of ``rows`` (an :func:`aggregate` result), one
    ``mean ± std`` column per metric; ``n/a`` where a row lacks the metric."""
    header = [name_header, *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(metrics)) + "|"]
    for name, agg in rows.items():
        cells = [str(name)] + [format_mean_std(agg.get(m), digits) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def per_run_table(runs: Sequence[Mapping], metrics: Iterable[str], label: str = "seed", digits: int = 4) -> str:
    """One row per run (``run[label]`` names it), raw values."""
    metrics = list(metrics)
    lines = ["| " + " | ".join([label, *metrics]) + " |", "|" + "|".join(["---"] + ["---:"] * len(metrics)) + "|"]
    for run in runs:
        cells = [str(run.get(label, ""))]
        for m in metrics:
            v = _number(run.get(m))
            cells.append("n/a" if v is None else f"{v:.{digits}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_training_curves(history: list[dict], path: Path) -> None:
    """Loss (train, validation) and validation accuracy / AUC against the epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ax[0].plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    ax[0].plot(ep, [h["val_loss"] for h in history], "o-", label="validation")
    ax[0].set_xlabel("epoch"), ax[0].set_ylabel("loss"), ax[0].legend()
    ax[1].plot(ep, [h["val_accuracy"] for h in history], "o-", label="val accuracy")
    ax[1].plot(ep, [h["val_auc"] if h["val_auc"] is not None else float("nan") for h in history], "s--", label="val AUC")
    ax[1].set_xlabel("epoch"), ax[1].set_ylim(0, 1), ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
