"""Synthetic photos: generated here, so the benchmark needs no data and no network."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


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


def write_folder(folder: Path, n_images: int, size: tuple[int, int], seed: int = 7) -> list[Path]:
    """``n_images`` JPEGs of ``size`` (width, height) with distinct content (so distinct crops), made
    cheaply by rolling and mirroring one generated photo."""
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    base = photo_like(h, w, seed=seed)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n_images):
        px = np.roll(base, (int(rng.integers(0, h)), int(rng.integers(0, w))), axis=(0, 1))
        paths.append(write_image(folder / f"img{i:03d}.jpg", px[:, ::-1] if i % 2 else px))
    return paths
