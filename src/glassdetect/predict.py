"""Prediction: fake probability for image files, folders, globs and CSV lists.

Images of any size are decoded in DataLoader workers (so decoding overlaps the model) and
batched; crops are a function of each image's content, so the same image always gets the same
score. A file that cannot be used becomes a row with ``error`` set; the run goes on.
"""
from __future__ import annotations

import copy
import csv
import glob
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

from .data import IMAGE_SUFFIXES

COLUMNS = ("path", "fake_probability", "decision", "crops", "draws", "spread", "error")
FORMATS = ("csv", "jsonl")


def _has_magic(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def read_path_list(csv_path: str | Path) -> list[Path]:
    """The ``path`` column of a CSV (paths relative to the CSV's folder)."""
    csv_path = Path(csv_path)
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "path" not in [f.strip() for f in reader.fieldnames]:
            raise ValueError(f"{csv_path}: a CSV input needs a 'path' column")
        key = next(f for f in reader.fieldnames if f.strip() == "path")
        out = []
        for row in reader:
            rel = (row.get(key) or "").strip()
            if rel:
                out.append(Path(rel) if Path(rel).is_absolute() else csv_path.parent / rel)
    return out


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders walked recursively for image files (sorted); glob patterns
    (``**`` allowed) expanded (sorted); a ``.csv`` file replaced by its ``path`` column.

    Anything else (a missing file, a pattern matching nothing) is kept as given, so it comes
    back as a row with an error.
    """
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
        elif p.is_file() and p.suffix.lower() == ".csv":
            out += read_path_list(p)
        elif not p.exists() and _has_magic(str(item)):
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            files = [m for m in matches if m.is_file()]
            for m in matches:
                if m.is_dir():
                    files += sorted(q for q in m.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
            out += files if files else [p]
        else:
            out.append(p)
    return out


@dataclass
class PredictionRow:
    path: str
    fake_probability: float | None
    decision: str
    crops: int  # crops per draw the model saw (0 for the resize-only baseline)
    error: str = ""
    draws: int = 1
    spread: float | None = 0.0  # std of the probability over draws

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: d[k] for k in COLUMNS}


def predict(
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
) -> Iterator[PredictionRow]:
    """One row per input image, in input order, streamed batch by batch.

    ``checkpoint``: a checkpoint directory or a loaded :class:`~glassdetect.api.Detector`.
    ``draws``: average N stratified crop draws (``spread`` = their standard deviation).
    ``mode``: crop mode (``stratified``, ``grid`` = every grid cell, ``random``); default the model's.
    ``threshold`` / ``unsure`` ("lo,hi" or None to switch off): override the checkpoint's decision rule.
    ``explain_dir``: write an evidence map (PNG + JSON) per image there.
    ``progress``: a tqdm bar on stderr (None: only when stderr is a terminal).
    ``threads``: torch's intra-op threads while a batch is decoded and scored (0: auto); the
    caller's count is back in force whenever a row is handed over, and after the last one.
    """
    from tqdm import tqdm

    from .api import Detector
    from .pipeline import ViewDataset, make_loader
    from .runtime import resolve_threads, torch_threads

    threads = resolve_threads(threads)
    if isinstance(checkpoint, Detector):
        det = copy.copy(checkpoint)  # overrides below must not change the caller's detector
        det.set_decision(threshold, unsure)
        det.max_pixels = int(max_pixels) if max_pixels else det.max_pixels
        det.mode = mode or det.mode
    else:
        det = Detector.from_pretrained(checkpoint, device, seed=seed, draws=draws, mode=mode, threshold=threshold,
                                       unsure_band=unsure, max_pixels=max_pixels)
    paths = expand_inputs(inputs)
    writer = None
    if explain_dir is not None:
        from .explain import ExplainWriter

        writer = ExplainWriter(explain_dir, {"checkpoint": str(checkpoint) if not isinstance(checkpoint, Detector) else ""})
    dataset = ViewDataset([str(p) for p in paths], det.spec(mode), seed=seed, draws=draws,
                          thumbnail=explain_size if writer else 0)
    workers = 0 if len(paths) <= 1 else max(0, int(workers))
    loader = make_loader(dataset, batch_size, workers, device=det.device)
    bar = tqdm(total=len(paths), desc="predict", unit="img", file=sys.stderr, disable=None if progress is None else not progress,
               leave=False)
    try:
        batches = iter(loader)
        while True:
            with torch_threads(threads):  # our thread count for our work only, not while the caller holds a row
                batch = next(batches, None)
                done = [] if batch is None else det.run_batch(batch)
            if batch is None:
                break
            for index, d in done:
                path = str(paths[index])
                if d.error:
                    yield PredictionRow(path, None, "error", 0, d.error, d.draws, None)
                else:
                    if writer is not None:
                        d.source = path
                        writer.write(d)
                    yield PredictionRow(path, d.probability, d.decision, d.crops_per_draw, "", d.draws, d.spread)
                bar.update(1)
    finally:
        bar.close()


class RowWriter:
    """Rows to CSV (header first) or JSON Lines, flushed as they come."""

    def __init__(self, stream: IO[str], fmt: str = "csv"):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        self.stream, self.fmt = stream, fmt
        self._csv = None
        if fmt == "csv":
            self._csv = csv.writer(stream, lineterminator="\n")
            self._csv.writerow(COLUMNS)

    def write(self, row: PredictionRow) -> None:
        if self._csv is not None:
            self._csv.writerow([
                row.path,
                "" if row.fake_probability is None else f"{row.fake_probability:.6f}",
                row.decision, row.crops, row.draws,
                "" if row.spread is None else f"{row.spread:.6f}",
                row.error,
            ])
        else:
            self.stream.write(json.dumps(row.as_dict()) + "\n")
        self.stream.flush()
