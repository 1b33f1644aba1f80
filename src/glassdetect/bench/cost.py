"""What K costs: peak memory and time of a training step and of inference, against the crop count.

For each K the GLASS model (random weights: cost does not depend on them) runs on a synthetic
batch — a ``global_size``² global view and K ``patch``² crops per image, uint8, already in
memory, so decoding and data loading are *not* included — and the resize-only baseline runs
on the same batch's global views. A training step is forward + cross-entropy + backward +
AdamW step; inference is one ``inference_mode`` forward pass of the eval-mode model — the same
forward path evaluation and ``predict`` run (on the CPU the backbones see the views in micro-batches
of ``cpu_microbatch``, recorded in the results; see :mod:`glassdetect.models.common`).

Memory, per measured phase, is the peak *above* what was held just before it (weights,
optimizer state and the inputs are already allocated then; what is measured is activations,
gradients and temporaries):

* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
  ``memory_allocated()`` before (tensors only; the caching allocator's reserve is not counted).
* CPU: the process's resident set size (``/proc/self/statm``) sampled every 0.5 ms by a
  background thread while the phase runs, minus the RSS just before; freed heap is returned to
  the OS first (``malloc_trim``) so earlier, larger runs do not hide the growth. Sampling can
  miss a peak that lasts less than the interval and RSS counts pages, not tensors, so treat
  CPU numbers as a good approximation (usually within a few MB), not an exact figure. Linux
  only; elsewhere the CPU memory columns are ``null``.

The *absolute* peak of each phase is reported too, as ``*_peak_total_mb`` — the figure a paper's
"peak memory" usually means: on CUDA ``max_memory_allocated()`` itself (weights, gradients,
optimizer state, inputs and activations); on the CPU the peak RSS of the whole process during
the phase (this also counts the interpreter, torch's libraries and anything the process held
before — ``process_rss_start_mb``, the RSS when the study started, is recorded so it can be
subtracted). The paper's cost figure is at batch 32 (``--batch 32``); the default stays 8.

With ``accuracy`` (``--data D --epochs E`` on the command line) GLASS is also trained at every K
on D and the best epoch's validation accuracy and AUC are added per K (``cost.json["accuracy"]``
and a fourth panel in the plot): see :mod:`glassdetect.bench.cost_accuracy`.

Times are medians over ``steps`` measured repetitions after ``warmup`` unmeasured ones (CUDA is
synchronised around each). Lines ``y = intercept + slope · K`` are fitted by least squares:
the intercept is the K-independent (static) cost, the slope the cost per crop.
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .common import sync as _sync

if TYPE_CHECKING:
    from .cost_accuracy import AccuracyConfig

MB = 1024 * 1024


def parse_crops(text: str) -> list[int]:
    """``"1-16"``, ``"1,2,4,8"`` or a mix (``"1-4,8,16"``) -> sorted unique K values >= 1."""
    ks: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = (int(x) for x in part.split("-", 1))
            ks.update(range(a, b + 1))
        else:
            ks.add(int(part))
    if not ks or min(ks) < 1:
        raise ValueError(f"--crops {text!r}: need K values >= 1 (e.g. 1-16 or 1,2,4,8)")
    return sorted(ks)


def line_fit(x: Sequence[float], y: Sequence[float]) -> dict | None:
    """Least-squares ``y = intercept + slope · x`` with R²; ``None`` with fewer than two points."""
    pts = [(float(a), float(b)) for a, b in zip(x, y) if b is not None]
    if len({a for a, _ in pts}) < 2:
        return None
    xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    slope, intercept = np.polyfit(xs, ys, 1)
    ss_res = float(((ys - (intercept + slope * xs)) ** 2).sum())
    ss_tot = float(((ys - ys.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    return {"intercept": float(intercept), "slope": float(slope), "r2": float(r2)}


# ------------------------------------------------------------------------------------- memory

def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """Context manager: peak memory above the level at entry (bytes in ``delta``; ``total`` absolute)."""

    def __init__(self, device: torch.device, interval: float = 0.0005):
        self.device, self.interval = device, interval
        self.delta: int | None = None
        self.total: int | None = None

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            _malloc_trim()
            self._base = _rss()
            self._peak = self._base
            self._stop = threading.Event()
            if self._base is not None:
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            r = _rss()
            if r is not None and r > self._peak:
                self._peak = r
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.total = torch.cuda.max_memory_allocated(self.device)
            self.delta = self.total - self._base
        elif self._base is not None:
            r = _rss()
            if r is not None and r > self._peak:
                self._peak = r
            self._stop.set()
            self._thread.join()
            self.total = self._peak
            self.delta = self._peak - self._base


# --------------------------------------------------------------------------------------- timing

def _timed(fn: Callable[[], None], device: torch.device, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


@dataclass
class Phase:
    seconds: float  # median per call
    peak_mb: float | None  # above the level before the phase
    peak_total_mb: float | None


def measure_model(model: nn.Module, inputs: tuple, labels: torch.Tensor, device: torch.device, steps: int,
                  warmup: int, amp: bool = True) -> dict[str, Phase]:
    """Median time and peak memory of a training step and of an inference pass on ``inputs``."""
    from ..runtime import autocast

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, amp):
            logits, _ = model(*inputs)
            loss = nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        opt.step()

    @torch.inference_mode()
    def infer_step() -> None:
        with autocast(device, amp):
            model(*inputs)

    out = {}
    model.train()
    for _ in range(warmup):  # allocates the optimizer state: static, not counted in the phase
        train_step()
    opt.zero_grad(set_to_none=True)
    with PeakMemory(device) as mem:
        times = _timed(train_step, device, steps)
    out["train"] = Phase(statistics.median(times), _mb(mem.delta), _mb(mem.total))
    opt.zero_grad(set_to_none=True)
    model.eval()
    for _ in range(warmup):
        infer_step()
    with PeakMemory(device) as mem:
        times = _timed(infer_step, device, steps)
    out["infer"] = Phase(statistics.median(times), _mb(mem.delta), _mb(mem.total))
    del opt
    return out


def _mb(x: int | None) -> float | None:
    return None if x is None else x / MB


def _row(phases: dict[str, Phase], batch: int) -> dict:
    tr, inf = phases["train"], phases["infer"]
    return {
        "train_step_s": tr.seconds, "train_peak_mb": tr.peak_mb, "train_peak_total_mb": tr.peak_total_mb,
        "infer_s_per_image": inf.seconds / batch, "infer_peak_mb": inf.peak_mb, "infer_peak_total_mb": inf.peak_total_mb,
    }


FIT_KEYS = ("train_peak_mb", "train_step_s", "infer_s_per_image", "infer_peak_mb", "train_peak_total_mb",
            "infer_peak_total_mb")


def _header(backbone: str, dev: torch.device, batch: int, steps: int, warmup: int, patch: int, global_size: int,
            shared_backbone: bool, amp: bool, crops: Sequence[int]) -> dict:
    """The run's settings, and the memory method, as the results dict starts."""
    from ..models.common import CPU_MICROBATCH

    return {
        "backbone": backbone, "device": str(dev), "device_name": _device_name(dev), "batch": batch,
        "steps": steps, "warmup": warmup, "patch": patch, "global_size": global_size,
        "shared_backbone": shared_backbone, "amp": amp and dev.type == "cuda", "threads": torch.get_num_threads(),
        # views per backbone call in the inference pass (the models' CPU evaluation default; 0 = one call)
        "cpu_microbatch": CPU_MICROBATCH if dev.type == "cpu" else 0,
        "memory_method": ("torch.cuda.max_memory_allocated above memory_allocated before the phase"
                          if dev.type == "cuda" else
                          "peak RSS above RSS before the phase (/proc/self/statm sampled every 0.5 ms, after malloc_trim)"),
        "crops": list(crops), "glass": [], "fits": {}, "standard": None,
    }


def measure_cost(
    backbone: str,
    crops: Sequence[int],
    device: str = "auto",
    batch: int = 8,
    steps: int = 5,
    warmup: int = 2,
    patch: int = 224,
    global_size: int = 224,
    shared_backbone: bool = False,
    amp: bool = True,
    threads: int = 0,
    seed: int = 0,
    out: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    accuracy: "AccuracyConfig | None" = None,
) -> dict:
    """Measure GLASS at every K in ``crops`` and the baseline once; write ``cost.json``/``cost.png`` to ``out``.

    ``accuracy``: also train GLASS at every K (:func:`glassdetect.bench.cost_accuracy.accuracy_vs_k`)
    and add the validation accuracy/AUC per K."""
    from ..models import ModelConfig, create_model
    from ..runtime import configure_threads, resolve_device

    rss_start = _rss()
    dev = resolve_device(device)
    configure_threads(threads)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    kmax = max(crops)
    g_all = torch.randint(0, 256, (batch, 3, global_size, global_size), dtype=torch.uint8, generator=gen)
    c_all = torch.randint(0, 256, (batch, kmax, 3, patch, patch), dtype=torch.uint8, generator=gen)
    labels = (torch.arange(batch) % 2).to(dev)
    say = progress or (lambda _msg: None)
    result = _header(backbone, dev, batch, steps, warmup, patch, global_size, shared_backbone, amp, crops)
    result["process_rss_start_mb"] = _mb(rss_start)

    def build(arch: str) -> nn.Module:
        cfg = ModelConfig(arch=arch, backbone=backbone, k=kmax, patch=patch, global_size=global_size,
                          shared_backbone=shared_backbone, dropout=0.0)
        return create_model(cfg, pretrained=False).to(dev)

    # The baseline first: the same global views, no crops.
    model = build("standard")
    g = g_all.to(dev)
    say("standard")
    phases = measure_model(model, (g, None, None), labels, dev, steps, warmup, amp)
    result["standard"] = {"parameters": _n_params(model), **_row(phases, batch)}
    del model
    _release(dev)

    model = build("glass")
    result["glass_parameters"] = _n_params(model)
    for k in crops:
        say(f"glass K={k}")
        c = c_all[:, :k].contiguous().to(dev)
        phases = measure_model(model, (g, c, None), labels, dev, steps, warmup, amp)
        result["glass"].append({"k": k, **_row(phases, batch)})
        del c
        _release(dev)
    del model
    _release(dev)

    ks = [r["k"] for r in result["glass"]]
    for key in FIT_KEYS:
        result["fits"][key] = line_fit(ks, [r[key] for r in result["glass"]])
    if accuracy is not None:
        from .cost_accuracy import accuracy_vs_k

        result["accuracy"] = accuracy_vs_k(accuracy, crops, progress=say)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "cost.json").write_text(json.dumps(result, indent=2))
        plot_cost(result, out / "cost.png")
    return result


def _n_params(model: nn.Module) -> int:
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def _release(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform

    return platform.processor() or platform.machine()


PLOT_PANELS = (("train_peak_mb", "training step: peak memory above start (MB)"),
               ("train_peak_total_mb", "training step: absolute peak memory (MB)"),
               ("train_step_s", "training step: time (s)"),
               ("infer_s_per_image", "inference: time per image (s)"))


def _plot_panel(ax, result: dict, key: str, title: str) -> None:
    """One measured quantity against K: the points, the fitted line, the baseline as a dashed level."""
    ks = np.array([r["k"] for r in result["glass"]], dtype=float)
    ys = [r.get(key) for r in result["glass"]]
    if any(y is not None for y in ys):
        ax.plot(ks, [np.nan if y is None else y for y in ys], "o", label="GLASS")
    fit = result["fits"].get(key)
    if fit:
        xs = np.linspace(0, ks.max(), 50)
        ax.plot(xs, fit["intercept"] + fit["slope"] * xs, "-", alpha=0.7,
                label=f"{fit['intercept']:.3g} + {fit['slope']:.3g}·K (R² {fit['r2']:.3f})")
    base = (result.get("standard") or {}).get(key)
    if base is not None:
        ax.axhline(base, color="grey", linestyle="--", label="baseline (resize only)")
    ax.set_xlabel("K (crops per image)")
    ax.set_title(title, fontsize=10)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)


def _plot_accuracy(ax, acc: dict) -> None:
    """Validation accuracy and AUC of GLASS trained at each K."""
    ks = [r["k"] for r in acc["rows"]]
    for key, style, label in (("val_accuracy", "o-", "val accuracy"), ("val_auc", "s--", "val AUC")):
        ax.plot(ks, [np.nan if r[key] is None else r[key] for r in acc["rows"]], style, label=label)
    ax.set_xlabel("K (crops per image)")
    ax.set_title(f"trained {acc['settings']['epochs']} epochs: validation", fontsize=10)
    ax.set_xlim(left=0)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)


def plot_cost(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = result.get("accuracy")
    n = len(PLOT_PANELS) + (1 if acc else 0)
    fig, axes = plt.subplots(1, n, figsize=(4.3 * n, 3.8))
    for ax, (key, title) in zip(axes, PLOT_PANELS):
        _plot_panel(ax, result, key, title)
    if acc:
        _plot_accuracy(axes[-1], acc)
    fig.suptitle(f"{result['backbone']} on {result['device']} ({result['device_name']}), batch {result['batch']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
