"""Offline benchmark version 3, the plan: sizes (:data:`V3_SPECS`), which families train and which
are left out, regions of each pre-scaled photo, and one :class:`PairTask` per real/fake pair (no
pixels touched). :mod:`.v3` runs the plan."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from .build import SPLITS, _off_grid_offset, _rng, split_photos
from .histories import Post, PostConfig, PreScale, draw_post
from .sources import PHOTOS, PhotoRef, SourcePhoto
from .superres import FAMILIES, GENERATORS

V3_VERSION = 3
DEFAULT_HELDOUT: tuple[str, str] = ("waifu2x-upconv7", "waifu2x-cunet")  # (validation, test)

HISTORIES_V3: tuple[PreScale, ...] = (
    PreScale("native", 1.0, "area", match_jpeg=True),  # v2's native: the photo's own pixels and JPEG grid
    PreScale("halved", 2.0, "area"),  # v2's halved
    PreScale("x1.5-lanczos", 1.5, "lanczos"),
    PreScale("x3-bicubic", 3.0, "bicubic"),
)
HISTORIES_V3_FULL: tuple[PreScale, ...] = (
    *HISTORIES_V3, PreScale("x1.25-bicubic", 1.25, "bicubic"), PreScale("x2-lanczos", 2.0, "lanczos"),
)

# per family, the models a size uses: cheap ones for the pilot (mostly x4: a quarter of the input
# pixels), smoothing and grain-keeping variants in every family (measured σ in docs/offline-bench.md)
_PILOT_GENS: tuple[str, ...] = (
    "spanx4_ch48", "ClearReality4x",
    "realesr-animevideov3-x4", "realesr-animevideov3-x3",
    "realcugan-se-up4x-no-denoise", "realcugan-se-up4x-conservative", "realcugan-se-up4x-denoise3x",
    "srmd-x4-noise0", "srmdnf-x4", "srmd-x3-noise0",
    "waifu2x-upconv7-photo-x2", "waifu2x-upconv7-photo-noise1-x2", "waifu2x-upconv7-photo-noise3-x2",
    "waifu2x-cunet-x2", "waifu2x-cunet-noise1-x2", "waifu2x-cunet-noise3-x2",
)
_SMALL_GENS: tuple[str, ...] = (
    *_PILOT_GENS, "spanx4_ch52", "spanx2_ch48", "realesr-animevideov3-x2",
    "realcugan-pro-up3x-no-denoise", "realcugan-se-up3x-denoise3x", "srmd-x3-noise5", "srmd-x4-noise10",
    "waifu2x-upconv7-photo-noise0-x2", "waifu2x-cunet-noise0-x2",
)


@dataclass(frozen=True)
class V3Spec:
    """What a version-3 build makes.

    Train: per photo and history, ``train_regions`` regions (0 = tiles covering the whole
    pre-scaled photo) of at most ``region_px`` pixels, short side ``min_side`` where the photo
    allows, each super-resolved by ``train_gens_per_region`` training-family generators.
    Validation / test: per photo and history, ``eval_windows`` fixed square windows of side
    ``eval_side`` (or what fits), each paired once with a training family and once with the split's
    left-out family. ``generators`` lists the models of all six families; which are left out is
    the build's ``heldout`` (validation family, test family).
    """

    name: str
    generators: tuple[str, ...]
    histories: tuple[PreScale, ...] = HISTORIES_V3
    region_px: int = 4_000_000
    train_regions: int = 1
    train_gens_per_region: int = 1
    min_side: int = 1032
    eval_side: int = 1032
    eval_windows: int = 1
    post: PostConfig = field(default_factory=PostConfig)
    photos: tuple[PhotoRef, ...] = PHOTOS
    side_multiple: int = 12
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    tile: int = 128
    tile_pad: int = 10
    version: int = V3_VERSION


V3_SPECS: dict[str, V3Spec] = {
    "pilot": V3Spec("pilot", _PILOT_GENS, region_px=1_500_000, train_regions=1),
    "small": V3Spec("small", _SMALL_GENS, region_px=4_000_000, train_regions=2, train_gens_per_region=2),
    "full": V3Spec("full", tuple(GENERATORS), HISTORIES_V3_FULL, region_px=4_000_000, train_regions=0,
                   train_gens_per_region=3, eval_windows=3),
}


def check_heldout(heldout: Sequence[str], generators: Sequence[str]) -> tuple[str, str]:
    """``(validation family, test family)``, checked: two different families that the spec has models of."""
    if len(heldout) != 2 or heldout[0] == heldout[1]:
        raise ValueError(f"held-out families {tuple(heldout)}: give two different families VAL,TEST")
    have = {GENERATORS[g].family for g in generators}
    for fam in heldout:
        if fam not in FAMILIES:
            raise ValueError(f"held-out family {fam!r} unknown; choose from {', '.join(FAMILIES)}")
        if fam not in have:
            raise ValueError(f"held-out family {fam!r} has no model in this size's generator list")
    return heldout[0], heldout[1]


# ---------------------------------------------------------------------------------- regions


@dataclass(frozen=True)
class Region:
    left: int
    top: int
    width: int
    height: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.left, self.top, self.left + self.width, self.top + self.height)

    @property
    def pixels(self) -> int:
        return self.width * self.height


def region_shape(width: int, height: int, cap_px: int, min_side: int, multiple: int, grid: int = 8) -> tuple[int, int]:
    """The largest ``w x h`` (multiples of ``multiple``, ``grid`` px of room left to move off the
    JPEG grid) of at most ``cap_px`` pixels: the photo's own aspect, made squarer (up to a square) when that keeps
    the short side at ``min_side`` (where the photo allows). ``(0, 0)`` if nothing fits."""
    w, h = float(width - grid), float(height - grid)
    if w * h > cap_px:
        aspect = w / h
        nh = math.sqrt(cap_px / aspect)
        nw = aspect * nh
        short = min(min_side, w, h, math.sqrt(cap_px))
        if nw >= nh and nh < short:
            nh, nw = short, min(w, cap_px / short)
        elif nw < nh and nw < short:
            nw, nh = short, min(h, cap_px / short)
        w, h = nw, nh
    fw, fh = int(w) // multiple * multiple, int(h) // multiple * multiple
    return (fw, fh) if fw > 0 and fh > 0 else (0, 0)


def _positions(extent: int, side: int, count: int) -> list[int]:
    return [round(i * (extent - side) / (count - 1)) if count > 1 else (extent - side) // 2 for i in range(count)]


def plan_regions(width: int, height: int, cap_px: int, n: int, seed: int, key: str, *, min_side: int = 1032,
                 multiple: int = 12, grid: int = 8) -> list[Region]:
    """Regions of a ``width x height`` photo: tiles of :func:`region_shape` covering it (near-even,
    overlapping a little where they must), ``n`` of them drawn when ``n > 0``; left/top offsets are
    never multiples of ``grid``. Deterministic from (seed, key)."""
    w, h = region_shape(width, height, cap_px, min_side, multiple, grid)
    if not w:
        return []
    rng = _rng(seed, "regions", key)
    nx, ny = -(-(width - grid) // w), -(-(height - grid) // h)
    cells = [(x, y) for y in _positions(height - grid, h, ny) for x in _positions(width - grid, w, nx)]
    if 0 < n < len(cells):
        cells = [cells[i] for i in sorted(rng.choice(len(cells), n, replace=False))]
    out = []
    for x, y in cells:
        dx = _off_grid_offset(rng, grid - 1, grid) if x % grid == 0 else 0
        dy = _off_grid_offset(rng, grid - 1, grid) if y % grid == 0 else 0
        out.append(Region(x + dx, y + dy, w, h))
    return out


# ------------------------------------------------------------------------------------ pairs


@dataclass(frozen=True)
class PairTask:
    """One real/fake pair to make: picklable (the photo by index), so a worker process can run it."""

    photo: int
    history: str
    region: Region
    generator: str
    split: str
    stem: str
    post: Post
    seen: bool

    def rel(self, label: str, ext: str = "png") -> str:
        return f"images/{self.split}/{label}/{self.stem}.{ext}"


def _interleave(gens: Sequence[str]) -> list[str]:
    """Round-robin over the families (so consecutive pairs of a photo get different families)."""
    by_fam: dict[str, list[str]] = {}
    for g in gens:
        by_fam.setdefault(GENERATORS[g].family, []).append(g)
    lists = [by_fam[f] for f in sorted(by_fam)]
    return [lst[i] for i in range(max(map(len, lists))) for lst in lists if i < len(lst)]


def _assign(units: Sequence[tuple], gens: Sequence[str], per_unit: int, seed: int, tag: str) -> dict[tuple, list[str]]:
    """``per_unit`` generators for each unit (a region), rotating over the family-interleaved list
    in a seeded random order of the units: balanced per generator to +-1, the generators of one
    unit consecutive (different families where the list allows), and no tie to photo or history."""
    order = _interleave(gens)
    rng = _rng(seed, "generators", tag)
    start = int(rng.integers(len(order)))
    perm = rng.permutation(len(units))
    return {units[u]: [order[(start + r * per_unit + j) % len(order)] for j in range(per_unit)]
            for r, u in enumerate(perm)}


def _eval_regions(w: int, h: int, spec: V3Spec, seed: int, key: str, m: int) -> list[Region]:
    from .build import choose_crop_boxes

    side = min(spec.eval_side // m * m, (min(w, h) - 1) // m * m)
    if side <= 0:
        return []
    boxes = choose_crop_boxes(w, h, spec.eval_windows, (side, side), seed, key=key, multiple=m, max_overlap=0.3)
    return [Region(b.left, b.top, b.side, b.side) for b in boxes]


def plan_v3(photos: Sequence[SourcePhoto], spec: V3Spec, seed: int, heldout: tuple[str, str],
            scales: Mapping[str, int]) -> list[PairTask]:
    """Every pair of a version-3 build: photo splits, regions, generators and post-processing."""
    split = split_photos([p.id for p in photos], spec.split_fractions, seed, {p.id: p.stratum for p in photos})
    if len(split) != len(photos):
        raise ValueError("photo ids must be unique")
    m = math.lcm(spec.side_multiple, *(scales[g] for g in spec.generators))
    fam = {g: GENERATORS[g].family for g in spec.generators}
    seen = [g for g in spec.generators if fam[g] not in heldout]
    if not seen:
        raise ValueError("no training family left after holding out " + ",".join(heldout))
    units: dict[str, list[tuple]] = {"train": [], "val": [], "test": []}
    for i, ph in sorted(enumerate(photos), key=lambda t: (SPLITS.index(split[t[1].id]), t[1].id)):
        s = split[ph.id]
        for hist in spec.histories:
            w, h = hist.size(*ph.size)
            key = f"{ph.id}/{hist.name}"
            regions = (plan_regions(w, h, spec.region_px, spec.train_regions, seed, key, min_side=spec.min_side,
                                    multiple=m) if s == "train" else _eval_regions(w, h, spec, seed, key, m))
            units[s] += [(i, hist.name, k, reg) for k, reg in enumerate(regions)]
    lanes = [("train", seen, spec.train_gens_per_region, True),
             ("val", seen, 1, True), ("val", [g for g in spec.generators if fam[g] == heldout[0]], 1, False),
             ("test", seen, 1, True), ("test", [g for g in spec.generators if fam[g] == heldout[1]], 1, False)]
    tasks: list[PairTask] = []
    for s, gens, per_unit, is_seen in lanes:
        for (i, hist_name, k, reg), chosen in _assign(units[s], gens, per_unit, seed, f"{s}/{is_seen}").items():
            for j, gen in enumerate(chosen):
                stem = f"{photos[i].id}_{hist_name}_{k:02d}{'abcdefgh'[j if is_seen else per_unit]}"
                post = draw_post(spec.post, _rng(seed, "post", stem))
                tasks.append(PairTask(i, hist_name, reg, gen, s, stem, post, is_seen))
    tasks.sort(key=lambda t: (SPLITS.index(t.split), photos[t.photo].id, t.history, t.stem))
    return tasks
