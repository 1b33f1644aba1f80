"""Metrics for a binary real/fake detector (positive class = fake), from scikit-learn."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn import metrics as skm

ECE_BINS = 15


def _nan_to_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def expected_calibration_error(prob_fake: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE over equal-width bins of the predicted class's confidence."""
    if len(labels) == 0:
        return float("nan")
    pred = (prob_fake >= 0.5).astype(int)
    conf = np.where(pred == 1, prob_fake, 1 - prob_fake)
    correct = (pred == labels).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def binary_metrics(prob_fake: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict:
    """accuracy, balanced accuracy, per-class accuracy, AUC, AP, F1/precision/recall (fake = positive),
    ECE (15 bins) and mean confidence of correct and incorrect answers."""
    prob_fake, labels = np.asarray(prob_fake, float), np.asarray(labels, int)
    pred = (prob_fake >= threshold).astype(int)
    conf = np.where(pred == 1, prob_fake, 1 - prob_fake)
    correct = pred == labels
    both = len(np.unique(labels)) == 2
    out = {
        "n": int(len(labels)),
        "accuracy": float(correct.mean()) if len(labels) else float("nan"),
        "balanced_accuracy": float(skm.balanced_accuracy_score(labels, pred)) if both else float("nan"),
        "real_accuracy": float(correct[labels == 0].mean()) if (labels == 0).any() else float("nan"),
        "fake_accuracy": float(correct[labels == 1].mean()) if (labels == 1).any() else float("nan"),
        "auc": float(skm.roc_auc_score(labels, prob_fake)) if both else float("nan"),
        "ap": float(skm.average_precision_score(labels, prob_fake)) if both else float("nan"),
        "f1": float(skm.f1_score(labels, pred, zero_division=0)),
        "precision": float(skm.precision_score(labels, pred, zero_division=0)),
        "recall": float(skm.recall_score(labels, pred, zero_division=0)),
        "ece": expected_calibration_error(prob_fake, labels),
        "conf_correct": float(conf[correct].mean()) if correct.any() else float("nan"),
        "conf_incorrect": float(conf[~correct].mean()) if (~correct).any() else float("nan"),
    }
    return {k: (_nan_to_none(v) if isinstance(v, float) else v) for k, v in out.items()}


def per_generator(prob_fake: np.ndarray, labels: np.ndarray, generators: Sequence[str], threshold: float = 0.5) -> dict:
    """For each generator: its fakes' detection rate and the AUC of all reals against them."""
    gens = np.asarray(generators, dtype=object)
    out = {}
    for gen in sorted({g for g, l in zip(gens, labels) if l == 1 and g}):
        sel = (labels == 0) | (gens == gen)
        m = binary_metrics(prob_fake[sel], labels[sel], threshold)
        out[gen] = {"n_fake": int(((gens == gen) & (labels == 1)).sum()), "fake_accuracy": m["fake_accuracy"],
                    "auc": m["auc"], "ap": m["ap"]}
    return out


def bootstrap_auc(prob_fake: np.ndarray, labels: np.ndarray, groups: Sequence[str], n: int = 1000,
                  seed: int = 0, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile interval of the AUC, resampling whole source groups (the unit of independence)."""
    groups = np.asarray(groups, dtype=object)
    uniq = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in uniq]
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(n):
        pick = np.concatenate([members[i] for i in rng.integers(0, len(uniq), len(uniq))])
        y = labels[pick]
        if len(np.unique(y)) == 2:
            aucs.append(skm.roc_auc_score(y, prob_fake[pick]))
    if len(aucs) < n // 2:
        return None
    lo, hi = np.quantile(aucs, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def reliability_plot(prob_fake: np.ndarray, labels: np.ndarray, path: str | Path, title: str = "", bins: int = ECE_BINS) -> None:
    """Reliability diagram of the predicted class's confidence, with a histogram of confidences."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred = (prob_fake >= 0.5).astype(int)
    conf = np.where(pred == 1, prob_fake, 1 - prob_fake)
    correct = (pred == labels).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    centers = (edges[:-1] + edges[1:]) / 2
    acc = [correct[which == b].mean() if (which == b).any() else np.nan for b in range(bins)]
    count = [(which == b).sum() for b in range(bins)]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    a1.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    a1.bar(centers, acc, width=1 / bins, edgecolor="k", alpha=0.7, label="accuracy")
    a1.set_ylabel("accuracy")
    a1.set_title(title or f"Reliability (ECE = {expected_calibration_error(prob_fake, labels, bins):.3f})")
    a1.legend(loc="upper left")
    a2.bar(centers, count, width=1 / bins, edgecolor="k", color="gray")
    a2.set_xlabel("confidence of the predicted class")
    a2.set_ylabel("images")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
