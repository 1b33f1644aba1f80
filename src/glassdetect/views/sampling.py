"""Where the local crops go: pure box geometry, no pixels.

A box is ``(top, left)`` of a ``patch × patch`` square in image coordinates. Boxes of images
smaller than the patch start at 0 and reach past the border; the pixels there are zero-padded
by :mod:`glassdetect.views.build`.

Modes
-----
``stratified`` (the method's default)
    G = min(min(H, W) // patch, max_grid). If G² < K: K uniform random boxes over the whole
    image. Otherwise K distinct cells of the G×G grid, drawn without replacement, and one
    random box inside each cell (clamped to the image).
``grid``
    Every cell of the G×G grid, box centred in its cell; deterministic, K is ignored
    (one box when G = 0).
``random``
    K uniform random boxes over the whole image.

``align`` (default 1: off)
    Every box's top and left are multiples of ``align`` (drawn uniformly among the multiples that
    keep the box in its cell and in the image; the nearest multiple below when none does). A
    super-resolver's ×2/×3/×4 output repeats its upsampling pattern from the image's first pixel, so
    with ``align = 12`` (their least common multiple) every crop shows that pattern at the same
    phase; with random offsets each crop shows it at one of s² phases. Only the placement changes:
    ``align = 1`` draws exactly the boxes of a config without the option.

Randomness comes only from the ``numpy.random.Generator`` passed in. :func:`eval_rng` derives
it from an image's identity so evaluation and prediction always see the same crops, and
:func:`train_rng` from (seed, epoch, index) so training draws fresh crops every epoch and a
resumed run draws exactly what an uninterrupted one would.
"""
from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np

Box = tuple[int, int]  # (top, left) of a patch × patch square
Mode = Literal["stratified", "grid", "random"]
MODES: tuple[str, ...] = ("stratified", "grid", "random")


def grid_size(height: int, width: int, patch: int = 224, max_grid: int = 8) -> int:
    """G = min(min(H, W) // patch, max_grid)."""
    return min(min(height, width) // patch, max_grid)


def _cell_edges(extent: int, g: int) -> np.ndarray:
    """Integer cell boundaries splitting ``extent`` pixels into ``g`` near-equal cells."""
    return np.floor(np.linspace(0, extent, g + 1)).astype(np.int64)


def aligned_offset(rng: np.random.Generator, lo: int, hi: int, align: int = 1) -> int:
    """A uniform integer in [lo, hi] that is a multiple of ``align``; ``lo`` when the range is
    empty (image smaller than patch); the largest multiple of ``align`` not above ``lo`` (and not
    below 0) when the range holds none. ``align = 1`` draws exactly as without it."""
    if align < 1:
        raise ValueError(f"align must be >= 1, got {align}")
    if hi <= lo:
        return lo if align == 1 or lo <= 0 else lo // align * align
    if align == 1:
        return int(rng.integers(lo, hi + 1))
    first, last = -(-lo // align), hi // align
    if last < first:
        return max(lo // align * align, 0)
    return int(rng.integers(first, last + 1)) * align


def _clamp(offset: int, extent: int, patch: int, align: int) -> int:
    """``offset`` moved back so the box ends inside ``extent`` (to a multiple of ``align``)."""
    room = max(extent - patch, 0)
    return min(offset, room // align * align)


def random_boxes(height: int, width: int, k: int, rng: np.random.Generator, patch: int = 224,
                 align: int = 1) -> list[Box]:
    """K boxes drawn uniformly over the whole image."""
    return [
        (aligned_offset(rng, 0, height - patch, align), aligned_offset(rng, 0, width - patch, align))
        for _ in range(k)
    ]


def grid_boxes(height: int, width: int, patch: int = 224, max_grid: int = 8, align: int = 1) -> list[Box]:
    """One box centred in every cell of the G×G grid (row-major; moved back to a multiple of
    ``align``); one box at (0, 0) when G = 0."""
    g = grid_size(height, width, patch, max_grid)
    if g == 0:
        return [(0, 0)]
    ys, xs = _cell_edges(height, g), _cell_edges(width, g)
    boxes = []
    for r in range(g):
        for c in range(g):
            top = (ys[r] + ys[r + 1] - patch) // 2
            left = (xs[c] + xs[c + 1] - patch) // 2
            boxes.append((int(top - top % align), int(left - left % align)))
    return boxes


def stratified_boxes(
    height: int, width: int, k: int, rng: np.random.Generator, patch: int = 224, max_grid: int = 8,
    align: int = 1,
) -> list[Box]:
    """K boxes in K distinct grid cells (the GLASS rule); uniform fallback when G² < K."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    g = grid_size(height, width, patch, max_grid)
    if g * g < k:
        return random_boxes(height, width, k, rng, patch, align)
    ys, xs = _cell_edges(height, g), _cell_edges(width, g)
    cells = rng.choice(g * g, size=k, replace=False)
    boxes = []
    for cell in cells:
        r, c = divmod(int(cell), g)
        # Every cell is at least `patch` wide because g <= min(H, W) // patch.
        top = aligned_offset(rng, int(ys[r]), int(ys[r + 1]) - patch, align)
        left = aligned_offset(rng, int(xs[c]), int(xs[c + 1]) - patch, align)
        boxes.append((_clamp(top, height, patch, align), _clamp(left, width, patch, align)))
    return boxes


def sample_boxes(
    height: int,
    width: int,
    k: int,
    rng: np.random.Generator,
    mode: str = "stratified",
    patch: int = 224,
    max_grid: int = 8,
    align: int = 1,
) -> list[Box]:
    """Dispatch on ``mode`` (one of :data:`MODES`); box offsets on multiples of ``align``."""
    if height < 1 or width < 1:
        raise ValueError(f"image must be at least 1×1, got {height}×{width}")
    if align < 1:
        raise ValueError(f"align must be >= 1, got {align}")
    if mode == "stratified":
        return stratified_boxes(height, width, k, rng, patch, max_grid, align)
    if mode == "grid":
        return grid_boxes(height, width, patch, max_grid, align)
    if mode == "random":
        return random_boxes(height, width, k, rng, patch, align)
    raise ValueError(f"unknown sampling mode {mode!r}; choose one of {', '.join(MODES)}")


def stable_hash(text: str) -> int:
    """A 63-bit hash of ``text`` that is the same in every process and Python version."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def eval_rng(identity: str, seed: int = 0, draw: int = 0) -> np.random.Generator:
    """Generator for evaluation/prediction: a function of (image identity, run seed, draw index)."""
    return np.random.default_rng([stable_hash(identity), seed, draw])


def train_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Generator for training: fresh each epoch, identical for a resumed run."""
    return np.random.default_rng([seed, epoch, index, 0x61A55])


def train_degrade_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Generator for a training image's degradation (augmentation): a function of (seed, epoch,
    index) like :func:`train_rng` but an independent stream, so adding an augmentation leaves the
    crop draws unchanged and a resumed run degrades exactly as an uninterrupted one."""
    return np.random.default_rng([seed, epoch, index, 0xDE6])


def eval_degrade_rng(identity: str, degradation: str, draw: int = 0) -> np.random.Generator:
    """Generator for an evaluation degradation: a function of (image content, the degradation's
    canonical name, draw), so the same image always gets the same degraded pixels."""
    return np.random.default_rng([stable_hash(identity), stable_hash(degradation), draw, 0xDE6])
