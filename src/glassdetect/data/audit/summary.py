"""Per-split statistics of the shortcut audit and its driver: the AUC and Mann-Whitney p-value of
each property alone at telling fake from real, per split, the flags raised, the
:class:`AuditReport` that holds them (with its JSON / CSV writers), and :func:`audit`."""
from __future__ import annotations

import csv
import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...views.limits import DEFAULT_MAX_PIXELS
from .properties import CATEGORICAL, NUMERIC, image_properties

DEFAULT_THRESHOLD = 0.65
DEFAULT_MIN_PER_CLASS = 4
DEFAULT_ALPHA = 0.01  # also require a Mann-Whitney p-value at most this (small splits are noisy)


@dataclass
class AuditReport:
    data: str
    class_names: tuple[str, ...]
    threshold: float
    min_per_class: int
    splits: list[str]  # the splits summarised, "all" last
    rows: list[dict[str, Any]]  # one per readable image
    errors: list[dict[str, str]]  # {"path", "key", "reason"}
    summary: list[dict[str, Any]]  # one per (property, split)
    flags: list[dict[str, Any]]
    max_side: int | None = 1024
    alpha: float = DEFAULT_ALPHA
    seconds: float = 0.0
    properties: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> list[str]:
        """Flagged properties (indicator names like ``format=PNG``), first-flagged order."""
        out: list[str] = []
        for f in self.flags:
            if f["property"] not in out:
                out.append(f["property"])
        return out

    @property
    def flagged_bases(self) -> list[str]:
        """Flagged base properties (``format`` for ``format=PNG``)."""
        out: list[str] = []
        for f in self.flags:
            if f["base"] not in out:
                out.append(f["base"])
        return out

    @property
    def verdict(self) -> str:
        return "clean" if not self.flags else "flagged: " + ", ".join(self.flagged)

    @property
    def warnings(self) -> list[str]:
        return [f["message"] for f in self.flags]

    def to_json(self) -> dict[str, Any]:
        return _jsonable({
            "data": self.data,
            "class_names": list(self.class_names),
            "threshold": self.threshold,
            "min_per_class": self.min_per_class,
            "alpha": self.alpha,
            "max_side": self.max_side,
            "seconds": round(self.seconds, 2),
            "n_images": len(self.rows),
            "n_errors": len(self.errors),
            "splits": self.splits,
            "properties": self.properties,
            "verdict": self.verdict,
            "flagged": self.flagged,
            "flags": self.flags,
            "summary": self.summary,
            "errors": self.errors,
            "rows": self.rows,
        })

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")

    def write_csv(self, path: str | Path) -> None:
        """Per-image table."""
        cols = ["key", "path", "label", "split", "generator", "group", "width", "height",
                *CATEGORICAL, *NUMERIC, "jpeg_grid_offset"]
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            for r in self.rows:
                w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _columns(rows: list[dict[str, Any]]) -> list[tuple[str, str, np.ndarray, bool]]:
    """(name, base, values as float with NaN for missing, is_indicator) per audited column."""
    cols = []
    for base in CATEGORICAL:
        vals = [r.get(base) for r in rows]
        cats = sorted({str(v) for v in vals}, key=str)
        boolean = set(cats) <= {"True", "False"}
        if boolean:
            levels = ["True"]  # one indicator, named after the property
        elif len(cats) == 2:
            levels = [cats[0]]  # the other value is its complement: same AUC
        else:
            levels = cats  # one value only: still reported (AUC 0.5), never flagged
        for lv in levels:
            name = base if boolean else f"{base}={lv}"
            cols.append((name, base, np.array([float(str(v) == lv) for v in vals]), True))
    for base in NUMERIC:
        v = np.array([np.nan if r.get(base) is None else float(r[base]) for r in rows], dtype=np.float64)
        cols.append((base, base, v, False))
    return cols


def _auc(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """(ROC AUC with y = 1 positive, two-sided Mann-Whitney p-value)."""
    from scipy.stats import mannwhitneyu
    from sklearn.metrics import roc_auc_score

    if np.all(s == s[0]):
        return 0.5, 1.0
    auc = float(roc_auc_score(y, s))
    try:
        p = float(mannwhitneyu(s[y == 1], s[y == 0], alternative="two-sided").pvalue)
    except ValueError:
        p = 1.0
    return auc, (p if math.isfinite(p) else 1.0)


def summarise(rows: list[dict[str, Any]], splits: Sequence[str], threshold: float = DEFAULT_THRESHOLD,
              min_per_class: int = DEFAULT_MIN_PER_CLASS, class_names: Sequence[str] = ("real", "fake"),
              alpha: float = DEFAULT_ALPHA):
    """Per (property, split): class means, AUC (fake = positive), separability, p-value, flag.

    Flagged: separability ≥ ``threshold``, ≥ ``min_per_class`` images of each class, and a
    two-sided Mann-Whitney p-value ≤ ``alpha`` (so that chance AUCs on small splits do not flag;
    ``alpha=1`` switches this off)."""
    summary, flags = [], []
    if not rows:
        return summary, flags, []
    labels = np.array([r["label_index"] for r in rows])
    split_of = np.array([r["split"] or "" for r in rows])
    real_name, fake_name = class_names[0], class_names[-1]
    cols = _columns(rows)
    for name, base, values, indicator in cols:
        for sp in splits:
            sel = np.ones(len(rows), bool) if sp == "all" else split_of == sp
            ok = sel & np.isfinite(values)
            y = (labels[ok] == len(class_names) - 1).astype(int)
            v = values[ok]
            n_fake, n_real = int(y.sum()), int((1 - y).sum())
            ent: dict[str, Any] = {
                "property": name, "base": base, "split": sp, "kind": "indicator" if indicator else "numeric",
                "n_real": n_real, "n_fake": n_fake,
                "mean_real": float(v[y == 0].mean()) if n_real else None,
                "mean_fake": float(v[y == 1].mean()) if n_fake else None,
                "auc": None, "separability": None, "p_value": None, "direction": None, "flagged": False,
            }
            if n_real and n_fake:
                auc, pval = _auc(y, v)
                sep = max(auc, 1 - auc)
                more = fake_name if auc > 0.5 else real_name
                if abs(auc - 0.5) < 1e-12:
                    direction = "no difference"
                elif indicator:
                    direction = f"more common in {more}"
                else:
                    direction = f"higher in {more}"
                ent.update(auc=auc, separability=sep, p_value=pval, direction=direction)
                if (sep >= threshold and n_real >= min_per_class and n_fake >= min_per_class
                        and pval <= alpha):
                    ent["flagged"] = True
                    flags.append({
                        "property": name, "base": base, "split": sp, "auc": auc, "separability": sep, "p_value": pval,
                        "direction": direction, "n_real": n_real, "n_fake": n_fake,
                        "message": (f"WARNING: {name} alone separates {real_name} from {fake_name} on split {sp} "
                                    f"(AUC {sep:.2f}, {direction})"),
                    })
            summary.append(ent)
    return summary, flags, [c[0] for c in cols]


# ---------------------------------------------------------------------------------- the audit

def _progress(it, total: int, enabled: bool):
    if not enabled:
        return it
    try:
        from tqdm import tqdm

        return tqdm(it, total=total, desc="audit", unit="img", file=sys.stderr)
    except Exception:  # pragma: no cover
        return it


def audit(
    data: str | Path,
    *,
    split: str | None = None,
    max_side: int | None = 1024,
    threshold: float = DEFAULT_THRESHOLD,
    min_per_class: int = DEFAULT_MIN_PER_CLASS,
    alpha: float = DEFAULT_ALPHA,
    class_names: Sequence[str] = ("real", "fake"),
    workers: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> AuditReport:
    """Audit ``data`` (anything :func:`glassdetect.data.splits.load_samples` accepts) for single-property
    shortcuts between real and fake.

    ``split``: None or "all" for every image (each split is also summarised on its own), or one
    of train/val/test. ``max_side``: measure pixel properties on a centre region of at most this
    many pixels per side (None: whole image). ``workers``: decoding threads (0 = min(4, CPUs)).
    """
    import time

    from ..splits import SPLITS, load_samples

    t0 = time.perf_counter()
    samples = load_samples(data, class_names)
    if split not in (None, "", "all"):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} (use {', '.join(SPLITS)} or all)")
        samples = [s for s in samples if s.split == split]
        if not samples:
            raise ValueError(f"{data}: no images in split {split!r}")

    def one(s):
        try:
            return s, image_properties(s.path, max_side=max_side, max_pixels=max_pixels), None
        except Exception as exc:  # never crash on one bad file
            reason = f"{type(exc).__name__}: {exc}".strip()
            return s, None, reason

    n_workers = workers if workers and workers > 0 else min(4, os.cpu_count() or 1)
    results = []
    if n_workers == 1 or len(samples) <= 1:
        for res in _progress(map(one, samples), len(samples), progress):
            results.append(res)
    else:
        with ThreadPoolExecutor(n_workers) as pool:
            for res in _progress(pool.map(one, samples), len(samples), progress):
                results.append(res)

    rows, errors = [], []
    for s, props, reason in results:
        if props is None:
            errors.append({"path": s.path, "key": s.key, "reason": reason or "unreadable"})
            continue
        rows.append({"key": s.key, "path": s.path, "label": class_names[s.label], "label_index": s.label,
                     "split": s.split, "generator": s.generator, "group": s.group, **props})
    present = [sp for sp in SPLITS if any(r["split"] == sp for r in rows)]
    splits = [*present, "all"]
    summary, flags, props = summarise(rows, splits, threshold, min_per_class, class_names, alpha)
    return AuditReport(
        data=str(data), class_names=tuple(class_names), threshold=threshold, min_per_class=min_per_class, alpha=alpha,
        splits=splits, rows=rows, errors=errors, summary=summary, flags=flags, max_side=max_side,
        seconds=time.perf_counter() - t0, properties=props,
    )

