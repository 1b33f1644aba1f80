"""Labelled images and glassdetect's own two formats: an ImageFolder-style tree and a CSV manifest.

* a tree ``ROOT/<real>/...`` and ``ROOT/<fake>/...`` (sub-folders allowed; under the fake folder
  the first sub-folder names the generator), optionally split already:
  ``ROOT/{train,val,test}/<real|fake>/...``. A file's group (its source image) is its file stem,
  so ``real/x.jpg`` and ``fake/gen/x.png`` are partners and never straddle splits.
* a CSV manifest ``path,label[,group][,generator][,split][,family][,history]`` (paths relative to the CSV).

Other datasets' layouts build on these (:mod:`glassdetect.data.layouts`); splitting is :mod:`glassdetect.data.splits`.
"""
from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

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
    family: str = ""  # the generator's family (manifest column ``family``; "" when absent)
    history: str = ""  # the pixel history of the image (manifest column ``history``; "" when absent)


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
                       (row.get("generator") or "").strip(), split, (row.get("family") or "").strip(),
                       (row.get("history") or "").strip())
            )
    return samples


def check_no_leak(samples: Iterable[Sample]) -> None:
    """Raise if one source group appears in two splits."""
    where: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        where[s.group].add(s.split)
    leaks = [g for g, sp in where.items() if len(sp) > 1]
    if leaks:
        raise ValueError(f"source groups straddle splits: {leaks[:5]}")
