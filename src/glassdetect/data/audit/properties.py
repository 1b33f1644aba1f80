"""Per-image measurements of the shortcut audit: file-level properties (format, JPEG quality
estimated from the luma quantisation table, size, mode, bit depth, EXIF) and pixel-history
estimators on the decoded luma (hidden JPEG grid, blockiness, resampling, noise), combined by
:func:`image_properties`."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from ...views.limits import DEFAULT_MAX_PIXELS
from ...views.pilguard import identify

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

