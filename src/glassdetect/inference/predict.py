"""Prediction: fake probability for image files, folders, globs and CSV lists.

Images of any size are decoded in DataLoader workers (so decoding overlaps the model) and
batched; crops are a function of each image's content, so the same image always gets the same
score. A file that cannot be used becomes a row with ``error`` set; the run goes on.

Inputs are streamed: folders are walked and CSV lists read as the loader asks for more, and the
loader's sampler hands out ``(position, path)`` keys, so millions of paths never sit in memory.
:func:`predict_batches` yields one list of rows per batch (for crash-safe appends); a
:class:`Scan` restricts a run to one shard and skips the paths an earlier run already wrote
(``glassdetect predict --shard/--resume/--dedupe``, :mod:`glassdetect.inference.shards`).
"""
from __future__ import annotations

import copy
import csv
import glob
import hashlib
import io
import itertools
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

from ..data.splits import IMAGE_SUFFIXES

COLUMNS = ("path", "fake_probability", "decision", "crops", "draws", "spread", "error")
HASH_COLUMN = "sha256"  # opt-in (--dedupe): SHA-256 of the file's bytes, after the default columns
FORMATS = ("csv", "jsonl")
SAME_CONTENT = "same content as a row already written: sha256 "  # internal: a worker's "skip, copy that row"


def columns_for(dedupe: bool = False) -> tuple[str, ...]:
    """The output columns: :data:`COLUMNS`, plus ``sha256`` with ``dedupe``."""
    return COLUMNS + (HASH_COLUMN,) if dedupe else COLUMNS


def _has_magic(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def iter_path_list(csv_path: str | Path) -> Iterator[Path]:
    """The ``path`` column of a CSV (paths relative to the CSV's folder), read row by row."""
    csv_path = Path(csv_path)
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = [f.strip() for f in next(reader, [])]
        if "path" not in header:
            raise ValueError(f"{csv_path}: a CSV input needs a 'path' column")
        key, parent = header.index("path"), csv_path.parent
        for row in reader:
            rel = row[key].strip() if key < len(row) else ""
            if rel:  # one Path per row: this runs a million times for a big list
                yield Path(rel) if os.path.isabs(rel) else parent / rel


def read_path_list(csv_path: str | Path) -> list[Path]:
    """The ``path`` column of a CSV (paths relative to the CSV's folder)."""
    return list(iter_path_list(csv_path))


def walk_images(folder: Path) -> Iterator[Path]:
    """Image files under ``folder``, recursively, in the order of ``sorted(folder.rglob("*"))`` (each
    folder's entries sorted by name, sub-folders visited in place), holding one folder's listing at
    a time. Symlinked files are listed, symlinked folders are not entered (as ``rglob``)."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return
    for e in entries:
        if e.is_dir() and not e.is_symlink():
            yield from walk_images(Path(e.path))
        elif Path(e.name).suffix.lower() in IMAGE_SUFFIXES and e.is_file():
            yield Path(e.path)


def iter_inputs(inputs: Iterable[str | Path]) -> Iterator[Path]:
    """Files as given; folders walked recursively for image files (sorted); glob patterns
    (``**`` allowed) expanded (sorted); a ``.csv`` file replaced by its ``path`` column.

    A generator: folders and CSV lists are streamed, so a list of millions of paths is never held
    whole. Anything else (a missing file, a pattern matching nothing) is kept as given, so it comes
    back as a row with an error.
    """
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            yield from walk_images(p)
        elif p.is_file() and p.suffix.lower() == ".csv":
            yield from iter_path_list(p)
        elif not p.exists() and _has_magic(str(item)):
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            files = [m for m in matches if m.is_file()]
            for m in matches:
                if m.is_dir():
                    files += walk_images(m)
            yield from files if files else [p]
        else:
            yield p


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """:func:`iter_inputs` as a list."""
    return list(iter_inputs(inputs))


class _StreamViews:
    """A map-style dataset keyed by ``(position, path)`` (the keys come from a streaming sampler, so
    no list of all paths exists): each key is one :class:`~glassdetect.pipeline.ViewDataset` item,
    indexed by its position in the input list. With ``hash_content`` the worker reads the file once,
    records its SHA-256, and skips decoding a file whose content is in ``known``."""

    def __init__(self, spec: Any, seed: int, draws: int, thumbnail: int, hash_content: bool = False,
                 known: frozenset[str] = frozenset()):
        from ..pipeline import ViewDataset

        self.views = ViewDataset([], spec, seed=seed, draws=draws, thumbnail=thumbnail)  # one source at a time
        self.hash_content, self.known = hash_content, known

    def __getitem__(self, key: tuple[int, str]) -> dict:
        from ..views.build import ImageError, read_bytes

        pos, path = key
        source: str | bytes = path
        digest = ""
        if self.hash_content:
            try:
                source = read_bytes(path)
            except ImageError as exc:
                return {"index": pos, "error": (path, exc.reason)}
            digest = hashlib.sha256(source).hexdigest()
            if digest in self.known:  # scored before under another path: no need to decode it
                return {"index": pos, "error": (path, SAME_CONTENT + digest)}
        self.views.sources = [source]
        item = self.views[0]
        item["index"] = pos
        if "error" in item:
            item["error"] = (path, item["error"][1])
        else:
            item["name"], item["sha256"] = path, digest
        return item


@dataclass
class Scan:
    """Which inputs a run scores, for resumable and sharded scans (see :mod:`glassdetect.inference.shards`).

    ``shard``: score only the paths this shard owns. ``done``: paths that already have a row (a
    resume): skipped, and each path scored is added, so a path gets one row however often it is
    listed. ``known``: earlier good rows by content hash; a file whose content is among them gets
    a copy of that row without being decoded. ``hash_content``: compute each file's SHA-256 (the
    ``sha256`` column). The counters are filled in as the inputs stream past.
    """

    shard: Any = None  # glassdetect.inference.shards.Shard
    done: set[str] | None = None
    known: dict[str, dict[str, Any]] = field(default_factory=dict)
    hash_content: bool = False
    skipped: int = 0  # inputs already in the output
    elsewhere: int = 0  # inputs owned by other shards

    def keys(self, paths: Iterable[Path], pending: dict[int, str]) -> Iterator[tuple[int, str]]:
        """(position in the input list, path) of each input to score; ``pending`` maps position -> path
        for the keys handed out and not yet turned into rows."""
        for pos, p in enumerate(paths):
            s = str(p)
            if self.shard is not None and not self.shard.owns(s):
                self.elsewhere += 1
                continue
            if self.done is not None:
                if s in self.done:
                    self.skipped += 1
                    continue
                self.done.add(s)
            pending[pos] = s
            yield pos, s


def _number(value: Any, cast: Any) -> Any:
    return None if value is None or value == "" else cast(value)


def _copied_row(path: str, earlier: dict[str, Any], digest: str) -> PredictionRow:
    """The row of a file whose content was scored before (a row read back from CSV or JSON Lines)."""
    return PredictionRow(path, _number(earlier.get("fake_probability"), float), str(earlier.get("decision", "")),
                         int(earlier.get("crops") or 0), "", int(earlier.get("draws") or 1),
                         _number(earlier.get("spread"), float), sha256=digest)


@dataclass
class PredictionRow:
    path: str
    fake_probability: float | None
    decision: str
    crops: int  # crops per draw the model saw (0 for the resize-only baseline)
    error: str = ""
    draws: int = 1
    spread: float | None = 0.0  # std of the probability over draws
    sha256: str = ""  # the file's content hash, with Scan.hash_content (the opt-in HASH_COLUMN)

    def as_dict(self, columns: Sequence[str] = COLUMNS) -> dict[str, Any]:
        d = asdict(self)
        return {k: d[k] for k in columns}


def _detector(checkpoint: Any, device: str, seed: int, draws: int, mode: str | None, threshold: float | None,
              unsure: str | Sequence[float] | None | bool, max_pixels: int | None) -> Any:
    """A loaded :class:`~glassdetect.inference.api.Detector` with the run's overrides (a given one is copied, not changed)."""
    from .api import Detector

    if isinstance(checkpoint, Detector):
        det = copy.copy(checkpoint)  # overrides below must not change the caller's detector
        det.set_decision(threshold, unsure)
        det.max_pixels = int(max_pixels) if max_pixels else det.max_pixels
        det.mode = mode or det.mode
        return det
    return Detector.from_pretrained(checkpoint, device, seed=seed, draws=draws, mode=mode, threshold=threshold,
                                    unsure_band=unsure, max_pixels=max_pixels)


def _to_row(path: str, d: Any, digest: str, known: dict[str, dict[str, Any]], writer: Any) -> PredictionRow:
    error = d.error or ""
    if error.startswith(SAME_CONTENT):
        digest = error[len(SAME_CONTENT):]
        return _copied_row(path, known[digest], digest)
    if error:
        return PredictionRow(path, None, "error", 0, error, d.draws, None)
    if writer is not None:
        d.source = path
        writer.write(d)
    return PredictionRow(path, d.probability, d.decision, d.crops_per_draw, "", d.draws, d.spread, sha256=digest)


def predict_batches(
    checkpoint: Any,
    inputs: Iterable[str | Path],
    batch_size: int = 8,
    workers: int = 1,
    device: str = "auto",
    threads: int = 0,
    seed: int = 0,
    *,
    draws: int = 1,
    mode: str | None = None,
    threshold: float | None = None,
    unsure: str | Sequence[float] | None | bool = False,
    explain_dir: str | Path | None = None,
    explain_size: int = 768,
    max_pixels: int | None = None,
    progress: bool | None = False,
    scan: Scan | None = None,
) -> Iterator[list[PredictionRow]]:
    """The rows of :func:`predict`, one list per model batch (what a crash-safe writer appends at once).

    ``checkpoint``: a checkpoint directory or a loaded :class:`~glassdetect.inference.api.Detector`.
    ``draws``: average N stratified crop draws (``spread`` = their standard deviation).
    ``mode``: crop mode (``stratified``, ``grid`` = every grid cell, ``random``); default the model's.
    ``threshold`` / ``unsure`` ("lo,hi" or None to switch off): override the checkpoint's decision rule.
    ``explain_dir``: write an evidence map (PNG + JSON) per image there.
    ``progress``: a tqdm bar on stderr (None: only when stderr is a terminal).
    ``threads``: torch's intra-op threads while a batch is decoded and scored (0: auto); the
    caller's count is back in force whenever a row is handed over, and after the last one.
    ``scan``: shard, resume and content-hash settings (:class:`Scan`); default: every input.
    Inputs are streamed (:func:`iter_inputs`): memory does not grow with the length of the list.
    """
    from tqdm import tqdm

    from ..pipeline import make_loader
    from ..runtime import resolve_threads, torch_threads

    threads = resolve_threads(threads)
    det = _detector(checkpoint, device, seed, draws, mode, threshold, unsure, max_pixels)
    scan = scan if scan is not None else Scan()
    pending: dict[int, str] = {}  # position -> path of the inputs handed to the loader, not yet rows
    keys = scan.keys(iter_inputs(inputs), pending)
    head = list(itertools.islice(keys, 2))
    if not head:
        return
    writer = None
    if explain_dir is not None:
        from .explain import ExplainWriter

        source = str(checkpoint) if isinstance(checkpoint, (str, Path)) else ""
        writer = ExplainWriter(explain_dir, {"checkpoint": source})
    dataset = _StreamViews(det.spec(mode), seed, draws, explain_size if writer else 0, scan.hash_content,
                           frozenset(scan.known))
    workers = 0 if len(head) <= 1 else max(0, int(workers))
    loader = make_loader(dataset, batch_size, workers, device=det.device, sampler=itertools.chain(head, keys))
    bar = tqdm(desc="predict", unit="img", file=sys.stderr, disable=None if progress is None else not progress,
               leave=False)
    try:
        batches = iter(loader)
        while True:
            with torch_threads(threads):  # our thread count for our work only, not while the caller holds a row
                batch = next(batches, None)
                done = [] if batch is None else det.run_batch(batch)
            if batch is None:
                break
            hashes = {it["index"]: it.get("sha256", "") for it in batch.get("items", ())}
            rows = [_to_row(pending.pop(index), d, hashes.get(index, ""), scan.known, writer) for index, d in done]
            bar.update(len(rows))
            yield rows
    finally:
        bar.close()


def predict(checkpoint: Any, inputs: Iterable[str | Path], *args: Any, **kwargs: Any) -> Iterator[PredictionRow]:
    """One row per input image, in input order, streamed batch by batch; the options are those of
    :func:`predict_batches` (``batch_size``, ``workers``, ``device``, ``threads``, ``seed``, then
    by keyword ``draws``, ``mode``, ``threshold``, ``unsure``, ``explain_dir``, ``explain_size``,
    ``max_pixels``, ``progress``, ``scan``). A file that cannot be used becomes a row with ``error``."""
    for rows in predict_batches(checkpoint, inputs, *args, **kwargs):
        yield from rows


class RowFormatter:
    """Rows as text, one line per row: CSV (:meth:`header` first) or JSON Lines, with ``columns``."""

    def __init__(self, fmt: str = "csv", columns: Sequence[str] = COLUMNS):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        self.fmt, self.columns = fmt, tuple(columns)
        self._buf = io.StringIO()
        self._csv = csv.writer(self._buf, lineterminator="\n")

    def _csv_text(self, records: Iterable[Sequence[Any]]) -> str:
        self._buf.seek(0)
        self._buf.truncate()
        self._csv.writerows(records)
        return self._buf.getvalue()

    def header(self) -> str:
        return self._csv_text([self.columns]) if self.fmt == "csv" else ""

    def lines(self, rows: Iterable[PredictionRow]) -> str:
        if self.fmt == "jsonl":
            return "".join(json.dumps(row.as_dict(self.columns)) + "\n" for row in rows)
        return self._csv_text([self._values(row) for row in rows])

    def _values(self, row: PredictionRow) -> list[Any]:
        text = {
            "path": row.path, "decision": row.decision, "crops": row.crops, "draws": row.draws, "error": row.error,
            "fake_probability": "" if row.fake_probability is None else f"{row.fake_probability:.6f}",
            "spread": "" if row.spread is None else f"{row.spread:.6f}", HASH_COLUMN: row.sha256,
        }
        return [text[c] for c in self.columns]


class RowWriter:
    """Rows to CSV (header first) or JSON Lines, flushed as they come."""

    def __init__(self, stream: IO[str], fmt: str = "csv", columns: Sequence[str] = COLUMNS):
        self.formatter = RowFormatter(fmt, columns)
        self.stream, self.fmt = stream, fmt
        stream.write(self.formatter.header())

    def write(self, row: PredictionRow) -> None:
        self.stream.write(self.formatter.lines([row]))
        self.stream.flush()
