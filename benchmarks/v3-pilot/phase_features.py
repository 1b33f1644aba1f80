"""Would a handful of hand-made phase statistics carry the detector? A check before building them
into GLASS as extra head inputs: a logistic regression on them, trained on the benchmark's train
split and scored on validation (overall, training families, left-out family). The test split is
never read.

    python benchmarks/v3-pilot/phase_features.py --data runs/bench-v3-pilot/manifest.csv --crops 4
    python benchmarks/v3-pilot/phase_features.py --data runs/bench-v3-pilot/manifest.csv --crops 0   # whole image

Features of one luma image (BT.601, float): for the 4-neighbour Laplacian and the 2×2 cross
difference (the reference detector's two residuals) and each period s in 2, 3, 4, the mean |residual|
over each of the s² pixel phases, sorted and divided by their mean, logged: 2 × (4 + 9 + 16) = 58
numbers that say how unevenly the phases carry the residual, not how large it is (not the noise level).
``--crops K``: the mean over K random 224 px crops (what GLASS's local branch sees; training images
three times, each a fresh draw), 0: the whole image at once.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

PERIODS = (2, 3, 4)


def phase_features(y: np.ndarray) -> np.ndarray:
    c = y[1:-1, 1:-1]
    lap = y[:-2, 1:-1] + y[2:, 1:-1] + y[1:-1, :-2] + y[1:-1, 2:] - 4 * c
    cross = (y[:-1, :-1] - y[1:, :-1] - y[:-1, 1:] + y[1:, 1:])[1:, 1:]
    out = []
    for r in (np.abs(lap), np.abs(cross)):
        for s in PERIODS:
            h, w = (r.shape[0] // s) * s, (r.shape[1] // s) * s
            m = np.sort(r[:h, :w].reshape(h // s, s, w // s, s).mean(axis=(0, 2)).ravel())
            out.append(np.log(m / (m.mean() + 1e-6) + 1e-6))
    return np.concatenate(out)


def image_features(path: Path, crops: int, rng: np.random.Generator, patch: int = 224) -> np.ndarray:
    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    y = a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114
    if crops <= 0:
        return phase_features(y)
    h, w = y.shape
    feats = []
    for _ in range(crops):
        i, j = rng.integers(0, h - patch + 1), rng.integers(0, w - patch + 1)
        feats.append(phase_features(y[i:i + patch, j:j + patch]))
    return np.mean(feats, axis=0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True, help="a version-3 manifest")
    ap.add_argument("--crops", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    with open(a.data, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] in ("train", "val")]
    x: dict[str, list] = {"train": [], "val": []}
    y: dict[str, list] = {"train": [], "val": []}
    seen: list[str] = []
    for r in rows:
        draws = 3 if r["split"] == "train" and a.crops > 0 else 1
        for _ in range(draws):
            x[r["split"]].append(image_features(a.data.parent / r["path"], a.crops, rng))
            y[r["split"]].append(int(r["label"] == "fake"))
            if r["split"] == "val":
                seen.append(r["family_seen"])
    xt, yt = np.array(x["train"]), np.array(y["train"])
    mu, sd = xt.mean(0), xt.std(0) + 1e-6
    xv, yv, sv = (np.array(x["val"]) - mu) / sd, np.array(y["val"]), np.array(seen)
    for c in (0.01, 0.1, 1.0):
        clf = LogisticRegression(C=c, max_iter=2000).fit((xt - mu) / sd, yt)
        s = clf.decision_function(xv)
        res = {"train": roc_auc_score(yt, clf.decision_function((xt - mu) / sd)), "val": roc_auc_score(yv, s),
               "val seen": roc_auc_score(yv[sv == "yes"], s[sv == "yes"]),
               "val left-out": roc_auc_score(yv[sv == "no"], s[sv == "no"])}
        print(f"crops {a.crops} C {c}: " + "  ".join(f"{k} {v:.3f}" for k, v in res.items()), flush=True)


if __name__ == "__main__":
    main()
