"""Opening images under our own pixel limit without touching Pillow's process-wide guard.

Used by every module that opens images (views, degrade, audit, serve); it imports nothing else
from glassdetect.
"""
from __future__ import annotations

import contextlib
import struct
import threading
from typing import IO, Iterator

from PIL import Image, ImageFile

# ------------------------------------------------------------------ our pixel limit, Pillow's guard
#
# Our limit (``max_pixels``) is checked per call on the header, before any pixel is decoded. Pillow's
# decompression-bomb guard is one process-wide setting (``Image.MAX_IMAGE_PIXELS``, 89.5 MP by
# default: a warning above it, an error above twice it) that belongs to the host process; we never
# change it for good. :func:`identify` opens images without it, so it can neither refuse first with
# its own limit and message nor warn about an image our limit allows. Pillow has no per-call way to
# pass a limit to the checks some plugins make themselves (TIFF, GIF, ICO ... while loading; WebP
# while opening), so for those formats only, and only for an image over Pillow's own limit that ours
# allows, :func:`_guard_lifted` switches the guard off for the duration of that decode (reference
# counted under a lock, so concurrent decodes in threads are safe) and puts the host's value back.

# Formats whose Pillow plugins never check the guard while loading pixels (only Image.open does).
_LOAD_UNGUARDED = frozenset({"JPEG", "MPO", "PNG", "BMP", "PPM"})
_guard_lock = threading.Lock()
_guard_holders = 0
_guard_saved: int | None = None


def _pillow_limit() -> int | None:
    """Pillow's own limit as the host process set it (also while a decode has lifted it)."""
    with _guard_lock:
        return _guard_saved if _guard_holders else Image.MAX_IMAGE_PIXELS


@contextlib.contextmanager
def _guard_lifted() -> Iterator[None]:
    """Pillow's decompression-bomb guard off for the block, then back to the host's value."""
    global _guard_holders, _guard_saved
    with _guard_lock:
        if _guard_holders == 0:
            _guard_saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _guard_holders += 1
    try:
        yield
    finally:
        with _guard_lock:
            _guard_holders -= 1
            if _guard_holders == 0:
                Image.MAX_IMAGE_PIXELS, _guard_saved = _guard_saved, None


def decode_context(img: Image.Image) -> contextlib.AbstractContextManager:
    """Where ``img``'s pixels may be decoded: as is, unless its plugin checks Pillow's guard while
    loading and the image is over Pillow's limit (ours, already checked, allowed it)."""
    limit = _pillow_limit()
    w, h = img.size
    if limit is None or img.format in _LOAD_UNGUARDED or max(1, w) * max(1, h) <= limit:
        return contextlib.nullcontext()
    return _guard_lifted()


def identify(fp: IO[bytes], filename: str = "") -> ImageFile.ImageFile:
    """``Image.open(fp)`` (lazy: the header only) without Pillow's decompression-bomb check.

    For callers that check their own pixel limit on ``img.size`` right after, as every decoder
    here does. Pillow's own loop over its registered formats (``Image.ID`` / ``Image.OPEN``), so
    the same plugin opens the same file; raises ``UnidentifiedImageError`` like ``Image.open``.
    ``fp`` stays the caller's to close.
    """
    fp.seek(0)
    prefix = fp.read(16)
    tried: set[str] = set()
    for load in (Image.preinit, Image.init):
        load()
        for fmt in list(Image.ID):
            if fmt in tried:
                continue
            tried.add(fmt)
            factory, accept = Image.OPEN[fmt]
            try:
                ok = not accept or accept(prefix)
                if not ok or isinstance(ok, str):  # a string: "maybe, but unsupported" (Image.open warns)
                    continue
                fp.seek(0)
                return factory(fp, filename)
            except (SyntaxError, IndexError, TypeError, struct.error):  # not this format (as Image.open)
                continue
            except Image.DecompressionBombError:  # a plugin's own check while opening (WebP over 2× the limit)
                fp.seek(0)
                with _guard_lifted():
                    return factory(fp, filename)
    raise Image.UnidentifiedImageError(f"cannot identify image file {filename or fp!r}")
