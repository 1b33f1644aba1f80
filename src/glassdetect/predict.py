"""Prediction: fake probability for image files and folders."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .data import IMAGE_SUFFIXES, Sample, ViewDataset
from .models import load_checkpoint
from .runtime import configure_threads, infer, make_loader, resolve_device


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders walked recursively for image files (sorted)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


@dataclass
class PredictionRow:
    path: str
    fake_probability: float | None
    decision: str
    crops: int
    error: str = ""


def predict(
    checkpoint: str | Path,
    inputs: Iterable[str | Path],
    batch_size: int = 8,
    workers: int = 1,
    device: str = "auto",
    threads: int = 0,
    seed: int = 0,
) -> Iterator[PredictionRow]:
    """One row per input image, in input order; unreadable images get ``error`` set."""
    dev = resolve_device(device)
    configure_threads(threads)
    model, _ = load_checkpoint(checkpoint, dev)
    cfg = model.cfg
    paths = expand_inputs(inputs)
    samples = [Sample(str(p), 0, str(p), str(p)) for p in paths]
    preds = infer(model, make_loader(ViewDataset(samples, cfg.view_spec(), seed=seed), batch_size, workers, device=dev), dev)
    by_index = {int(i): j for j, i in enumerate(preds.index)}
    errors = dict(preds.errors)
    for i, p in enumerate(paths):
        if i in by_index:
            prob = float(preds.prob_fake[by_index[i]])
            decision = cfg.class_names[-1] if prob >= cfg.threshold else cfg.class_names[0]
            yield PredictionRow(str(p), prob, decision, len(preds.attention[by_index[i]]))
        else:
            yield PredictionRow(str(p), None, "error", 0, errors.get(str(p), "unreadable"))
