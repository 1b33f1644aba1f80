"""Metrics for a binary real/fake detector (positive class = fake), from scikit-learn.

Every metric and its exact definition is listed in ``docs/metrics.md``. In short, for fake
probabilities ``p`` and a decision threshold ``t`` (fake when ``p >= t``, the rule of
:func:`glassdetect.models.decision.decide` without an unsure band):

* decision metrics — accuracy, balanced and per-class accuracy, binary precision / recall / F1
  (fake positive), sklearn's support-weighted precision / recall / F1 (the paper's numbers;
  weighted recall equals accuracy), and the false- and true-positive rates reached at ``t``;
* confidence metrics — the confidence of the predicted class (``p`` when the decision is fake,
  else ``1 - p``), its mean over all / correct / incorrect answers, and the ECE of that
  confidence against the correctness of the same thresholded decision;
* threshold-free metrics — AUC, AP, EER, TPR at 1 % / 5 % / 10 % FPR, the balanced accuracy at
  the best threshold for this data ("oracle" accuracy) and the NLL of ``p``.

ROC / PR curves and the reliability diagram are drawn by :mod:`glassdetect.evaluation.curves`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from sklearn import metrics as skm

ECE_BINS = 15
# False-positive rates at which the true-positive rate is reported ("Pd10" = TPR at 10 % FPR).
FPR_POINTS = (0.01, 0.05, 0.10)
# Probabilities are clipped to [NLL_EPS, 1 - NLL_EPS] for the NLL: the float32 softmax of a confident
# model rounds to exactly 0 or 1, and float32 cannot tell those apart from anything closer than this.
NLL_EPS = float(np.finfo(np.float32).eps)
_TOL = 1e-12  # rates are ratios of counts: compare them with a little slack for rounding


def tpr_key(fpr: float) -> str:
    """The result key of the TPR at false-positive rate ``fpr``: 0.01 -> ``tpr_at_fpr_1pct``."""
    return f"tpr_at_fpr_{round(fpr * 100):d}pct"


# The scalar metrics of :func:`binary_metrics`, in the order reports list them.
REPORT_KEYS = ("accuracy", "balanced_accuracy", "real_accuracy", "fake_accuracy", "precision", "recall", "f1",
               "precision_weighted", "recall_weighted", "f1_weighted", "threshold", "fpr_at_threshold",
               "tpr_at_threshold", "auc", "ap", "eer", *(tpr_key(f) for f in FPR_POINTS), "oracle_accuracy",
               "oracle_threshold", "nll", "ece", "conf_all", "conf_correct", "conf_incorrect")


def _nan_to_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def decisions(prob_fake: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, confidence of the predicted class) under ``threshold``: fake (1) when
    ``p >= threshold``, and the confidence is ``p`` for a fake decision, ``1 - p`` for a real one.
    Under a threshold other than 0.5 a confidence may be below 0.5."""
    prob_fake = np.asarray(prob_fake, dtype=float)
    pred = (prob_fake >= threshold).astype(int)
    return pred, np.where(pred == 1, prob_fake, 1.0 - prob_fake)


def calibration_bins(conf: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Bin index of each confidence: ``bins`` equal-width bins ``[0, 1/B], (1/B, 2/B], ..., ((B-1)/B, 1]``."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)


def expected_calibration_error(prob_fake: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS,
                               threshold: float = 0.5) -> float:
    """ECE of the predicted class's confidence: ``sum_b |B_b|/n * |acc(B_b) - conf(B_b)|`` over
    equal-width confidence bins, where the predicted class, its confidence and its correctness all
    follow the decision rule at ``threshold`` (see :func:`decisions`)."""
    labels = np.asarray(labels, dtype=int)
    if len(labels) == 0:
        return float("nan")
    pred, conf = decisions(prob_fake, threshold)
    correct = (pred == labels).astype(float)
    which = calibration_bins(conf, bins)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def weighted_scores(labels: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """sklearn's ``average="weighted"`` precision / recall / F1: the per-class scores (real and fake
    each as the positive class) averaged with the number of true images of each class as weights.
    The weighted recall is the accuracy."""
    p, r, f, _ = skm.precision_recall_fscore_support(labels, pred, labels=[0, 1], average="weighted",
                                                     zero_division=0)
    return {"precision_weighted": float(p), "recall_weighted": float(r), "f1_weighted": float(f)}


def roc_points(prob_fake: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) of every distinct threshold, highest first; the first point is
    "nothing is fake" (threshold +inf, fpr = tpr = 0). Tied scores form one point."""
    return skm.roc_curve(labels, prob_fake, drop_intermediate=False)


@dataclass(frozen=True)
class Roc:
    """The operating points of :func:`roc_points`, computed once for the metrics read off them."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray

    @classmethod
    def of(cls, prob_fake: np.ndarray, labels: np.ndarray) -> "Roc":
        return cls(*roc_points(prob_fake, labels))

    def eer(self) -> float:
        """See :func:`equal_error_rate`."""
        fpr, gap = self.fpr, self.fpr - (1.0 - self.tpr)
        i = int(np.argmax(gap >= -_TOL))  # first point at or past the crossing (gap[-1] = 1)
        if abs(gap[i]) <= _TOL or i == 0:
            return float(fpr[i])
        a = -gap[i - 1] / (gap[i] - gap[i - 1])  # fraction of the segment i-1 -> i before the crossing
        return float(fpr[i - 1] + a * (fpr[i] - fpr[i - 1]))

    def tpr_at(self, max_fpr: float) -> float:
        """See :func:`tpr_at_fpr`."""
        return float(self.tpr[self.fpr <= max_fpr + _TOL].max())

    def oracle(self) -> tuple[float, float]:
        """See :func:`oracle_accuracy`."""
        bal = (self.tpr[1:] + 1.0 - self.fpr[1:]) / 2  # point 0 (nothing fake, threshold inf) = 0.5 = the last point
        i = int(np.argmax(bal))
        return float(bal[i]), float(self.thresholds[1:][i])


def equal_error_rate(prob_fake: np.ndarray, labels: np.ndarray) -> float:
    """The rate at which FPR = FNR (= 1 - TPR) on the ROC curve, the curve being the straight lines
    between consecutive operating points. FPR - FNR grows from -1 to 1 along the curve, so the
    crossing is unique; it lies on the segment where the sign changes."""
    return Roc.of(prob_fake, labels).eer()


def tpr_at_fpr(prob_fake: np.ndarray, labels: np.ndarray, max_fpr: float) -> float:
    """The highest TPR of a threshold whose FPR is at most ``max_fpr``: an operating point a single
    threshold really reaches (no interpolation between points, so tied scores are never split)."""
    return Roc.of(prob_fake, labels).tpr_at(max_fpr)


def oracle_accuracy(prob_fake: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(best balanced accuracy over all thresholds, the highest threshold that reaches it): the
    accuracy of an oracle that picks the threshold on the test data itself (UnivFD's "oracle
    threshold"). Balanced accuracy ``(TPR + TNR) / 2`` at threshold ``t`` means fake when ``p >= t``."""
    return Roc.of(prob_fake, labels).oracle()


def negative_log_likelihood(prob_fake: np.ndarray, labels: np.ndarray) -> float:
    """Mean of ``-ln P(true class)`` in nats, with ``P(fake) = p`` clipped to ``[NLL_EPS, 1 - NLL_EPS]``.
    Independent of the threshold."""
    labels = np.asarray(labels, dtype=int)
    if len(labels) == 0:
        return float("nan")
    p = np.clip(np.asarray(prob_fake, dtype=float), NLL_EPS, 1.0 - NLL_EPS)
    return float(-np.mean(np.where(labels == 1, np.log(p), np.log1p(-p))))


def ranking_metrics(prob_fake: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The threshold-free metrics that need both classes: AUC, AP, EER, TPR at each of
    :data:`FPR_POINTS`, oracle accuracy and its threshold (all NaN when a class is missing)."""
    keys = ["auc", "ap", "eer", *(tpr_key(f) for f in FPR_POINTS), "oracle_accuracy", "oracle_threshold"]
    if len(np.unique(labels)) < 2:
        return {k: float("nan") for k in keys}
    roc = Roc.of(prob_fake, labels)
    oracle, oracle_t = roc.oracle()
    out = {"auc": float(skm.auc(roc.fpr, roc.tpr)),  # = roc_auc_score: the trapezoids of the same curve
           "ap": float(skm.average_precision_score(labels, prob_fake)),
           "eer": roc.eer()}
    out.update({tpr_key(f): roc.tpr_at(f) for f in FPR_POINTS})
    out.update(oracle_accuracy=oracle, oracle_threshold=oracle_t)
    return out


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else float("nan")


def decision_metrics(prob_fake: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracies, binary (fake positive) and weighted precision / recall / F1, the FPR / TPR
    reached at ``threshold``, ECE and the mean confidence of all / correct / incorrect answers."""
    pred, conf = decisions(prob_fake, threshold)
    correct = pred == labels
    real, fake = labels == 0, labels == 1
    nan = float("nan")
    scores = {"f1": nan, "precision": nan, "recall": nan, "precision_weighted": nan, "recall_weighted": nan,
              "f1_weighted": nan}
    if len(labels):  # sklearn refuses empty input
        scores.update(f1=float(skm.f1_score(labels, pred, zero_division=0)),
                      precision=float(skm.precision_score(labels, pred, zero_division=0)),
                      recall=float(skm.recall_score(labels, pred, zero_division=0)), **weighted_scores(labels, pred))
    return {
        "accuracy": _mean(correct),
        "balanced_accuracy": float(skm.balanced_accuracy_score(labels, pred)) if real.any() and fake.any() else nan,
        "real_accuracy": _mean(correct[real]),
        "fake_accuracy": _mean(correct[fake]),
        **scores,
        "threshold": float(threshold),
        "fpr_at_threshold": _mean(pred[real].astype(float)),
        "tpr_at_threshold": _mean(pred[fake].astype(float)),
        "ece": expected_calibration_error(prob_fake, labels, threshold=threshold),
        "conf_all": _mean(conf),
        "conf_correct": _mean(conf[correct]),
        "conf_incorrect": _mean(conf[~correct]),
    }


def binary_metrics(prob_fake: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict:
    """Every metric of a set of predictions (see the module docstring and ``docs/metrics.md``);
    the decision metrics, ECE and confidences follow ``threshold``. NaN (undefined) -> None."""
    prob_fake, labels = np.asarray(prob_fake, float), np.asarray(labels, int)
    if prob_fake.shape != labels.shape:
        raise ValueError(f"binary_metrics: {prob_fake.shape} probabilities for {labels.shape} labels")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"binary_metrics: threshold {threshold} is not a probability in [0, 1]")
    out: dict = {"n": int(len(labels))}
    out.update(decision_metrics(prob_fake, labels, threshold))
    out.update(ranking_metrics(prob_fake, labels))
    out["nll"] = negative_log_likelihood(prob_fake, labels)
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
