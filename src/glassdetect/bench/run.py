"""``glassdetect bench [views|model|predict|serve|train|all]``: the parts in one run, with the machine they ran on.

``all`` is views, model and predict; ``serve`` (the HTTP service, batched vs unbatched) and ``train``
(training throughput, the demo's recipe vs the fast one) run on their own.
"""
from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..views import build as V
from .common import BACKBONES, GOAL_SIZES, JPEG_SIZES, PARTS
from .goals import evaluate_goals
from .model import bench_model
from .predict import bench_predict
from .serve import ServeBenchConfig, bench_serve
from .train import TrainBenchConfig, bench_train
from .views import bench_views

SERVE = "serve"  # not part of "all": it measures the service, not the pipeline
TRAIN = "train"  # not part of "all": minutes of training steps


def environment() -> dict[str, Any]:
    import PIL

    cpu = platform.processor()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu or "unknown", "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "pillow": PIL.__version__, "simplejpeg": getattr(V.simplejpeg, "__version__", None),
        "numpy": np.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average": os.getloadavg(),
    }


def run_bench(
    what: str = "all",
    quick: bool = False,
    device: str = "auto",
    threads: int = 0,
    workdir: str | Path | None = None,
    workers: int | str = 2,
    train: TrainBenchConfig | None = None,
) -> dict[str, Any]:
    """Run the requested parts (``views``, ``model``, ``predict``, ``serve``, ``train`` or ``all``); returns the
    results dict. ``workers``: predict's decode workers (``"auto"``: as many as keep the model busy);
    ``train``: the train part's settings (default :class:`TrainBenchConfig`, smaller with ``quick``)."""
    if what not in (*PARTS, SERVE, TRAIN, "all"):
        raise ValueError(f"unknown bench part {what!r}; choose one of {', '.join((*PARTS, SERVE, TRAIN))} or all")
    parts = PARTS if what == "all" else (what,)
    res: dict[str, Any] = {"command": f"glassdetect bench {what}{' --quick' if quick else ''}", "quick": quick,
                           "environment": environment()}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="glassdetect-bench-", dir=workdir) as tmp:
        if "views" in parts:
            res["views"] = bench_views(tmp, sizes=GOAL_SIZES if quick else tuple(JPEG_SIZES), png=not quick,
                                       rounds=3 if quick else None)
        if "model" in parts:
            res["model"] = bench_model(("resnet50",) if quick else BACKBONES, ks=(0, 4) if quick else (0, 4, 10),
                                       device=device, threads=threads, budget_s=1.0 if quick else 2.0,
                                       fold_bn_ks=() if quick else None)
        if "predict" in parts:
            res["predict"] = bench_predict(tmp, n_images=24 if quick else 48, device=device, threads=threads,
                                           workers=workers)
        if SERVE in parts:
            res["serve"] = bench_serve(tmp, ServeBenchConfig(device=device, threads=threads,
                                                             requests=12 if quick else 24, images=4 if quick else 8))
        if TRAIN in parts:
            train = train or train_bench_defaults(quick, device)
            res["command"] += (f" --train-variants {','.join(train.variants)} --train-rounds {train.rounds} "
                               f"--train-steps {train.steps}")
            res["train"] = bench_train(tmp, train)
    res["goals"] = evaluate_goals(res)
    res["elapsed_s"] = time.perf_counter() - t_start
    res["environment"]["load_average_end"] = os.getloadavg()
    return res


def train_bench_defaults(quick: bool, device: str) -> TrainBenchConfig:
    """bench train's default settings; ``quick``: the reference and the fast recipe only, two short rounds."""
    if quick:
        return TrainBenchConfig(images=24, warmup=1, steps=2, rounds=2, variants=("reference", "fast"), device=device)
    return TrainBenchConfig(device=device)
