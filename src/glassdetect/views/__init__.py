"""Stage 1 — views: from a file to the uint8 pixels the models see.

Crop geometry (:mod:`.sampling`), decoding once into uint8 and cutting the global view and the
local crops (:mod:`.build`), the pixel operations and degradations applied to a decoded image
before its views (:mod:`.imageops`, :mod:`.degrade`), Pillow's header guard (:mod:`.pilguard`) and
the pixel limits (:mod:`.limits`). It imports only the top-level helpers (``runtime``, ``fsutil``)
and third-party libraries — never a higher stage.

The names below are the view API as ``glassdetect.views`` offered it before it became a package.
"""
from .build import (
    FAST_DECODE, INTERPOLATIONS, SCRATCH_MAX_BYTES, Decoded, ImageError, Views, ViewSpec, build_views, content_id,
    cut_crops, decode, open_image, orient, read_bytes, resize_global,
)
from .sampling import Box, sample_boxes

__all__ = [
    "FAST_DECODE", "INTERPOLATIONS", "SCRATCH_MAX_BYTES", "Box", "Decoded", "ImageError", "Views", "ViewSpec",
    "build_views", "content_id", "cut_crops", "decode", "open_image", "orient", "read_bytes", "resize_global",
    "sample_boxes",
]
