"""``glassdetect bench``: where the time and the memory go, measured side by side in one run.

Three parts, each a function returning plain JSON-ready dicts:

``views`` (:func:`bench_views`)
    Per image, for photo-like JPEGs of 1, 4, 12, 24 and 48 MP and one 12 MP PNG (generated here):

    * ``ours``: the project's pipeline, :func:`glassdetect.views.build_views` (read, content hash,
      decode, global view, K = 4 stratified crops);
    * ``naive``: the comparison point — Pillow decode, the whole image to float CHW as
      torchvision's ``ToTensor`` does (``.float().div(255)``), an antialiased bicubic resize of
      that float tensor, crops cut from it;
    * ``decode``: the floor — read the file and decode it fully with the fastest decoder
      available (simplejpeg for JPEG when installed, else Pillow; Pillow for PNG);
    * ``augment_<preset>`` (JPEGs): what ``train --augment standard`` / ``strong`` adds per image —
      :mod:`glassdetect.degrade` on the decoded pixels, mean over a fixed set of seeded draws
      (:func:`bench_augment`).

    Times are medians over interleaved rounds with one torch thread, as in a DataLoader worker.
    Peak memory is measured honestly in a fresh subprocess per (pipeline, image): after the
    imports and a warm-up call on a tiny image, the kernel's peak-RSS mark is reset
    (``/proc/self/clear_refs`` = 5) and ``peak = VmHWM - VmRSS`` (before) around one call, so
    every allocation counts (numpy, Pillow, libjpeg, torch) (fallback where the reset is not
    available: ``ru_maxrss`` delta).

``model`` (:func:`bench_model`)
    Forward time per image for each backbone and K (0 = the resize-only baseline), batch 1 and
    8, random weights, uint8 inputs (normalisation inside the model, as in use). FLOPs counted
    with ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add), achieved GFLOP/s, and
    ``fraction_of_peak`` against a large matmul timed in the same run. The layout is the one the
    factory chooses (channels_last for convnets); convnets are also timed in the other layout.
    ``--device auto`` uses CUDA with mixed precision when present.

``predict`` (:func:`bench_predict`)
    :func:`glassdetect.predict.predict` (what ``glassdetect predict`` runs) over a folder of
    12 MP JPEGs with 2 DataLoader workers, against the model alone on the same batches:
    ``overlap_efficiency = model-only time / predict time`` (1.0: decoding is fully hidden).
"""
from __future__ import annotations

import gc
import io
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageOps

from . import views as V
from .degrade import parse as parse_degradation
from .sampling import eval_rng, sample_boxes

PARTS = ("views", "model", "predict")
# name -> (width, height) of the generated images (4:3 and 3:2 like camera sensors)
JPEG_SIZES = {"1MP": (1152, 864), "4MP": (2304, 1728), "12MP": (4000, 3000), "24MP": (6000, 4000), "48MP": (8000, 6000)}
PNG_SIZE = ("12MP-png", (4000, 3000))
BACKBONES = ("resnet50", "convnext_tiny", "vit_base_patch16_224")
GOAL_SIZES = ("12MP", "24MP")
AUGMENT_BENCH = ("standard", "strong")  # training augmentation presets timed by bench_views

GOALS = {
    "views_speedup_vs_naive": ">= 6x faster than naive at 12-24 MP",
    "views_ratio_to_decode": "<= 1.25x the fastest full decode at 12-24 MP",
    "views_memory_ratio": "peak memory <= 1/6 of naive at 12-24 MP",
    "views_flat_in_megapixels": "cost beyond decode flat in megapixels: ours/decode <= 1.25 from 4 to 48 MP",
    "model_fraction_of_peak": ">= 70% of the measured matmul peak (ResNet-50, ConvNeXt-T; automatic layout; "
                              "worst K at batch 8)",
    "predict_overlap_efficiency": ">= 0.9 for 12 MP JPEGs with 2 workers",
}


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


@contextmanager
def torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ------------------------------------------------------------------------------------ images

def photo_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A photo-like (H, W, 3) uint8 image: smooth illumination, soft-edged objects, mid-frequency
    texture and sensor-like noise, so that JPEG sizes (about 0.35 bytes/pixel at quality 90) and
    decoding work resemble camera photos. Fast enough for 48 MP."""
    rng = np.random.default_rng(seed)
    sh, sw = max(2, h // 8), max(2, w // 8)
    low = Image.fromarray(rng.integers(40, 216, (3, 4, 3), dtype=np.uint8)).resize((sw, sh), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(low)
    for _ in range(60):  # objects, drawn at 1/8 scale and upsampled: soft edges
        y, x = int(rng.integers(0, sh)), int(rng.integers(0, sw))
        r = int(rng.integers(max(1, sw // 60), max(2, sw // 8)))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x - r, y - r, x + r, y + int(r * rng.uniform(0.5, 2))], fill=colour)
    base = low.resize((w, h), Image.Resampling.BICUBIC)
    texture = Image.fromarray(rng.integers(0, 256, (max(2, h // 6), max(2, w // 6), 3), dtype=np.uint8)).resize(
        (w, h), Image.Resampling.BILINEAR)
    img = np.asarray(Image.blend(base, texture, 0.18)).astype(np.int16)
    img += rng.integers(-7, 8, (h, w), dtype=np.int8)[..., None]  # luminance noise
    return np.clip(img, 0, 255).astype(np.uint8)


def write_image(path: Path, pixels: np.ndarray, quality: int = 90) -> Path:
    img = Image.fromarray(pixels)
    if path.suffix.lower() == ".png":
        img.save(path, compress_level=6)
    else:
        img.save(path, quality=quality, subsampling=2)  # 4:2:0 like cameras
    return path


# ----------------------------------------------------------------------------------- pipelines

def ours_views(path: str | Path, spec: V.ViewSpec | None = None) -> V.Views:
    """The project's pipeline (whatever decoder :mod:`glassdetect.views` picks)."""
    return V.build_views(path, spec or V.ViewSpec())


def ours_pillow_views(path: str | Path, spec: V.ViewSpec | None = None) -> V.Views:
    """The project's pipeline with the simplejpeg fast path switched off (Pillow decode)."""
    old = V.FAST_DECODE
    V.FAST_DECODE = False
    try:
        return V.build_views(path, spec or V.ViewSpec())
    finally:
        V.FAST_DECODE = old


def naive_views(path: str | Path, spec: V.ViewSpec | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The comparison point: decode, whole image to float CHW (torchvision ``ToTensor``),
    antialiased bicubic resize of the float tensor, crops cut from the float tensor."""
    spec = spec or V.ViewSpec()
    data = Path(path).read_bytes()
    rng = eval_rng(V.content_id(data), 0, 0)
    with Image.open(io.BytesIO(data)) as im:
        img = ImageOps.exif_transpose(im).convert("RGB")
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous().float().div(255)  # ToTensor
    del img
    h, w = x.shape[1:]
    g = F.interpolate(x[None], size=(spec.global_size, spec.global_size), mode="bicubic", antialias=True)[0]
    boxes = sample_boxes(h, w, spec.k, rng, spec.mode, spec.patch, spec.max_grid)
    p = spec.patch
    crops = torch.zeros((len(boxes), 3, p, p))
    for i, (t, l) in enumerate(boxes):
        y0, x0, y1, x1 = max(t, 0), max(l, 0), min(t + p, h), min(l + p, w)
        crops[i, :, y0 - t:y1 - t, x0 - l:x1 - l] = x[:, y0:y1, x0:x1]
    return g, crops


def decode_only(path: str | Path) -> Any:
    """The floor: read and fully decode with the fastest decoder available."""
    data = Path(path).read_bytes()
    if V.simplejpeg is not None and data[:2] == b"\xff\xd8":
        return V.simplejpeg.decode_jpeg(data, colorspace="RGB")
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.im


_REUSE: dict[str, np.ndarray] = {}


def decode_reuse_only(path: str | Path) -> Any:
    """The floor without page faults: simplejpeg into a buffer reused across calls (what ``ours`` does)."""
    data = Path(path).read_bytes()
    if V.simplejpeg is None or data[:2] != b"\xff\xd8":
        return decode_only(path)
    h, w = V.simplejpeg.decode_jpeg_header(data)[:2]
    buf = _REUSE.get("buf")
    if buf is None or buf.size < h * w * 3:
        buf = _REUSE["buf"] = np.empty(h * w * 3, np.uint8)
    return V.simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=buf)


def pillow_decode_only(path: str | Path) -> Any:
    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.im


PIPELINES: dict[str, Callable[[Any], Any]] = {
    "ours": ours_views, "ours_pillow": ours_pillow_views, "naive": naive_views, "decode": decode_only,
    "decode_reuse": decode_reuse_only, "pillow_decode": pillow_decode_only,
}


# -------------------------------------------------------------------------------------- memory

def _proc_status() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}


def _memory_child(pipeline: str, path: str, warm_path: str) -> None:
    """Run in a fresh interpreter: peak memory added by one call of ``pipeline`` on ``path``."""
    torch.set_num_threads(1)
    fn = PIPELINES[pipeline]
    fn(warm_path)  # imports, lazy initialisation, allocator pools
    gc.collect()
    method = "VmHWM reset (/proc/self/clear_refs=5)"
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before = _proc_status()["VmRSS"]
        out = fn(path)
        peak = _proc_status()["VmHWM"] - before
    except OSError:
        method = "ru_maxrss delta"
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out = fn(path)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    del out
    print(json.dumps({"peak_bytes": max(0, peak), "method": method}))


def measure_peak_mb(pipeline: str, path: Path, warm_path: Path) -> tuple[float, str]:
    """Peak memory (MB = 1e6 bytes) of one call, in a fresh subprocess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    code = f"from glassdetect.bench import _memory_child; _memory_child({pipeline!r}, {str(path)!r}, {str(warm_path)!r})"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"memory probe {pipeline} on {path} failed:\n{res.stderr[-2000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return out["peak_bytes"] / 1e6, out["method"]


# --------------------------------------------------------------------------------------- views

def _median_times(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Interleaved rounds (a, b, c, a, b, c, ...) so that drifting load hits every pipeline alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for name, fn in fns.items():  # warm-up (page cache, lazy imports)
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def bench_augment(pixels: np.ndarray, presets: tuple[str, ...] = AUGMENT_BENCH, draws: int = 8) -> dict[str, float]:
    """Mean seconds per image of each augmentation preset (or spec) on decoded ``pixels``, over the
    seeded draws 0 .. ``draws - 1`` (each draw decides which steps apply and their strengths, so
    the mean is the expected cost a training worker pays on top of building the views)."""
    out: dict[str, float] = {}
    for preset in presets:
        d = parse_degradation(preset)
        d(pixels[:64, :64], np.random.default_rng(0))  # warm-up (lazy imports, codecs)
        t0 = time.perf_counter()
        for seed in range(draws):
            d(pixels, np.random.default_rng(seed))
        out[preset] = (time.perf_counter() - t0) / max(draws, 1)
    return out


def bench_views(
    workdir: str | Path,
    sizes: tuple[str, ...] = tuple(JPEG_SIZES),
    png: bool = True,
    rounds: int | None = None,
    memory: bool = True,
    size_override: dict[str, tuple[int, int]] | None = None,
    augment: tuple[str, ...] = AUGMENT_BENCH,
    augment_draws: int = 8,
) -> dict[str, Any]:
    """Per-image time and peak memory of ours / naive / decode-only for each image size.

    ``size_override``: name -> (width, height), e.g. for tests with tiny images. ``augment``:
    augmentation presets timed on each JPEG (:func:`bench_augment`; ``()`` skips them).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    dims = {**JPEG_SIZES, PNG_SIZE[0]: PNG_SIZE[1], **(size_override or {})}
    todo = list(sizes) + ([PNG_SIZE[0]] if png else [])
    warm = {".jpg": write_image(workdir / "warm.jpg", photo_like(64, 64, 99)),
            ".png": write_image(workdir / "warm.png", photo_like(64, 64, 99))}
    out: dict[str, Any] = {}
    with torch_threads(1):
        for name in todo:
            w, h = dims[name]
            suffix = ".png" if name.endswith("png") else ".jpg"
            path = workdir / f"{name}{suffix}"
            t0 = time.perf_counter()
            write_image(path, photo_like(h, w, seed=w))
            mp = w * h / 1e6
            _log(f"views {name}: {w}×{h}, {path.stat().st_size / 1e6:.1f} MB (made in {time.perf_counter() - t0:.1f} s)")
            n = rounds or (5 if mp <= 12.5 else 3)
            pipes = ["ours", "naive", "decode"]
            if suffix == ".jpg":
                pipes += ["decode_reuse", "ours_pillow", "pillow_decode"]
            times = _median_times({p: (lambda p=p: PIPELINES[p](path)) for p in pipes}, n)
            med = {p: statistics.median(v) for p, v in times.items()}
            row: dict[str, Any] = {
                "width": w, "height": h, "megapixels": round(mp, 2), "format": suffix[1:],
                "file_mb": round(path.stat().st_size / 1e6, 2), "rounds": n,
                "decoder": V.decode(path).decoder,
                "decode_with": "simplejpeg" if suffix == ".jpg" and V.simplejpeg is not None else "pillow",
                "ours_s": med["ours"], "naive_s": med["naive"], "decode_s": med["decode"],
            }
            if suffix == ".jpg":
                row["decode_reuse_s"] = med["decode_reuse"]
                row["ours_pillow_s"] = med["ours_pillow"]
                row["pillow_decode_s"] = med["pillow_decode"]
            if memory:
                for p in ("ours", "naive", "decode"):
                    row[f"{p}_mb"], row["memory_method"] = measure_peak_mb(p, path, warm[suffix])
                    row[f"{p}_mb"] = round(row[f"{p}_mb"], 1)
            row["speedup_vs_naive"] = row["naive_s"] / row["ours_s"]
            row["ratio_to_decode"] = row["ours_s"] / row["decode_s"]
            if "decode_reuse_s" in row:  # the stricter floor: decode without page faults, as ours does
                row["ratio_to_decode_reuse"] = row["ours_s"] / row["decode_reuse_s"]
            row["beyond_decode_ms"] = (row["ours_s"] - row["decode_s"]) * 1e3
            row["beyond_decode_ms_per_mp"] = row["beyond_decode_ms"] / mp
            if memory:
                row["memory_ratio_vs_naive"] = row["ours_mb"] / row["naive_mb"] if row["naive_mb"] > 0 else None
            row["times_s"] = {p: [round(t, 5) for t in v] for p, v in times.items()}
            if suffix == ".jpg" and augment:
                aug = bench_augment(V.decode(path).pixels, augment, augment_draws)
                row.update({f"augment_{k}_s": v for k, v in aug.items()}, augment_draws=augment_draws)
                _log(f"views {name}: augmentation " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in aug.items()))
            out[name] = row
            _log(f"views {name}: ours {row['ours_s'] * 1e3:.0f} ms, naive {row['naive_s'] * 1e3:.0f} ms, "
                 f"decode {row['decode_s'] * 1e3:.0f} ms" + (f"; peak ours {row['ours_mb']:.0f} MB, naive {row['naive_mb']:.0f} MB" if memory else ""))
            path.unlink()
    return out


# --------------------------------------------------------------------------------------- model

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, amp: bool, sizes: tuple[int, ...] | None = None, reps: int = 5) -> dict[str, Any]:
    """GFLOP/s of large square matmuls (2·n³ FLOPs), in the precision the model runs in: the best
    repetition (a peak is a ceiling; model rates are medians, so fractions are conservative)."""
    from .runtime import autocast

    sizes = sizes or ((2048,) if device.type == "cpu" else (8192,))
    res = {}
    for n in sizes:
        a = torch.randn(n, n, device=device)
        b = torch.randn(n, n, device=device)
        with torch.inference_mode(), autocast(device, amp):
            a @ b
            _sync(device)
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                a @ b
                _sync(device)
                ts.append(time.perf_counter() - t0)
        res[str(n)] = 2 * n ** 3 / min(ts) / 1e9
        del a, b
    return {"peak_gflops": max(res.values()), "by_size": res}


def fold_batchnorm(model: torch.nn.Module) -> int:
    """Fold eval-mode BatchNorm into the preceding convolution of each backbone (torch.fx), in place.

    Not used by the project: measured here to show what it would buy (see docs/performance.md).
    Returns the number of BatchNorm layers removed (0 when a backbone cannot be traced).
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


class MicroBatched(torch.nn.Module):
    """Run ``inner`` over micro-batches of ``chunk`` images (eval only: BatchNorm statistics are per batch
    in training). Not used by the project: measured here to show what it would buy on CPU."""

    def __init__(self, inner: torch.nn.Module, chunk: int = 4):
        super().__init__()
        self.inner, self.chunk = inner, chunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= self.chunk:
            return self.inner(x)
        return torch.cat([self.inner(part) for part in x.split(self.chunk)])


def _make_model(backbone: str, k: int, device: torch.device, channels_last: bool | None = None, fold_bn: bool = False,
                chunk: int = 0):
    from .models import ModelConfig, create_model

    cfg = ModelConfig(arch="standard" if k == 0 else "glass", backbone=backbone, k=max(k, 1))
    model = create_model(cfg, pretrained=False).eval()
    auto = bool(model.cfg.channels_last)  # filled from the backbone (the caller's cfg is left as is)
    if channels_last is not None and channels_last != auto:
        model = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        model.prep.channels_last = channels_last
    if fold_bn and fold_batchnorm(model) == 0:
        return None, auto
    if chunk:
        model.global_backbone = MicroBatched(model.global_backbone, chunk)
        if hasattr(model, "local_backbone"):
            model.local_backbone = MicroBatched(model.local_backbone, chunk)
    return model.to(device), auto


def _inputs(batch: int, k: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    c = torch.randint(0, 256, (batch, k, 3, size, size), dtype=torch.uint8, device=device)
    return g, c


def _forward(model, g, c, k: int):
    return model(g) if k == 0 else model(g, c)


def count_flops(model, k: int, device: torch.device, size: int = 224) -> int:
    """FLOPs of one image's forward pass (batch 1), 2 per multiply-add."""
    from torch.utils.flop_counter import FlopCounterMode

    g, c = _inputs(1, k, size, device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        _forward(model, g, c, k)
    return int(counter.get_total_flops())


def time_forward(model, batch: int, k: int, device: torch.device, amp: bool, budget_s: float = 2.0,
                 min_reps: int = 2, max_reps: int = 7, size: int = 224) -> list[float]:
    """Seconds per forward call: one warm-up call, then repetitions until ``budget_s`` (bounded)."""
    from .runtime import autocast

    g, c = _inputs(batch, k, size, device)
    with torch.inference_mode(), autocast(device, amp):
        t0 = time.perf_counter()
        _forward(model, g, c, k)
        _sync(device)
        first = time.perf_counter() - t0
        reps = int(min(max_reps, max(min_reps, math.ceil(budget_s / max(first, 1e-6)))))
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            _forward(model, g, c, k)
            _sync(device)
            ts.append(time.perf_counter() - t0)
    return ts


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
    micro_batch: int = 4,
    micro_batch_ks: tuple[int, ...] = (4, 10),
    fold_bn_ks: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Forward time, FLOPs, GFLOP/s and fraction of the matmul peak per (backbone, K, batch, layout)."""
    from .models.backbones import create_backbone, is_convnet
    from .runtime import configure_threads, resolve_device

    dev = resolve_device(device)
    n_threads = configure_threads(threads) if dev.type == "cpu" else torch.get_num_threads()
    use_amp = amp and dev.type == "cuda"
    # The peak is measured at the start, between (backbone, K) groups and at the end; the best of these is
    # the reference (a shared virtual machine drifts; the best observed rate is the honest ceiling).
    peaks = [matmul_peak(dev, use_amp, peak_sizes)]
    _log(f"model: {dev}, {n_threads} thread(s), matmul peak {peaks[0]['peak_gflops']:.1f} GFLOP/s")
    runs = []
    info: dict[str, Any] = {}
    for name in backbones:
        convnet = is_convnet(create_backbone(name, pretrained=False).module)
        auto_layout = "channels_last" if convnet else "nchw"
        info[name] = {"convnet": convnet, "auto_layout": auto_layout}
        # The automatic layout (what the project does), then for convnets what else was measured:
        # the other layout, BN folded into the convolutions, micro-batches of 4 views per backbone call.
        variants = [dict(cl=convnet, ks=ks, batches=batches)]
        if convnet:
            variants += [dict(cl=False, ks=other_layout_ks, batches=batches),
                         dict(cl=True, fold=True, ks=other_layout_ks if fold_bn_ks is None else fold_bn_ks, batches=batches),
                         dict(cl=True, chunk=micro_batch, ks=micro_batch_ks, batches=tuple(b for b in batches if b > 1))
                         ][: 3 if dev.type != "cpu" else 4]  # micro-batching is a CPU cache effect
        for k in ks:
            flops = None
            if runs:  # the peak again between groups of configurations: the best of all is the reference
                peaks.append(matmul_peak(dev, use_amp, peak_sizes, reps=3))
            for var in variants:
                cl, fold, chunk = var["cl"], var.get("fold", False), var.get("chunk", 0)
                layout = ("channels_last" if cl else "nchw") + ("+bn-folded" if fold else "") + (
                    f"+micro-batch-{chunk}" if chunk else "")
                is_auto = layout == auto_layout
                if k not in var["ks"] or not var["batches"] or (chunk and not micro_batch):
                    continue
                model, _ = _make_model(name, k, dev, cl, fold_bn=fold, chunk=chunk)
                if model is None:  # nothing to fold
                    continue
                if flops is None:
                    flops = count_flops(model, k, dev)
                for b in var["batches"]:
                    ts = time_forward(model, b, k, dev, use_amp, budget_s=budget_s)
                    s_img = statistics.median(ts) / b
                    gflops = flops / s_img / 1e9
                    runs.append({
                        "backbone": name, "k": k, "batch": b, "layout": layout, "auto": is_auto,
                        "views_per_image": 1 + k, "s_per_image": s_img, "s_per_view": s_img / (1 + k),
                        "gflop_per_image": flops / 1e9, "gflops": gflops, "times_s": [round(t, 5) for t in ts],
                    })
                    best = max(x["peak_gflops"] for x in peaks)
                    _log(f"model {name} K={k} batch {b} {layout}: {s_img * 1e3:.0f} ms/image, {gflops:.1f} GFLOP/s "
                         f"({gflops / best:.0%} of the peak so far)")
                del model
                gc.collect()
    peaks.append(matmul_peak(dev, use_amp, peak_sizes))
    peak = max(x["peak_gflops"] for x in peaks)
    for r in runs:
        r["fraction_of_peak"] = r["gflops"] / peak
    samples = ", ".join(f"{x['peak_gflops']:.1f}" for x in peaks)
    _log(f"model: matmul peak {peak:.1f} GFLOP/s (measurements: {samples})")
    return {
        "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "threads": n_threads, "amp": use_amp, "peak_gflops": peak, "peak_measurements": peaks,
        "backbones": info, "runs": runs,
    }


# ------------------------------------------------------------------------------------- predict

def bench_predict(
    workdir: str | Path,
    n_images: int = 32,
    size: tuple[int, int] = JPEG_SIZES["12MP"],
    backbone: str = "resnet50",
    k: int = 4,
    batch_size: int = 8,
    workers: int = 2,
    device: str = "auto",
    threads: int = 0,
) -> dict[str, Any]:
    """``predict`` throughput over a folder of JPEGs vs the model alone on the same batches."""
    from .api import Detector, collate_prepared, prepare
    from .models import ModelConfig, create_model, save_checkpoint
    from .predict import predict
    from .runtime import configure_threads, resolve_device

    workdir = Path(workdir)
    folder = workdir / "predict_images"
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    base = photo_like(h, w, seed=7)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for i in range(n_images):  # distinct content (and so distinct crops) per image, cheaply
        px = np.roll(base, (int(rng.integers(0, h)), int(rng.integers(0, w))), axis=(0, 1))
        write_image(folder / f"img{i:03d}.jpg", px[:, ::-1] if i % 2 else px)
    _log(f"predict: {n_images} images of {w}×{h} written in {time.perf_counter() - t0:.1f} s")
    dev = resolve_device(device)
    n_threads = configure_threads(threads) if dev.type == "cpu" else torch.get_num_threads()
    cfg = ModelConfig(arch="glass" if k else "standard", backbone=backbone, k=max(k, 1))
    ckpt = save_checkpoint(workdir / "predict_ckpt", create_model(cfg, pretrained=False))
    det = Detector.from_pretrained(ckpt, str(dev))
    paths = sorted(folder.glob("*.jpg"))
    spec = det.spec()
    # single-thread cost of preparing one image (what each worker does)
    with torch_threads(1):
        prep_ts = []
        for p in paths[:3]:
            t0 = time.perf_counter()
            prepare(str(p), spec)
            prep_ts.append(time.perf_counter() - t0)
    batch = collate_prepared([dict(prepare(str(p), spec), index=i) for i, p in enumerate(paths[:batch_size])])
    det.forward_rows(batch)  # warm-up
    _sync(dev)
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        det.forward_rows(batch)
        _sync(dev)
        ts.append(time.perf_counter() - t0)
    model_s_per_image = statistics.median(ts) / batch_size
    del batch
    gc.collect()
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
    predict_rate = len(rows) / elapsed
    model_rate = 1.0 / model_s_per_image
    _log(f"predict: {predict_rate:.2f} img/s vs model-only {model_rate:.2f} img/s")
    return {
        "device": str(dev), "threads": n_threads, "images": len(rows), "width": w, "height": h,
        "backbone": backbone, "k": k, "batch_size": batch_size, "workers": workers,
        "predict_s": elapsed, "predict_images_per_s": predict_rate, "model_images_per_s": model_rate,
        "model_s_per_image": model_s_per_image, "prepare_s_per_image": statistics.median(prep_ts),
        "overlap_efficiency": predict_rate / model_rate,
        # after the first batch: the pipeline full, start-up latency excluded
        "first_batch_s": first_batch_s,
        "steady_overlap_efficiency": ((len(rows) - batch_size) * model_s_per_image / (elapsed - first_batch_s)
                                      if len(rows) > batch_size else None),
    }


# --------------------------------------------------------------------------------------- goals

def evaluate_goals(res: dict[str, Any]) -> dict[str, Any]:
    """Each goal: target, measured value and met / not met (None when that part was not run)."""
    goals: dict[str, Any] = {}
    views = res.get("views") or {}
    at = [views[s] for s in GOAL_SIZES if s in views]
    if at:
        sp = min(r["speedup_vs_naive"] for r in at)
        goals["views_speedup_vs_naive"] = {"measured": sp, "met": sp >= 6}
        rd = max(r["ratio_to_decode"] for r in at)
        goals["views_ratio_to_decode"] = {"measured": rd, "met": rd <= 1.25}
        if all(r.get("memory_ratio_vs_naive") is not None for r in at):
            mr = max(r["memory_ratio_vs_naive"] for r in at)
            goals["views_memory_ratio"] = {"measured": mr, "met": mr <= 1 / 6}
    flat = [r["ratio_to_decode"] for s, r in views.items() if r["format"] == "jpg" and r["megapixels"] >= 3.9]
    if len(flat) >= 2:
        goals["views_flat_in_megapixels"] = {"measured": max(flat), "min": min(flat), "met": max(flat) <= 1.25}
    model = res.get("model")
    if model:
        big = max(r["batch"] for r in model["runs"])  # the batch predict and evaluation use (8)
        fr: dict[str, list[float]] = {}
        every: dict[str, list[float]] = {}
        micro: dict[str, list[float]] = {}
        for r in model["runs"]:
            if r["backbone"] not in ("resnet50", "convnext_tiny"):
                continue
            if r["auto"]:
                every.setdefault(r["backbone"], []).append(r["fraction_of_peak"])
                if r["batch"] == big:
                    fr.setdefault(r["backbone"], []).append(r["fraction_of_peak"])
            elif "micro-batch" in r["layout"] and r["batch"] == big:
                micro.setdefault(r["backbone"], []).append(r["fraction_of_peak"])
        if fr:
            worst = min(min(v) for v in fr.values())
            goals["model_fraction_of_peak"] = {
                "measured": worst, "batch": big, "by_backbone": {b: min(v) for b, v in fr.items()},
                "worst_any_batch": min(min(v) for v in every.values()),
                "with_micro_batches": {b: min(v) for b, v in micro.items()}, "met": worst >= 0.7}
    pred = res.get("predict")
    if pred:
        goals["predict_overlap_efficiency"] = {"measured": pred["overlap_efficiency"], "met": pred["overlap_efficiency"] >= 0.9}
    for key, g in goals.items():
        g["target"] = GOALS[key]
    return goals


# ------------------------------------------------------------------------------------ markdown

def _f(v: Any, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def to_markdown(res: dict[str, Any]) -> str:
    env = res.get("environment", {})
    lines = [f"# glassdetect bench ({res.get('command', '')})", ""]
    load = lambda key: "/".join(f"{v:.2f}" for v in env[key]) if env.get(key) else "?"  # noqa: E731
    lines.append(f"Machine: {env.get('cpu', '?')}, {env.get('cpus', '?')} CPUs; torch {env.get('torch')}, "
                 f"Pillow {env.get('pillow')}, simplejpeg {env.get('simplejpeg') or 'not installed'}; {env.get('date', '')}; "
                 f"load average (1/5/15 min) {load('load_average')} at the start, {load('load_average_end')} at the end.")
    lines.append("")
    views = res.get("views")
    if views:
        ms = lambda r, key: _f(r.get(key) and r[key] * 1e3, ".1f")  # noqa: E731
        lines += ["## Views: time per image (one thread)", "",
                  "| image | file MB | ours ms | naive ms | decode ms | decode, reused buffer ms | ours, Pillow decode ms | "
                  "Pillow decode ms | speed-up vs naive | ours / decode | ours / decode (reused buffer) | beyond decode ms |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in views.items():
            lines.append(
                f"| {name} ({r['width']}×{r['height']} {r['format'].upper()}) | {r['file_mb']:.1f} | {ms(r, 'ours_s')} | "
                f"{ms(r, 'naive_s')} | {ms(r, 'decode_s')} ({r['decode_with']}) | {ms(r, 'decode_reuse_s')} | "
                f"{ms(r, 'ours_pillow_s')} | {ms(r, 'pillow_decode_s')} | {r['speedup_vs_naive']:.1f}× | "
                f"{r['ratio_to_decode']:.2f} | {_f(r.get('ratio_to_decode_reuse'), '.2f')} | {r['beyond_decode_ms']:.1f} |")
        if any("ours_mb" in r for r in views.values()):
            lines += ["", "## Views: peak memory per image", "",
                      "| image | ours MB | naive MB | decode MB | ours / naive |", "|---|---:|---:|---:|---:|"]
            for name, r in views.items():
                lines.append(f"| {name} | {_f(r.get('ours_mb'), '.1f')} | {_f(r.get('naive_mb'), '.1f')} | "
                             f"{_f(r.get('decode_mb'), '.1f')} | {_f(r.get('memory_ratio_vs_naive'), '.3f')} |")
        method = next((r.get("memory_method") for r in views.values() if r.get("memory_method")), None)
        lines += ["", "Times: medians of interleaved rounds (ours, naive, decode, ... in turn)."
                  + (f" Peak memory: a fresh subprocess per measurement, {method}, after a warm-up call." if method else ""), ""]
        aug = [k[len("augment_"):-2] for k in next((r for r in views.values() if "augment_draws" in r), {})
               if k.startswith("augment_") and k.endswith("_s")]
        if aug:
            draws = next(r["augment_draws"] for r in views.values() if "augment_draws" in r)
            lines += [f"## Training augmentation: time per image on top of the views (one thread; mean of {draws} "
                      "seeded draws)", "", "| image | " + " | ".join(f"{a} ms" for a in aug) + " | ours ms |",
                      "|---|" + "---:|" * (len(aug) + 1)]
            for name, r in views.items():
                if "augment_draws" in r:
                    lines.append(f"| {name} | " + " | ".join(ms(r, f"augment_{a}_s") for a in aug) + f" | {ms(r, 'ours_s')} |")
            lines.append("")
    model = res.get("model")
    if model:
        lines += [f"## Model forward ({model['device']}, {model['threads']} thread(s), AMP {model['amp']}; "
                  f"matmul peak {model['peak_gflops']:.1f} GFLOP/s)", "",
                  "| backbone | layout | K | batch | ms / image | ms / view | GFLOP / image | GFLOP/s | fraction of peak |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in model["runs"]:
            lines.append(f"| {r['backbone']} | {r['layout']}{' (auto)' if r['auto'] else ''} | {r['k']} | {r['batch']} | "
                         f"{r['s_per_image'] * 1e3:.1f} | {r['s_per_view'] * 1e3:.1f} | {r['gflop_per_image']:.1f} | "
                         f"{r['gflops']:.1f} | {r['fraction_of_peak']:.2f} |")
        lines.append("")
    pred = res.get("predict")
    if pred:
        lines += [f"## predict ({pred['images']} JPEGs of {pred['width']}×{pred['height']}, {pred['backbone']} K={pred['k']}, "
                  f"batch {pred['batch_size']}, {pred['workers']} workers, {pred['device']})", "",
                  "| predict img/s | model-only img/s | overlap_efficiency | after the first batch | first batch s | "
                  "prepare ms / image (1 thread) | model ms / image |",
                  "|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {pred['predict_images_per_s']:.2f} | {pred['model_images_per_s']:.2f} | {pred['overlap_efficiency']:.3f} | "
                  f"{_f(pred.get('steady_overlap_efficiency'), '.3f')} | {_f(pred.get('first_batch_s'), '.2f')} | "
                  f"{pred['prepare_s_per_image'] * 1e3:.1f} | {pred['model_s_per_image'] * 1e3:.1f} |", ""]
    goals = res.get("goals")
    if goals:
        lines += ["## Goals", "", "| goal | target | measured | met |", "|---|---|---:|---|"]
        for key, g in goals.items():
            lines.append(f"| {key} | {g['target']} | {g['measured']:.3f} | {'met' if g['met'] else 'NOT met'} |")
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- run

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
) -> dict[str, Any]:
    """Run the requested parts (``views``, ``model``, ``predict`` or ``all``); returns the results dict."""
    if what not in (*PARTS, "all"):
        raise ValueError(f"unknown bench part {what!r}; choose one of {', '.join(PARTS)} or all")
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
            res["predict"] = bench_predict(tmp, n_images=24 if quick else 48, device=device, threads=threads)
    res["goals"] = evaluate_goals(res)
    res["elapsed_s"] = time.perf_counter() - t_start
    res["environment"]["load_average_end"] = os.getloadavg()
    return res
