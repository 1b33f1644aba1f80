"""Offline benchmark version 3, the pixel histories: how a source photo is pre-scaled before a
region is cut (:class:`PreScale`), and the post-processing both members of a pair get after the
fake is made (:class:`Post`: sensor-like noise, a JPEG re-save). Pure functions on PIL images and
uint8 arrays; no torch, so the builder's worker processes stay light."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

_RESAMPLERS = {"area": Image.Resampling.BOX, "lanczos": Image.Resampling.LANCZOS,
               "bicubic": Image.Resampling.BICUBIC}


@dataclass(frozen=True)
class PreScale:
    """One pre-scale recipe: the whole photo is downscaled by ``factor`` with ``resampler``
    (``area`` / ``lanczos`` / ``bicubic``; Pillow's filters, antialiased) before regions are cut.

    ``factor`` 1 keeps the photo's own pixels (and its camera-JPEG grid); ``match_jpeg`` then
    re-encodes the fake with the photo's own JPEG tables on the real's block grid (v2's ``native``).
    A downscale by 1.5 or more blurs the 8x8 grid away for both members.
    """

    name: str
    factor: float = 1.0
    resampler: str = "area"
    match_jpeg: bool = False

    def __post_init__(self) -> None:
        if self.factor < 1.0:
            raise ValueError(f"history {self.name!r}: factor {self.factor} < 1 (pre-scale only downscales)")
        if self.resampler not in _RESAMPLERS:
            raise ValueError(f"history {self.name!r}: resampler {self.resampler!r} not in {sorted(_RESAMPLERS)}")
        if self.match_jpeg and self.factor != 1.0:
            raise ValueError(f"history {self.name!r}: match_jpeg needs factor 1 (the photo's own grid)")

    def size(self, width: int, height: int) -> tuple[int, int]:
        """The pre-scaled photo's size (an integer area factor drops the edge that fills no box)."""
        if self.factor == 1.0:
            return width, height
        if self.resampler == "area" and float(self.factor).is_integer():
            return width // int(self.factor), height // int(self.factor)
        return max(1, int(width / self.factor + 0.5)), max(1, int(height / self.factor + 0.5))

    def apply(self, img: Image.Image) -> Image.Image:
        """The whole photo pre-scaled (``img`` itself for factor 1)."""
        if self.factor == 1.0:
            return img
        w, h = self.size(*img.size)
        if self.resampler == "area" and float(self.factor).is_integer():
            f = int(self.factor)
            return img.crop((0, 0, w * f, h * f)).reduce(f)
        return img.resize((w, h), _RESAMPLERS[self.resampler])


@dataclass(frozen=True)
class PostConfig:
    """How each pair's post-processing is drawn: with probability ``p_noise`` sensor-like noise of
    level σ ~ U(``sigma``) grey levels, a share ``shot`` ~ U(0, ``max_shot``) of it signal-dependent
    (Poisson-like: its variance grows with brightness); then with probability ``p_jpeg`` a JPEG
    re-save at quality q ~ U{``quality``} (4:2:0)."""

    # measured on the pilot's train pairs (docs/benchmark-v3.md): p 0.6, σ 0.3-2.5 left the audit's
    # noise AUC at 0.675; p 0.9, σ 1-5 brings it to 0.62 (no post-processing: 0.77)
    p_noise: float = 0.9
    sigma: tuple[float, float] = (1.0, 5.0)
    max_shot: float = 0.7
    p_jpeg: float = 0.35
    quality: tuple[int, int] = (70, 97)


@dataclass(frozen=True)
class Post:
    """One pair's post-processing, applied to both members (independent noise, same level)."""

    sigma: float = 0.0
    shot: float = 0.0
    quality: int = 0  # 0: no JPEG re-save

    @property
    def name(self) -> str:
        """In the degradation grammar's words (``none`` when nothing is applied)."""
        parts = []
        if self.sigma > 0:
            parts.append(f"noise:sigma={self.sigma:.2f},shot={self.shot:.2f}")
        if self.quality:
            parts.append(f"jpeg:q={self.quality}")
        return "+".join(parts) or "none"


def draw_post(cfg: PostConfig, rng: np.random.Generator) -> Post:
    """One pair's :class:`Post`, drawn from ``cfg`` (always the same number of draws)."""
    u_noise, sigma, shot, u_jpeg = rng.random(), rng.uniform(*cfg.sigma), rng.uniform(0, cfg.max_shot), rng.random()
    q = int(rng.integers(cfg.quality[0], cfg.quality[1] + 1))
    noisy = u_noise < cfg.p_noise
    return Post(round(float(sigma), 2) if noisy else 0.0, round(float(shot), 2) if noisy else 0.0,
                q if u_jpeg < cfg.p_jpeg else 0)


def sensor_noise(img: np.ndarray, sigma: float, shot: float, rng: np.random.Generator) -> np.ndarray:
    """``img`` (uint8 HxWx3) plus noise of overall level ``sigma`` grey levels at mid-grey: a
    constant (read) part and a share ``shot`` whose variance is proportional to the pixel value.
    A grey image (R=G=B) gets the same noise in every channel, so it stays grey."""
    if sigma <= 0:
        return img
    x = img.astype(np.float32)
    scale = np.sqrt((1.0 - shot) + shot * x / 128.0) * sigma
    grey = bool((img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all())
    n = rng.standard_normal(img.shape[:2] + ((1,) if grey else (3,)), dtype=np.float32)
    x += n * scale
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def jpeg_resave(img: np.ndarray, quality: int) -> np.ndarray:
    """``img`` encoded once as JPEG at ``quality`` (4:2:0) and decoded again, in memory."""
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=int(quality), subsampling=2)
    with Image.open(buf) as dec:
        return np.asarray(dec.convert("RGB")).copy()


def apply_post(img: Image.Image, post: Post, rng: np.random.Generator) -> Image.Image:
    """One member of a pair after its post-processing (noise first, then the JPEG re-save)."""
    if post.sigma <= 0 and not post.quality:
        return img
    arr = sensor_noise(np.asarray(img.convert("RGB")), post.sigma, post.shot, rng)
    if post.quality:
        arr = jpeg_resave(arr, post.quality)
    return Image.fromarray(arr, "RGB")
