"""Offline benchmark, the builder: pixel-history recipes and specs, crop boxes, splits, generator
assignment, pairs, encoding and manifests; :func:`build_bench` assembles them for any photos and
super-resolvers, :func:`build_offline_bench` for the fetched photos and ncnn models."""
from __future__ import annotations

import csv
import io
import json
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from ...fsutil import atomic_path, write_text_atomic
from .sources import PHOTOS, PhotoRef, SourcePhoto, fetch_photos, match_jpeg, prescaled
from .superres import BENCH_V2_GENERATORS, GENERATORS, Upscaler, make_fake, ncnn_upscaler

BENCH_VERSION = 2
MANIFEST_COLUMNS = ("path", "label", "group", "generator", "source", "split", "history", "version")
SPLITS = ("train", "val", "test")
PNG_PARAMS: dict[str, int] = {"compress_level": 1}  # lossless; level only trades size for speed
JPEG_PARAMS: dict[str, int] = {"quality": 75, "subsampling": 2}  # 2 = 4:2:0, for both classes

# --------------------------------------------------------------------------------------- specs



@dataclass(frozen=True)
class History:
    """One pixel-history recipe for a pair; both members of the pair share it.

    ``prescale``: area-downscale the whole photo by this factor before cutting (>= 2 removes the
    camera's 8x8 JPEG grid). ``match_jpeg``: re-encode the fake once with the source photo's own
    JPEG tables and chroma subsampling, on the real crop's block-grid phase, so that both members
    carry the same camera-JPEG traces (a no-op for a source that is not a JPEG).
    """

    name: str
    crops_per_photo: int
    side_range: tuple[int, int]
    prescale: int = 1
    match_jpeg: bool = False
    max_overlap: float = 0.25  # intersection / area of the smaller box


@dataclass(frozen=True)
class BenchSpec:
    """What to build. Crop sides are multiples of ``side_multiple`` (12 divides by 2, 3 and 4)."""

    name: str
    photos: tuple[PhotoRef, ...]
    generators: tuple[str, ...]
    histories: tuple[History, ...]
    side_multiple: int = 12
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    tile: int = 128  # SR tile side, input pixels
    tile_pad: int = 10  # context around each tile, input pixels
    version: int = BENCH_VERSION


SPECS: dict[str, BenchSpec] = {
    "small": BenchSpec(
        name="small",
        photos=PHOTOS,
        generators=BENCH_V2_GENERATORS,
        histories=(
            History("native", 2, (1020, 1020), match_jpeg=True, max_overlap=0.4),
            History("halved", 2, (504, 1008), prescale=2, max_overlap=0.4),
        ),
    ),
    "full": BenchSpec(
        name="full",
        photos=PHOTOS,
        generators=BENCH_V2_GENERATORS,
        histories=(
            # 1020: the largest multiple of 12 that fits every photo
            History("native", 8, (1020, 2040), match_jpeg=True, max_overlap=0.5),
            History("halved", 8, (504, 1500), prescale=2, max_overlap=0.5),
        ),
    ),
}

# ---------------------------------------------------------------------------- (a) crop boxes


@dataclass(frozen=True)
class CropBox:
    left: int
    top: int
    side: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.left, self.top, self.left + self.side, self.top + self.side)


def _rng(seed: int, *keys: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def _overlap(a: CropBox, b: CropBox) -> float:
    w = min(a.left + a.side, b.left + b.side) - max(a.left, b.left)
    h = min(a.top + a.side, b.top + b.side) - max(a.top, b.top)
    return 0.0 if w <= 0 or h <= 0 else (w * h) / min(a.side, b.side) ** 2


def _off_grid_offset(rng: np.random.Generator, hi: int, grid: int) -> int:
    """A uniform offset in [0, hi] that is not a multiple of ``grid`` (``hi >= 1``)."""
    cands = np.arange(hi + 1)
    cands = cands[cands % grid != 0]
    return int(rng.choice(cands))


def choose_crop_boxes(
    width: int,
    height: int,
    n: int,
    side_range: tuple[int, int],
    seed: int,
    *,
    key: str = "",
    multiple: int = 12,
    max_overlap: float = 0.25,
    grid: int = 8,
    tries: int = 64,
) -> list[CropBox]:
    """Up to ``n`` square boxes inside a ``width`` x ``height`` photo, deterministic from (seed, key).

    Sides are multiples of ``multiple`` in ``side_range`` (the top clamped to what fits; a photo
    smaller than the bottom gives no box), left/top offsets are never multiples of ``grid`` (so
    crops are off the camera's JPEG block grid) and any two boxes overlap by at most
    ``max_overlap`` of the smaller one. Fewer boxes come back when no more fit.
    """
    fit = ((min(width, height) - 1) // multiple) * multiple  # leave >= 1 px to move off the grid
    hi = min(side_range[1] // multiple * multiple, fit)
    lo = -(-side_range[0] // multiple) * multiple
    if lo > hi or n <= 0:
        return []
    sides = np.arange(lo, hi + 1, multiple)
    rng = _rng(seed, key)
    boxes: list[CropBox] = []
    for _ in range(tries * n):
        if len(boxes) == n:
            break
        side = int(rng.choice(sides))
        cand = CropBox(_off_grid_offset(rng, width - side, grid), _off_grid_offset(rng, height - side, grid), side)
        if all(_overlap(cand, b) <= max_overlap for b in boxes):
            boxes.append(cand)
    return boxes


# ---------------------------------------------------------------------------- (d) splitting


def split_photos(
    photo_ids: Sequence[str],
    fractions: tuple[float, float, float],
    seed: int,
    strata: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Assign every photo to train/val/test, deterministic from the seed.

    Stratified (e.g. by source package): each stratum is shuffled, its photos get evenly spaced
    positions in [0, 1), all photos are ordered by position and cut into :func:`split_counts` sizes.
    So the split sizes follow the fractions overall and every split mixes the strata.
    """
    groups: dict[str, list[str]] = {}
    for pid in sorted(set(photo_ids)):
        groups.setdefault((strata or {}).get(pid, ""), []).append(pid)
    keyed: list[tuple[float, float, str]] = []
    for stratum, ids in sorted(groups.items()):
        rng = _rng(seed, "split", stratum)
        for rank, i in enumerate(rng.permutation(len(ids))):
            keyed.append(((rank + 0.5) / len(ids), float(rng.random()), ids[i]))
    order = [pid for *_, pid in sorted(keyed)]
    bounds = np.cumsum(split_counts(len(order), fractions))
    return {pid: SPLITS[int(np.searchsorted(bounds, i, side="right"))] for i, pid in enumerate(order)}


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder sizes for ``n`` items; no split is left empty when ``n`` allows it."""
    share = np.asarray(fractions, dtype=float) / sum(fractions) * n
    counts = np.floor(share).astype(int)
    for k in np.argsort(-(share - counts), kind="stable")[: n - counts.sum()]:
        counts[k] += 1
    for k in range(len(counts)):
        if counts[k] == 0 and n >= len(counts):
            counts[int(np.argmax(counts))] -= 1
            counts[k] = 1
    return [int(c) for c in counts]


def assign_generators(keys: Sequence[str], generators: Sequence[str], seed: int) -> dict[str, str]:
    """Rotate over ``generators`` along the sorted keys (from a seeded start): balanced to +-1."""
    start = int(_rng(seed, "generators").integers(len(generators)))
    return {k: generators[(i + start) % len(generators)] for i, k in enumerate(sorted(keys))}


# ------------------------------------------------------------------ (e) encoding / manifest


def _save_atomic(img: Image.Image, path: Path, fmt: str, params: Mapping[str, int]) -> None:
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt, **params)


def save_png(img: Image.Image, path: Path) -> None:
    """The one final encoding of both classes: 8-bit RGB PNG, no metadata."""
    _save_atomic(img.convert("RGB"), path, "PNG", PNG_PARAMS)


def save_jpeg75(img: Image.Image, path: Path) -> None:
    """The common re-compression of both classes: JPEG q=75, 4:2:0, baseline."""
    _save_atomic(img.convert("RGB"), path, "JPEG", JPEG_PARAMS)


def write_manifest(rows: Iterable[Mapping[str, str]], path: Path) -> Path:
    """Write ``path,label,group,generator,source,split`` rows as CSV (atomically)."""
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n", extrasaction="raise")
    wr.writeheader()
    for r in rows:
        wr.writerow({k: r[k] for k in MANIFEST_COLUMNS})
    write_text_atomic(path, buf.getvalue(), fsync=False)
    return path


def read_manifest(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------ the builder


@dataclass(frozen=True)
class Pair:
    """One real crop and its fake partner: where it is cut (in the photo as prescaled by its
    history), its split, its generator and its pixel history."""

    photo: SourcePhoto
    index: int
    box: CropBox
    split: str
    generator: str = ""
    history: History = History("native", 1, (0, 0))

    @property
    def stem(self) -> str:
        return f"{self.photo.id}_{self.history.name}_{self.index:02d}"

    def rel(self, label: str, ext: str = "png") -> str:
        return f"images/{self.split}/{label}/{self.stem}.{ext}"


def _row(p: Pair, label: str, ext: str = "png", version: int = BENCH_VERSION) -> dict[str, str]:
    return {
        "path": p.rel(label, ext), "label": label, "group": p.photo.id,
        "generator": p.generator if label == "fake" else "", "source": p.photo.source, "split": p.split,
        "history": p.history.name, "version": str(version),
    }


def plan_pairs(photos: Sequence[SourcePhoto], spec: BenchSpec, seed: int, scales: Mapping[str, int]) -> list[Pair]:
    """Crop boxes, photo splits and generator choice for every real/fake pair (no pixels touched)."""
    split = split_photos([p.id for p in photos], spec.split_fractions, seed, {p.id: p.stratum for p in photos})
    if len(split) != len(photos):
        raise ValueError("photo ids must be unique")
    m = int(np.lcm.reduce([spec.side_multiple, *(scales[g] for g in spec.generators)]))
    pairs = [
        Pair(ph, i, b, split[ph.id], history=hist)
        for ph in photos
        for hist in spec.histories
        for i, b in enumerate(
            choose_crop_boxes(ph.size[0] // hist.prescale, ph.size[1] // hist.prescale, hist.crops_per_photo,
                              hist.side_range, seed, key=ph.id if hist.prescale == 1 else f"{ph.id}/{hist.name}",
                              multiple=m, max_overlap=hist.max_overlap)
        )
    ]
    out: list[Pair] = []
    for s in SPLITS:
        in_split = {p.stem: p for p in pairs if p.split == s}
        gens = assign_generators(list(in_split), spec.generators, seed)
        out += [replace(p, generator=gens[stem]) for stem, p in sorted(in_split.items())]
    return out


def _spec_json(spec: BenchSpec) -> dict[str, object]:
    return json.loads(json.dumps(asdict(spec)))


def build_bench(
    out: Path,
    photos: Sequence[SourcePhoto],
    spec: BenchSpec,
    seed: int,
    upscalers: Mapping[str, Upscaler],
    *,
    progress: bool = True,
) -> Path:
    """Build the benchmark under ``out`` from given photos and super-resolvers; returns the manifest.

    Work already on disk (every file is written atomically) is skipped, so a rerun resumes.
    """
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    missing = [g for g in spec.generators if g not in upscalers]
    if missing:
        raise ValueError(f"no upscaler for generators {missing}")
    meta_path = out / "bench.json"
    ident = {"spec": _spec_json(spec), "seed": seed}
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if {"spec": old.get("spec"), "seed": old.get("seed")} != ident:
            raise ValueError(f"{out} holds a benchmark built with another spec or seed; use a fresh directory")
    else:
        write_text_atomic(meta_path, json.dumps({**ident, "status": "building"}, indent=2), fsync=False)

    pairs = plan_pairs(photos, spec, seed, {g: u.scale for g, u in upscalers.items()})
    by_photo: dict[str, list[Pair]] = {}
    for p in pairs:
        by_photo.setdefault(p.photo.id, []).append(p)

    bar = tqdm(total=len(pairs), desc=f"bench {spec.name}", unit="pair", disable=not progress, smoothing=0.1)
    for photo in photos:
        _write_photo_pairs(out, photo, by_photo.get(photo.id, []), upscalers, bar)
    bar.close()
    rows = [_row(p, label, version=spec.version) for p in pairs for label in ("real", "fake")]
    manifest = write_manifest(rows, out / "manifest.csv")
    _write_jpeg75(out, [p for p in pairs if p.split == "test"], spec.version, progress)
    meta = {**ident, **_bench_meta(spec, pairs, photos, by_photo, upscalers)}
    write_text_atomic(meta_path, json.dumps(meta, indent=2), fsync=False)
    return manifest


def _write_photo_pairs(out: Path, photo: SourcePhoto, pairs: Sequence[Pair], upscalers: Mapping[str, Upscaler],
                       bar) -> None:
    """The real crop and the fake of each of one photo's pairs not yet on disk (the photo decoded once)."""
    todo = [p for p in pairs if not all((out / p.rel(l)).exists() for l in ("real", "fake"))]
    bar.update(len(pairs) - len(todo))
    if not todo:
        return
    img = photo.load()
    if img.size != photo.size:
        raise ValueError(f"{photo.id}: decoded size {img.size} != expected {photo.size}")
    scaled: dict[int, Image.Image] = {}
    for p in todo:
        if p.history.prescale not in scaled:
            scaled[p.history.prescale] = prescaled(img, p.history.prescale)
        real = scaled[p.history.prescale].crop(p.box.box)
        real_path, fake_path = out / p.rel("real"), out / p.rel("fake")
        if not real_path.exists():
            save_png(real, real_path)
        if not fake_path.exists():
            fake = make_fake(real, upscalers[p.generator])
            if p.history.match_jpeg and p.history.prescale == 1 and photo.jpeg is not None:
                fake = match_jpeg(fake, photo.jpeg, p.box.left, p.box.top)
            save_png(fake, fake_path)
        bar.update(1)


def _write_jpeg75(out: Path, test_pairs: Sequence[Pair], version: int, progress: bool) -> None:
    """One common JPEG q75 re-compression of both classes' test PNGs, with its own manifest."""
    from tqdm import tqdm

    jroot = out / "jpeg75"
    for p in tqdm(test_pairs, desc="jpeg75 test", unit="pair", disable=not progress):
        for label in ("real", "fake"):
            dst = jroot / p.rel(label, "jpg")
            if not dst.exists():
                with Image.open(out / p.rel(label)) as im:
                    save_jpeg75(im, dst)
    write_manifest([_row(p, label, "jpg", version) for p in test_pairs for label in ("real", "fake")],
                   jroot / "manifest.csv")


def _bench_meta(spec: BenchSpec, pairs: Sequence[Pair], photos: Sequence[SourcePhoto],
                by_photo: Mapping[str, list[Pair]], upscalers: Mapping[str, Upscaler]) -> dict:
    """bench.json's description of a complete build: encodings, crops, histories, generators, counts."""
    counts: dict[str, dict[str, int]] = {s: {"real": 0, "fake": 0} for s in SPLITS}
    by_history = {h.name: {s: sum(1 for p in pairs if p.split == s and p.history.name == h.name) for s in SPLITS}
                  for h in spec.histories}
    gens: dict[str, dict[str, int]] = {s: {g: 0 for g in spec.generators} for s in SPLITS}
    for p in pairs:
        counts[p.split]["real"] += 1
        counts[p.split]["fake"] += 1
        gens[p.split][p.generator] += 1
    sides = [p.box.side for p in pairs]
    photos_per_split = {s: sorted({p.photo.id for p in pairs if p.split == s}) for s in SPLITS}
    return {
        "version": spec.version,
        "status": "complete",
        "encoding": {
            "format": "PNG", "mode": "RGB", "bits": 8, **PNG_PARAMS,
            "note": "real crops and fakes are written by the same function; no metadata",
        },
        "jpeg75": {"dir": "jpeg75", "format": "JPEG", **JPEG_PARAMS, "split": "test",
                   "note": "one common re-compression of both classes' test PNGs"},
        "crops": {"offsets": "left/top never multiples of 8",
                  "sides": {str(v): sides.count(v) for v in sorted(set(sides))}},
        "fake": "area (box) downscale by the generator's factor, then super-resolve back to the crop size",
        "histories": {h.name: {**asdict(h), "pairs": by_history[h.name]} for h in spec.histories},
        "generators": {g: {"scale": upscalers[g].scale, **(
            {"dist": GENERATORS[g].dist, "version": GENERATORS[g].version} if g in GENERATORS else {})}
            for g in spec.generators},
        "counts": counts,
        "counts_by_generator": gens,
        "photos": photos_per_split,
        "photos_without_crops": sorted(p.id for p in photos if p.id not in by_photo),
    }


def build_offline_bench(
    out: Path,
    size: str = "small",
    seed: int = 0,
    *,
    num_threads: int = 1,
    progress: bool = True,
) -> Path:
    """Fetch photos and generators from the registries and build the ``size`` benchmark under ``out``.

    Layout: ``out/images/<split>/<real|fake>/<photo>_<k>.png``, ``out/manifest.csv``,
    ``out/bench.json`` and ``out/jpeg75/{images/test/..., manifest.csv}``. Returns the manifest path.
    """
    if size not in SPECS:
        raise ValueError(f"unknown benchmark size {size!r}; choose from {sorted(SPECS)}")
    spec = SPECS[size]
    photos = fetch_photos(spec.photos)
    ups = {g: ncnn_upscaler(g, num_threads=num_threads, tile=spec.tile, pad=spec.tile_pad) for g in spec.generators}
    return build_bench(Path(out), photos, spec, seed, ups, progress=progress)
