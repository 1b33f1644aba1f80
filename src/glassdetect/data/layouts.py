"""Dataset layouts people already have, read as they are (nothing is ever written into them).

A small registry: each :class:`Layout` is a name, a ``detect(path, class_names) -> bool`` and a
``load(path, class_names) -> list[Sample]``. :func:`detect_layout` tries them in order and the first
that recognises the path wins; :func:`glassdetect.data.splits.load_samples` goes through here, so every
command that takes ``--data`` reads every layout. :func:`inspect` summarises what was recognised
(``glassdetect data inspect PATH``). See docs/datasets.md for the layouts and the choices made.

Groups (the source image; splits never divide one): our own tree and manifest keep theirs (the file
stem; the manifest's ``group`` column). Foreign layouts do not pair files by name, so a file's group
is its path without extension relative to its class folder, prefixed by the folders above the class
folder (split, generator, category): a real and a fake image with the same name in the same folder
pair stay together, while unrelated ``0001.png`` files of two generators or two splits never merge.
"""
from __future__ import annotations

import csv
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .samples import IMAGE_SUFFIXES, MANIFEST_NAME, SPLITS, Sample, check_no_leak, load_manifest, load_tree

DEFAULT_CLASSES = ("real", "fake")
FORENSYNTHS_CLASSES = ("0_real", "1_fake")
GENIMAGE_CLASSES = ("nature", "ai")
GENIMAGE_SPLITS = {"train": "train", "val": "test"}  # GenImage's val folder is its test set


@dataclass(frozen=True)
class Layout:
    name: str
    description: str
    detect: Callable[[Path, Sequence[str]], bool]
    load: Callable[[Path, Sequence[str]], list[Sample]]


# ---------------------------------------------------------------------------------- helpers

def _binary(layout: str, class_names: Sequence[str]) -> None:
    if len(class_names) != 2:
        raise ValueError(f"the {layout} layout has two classes (real, fake); got classes {', '.join(class_names)}")


def _csv_header(path: Path) -> set[str]:
    """Lower-cased column names of a CSV file; empty when ``path`` is not a readable text CSV."""
    if not path.is_file():
        return set()
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            row = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return set()
    return {c.strip().lower() for c in row}


def _subdirs(d: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(d) as it:
            return sorted((e for e in it if not e.name.startswith(".") and e.is_dir()), key=lambda e: e.name)
    except OSError:
        return []


def _find_dirs(root: Path, names: Sequence[str], max_depth: int) -> list[Path]:
    """Folders named one of ``names`` at most ``max_depth`` levels below ``root`` (the root itself
    excluded), in sorted order; their insides are not searched (they may hold many files)."""
    found: list[Path] = []

    def walk(d: Path, depth: int) -> None:
        for e in _subdirs(d):
            if e.name in names:
                found.append(Path(e.path))
            elif depth < max_depth:
                walk(Path(e.path), depth + 1)

    walk(root, 1)
    return found


def _images(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]


def _scan_foreign(folder: Path, root: Path, label: int, above: Sequence[str], split: str,
                  generator: str) -> list[Sample]:
    """Every image under class folder ``folder``; its group is ``above/…/inner path without extension``."""
    out = []
    for p in _images(folder):
        group = "/".join([*above, p.relative_to(folder).with_suffix("").as_posix()])
        out.append(Sample(str(p.resolve()), label, group, str(p.relative_to(root)), generator, split))
    return out


def _child_ci(d: Path, name: str) -> Path | None:
    """The sub-folder of ``d`` named ``name``, ignoring case (``REAL`` for ``real``)."""
    if (d / name).is_dir():
        return d / name
    return next((Path(e.path) for e in _subdirs(d) if e.name.lower() == name.lower()), None)


# ------------------------------------------------------------------------- our own formats

def _manifest_file(path: Path) -> Path:
    return path / MANIFEST_NAME if path.is_dir() else path


def _detect_manifest(path: Path, class_names: Sequence[str]) -> bool:
    return (path.is_dir() and (path / MANIFEST_NAME).is_file()) or {"path", "label"} <= _csv_header(path)


def _load_manifest(path: Path, class_names: Sequence[str]) -> list[Sample]:
    return load_manifest(_manifest_file(path), class_names)


def _any_class(d: Path, class_names: Sequence[str]) -> bool:
    return any((d / c).is_dir() for c in class_names)


def _detect_tree(path: Path, class_names: Sequence[str]) -> bool:
    """A class folder at the top, or in a split folder at the top (one is enough: the loader then
    names a missing one)."""
    return path.is_dir() and (_any_class(path, class_names) or any(_any_class(path / s, class_names) for s in SPLITS))


def _load_tree(path: Path, class_names: Sequence[str]) -> list[Sample]:
    return load_tree(path, class_names)


# --------------------------------------------------------------------- the paper's Kaggle set

def _kaggle_splits(path: Path, class_names: Sequence[str]) -> dict[str, Path]:
    """Split -> folder holding the class folders: ``ROOT/{train,test}`` (no val), or ``ROOT`` itself
    when it is named ``test`` and holds the class folders (pointing at the test folder)."""
    def has(d: Path) -> bool:
        return all(_child_ci(d, c) is not None for c in class_names)

    if path.name.lower() == "test" and has(path):
        return {"test": path}
    if not path.is_dir() or (path / "val").is_dir() or any((path / c).is_dir() for c in class_names):
        return {}
    found = {s: path / s for s in ("train", "test") if (path / s).is_dir()}
    return found if found and all(has(d) for d in found.values()) else {}


def _detect_kaggle(path: Path, class_names: Sequence[str]) -> bool:
    return bool(_kaggle_splits(path, class_names))


def _load_kaggle(path: Path, class_names: Sequence[str]) -> list[Sample]:
    """Like our own tree (class folder names matched ignoring case, generator = first sub-folder of
    the last class), but a group is ``split/stem``: files are not paired across the set's splits."""
    out: list[Sample] = []
    for split, d in _kaggle_splits(path, class_names).items():
        for label, name in enumerate(class_names):
            folder = _child_ci(d, name)
            assert folder is not None  # _kaggle_splits checked it
            for p in _images(folder):
                rel = p.relative_to(folder)
                gen = rel.parts[0] if label == len(class_names) - 1 and len(rel.parts) > 1 else ""
                out.append(Sample(str(p.resolve()), label, f"{split}/{p.stem}", str(p.relative_to(path)), gen, split))
    return out


# ------------------------------------------- ForenSynths / CNNDetection / WildRF / AIGCDetectBenchmark

def _context(root: Path) -> list[str]:
    """Folder names above ``root`` that still describe it: its own name when it is a split folder,
    or its parent's and its own when it sits directly in one (pointing at ``test/<generator>``)."""
    root = root.resolve()
    if root.name in SPLITS:
        return [root.name]
    if root.parent.name in SPLITS:
        return [root.parent.name, root.name]
    return []


def _detect_forensynths(path: Path, class_names: Sequence[str]) -> bool:
    return path.is_dir() and bool(_find_dirs(path, FORENSYNTHS_CLASSES, 5))


def _load_forensynths(path: Path, class_names: Sequence[str]) -> list[Sample]:
    """``…/[split/][generator or category/…]{0_real,1_fake}/…``. A split folder at the top sets the
    split; the folder below it names the generator under test/ (or with no split folder at all),
    while under train/ and val/ it is a source category (CNNDetection's ``train/car``): generator
    left empty, the category stays in the key and the group."""
    _binary("forensynths", class_names)
    out: list[Sample] = []
    for folder in _find_dirs(path, FORENSYNTHS_CLASSES, 5):
        above = [*_context(path), *folder.parent.relative_to(path).parts]
        split = above[0] if above and above[0] in SPLITS else ""
        rest = above[1:] if split else above
        generator = rest[0] if rest and split in ("", "test") else ""
        out += _scan_foreign(folder, path, FORENSYNTHS_CLASSES.index(folder.name), above, split, generator)
    return out


# --------------------------------------------------------------------------------- GenImage

def _genimage_dirs(path: Path) -> list[Path]:
    if not path.is_dir():
        return []
    dirs = _find_dirs(path, GENIMAGE_CLASSES, 4)
    if path.name in GENIMAGE_SPLITS:  # pointing at a train/ or val/ folder
        dirs = [d for d in dirs if d.parent == path] or dirs
    return [d for d in dirs if d.parent.name in GENIMAGE_SPLITS]


def _detect_genimage(path: Path, class_names: Sequence[str]) -> bool:
    return bool(_genimage_dirs(path))


def _load_genimage(path: Path, class_names: Sequence[str]) -> list[Sample]:
    """``<Generator>/<subset>/{train,val}/{nature,ai}``: the structure is fixed, so the generator is
    the folder two above the split folder wherever the given path starts (the GenImage root, one
    generator or one subset). GenImage's val is its test set: read as split ``test``."""
    _binary("genimage", class_names)
    out: list[Sample] = []
    for folder in _genimage_dirs(path):
        split_dir = folder.parent.resolve()
        generator = split_dir.parent.parent.name
        above = [generator, split_dir.parent.name, split_dir.name]
        out += _scan_foreign(folder, path, GENIMAGE_CLASSES.index(folder.name), above,
                             GENIMAGE_SPLITS[split_dir.name], generator)
    return out


# ----------------------------------------------------------------------- SPAI and B-Free CSVs

@dataclass(frozen=True)
class CsvFormat:
    name: str
    path_col: str
    label_col: str
    labels: dict[str, int]  # lower-cased value -> 0 (real) / 1 (fake)


SPAI = CsvFormat("spai-csv", "image", "class", {"0": 0, "1": 1, "real": 0, "fake": 1})
BFREE = CsvFormat("bfree-csv", "filename", "label", {"0": 0, "1": 1, "real": 0, "fake": 1})
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def _parse_row(fmt: CsvFormat, csv_path: Path, line: int, row: dict[str, str]) -> Sample:
    def col(name: str) -> str:
        return (row.get(name) or "").strip()

    value = col(fmt.label_col)
    if value.lower() not in fmt.labels:
        raise ValueError(f"{csv_path}:{line}: unknown {fmt.label_col} {value!r} "
                         f"(use {', '.join(sorted({k.upper() if k.isalpha() else k for k in fmt.labels}))})")
    rel = col(fmt.path_col)
    if not rel:
        raise ValueError(f"{csv_path}:{line}: empty {fmt.path_col}")
    split = col("split").lower()
    if split and split not in SPLIT_ALIASES:
        raise ValueError(f"{csv_path}:{line}: unknown split {split!r} (use {', '.join(SPLITS)})")
    p = Path(rel) if Path(rel).is_absolute() else csv_path.parent / rel
    generator = col("generator")
    group = "/".join(x for x in (generator, Path(rel).with_suffix("").as_posix()) if x)
    return Sample(str(p.resolve()), fmt.labels[value.lower()], group, rel, generator, SPLIT_ALIASES.get(split, ""))


def _load_csv(fmt: CsvFormat, csv_path: Path, class_names: Sequence[str]) -> list[Sample]:
    """Rows of a foreign CSV list; paths relative to the CSV; optional ``split`` and ``generator`` columns."""
    _binary(fmt.name, class_names)
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        reader.fieldnames = [c.strip().lower() for c in reader.fieldnames or []]
        return [_parse_row(fmt, csv_path, line, row) for line, row in enumerate(reader, start=2)]


def _csv_layout(fmt: CsvFormat, description: str) -> Layout:
    return Layout(fmt.name, description, lambda p, _c: {fmt.path_col, fmt.label_col} <= _csv_header(p),
                  lambda p, c: _load_csv(fmt, p, c))


# ------------------------------------------------------------------------------- registry

LAYOUTS: tuple[Layout, ...] = (
    Layout("manifest", "glassdetect manifest: path,label[,group][,generator][,split]",
           _detect_manifest, _load_manifest),
    _csv_layout(SPAI, "SPAI CSV: image,class[,split] (class 1 = fake), paths relative to the CSV"),
    _csv_layout(BFREE, "B-Free CSV: filename,label (0/REAL = real, 1/FAKE = fake), paths relative to the CSV"),
    Layout("kaggle", "the paper's Kaggle set: ROOT/{train,test}/{real,fake} (no val), or ROOT/test alone",
           _detect_kaggle, _load_kaggle),
    Layout("imagefolder", "glassdetect tree: ROOT/[{train,val,test}/]{real,fake}/...", _detect_tree, _load_tree),
    Layout("genimage", "GenImage: <Generator>/<subset>/{train,val}/{nature,ai} (val read as test)",
           _detect_genimage, _load_genimage),
    Layout("forensynths", "ForenSynths / CNNDetection / WildRF / AIGCDetectBenchmark: .../{0_real,1_fake}",
           _detect_forensynths, _load_forensynths),
)


def detect_layout(path: str | Path, class_names: Sequence[str] = DEFAULT_CLASSES) -> Layout:
    """The first layout of :data:`LAYOUTS` that recognises ``path``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data not found: {path}")
    for layout in LAYOUTS:
        if layout.detect(path, class_names):
            return layout
    if path.is_file():  # not a CSV we know: the manifest loader names the missing columns
        return LAYOUTS[0]
    known = "\n".join(f"  - {lay.name}: {lay.description}" for lay in LAYOUTS)
    raise FileNotFoundError(f"{path}: no dataset layout recognised (classes: {', '.join(class_names)}). "
                            f"Expected one of:\n{known}\n(see docs/datasets.md)")


def load(path: str | Path, class_names: Sequence[str] = DEFAULT_CLASSES) -> list[Sample]:
    """Samples from any recognised layout."""
    return detect_layout(path, class_names).load(Path(path), tuple(class_names))


# -------------------------------------------------------------------------------- inspect

def _notes(layout: Layout, samples: Sequence[Sample], class_names: Sequence[str], missing: int) -> list[str]:
    notes = []
    splits = {s.split for s in samples}
    if splits == {""}:
        notes.append("no split given: training assigns train/val/test (grouped by source, stratified by label)")
    elif "train" in splits and "val" not in splits:
        notes.append("no val split: training carves one out of train (grouped by source)")
    if layout.name == "genimage":
        notes.append("GenImage's val folders are its test set: read as split 'test'")
    counts = Counter(s.label for s in samples)
    notes += [f"no {name!r} images" for i, name in enumerate(class_names) if not counts[i]]
    if missing:
        notes.append(f"{missing} listed file(s) do not exist")
    try:
        check_no_leak(samples)
    except ValueError as exc:
        notes.append(str(exc))
    return notes


def inspect(path: str | Path, class_names: Sequence[str] = DEFAULT_CLASSES) -> dict:
    """What :func:`load` recognises at ``path``: the layout, classes, and counts per split and generator."""
    layout = detect_layout(path, class_names)
    samples = layout.load(Path(path), tuple(class_names))
    names = list(class_names)
    splits: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(names, 0))
    gens: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: dict.fromkeys(names, 0)))
    for s in samples:
        splits[s.split or "-"][names[s.label]] += 1
        gens[s.split or "-"][s.generator or "-"][names[s.label]] += 1
    missing = sum(not os.path.exists(s.path) for s in samples)
    order = [*SPLITS, "-"]
    return {
        "path": str(path), "layout": layout.name, "description": layout.description, "classes": names,
        "n_images": len(samples), "n_groups": len({s.group for s in samples}), "missing_files": missing,
        "splits": {k: splits[k] for k in order if k in splits},
        "generators": {k: {g: dict(c) for g, c in sorted(gens[k].items())} for k in order if k in gens},
        "notes": _notes(layout, samples, names, missing),
    }


def _table(rows: list[list[str]], left: int = 1) -> list[str]:
    """Aligned columns: the first ``left`` ones flush left, the counts flush right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]


def render(summary: dict) -> str:
    """The text ``glassdetect data inspect`` prints for an :func:`inspect` summary."""
    names = summary["classes"]
    lines = [f"path:    {summary['path']}", f"layout:  {summary['layout']} ({summary['description']})",
             f"classes: {', '.join(f'{n} = {i}' for i, n in enumerate(names))}",
             f"images:  {summary['n_images']} in {summary['n_groups']} source groups", "", "per split:"]
    head = ["split", *names, "total"]
    lines += _table([head] + [[k, *(str(c[n]) for n in names), str(sum(c.values()))]
                              for k, c in summary["splits"].items()])
    lines += ["", "per split and generator ('-' = none):"]
    rows = [["split", "generator", *names]]
    for split, by_gen in summary["generators"].items():
        rows += [[split, g, *(str(c[n]) for n in names)] for g, c in by_gen.items()]
    lines += _table(rows, left=2)
    if summary["notes"]:
        lines += ["", "notes:", *(f"  - {n}" for n in summary["notes"])]
    return "\n".join(lines)
