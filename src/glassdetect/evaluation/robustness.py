"""Robustness sweeps: every checkpoint on one split under every point of a degradation sweep.

``robustness(checkpoints, data, out, sweep="demo")`` evaluates each checkpoint with
:func:`glassdetect.evaluation.evaluate.evaluate` on the chosen split (default ``test``) once per sweep point
(:func:`glassdetect.views.degrade.sweep`: a preset such as ``demo``, ``univfd``, ``sidbench``,
``genimage``, ``social``, or ``;``-separated specs such as ``"jpeg:q=50;blur:sigma=2"``; the
``clean`` point comes first). The degradation is applied in memory to each decoded image before
its views are built; the image files are only read.

Models and seeds
    Checkpoints are grouped into models by a label: ``NAME=PATH`` (``PATH`` may be a glob, e.g.
    ``glass='runs/glass/seed*/best'``), the keys of a mapping ``{name: [paths]}``, or by default
    the ``arch`` in the checkpoint's ``config.json`` (``glass``, ``standard``). Checkpoints sharing
    a label are seeds of one model: each metric is reported as mean ± std over them
    (:func:`glassdetect.evaluation.report.aggregate`, sample std, 0 for one seed). A run directory holding
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
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .. import __version__
from ..fsutil import write_text_atomic
from .report import aggregate
from .robustness_report import _slug, markdown, plot  # noqa: F401 - markdown, plot: part of this module's API

METRICS = ("auc", "accuracy", "real_accuracy", "fake_accuracy", "n")
# Per-run numbers kept from evaluate()'s result in robustness.json.
KEEP = ("n", "auc", "accuracy", "balanced_accuracy", "real_accuracy", "fake_accuracy", "ap", "ece")
# The strength parameter of each one-step kind (resize: "f", or "long" when the spec gives a long side).
STRENGTH_KEY = {"jpeg": "q", "webp": "q", "blur": "sigma", "noise": "sigma", "resize": "f"}
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
    from ..data.splits import load_samples
    from .evaluate import select_split
    from ..models.config import ModelConfig

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


def _evaluate_checkpoint(ckpt: Path, data, split, points, cache: Path, opts: dict, counts: dict,
                         say: Callable[[str], None]) -> dict:
    """One checkpoint at every sweep point, from the cache where it holds a matching result."""
    from . import evaluate as ev  # module attribute: tests may replace ev.evaluate
    from ..views.degrade import IDENTITY

    cid = checkpoint_id(ckpt)
    split_name, fingerprint = _data_fingerprint(ckpt, data, split)
    per_point: dict[str, dict] = {}
    for p in points:
        # Every identity (clean, blur:sigma=0, resize:f=1 ...) is the clean evaluation: one cache entry.
        name = IDENTITY.name if p.degradation.is_identity else p.degradation.name
        if name in per_point:
            per_point[p.degradation.name] = per_point[name]
            continue
        key = {"format": CACHE_FORMAT, "version": __version__, "checkpoint": str(ckpt.resolve()),
               "checkpoint_id": cid, "degrade": name, "data": str(Path(data).resolve()),
               "data_fingerprint": fingerprint, "split": split_name, "draws": opts["draws"], "seed": opts["seed"]}
        path = cache / cid / f"{degradation_slug(name)}.json"
        res = _read_cache(path, key)
        if res is None:
            say(f"evaluate {ckpt} · {p.label}")
            res = ev.evaluate(ckpt, data, split=split_name, degrade=None if name == IDENTITY.name else name, **opts)
            _write_json(path, {"key": key, "result": res})
            counts["computed"] += 1
        else:
            counts["cached"] += 1
        per_point[name] = per_point[p.degradation.name] = res
    return {"id": cid, "split": split_name, "points": per_point}


def _model_entry(members: Sequence[Path], runs: Mapping[Path, dict], points) -> dict:
    """One model's seeds: the per-checkpoint numbers kept and their mean ± std per sweep point."""
    model_runs = []
    for ckpt in members:
        cfg = _read_model_config(ckpt)
        model_runs.append({
            "checkpoint": str(ckpt), "id": runs[ckpt]["id"], "arch": cfg.get("arch"),
            "backbone": cfg.get("backbone"), "threshold": cfg.get("threshold", 0.5),
            "points": {name: {k: r.get(k) for k in KEEP} for name, r in runs[ckpt]["points"].items()},
        })
    return {
        "checkpoints": [str(c) for c in members],
        "seeds": len(members),
        "arch": sorted({str(r["arch"]) for r in model_runs}),
        "backbone": sorted({str(r["backbone"]) for r in model_runs}),
        "points": {p.degradation.name: {m: v for m, v in aggregate(
            [r["points"][p.degradation.name] for r in model_runs]).items() if m in METRICS}
            for p in points},
        "runs": model_runs,
    }


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
    from ..views.degrade import sweep as make_sweep

    say = log or (lambda msg: None)
    out = Path(out)
    groups = group_checkpoints(checkpoints)
    unique: dict[str, Any] = {}
    for p in make_sweep(sweep):
        unique.setdefault(p.degradation.name, p)  # the same degradation twice is one point
    points = list(unique.values())
    all_ckpts = [c for members in groups.values() for c in members]
    say(f"robustness: {len(all_ckpts)} checkpoint(s) in {len(groups)} model(s) × {len(points)} point(s)")
    opts = dict(draws=draws, batch_size=batch_size, workers=workers, device=device, threads=threads, seed=seed,
                progress=progress)
    counts = {"computed": 0, "cached": 0}
    runs = {ckpt: _evaluate_checkpoint(ckpt, data, split, points, out / "cache", opts, counts, say)
            for ckpt in dict.fromkeys(all_ckpts)}
    say(f"robustness: {counts['computed']} evaluation(s) computed, {counts['cached']} from the cache")
    split_used = {r["split"] for r in runs.values()}

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
        result["models"][label] = _model_entry(members, runs, points)
    out.mkdir(parents=True, exist_ok=True)
    result["plots"] = plot(result, out) if plots else []
    _write_json(out / "robustness.json", result)
    (out / "robustness.md").write_text(markdown(result))
    say(f"wrote {out / 'robustness.json'}, {out / 'robustness.md'}"
        + "".join(f", {out / f}" for f in result["plots"]))
    return result
