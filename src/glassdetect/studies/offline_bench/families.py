"""Offline benchmark, the generator families beyond SPAN and realesr-animevideov3: Real-CUGAN,
waifu2x (CUNet and UpConv-7) and SRMD, run on the CPU through plain ``ncnn``.

Their networks do not take the ``data`` -> ``output`` RGB tile of :class:`.superres.NcnnRunner`:
each family has its own blob names, loses a border of its input ("shrink"), wants its tile core
aligned, pads the image edge its own way, and SRMD takes extra input channels. A
:class:`TileRecipe` holds those facts, written from the pre- and post-processing of nihui's
``realcugan-ncnn-vulkan``, ``waifu2x-ncnn-vulkan`` and ``srmd-ncnn-vulkan`` (their CPU paths and
compute shaders); :func:`recipe_for` says which recipe a model gets, :class:`RecipeRunner` runs one
padded tile, and :func:`recipe_tiled_upscale` tiles an image with it.

What the upstream programs do, per family (``prepadding`` = context pixels added on every side):

* **Real-CUGAN** (``in0`` -> ``out0``): RGB / 255 in, the network output x 255 out; prepadding
  18 / 14 / 19 for x2 / x3 / x4, exactly the border the network crops (128 px in -> 184 / 300 /
  360 out); the image edge is reflect-padded (``copy_make_border`` type 2: the edge pixel is not
  repeated); the tile core is padded on the right/bottom to a multiple of 2 (x2, x4) or 4 (x3); the
  x4 models output a residual added to the nearest-neighbour upsampled input. The ``models-se`` and
  ``models-pro`` networks have four squeeze-excitation blocks whose global average pools
  (``gap0``..``gap3``) see the whole input: see :func:`recipe_tiled_upscale` for how tiles share
  them.
* **waifu2x** (``Input1`` -> ``Eltwise4``, CUNet and UpConv-7 alike): RGB / 255 in, x 255 out;
  prepadding 18 (CUNet x2) or 7 (UpConv-7), again exactly the network's border loss (128 -> 184 /
  228); the image edge is replicated (``BORDER_REPLICATE``); the core is aligned to 2.
* **SRMD** (``input`` -> ``output``): the network keeps its size (zero-padded 3x3 convolutions,
  then a pixel shuffle); prepadding 12 (its receptive-field radius), the image edge replicated (the
  shader clamps coordinates). Its input is RGB / 255, then 15 constant maps holding the fixed PCA
  code of the one blur kernel upstream supports, then -- ``srmd_x*`` models only -- one map of
  ``noise / 255`` (noise level 0..10, upstream's ``-n``): 19 channels; the noise-free ``srmdnf_x*``
  models (``-n -1``) take the first 18.

Every family rounds as upstream does: ``floor(v * 255 + 0.5)`` clamped to 0..255.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The 15-number PCA code of the degradation kernel srmd-ncnn-vulkan feeds SRMD (one constant map
# per number; upstream's preprocessing shader has no way to choose another kernel).
SRMD_KERNEL_CODE: tuple[float, ...] = (
    -1.12360956e-08, -1.36899159e-08, 1.85637958e-02, 2.86066886e-08, 3.35292965e-02,
    8.37272935e-08, -2.54424009e-07, -3.16234976e-02, -1.35169253e-02, -1.10466090e-08,
    3.84753793e-02, 3.79465739e-08, -2.44916752e-01, -8.02213490e-01, -5.40549755e-01,
)

# family -> the noise levels (upstream's "-n") its models exist for; -1 = no denoising input
NOISE_LEVELS: dict[str, tuple[int, ...]] = {
    "realcugan": (-1, 0, 1, 2, 3),  # -1 conservative, 0 no-denoise, k denoise{k}x
    "waifu2x-cunet": (-1, 0, 1, 2, 3),  # -1 scale2.0x_model, k noise{k}_scale2.0x_model
    "waifu2x-upconv7": (-1, 0, 1, 2, 3),
    "srmd": tuple(range(-1, 11)),  # -1 srmdnf_x*, k srmd_x* with a noise map of k / 255
}
_SE_GAPS = ("gap0", "gap1", "gap2", "gap3")


@dataclass(frozen=True)
class TileRecipe:
    """How one ncnn model wants its tiles (sizes in input pixels).

    ``shrink``: border the network loses on every side (its output is
    ``(in - 2 * shrink) * scale``); ``context``: upstream's ``prepadding`` (>= ``shrink``);
    ``align``: the network's core (input minus ``2 * shrink``) must be a multiple of it;
    ``border``: how the image edge is padded (an ``np.pad`` mode); ``maps``: constant channels
    appended to RGB; ``residual``: the output is added to the nearest-upsampled input; ``gaps``:
    global-pool blobs that tiles share (see :func:`recipe_tiled_upscale`).
    """

    in_blob: str
    out_blob: str
    shrink: int
    context: int
    align: int = 1
    border: str = "edge"
    maps: tuple[float, ...] = ()
    residual: bool = False
    gaps: tuple[str, ...] = ()


_CUGAN_PREPADDING = {2: 18, 3: 14, 4: 19}
_WAIFU2X_PREPADDING = {"waifu2x-cunet": 18, "waifu2x-upconv7": 7}


def recipe_for(family: str, scale: int, noise: int | None, model: str = "") -> TileRecipe:
    """The tiling recipe upstream uses for ``model`` (its path under ``models/``) of ``family``."""
    if family == "realcugan":
        if scale not in _CUGAN_PREPADDING:
            raise ValueError(f"Real-CUGAN has no x{scale} models")
        pad = _CUGAN_PREPADDING[scale]
        gaps = _SE_GAPS if model.startswith(("models-se/", "models-pro/")) else ()
        return TileRecipe("in0", "out0", pad, pad, 4 if scale == 3 else 2, "reflect", residual=scale == 4, gaps=gaps)
    if family in _WAIFU2X_PREPADDING:
        if scale != 2:
            raise ValueError(f"{family} models here are x2 only, not x{scale}")
        pad = _WAIFU2X_PREPADDING[family]
        return TileRecipe("Input1", "Eltwise4", pad, pad, 2, "edge")
    if family == "srmd":
        if noise not in NOISE_LEVELS["srmd"]:
            raise ValueError(f"SRMD noise level must be one of -1..10, not {noise}")
        maps = SRMD_KERNEL_CODE + (() if noise == -1 else (noise / 255.0,))
        return TileRecipe("input", "output", 0, 12, 1, "edge", maps)
    raise ValueError(f"no tiling recipe for family {family!r}")


class RecipeRunner:
    """One ncnn model on the CPU, fed as its :class:`TileRecipe` says.

    ``runner(chw)`` takes a padded RGB tile (CHW float32 in [0, 1]), appends the recipe's constant
    maps and returns the output blob (CHW float32, ``(in - 2 * shrink) * scale``);
    :meth:`extract` returns any blob, with other blobs (shared global pools) given.
    """

    def __init__(self, param: Path, model: Path, recipe: TileRecipe, num_threads: int = 1) -> None:
        import ncnn  # optional dependency (extra "bench")

        self._ncnn = ncnn
        self.recipe = recipe
        self.net = ncnn.Net()
        self.net.opt.use_vulkan_compute = False
        self.net.opt.num_threads = num_threads
        if self.net.load_param(str(param)) != 0 or self.net.load_model(str(model)) != 0:
            raise RuntimeError(f"ncnn could not load {param} / {model}")

    def extract(self, chw: np.ndarray, blob: str, given: dict[str, np.ndarray] | None = None) -> np.ndarray:
        r = self.recipe
        if r.maps:
            maps = np.broadcast_to(np.asarray(r.maps, np.float32)[:, None, None], (len(r.maps), *chw.shape[1:]))
            chw = np.concatenate([chw, maps])
        # ncnn.Mat(array) borrows the buffer: keep every array referenced until the output is copied
        bufs = [np.ascontiguousarray(chw, dtype=np.float32)]
        bufs += [np.ascontiguousarray(v, dtype=np.float32) for v in (given or {}).values()]
        mats = [self._ncnn.Mat(b) for b in bufs]
        ex = self.net.create_extractor()
        for name, mat in zip((r.in_blob, *(given or {})), mats):
            ex.input(name, mat)
        ret, out = ex.extract(blob)
        if ret != 0:
            raise RuntimeError(f"ncnn extract of {blob!r} failed with code {ret}")
        res = np.array(out, dtype=np.float32, copy=True)
        del ex, mats, bufs
        return res

    def __call__(self, chw: np.ndarray, given: dict[str, np.ndarray] | None = None) -> np.ndarray:
        return self.extract(chw, self.recipe.out_blob, given)


def _spans(n: int, tile: int, align: int) -> list[tuple[int, int]]:
    """Split [0, n) into about ceil(n / tile) near-equal pieces starting at multiples of ``align``
    (so every tile meets the network's down-sampling grid in the same phase)."""
    k = max(1, -(-n // tile))
    edges = (np.linspace(0, n, k + 1) / align).round().astype(int) * align
    edges[-1] = n
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _extent(lo: int, hi: int, n: int, r: TileRecipe, context: int) -> tuple[int, int, int, int]:
    """For the tile core [lo, hi) of an axis of length n: (real pixels before, padded before, real
    after, padded after).

    A tile takes up to ``context`` real pixels on each side; where the image ends, what is missing
    of upstream's ``prepadding`` is padded. The extension before the core keeps the tile's origin
    in the phase a one-tile run has (-prepadding modulo ``align``); the one after it grows until
    the network's core is a multiple of ``align`` (real pixels first, as upstream).
    """
    before = max(min(context, lo), r.context)
    before += (r.context - before) % r.align
    after = max(min(context, n - hi), r.context)
    after += (-(before + (hi - lo) + after - 2 * r.shrink)) % r.align
    real_lo, real_hi = min(before, lo), min(after, n - hi)
    return real_lo, before - real_lo, real_hi, after - real_hi


def recipe_tiled_upscale(
    img: np.ndarray,
    runner: RecipeRunner,
    scale: int,
    tile: int = 128,
    context: int = 0,
) -> np.ndarray:
    """Super-resolve an HxWx3 uint8 image tile by tile as ``runner.recipe`` says.

    Memory is bounded by one padded tile. Each ``tile`` x ``tile`` core is run with
    ``max(context, recipe.context)`` real pixels of context on every side where the image has them
    and upstream's edge padding where it has not; only the core's output is kept. With one tile
    covering the image this is exactly upstream's processing.

    Squeeze-excitation models (``recipe.gaps``, Real-CUGAN ``se``/``pro``) pool each block over
    their whole input, so separate tiles would each get their own channel weights and show seams.
    With more than one tile the pools are synchronised as upstream's ``-c 1`` ("syncgap") mode
    does: every tile is run up to ``gap0``, the tiles' ``gap0`` vectors are averaged and given to
    every tile for ``gap1``, and so on; the final pass gives all four. That costs about two more
    passes per tile. (Plain per-tile pooling, upstream's ``-c 0``, is what one tile reduces to.)
    """
    r = runner.recipe
    h, w, _ = img.shape
    ctx = max(context, r.context)
    x = img.astype(np.float32).transpose(2, 0, 1) / 255.0
    tiles = [
        ((y0, y1, _extent(y0, y1, h, r, ctx)), (x0, x1, _extent(x0, x1, w, r, ctx)))
        for y0, y1 in _spans(h, tile, r.align)
        for x0, x1 in _spans(w, tile, r.align)
    ]

    def tile_input(ty: tuple, tx: tuple) -> np.ndarray:
        (y0, y1, ey), (x0, x1, ex) = ty, tx
        crop = x[:, y0 - ey[0] : y1 + ey[2], x0 - ex[0] : x1 + ex[2]]
        return np.ascontiguousarray(np.pad(crop, ((0, 0), (ey[1], ey[3]), (ex[1], ex[3])), mode=r.border))

    shared: dict[str, np.ndarray] = {}
    if len(tiles) > 1:
        for gap in r.gaps:
            shared[gap] = np.mean([runner.extract(tile_input(*t), gap, shared) for t in tiles], axis=0)
    out = np.empty((3, h * scale, w * scale), np.float32)
    for ty, tx in tiles:
        (y0, y1, ey), (x0, x1, ex) = ty, tx
        inp = tile_input(ty, tx)
        res = runner(inp, shared)
        want = (3, (inp.shape[1] - 2 * r.shrink) * scale, (inp.shape[2] - 2 * r.shrink) * scale)
        if res.shape != want:
            raise ValueError(f"SR tile returned {res.shape}, expected {want}")
        oy, ox = (ey[0] + ey[1] - r.shrink) * scale, (ex[0] + ex[1] - r.shrink) * scale
        core = res[:, oy : oy + (y1 - y0) * scale, ox : ox + (x1 - x0) * scale]
        if r.residual:
            core = core + x[:, y0:y1, x0:x1].repeat(scale, axis=1).repeat(scale, axis=2)
        out[:, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = core
    return np.clip(np.floor(out * 255.0 + 0.5), 0, 255).astype(np.uint8).transpose(1, 2, 0).copy()
