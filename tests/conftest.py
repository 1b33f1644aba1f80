"""Shared test helpers and fixtures.

Helpers
-------
``make_image(path, h, w, mode="RGB", seed=0, quality=95, exif=None)``
    Write a synthetic, photo-like image (smooth colour gradients + a little noise) of ``h × w``
    pixels; the format follows the suffix (``.jpg``/``.jpeg``, ``.png``, ``.webp``, ...).
    Returns the ``uint8`` (or ``uint16`` for ``mode="I;16"``) array that was encoded (before any
    lossy compression).
``photo_array(h, w, seed=0, channels=3)``
    The pixels ``make_image`` uses, without writing a file.
``sha256(path)``
    Hex digest of a file's bytes.

Fixtures
--------
``tiny_tree``
    A fresh copy (under ``tmp_path``) of an ImageFolder tree::

        ROOT/real/<stem>.{png,jpg}            12 images, stems img00..img11
        ROOT/fake/gen_a/<stem>.{png,jpg}      6 images, stems img00..img05
        ROOT/fake/gen_b/<stem>.{png,jpg}      6 images, stems img06..img11

    Sizes 300–700 px on either side, alternating PNG and JPEG. Every real image has a fake
    partner with the same stem (the same source group). Returns the root ``Path``.
``bad_images_dir``
    A fresh folder of good and awkward/broken files, returned as ``BadImages(dir, expected)``
    (unpacks as ``dir, expected = bad_images_dir``); ``expected`` maps file name ->
    ``Expect(ok, size, reason)``: ``ok`` is whether it decodes (with the default pixel limit),
    ``size`` the decoded ``(H, W)`` when ok, ``reason`` a lower-case substring of the
    ``ImageError`` reason when not ok.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from PIL import Image

TREE_N = 12  # images per class in tiny_tree


def photo_array(h: int, w: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """Smooth random colour gradients plus mild noise, as ``(h, w, channels)`` uint8."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    out = np.empty((h, w, channels), dtype=np.uint8)
    for c in range(channels):
        a, b, p, q = rng.uniform(-1, 1, 4)
        fy, fx = rng.uniform(0.5, 3.0, 2)
        # Separable terms: cheap even for multi-megapixel images.
        base = (128 + 60 * a * y + 40 * np.sin(2 * np.pi * (fy * y + p))).astype(np.float32)
        base = base + (60 * b * x).astype(np.float32) * np.cos(2 * np.pi * (fx * x + q)).astype(np.float32)
        noise = rng.standard_normal((h, w), dtype=np.float32) * 6
        np.clip(np.rint(base + noise), 0, 255, out=base)
        out[..., c] = base
    return out


def make_image(
    path: str | Path,
    h: int,
    w: int,
    mode: str = "RGB",
    seed: int = 0,
    quality: int = 95,
    exif: Image.Exif | None = None,
) -> np.ndarray:
    """Write a photo-like ``h × w`` image in Pillow ``mode`` to ``path``; return the array encoded.

    Modes: ``RGB``, ``L``, ``RGBA``, ``LA``, ``CMYK``, ``P`` (adaptive palette), ``PA`` (palette
    with a transparent index, saved as PNG ``P`` + ``transparency``) and ``I;16`` (a 16-bit
    gradient over the full 0..65535 range plus noise).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = photo_array(h, w, seed)
    kwargs: dict = {}
    if path.suffix.lower() in {".jpg", ".jpeg", ".webp"}:
        kwargs["quality"] = quality
    if exif is not None:
        kwargs["exif"] = exif
    if mode == "RGB":
        arr, img = rgb, Image.fromarray(rgb, "RGB")
    elif mode == "L":
        arr = rgb[..., 0]
        img = Image.fromarray(arr, "L")
    elif mode in {"RGBA", "LA"}:
        alpha = np.linspace(0, 255, w, dtype=np.float64)[None, :].repeat(h, 0).round().astype(np.uint8)
        colour = rgb if mode == "RGBA" else rgb[..., :1]
        arr = np.concatenate([colour, alpha[..., None]], axis=2)
        img = Image.fromarray(arr, mode)
    elif mode == "CMYK":
        img = Image.fromarray(rgb, "RGB").convert("CMYK")
        arr = np.asarray(img)
    elif mode in {"P", "PA"}:
        img = Image.fromarray(rgb, "RGB").quantize(colors=64)
        if mode == "PA":
            kwargs["transparency"] = 0
        arr = np.asarray(img)
    elif mode == "I;16":
        rng = np.random.default_rng(seed)
        ramp = np.linspace(0, 65535, h * w).reshape(h, w) + rng.normal(0, 50, (h, w))
        arr = np.clip(np.rint(ramp), 0, 65535).astype(np.uint16)
        img = Image.fromarray(arr)  # uint16 -> mode "I;16"
    else:
        raise ValueError(f"make_image: unsupported mode {mode!r}")
    img.save(path, **kwargs)
    return arr


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------ tiny_tree

def _tree_size(i: int) -> tuple[int, int]:
    rng = np.random.default_rng(1000 + i)
    return int(rng.integers(300, 701)), int(rng.integers(300, 701))


@pytest.fixture(scope="session")
def _tiny_tree_template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_tree_template") / "data"
    for i in range(TREE_N):
        stem = f"img{i:02d}"
        h, w = _tree_size(i)
        ext = ".png" if i % 2 == 0 else ".jpg"
        make_image(root / "real" / f"{stem}{ext}", h, w, seed=i)
        gen = "gen_a" if i < TREE_N // 2 else "gen_b"
        fext = ".jpg" if i % 2 == 0 else ".png"
        make_image(root / "fake" / gen / f"{stem}{fext}", h, w, seed=500 + i)
    return root


@pytest.fixture
def tiny_tree(_tiny_tree_template, tmp_path) -> Path:
    """A fresh real/fake ImageFolder tree (see the module docstring); returns its root."""
    dst = tmp_path / "tiny_tree"
    shutil.copytree(_tiny_tree_template, dst)
    return dst


def make_checkpoint(directory: Path, seed: int = 0, **cfg) -> Path:
    """Save a randomly initialised model (GLASS on ``test_resnet`` unless ``cfg`` says otherwise)
    as a checkpoint directory, for tests of the inference product."""
    import torch

    from glassdetect.models import ModelConfig, create_model, save_checkpoint

    torch.manual_seed(seed)
    save_checkpoint(directory, create_model(ModelConfig(**{"arch": "glass", "backbone": "test_resnet", **cfg})))
    return directory


# ------------------------------------------------------------------------------ bad_images_dir

class Expect(NamedTuple):
    ok: bool
    size: tuple[int, int] | None = None  # decoded (H, W) when ok
    reason: str | None = None  # lower-case substring of ImageError.reason when not ok


class BadImages(NamedTuple):
    dir: Path
    expected: dict[str, Expect]


def _write_bad_images(d: Path) -> dict[str, Expect]:
    d.mkdir(parents=True, exist_ok=True)
    exp: dict[str, Expect] = {}

    make_image(d / "good.jpg", 320, 400, seed=1)
    exp["good.jpg"] = Expect(True, (320, 400))
    make_image(d / "good.png", 260, 240, seed=2)
    exp["good.png"] = Expect(True, (260, 240))

    # Truncated JPEG: the first 40% of a valid file.
    make_image(d / "_full.jpg", 400, 500, seed=3)
    data = (d / "_full.jpg").read_bytes()
    (d / "_full.jpg").unlink()
    (d / "truncated.jpg").write_bytes(data[: int(len(data) * 0.4)])
    exp["truncated.jpg"] = Expect(False, reason="truncated")

    (d / "empty.jpg").write_bytes(b"")
    exp["empty.jpg"] = Expect(False, reason="not a recognised image")
    (d / "text.jpg").write_text("this is not an image, just some text\n" * 20)
    exp["text.jpg"] = Expect(False, reason="not a recognised image")

    make_image(d / "cmyk.jpg", 240, 300, mode="CMYK", seed=4)
    exp["cmyk.jpg"] = Expect(True, (240, 300))
    make_image(d / "gray16.png", 256, 300, mode="I;16", seed=5)
    exp["gray16.png"] = Expect(True, (256, 300))
    make_image(d / "palette_alpha.png", 230, 250, mode="PA", seed=6)
    exp["palette_alpha.png"] = Expect(True, (230, 250))
    make_image(d / "la.png", 200, 260, mode="LA", seed=7)
    exp["la.png"] = Expect(True, (200, 260))
    make_image(d / "rgba.png", 250, 230, mode="RGBA", seed=8)
    exp["rgba.png"] = Expect(True, (250, 230))
    make_image(d / "gray.jpg", 300, 300, mode="L", seed=9)
    exp["gray.jpg"] = Expect(True, (300, 300))
    make_image(d / "one_pixel.png", 1, 1, seed=10)
    exp["one_pixel.png"] = Expect(True, (1, 1))

    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    make_image(d / "exif_rot6.jpg", 240, 360, seed=11, exif=exif)
    exp["exif_rot6.jpg"] = Expect(True, (360, 240))
    return exp


@pytest.fixture
def bad_images_dir(tmp_path) -> BadImages:
    """A folder mixing good and bad files; see the module docstring for ``expected``."""
    d = tmp_path / "bad_images"
    return BadImages(d, _write_bad_images(d))
