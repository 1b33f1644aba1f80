"""Evaluation: a checkpoint on a dataset split -> metrics JSON, reliability / ROC / PR plots, per-image CSV.

Crops are deterministic (a function of each image's content), so two evaluations of the same
checkpoint on the same data give the same numbers. ``draws > 1`` averages the fake probability
over several stratified draws per image and reports their spread. ``degrade`` (a
:mod:`glassdetect.views.degrade` spec) evaluates on degraded copies of the images — a function of each
image's content, the degradation and the draw, so this too is deterministic.
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .curves import write_plots
from ..data.splits import Sample, load_samples, read_split
from ..views.degrade import parse as parse_degradation
from .metrics import binary_metrics, bootstrap_auc, per_generator
from ..models import load_checkpoint
from ..pipeline import ViewDataset, infer, make_loader
from ..runtime import configure_threads, resolve_device, restores_threads


def select_split(samples: list[Sample], checkpoint: Path, split: str | None) -> tuple[list[Sample], str]:
    """Samples of ``split``. Split labels come from the run that produced the checkpoint
    (``RUN/split.csv``: the data's own splits plus what training assigned, e.g. a validation split
    carved out of a train folder) and, for images that run did not see, from the data itself
    (manifest column or train/val/test folders).
    ``split=None``: the test split when one is known, otherwise every image."""
    saved = checkpoint.resolve().parent / "split.csv"
    if saved.exists():  # the run's split: the data's own, plus what training assigned (or carved out of train)
        where = read_split(saved)
        samples = [replace(s, split=where.get(s.path, s.split)) for s in samples]
    known = any(s.split for s in samples)
    if split in (None, "auto"):
        split = "test" if known and any(s.split == "test" for s in samples) else "all"
    if split == "all":
        return samples, split
    if not known:
        raise ValueError(f"--split {split}: the data names no splits and {checkpoint} has no run split.csv beside it")
    chosen = [s for s in samples if s.split == split]
    if not chosen:
        raise ValueError(f"--split {split}: no images in that split")
    return chosen, split


_LAST: dict[tuple, tuple] = {}  # the checkpoint loaded last by evaluate or calibrate: {key: (model, meta)}
# ModelConfig fields a calibration rewrites: they change what a model's output is called, not the output
DECISION_FIELDS = ("temperature", "threshold", "unsure_band")


def _files_stamp(checkpoint: Path) -> tuple:
    """Name, size and modification time of every file of a checkpoint, and the bytes of its (small)
    JSON files: a config rewritten within the file system's time resolution still counts as new."""
    files = sorted(checkpoint.iterdir()) if checkpoint.is_dir() else [checkpoint]
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns, f.read_bytes() if f.suffix == ".json" else b"")
                 for f in files if f.is_file())


def load_cached(checkpoint: Path, dev) -> tuple:
    """:func:`load_checkpoint`, reusing the previous call's model when the same checkpoint (path, every
    file's size and modification time, the config's bytes) is loaded again on the same device. A
    robustness sweep evaluates one checkpoint at many points, and each fresh model builds its CPU
    graphs anew, which costs their warm-up and ~70 MB per GLASS-Lite0 rebuild that TorchScript never
    gives back (``models.common.CpuGraphs``; benchmarks/memory/graph_leak.py). One model is kept."""
    key = (str(checkpoint.resolve()), str(dev), _files_stamp(checkpoint))
    hit = _LAST.get(key)
    if hit is None:
        _LAST.clear()
        hit = _LAST[key] = load_checkpoint(checkpoint, dev)
    return hit


def clear_cached() -> None:
    """Let go of :func:`load_cached`'s model (and its CPU graphs): before a process trains the next
    model, so the last evaluated one does not sit under the training's peak."""
    _LAST.clear()


def refresh_cached(checkpoint: Path) -> None:
    """After ``checkpoint``'s config was rewritten, keep its cached model (:func:`load_cached`) if only
    decision fields changed (:data:`DECISION_FIELDS`, what ``calibrate`` writes): apply the new values
    and file it under the new files; drop it if anything else changed. A calibration followed by
    the test evaluation then builds one model and one set of graphs, not two."""
    from ..models import ModelConfig, read_config

    path = str(checkpoint.resolve())
    cached = next(iter(_LAST.items()), None)  # one entry at most
    if cached is None or cached[0][0] != path:
        return
    (_, dev, _), (model, _) = cached
    _LAST.clear()
    meta = read_config(checkpoint)
    new = ModelConfig.from_dict(meta["model"])
    same = {f: getattr(model.cfg, f) for f in DECISION_FIELDS}
    if replace(new, **same) == model.cfg:
        for f in DECISION_FIELDS:
            setattr(model.cfg, f, getattr(new, f))
        _LAST[(path, dev, _files_stamp(checkpoint))] = (model, meta)


@restores_threads  # ``threads`` applies to this call; the caller's torch thread count comes back
def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    split: str | None = None,
    draws: int = 1,
    out: str | Path | None = None,
    batch_size: int = 16,
    workers: int = 2,
    device: str = "auto",
    threads: int = 0,
    seed: int = 0,
    bootstrap: int = 0,
    progress: bool = True,
    degrade: str | None = None,
) -> dict:
    try:  # before loading anything: a bad spec fails fast
        deg = parse_degradation(degrade)
    except ValueError as exc:
        raise ValueError(f"degrade {degrade!r}: {exc}") from None
    checkpoint = Path(checkpoint)
    dev = resolve_device(device)
    configure_threads(threads)
    model, meta = load_cached(checkpoint, dev)
    cfg = model.cfg
    samples, split = select_split(load_samples(data, cfg.class_names), checkpoint, split)
    draws = max(1, draws) if cfg.arch == "glass" else 1  # the baseline has no random crops
    t0 = time.perf_counter()
    bar = tqdm(total=len(samples), desc="evaluate", unit="img", disable=not progress, leave=False)
    ds = ViewDataset(samples, cfg.view_spec(), seed=seed, draws=draws, degrade=deg)
    preds = infer(model, make_loader(ds, batch_size, workers, device=dev), dev, progress=bar.update)
    bar.close()
    seconds = time.perf_counter() - t0
    idx, prob, spread = preds.per_image()
    labels = np.array([samples[i].label for i in idx], dtype=int)
    gens = [samples[i].generator for i in idx]
    result = binary_metrics(prob, labels, cfg.threshold)
    result.update(
        split=split, degrade=deg.name, draws=draws, mean_spread=float(spread.mean()) if len(spread) else None,
        max_spread=float(spread.max()) if len(spread) else None, seed=seed,
        checkpoint=str(checkpoint), data=str(data), arch=cfg.arch, backbone=cfg.backbone, k=cfg.k,
        errors=[{"path": p, "reason": r} for p, r in preds.errors],
        seconds=seconds, seconds_per_image=seconds / max(len(samples) * draws, 1), device=str(dev),
    )
    if any(gens):
        result["per_generator"] = per_generator(prob, labels, gens, cfg.threshold)
    if bootstrap and len(labels):
        ci = bootstrap_auc(prob, labels, [samples[i].group for i in idx], n=bootstrap, seed=seed)
        result["auc_ci95"] = list(ci) if ci else None
    target_fpr = (meta.get("calibration") or {}).get("target_fpr")
    if target_fpr is not None:  # the budget the threshold was set for, beside the FPR it reaches here
        result["target_fpr"] = target_fpr
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        result["plots"] = write_plots(prob, labels, out, cfg.threshold, title=f"{cfg.arch} · {split}")
        out.write_text(json.dumps(result, indent=2))
        with open(out.with_suffix(".predictions.csv"), "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "label", "group", "generator", "fake_probability", "spread"])
            for j, i in enumerate(idx):
                s = samples[i]
                w.writerow([s.path, cfg.class_names[s.label], s.group, s.generator, f"{prob[j]:.6f}", f"{spread[j]:.6f}"])
    return result
