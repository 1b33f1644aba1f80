"""``bench predict``: :func:`glassdetect.inference.predict.predict` over a folder of JPEGs vs the model alone.

``overlap_efficiency = predict rate / model-only rate`` on the same batches (1.0: decoding is
hidden entirely). Start-up (worker start, the first batch prepared and run) is inside the
measurement; the efficiency after the first batch is reported beside it.

``workers_needed = ceil(prepare seconds per image × model images per second)``: how many decode
workers (one thread each) keep the model busy — on a GPU far more than on a CPU core.
``workers="auto"`` runs predict with that many (at most the machine's CPUs), so on a GPU the end
to end images per second are those of a fed device.
"""
from __future__ import annotations

import gc
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from .common import JPEG_SIZES, log, sync, torch_threads
from .synth import write_folder


def _prepare_s(paths: list[Path], spec) -> float:
    """Median single-thread seconds to prepare one image (what each DataLoader worker does)."""
    from ..inference.api import prepare

    with torch_threads(1):
        ts = []
        for p in paths[:3]:
            t0 = time.perf_counter()
            prepare(str(p), spec)
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _model_s_per_image(det, paths: list[Path], spec, batch_size: int, dev: torch.device) -> float:
    """The model alone on one prepared batch: median of 3 calls after a warm-up, per image."""
    from ..pipeline import collate, prepare

    batch = collate([dict(prepare(str(p), spec), index=i) for i, p in enumerate(paths[:batch_size])])
    det.scores(batch)  # warm-up
    sync(dev)
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        det.scores(batch)
        sync(dev)
        ts.append(time.perf_counter() - t0)
    del batch
    gc.collect()
    return statistics.median(ts) / batch_size


def _run_predict(det, folder: Path, batch_size: int, workers: int, dev: torch.device, threads: int):
    """All rows of ``predict`` over ``folder``, the seconds it took and the seconds to the first row."""
    from ..inference.predict import predict

    t0 = time.perf_counter()
    rows, first_batch_s = [], None
    for row in predict(det, [str(folder)], batch_size=batch_size, workers=workers, device=str(dev), threads=threads):
        rows.append(row)
        if first_batch_s is None:  # worker start-up + the first batch prepared + its forward pass
            first_batch_s = time.perf_counter() - t0
    elapsed = time.perf_counter() - t0
    errors = [r.error for r in rows if r.error]
    if errors:
        raise RuntimeError(f"predict failed on {len(errors)} image(s): {errors[:3]}")
    return rows, elapsed, first_batch_s


def bench_predict(
    workdir: str | Path,
    n_images: int = 32,
    size: tuple[int, int] = JPEG_SIZES["12MP"],
    backbone: str = "resnet50",
    k: int = 4,
    batch_size: int = 8,
    workers: int | str = 2,
    device: str = "auto",
    threads: int = 0,
) -> dict[str, Any]:
    """``predict`` throughput over a folder of JPEGs vs the model alone on the same batches.

    ``workers``: DataLoader decode workers, or ``"auto"``: the workers needed to keep the model
    busy (see the module docstring), capped at the CPU count."""
    from ..inference.api import Detector
    from ..models import ModelConfig, create_model, save_checkpoint
    from ..runtime import configure_threads, resolve_device

    workdir = Path(workdir)
    folder = workdir / "predict_images"
    w, h = size
    t0 = time.perf_counter()
    paths = write_folder(folder, n_images, size)
    log(f"predict: {n_images} images of {w}×{h} written in {time.perf_counter() - t0:.1f} s")
    dev = resolve_device(device)
    n_threads = configure_threads(threads) if dev.type == "cpu" else torch.get_num_threads()
    cfg = ModelConfig(arch="glass" if k else "standard", backbone=backbone, k=max(k, 1))
    ckpt = save_checkpoint(workdir / "predict_ckpt", create_model(cfg, pretrained=False))
    det = Detector.from_pretrained(ckpt, str(dev))
    spec = det.spec()
    prepare_s = _prepare_s(paths, spec)
    model_s_per_image = _model_s_per_image(det, paths, spec, batch_size, dev)
    needed = max(1, math.ceil(prepare_s / model_s_per_image))
    if workers == "auto":
        workers = min(needed, os.cpu_count() or 1)
    elif not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a count or 'auto', got {workers!r}")
    rows, elapsed, first_batch_s = _run_predict(det, folder, batch_size, workers, dev, threads)
    predict_rate = len(rows) / elapsed
    model_rate = 1.0 / model_s_per_image
    log(f"predict: {predict_rate:.2f} img/s vs model-only {model_rate:.2f} img/s")
    return {
        "device": str(dev), "threads": n_threads, "images": len(rows), "width": w, "height": h,
        "backbone": backbone, "k": k, "batch_size": batch_size, "workers": workers, "workers_needed": needed,
        "cpu_count": os.cpu_count(), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "predict_s": elapsed, "predict_images_per_s": predict_rate, "model_images_per_s": model_rate,
        "model_s_per_image": model_s_per_image, "prepare_s_per_image": prepare_s,
        "overlap_efficiency": predict_rate / model_rate,
        # after the first batch: the pipeline full, start-up latency excluded
        "first_batch_s": first_batch_s,
        "steady_overlap_efficiency": ((len(rows) - batch_size) * model_s_per_image / (elapsed - first_batch_s)
                                      if len(rows) > batch_size else None),
    }
