"""The fast view path (simplejpeg decode, numpy orientation, torch uint8 resize) against the Pillow path.

Measured (simplejpeg 1.9 and Pillow 13, both libjpeg-turbo; torch 2.14):

* decode, simplejpeg vs Pillow, for 4:2:0 / 4:2:2 / 4:4:4 / progressive / optimised / greyscale /
  odd-sized / restart-marker JPEGs: max |diff| 0 (identical pixels). Asserted: exactly equal.
* crops: bit-identical to the Pillow path's crops (same pixels, same boxes). Asserted: equal.
* global view from the stored array (``Decoded.global_view``) vs torch's kernel on the oriented
  image (what ``resize_global`` does for any Pillow image): identical for all 8 EXIF
  orientations. Asserted: equal.
* torch's uint8 antialiased bicubic vs Pillow's ``Image.resize(BICUBIC)``: max |diff| 1–2 grey
  levels, mean < 0.2 (under 0.01 without a transposing orientation). Asserted: max <= 2, mean < 0.3.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import glassdetect.views.build as V
from conftest import make_image, photo_array
from glassdetect.views.build import ImageError, ViewSpec, build_views, decode, open_image, orient, resize_global

pytestmark = pytest.mark.skipif(V.simplejpeg is None, reason="simplejpeg not installed: only the Pillow path exists")

RESIZE_MAX_TOL, RESIZE_MEAN_TOL = 2, 0.3
TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}


@pytest.fixture
def pillow_only(monkeypatch):
    """Run the code under test with the fast decoder switched off."""
    def use(fast: bool):
        monkeypatch.setattr(V, "FAST_DECODE", fast)
    return use


def _exif(orientation: int) -> Image.Exif:
    e = Image.Exif()
    e[0x0112] = orientation
    return e


def _pil_decode(data: bytes) -> np.ndarray:
    return np.asarray(open_image(data))


# ----------------------------------------------------------------------------------- decode

@pytest.mark.parametrize(
    "h,w,save",
    [
        (480, 640, {"quality": 90}),  # 4:2:0 (Pillow's default)
        (333, 517, {"quality": 85, "subsampling": 1}),  # 4:2:2, odd sizes (edge upsampling)
        (301, 299, {"quality": 95, "subsampling": 0}),  # 4:4:4
        (600, 400, {"quality": 80, "progressive": True}),
        (257, 383, {"quality": 75, "optimize": True}),
        (640, 480, {"quality": 92, "restart_marker_blocks": 4}),
    ],
)
def test_simplejpeg_decode_equals_pillow(h, w, save):
    buf = io.BytesIO()
    Image.fromarray(photo_array(h, w, seed=h)).save(buf, "JPEG", **save)
    data = buf.getvalue()
    d = decode(data)
    assert d.decoder == "simplejpeg"
    ref = _pil_decode(data)
    assert d.pixels.shape == ref.shape == (h, w, 3)
    assert np.array_equal(d.pixels, ref), np.abs(d.pixels.astype(int) - ref).max()


def test_greyscale_jpeg_fast_and_replicated(tmp_path):
    path = tmp_path / "g.jpg"
    make_image(path, 300, 420, mode="L", seed=1)
    d = decode(path)
    assert d.decoder == "simplejpeg" and d.pixels.shape == (300, 420, 3)
    assert np.array_equal(d.pixels, _pil_decode(path.read_bytes()))
    assert np.array_equal(d.pixels[..., 0], d.pixels[..., 2])


def test_cmyk_png_and_16bit_take_the_pillow_path(bad_images_dir):
    d, _ = bad_images_dir
    for name in ("cmyk.jpg", "good.png", "gray16.png", "palette_alpha.png", "la.png", "rgba.png"):
        dec = decode(d / name)
        assert dec.decoder == "pillow", name
        assert np.array_equal(dec.pixels, np.asarray(open_image(d / name))), name
    assert decode(d / "good.jpg").decoder == "simplejpeg"


def test_mpo_first_frame(tmp_path):
    a, b = photo_array(200, 300, seed=1), photo_array(200, 300, seed=2)
    path = tmp_path / "cam.mpo"
    Image.fromarray(a).save(path, "MPO", save_all=True, append_images=[Image.fromarray(b)], quality=90)
    assert Image.open(path).format == "MPO"
    d = decode(path)
    assert d.decoder == "simplejpeg"
    assert np.array_equal(d.pixels, _pil_decode(path.read_bytes()))


# ------------------------------------------------------------------------------ orientation

@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pillow_transpose(orientation):
    arr = photo_array(5, 7)
    want = arr if orientation == 1 else np.asarray(Image.fromarray(arr).transpose(TRANSPOSES[orientation]))
    assert np.array_equal(orient(arr, orientation), want)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("h,w", [(300, 460), (100, 90), (3, 500)])
def test_exif_orientation_fast_equals_pillow(tmp_path, orientation, h, w, pillow_only):
    path = tmp_path / "o.jpg"
    make_image(path, h, w, seed=orientation, exif=_exif(orientation))
    d = decode(path)
    assert d.decoder == "simplejpeg" and d.orientation == orientation
    ref = _pil_decode(path.read_bytes())  # Pillow: exif_transpose
    assert d.size == ref.shape[:2] and np.array_equal(d.pixels, ref)
    # global view: resized from the stored array, equal to resizing the oriented image
    assert np.array_equal(d.global_view(), resize_global(ref))
    assert np.array_equal(d.global_view(224, "lanczos"), resize_global(Image.fromarray(ref), 224, "lanczos"))
    # whole views: crops bit-identical to the Pillow path, global view identical
    spec = ViewSpec(k=3)
    fast = build_views(path, spec)
    pillow_only(False)
    slow = build_views(path, spec)
    assert fast.size == slow.size and fast.boxes == slow.boxes
    assert np.array_equal(fast.crops, slow.crops)
    assert np.array_equal(fast.global_view, slow.global_view)


# ------------------------------------------------------------------------- views, end to end

@pytest.mark.parametrize("mode", ["stratified", "grid", "random"])
def test_build_views_fast_equals_pillow_path(tmp_path, mode, pillow_only):
    path = tmp_path / "x.jpg"
    make_image(path, 1200, 900, seed=5, quality=90)
    fast = build_views(path, ViewSpec(k=5, mode=mode))
    pillow_only(False)
    slow = build_views(path, ViewSpec(k=5, mode=mode))
    assert fast.size == slow.size == (1200, 900) and fast.boxes == slow.boxes
    assert np.array_equal(fast.crops, slow.crops)
    assert np.array_equal(fast.global_view, slow.global_view)


@pytest.mark.parametrize("h,w", [(300, 400), (1000, 1500), (100, 90), (224, 224), (2000, 1200)])
@pytest.mark.parametrize("orientation", [1, 6])
def test_global_view_close_to_pillow_resize(tmp_path, h, w, orientation):
    path = tmp_path / "g.jpg"
    make_image(path, h, w, seed=h + w, exif=_exif(orientation))
    oriented = open_image(path)
    want = np.asarray(oriented.resize((224, 224), Image.Resampling.BICUBIC)).transpose(2, 0, 1).astype(int)
    got = build_views(path, ViewSpec(k=1)).global_view.astype(int)
    diff = np.abs(got - want)
    assert diff.max() <= RESIZE_MAX_TOL and diff.mean() < RESIZE_MEAN_TOL, (diff.max(), diff.mean())


def test_resize_global_accepts_any_array_view():
    arr = photo_array(400, 300)
    ref = resize_global(arr)
    assert np.array_equal(resize_global(Image.fromarray(arr)), ref)  # Pillow image: same kernel
    flipped = arr[:, ::-1]  # negative stride
    assert np.array_equal(resize_global(flipped), resize_global(np.ascontiguousarray(flipped)))
    ro = arr.copy()
    ro.flags.writeable = False
    assert np.array_equal(resize_global(ro), ref)


# ------------------------------------------------------------------------------- bad images

def test_bad_images_same_outcome_on_both_paths(bad_images_dir, pillow_only):
    d, expected = bad_images_dir
    for name, exp in expected.items():
        outcomes = []
        for fast in (True, False):
            pillow_only(fast)
            try:
                v = build_views(d / name, ViewSpec(k=2))
                outcomes.append(("ok", v.size, v.boxes, v.crops.tobytes(), v.global_view.tobytes()))
            except ImageError as exc:
                outcomes.append(("error", exc.path, exc.reason))
        assert outcomes[0] == outcomes[1], name
        assert (outcomes[0][0] == "ok") == exp.ok, name


def test_truncated_and_corrupt_jpeg_fall_back_to_pillow_errors(tmp_path):
    path = tmp_path / "x.jpg"
    make_image(path, 400, 500, seed=3)
    data = path.read_bytes()
    with pytest.raises(ImageError, match="truncated") as ei:
        decode(data[: len(data) // 2], name="half.jpg")
    assert ei.value.path == "half.jpg"
    # a corrupted entropy-coded segment: whatever Pillow says, the fast path says too
    bad = bytearray(data)
    bad[len(bad) // 2: len(bad) // 2 + 64] = b"\xff\x00" * 32
    bad = bytes(bad)
    try:
        want = ("ok", _pil_decode(bad).tobytes())
    except ImageError as exc:
        want = ("error", exc.reason)
    try:
        got = ("ok", np.ascontiguousarray(decode(bad).pixels).tobytes())
    except ImageError as exc:
        got = ("error", exc.reason)
    assert got == want


def test_pixel_limit_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    make_image(path, 1100, 1000, seed=7)

    def boom(*a, **k):  # the limit must be enforced from the header, before any pixel is decoded
        raise AssertionError("decoded")
    monkeypatch.setattr(V.simplejpeg, "decode_jpeg", boom)
    with pytest.raises(ImageError, match="pixel limit") as ei:
        decode(path, max_pixels=1_000_000)
    assert str(path) in str(ei.value)


def test_environment_switch_selects_pillow(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "x.jpg"
    make_image(path, 64, 64)
    code = f"import glassdetect.views.build as V; print(V.FAST_DECODE, V.decode({str(path)!r}).decoder)"
    import os

    env = {**os.environ, "GLASSDETECT_DECODER": "pillow"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "pillow"]


def test_scratch_buffer_never_leaks_into_results(tmp_path):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    make_image(a, 500, 600, seed=1)
    make_image(b, 400, 700, seed=2)  # smaller: decoded into the same (larger) scratch buffer
    va = build_views(a, ViewSpec(k=3))
    want = (va.crops.copy(), va.global_view.copy())
    vb = build_views(b, ViewSpec(k=3))
    assert np.array_equal(va.crops, want[0]) and np.array_equal(va.global_view, want[1])  # not overwritten
    scratch = V._scratch.buf
    for v in (va, vb):
        assert not np.shares_memory(v.crops, scratch) and not np.shares_memory(v.global_view, scratch)
    ref = decode(b)  # the public decode never uses the scratch buffer
    assert not np.shares_memory(ref.stored, scratch)
    assert np.array_equal(vb.crops, V.cut_crops(ref.pixels, vb.boxes))


def test_scratch_is_per_thread(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    paths = []
    for i in range(6):
        paths.append(tmp_path / f"{i}.jpg")
        make_image(paths[-1], 300 + 20 * i, 500, seed=i)
    want = [build_views(p, ViewSpec(k=2)) for p in paths]
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda p: build_views(p, ViewSpec(k=2)), paths * 3))
    for i, v in enumerate(got):
        w = want[i % len(paths)]
        assert np.array_equal(v.crops, w.crops) and np.array_equal(v.global_view, w.global_view)
