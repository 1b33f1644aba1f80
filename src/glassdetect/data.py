"""Datasets: where images come from, which split they are in, and how they become batches.

Two inputs are understood:

* an ImageFolder-style tree ``ROOT/<real>/...`` and ``ROOT/<fake>/...`` (sub-folders allowed;
  under the fake folder the first sub-folder names the generator). Optionally split already:
  ``ROOT/{train,val,test}/<real|fake>/...``. A file's group (its source image) is its file stem,
  so ``real/x.jpg`` and ``fake/gen/x.png`` are partners and never straddle splits.
* a CSV manifest ``path,label[,group][,generator][,split]`` (paths relative to the CSV), or a
  directory holding ``manifest.csv``.

:func:`load_samples` also reads the layouts other datasets ship in (:mod:`glassdetect.layouts`).

Splits are stratified by label and grouped by source; one group never straddles splits.
"""
from __future__ import annotations

import csv
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".jfif"}
SPLITS = ("train", "val", "test")
MANIFEST_NAME = "manifest.csv"


@dataclass(frozen=True)
class Sample:
    path: str  # absolute path
    label: int  # index into class_names
    group: str  # source image: the unit of independence for splitting
    key: str  # path relative to the data root, for reports
    generator: str = ""
    split: str = ""


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES


def _scan_classes(root: Path, base: Path, class_names: Sequence[str], split: str = "") -> list[Sample]:
    samples = []
    for label, name in enumerate(class_names):
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(f"{root}: expected a class folder {name!r} (classes: {', '.join(class_names)})")
        for p in sorted(folder.rglob("*")):
            if not (p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
                continue
            rel = p.relative_to(folder)
            generator = rel.parts[0] if label == len(class_names) - 1 and len(rel.parts) > 1 else ""
            samples.append(Sample(str(p.resolve()), label, p.stem, str(p.relative_to(base)), generator, split))
    return samples


def load_tree(root: str | Path, class_names: Sequence[str] = ("real", "fake")) -> list[Sample]:
    """Samples from an ImageFolder-style tree (optionally with train/val/test top folders)."""
    root = Path(root)
    # Split layout: any of train/val/test at the top and no class folder beside them.
    if any((root / s).is_dir() for s in SPLITS) and not any((root / c).is_dir() for c in class_names):
        out = []
        for split in SPLITS:
            if (root / split).is_dir():
                out += _scan_classes(root / split, root, class_names, split)
        return out
    return _scan_classes(root, root, class_names)


def load_manifest(csv_path: str | Path, class_names: Sequence[str] = ("real", "fake")) -> list[Sample]:
    """Samples from a CSV manifest; ``label`` is a class name or its index."""
    csv_path = Path(csv_path)
    base = csv_path.parent
    samples = []
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:  # tolerate Excel's BOM
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{csv_path}: a manifest needs at least the columns path,label")
        for line, row in enumerate(reader, start=2):
            label = row["label"].strip()
            if label in class_names:
                idx = list(class_names).index(label)
            elif label.isdigit() and int(label) < len(class_names):
                idx = int(label)
            else:
                raise ValueError(f"{csv_path}:{line}: unknown label {label!r} (classes: {', '.join(class_names)})")
            rel = row["path"].strip()
            p = Path(rel) if Path(rel).is_absolute() else base / rel
            split = (row.get("split") or "").strip()
            if split and split not in SPLITS:
                raise ValueError(f"{csv_path}:{line}: unknown split {split!r} (use {', '.join(SPLITS)})")
            samples.append(
                Sample(str(p.resolve()), idx, (row.get("group") or "").strip() or Path(rel).stem, rel,
                       (row.get("generator") or "").strip(), split)
            )
    return samples


def load_samples(data: str | Path, class_names: Sequence[str] = ("real", "fake")) -> list[Sample]:
    """A manifest file, a directory with ``manifest.csv``, an ImageFolder-style tree, or any other
    layout :mod:`glassdetect.layouts` recognises (the paper's Kaggle set, ForenSynths/CNNDetection,
    GenImage, SPAI and B-Free CSV lists); see docs/datasets.md."""
    from .layouts import load  # layouts builds on this module's loaders

    return load(data, class_names)


def assign_splits(
    samples: Sequence[Sample], fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0
) -> list[Sample]:
    """Give every sample without a split one, grouped by source and stratified by label.

    Groups are visited in a seeded random order and each goes to the split whose per-label
    counts are furthest below their targets. Samples that already have a split keep it, and
    unsplit samples of a group that already has one join that split.
    """
    preset: dict[str, str] = {}
    for s in samples:
        if s.split:
            preset.setdefault(s.group, s.split)
    todo = [s for s in samples if not s.split and s.group not in preset]
    if not todo:
        return [s if s.split else replace(s, split=preset[s.group]) for s in samples]
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in todo:
        groups[s.group].append(s)
    labels = sorted({s.label for s in todo})
    total = Counter(s.label for s in todo)
    target = np.array([[f * total[l] for l in labels] for f in fractions])  # (3, L)
    have = np.zeros_like(target)
    names = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(names))
    chosen: dict[str, str] = dict(preset)
    for i in order:
        name = names[i]
        count = np.array([sum(s.label == l for s in groups[name]) for l in labels], dtype=float)
        deficit = ((target - have) * count).sum(axis=1) / np.maximum(np.array(fractions), 1e-9)
        deficit[np.array(fractions) <= 0] = -np.inf
        j = int(np.argmax(deficit))
        have[j] += count
        chosen[name] = SPLITS[j]
    return [s if s.split else replace(s, split=chosen[s.group]) for s in samples]


def check_no_leak(samples: Iterable[Sample]) -> None:
    """Raise if one source group appears in two splits."""
    where: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        where[s.group].add(s.split)
    leaks = [g for g, sp in where.items() if len(sp) > 1]
    if leaks:
        raise ValueError(f"source groups straddle splits: {leaks[:5]}")


def write_split(samples: Sequence[Sample], path: str | Path) -> None:
    """Save the split used by a run (absolute paths, so evaluation can reuse it)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "group", "generator", "split", "key"])
        for s in samples:
            w.writerow([s.path, s.label, s.group, s.generator, s.split, s.key])


def read_split(path: str | Path) -> dict[str, str]:
    """Absolute path -> split, from a file written by :func:`write_split`."""
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["path"]: row["split"] for row in csv.DictReader(fh)}
