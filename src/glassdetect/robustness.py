"""Robustness sweeps: every checkpoint on one split under every point of a degradation sweep.

``robustness(checkpoints, data, out, sweep="demo")`` evaluates each checkpoint with
:func:`glassdetect.evaluate.evaluate` on the chosen split (default ``test``) once per sweep point
(:func:`glassdetect.degrade.sweep`: a preset such as ``demo``, ``univfd``, ``sidbench``,
``genimage``, ``social``, or ``;``-separated specs such as ``"jpeg:q=50;blur:sigma=2"``; the
``clean`` point comes first). The degradation is applied in memory to each decoded image before
its views are built; the image files are only read.

Models and seeds
    Checkpoints are grouped into models by a label: ``NAME=PATH`` (``PATH`` may be a glob, e.g.
    ``glass='runs/glass/seed*/best'``), the keys of a mapping ``{name: [paths]}``, or by default
    the ``arch`` in the checkpoint's ``config.json`` (``glass``, ``standard``). Checkpoints sharing
    a label are seeds of one model: each metric is reported as mean ± std over them
    (:func:`glassdetect.report.aggregate`, sample std, 0 for one seed). A run directory holding
    ``best/`` may be given in place of ``RUN/best``.

Cache
    Every (checkpoint, degradation) result is kept in
    ``OUT/cache/<checkpoint-id>/<degradation-slug>.json``. The checkpoint id is the resolved path
    plus a hash of that path, of ``model.safetensors``' size and modification time and of the
    bytes of ``config.json`` (so a retrained or recalibrated checkpoint gets a new id). Each file
    also records the data fingerprint (paths, sizes and mtimes of the evaluated images), split,
    draws, seed and package version; a file that does not match them, or cannot be read, is
    recomputed and overwritten. A rerun, an interrupted sweep or a sweep with added points
    evaluates only what is missing.

Outputs in ``OUT``
    ``robustness.json``
        What :func:`robustness` returns: the sweep spec, split, data, draws, seed, the sweep points
        (``name`` = canonical degradation spec, ``label``, ``family``, ``strength``), every
        checkpoint, and per model and point the AUC, the accuracy at each checkpoint's stored
        threshold, the real and fake accuracy and ``n`` as ``{"mean", "std", "values", "n"}``
        over seeds, plus the raw per-checkpoint numbers under ``runs``.
    ``robustness.md``
        :func:`markdown`: an AUC table (rows = sweep points, columns = models, ``mean ± std`` and
        the change from the clean point) and an accuracy table (``mean ± std`` with the real and
        fake accuracy).
    ``robustness_<family>.png``
        For each one-step family with more than one strength (e.g. ``jpeg`` at q = 95, 75, 50;
        ``blur`` at σ = 1, 2): AUC against strength, one line per model with a shaded ±std band
        and a dotted chance line at 0.5. The clean point (an open square) is drawn at the
        family's "no degradation" end and joined to the line: JPEG/WebP quality 100 (the mildest
        setting, though not lossless; when q=100 is itself a sweep point the clean square sits
        beside it, unjoined), blur/noise σ = 0, resize factor 1; ``resize:long=N`` has no such
        end and gets none. The x axis runs from the clean end to the strongest degradation
        (quality, factor and long side decrease to the right). Steps with other fixed
        parameters form their own curves (``robustness_jpeg_sub=444.png``,
        ``robustness_resize_long.png``).
    ``robustness_summary.png``
        When the sweep has points on no such curve (``social``, chains like ``blur:sigma=2+jpeg:q=50``,
        a lone ``jpeg:q=75`` ...): grouped bars of AUC ± std per model for the clean point and
        every such point.

Identity points (``blur:sigma=0`` in ``univfd``, ``resize:f=1``) reuse the clean evaluation.
"""
from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import __version__
from .fsutil import write_text_atomic
from .report import aggregate, format_mean_std

METRICS = ("auc", "accuracy", "real_accuracy", "fake_accuracy", "n")
# Per-run numbers kept from evaluate()'s result in robustness.json.
KEEP = ("n", "auc", "accuracy", "balanced_accuracy", "real_accuracy", "fake_accuracy", "ap", "ece")
# The strength parameter of each one-step kind (resize: "f", or "long" when the spec gives a long side).
STRENGTH_KEY = {"jpeg": "q", "webp": "q", "blur": "sigma", "noise": "sigma", "resize": "f"}
# Where each curve's "no degradation" end lies on its strength axis (the clean point is drawn there);
# JPEG/WebP q=100 is not lossless, but it is the mildest setting. resize:long=N has no such end.
CLEAN_STRENGTH = {("jpeg", "q"): 100.0, ("webp", "q"): 100.0, ("blur", "sigma"): 0.0, ("noise", "sigma"): 0.0,
                  ("resize", "f"): 1.0}
AXIS_LABEL = {("jpeg", "q"): "JPEG quality", ("webp", "q"): "WebP quality", ("blur", "sigma"): "Gaussian blur σ (px)",
              ("noise", "sigma"): "Gaussian noise σ (grey levels)", ("resize", "f"): "resize factor (not resized back)",
              ("resize", "long"): "long side after downscaling (px)"}
CACHE_FORMAT = 1


# ----------------------------------------------------------------------------- checkpoints

def _checkpoint_dir(path: str | Path) -> Path:
    """A checkpoint directory (``RUN`` with ``best/`` stands for ``RUN/best``)."""
    p = Path(path)
    if not (p / "config.json").is_file() and (p / "best" / "config.json").is_file():
        p = p / "best"
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a glassdetect checkpoint (no config.json)")
    return p


def _expand(pattern: str | Path) -> list[Path]:
    s = str(pattern)
    if any(c in s for c in "*?[") and not Path(s).exists():
        hits = sorted(glob.glob(s, recursive=True))
        if not hits:
            raise FileNotFoundError(f"{s}: no checkpoint matches")
        return [Path(h) for h in hits]
    return [Path(s)]


def _read_model_config(ckpt: Path) -> dict:
    return json.loads((ckpt / "config.json").read_text()).get("model", {})


def group_checkpoints(checkpoints: Sequence[str | Path] | Mapping[str, Sequence[str | Path] | str | Path]
                      ) -> "OrderedDict[str, list[Path]]":
    """``{model label: [checkpoint dirs]}`` in order of first appearance.

    A mapping gives the labels; in a sequence an entry ``NAME=PATH`` names its model (when the
    whole string is not itself an existing path) and a plain path is labelled by the checkpoint's
    ``arch``. Paths may be globs. A checkpoint listed twice under one label counts once.
    """
    pairs: list[tuple[str | None, str | Path]] = []
    if isinstance(checkpoints, Mapping):
        for name, paths in checkpoints.items():
            for p in ([paths] if isinstance(paths, (str, Path)) else paths):
                pairs.append((str(name), p))
    else:
        if isinstance(checkpoints, (str, Path)):
            checkpoints = [checkpoints]
        for item in checkpoints:
            s = str(item)
            if isinstance(item, str) and "=" in s and not Path(s).exists():
                name, _, p = s.partition("=")
                if not name or not p:
                    raise ValueError(f"{s!r}: expected NAME=PATH")
                pairs.append((name, p))
            else:
                pairs.append((None, item))
    groups: OrderedDict[str, list[Path]] = OrderedDict()
    for name, pattern in pairs:
        for hit in _expand(pattern):
            ckpt = _checkpoint_dir(hit)
            label = name or str(_read_model_config(ckpt).get("arch", "model"))
            members = groups.setdefault(label, [])
            if all(m.resolve() != ckpt.resolve() for m in members):
                members.append(ckpt)
    if not groups:
        raise ValueError("no checkpoints given")
    return groups


def _slug(text: str, limit: int = 60) -> str:
    s = re.sub(r"[^A-Za-z0-9.=_-]+", "_", text).strip("._")
    return s[:limit] or "x"


def checkpoint_id(ckpt: str | Path) -> str:
    """A readable, collision-safe id: the last path parts plus a hash of the resolved path, the
    weights' size and mtime and the config's bytes (a retrained or recalibrated checkpoint differs)."""
    ckpt = Path(ckpt).resolve()
    h = hashlib.sha256(str(ckpt).encode())
    weights = ckpt / "model.safetensors"
    if weights.exists():
        st = weights.stat()
        h.update(f"|{st.st_size}|{st.st_mtime_ns}|".encode())
    h.update((ckpt / "config.json").read_bytes())
    return f"{_slug('_'.join(ckpt.parts[-3:]), 48)}-{h.hexdigest()[:12]}"


def degradation_slug(name: str) -> str:
    """File-name-safe form of a canonical degradation spec (plus a short hash: never ambiguous)."""
    return f"{_slug(name or 'clean')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _data_fingerprint(ckpt: Path, data: str | Path, split: str | None) -> tuple[str, str]:
    """(resolved split name, hash of the evaluated images' paths, labels, sizes and mtimes):
    exactly the images evaluate() would pick for this checkpoint."""
    from .data import load_samples
    from .evaluate import select_split
    from .models.config import ModelConfig

    names = tuple(_read_model_config(ckpt).get("class_names", ModelConfig().class_names))
    samples, split = select_split(load_samples(data, names), ckpt, split)
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.path):
        try:
            st = os.stat(s.path)
            stamp = f"{st.st_size}|{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{s.path}|{s.label}|{stamp}\n".encode())
    return split, h.hexdigest()[:16]


# ----------------------------------------------------------------------------- cache

def _read_cache(path: Path, key: Mapping) -> dict | None:
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("key") != dict(key):
        return None
    return entry.get("result")


def _write_json(path: Path, obj: Any) -> None:
    """Atomic: an interrupted write never leaves a half file behind (mode 0o644, like the other outputs)."""
    write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n", mode=0o644, fsync=False)


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def _finite(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


# ----------------------------------------------------------------------------- sweep

def _curve(point) -> dict:
    """The curve a sweep point belongs to: ``{"curve": name, "kind", "axis"}`` for a single fixed
    step with a finite strength that changes images (``jpeg``, ``jpeg_sub=444``, ``resize_long``,
    ``resize_kernel=area`` ...); ``{}`` otherwise (clean, identities, chains, ``social``)."""
    d = point.degradation
    if d.is_identity or len(d.ops) != 1 or _finite(point.strength) is None:
        return {}
    op = d.ops[0]
    axis = "long" if op.kind == "resize" and op.get("long") is not None else STRENGTH_KEY.get(op.kind)
    if axis is None:
        return {}
    name = op.kind + (f"_{axis}" if axis == "long" else "")
    name += "".join(f"_{k}={v}" for k, v in op.params if k != axis)
    return {"curve": name, "kind": op.kind, "axis": axis}


def robustness(
    checkpoints: Sequence[str | Path] | Mapping[str, Sequence[str | Path] | str | Path],
    data: str | Path,
    out: str | Path,
    sweep: str = "demo",
    split: str | None = "test",
    draws: int = 1,
    batch_size: int = 16,
    workers: int = 2,
    device: str = "auto",
    threads: int = 0,
    seed: int = 0,
    progress: bool = True,
    plots: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Evaluate every checkpoint under every sweep point (cached), aggregate seeds per model and
    write ``robustness.json``, ``robustness.md`` and the plots into ``out``; return the JSON's
    content. See the module docstring for the layout."""
    from . import evaluate as ev  # module attribute: tests may replace ev.evaluate
    from .degrade import IDENTITY, sweep as make_sweep

    say = log or (lambda msg: None)
    out = Path(out)
    groups = group_checkpoints(checkpoints)
    points = []
    seen: set[str] = set()
    for p in make_sweep(sweep):
        if p.degradation.name not in seen:  # the same degradation twice is one point
            seen.add(p.degradation.name)
            points.append(p)
    all_ckpts = [c for members in groups.values() for c in members]
    say(f"robustness: {len(all_ckpts)} checkpoint(s) in {len(groups)} model(s) × {len(points)} point(s)")

    computed = cached = 0
    runs: dict[Path, dict] = {}
    split_used: set[str] = set()
    for ckpt in dict.fromkeys(all_ckpts):
        cid = checkpoint_id(ckpt)
        split_name, fingerprint = _data_fingerprint(ckpt, data, split)
        split_used.add(split_name)
        per_point: dict[str, dict] = {}
        for p in points:
            # Every identity (clean, blur:sigma=0, resize:f=1 ...) is the clean evaluation: one cache entry.
            name = IDENTITY.name if p.degradation.is_identity else p.degradation.name
            if name in per_point:
                per_point[p.degradation.name] = per_point[name]
                continue
            key = {"format": CACHE_FORMAT, "version": __version__, "checkpoint": str(ckpt.resolve()),
                   "checkpoint_id": cid, "degrade": name, "data": str(Path(data).resolve()),
                   "data_fingerprint": fingerprint, "split": split_name, "draws": draws, "seed": seed}
            path = out / "cache" / cid / f"{degradation_slug(name)}.json"
            res = _read_cache(path, key)
            if res is None:
                say(f"evaluate {ckpt} · {p.label}")
                res = ev.evaluate(ckpt, data, split=split_name, draws=draws, batch_size=batch_size, workers=workers,
                                  device=device, threads=threads, seed=seed, progress=progress,
                                  degrade=None if name == IDENTITY.name else name)
                _write_json(path, {"key": key, "result": res})
                computed += 1
            else:
                cached += 1
            per_point[name] = per_point[p.degradation.name] = res
        runs[ckpt] = {"id": cid, "split": split_name, "points": per_point}
    say(f"robustness: {computed} evaluation(s) computed, {cached} from the cache")

    result: dict[str, Any] = {
        "sweep": sweep,
        "split": split_used.pop() if len(split_used) == 1 else sorted(split_used),
        "data": str(data),
        "draws": draws,
        "seed": seed,
        "points": [{"name": p.degradation.name, "label": p.label, "family": p.family,
                    "strength": _finite(p.strength), "identity": bool(p.degradation.is_identity), **_curve(p)}
                   for p in points],
        "checkpoints": [str(c) for c in dict.fromkeys(all_ckpts)],
        "models": {},
    }
    for label, members in groups.items():
        model_runs = []
        for ckpt in members:
            cfg = _read_model_config(ckpt)
            model_runs.append({
                "checkpoint": str(ckpt), "id": runs[ckpt]["id"], "arch": cfg.get("arch"),
                "backbone": cfg.get("backbone"), "threshold": cfg.get("threshold", 0.5),
                "points": {name: {k: r.get(k) for k in KEEP} for name, r in runs[ckpt]["points"].items()},
            })
        result["models"][label] = {
            "checkpoints": [str(c) for c in members],
            "seeds": len(members),
            "arch": sorted({str(r["arch"]) for r in model_runs}),
            "backbone": sorted({str(r["backbone"]) for r in model_runs}),
            "points": {p.degradation.name: {m: v for m, v in aggregate(
                [r["points"][p.degradation.name] for r in model_runs]).items() if m in METRICS}
                for p in points},
            "runs": model_runs,
        }
    out.mkdir(parents=True, exist_ok=True)
    result["plots"] = plot(result, out) if plots else []
    _write_json(out / "robustness.json", result)
    (out / "robustness.md").write_text(markdown(result))
    say(f"wrote {out / 'robustness.json'}, {out / 'robustness.md'}"
        + "".join(f", {out / f}" for f in result["plots"]))
    return result


# ----------------------------------------------------------------------------- reports

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
