"""glassdetect.views.degrade: pure uint8 -> uint8 degradations, the spec grammar, presets and sweeps."""
import io
import math
import pickle

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from glassdetect.views import degrade as D
from glassdetect.views import imageops
from glassdetect.views.degrade import AUGMENT_PRESETS, SWEEP_PRESETS, Op, parse, sweep

from conftest import photo_array

# ITU-T T.81 Annex K luminance / chrominance tables (natural order), scaled by libjpeg's quality rule
_LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
         14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
         49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
_CHROMA = [17, 18, 24, 47] + [99] * 4 + [18, 21, 26, 66] + [99] * 4 + [24, 26, 56] + [99] * 5 + [47, 66] + [99] * 38


def _ijg_table(base, q):
    scale = 5000 // q if q < 50 else 200 - 2 * q
    return [min(max((b * scale + 50) // 100, 1), 255) for b in base]


@pytest.fixture(scope="module")
def img():
    return photo_array(96, 128, seed=7)


def _noisy(h=64, w=80, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------ grammar

def test_parse_canonical_names_round_trip():
    cases = {
        "": "none", "none": "none", " NONE ": "none",
        "jpeg:q=75": "jpeg:q=75",
        "jpeg:q=75.0,sub=420": "jpeg:q=75",  # default dropped, number compact
        "jpeg:sub=444,q=075,p=0.50": "jpeg:q=75,sub=444,p=0.5",  # canonical key order
        "blur:sigma=0.50-3.0": "blur:sigma=0.5-3",
        "blur:sigma=2-2": "blur:sigma=2",  # a range with equal ends is a number
        "resize:kernel=area,long=2048": "resize:long=2048,kernel=area",
        "resize:f=0.5,kernel=bicubic": "resize:f=0.5",
        "noise:sigma=1e-3,p=1": "noise:sigma=0.001",
        "social:p=0.2": "social:p=0.2",
        "standard": AUGMENT_PRESETS["standard"],
        "standard+noise:sigma=2": AUGMENT_PRESETS["standard"] + "+noise:sigma=2",
    }
    for spec, name in cases.items():
        d = parse(spec)
        assert d.name == name, spec
        assert parse(d.name) == d, spec
    assert parse("jpeg:q=30-100").ops == (Op("jpeg", (("q", (30.0, 100.0)),)),)
    assert parse("blur:sigma=2").ops == (Op("blur", (("sigma", 2.0),)),)
    assert parse("") == parse("none") == parse(None) == D.IDENTITY and D.IDENTITY.is_identity
    assert parse("blur:sigma=0").is_identity and parse("jpeg:q=90,p=0").is_identity
    assert not parse("jpeg:q=100").is_identity and not parse("blur:sigma=0-1").is_identity
    d = parse("strong")
    assert pickle.loads(pickle.dumps(d)) == d  # DataLoader workers


@pytest.mark.parametrize("spec, bad", [
    ("jpg:q=5", "'jpg'"),
    ("jpeg:quality=5", "'quality'"),
    ("jpeg", "needs q="),
    ("jpeg:q=abc", "q='abc'"),
    ("jpeg:q=150", "q='150'"),
    ("jpeg:q=75.5", "q='75.5'"),
    ("jpeg:q=100-30", "q='100-30'"),
    ("jpeg:q=75,sub=411", "sub='411'"),
    ("resize:f=0", "f='0'"),
    ("resize", "exactly one of f="),
    ("resize:f=0.5,long=100", "exactly one of f="),
    ("blur:sigma=1,p=2", "p='2'"),
    ("blur:sigma=1,p=0.1-0.5", "p='0.1-0.5'"),
    ("blur:sigma=1,sigma=2", "sigma given twice"),
    ("blur:sigma=1++jpeg:q=5", "empty step"),
    ("social,p=0.2", "social:p=0.5"),
    ("jpeg:q", "'q'"),
])
def test_parse_errors_name_the_bad_part(spec, bad):
    with pytest.raises(ValueError) as exc:
        parse(spec)
    assert bad in str(exc.value), str(exc.value)


def test_every_preset_parses():
    for name, spec in AUGMENT_PRESETS.items():
        assert parse(name) == parse(spec)
        assert parse(parse(name).name) == parse(name)
    assert parse("strong").kinds == ("resize", "blur", "noise", "webp", "jpeg", "social")
    std = parse("standard").ops
    assert std == (Op("blur", (("sigma", (0.0, 3.0)),), 0.5), Op("jpeg", (("q", (30.0, 100.0)),), 0.5))
    assert set(parse("standard").ops) <= set(parse("strong").ops)


def test_sweep_presets_have_the_stated_points():
    labels = {name: [p.label for p in sweep(name)] for name in SWEEP_PRESETS}
    assert labels["univfd"] == ["clean"] + [f"jpeg q{q}" for q in range(100, 29, -10)] + [f"blur σ{s}" for s in range(5)]
    assert labels["sidbench"] == ["clean", "jpeg q95", "jpeg q90", "jpeg q50", "jpeg q30", "blur σ2", "blur σ4",
                                  "blur σ2 + jpeg q50"]
    assert labels["genimage"] == ["clean", "jpeg q65", "jpeg q30", "blur σ3", "blur σ5", "resize ×0.5", "resize ×0.25"]
    assert labels["social"] == ["clean", "social"]
    assert labels["demo"] == ["clean", "jpeg q95", "jpeg q75", "jpeg q50", "blur σ1", "blur σ2", "resize ×0.5", "social"]
    pts = sweep("univfd")
    assert pts[0].family == "clean" and pts[0].degradation.is_identity and math.isnan(pts[0].strength)
    assert [(p.family, p.strength) for p in pts[1:3]] == [("jpeg", 100.0), ("jpeg", 90.0)]
    assert pts[-5].label == "blur σ0" and pts[-5].degradation.is_identity  # reusable as the clean result
    sid = sweep("sidbench")[-1]
    assert sid.family == "blur+jpeg" and math.isnan(sid.strength) and sid.degradation.kinds == ("blur", "jpeg")
    assert sweep("social")[1].family == "social" and math.isnan(sweep("social")[1].strength)
    for p in (pt for name in SWEEP_PRESETS for pt in sweep(name)):
        assert parse(p.degradation.name) == p.degradation


def test_sweep_from_a_list_keeps_order_drops_duplicates_and_clean():
    pts = sweep("jpeg:q=50 ; clean; genimage; jpeg:q=050; noise:sigma=3; resize:long=64")
    assert [p.label for p in pts] == ["clean", "jpeg q50", "jpeg q65", "jpeg q30", "blur σ3", "blur σ5", "resize ×0.5",
                                      "resize ×0.25", "noise σ3", "resize ≤64"]
    assert (pts[-1].family, pts[-1].strength) == ("resize", 64.0)
    assert [p.label for p in sweep("")] == ["clean"]
    with pytest.raises(ValueError, match="'gauss'"):
        sweep("jpeg:q=50;gauss:sigma=1")


# ------------------------------------------------------------------------------------ behaviour

def test_deterministic_per_seed_and_different_across_seeds(img):
    d = parse("resize:f=0.6-1+blur:sigma=0.3-2+noise:sigma=1-4+jpeg:q=40-95")
    a = d(img, np.random.default_rng(5))
    b = d(img, np.random.default_rng(5))
    assert np.array_equal(a, b)
    outs = [d(img, np.random.default_rng(s)) for s in range(4)]
    assert len({(o.shape, o.tobytes()) for o in outs}) == 4
    strong = parse("strong")
    for s in range(3):
        assert np.array_equal(strong(img, np.random.default_rng(s)), strong(img, np.random.default_rng(s)))


def test_output_uint8_contiguous_and_input_never_modified(img):
    ro = img.copy()
    ro.flags.writeable = False  # any in-place write would raise
    view = ro[::-1].swapaxes(0, 1)  # a non-contiguous (EXIF-oriented) view
    for spec in ["jpeg:q=50", "jpeg:q=50,sub=444", "webp:q=60", "blur:sigma=1.5", "resize:f=0.5", "resize:f=1.5,kernel=lanczos",
                 "resize:long=50,kernel=area", "resize:f=0.7,kernel=bilinear", "noise:sigma=5", "social", "strong",
                 "blur:sigma=0", "jpeg:q=50,p=0"]:
        d = parse(spec)
        for src in (ro, view):
            out = d(src, np.random.default_rng(0))
            assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and out.flags.c_contiguous, spec
        assert np.array_equal(ro, img), spec
    with pytest.raises(ValueError, match="uint8"):
        parse("jpeg:q=50")(img.astype(np.float32), np.random.default_rng(0))


def test_jpeg_quality_and_subsampling_read_back_from_the_file(img, monkeypatch):
    written = []
    real = imageops._decode_bytes

    def spy(data, fmt):
        written.append(data)
        return real(data, fmt)

    monkeypatch.setattr(imageops, "_decode_bytes", spy)
    for q, sub, code in [(95, "420", 2), (75, "422", 1), (50, "444", 0), (30, "420", 2), (10, "420", 2)]:
        spec = f"jpeg:q={q}" + ("" if sub == "420" else f",sub={sub}")
        out = parse(spec)(img, np.random.default_rng(0))
        with Image.open(io.BytesIO(written[-1])) as im:
            assert im.format == "JPEG" and im.size == (img.shape[1], img.shape[0])
            assert list(im.quantization[0]) == _ijg_table(_LUMA, q), q
            assert list(im.quantization[1]) == _ijg_table(_CHROMA, q), q
            assert JpegImagePlugin.get_sampling(im) == code
            assert np.array_equal(out, np.asarray(im.convert("RGB")))  # the decoded file is what comes out
    # a ranged quality draws an integer in [lo, hi], endpoints included
    seen = set()
    for s in range(60):
        parse("jpeg:q=88-90")(img[:8, :8], np.random.default_rng(s))
        with Image.open(io.BytesIO(written[-1])) as im:
            seen.add(next(q for q in (88, 89, 90) if list(im.quantization[0]) == _ijg_table(_LUMA, q)))
    assert seen == {88, 89, 90}


def test_webp_round_trip_is_lossy_and_monotone(img):
    err = []
    for q in (90, 50, 10):
        out = parse(f"webp:q={q}")(img, np.random.default_rng(0))
        assert out.shape == img.shape
        err.append(np.abs(out.astype(int) - img).mean())
    assert 0 < err[0] < err[1] < err[2]


def test_blur_lowers_high_frequency_energy_monotonically():
    x = _noisy()
    hf = []
    for s in (0, 0.5, 1, 2, 3, 4):
        y = parse(f"blur:sigma={s}")(x, np.random.default_rng(0)).astype(np.float64)
        hf.append(np.mean(np.diff(y, axis=0) ** 2) + np.mean(np.diff(y, axis=1) ** 2))
    assert all(a > b for a, b in zip(hf, hf[1:])), hf
    assert np.array_equal(parse("blur:sigma=0")(x, np.random.default_rng(0)), x)


def test_blur_is_a_true_gaussian():
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    x = _noisy(40, 33)
    for s in (0.7, 2.0, 6.0):  # 6.0: radius 18 > the 33-px side: borders mirror repeatedly
        ours = D.gaussian_blur(x, s, rows=7).astype(int)
        ref = scipy_ndimage.gaussian_filter(x.astype(np.float64), (s, s, 0), truncate=3.0, mode="reflect")
        assert np.abs(ours - np.clip(np.rint(ref), 0, 255)).max() <= 1, s
    tiny = np.full((1, 1, 3), 77, np.uint8)
    assert np.array_equal(parse("blur:sigma=3")(tiny, np.random.default_rng(0)), tiny)


def test_resize_sizes():
    x = _noisy(101, 200)
    rng = np.random.default_rng(0)
    # f: each side becomes max(1, floor(side * f + 0.5)) — 50.5 rounds up to 51
    assert parse("resize:f=0.5")(x, rng).shape == (51, 100, 3)
    for k in ("bilinear", "area", "lanczos"):
        assert parse(f"resize:f=0.25,kernel={k}")(x, rng).shape == (25, 50, 3)
    assert parse("resize:f=2")(x, rng).shape == (202, 400, 3)
    assert parse("resize:f=0.001")(x, rng).shape == (1, 1, 3)
    # long: the long side becomes N when larger, the other scales by the same factor
    y = _noisy(100, 200)
    assert parse("resize:long=64")(y, rng).shape == (32, 64, 3)
    assert parse("resize:long=64")(y.swapaxes(0, 1), rng).shape == (64, 32, 3)
    assert np.array_equal(parse("resize:long=300")(y, rng), y)  # already small enough: untouched
    assert np.array_equal(parse("resize:f=1")(y, rng), y)
    sizes = {parse("resize:f=0.5-1")(y, np.random.default_rng(s)).shape for s in range(8)}
    assert len(sizes) > 1 and all(50 <= h <= 100 and abs(w - 2 * h) <= 1 for h, w, _ in sizes)  # one factor for both sides


def test_resize_antialiases():
    yy, xx = np.mgrid[0:64, 0:64]
    checker = np.repeat((((yy + xx) % 2) * 255).astype(np.uint8)[..., None], 3, 2)
    out = parse("resize:f=0.5")(checker, np.random.default_rng(0))
    assert np.abs(out.astype(int)[4:-4, 4:-4] - 128).max() <= 2  # aliasing would give 0 or 255


def test_noise_std_matches_sigma():
    x = np.full((128, 128, 3), 128, np.uint8)
    for sigma in (1.0, 3.0, 8.0):
        diff = parse(f"noise:sigma={sigma}")(x, np.random.default_rng(1)).astype(np.float64) - x
        expected = math.sqrt(sigma**2 + 1 / 12)  # rounding adds a uniform quantisation error
        assert abs(diff.std() - expected) < 0.03 * expected, sigma
        assert abs(diff.mean()) < 0.05
    edge = parse("noise:sigma=20")(np.zeros((32, 32, 3), np.uint8), np.random.default_rng(0))
    assert edge.min() == 0 and edge.max() > 0  # clipped, not wrapped


def test_probability_zero_never_applies_one_always_half_sometimes(img):
    small = img[:16, :16]
    for s in range(20):
        assert np.array_equal(parse("noise:sigma=5,p=0")(small, np.random.default_rng(s)), small)
        assert not np.array_equal(parse("noise:sigma=5,p=1")(small, np.random.default_rng(s)), small)
    hits = sum(not np.array_equal(parse("noise:sigma=5,p=0.5")(small, np.random.default_rng(s)), small)
               for s in range(200))
    assert 70 <= hits <= 130


def test_social_chain():
    big = photo_array(1500, 2600, seed=1)  # long side > 2048: always downscaled to 2048
    out = parse("social")(big, np.random.default_rng(0))
    assert out.shape == (1182, 2048, 3)
    small = _noisy(120, 160)
    shapes = {parse("social")(small, np.random.default_rng(s)).shape for s in range(16)}
    assert (120, 160, 3) in shapes and len(shapes) > 1  # kept as is or scaled by f in [0.5, 1]
    assert all(60 <= h <= 120 and 80 <= w <= 160 for h, w, _ in shapes)
    outs = [parse("social")(small, np.random.default_rng(s)) for s in range(4)]
    assert all(not np.array_equal(o, small) for o in outs if o.shape == small.shape)  # always re-compressed
    assert np.array_equal(parse("social:p=0")(small, np.random.default_rng(0)), small)


def test_window_is_a_fresh_random_crop_of_the_drawn_side():
    yy, xx = np.mgrid[0:300, 0:400]
    big = np.stack([yy % 256, xx % 256, (yy // 256) * 16 + xx // 256], axis=-1).astype(np.uint8)  # pixel = its place
    d = parse("window:side=100-150")
    assert d.name == "window:side=100-150" and parse(d.name) == d and not d.is_identity
    assert parse("window:side=128-128").name == "window:side=128"
    seen = set()
    for seed in range(12):
        out = d(big, np.random.default_rng(seed))
        h, w = out.shape[:2]
        assert h == w and 100 <= h <= 150 and out.flags.c_contiguous
        t = int(out[0, 0, 0]) + 256 * (int(out[0, 0, 2]) // 16)
        left = int(out[0, 0, 1]) + 256 * (int(out[0, 0, 2]) % 16)
        assert np.array_equal(big[t : t + h, left : left + w], out)  # a sub-image of the input
        seen.add(out.tobytes()[:64])
        assert np.array_equal(out, d(big, np.random.default_rng(seed)))  # deterministic from the rng
    assert len(seen) > 8  # a new place (and side) every draw
    small = _noisy(60, 90)
    assert d(small, np.random.default_rng(0)).shape == (60, 90, 3)  # clamped: the whole image
    assert d(_noisy(120, 500), np.random.default_rng(1)).shape[0] == 120  # clamped on the short side only
    chain = parse("window:side=64+standard")
    assert chain.kinds[0] == "window" and chain(big, np.random.default_rng(0)).shape == (64, 64, 3)
    with pytest.raises(ValueError, match="window needs side="):
        parse("window")
    with pytest.raises(ValueError, match="side='0'"):
        parse("window:side=0")


def test_window_align_puts_the_window_on_multiples():
    yy, xx = np.mgrid[0:700, 0:900]
    big = np.stack([yy % 256, xx % 256, (yy // 256) * 16 + xx // 256], axis=-1).astype(np.uint8)  # pixel = its place
    d = parse("window:side=200-300,align=12")
    assert d.name == "window:side=200-300,align=12" and parse(d.name) == d
    assert parse("window:side=200,align=1").name == "window:side=200"  # the default is left out
    places = set()
    for seed in range(40):
        out = d(big, np.random.default_rng(seed))
        t = int(out[0, 0, 0]) + 256 * (int(out[0, 0, 2]) // 16)
        left = int(out[0, 0, 1]) + 256 * (int(out[0, 0, 2]) % 16)
        assert t % 12 == 0 and left % 12 == 0 and np.array_equal(big[t : t + out.shape[0], left : left + out.shape[1]], out)
        places.add((t, left))
    assert len(places) > 30
    plain = parse("window:side=200-300")
    for seed in range(5):  # align=1 draws what a spec without it draws
        assert np.array_equal(plain(big, np.random.default_rng(seed)), parse("window:side=200-300,align=1")(big, np.random.default_rng(seed)))
    with pytest.raises(ValueError, match="align"):
        parse("window:side=200,align=0")
