"""Pixel operations behind :mod:`glassdetect.views.degrade`: re-compression, blur, resizing, noise and a
social-media upload, each a pure function ``uint8 (H, W, 3) array in -> uint8 array out`` that
draws its randomness from the generator it is given and never modifies its input. Nothing here
touches files: compression round-trips through memory."""
from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .pilguard import identify
from .sampling import aligned_offset

try:  # libjpeg-turbo straight to numpy (same pixels as Pillow's decoder, faster); optional
    import simplejpeg
except ImportError:  # pragma: no cover
    simplejpeg = None

_SUBSAMPLING = {"444": 0, "422": 1, "420": 2}  # Pillow's ``subsampling`` codes
_RESIZE_KERNELS = ("bicubic", "bilinear", "area", "lanczos")
_TORCH_AA = {"bicubic", "bilinear"}
_PIL_KERNELS = {"area": Image.Resampling.BOX, "lanczos": Image.Resampling.LANCZOS}


def _check_image(img: np.ndarray) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        desc = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"a degradation takes a uint8 (H, W, 3) array, got {desc}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"empty image {img.shape}")
    return img


def _decode_bytes(data: bytes, fmt: str) -> np.ndarray:
    if fmt == "JPEG" and simplejpeg is not None:
        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        except (ValueError, OSError, RuntimeError):  # pragma: no cover - Pillow decides
            pass
    with identify(io.BytesIO(data)) as im:  # not Image.open: Pillow's global guard is the host's setting
        return np.array(im.convert("RGB"))


def encode_jpeg(img: np.ndarray, q: int, sub: str = "420") -> bytes:
    """``img`` as a baseline JPEG (Pillow/libjpeg, standard tables scaled to quality ``q``)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img), "RGB").save(buf, "JPEG", quality=int(q),
                                                           subsampling=_SUBSAMPLING[sub])
    return buf.getvalue()


def _jpeg(img: np.ndarray, prm: dict, rng: np.random.Generator) -> np.ndarray:
    return _decode_bytes(encode_jpeg(img, int(prm["q"]), str(prm.get("sub", "420"))), "JPEG")


WEBP_MAX_SIDE = 16383  # the format's limit


def _webp(img: np.ndarray, prm: dict, rng: np.random.Generator) -> np.ndarray:
    if max(img.shape[:2]) > WEBP_MAX_SIDE:
        raise ValueError(f"webp: {img.shape[1]}×{img.shape[0]} exceeds the format's {WEBP_MAX_SIDE}-px side limit")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img), "RGB").save(buf, "WEBP", quality=int(prm["q"]), lossless=False)
    return _decode_bytes(buf.getvalue(), "WEBP")


def gaussian_kernel(sigma: float) -> np.ndarray:
    """The normalised 1-D Gaussian, radius ``max(1, floor(3σ + 0.5))``, float32."""
    r = max(1, int(3.0 * sigma + 0.5))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(img: np.ndarray, sigma: float, rows: int = 32) -> np.ndarray:
    """Separable Gaussian blur of a uint8 (H, W, C) array, mirrored borders, rounded to uint8.

    Works on bands of ``rows`` output rows so the float32 intermediates stay in cache
    (about 0.7 s for σ = 3 on 12 MP on one slow core; exact to scipy's ``gaussian_filter(truncate=3)``).
    """
    if sigma <= 0:
        return img
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    h, w = img.shape[:2]
    pad = np.pad(img, ((r, r), (r, r), (0, 0)), mode="symmetric")  # d c b a | a b c d (scipy "reflect")
    out = np.empty(img.shape, np.uint8)
    for y0 in range(0, h, rows):
        n = min(h, y0 + rows) - y0
        band = pad[y0 : y0 + n + 2 * r].astype(np.float32)  # (n + 2r, W + 2r, C)
        v = band[r : r + n] * k[r]
        tmp = np.empty_like(v)
        for i in range(r):  # symmetric kernel: one multiply per pair of taps
            np.add(band[i : i + n], band[2 * r - i : 2 * r - i + n], out=tmp)
            tmp *= k[i]
            v += tmp
        hz = v[:, r : r + w] * k[r]
        tmp = np.empty_like(hz)
        for i in range(r):
            np.add(v[:, i : i + w], v[:, 2 * r - i : 2 * r - i + w], out=tmp)
            tmp *= k[i]
            hz += tmp
        np.rint(hz, out=hz)
        np.clip(hz, 0, 255, out=hz)
        out[y0 : y0 + n] = hz
    return out


def _blur(img: np.ndarray, prm: dict, rng: np.random.Generator) -> np.ndarray:
    return gaussian_blur(img, float(prm["sigma"]))


def resize_to(img: np.ndarray, h: int, w: int, kernel: str = "bicubic") -> np.ndarray:
    """``img`` resized to ``h × w`` (antialiased when shrinking); uint8 in, uint8 out."""
    if (h, w) == img.shape[:2]:
        return img
    if kernel in _TORCH_AA:
        src = img if img.flags.c_contiguous else np.ascontiguousarray(img)
        if not src.flags.writeable:
            src = src.copy()
        x = torch.from_numpy(src).permute(2, 0, 1).unsqueeze(0)  # channels_last view, no copy
        with torch.inference_mode():
            out = F.interpolate(x, size=(h, w), mode=kernel, antialias=True, align_corners=False)
        return np.ascontiguousarray(out[0].permute(1, 2, 0).numpy())
    pil = Image.fromarray(np.ascontiguousarray(img), "RGB")
    return np.asarray(pil.resize((w, h), _PIL_KERNELS[kernel])).copy()


def _scaled(side: int, f: float) -> int:
    return max(1, int(math.floor(side * f + 0.5)))


def long_side_size(h: int, w: int, long: int) -> tuple[int, int]:
    """(H', W') with the long side ``long`` (when larger; otherwise unchanged)."""
    m = max(h, w)
    if m <= long:
        return h, w
    return (long, _scaled(w, long / h)) if h >= w else (_scaled(h, long / w), long)


def _resize(img: np.ndarray, prm: dict, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    kernel = str(prm.get("kernel", "bicubic"))
    if "long" in prm:
        nh, nw = long_side_size(h, w, int(prm["long"]))
    else:
        f = float(prm["f"])
        nh, nw = _scaled(h, f), _scaled(w, f)
    return resize_to(img, nh, nw, kernel)


def _noise(img: np.ndarray, prm: dict, rng: np.random.Generator) -> np.ndarray:
    sigma = float(prm["sigma"])
    if sigma <= 0:
        return img
    x = rng.standard_normal(img.shape, dtype=np.float32)
    x *= sigma
    x += img
    np.rint(x, out=x)
    np.clip(x, 0, 255, out=x)
    return x.astype(np.uint8)


def _window(img: np.ndarray, prm: dict, rng: np.random.Generator) -> np.ndarray:
    """A random square window of side ``side`` (clamped to each image side), uniform position; its
    top and left multiples of ``align`` (an upscaler's pattern keeps its phase in the window)."""
    h, w = img.shape[:2]
    side, align = int(prm["side"]), int(prm.get("align", 1))
    wh, ww = min(side, h), min(side, w)
    top, left = aligned_offset(rng, 0, h - wh, align), aligned_offset(rng, 0, w - ww, align)
    return img[top : top + wh, left : left + ww]


SOCIAL_MAX_SIDE = 2048


def _social(img: np.ndarray, prm: dict, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    if max(h, w) > SOCIAL_MAX_SIDE:
        img = resize_to(img, *long_side_size(h, w, SOCIAL_MAX_SIDE))
    elif rng.random() < 0.5:
        f = float(rng.uniform(0.5, 1.0))
        img = resize_to(img, _scaled(h, f), _scaled(w, f))
    q = int(rng.integers(70, 91))
    return _decode_bytes(encode_jpeg(img, q, "420"), "JPEG")
