"""The evaluation metrics (glassdetect.evaluation.metrics), their plots (glassdetect.evaluation.curves) and what
`glassdetect evaluate` reports. Expected values are worked out by hand in the comments."""
import csv
import json
import math

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from glassdetect.evaluation import metrics as M
from glassdetect.cli import app
from glassdetect.evaluation.curves import write_plots
from glassdetect.studies.final import KEEP, SUMMARY_METRICS

from conftest import make_checkpoint

# reals 0.1, 0.7; fakes 0.6, 0.8, 0.9. ROC points (threshold: fpr, tpr), highest threshold first:
#   inf: 0, 0   0.9: 0, 1/3   0.8: 0, 2/3   0.7: 1/2, 2/3   0.6: 1/2, 1   0.1: 1, 1
P5 = np.array([0.1, 0.7, 0.6, 0.8, 0.9])
Y5 = np.array([0, 0, 1, 1, 1])


def test_equal_error_rate_interpolates_between_operating_points():
    # FNR = 1/3 from threshold 0.8 to 0.7 while FPR goes 0 -> 1/2: FPR = FNR at FPR = 1/3
    assert M.equal_error_rate(P5, Y5) == pytest.approx(1 / 3)
    # an operating point with FPR = FNR exactly: threshold 0.4 gives fpr = fnr = 1/2
    assert M.equal_error_rate(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.5)
    assert M.equal_error_rate(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 0.0  # separable
    assert M.equal_error_rate(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 1.0  # inverted


def test_tpr_at_fpr_never_splits_tied_scores():
    # 10 reals: eight at 0.0 .. 0.7, two tied with a fake at 0.8; fakes 0.8, 0.85, 0.9, 0.95
    reals = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.8]
    fakes = [0.8, 0.85, 0.9, 0.95]
    p, y = np.array(reals + fakes), np.array([0] * 10 + [1] * 4)
    # a 10 % budget allows one false positive, but a threshold at 0.8 calls both tied reals fake
    # (FPR 20 %): the best threshold within budget is above 0.8 and catches 3 of 4 fakes
    assert M.tpr_at_fpr(p, y, 0.10) == pytest.approx(0.75)
    assert M.tpr_at_fpr(p, y, 0.20) == 1.0  # threshold 0.8: FPR exactly 20 %
    assert M.tpr_at_fpr(p, y, 0.01) == pytest.approx(0.75)
    assert M.tpr_at_fpr(P5, Y5, 0.01) == pytest.approx(2 / 3) and M.tpr_at_fpr(P5, Y5, 0.5) == 1.0


def test_weighted_scores_by_hand_and_weighted_recall_is_accuracy():
    y = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([0, 0, 1, 1, 1, 0])
    # fake: TP 1, FP 2, FN 1 -> P 1/3, R 1/2, F1 0.4;  real: TP 2, FP 1, FN 2 -> P 2/3, R 1/2, F1 4/7
    # weights 4/6 (real) and 2/6 (fake)
    w = M.weighted_scores(y, pred)
    assert w["precision_weighted"] == pytest.approx((4 * 2 / 3 + 2 * 1 / 3) / 6)  # 5/9
    assert w["recall_weighted"] == pytest.approx(0.5) == (pred == y).mean()
    assert w["f1_weighted"] == pytest.approx((4 * 4 / 7 + 2 * 0.4) / 6)  # 18/35
    prob = np.where(pred == 1, 0.75, 0.25)  # the same decisions at threshold 0.5
    m = M.binary_metrics(prob, y)
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((1 / 3, 0.5, 0.4))  # binary, fake positive
    assert m["recall_weighted"] == pytest.approx(m["accuracy"])
    rng = np.random.default_rng(0)
    for t in (0.2, 0.5, 0.7):
        p, yy = rng.uniform(size=50), rng.integers(0, 2, 50)
        m = M.binary_metrics(p, yy, t)
        assert m["recall_weighted"] == pytest.approx(m["accuracy"])


def test_ece_and_confidence_follow_the_threshold():
    p, y = np.array([0.35, 0.68]), np.array([1, 1])
    # t = 0.5: 0.35 -> real, confidence 0.65, wrong; 0.68 -> fake, 0.68, right; both in bin (0.6, 0.7]:
    #   |1/2 - 0.665| = 0.165
    assert M.expected_calibration_error(p, y, bins=10, threshold=0.5) == pytest.approx(0.165)
    # t = 0.3: 0.35 -> fake, confidence 0.35, right (bin (0.3, 0.4]); 0.68 right (bin (0.6, 0.7]):
    #   (|1 - 0.35| + |1 - 0.68|) / 2 = 0.485
    assert M.expected_calibration_error(p, y, bins=10, threshold=0.3) == pytest.approx(0.485)
    assert M.expected_calibration_error(p, y, bins=10) == pytest.approx(0.165)  # default: 0.5
    m3, m5 = M.binary_metrics(p, y, 0.3), M.binary_metrics(p, y, 0.5)
    assert m3["conf_all"] == pytest.approx((0.35 + 0.68) / 2) and m3["accuracy"] == 1.0
    assert m5["conf_all"] == pytest.approx((0.65 + 0.68) / 2) and m5["conf_incorrect"] == pytest.approx(0.65)
    assert m3["threshold"] == 0.3 and m3["ece"] == pytest.approx(M.expected_calibration_error(p, y, threshold=0.3))


def test_nll_by_hand_and_clipped():
    assert M.negative_log_likelihood(P5, Y5) == pytest.approx(
        -(math.log(0.9) + math.log(0.3) + math.log(0.6) + math.log(0.8) + math.log(0.9)) / 5)
    # a confident mistake costs -ln(eps), not infinity
    assert M.negative_log_likelihood(np.array([1.0, 0.0]), np.array([0, 1])) == pytest.approx(-math.log(M.NLL_EPS))
    assert M.binary_metrics(P5, Y5, 0.3)["nll"] == M.binary_metrics(P5, Y5, 0.7)["nll"]


def test_oracle_accuracy_is_the_best_balanced_accuracy():
    # balanced accuracy (tpr + 1 - fpr) / 2 at 0.9, 0.8, 0.7, 0.6, 0.1: 2/3, 5/6, 7/12, 3/4, 1/2
    acc, t = M.oracle_accuracy(P5, Y5)
    assert acc == pytest.approx(5 / 6) and t == 0.8
    m = M.binary_metrics(P5, Y5, t)
    assert m["balanced_accuracy"] == pytest.approx(acc)  # the oracle threshold reaches it as the decision rule
    assert M.binary_metrics(P5, Y5, 0.5)["balanced_accuracy"] < acc


def test_binary_metrics_keys_rates_and_degenerate_inputs():
    m = M.binary_metrics(P5, Y5, 0.65)
    assert set(M.REPORT_KEYS) <= set(m)
    # at 0.65: reals 0.1 (real), 0.7 (fake) -> FPR 1/2; fakes 0.6 missed, 0.8, 0.9 caught -> TPR 2/3
    assert m["fpr_at_threshold"] == pytest.approx(0.5) == 1 - m["real_accuracy"]
    assert m["tpr_at_threshold"] == pytest.approx(2 / 3) == m["recall"]
    assert m["eer"] == pytest.approx(1 / 3) and m["tpr_at_fpr_10pct"] == pytest.approx(2 / 3)
    one = M.binary_metrics(np.array([0.2, 0.7]), np.array([0, 0]))
    assert one["auc"] is None and one["eer"] is None and one["tpr_at_fpr_5pct"] is None
    assert one["fpr_at_threshold"] == 0.5 and one["tpr_at_threshold"] is None and one["nll"] is not None
    empty = M.binary_metrics(np.array([]), np.array([]))
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["f1_weighted"] is None
    with pytest.raises(ValueError, match="threshold"):
        M.binary_metrics(P5, Y5, 1.5)
    with pytest.raises(ValueError, match="labels"):
        M.binary_metrics(P5, Y5[:3])


def _is_png(path) -> bool:
    with Image.open(path) as im:
        return im.format == "PNG" and im.size[0] > 100


def test_plots_are_written_as_png(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 200), 0, 1)
    paths = write_plots(p, y, tmp_path / "res.json", threshold=0.4, title="t")
    assert set(paths) == {"reliability", "roc", "pr"}
    assert paths["roc"].endswith("res.roc.png") and paths["pr"].endswith("res.pr.png")
    assert all(_is_png(v) for v in paths.values())
    only_reals = write_plots(p[y == 0], y[y == 0], tmp_path / "reals.json")
    assert set(only_reals) == {"reliability"} and _is_png(only_reals["reliability"])
    assert write_plots(np.array([]), np.array([]), tmp_path / "none.json") == {}


def test_evaluate_reports_the_new_metrics_and_plots(tiny_tree, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", 0, k=2, patch=96, global_size=96, threshold=0.45)
    meta = json.loads((ckpt / "config.json").read_text())
    meta["calibration"] = {"target_fpr": 0.1}
    (ckpt / "config.json").write_text(json.dumps(meta))
    out = tmp_path / "eval" / "res.json"
    r = CliRunner().invoke(app, ["evaluate", str(ckpt), "--data", str(tiny_tree), "--split", "all", "--out", str(out),
                                 "--workers", "0", "--threads", "1", "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "tpr_at_fpr_10pct" in r.stdout and "f1_weighted" in r.stdout and "target_fpr" in r.stdout
    res = json.loads(out.read_text())
    assert set(M.REPORT_KEYS) <= set(res) and set(KEEP) <= set(res) and set(SUMMARY_METRICS) <= set(res)
    assert res["threshold"] == 0.45 and res["target_fpr"] == 0.1
    for name in ("reliability", "roc", "pr"):
        assert _is_png(out.with_suffix(f".{name}.png")) and res["plots"][name] == str(out.with_suffix(f".{name}.png"))
    with open(out.with_suffix(".predictions.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    prob = np.array([float(row["fake_probability"]) for row in rows])
    labels = np.array([row["label"] == "fake" for row in rows], dtype=int)
    assert res["fpr_at_threshold"] == pytest.approx((prob[labels == 0] >= 0.45).mean())
    assert res["tpr_at_threshold"] == pytest.approx((prob[labels == 1] >= 0.45).mean())
    assert res["ece"] == pytest.approx(M.expected_calibration_error(prob, labels, threshold=0.45), abs=1e-5)
    assert res["recall_weighted"] == pytest.approx(res["accuracy"])
