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

    from glassdetect.data.audit import audit, format_report
    report = audit("data/bench")          # tree, manifest CSV or folder with manifest.csv
    print(format_report(report))
    report.flags, report.verdict, report.to_json()

Files are only opened for reading; unreadable images are listed in ``report.errors`` and skipped.
"""
from __future__ import annotations

from .properties import (
    CATEGORICAL,
    NUMERIC,
    PROPERTY_HELP,
    blockiness,
    estimate_jpeg_quality,
    image_properties,
    jpeg_grid_alignment,
    jpeg_grid_strength,
    noise_sigma,
    resampling_score,
)
from .report import format_report
from .summary import (
    DEFAULT_ALPHA,
    DEFAULT_MIN_PER_CLASS,
    DEFAULT_THRESHOLD,
    AuditReport,
    audit,
    summarise,
)

__all__ = [
    "CATEGORICAL",
    "DEFAULT_ALPHA",
    "DEFAULT_MIN_PER_CLASS",
    "DEFAULT_THRESHOLD",
    "NUMERIC",
    "PROPERTY_HELP",
    "AuditReport",
    "audit",
    "blockiness",
    "estimate_jpeg_quality",
    "format_report",
    "image_properties",
    "jpeg_grid_alignment",
    "jpeg_grid_strength",
    "noise_sigma",
    "resampling_score",
    "summarise",
]
