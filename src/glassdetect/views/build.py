"""From a file to the model's views: decode once to uint8, cut crops, resize the global view.

Everything here stays uint8 (``HWC`` after decode, ``CHW`` for views); conversion to float and
normalisation happen inside the model (see :class:`glassdetect.models.common.Preprocess`), on
whatever device it runs. The user's file is only ever opened for reading.

Fast path (:func:`decode`, used by :func:`build_views`)
-------------------------------------------------------
Pillow reads the header (size for the pixel limit, mode, EXIF orientation); a baseline RGB or
greyscale JPEG is then decoded by simplejpeg (libjpeg-turbo, like Pillow's own decoder, same
ISLOW IDCT and fancy upsampling, so the pixels are identical) straight into a numpy array —
for :func:`build_views` a per-thread buffer reused from image to image — without Pillow's
4-byte-per-pixel image and its ``tobytes`` copy. EXIF orientation becomes a zero-copy numpy
view; crops are sliced from it. Everything else (CMYK JPEGs, PNG, WebP, 16-bit, palette, a
JPEG simplejpeg refuses) takes the Pillow path of :func:`open_image`, so conversions and
:class:`ImageError` reasons are unchanged. ``GLASSDETECT_DECODER=pillow`` (or
:data:`FAST_DECODE` = False) switches the fast path off.

The global view, on every path, is torch's uint8 antialiased bicubic/bilinear kernel (Pillow's
filter, within 1–2 grey levels of ``Image.resize``; other filters use Pillow itself); the
decoded image is never converted to float. The baseline (no crops) and GLASS get their global
view from the same full decode and resize, byte for byte: no reduced-scale (draft) JPEG decode,
whose view would differ slightly from GLASS's for JPEGs only and so line up with the file format.
Measurements: ``docs/performance.md`` (``glassdetect bench``).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

try:  # libjpeg-turbo straight to numpy; optional (Pillow fallback)
    import simplejpeg
except ImportError:  # pragma: no cover - simplejpeg is a dependency, but keep working without it
    simplejpeg = None

from .degrade import Degradation
from .pilguard import decode_context as _decode_context, identify
from .limits import DEFAULT_MAX_PIXELS
from .sampling import Box, eval_degrade_rng, eval_rng, sample_boxes

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
INTERPOLATIONS = tuple(_RESAMPLE)  # the global view's resize filters (ViewSpec.interpolation)


# Decode baseline RGB / greyscale JPEGs with simplejpeg when it is installed.
FAST_DECODE = simplejpeg is not None and os.environ.get("GLASSDETECT_DECODER", "").lower() != "pillow"
_FAST_FORMATS = {"JPEG", "MPO"}  # MPO: a camera JPEG with extra frames; both decoders read the first
_FAST_MODES = {"RGB", "L"}  # CMYK/YCCK JPEGs go to Pillow (Adobe inversion)
_TORCH_AA = {"bicubic", "bilinear"}  # torch's antialiased uint8 kernels implement Pillow's filters
_ORIENTATIONS = range(2, 9)
# build_views decodes into a per-thread scratch buffer that it reuses (nothing it returns points into
# it): a fresh 36 MB array per 12 MP image costs ~8 ms of page faults, 15 % of the decode itself.
# Images above this size get a fresh array, so a worker never keeps more than this.
SCRATCH_MAX_BYTES = 160_000_000
_scratch = threading.local()


def _scratch_buffer(nbytes: int) -> np.ndarray | None:
    if nbytes > SCRATCH_MAX_BYTES:
        return None
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.size < nbytes:
        _scratch.buf = None  # release the old one first
        buf = _scratch.buf = np.empty(nbytes, np.uint8)
    return buf


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
    align: int = 1  # crop offsets on multiples of this (views.sampling; 1 = the paper's uniform offsets)


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


def _pixel_limit(path: str, w: int, h: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise ImageError(path, f"{w}×{h} = {w * h / 1e6:.1f} MP exceeds the pixel limit of {max_pixels / 1e6:.0f} MP")


def _as_image_error(path: str, exc: BaseException) -> ImageError:
    """The :class:`ImageError` for an exception raised while opening or decoding ``path``."""
    if isinstance(exc, ImageError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return ImageError(path, "file not found")
    if isinstance(exc, IsADirectoryError):
        return ImageError(path, "is a directory")
    if isinstance(exc, Image.UnidentifiedImageError):
        return ImageError(path, "not a recognised image format (empty, corrupt or not an image)")
    return ImageError(path, f"cannot decode: {exc}")


_DECODE_ERRORS = (ImageError, FileNotFoundError, IsADirectoryError, Image.UnidentifiedImageError, OSError, SyntaxError,
                  ValueError, Image.DecompressionBombError)


def _source_file(source: str | Path | bytes) -> contextlib.AbstractContextManager[IO[bytes]]:
    return contextlib.nullcontext(io.BytesIO(source)) if isinstance(source, bytes) else open(source, "rb")


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
    filename = "" if isinstance(source, bytes) else str(source)
    try:
        with _source_file(source) as fp, identify(fp, filename) as img:
            w, h = img.size
            _pixel_limit(path, w, h, max_pixels)  # ours, before any pixel is decoded
            if draft_size is not None and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            with _decode_context(img):
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except _DECODE_ERRORS as exc:
        raise _as_image_error(path, exc) from None


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """``pixels`` (H, W, ...) as displayed for EXIF ``orientation`` (Pillow's ``exif_transpose``), as a view."""
    if orientation == 2:  # FLIP_LEFT_RIGHT
        return pixels[:, ::-1]
    if orientation == 3:  # ROTATE_180
        return pixels[::-1, ::-1]
    if orientation == 4:  # FLIP_TOP_BOTTOM
        return pixels[::-1]
    t = pixels.swapaxes(0, 1)
    if orientation == 5:  # TRANSPOSE
        return t
    if orientation == 6:  # ROTATE_270 (90° clockwise)
        return t[:, ::-1]
    if orientation == 7:  # TRANSVERSE
        return t[::-1, ::-1]
    if orientation == 8:  # ROTATE_90 (90° counter-clockwise)
        return t[::-1]
    return pixels


@dataclass
class Decoded:
    """A decoded image: ``stored`` (H, W, 3) uint8 as in the file, shown with EXIF ``orientation``."""

    stored: np.ndarray
    orientation: int = 1
    decoder: str = "pillow"  # which decoder produced the pixels: "simplejpeg" or "pillow"

    @property
    def pixels(self) -> np.ndarray:
        """The EXIF-oriented (H, W, 3) uint8 pixels (a view; no copy)."""
        return orient(self.stored, self.orientation)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) as displayed."""
        h, w = self.stored.shape[:2]
        return (w, h) if self.orientation >= 5 else (h, w)

    def global_view(self, size: int = 224, interpolation: str = "bicubic") -> np.ndarray:
        """The whole image resized to ``size × size`` (CHW uint8), exactly as :func:`resize_global`
        of the oriented pixels, without copying the oriented image.

        The stored array is resized and the small result oriented. torch's kernel is separable
        and rounds to uint8 after the horizontal pass, so for a transposing orientation (5-8) the
        stored image's vertical pass runs first (the displayed image's horizontal one).
        """
        stored = self.stored
        if interpolation not in _TORCH_AA:  # Pillow-only filters: resize the oriented pixels
            return resize_global(np.ascontiguousarray(self.pixels), size, interpolation)
        if self.orientation >= 5:
            stored = _resize_array(stored, size, interpolation, width=stored.shape[1])
        out = _resize_array(stored, size, interpolation)  # (S, S, 3)
        return np.ascontiguousarray(orient(out, self.orientation).transpose(2, 0, 1))

    def to_pil(self) -> Image.Image:
        return Image.fromarray(np.ascontiguousarray(self.pixels), "RGB")


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation ``exif_transpose`` would apply (1 when none or unusable)."""
    value = img.getexif().get(0x0112, 1)
    return value if isinstance(value, int) and value in _ORIENTATIONS else 1


def decode(
    source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None, *, scratch: bool = False
) -> Decoded:
    """Decode a file (or its bytes) to :class:`Decoded` pixels, or raise :class:`ImageError`.

    Same pixels, orientation, pixel limit, conversions and errors as :func:`open_image`; baseline
    RGB/greyscale JPEGs are decoded by simplejpeg when available (see the module docstring).
    ``scratch``: decode into this thread's reusable buffer — the pixels are overwritten by the
    thread's next ``scratch`` decode, so only for callers that copy out what they keep.
    """
    path = name or ("<bytes>" if isinstance(source, bytes) else str(source))
    data = source if isinstance(source, bytes) else read_bytes(source)
    if FAST_DECODE:
        try:
            with identify(io.BytesIO(data)) as img:  # header only: no pixels decoded
                w, h = img.size
                _pixel_limit(path, w, h, max_pixels)
                fast = img.format in _FAST_FORMATS and img.mode in _FAST_MODES
                orientation = _orientation(img) if fast else 1
        except _DECODE_ERRORS as exc:
            raise _as_image_error(path, exc) from None
        if fast:
            try:
                buf = _scratch_buffer(h * w * 3) if scratch else None
                stored = simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=buf)
            except (ValueError, OSError, RuntimeError):  # anything simplejpeg refuses: Pillow decides
                stored = None
            if stored is not None and stored.shape == (h, w, 3) and stored.dtype == np.uint8:
                return Decoded(stored, orientation, "simplejpeg")
    img = open_image(data, max_pixels, name=path)
    pixels = np.asarray(img)  # backed by Pillow's read-only bytes
    del img  # release Pillow's 4-byte-per-pixel copy before making ours
    return Decoded(_writable(pixels), 1, "pillow")


def _resize_array(pixels: np.ndarray, size: int, interpolation: str, width: int | None = None) -> np.ndarray:
    """HWC uint8 -> (size, width or size, 3) uint8, antialiased (Pillow's filter; torch's uint8 kernel)."""
    width = size if width is None else width
    if interpolation in _TORCH_AA:
        if not pixels.flags.writeable or any(st < 0 for st in pixels.strides):  # torch needs both
            pixels = np.array(pixels, order="C")
        x = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)  # channels_last view, no copy
        with torch.inference_mode():
            out = F.interpolate(x, size=(size, width), mode=interpolation, antialias=True, align_corners=False)
        return out[0].permute(1, 2, 0).numpy()
    img = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    return np.asarray(img.resize((width, size), _RESAMPLE[interpolation]))


def resize_global(img: Image.Image | np.ndarray, size: int = 224, interpolation: str = "bicubic") -> np.ndarray:
    """The whole image, antialiased-resized to ``size × size`` (aspect not kept), as CHW uint8.

    ``img``: a Pillow RGB image or an (H, W, 3) uint8 array. Bicubic and bilinear use torch's
    uint8 antialiased kernel for both (Pillow's filter; within 1–2 grey levels of
    ``Image.resize``), so every path gives the same view; other filters use ``Image.resize``.
    """
    if isinstance(img, Image.Image):
        if interpolation not in _TORCH_AA:
            return np.ascontiguousarray(np.asarray(img.resize((size, size), _RESAMPLE[interpolation])).transpose(2, 0, 1))
        img = _writable(np.asarray(img))  # the same kernel as for arrays: identical views on every path
    return np.ascontiguousarray(_resize_array(img, size, interpolation).transpose(2, 0, 1))


def _writable(pixels: np.ndarray) -> np.ndarray:
    """``pixels``, copied when read-only (Pillow's ``np.asarray`` is): torch refuses to wrap read-only memory."""
    return pixels if pixels.flags.writeable else pixels.copy()


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
    degrade: Degradation | None = None,
    degrade_rng: np.random.Generator | None = None,
) -> Views:
    """Decode once and build the global view plus the crops ``spec`` asks for.

    Without ``rng`` the crops are a function of the image's content, ``seed`` and ``draw``:
    the same image always gets the same crops, whatever its file name.

    ``degrade`` (:mod:`glassdetect.views.degrade`): applied to the whole decoded, EXIF-upright image
    before any view is built — the global view, the crop boxes (and ``Views.size``) all come from
    the degraded image. Its randomness comes from ``degrade_rng``, or else from the image's
    content, the degradation's name and ``draw`` (:func:`~glassdetect.views.sampling.eval_degrade_rng`).
    GLASS and the baseline see the same degraded pixels. Without it (or with an identity) the
    views are exactly those of the undegraded path.

    The global view does not depend on ``spec.need_crops``: the baseline's equals GLASS's, byte
    for byte (same full decode, same resize).
    """
    data = source if isinstance(source, bytes) else read_bytes(source)
    name = name or ("<bytes>" if isinstance(source, bytes) else str(source))
    if degrade is not None and not degrade.is_identity:
        return _degraded_views(data, spec, rng, seed, draw, name, degrade, degrade_rng)
    # One global-view path for both architectures: full decode, then the same resize. (A reduced-scale
    # JPEG decode for the baseline alone would make its views differ from GLASS's by file format.)
    dec = decode(data, spec.max_pixels, name=name, scratch=True)  # crops and global view are copies
    h, w = dec.size
    g = dec.global_view(spec.global_size, spec.interpolation)
    if not spec.need_crops:
        return Views(g, np.zeros((0, 3, spec.patch, spec.patch), np.uint8), [], (h, w))
    if rng is None:  # the content hash is only needed where there are crops to place
        rng = eval_rng(content_id(data), seed, draw)
    boxes = sample_boxes(h, w, spec.k, rng, spec.mode, spec.patch, spec.max_grid, spec.align)
    crops = cut_crops(dec.pixels, boxes, spec.patch)
    return Views(g, crops, boxes, (h, w))


def _degraded_views(data: bytes, spec: ViewSpec, rng: np.random.Generator | None, seed: int, draw: int, name: str,
                    degrade: Degradation, degrade_rng: np.random.Generator | None) -> Views:
    """:func:`build_views` of the image after ``degrade``."""
    dec = decode(data, spec.max_pixels, name=name, scratch=True)  # the degradation returns new arrays or a view
    cid = None
    if degrade_rng is None:
        cid = content_id(data)
        degrade_rng = eval_degrade_rng(cid, degrade.name, draw)
    try:
        pixels = degrade(dec.pixels, degrade_rng)  # (H', W', 3) uint8, upright
    except (ValueError, OSError) as exc:  # e.g. WebP's 16383-px limit: a bad item, not a crashed run
        raise ImageError(name, f"cannot apply degradation {degrade.name}: {exc}") from None
    h, w = pixels.shape[:2]
    g = resize_global(pixels, spec.global_size, spec.interpolation)
    if not spec.need_crops:
        return Views(g, np.zeros((0, 3, spec.patch, spec.patch), np.uint8), [], (h, w))
    if rng is None:
        rng = eval_rng(cid or content_id(data), seed, draw)
    boxes = sample_boxes(h, w, spec.k, rng, spec.mode, spec.patch, spec.max_grid, spec.align)
    crops = cut_crops(pixels, boxes, spec.patch)
    return Views(g, crops, boxes, (h, w))
