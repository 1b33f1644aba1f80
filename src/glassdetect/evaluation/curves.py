"""Plots of a set of predictions (positive class = fake): reliability diagram, ROC and PR curves.

:func:`write_plots` draws all three next to an evaluation's JSON (``OUT.reliability.png``,
``OUT.roc.png``, ``OUT.pr.png``); the decision-dependent parts (the reliability diagram's
confidences, the operating point marked on the curves) follow the checkpoint's threshold, as the
metrics of :mod:`glassdetect.evaluation.metrics` do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn import metrics as skm

from .metrics import (
    ECE_BINS,
    FPR_POINTS,
    calibration_bins,
    decisions,
    equal_error_rate,
    expected_calibration_error,
    roc_points,
)

PLOT_SUFFIXES = {"reliability": ".reliability.png", "roc": ".roc.png", "pr": ".pr.png"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> None:
    plt = _pyplot()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reliability_plot(prob_fake: np.ndarray, labels: np.ndarray, path: str | Path, title: str = "",
                     bins: int = ECE_BINS, threshold: float = 0.5) -> None:
    """Reliability diagram of the predicted class's confidence under ``threshold`` (the ECE's
    definition), with a histogram of confidences."""
    prob_fake, labels = np.asarray(prob_fake, float), np.asarray(labels, int)
    pred, conf = decisions(prob_fake, threshold)
    correct = (pred == labels).astype(float)
    which = calibration_bins(conf, bins)
    edges = np.linspace(0, 1, bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    acc = [correct[which == b].mean() if (which == b).any() else np.nan for b in range(bins)]
    count = [(which == b).sum() for b in range(bins)]
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    a1.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    a1.bar(centers, acc, width=1 / bins, edgecolor="k", alpha=0.7, label="accuracy")
    a1.set_ylabel("accuracy")
    ece = expected_calibration_error(prob_fake, labels, bins, threshold)
    a1.set_title(title or f"Reliability (ECE = {ece:.3f}, threshold {threshold:.3g})")
    a1.legend(loc="upper left")
    a2.bar(centers, count, width=1 / bins, edgecolor="k", color="gray")
    a2.set_xlabel("confidence of the predicted class")
    a2.set_ylabel("images")
    _save(fig, path)


def _operating_point(prob_fake: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """(FPR, TPR, precision) of the decision ``p >= threshold`` (precision NaN when nothing is called fake)."""
    pred, _ = decisions(prob_fake, threshold)
    called = pred == 1
    precision = float(labels[called].mean()) if called.any() else float("nan")
    return float(pred[labels == 0].mean()), float(pred[labels == 1].mean()), precision


def roc_plot(prob_fake: np.ndarray, labels: np.ndarray, path: str | Path, title: str = "",
             threshold: float = 0.5) -> None:
    """ROC curve on a linear and a logarithmic FPR axis, with the operating point at ``threshold``,
    the equal-error point and the 1 % / 5 % / 10 % FPR budgets."""
    prob_fake, labels = np.asarray(prob_fake, float), np.asarray(labels, int)
    fpr, tpr, _ = roc_points(prob_fake, labels)
    op_fpr, op_tpr, _ = _operating_point(prob_fake, labels, threshold)
    eer = equal_error_rate(prob_fake, labels)
    floor = 1.0 / max(int((labels == 0).sum()), 1)  # the smallest non-zero FPR this data can show
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, log in zip(axes, (False, True)):
        ax.plot(fpr, tpr, "-", lw=1.5, color="C0", label="ROC")
        ax.plot([floor if log else 0, 1], [floor if log else 0, 1], "k--", lw=1, label="chance")
        for f in FPR_POINTS:
            ax.axvline(f, color="gray", ls=":", lw=1)
        ax.plot([op_fpr], [op_tpr], "o", color="C3", label=f"threshold {threshold:.3g}")
        ax.plot([eer], [1 - eer], "s", color="C2", mfc="none", label=f"EER {eer:.3f}")
        ax.set_xlabel("false-positive rate (reals called fake)" + (", log scale" if log else ""))
        ax.set_ylabel("true-positive rate (fakes caught)")
        ax.set_ylim(-0.02, 1.02)
        if log:
            ax.set_xscale("log")
            ax.set_xlim(min(floor, FPR_POINTS[0]) / 2, 1.0)
    axes[0].set_title(title or f"ROC (AUC = {skm.roc_auc_score(labels, prob_fake):.3f})")
    axes[1].set_title("dotted: FPR " + " / ".join(f"{f:.0%}" for f in FPR_POINTS))
    axes[0].legend(loc="lower right")
    _save(fig, path)


def pr_plot(prob_fake: np.ndarray, labels: np.ndarray, path: str | Path, title: str = "",
            threshold: float = 0.5) -> None:
    """Precision-recall curve (fake = positive) with the operating point at ``threshold`` and the
    precision of calling everything fake (the share of fakes)."""
    prob_fake, labels = np.asarray(prob_fake, float), np.asarray(labels, int)
    precision, recall, _ = skm.precision_recall_curve(labels, prob_fake)
    _, op_tpr, op_precision = _operating_point(prob_fake, labels, threshold)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.step(recall, precision, where="post", lw=1.5, color="C0", label="PR")
    ax.axhline(labels.mean(), color="k", ls="--", lw=1, label="share of fakes")
    if not np.isnan(op_precision):
        ax.plot([op_tpr], [op_precision], "o", color="C3", label=f"threshold {threshold:.3g}")
    ax.set_xlabel("recall (fakes caught)")
    ax.set_ylabel("precision (fake calls that are fake)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title or f"Precision-recall (AP = {skm.average_precision_score(labels, prob_fake):.3f})")
    ax.legend(loc="lower left")
    _save(fig, path)


def write_plots(prob_fake: np.ndarray, labels: np.ndarray, out: str | Path, threshold: float = 0.5,
                title: str = "") -> dict[str, str]:
    """The reliability diagram (any labelled data) and the ROC and PR curves (both classes needed)
    next to ``out`` (``out.with_suffix(".roc.png")`` ...). Returns {plot name: path} of what was written."""
    out = Path(out)
    prob_fake, labels = np.asarray(prob_fake, float), np.asarray(labels, int)
    if not len(labels):
        return {}
    out.parent.mkdir(parents=True, exist_ok=True)
    lead = f"{title} · " if title else ""
    paths = {name: out.with_suffix(suffix) for name, suffix in PLOT_SUFFIXES.items()}
    ece = expected_calibration_error(prob_fake, labels, threshold=threshold)
    reliability_plot(prob_fake, labels, paths["reliability"], title=f"{lead}ECE {ece:.3f} at threshold {threshold:.3g}",
                     threshold=threshold)
    if len(np.unique(labels)) < 2:
        return {"reliability": str(paths["reliability"])}
    roc_plot(prob_fake, labels, paths["roc"], title=f"{lead}AUC {skm.roc_auc_score(labels, prob_fake):.3f}",
             threshold=threshold)
    pr_plot(prob_fake, labels, paths["pr"], title=f"{lead}AP {skm.average_precision_score(labels, prob_fake):.3f}",
            threshold=threshold)
    return {name: str(p) for name, p in paths.items()}
