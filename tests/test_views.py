"""Decoding and views (glassdetect.views.build) against straightforward reference computations.

Measured tolerances (Pillow 13, torch 2.14, synthetic photo-like images):

* global view vs ``F.interpolate(float64, (224, 224), mode="bicubic", antialias=True)`` of the
  decoded image, rounded: mean |diff| 0.07–0.19 grey levels, max 1 (0 for a 224×224 image).
  Asserted: mean < 0.5, max <= 2.
* the baseline's global view (``need_crops=False``) vs GLASS's: byte for byte (one decode path;
  the reduced-scale JPEG decode the baseline once used differed by mean 0.22, max 2).
* crops: exactly equal to slicing the decoded array.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import make_image, sha256
from glassdetect.data.splits import Sample
from glassdetect.pipeline import ViewDataset, collate
from glassdetect.views.build import ImageError, ViewSpec, build_views, content_id, cut_crops, open_image, resize_global

GLOBAL_MEAN_TOL, GLOBAL_MAX_TOL = 0.5, 2


def _reference_global(decoded: np.ndarray, size: int = 224) -> np.ndarray:
    t = torch.from_numpy(np.array(decoded, dtype=np.float64)).permute(2, 0, 1)[None]
    r = F.interpolate(t, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return r.round().clamp(0, 255)[0].numpy()


def _decoded(path) -> np.ndarray:
    return np.asarray(open_image(path))


# ------------------------------------------------------------------------------ global view

@pytest.mark.parametrize(
    "h,w,suffix",
    [(300, 400, ".png"), (700, 500, ".jpg"), (1000, 1500, ".png"), (224, 224, ".png"), (100, 90, ".png"), (2000, 1200, ".jpg")],
)
def test_global_view_matches_torch_antialiased_bicubic(tmp_path, h, w, suffix):
    path = tmp_path / f"img{suffix}"
    make_image(path, h, w, seed=h + w)
    v = build_views(path, ViewSpec(k=2))
    assert v.global_view.dtype == np.uint8 and v.global_view.shape == (3, 224, 224)
    assert v.size == (h, w)
    diff = np.abs(v.global_view.astype(np.float64) - _reference_global(_decoded(path)))
    assert diff.mean() < GLOBAL_MEAN_TOL, diff.mean()
    assert diff.max() <= GLOBAL_MAX_TOL, diff.max()


# ------------------------------------------------------------------------------------ crops

@pytest.mark.parametrize("mode", ["stratified", "grid", "random"])
def test_crops_equal_slices_of_decoded_array(tmp_path, mode):
    path = tmp_path / "img.jpg"
    make_image(path, 900, 700, seed=3)
    decoded = _decoded(path)
    v = build_views(path, ViewSpec(k=5, mode=mode))
    assert v.crops.dtype == np.uint8
    assert v.crops.shape == (len(v.boxes), 3, 224, 224)
    assert len(v.boxes) == (9 if mode == "grid" else 5)
    for crop, (t, l) in zip(v.crops, v.boxes):
        assert np.array_equal(crop, decoded[t : t + 224, l : l + 224].transpose(2, 0, 1))


def test_cut_crops_zero_pads_outside():
    pixels = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    crops = cut_crops(pixels, [(0, 0), (-2, 3)], patch=4)
    assert np.array_equal(crops[0], pixels[:4, :4].transpose(2, 0, 1))
    assert not crops[1][:, :2].any()
    assert np.array_equal(crops[1][:, 2:, :], pixels[:2, 3:7].transpose(2, 0, 1))


# ------------------------------------------------- one global-view path for both architectures

@pytest.mark.parametrize("orientation", [1, 6])
def test_baseline_global_view_equals_glass_byte_for_byte(tmp_path, orientation):
    """A large JPEG: the baseline sees exactly GLASS's global view (no reduced-scale decode for one of them)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "large.jpg"
    make_image(path, 2000, 3000, seed=4, quality=90, exif=exif)
    shown = (2000, 3000) if orientation == 1 else (3000, 2000)
    glass = build_views(path, ViewSpec(k=4))
    for spec in (ViewSpec(need_crops=False), ViewSpec(need_crops=False, interpolation="bilinear")):
        base = build_views(path, spec)
        ref = glass if spec.interpolation == "bicubic" else build_views(path, ViewSpec(k=1, interpolation="bilinear"))
        assert base.size == glass.size == shown
        assert base.crops.shape == (0, 3, 224, 224) and base.boxes == []
        assert base.global_view.dtype == np.uint8 and base.global_view.tobytes() == ref.global_view.tobytes()


def test_baseline_global_view_is_the_full_decode_resized(tmp_path):
    path = tmp_path / "large.jpg"
    make_image(path, 1800, 2400, seed=9, quality=85)
    base = build_views(path.read_bytes(), ViewSpec(need_crops=False, global_size=112))
    assert np.array_equal(base.global_view, resize_global(open_image(path), 112))  # not a draft decode of it
    assert np.array_equal(base.global_view, _baseline_reference(path, 112))


def _baseline_reference(path, size: int) -> np.ndarray:
    """Full Pillow decode (no draft), torch's uint8 antialiased bicubic: what both architectures see."""
    with Image.open(path) as im:
        arr = np.array(im.convert("RGB"))
    x = torch.from_numpy(arr).permute(2, 0, 1)[None]
    return F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)[0].numpy()


def test_png_baseline_equals_full_decode(tmp_path):
    path = tmp_path / "x.png"
    make_image(path, 600, 800, seed=6)
    assert np.array_equal(build_views(path, ViewSpec(need_crops=False)).global_view, build_views(path, ViewSpec()).global_view)


# ------------------------------------------------------------------------------- bad images

def test_bad_images_decode_or_raise(bad_images_dir):
    d, expected = bad_images_dir
    assert sorted(p.name for p in d.iterdir()) == sorted(expected)
    for name, exp in expected.items():
        path = d / name
        if exp.ok:
            img = open_image(path)
            arr = np.asarray(img)
            assert img.mode == "RGB" and arr.dtype == np.uint8 and arr.shape == (*exp.size, 3), name
            v = build_views(path, ViewSpec(k=3))
            assert v.size == exp.size and v.global_view.shape == (3, 224, 224), name
        else:
            for call in (lambda: open_image(path), lambda: build_views(path, ViewSpec())):
                with pytest.raises(ImageError) as ei:
                    call()
                assert ei.value.path == str(path)
                assert str(path) in str(ei.value), name  # the message names the file
                assert exp.reason in ei.value.reason.lower(), (name, ei.value.reason)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        build_views(tmp_path / "nope.jpg", ViewSpec())
    with pytest.raises(ImageError, match="file not found"):
        open_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="is a directory"):
        build_views(tmp_path, ViewSpec())


def test_cmyk_jpeg_converted_to_rgb(bad_images_dir):
    d, _ = bad_images_dir
    assert Image.open(d / "cmyk.jpg").mode == "CMYK"
    rgb = make_image(d.parent / "same.png", 240, 300, seed=4)  # what cmyk.jpg was made from
    diff = np.abs(_decoded(d / "cmyk.jpg").astype(float) - rgb)
    assert diff.mean() < 4  # JPEG loss only; an un-inverted CMYK would be off by ~100+


def test_16bit_png_is_scaled_not_clipped(bad_images_dir):
    d, _ = bad_images_dir
    raw = np.asarray(Image.open(d / "gray16.png"))
    assert raw.dtype == np.uint16 and raw.max() > 60000
    out = _decoded(d / "gray16.png")
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
    assert out.min() == 0 and out.max() == 255
    assert (out == 255).mean() < 0.01  # clipping would saturate almost everything
    assert np.abs(out[..., 0].astype(int) - np.rint(raw * (255 / 65535))).max() <= 1
    # The row means rise monotonically with the gradient.
    assert np.all(np.diff(out[..., 0].mean(axis=1)) >= -0.5)


def test_palette_alpha_la_rgba_keep_their_colours(bad_images_dir):
    d, _ = bad_images_dir
    pa = Image.open(d / "palette_alpha.png")
    assert pa.mode == "P" and "transparency" in pa.info
    assert np.array_equal(_decoded(d / "palette_alpha.png"), np.asarray(pa.convert("RGBA"))[..., :3])
    la = np.asarray(Image.open(d / "la.png"))
    assert np.array_equal(_decoded(d / "la.png"), np.repeat(la[..., :1], 3, axis=2))
    rgba = np.asarray(Image.open(d / "rgba.png"))
    assert np.array_equal(_decoded(d / "rgba.png"), rgba[..., :3])  # alpha dropped, colour kept


def test_one_pixel_image(bad_images_dir):
    d, _ = bad_images_dir
    px = _decoded(d / "one_pixel.png")[0, 0]
    v = build_views(d / "one_pixel.png", ViewSpec(k=2))
    assert v.boxes == [(0, 0), (0, 0)]
    assert np.all(v.global_view == px[:, None, None])
    expected = np.zeros((3, 224, 224), np.uint8)
    expected[:, 0, 0] = px
    assert all(np.array_equal(c, expected) for c in v.crops)


def test_exif_orientation_6_rotates_clockwise(bad_images_dir, tmp_path):
    d, _ = bad_images_dir
    stored = np.asarray(Image.open(d / "exif_rot6.jpg").convert("RGB"))  # no orientation applied
    assert stored.shape == (240, 360, 3)
    assert np.array_equal(_decoded(d / "exif_rot6.jpg"), np.rot90(stored, k=-1))
    # Semantics: a red block at the stored top-left shows at the displayed top-right.
    arr = np.zeros((200, 300, 3), np.uint8)
    arr[:40, :60] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "marker.png", exif=exif)
    out = _decoded(tmp_path / "marker.png")
    assert out.shape == (300, 200, 3)
    assert np.array_equal(out[:60, -40:], np.broadcast_to(np.array([255, 0, 0], np.uint8), (60, 40, 3)))
    assert not out[60:].any() and not out[:, :-40].any()
    v = build_views(tmp_path / "marker.png", ViewSpec(k=1, mode="grid"))
    assert v.size == (300, 200)


def test_pixel_limit(tmp_path):
    path = tmp_path / "big.png"
    make_image(path, 1100, 1000, seed=7)
    with pytest.raises(ImageError, match="pixel limit") as ei:
        open_image(path, max_pixels=1_000_000)
    assert str(path) in str(ei.value)
    with pytest.raises(ImageError, match="pixel limit"):
        build_views(path, ViewSpec(max_pixels=1_000_000))
    assert build_views(path, ViewSpec(max_pixels=1_100_000)).size == (1100, 1000)  # at the limit: fine
    with pytest.raises(ImageError, match="pixel limit"):
        build_views(path, ViewSpec(max_pixels=1_099_999))


# The host process's own setting for Pillow's decompression-bomb guard, made tiny so that every test
# image is over it (a warning above 10 000 pixels, an error above 20 000).
HOST_LIMIT = 10_000
GUARD_FORMATS = ("jpg", "png", "tif", "webp", "gif")  # JPEG/PNG: Image.open's check; TIFF/GIF: load; WebP: open


@pytest.fixture
def host_guard(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", HOST_LIMIT)


def test_importing_views_leaves_pillows_guard_on():
    import subprocess
    import sys

    code = ("from PIL import Image; before = Image.MAX_IMAGE_PIXELS; import glassdetect.views.build, glassdetect.inference.api; "
            "assert before is not None and Image.MAX_IMAGE_PIXELS == before, (before, Image.MAX_IMAGE_PIXELS)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("fmt", GUARD_FORMATS)
def test_our_limit_not_pillows_decides(tmp_path, host_guard, fmt):
    """Our per-call limit applies on every path, with our message, whatever the host set for Pillow's
    guard; that setting is untouched and still protects the host's own Image.open."""
    import warnings

    path = tmp_path / f"x.{fmt}"
    Image.fromarray(np.full((150, 200, 3), 128, np.uint8)).save(path)  # 30 000 px: over 2 × HOST_LIMIT
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        assert open_image(path, max_pixels=1_000_000).size == (200, 150)
        assert open_image(path.read_bytes(), max_pixels=1_000_000, draft_size=64).size[0] >= 64
        assert build_views(path, ViewSpec(k=1, patch=32, global_size=32, max_pixels=1_000_000)).size == (150, 200)
        from glassdetect.views.build import decode

        assert decode(path, max_pixels=1_000_000).size == (150, 200)
        for under in (29_999, 5_000):  # over our limit: our check and message, above or below Pillow's
            with pytest.raises(ImageError, match=r"200×150 = 0\.0 MP exceeds the pixel limit"):
                open_image(path, max_pixels=under)
            with pytest.raises(ImageError, match="exceeds the pixel limit"):
                build_views(path, ViewSpec(k=1, patch=32, global_size=32, max_pixels=under))
    assert Image.MAX_IMAGE_PIXELS == HOST_LIMIT
    with pytest.raises(Image.DecompressionBombError), Image.open(path) as im:
        im.load()


def test_lifting_pillows_guard_is_per_decode_and_thread_safe(tmp_path, host_guard):
    from concurrent.futures import ThreadPoolExecutor

    paths = []
    for i, fmt in enumerate(("tif", "gif", "png")):
        paths.append(tmp_path / f"x{i}.{fmt}")
        Image.fromarray(np.full((150 + i, 200, 3), 40 * i, np.uint8)).save(paths[-1])
    with ThreadPoolExecutor(4) as pool:
        sizes = list(pool.map(lambda p: open_image(p, max_pixels=1_000_000).size, paths * 8))
    assert sizes == [(200, 150 + i) for i in range(3)] * 8
    assert Image.MAX_IMAGE_PIXELS == HOST_LIMIT


def test_dataset_and_collate_report_bad_files_and_never_touch_them(bad_images_dir):
    d, expected = bad_images_dir
    names = sorted(expected)
    before = {n: (sha256(d / n), os.stat(d / n).st_mtime_ns) for n in names}
    samples = [Sample(str(d / n), i % 2, n, n) for i, n in enumerate(names)]
    batches = []
    for train in (False, True):
        for spec in (ViewSpec(k=3), ViewSpec(need_crops=False), ViewSpec(mode="grid")):
            ds = ViewDataset(samples, spec, train=train)
            batch = collate([ds[i] for i in range(len(ds))])
            batches.append(batch)
            good = [i for i, n in enumerate(names) if expected[n].ok]
            assert batch["index"].tolist() == good
            assert batch["global_view"].shape == (len(good), 3, 224, 224)
            assert batch["global_view"].dtype == torch.uint8
            assert batch["label"].tolist() == [samples[i].label for i in good]
            errors = {path: reason for _, path, reason in batch["errors"]}
            assert sorted(errors) == sorted(str(d / n) for n in names if not expected[n].ok)
            for n in names:
                if not expected[n].ok:
                    assert expected[n].reason in errors[str(d / n)].lower()
    # the user's files are untouched: same bytes, same mtime, nothing added
    assert {n: (sha256(d / n), os.stat(d / n).st_mtime_ns) for n in names} == before
    assert sorted(p.name for p in d.iterdir()) == names


def test_build_views_from_bytes_matches_path(tmp_path):
    path = tmp_path / "x.jpg"
    make_image(path, 500, 600, seed=8)
    data = path.read_bytes()
    a, b = build_views(path, ViewSpec()), build_views(data, ViewSpec())
    assert a.boxes == b.boxes and np.array_equal(a.crops, b.crops) and np.array_equal(a.global_view, b.global_view)
    assert content_id(data) == content_id(path.read_bytes()) != content_id(data + b"\0")
    with pytest.raises(ImageError) as ei:
        build_views(b"garbage", ViewSpec(), name="upload.jpg")
    assert ei.value.path == "upload.jpg"
