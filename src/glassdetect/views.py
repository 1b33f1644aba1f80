"""From a file to the model's views: decode once to uint8, cut crops, resize the global view.

Everything here stays uint8 (``HWC`` after decode, ``CHW`` for views); conversion to float and
normalisation happen inside the model (see :class:`glassdetect.models.common.Preprocess`), on
whatever device it runs. The user's file is only ever opened for reading.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .sampling import Box, eval_rng, sample_boxes

# We enforce our own, configurable pixel limit in :func:`decode` (with a clear message); Pillow's
# global guard would otherwise fire first with a warning or a different limit.
Image.MAX_IMAGE_PIXELS = None

DEFAULT_MAX_PIXELS = 200_000_000
_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


class ImageError(ValueError):
    """An image that cannot be used: names the file and the problem."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class ViewSpec:
    """How views are built; part of every model config so it travels with the checkpoint."""

    k: int = 4
    patch: int = 224
    global_size: int = 224
    max_grid: int = 8
    mode: str = "stratified"
    interpolation: str = "bicubic"
    need_crops: bool = True  # False for the resize-only baseline
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass
class Views:
    global_view: np.ndarray  # (3, S, S) uint8
    crops: np.ndarray  # (K, 3, P, P) uint8; K = 0 for the baseline
    boxes: list[Box]  # (top, left) of each crop in the (EXIF-oriented) image
    size: tuple[int, int]  # (H, W) of the decoded image


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB, in memory. High-bit-depth images are scaled, not clipped."""
    if img.mode == "RGB":
        return img
    if img.mode in {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}:
        arr = np.asarray(img).astype(np.float64)
        if img.mode == "F":
            top = 1.0 if arr.size and arr.max() <= 1.0 else 255.0
        else:
            top = 65535.0 if img.mode.startswith("I;16") or (arr.size and arr.max() > 255) else 255.0
        gray = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=2), "RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    # RGBA/LA/PA: alpha is dropped (the stored colour is what the generator produced);
    # CMYK, YCbCr, L, 1, P: Pillow's own conversion.
    return img.convert("RGB")


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes (opened read-only), or :class:`ImageError`."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageError(path, "is a directory") from None
    except OSError as exc:
        raise ImageError(path, f"cannot read: {exc.strerror or exc}") from None


def content_id(data: bytes) -> str:
    """Identity of an image for deterministic crops: a digest of its bytes, not of its name."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def open_image(
    source: str | Path | bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    name: str | None = None,
) -> Image.Image:
    """Decode a file (or its bytes) to an EXIF-oriented RGB Pillow image, or raise :class:`ImageError`.

    ``draft_size``: for JPEGs, let libjpeg decode at a reduced DCT scale that keeps both sides
    at least this large (used when only the global view is needed).
    """
    path = name or ("<bytes>" if isinstance(source, bytes) else str(source))
    fp = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
    try:
        with Image.open(fp) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(path, f"{w}×{h} = {w * h / 1e6:.1f} MP exceeds the pixel limit of {max_pixels / 1e6:.0f} MP")
            if draft_size is not None and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageError(path, "is a directory") from None
    except Image.UnidentifiedImageError:
        raise ImageError(path, "not a recognised image format (empty, corrupt or not an image)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(path, f"cannot decode: {exc}") from None


def resize_global(img: Image.Image, size: int = 224, interpolation: str = "bicubic") -> np.ndarray:
    """The whole image, antialiased-resized to ``size × size`` (aspect not kept), as CHW uint8."""
    out = img.resize((size, size), _RESAMPLE[interpolation])
    return np.ascontiguousarray(np.asarray(out).transpose(2, 0, 1))


def cut_crops(pixels: np.ndarray, boxes: list[Box], patch: int = 224) -> np.ndarray:
    """Cut ``patch × patch`` crops from an HWC uint8 array; zero-pad where a box leaves the image."""
    h, w = pixels.shape[:2]
    out = np.zeros((len(boxes), 3, patch, patch), dtype=np.uint8)
    for i, (top, left) in enumerate(boxes):
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + patch, h), min(left + patch, w)
        if y1 > y0 and x1 > x0:
            out[i, :, y0 - top : y1 - top, x0 - left : x1 - left] = pixels[y0:y1, x0:x1].transpose(2, 0, 1)
    return out


def build_views(
    source: str | Path | bytes,
    spec: ViewSpec,
    rng: np.random.Generator | None = None,
    seed: int = 0,
    draw: int = 0,
    name: str | None = None,
) -> Views:
    """Decode once and build the global view plus the crops ``spec`` asks for.

    Without ``rng`` the crops are a function of the image's content, ``seed`` and ``draw``:
    the same image always gets the same crops, whatever its file name.
    """
    data = source if isinstance(source, bytes) else read_bytes(source)
    name = name or ("<bytes>" if isinstance(source, bytes) else str(source))
    if rng is None:
        rng = eval_rng(content_id(data), seed, draw)
    draft = None if spec.need_crops else 2 * spec.global_size
    img = open_image(data, spec.max_pixels, draft_size=draft, name=name)
    g = resize_global(img, spec.global_size, spec.interpolation)
    w, h = img.size
    if not spec.need_crops:
        return Views(g, np.zeros((0, 3, spec.patch, spec.patch), np.uint8), [], (h, w))
    boxes = sample_boxes(h, w, spec.k, rng, spec.mode, spec.patch, spec.max_grid)
    crops = cut_crops(np.asarray(img), boxes, spec.patch)
    return Views(g, crops, boxes, (h, w))
