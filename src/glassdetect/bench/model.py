"""``bench model``: forward time per image, FLOPs and the fraction of a matmul peak, per backbone and K.

Random weights, uint8 inputs (normalisation inside the model, as in use), ``torch.inference_mode``.
FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add). The peak
is a large square matmul in the precision the model runs in, measured at the start, between
(backbone, K) groups and at the end; the best repetition of all is the reference while model
rates are medians, so ``fraction_of_peak`` is conservative.

The automatic configuration is the model exactly as the project runs it: the layout the factory
picks (channels_last for convnets) and, on the CPU, the model's own micro-batching of views
(``cpu_microbatch``) and frozen oneDNN graphs of convolutional backbones (``cpu_graphs``; see
:mod:`glassdetect.models.common`), timed after their one-time build (the warm-up call). Convnets are also timed in NCHW, with
BatchNorm folded into the convolutions and, on the CPU, with all views in one backbone call
(``whole-batch``, what the models did before micro-batching), to show what each choice is worth.
"""
from __future__ import annotations

import gc
import math
import platform
import statistics
import time
from typing import Any

import torch

from .common import BACKBONES, log, sync


def matmul_peak(device: torch.device, amp: bool, sizes: tuple[int, ...] | None = None, reps: int = 5) -> dict[str, Any]:
    """GFLOP/s of large square matmuls (2·n³ FLOPs), in the precision the model runs in: the best
    repetition (a peak is a ceiling; model rates are medians, so fractions are conservative)."""
    from ..runtime import autocast

    sizes = sizes or ((2048,) if device.type == "cpu" else (8192,))
    res, res_cpu = {}, {}
    for n in sizes:
        a = torch.randn(n, n, device=device)
        b = torch.randn(n, n, device=device)
        with torch.inference_mode(), autocast(device, amp):
            a @ b
            sync(device)
            ts, cts = [], []
            for _ in range(reps):
                t0, c0 = time.perf_counter(), time.process_time()
                a @ b
                sync(device)
                ts.append(time.perf_counter() - t0)
                cts.append(time.process_time() - c0)
        res[str(n)] = 2 * n ** 3 / min(ts) / 1e9
        res_cpu[str(n)] = 2 * n ** 3 / max(min(cts), 1e-9) / 1e9
        del a, b
    # CPU time (this process's, all threads): on a shared machine, the rate while actually scheduled
    return {"peak_gflops": max(res.values()), "by_size": res, "peak_gflops_cpu_time": max(res_cpu.values())}


def fold_batchnorm(model: torch.nn.Module) -> int:
    """Fold eval-mode BatchNorm into the preceding convolution of each backbone (torch.fx), in place.

    A bench variant only (the project's models keep their BatchNorm layers): it shows what folding
    would buy (see docs/performance.md). Returns the number of BatchNorm layers removed (0 when a
    backbone cannot be traced).
    """
    from torch.fx.experimental.optimization import fuse

    removed = 0
    for attr in ("global_backbone", "local_backbone"):
        bb = getattr(model, attr, None)
        if bb is None:
            continue
        before = sum(isinstance(m, torch.nn.BatchNorm2d) for m in bb.modules())
        try:
            fused = fuse(bb.eval())
        except Exception:  # noqa: BLE001 - untraceable backbone: leave it
            continue
        removed += before - sum(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        setattr(model, attr, fused)
    if getattr(model, "cfg", None) is not None and model.cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return removed


def make_model(backbone: str, k: int, device: torch.device, channels_last: bool | None = None, fold_bn: bool = False,
               micro_batch: int | None = None, graphs: bool = True):
    """An eval-mode model (GLASS, or the baseline for K = 0) and whether the factory chose channels_last.

    ``channels_last`` None: the factory's layout; ``micro_batch`` None: the model's own
    ``cpu_microbatch`` (0 = all views in one backbone call); ``graphs`` False: eager backbones
    instead of the model's frozen CPU graphs (:class:`~glassdetect.models.common.CpuGraphs`). Returns (None, auto) when ``fold_bn``
    finds nothing to fold.
    """
    from ..models import ModelConfig, create_model

    cfg = ModelConfig(arch="standard" if k == 0 else "glass", backbone=backbone, k=max(k, 1))
    model = create_model(cfg, pretrained=False).eval()
    auto = bool(model.cfg.channels_last)  # filled from the backbone (the caller's cfg is left as is)
    if channels_last is not None and channels_last != auto:
        model = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        model.prep.channels_last = channels_last
    if fold_bn and fold_batchnorm(model) == 0:
        return None, auto
    if micro_batch is not None:
        model.cpu_microbatch = micro_batch
    if not graphs:
        model.cpu_graphs = None
    return model.to(device), auto


def random_views(batch: int, k: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 global views (B, 3, S, S) and crops (B, K, 3, S, S)."""
    g = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    c = torch.randint(0, 256, (batch, k, 3, size, size), dtype=torch.uint8, device=device)
    return g, c


def _forward(model, g, c, k: int):
    return model(g) if k == 0 else model(g, c)


def count_flops(model, k: int, device: torch.device, size: int = 224) -> int:
    """FLOPs of one image's forward pass (batch 1), 2 per multiply-add."""
    from torch.utils.flop_counter import FlopCounterMode

    g, c = random_views(1, k, size, device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        _forward(model, g, c, k)
    return int(counter.get_total_flops())


def time_forward(model, batch: int, k: int, device: torch.device, amp: bool, budget_s: float = 2.0,
                 min_reps: int = 2, max_reps: int = 7, size: int = 224, cpu_times: list[float] | None = None) -> list[float]:
    """Seconds per forward call: warm-up calls, then repetitions until ``budget_s`` (bounded).

    Warm-up: one call, or three where the model runs frozen CPU graphs (the first builds them, the
    next two are TorchScript's profiling and oneDNN compilation runs for these shapes); what is timed
    is the steady state a run over many images sees. ``cpu_times``, when given, receives the process
    CPU seconds of each repetition."""
    from ..runtime import autocast

    g, c = random_views(batch, k, size, device)
    with torch.inference_mode(), autocast(device, amp):
        for _ in range(3 if _uses_graphs(model, device) else 1):
            t0 = time.perf_counter()
            _forward(model, g, c, k)
            sync(device)
            first = time.perf_counter() - t0
        reps = int(min(max_reps, max(min_reps, math.ceil(budget_s / max(first, 1e-6)))))
        ts = []
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            _forward(model, g, c, k)
            sync(device)
            ts.append(time.perf_counter() - t0)
            if cpu_times is not None:
                cpu_times.append(time.process_time() - c0)
    return ts


def layout_name(channels_last: bool, fold: bool, chunk: int, device: torch.device, graphs: bool = False) -> str:
    """``channels_last`` / ``nchw``, ``+bn-folded``, on the CPU ``+frozen-graph`` (where the model's CPU
    graphs apply) and ``+micro-batch-N`` or ``+whole-batch``."""
    name = ("channels_last" if channels_last else "nchw") + ("+bn-folded" if fold else "")
    if device.type == "cpu":  # micro-batching and frozen graphs apply on the CPU only
        name += ("+frozen-graph" if graphs else "") + (f"+micro-batch-{chunk}" if chunk else "+whole-batch")
    return name


def _uses_graphs(model, device: torch.device) -> bool:
    """Whether the model's frozen CPU graphs apply to its backbones here (convolutional backbones, CPU)."""
    from ..models.common import is_convolutional

    if device.type != "cpu" or getattr(model, "cpu_graphs", None) is None:
        return False
    return is_convolutional(model.global_backbone)


def _variants(convnet: bool, device: torch.device, chunk: int, ks, batches, other_layout_ks, fold_bn_ks,
              whole_batch_ks) -> list[dict[str, Any]]:
    """The automatic configuration, then for convnets, with eager backbones: the automatic layout (on
    the CPU, where the automatic one is a frozen graph), the other layout, BN folded and (CPU)
    whole batches."""
    out = [dict(cl=convnet, fold=False, chunk=chunk, ks=ks, batches=batches, auto=True, graphs=True)]
    if convnet and device.type == "cpu":
        out.append(dict(cl=True, fold=False, chunk=chunk, ks=other_layout_ks, batches=batches, auto=False, graphs=False))
    if convnet:
        out += [dict(cl=False, fold=False, chunk=chunk, ks=other_layout_ks, batches=batches, auto=False, graphs=False),
                dict(cl=True, fold=True, chunk=chunk, ks=other_layout_ks if fold_bn_ks is None else fold_bn_ks,
                     batches=batches, auto=False, graphs=False)]
        if device.type == "cpu" and chunk:  # micro-batching is a CPU cache effect
            out.append(dict(cl=True, fold=False, chunk=0, ks=whole_batch_ks, batches=tuple(b for b in batches if b > 1),
                            auto=False, graphs=False))
    return out


def _time_run(model, name: str, k: int, b: int, layout: str, auto: bool, flops: int, dev: torch.device, amp: bool,
              budget_s: float) -> dict[str, Any]:
    cts: list[float] = []
    ts = time_forward(model, b, k, dev, amp, budget_s=budget_s, cpu_times=cts)
    s_img = statistics.median(ts) / b
    cpu_s_img = max(statistics.median(cts) / b, 1e-12)
    return {
        "backbone": name, "k": k, "batch": b, "layout": layout, "auto": auto,
        "views_per_image": 1 + k, "s_per_image": s_img, "s_per_view": s_img / (1 + k),
        "gflop_per_image": flops / 1e9, "gflops": flops / s_img / 1e9, "times_s": [round(t, 5) for t in ts],
        "cpu_s_per_image": cpu_s_img, "gflops_cpu_time": flops / cpu_s_img / 1e9,
    }


def _bench_group(name: str, k: int, variants: list[dict[str, Any]], dev: torch.device, amp: bool, budget_s: float,
                 best_peak) -> list[dict[str, Any]]:
    """Every variant (and batch) measured at one K for one backbone."""
    runs: list[dict[str, Any]] = []
    flops = None
    for var in variants:
        if k not in var["ks"] or not var["batches"]:
            continue
        model, _ = make_model(name, k, dev, var["cl"], fold_bn=var["fold"], micro_batch=var["chunk"],
                              graphs=var["graphs"])
        if model is None:  # nothing to fold
            continue
        graphs = _uses_graphs(model, dev)
        layout = layout_name(var["cl"], var["fold"], var["chunk"], dev, graphs)
        if flops is None:
            flops = count_flops(model, k, dev)
        for b in var["batches"]:
            r = _time_run(model, name, k, b, layout, var["auto"], flops, dev, amp, budget_s)
            runs.append(r)
            log(f"model {name} K={k} batch {b} {layout}: {r['s_per_image'] * 1e3:.0f} ms/image, {r['gflops']:.1f} "
                f"GFLOP/s ({r['gflops'] / best_peak():.0%} of the peak so far; CPU time {r['gflops_cpu_time']:.1f} GFLOP/s)")
        del model
        gc.collect()
    return runs


def bench_model(
    backbones: tuple[str, ...] = BACKBONES,
    ks: tuple[int, ...] = (0, 4, 10),
    batches: tuple[int, ...] = (1, 8),
    device: str = "auto",
    threads: int = 0,
    amp: bool = True,
    other_layout_ks: tuple[int, ...] = (4,),
    budget_s: float = 2.0,
    peak_sizes: tuple[int, ...] | None = None,
    micro_batch: int | None = None,
    whole_batch_ks: tuple[int, ...] = (4, 10),
    fold_bn_ks: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Forward time, FLOPs, GFLOP/s and fraction of the matmul peak per (backbone, K, batch, layout).

    ``micro_batch``: views per backbone call in CPU evaluation (None: the models' default);
    ``whole_batch_ks``: K values at which convnets are also timed with all views in one call.
    """
    from ..models.backbones import create_backbone, is_convnet
    from ..models.common import CPU_MICROBATCH
    from ..runtime import configure_threads, resolve_device

    dev = resolve_device(device)
    n_threads = configure_threads(threads) if dev.type == "cpu" else torch.get_num_threads()
    use_amp = amp and dev.type == "cuda"
    chunk = CPU_MICROBATCH if micro_batch is None else micro_batch
    # The peak at the start, between (backbone, K) groups and at the end; the best of these is the
    # reference (a shared virtual machine drifts; the best observed rate is the honest ceiling).
    peaks = [matmul_peak(dev, use_amp, peak_sizes)]
    best_peak = lambda: max(x["peak_gflops"] for x in peaks)  # noqa: E731
    log(f"model: {dev}, {n_threads} thread(s), matmul peak {peaks[0]['peak_gflops']:.1f} GFLOP/s")
    runs: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    for name in backbones:
        convnet = is_convnet(create_backbone(name, pretrained=False).module)
        info[name] = {"convnet": convnet, "auto_layout": "channels_last" if convnet else "nchw",
                      "frozen_graph": convnet and dev.type == "cpu"}
        variants = _variants(convnet, dev, chunk, ks, batches, other_layout_ks, fold_bn_ks, whole_batch_ks)
        for k in ks:
            if runs:  # the peak again between groups of configurations
                peaks.append(matmul_peak(dev, use_amp, peak_sizes, reps=3))
            runs += _bench_group(name, k, variants, dev, use_amp, budget_s, best_peak)
    peaks.append(matmul_peak(dev, use_amp, peak_sizes))
    peak = best_peak()
    peak_cpu = max(x["peak_gflops_cpu_time"] for x in peaks)
    for r in runs:
        r["fraction_of_peak"] = r["gflops"] / peak
        # the same in CPU time: robust to other processes sharing the machine (wall time is not)
        r["fraction_of_peak_cpu_time"] = r["gflops_cpu_time"] / peak_cpu
    samples = ", ".join(f"{x['peak_gflops']:.1f}" for x in peaks)
    log(f"model: matmul peak {peak:.1f} GFLOP/s (measurements: {samples})")
    return {
        "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "threads": n_threads, "amp": use_amp, "micro_batch": chunk if dev.type == "cpu" else 0,
        "peak_gflops": peak, "peak_gflops_cpu_time": peak_cpu, "peak_measurements": peaks, "backbones": info, "runs": runs,
    }
