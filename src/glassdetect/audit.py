"""Shortcut audit: does any single, trivial image property separate real from fake?

A detector happily learns whatever separates the classes most cheaply. If every real image is
a crop of a camera JPEG (and keeps that JPEG's 8×8 block grid even when re-saved as PNG) while
every fake comes out of a neural upscaler, "JPEG traces = real" is a perfect rule that has
nothing to do with generation. :func:`audit` measures, per image,

* file-level properties: ``format`` (Pillow's), ``jpeg_quality`` (IJG estimate from the luma
  quantisation table; None for non-JPEG), ``jpeg_quality_known``, ``megapixels``, ``aspect``
  (long / short side), ``mode``, ``bit_depth``, ``exif``, ``bytes_per_pixel`` (file size / pixels);
* pixel-history properties that survive re-saving, on the decoded luma (float, centre region of
  at most ``max_side`` × ``max_side``):

  - ``jpeg_grid``: a hidden JPEG's quantisation comb on the 8×8 grid at its best alignment:
    the lowest DCT coefficients of a decoded JPEG, taken on its own block grid, sit on integer
    multiples of the quantisation steps, also after cropping at any offset and saving as PNG
    (≈0.005–0.02 for images never JPEG-compressed, ≈0.08 at quality 100, ≈0.14 at 95, ≈0.6 at
    90, ≈0.9 at 75; destroyed by resizing); ``jpeg_grid_offset`` (row,col mod 8) is recorded;
  - ``blockiness``: the classic boundary-discontinuity measure of the same grid (catches
    low-quality JPEG only, ≈0.4 at quality 75, ≈0 at 90+);
  - ``resampling``: peak-to-median ratio of the spectrum of the second-derivative energy along
    rows / columns (≈3–5 for untouched images, large for interpolation-upscaled ones; blind to
    centre-aligned ×2 upscaling, whose two phases are mirror images);
  - ``noise``: Immerkær's fast noise estimate, in grey levels (texture counts as noise);

and reports, per split and overall, the ROC AUC of each property *alone* at telling fake (1)
from real (0), as ``max(auc, 1 - auc)`` with its direction. A property is flagged when that
reaches ``threshold`` (default 0.65) on a split with at least ``min_per_class`` images of each
class and a two-sided Mann-Whitney p-value ≤ ``alpha`` (default 0.01; 1 switches it off), so
that chance AUCs on small splits do not raise alarms. Categorical properties become one
indicator per value (``format=PNG``; a single indicator when there are only two values).

Usage::

    from glassdetect.audit import audit, format_report
    report = audit("data/bench")          # tree, manifest CSV or folder with manifest.csv
    print(format_report(report))
    report.flags, report.verdict, report.to_json()

Files are only opened for reading; unreadable images are listed in ``report.errors`` and skipped.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from .limits import DEFAULT_MAX_PIXELS
from .pilguard import identify

DEFAULT_THRESHOLD = 0.65
DEFAULT_MIN_PER_CLASS = 4
DEFAULT_ALPHA = 0.01  # also require a Mann-Whitney p-value at most this (small splits are noisy)

# IJG standard luminance quantisation table (natural order, quality 50).
_STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
], dtype=np.float64)


def _ijg_tables() -> np.ndarray:
    q = np.arange(1, 101, dtype=np.float64)
    scale = np.where(q < 50, np.floor(5000 / q), 200 - 2 * q)
    t = np.floor((_STD_LUMA[None, :] * scale[:, None] + 50) / 100)
    return np.clip(t, 1, 255)  # (100, 64); row i = quality i + 1


_IJG = _ijg_tables()

NUMERIC = ("megapixels", "aspect", "bytes_per_pixel", "jpeg_quality", "jpeg_grid", "blockiness", "resampling",
           "noise")
CATEGORICAL = ("format", "mode", "bit_depth", "exif", "jpeg_quality_known")
PROPERTY_HELP = {
    "format": "file format (Pillow)",
    "mode": "colour mode",
    "bit_depth": "bits per sample",
    "exif": "EXIF present",
    "jpeg_quality_known": "has JPEG quantisation tables",
    "megapixels": "width × height / 1e6",
    "aspect": "long side / short side",
    "bytes_per_pixel": "file size / pixels",
    "jpeg_quality": "IJG quality estimated from the luma table (JPEG only)",
    "jpeg_grid": "JPEG quantisation comb on the 8×8 grid at its best alignment (≈0: never JPEG-compressed)",
    "blockiness": "8×8 boundary discontinuity at the best alignment vs the phase 4 away (÷ median)",
    "resampling": "resampling periodicity: spectral peak / median of the 2nd-derivative energy",
    "noise": "Immerkær noise estimate (grey levels)",
}


# ---------------------------------------------------------------------------------- estimators

def estimate_jpeg_quality(luma_table: Sequence[int] | np.ndarray) -> int:
    """The IJG quality (1..100) whose scaled standard luma table is closest to ``luma_table``
    (64 values in natural order, as Pillow's ``Image.quantization[0]``). Exact for files written
    by libjpeg / Pillow; a nearest-fit estimate for other encoders (cameras, Photoshop)."""
    t = np.asarray(luma_table, dtype=np.float64).reshape(-1)[:64]
    if t.size != 64:
        raise ValueError("a JPEG quantisation table has 64 entries")
    err = np.abs(np.log(_IJG) - np.log(np.maximum(t, 1))[None, :]).sum(axis=1)
    return int(np.argmin(err)) + 1


def _phase_profile(a: np.ndarray, axis: int) -> np.ndarray:
    """Mean of ``a`` per position modulo 8 along ``axis`` (after averaging the other axis)."""
    line = a.mean(axis=1 - axis)
    n = line.size // 8 * 8
    if n < 16:
        return np.full(8, np.nan)
    return line[:n].reshape(-1, 8).mean(axis=0)


def _grid_strength(profile: np.ndarray) -> float:
    """(best phase - opposite phase) / median of the other phases.

    Comparing with the phase 4 away (not the median) makes periods 2 and 4 (interpolation by
    ×2/×4, a JPEG downscaled by 2) score ≈0: only a genuine period-8 grid counts.
    """
    if not np.all(np.isfinite(profile)):
        return float("nan")
    b = int(np.argmax(profile))
    others = np.delete(profile, b)
    med = float(np.median(others))
    if med <= 1e-9:
        return 0.0
    return float((profile[b] - profile[(b + 4) % 8]) / med)


def _dct_basis(k: int) -> np.ndarray:
    n = np.arange(8)
    b = np.array([np.cos((2 * n + 1) * u * np.pi / 16) * (np.sqrt(1 / 8) if u == 0 else np.sqrt(2 / 8))
                  for u in range(k)])
    return b.astype(np.float32)  # (k, 8), rows of the orthonormal 8-point DCT-II


_GRID_K = 3  # DCT coefficients (u, v < 3: DC and the lowest ACs) whose quantisation is tested
_GRID_Q = np.array([1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 15], dtype=np.float64)  # candidate steps
_GRID_FOLD = 840  # lcm of the steps: values are histogrammed modulo this
_GRID_BIN = 4  # histogram bins per grey level of DCT coefficient
_GRID_COS = np.cos(2 * np.pi * (np.arange(_GRID_FOLD * _GRID_BIN) / _GRID_BIN)[:, None]
                   / _GRID_Q[None, :]).astype(np.float32)


def jpeg_grid_alignment(luma: np.ndarray, max_blocks: int = 4096) -> tuple[np.ndarray, tuple[int, int]]:
    """Quantisation-comb score of each of the 64 8×8 grid alignments, and the best ``(dy, dx)``
    (row, column of a block's first pixel modulo 8, in ``luma``'s coordinates).

    For every alignment the luma (minus 128, as JPEG does) is cut into 8×8 blocks and the
    lowest 3×3 DCT coefficients are computed. A decoded JPEG, cropped at any offset and saved in
    any lossless format, has these coefficients on integer multiples of its quantisation steps
    *at its own alignment only*, blurred by ~0.35 of pixel rounding; elsewhere they are smooth.
    The comb is measured per coefficient as max over candidate steps q of E[cos(2π c / q)]
    (≈ exp(-2π²σ²/q²) on the comb, ≈0 off it), then averaged over the coefficients.
    Uses the centre ``max_blocks`` blocks at most.
    """
    y = np.asarray(luma, dtype=np.float32)
    side = int(np.sqrt(max_blocks)) * 8 + 7
    h, w = y.shape
    y0 = x0 = 0
    if h > side or w > side:
        y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
        y = y[y0:y0 + side, x0:x0 + side]
        h, w = y.shape
    nby, nbx = (h - 7) // 8, (w - 7) // 8
    if nby < 2 or nbx < 2:
        return np.full((8, 8), np.nan), (0, 0)
    k = _GRID_K
    basis = _dct_basis(k)
    yc = y - 128.0
    coefs = np.empty((8, 8, nby * nbx, k * k), dtype=np.float32)
    for dx in range(8):
        rowdct = yc[:, dx:dx + nbx * 8].reshape(h, nbx, 8) @ basis.T  # (h, nbx, k)
        for dy in range(8):
            blk = rowdct[dy:dy + nby * 8].reshape(nby, 8, nbx, k)
            c = np.tensordot(blk, basis, axes=([1], [1]))  # (nby, nbx, u, v)
            coefs[dy, dx] = c.reshape(nby * nbx, k * k)
    n_bins = _GRID_FOLD * _GRID_BIN
    coefs *= _GRID_BIN
    idx = np.rint(coefs, out=coefs).astype(np.int32)
    idx %= n_bins  # (8, 8, N, K²), folded modulo the candidate steps' lcm
    idx += (np.arange(64 * k * k, dtype=np.int32) * n_bins).reshape(8, 8, 1, k * k)
    hist = np.bincount(idx.ravel(), minlength=64 * k * k * n_bins).reshape(64 * k * k, n_bins)
    hist = hist.astype(np.float32)
    char = (hist @ _GRID_COS) / (nby * nbx)  # (64·K², Q): E cos(2π c / q)
    per_coef = char.max(axis=1).reshape(8, 8, k * k)
    score = per_coef.mean(axis=2)
    best = np.unravel_index(int(np.argmax(score)), score.shape)
    return score, ((int(best[0]) + y0) % 8, (int(best[1]) + x0) % 8)


def jpeg_grid_strength(luma: np.ndarray, max_blocks: int = 4096) -> float:
    """Strength of a (hidden) JPEG 8×8 grid: the best alignment's quantisation-comb score minus
    the median over all 64 alignments (see :func:`jpeg_grid_alignment`). ≈0 (< ~0.02) for an
    image never JPEG-compressed; roughly 0.1 (quality 100) to 0.8 (low quality) for a decoded
    JPEG cropped at any offset, also after saving as PNG; destroyed by resizing."""
    score, _ = jpeg_grid_alignment(luma, max_blocks)
    if not np.all(np.isfinite(score)):
        return float("nan")
    return float(score.max() - np.median(score))


def blockiness(luma: np.ndarray) -> float:
    """8×8 blockiness at the best grid alignment, averaged over the two axes.

    Per axis: the high-passed boundary difference ``|d_j - (d_{j-1} + d_{j+1}) / 2|`` (``d`` =
    first difference; the neighbours remove smooth content), clipped against edges, averaged over
    the other axis and then over positions of the same phase modulo 8; strength =
    (best phase - phase 4 away) / median of the other phases.
    """
    y = np.asarray(luma, dtype=np.float32)
    if min(y.shape) < 24:
        return float("nan")
    out = []
    for axis in (1, 0):
        d = np.diff(y, axis=axis)
        if axis == 1:
            r = np.abs(d[:, 1:-1] - 0.5 * (d[:, :-2] + d[:, 2:]))
        else:
            r = np.abs(d[1:-1, :] - 0.5 * (d[:-2, :] + d[2:, :]))
        cap = 4.0 * float(r.mean()) + 1e-6
        np.minimum(r, cap, out=r)
        out.append(_grid_strength(_phase_profile(r, axis)))
    return float(np.mean(out))


def _periodicity(signal: np.ndarray) -> float:
    n = signal.size
    if n < 64:
        return float("nan")
    s = signal - signal.mean()
    spec = np.abs(np.fft.rfft(s * np.hanning(n)))
    f = np.fft.rfftfreq(n)
    valid = f >= 0.03  # periods up to ~33 px; lower frequencies are content
    med = float(np.median(spec[valid]))
    if med <= 1e-12:
        return 0.0
    ratio = spec / med
    tol = 1.5 / n

    def near(freqs: Iterable[float]) -> np.ndarray:
        m = np.zeros(n // 2 + 1, dtype=bool)
        for fr in freqs:
            m |= np.abs(f - fr) <= tol
        return m

    odd = near((1 / 8, 3 / 8))  # only a period-8 (JPEG) grid puts energy here
    even = near((2 / 8, 4 / 8))  # periods 4 and 2: JPEG harmonics, or ×4 / ×2 interpolation
    keep = valid & ~odd
    if odd.any() and float(ratio[odd & valid].max(initial=0.0)) > 6.0:
        keep &= ~even  # a JPEG comb is present: its harmonics are not resampling evidence
    return float(ratio[keep].max(initial=0.0))


def resampling_score(luma: np.ndarray) -> float:
    """Resampling periodicity: the |second derivative| is averaged over rows (columns), and the
    peak-to-median ratio of the spectrum of that 1-D profile is taken, excluding DC/low
    frequencies and the JPEG grid's comb; the mean over the two axes."""
    y = np.asarray(luma, dtype=np.float32)
    if min(y.shape) < 16:
        return float("nan")
    d2x = np.abs(y[:, :-2] - 2 * y[:, 1:-1] + y[:, 2:]).mean(axis=0)
    d2y = np.abs(y[:-2, :] - 2 * y[1:-1, :] + y[2:, :]).mean(axis=1)
    vals = [v for v in (_periodicity(d2x), _periodicity(d2y)) if math.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def noise_sigma(luma: np.ndarray) -> float:
    """Immerkær (1996) fast noise standard deviation, in grey levels: the 3×3 mask
    [[1,-2,1],[-2,4,-2],[1,-2,1]] (separable), sigma = sqrt(pi/2) / (6 (W-2)(H-2)) Σ|I * M|."""
    y = np.asarray(luma, dtype=np.float32)
    h, w = y.shape
    if h < 3 or w < 3:
        return float("nan")
    d = y[:, :-2] - 2 * y[:, 1:-1] + y[:, 2:]
    m = d[:-2] - 2 * d[1:-1] + d[2:]
    return float(math.sqrt(math.pi / 2) * np.abs(m, dtype=np.float64).sum() / (6.0 * (w - 2) * (h - 2)))


# ------------------------------------------------------------------------------ per-image pass

_MODE_BITS = {"1": 1, "I": 32, "F": 32, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "RGB;16": 16}


def _bit_depth(img: Image.Image, head: bytes) -> int:
    if img.format == "PNG" and head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) > 24:
        return int(head[24])
    if img.format == "TIFF":
        bps = getattr(img, "tag_v2", {}).get(258)
        if bps:
            return int(bps[0] if isinstance(bps, (tuple, list)) else bps)
    return _MODE_BITS.get(img.mode, 8)


def _has_exif(img: Image.Image) -> bool:
    if img.info.get("exif"):
        return True
    try:
        return len(img.getexif()) > 0
    except Exception:
        return False


def _centre_box(w: int, h: int, max_side: int | None) -> tuple[int, int, int, int]:
    if not max_side or (w <= max_side and h <= max_side):
        return (0, 0, w, h)
    cw, ch = min(w, max_side), min(h, max_side)
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    return (x0, y0, x0 + cw, y0 + ch)


def _luma(img: Image.Image) -> np.ndarray:
    """Decoded luma as float32 on a 0..255 scale (BT.601 weights, as JPEG's Y)."""
    mode = img.mode
    if mode == "YCbCr":
        return np.asarray(img, dtype=np.float32)[..., 0]
    if mode in ("L", "1"):
        return np.asarray(img.convert("L"), dtype=np.float32)
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float32) if mode != "I;16B" else np.asarray(img).astype(np.float32)
        peak = float(a.max()) if a.size else 0.0
        return a / 257.0 if peak > 255 or mode.startswith("I;16") else a
    if mode == "LA":
        return np.asarray(img.convert("L"), dtype=np.float32)
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def image_properties(path: str | Path, max_side: int | None = 1024,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """All audited properties of one image file (raises on an unreadable image)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(32)
    with open(path, "rb") as fp, identify(fp, str(path)) as img:  # read-only; our limit, not Pillow's global one
        w, h = img.size
        if w * h > max_pixels:
            raise ValueError(f"{w}×{h} exceeds the pixel limit of {max_pixels / 1e6:.0f} MP")
        fmt = img.format or "?"
        quality = None
        q = getattr(img, "quantization", None)
        if fmt in ("JPEG", "MPO") and q:
            quality = estimate_jpeg_quality(q[min(q)])
        row: dict[str, Any] = {
            "format": fmt,
            "mode": img.mode,
            "bit_depth": _bit_depth(img, head),
            "exif": _has_exif(img),
            "jpeg_quality": quality,
            "jpeg_quality_known": quality is not None,
            "width": w,
            "height": h,
            "megapixels": w * h / 1e6,
            "aspect": max(w, h) / max(1, min(w, h)),
            "bytes_per_pixel": size / max(1, w * h),
        }
        if fmt in ("JPEG", "MPO") and img.mode == "RGB":
            img.draft("YCbCr", img.size)  # the decoder's own Y plane, no colour round trip
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        box = _centre_box(w, h, max_side)
        region = img.crop(box) if box != (0, 0, w, h) else img
        region.load()
        y = _luma(region)
    score, (gy, gx) = jpeg_grid_alignment(y)
    row["jpeg_grid"] = float(score.max() - np.median(score)) if np.all(np.isfinite(score)) else float("nan")
    # grid phase in the file's own coordinates (row, column of a block's first pixel, mod 8)
    box_x, box_y = _centre_box(w, h, max_side)[:2]
    row["jpeg_grid_offset"] = f"{(gy + box_y) % 8},{(gx + box_x) % 8}"
    row["blockiness"] = blockiness(y)
    row["resampling"] = resampling_score(y)
    row["noise"] = noise_sigma(y)
    return row


# ------------------------------------------------------------------------------------ summary

@dataclass
class AuditReport:
    data: str
    class_names: tuple[str, ...]
    threshold: float
    min_per_class: int
    splits: list[str]  # the splits summarised, "all" last
    rows: list[dict[str, Any]]  # one per readable image
    errors: list[dict[str, str]]  # {"path", "key", "reason"}
    summary: list[dict[str, Any]]  # one per (property, split)
    flags: list[dict[str, Any]]
    max_side: int | None = 1024
    alpha: float = DEFAULT_ALPHA
    seconds: float = 0.0
    properties: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> list[str]:
        """Flagged properties (indicator names like ``format=PNG``), first-flagged order."""
        out: list[str] = []
        for f in self.flags:
            if f["property"] not in out:
                out.append(f["property"])
        return out

    @property
    def flagged_bases(self) -> list[str]:
        """Flagged base properties (``format`` for ``format=PNG``)."""
        out: list[str] = []
        for f in self.flags:
            if f["base"] not in out:
                out.append(f["base"])
        return out

    @property
    def verdict(self) -> str:
        return "clean" if not self.flags else "flagged: " + ", ".join(self.flagged)

    @property
    def warnings(self) -> list[str]:
        return [f["message"] for f in self.flags]

    def to_json(self) -> dict[str, Any]:
        return _jsonable({
            "data": self.data,
            "class_names": list(self.class_names),
            "threshold": self.threshold,
            "min_per_class": self.min_per_class,
            "alpha": self.alpha,
            "max_side": self.max_side,
            "seconds": round(self.seconds, 2),
            "n_images": len(self.rows),
            "n_errors": len(self.errors),
            "splits": self.splits,
            "properties": self.properties,
            "verdict": self.verdict,
            "flagged": self.flagged,
            "flags": self.flags,
            "summary": self.summary,
            "errors": self.errors,
            "rows": self.rows,
        })

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")

    def write_csv(self, path: str | Path) -> None:
        """Per-image table."""
        cols = ["key", "path", "label", "split", "generator", "group", "width", "height",
                *CATEGORICAL, *NUMERIC, "jpeg_grid_offset"]
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            for r in self.rows:
                w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _columns(rows: list[dict[str, Any]]) -> list[tuple[str, str, np.ndarray, bool]]:
    """(name, base, values as float with NaN for missing, is_indicator) per audited column."""
    cols = []
    for base in CATEGORICAL:
        vals = [r.get(base) for r in rows]
        cats = sorted({str(v) for v in vals}, key=str)
        boolean = set(cats) <= {"True", "False"}
        if boolean:
            levels = ["True"]  # one indicator, named after the property
        elif len(cats) == 2:
            levels = [cats[0]]  # the other value is its complement: same AUC
        else:
            levels = cats  # one value only: still reported (AUC 0.5), never flagged
        for lv in levels:
            name = base if boolean else f"{base}={lv}"
            cols.append((name, base, np.array([float(str(v) == lv) for v in vals]), True))
    for base in NUMERIC:
        v = np.array([np.nan if r.get(base) is None else float(r[base]) for r in rows], dtype=np.float64)
        cols.append((base, base, v, False))
    return cols


def _auc(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """(ROC AUC with y = 1 positive, two-sided Mann-Whitney p-value)."""
    from scipy.stats import mannwhitneyu
    from sklearn.metrics import roc_auc_score

    if np.all(s == s[0]):
        return 0.5, 1.0
    auc = float(roc_auc_score(y, s))
    try:
        p = float(mannwhitneyu(s[y == 1], s[y == 0], alternative="two-sided").pvalue)
    except ValueError:
        p = 1.0
    return auc, (p if math.isfinite(p) else 1.0)


def summarise(rows: list[dict[str, Any]], splits: Sequence[str], threshold: float = DEFAULT_THRESHOLD,
              min_per_class: int = DEFAULT_MIN_PER_CLASS, class_names: Sequence[str] = ("real", "fake"),
              alpha: float = DEFAULT_ALPHA):
    """Per (property, split): class means, AUC (fake = positive), separability, p-value, flag.

    Flagged: separability ≥ ``threshold``, ≥ ``min_per_class`` images of each class, and a
    two-sided Mann-Whitney p-value ≤ ``alpha`` (so that chance AUCs on small splits do not flag;
    ``alpha=1`` switches this off)."""
    summary, flags = [], []
    if not rows:
        return summary, flags, []
    labels = np.array([r["label_index"] for r in rows])
    split_of = np.array([r["split"] or "" for r in rows])
    real_name, fake_name = class_names[0], class_names[-1]
    cols = _columns(rows)
    for name, base, values, indicator in cols:
        for sp in splits:
            sel = np.ones(len(rows), bool) if sp == "all" else split_of == sp
            ok = sel & np.isfinite(values)
            y = (labels[ok] == len(class_names) - 1).astype(int)
            v = values[ok]
            n_fake, n_real = int(y.sum()), int((1 - y).sum())
            ent: dict[str, Any] = {
                "property": name, "base": base, "split": sp, "kind": "indicator" if indicator else "numeric",
                "n_real": n_real, "n_fake": n_fake,
                "mean_real": float(v[y == 0].mean()) if n_real else None,
                "mean_fake": float(v[y == 1].mean()) if n_fake else None,
                "auc": None, "separability": None, "p_value": None, "direction": None, "flagged": False,
            }
            if n_real and n_fake:
                auc, pval = _auc(y, v)
                sep = max(auc, 1 - auc)
                more = fake_name if auc > 0.5 else real_name
                if abs(auc - 0.5) < 1e-12:
                    direction = "no difference"
                elif indicator:
                    direction = f"more common in {more}"
                else:
                    direction = f"higher in {more}"
                ent.update(auc=auc, separability=sep, p_value=pval, direction=direction)
                if (sep >= threshold and n_real >= min_per_class and n_fake >= min_per_class
                        and pval <= alpha):
                    ent["flagged"] = True
                    flags.append({
                        "property": name, "base": base, "split": sp, "auc": auc, "separability": sep, "p_value": pval,
                        "direction": direction, "n_real": n_real, "n_fake": n_fake,
                        "message": (f"WARNING: {name} alone separates {real_name} from {fake_name} on split {sp} "
                                    f"(AUC {sep:.2f}, {direction})"),
                    })
            summary.append(ent)
    return summary, flags, [c[0] for c in cols]


# ---------------------------------------------------------------------------------- the audit

def _progress(it, total: int, enabled: bool):
    if not enabled:
        return it
    try:
        from tqdm import tqdm

        return tqdm(it, total=total, desc="audit", unit="img", file=sys.stderr)
    except Exception:  # pragma: no cover
        return it


def audit(
    data: str | Path,
    *,
    split: str | None = None,
    max_side: int | None = 1024,
    threshold: float = DEFAULT_THRESHOLD,
    min_per_class: int = DEFAULT_MIN_PER_CLASS,
    alpha: float = DEFAULT_ALPHA,
    class_names: Sequence[str] = ("real", "fake"),
    workers: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> AuditReport:
    """Audit ``data`` (anything :func:`glassdetect.data.load_samples` accepts) for single-property
    shortcuts between real and fake.

    ``split``: None or "all" for every image (each split is also summarised on its own), or one
    of train/val/test. ``max_side``: measure pixel properties on a centre region of at most this
    many pixels per side (None: whole image). ``workers``: decoding threads (0 = min(4, CPUs)).
    """
    import time

    from .data import SPLITS, load_samples

    t0 = time.perf_counter()
    samples = load_samples(data, class_names)
    if split not in (None, "", "all"):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} (use {', '.join(SPLITS)} or all)")
        samples = [s for s in samples if s.split == split]
        if not samples:
            raise ValueError(f"{data}: no images in split {split!r}")

    def one(s):
        try:
            return s, image_properties(s.path, max_side=max_side, max_pixels=max_pixels), None
        except Exception as exc:  # never crash on one bad file
            reason = f"{type(exc).__name__}: {exc}".strip()
            return s, None, reason

    n_workers = workers if workers and workers > 0 else min(4, os.cpu_count() or 1)
    results = []
    if n_workers == 1 or len(samples) <= 1:
        for res in _progress(map(one, samples), len(samples), progress):
            results.append(res)
    else:
        with ThreadPoolExecutor(n_workers) as pool:
            for res in _progress(pool.map(one, samples), len(samples), progress):
                results.append(res)

    rows, errors = [], []
    for s, props, reason in results:
        if props is None:
            errors.append({"path": s.path, "key": s.key, "reason": reason or "unreadable"})
            continue
        rows.append({"key": s.key, "path": s.path, "label": class_names[s.label], "label_index": s.label,
                     "split": s.split, "generator": s.generator, "group": s.group, **props})
    present = [sp for sp in SPLITS if any(r["split"] == sp for r in rows)]
    splits = [*present, "all"]
    summary, flags, props = summarise(rows, splits, threshold, min_per_class, class_names, alpha)
    return AuditReport(
        data=str(data), class_names=tuple(class_names), threshold=threshold, min_per_class=min_per_class, alpha=alpha,
        splits=splits, rows=rows, errors=errors, summary=summary, flags=flags, max_side=max_side,
        seconds=time.perf_counter() - t0, properties=props,
    )


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "–"
        return f"{x:.{nd}g}" if abs(x) >= 1000 else f"{x:.{nd}f}"
    return str(x)


def format_report(report: AuditReport) -> str:
    """Markdown: verdict, warnings, then a property × split table (class means, AUC, flag)."""
    real, fake = report.class_names[0], report.class_names[-1]
    n_real = sum(r["label_index"] == 0 for r in report.rows)
    n_fake = len(report.rows) - n_real
    lines = [
        f"# Shortcut audit: {report.data}",
        "",
        f"{len(report.rows)} images ({n_real} {real}, {n_fake} {fake}), {len(report.errors)} unreadable; "
        f"splits: {', '.join(report.splits)}; flag at separability ≥ {report.threshold:.2f} "
        f"(max(AUC, 1 − AUC), {fake} = positive) with ≥ {report.min_per_class} images per class "
        f"and Mann–Whitney p ≤ {report.alpha:g}; "
        f"pixel properties on a centre region ≤ {report.max_side or 'full'} px; {report.seconds:.1f} s.",
        "",
        f"**Verdict: {report.verdict}**",
        "",
    ]
    if report.flags:
        lines += [f"- {w}" for w in report.warnings] + [""]
    lines += [
        f"| property | split | n {real} / {fake} | {real} mean | {fake} mean | AUC | p | direction | flag |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in report.summary:
        auc = "–" if e["separability"] is None else f"{e['separability']:.2f}"
        pv = "–" if e["p_value"] is None else f"{e['p_value']:.2g}"
        lines.append(
            f"| {e['property']} | {e['split']} | {e['n_real']} / {e['n_fake']} | {_fmt(e['mean_real'])} | "
            f"{_fmt(e['mean_fake'])} | {auc} | {pv} | "
            f"{e['direction'] or '–'} | {'**FLAG**' if e['flagged'] else ''} |"
        )
    lines += ["", "Properties: " + "; ".join(f"`{k}` {v}" for k, v in PROPERTY_HELP.items()) + "."]
    if report.errors:
        lines += ["", "Unreadable images (skipped):", ""]
        lines += [f"- `{e['key']}`: {e['reason']}" for e in report.errors]
    return "\n".join(lines) + "\n"
