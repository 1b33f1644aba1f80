"""``bench views``: per-image time and peak memory of ours / naive / decode-only, the baseline's
global view (and the reduced-scale decode it no longer uses), and augmentation cost.

Times are medians over interleaved rounds with one torch thread, as in a DataLoader worker. Peak
memory comes from :mod:`glassdetect.bench.memory` (a fresh subprocess per pipeline and image).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..views import build as V
from ..views.degrade import parse as parse_degradation
from .common import AUGMENT_BENCH, JPEG_SIZES, PNG_SIZE, log, torch_threads
from .memory import measure_peak_mb
from .pipelines import PIPELINES
from .synth import photo_like, write_image

JPEG_ONLY = ("decode_reuse", "ours_pillow", "pillow_decode")  # timed on JPEGs only
BASELINE_DRAFT = "baseline_draft"  # JPEGs only: the reduced-scale decode the baseline used before one view path


def baseline_views(path: str | Path) -> V.Views:
    """The resize-only baseline's views: the global view only, through the same decode path as GLASS's."""
    return V.build_views(path, V.ViewSpec(need_crops=False))


def baseline_draft_view(path: str | Path, spec: V.ViewSpec | None = None) -> np.ndarray:
    """For comparison only: the baseline's former global view — libjpeg decodes at a reduced DCT
    scale (both sides >= 2 × the view's side), then the same resize. Cheaper, but for JPEGs only,
    so its views differed from GLASS's by file format; the pipeline no longer does this."""
    spec = spec or V.ViewSpec(need_crops=False)
    img = V.open_image(Path(path).read_bytes(), spec.max_pixels, draft_size=2 * spec.global_size)
    return V.resize_global(img, spec.global_size, spec.interpolation)


def median_times(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Interleaved rounds (a, b, c, a, b, c, ...) so that drifting load hits every pipeline alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up (page cache, lazy imports)
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


def _timed_row(path: Path, w: int, h: int, rounds: int) -> dict[str, Any]:
    """The timing part of one image's row: medians per pipeline and every round's time."""
    jpeg = path.suffix == ".jpg"
    pipes = ["ours", "naive", "decode", *(JPEG_ONLY if jpeg else ())]
    fns: dict[str, Callable[[], Any]] = {p: (lambda p=p: PIPELINES[p](path)) for p in pipes}
    fns["baseline"] = lambda: baseline_views(path)
    if jpeg:
        fns[BASELINE_DRAFT] = lambda: baseline_draft_view(path)
    times = median_times(fns, rounds)
    med = {p: statistics.median(v) for p, v in times.items()}
    row: dict[str, Any] = {
        "width": w, "height": h, "megapixels": round(w * h / 1e6, 2), "format": path.suffix[1:],
        "file_mb": round(path.stat().st_size / 1e6, 2), "rounds": rounds,
        "decoder": V.decode(path).decoder,
        "decode_with": "simplejpeg" if jpeg and V.simplejpeg is not None else "pillow",
        "ours_s": med["ours"], "naive_s": med["naive"], "decode_s": med["decode"],
    }
    row.update({f"{p}_s": med[p] for p in (*JPEG_ONLY, "baseline", BASELINE_DRAFT) if p in med})
    row["_times"] = times
    return row


def _add_ratios(row: dict[str, Any], memory: bool) -> None:
    row["speedup_vs_naive"] = row["naive_s"] / row["ours_s"]
    row["ratio_to_decode"] = row["ours_s"] / row["decode_s"]
    if "decode_reuse_s" in row:  # the stricter floor: decode without page faults, as ours does
        row["ratio_to_decode_reuse"] = row["ours_s"] / row["decode_reuse_s"]
    row["beyond_decode_ms"] = (row["ours_s"] - row["decode_s"]) * 1e3
    row["beyond_decode_ms_per_mp"] = row["beyond_decode_ms"] / (row["width"] * row["height"] / 1e6)
    if f"{BASELINE_DRAFT}_s" in row:  # what one global-view path costs the baseline per image
        row["baseline_full_decode_extra_ms"] = (row["baseline_s"] - row[f"{BASELINE_DRAFT}_s"]) * 1e3
    if memory:
        row["memory_ratio_vs_naive"] = row["ours_mb"] / row["naive_mb"] if row["naive_mb"] > 0 else None


def _bench_image(name: str, path: Path, w: int, h: int, rounds: int | None, warm: Path, memory: bool,
                 augment: tuple[str, ...], augment_draws: int) -> dict[str, Any]:
    """One generated image: times, peak memory, ratios and the augmentation cost (JPEGs)."""
    t0 = time.perf_counter()
    write_image(path, photo_like(h, w, seed=w))
    mp = w * h / 1e6
    log(f"views {name}: {w}×{h}, {path.stat().st_size / 1e6:.1f} MB (made in {time.perf_counter() - t0:.1f} s)")
    row = _timed_row(path, w, h, rounds or (5 if mp <= 12.5 else 3))
    times = row.pop("_times")
    if memory:
        for p in ("ours", "naive", "decode"):
            row[f"{p}_mb"], row["memory_method"] = measure_peak_mb(p, path, warm)
            row[f"{p}_mb"] = round(row[f"{p}_mb"], 1)
    _add_ratios(row, memory)
    row["times_s"] = {p: [round(t, 5) for t in v] for p, v in times.items()}
    if path.suffix == ".jpg" and augment:
        aug = bench_augment(V.decode(path).pixels, augment, augment_draws)
        row.update({f"augment_{k}_s": v for k, v in aug.items()}, augment_draws=augment_draws)
        log(f"views {name}: augmentation " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in aug.items()))
    log(f"views {name}: ours {row['ours_s'] * 1e3:.0f} ms, naive {row['naive_s'] * 1e3:.0f} ms, "
        f"decode {row['decode_s'] * 1e3:.0f} ms, baseline {row['baseline_s'] * 1e3:.0f} ms"
        + (f" (reduced-scale decode {row[f'{BASELINE_DRAFT}_s'] * 1e3:.0f} ms)" if f"{BASELINE_DRAFT}_s" in row else "")
        + (f"; peak ours {row['ours_mb']:.0f} MB, naive {row['naive_mb']:.0f} MB" if memory else ""))
    return row


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
            out[name] = _bench_image(name, path, w, h, rounds, warm[suffix], memory, augment, augment_draws)
            path.unlink()
    return out
