"""Datasets: which images, with which labels, in which split.

:func:`load_samples` reads glassdetect's own tree and manifest (:mod:`glassdetect.data.samples`) and the
layouts other datasets ship in (:mod:`glassdetect.data.layouts`). Splits are stratified by label and
grouped by source; one group never straddles splits. How the samples become batches of views is
:mod:`glassdetect.pipeline`.
"""
from __future__ import annotations

import csv
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .layouts import load as _load_layout
from .samples import (  # noqa: F401 - re-exported: the data API as it was
    IMAGE_SUFFIXES, MANIFEST_NAME, SPLITS, Sample, check_no_leak, load_manifest, load_tree,
)


def load_samples(data: str | Path, class_names: Sequence[str] = ("real", "fake")) -> list[Sample]:
    """A manifest file, a directory with ``manifest.csv``, an ImageFolder-style tree, or any other
    layout :mod:`glassdetect.data.layouts` recognises (the paper's Kaggle set, ForenSynths/CNNDetection,
    GenImage, SPAI and B-Free CSV lists); see docs/datasets.md."""
    return _load_layout(data, class_names)


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


def carve_val(samples: Sequence[Sample], fraction: float, seed: int) -> list[Sample]:
    """Move ``fraction`` of the train samples to val: grouped by source, stratified by label, seeded.

    Samples of other splits keep theirs; the order of ``samples`` is kept. When the fraction
    rounds to no group at all, the first train group goes to val (as long as train keeps one).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    pool = [replace(s, split="") for s in samples if s.split == "train"]
    carved = assign_splits(pool, (1.0 - fraction, fraction, 0.0), seed)
    groups = list(dict.fromkeys(s.group for s in pool))
    if len(groups) > 1 and not any(s.split == "val" for s in carved):
        carved = [replace(s, split="val") if s.group == groups[0] else s for s in carved]
    it = iter(carved)
    return [next(it) if s.split == "train" else s for s in samples]


def pair_key(sample: Sample, class_names: Sequence[str]) -> tuple[str, str]:
    """What a real and its fake share: the source group and the file's path with its class folder (and
    a generator folder right below it) taken out: ``images/train/real/x.png`` and
    ``images/train/fake/x.png`` -> ``images/train/x.png``; ``real/x.png`` and ``fake/gen_a/x.png`` -> ``x.png``."""
    parts = list(Path(sample.key).parts)
    name = class_names[sample.label] if 0 <= sample.label < len(class_names) else None
    dirs = parts[:-1]
    if name in dirs:
        at = len(dirs) - 1 - dirs[::-1].index(name)
        drop = 2 if sample.generator and at + 1 < len(dirs) and dirs[at + 1] == sample.generator else 1
        del parts[at:at + drop]
    return sample.group, "/".join(parts)


def pair_units(samples: Sequence[Sample], class_names: Sequence[str]) -> list[list[int]]:
    """Indices of ``samples`` grouped into training units: the images that share a :func:`pair_key`
    and between them hold more than one class (a real and the fake made from it; a version-3
    benchmark's aligned region pair) form one unit, classes in ``class_names`` order; every other
    image is a unit of its own. Units keep the order of their first image."""
    by_key: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_key[pair_key(s, class_names)].append(i)
    units: list[list[int]] = []
    for members in by_key.values():
        if len({samples[i].label for i in members}) > 1:
            units.append(sorted(members, key=lambda i: (samples[i].label, i)))
        else:
            units.extend([i] for i in members)
    return sorted(units, key=min)


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
