"""Offline benchmark version 3: plan (regions, splits, left-out families), histories and
post-processing, the cache, the process pool and the manifest — on tiny synthetic photos with a
bicubic stand-in for the ncnn super-resolvers."""
from __future__ import annotations

import csv
import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glassdetect.studies import offline_bench as ob
from glassdetect.studies.offline_bench import histories as H
from glassdetect.studies.offline_bench import v3, v3plan
from synth import bicubic_upscaler, camera_photos

GENS = ("spanx4_ch48", "realesr-animevideov3-x2", "realcugan-se-up2x-no-denoise", "srmdnf-x3",
        "waifu2x-upconv7-photo-x2", "waifu2x-cunet-x2")
SPEC = replace(v3plan.V3_SPECS["pilot"], generators=GENS, region_px=40_000, min_side=120, eval_side=120)


class CountingSource(v3.MappingSource):
    calls: list[str]


def _source(tag: str = "bicubic") -> v3.MappingSource:
    calls: list[str] = []

    def counted(name: str):
        up = bicubic_upscaler(name, ob.GENERATORS[name].scale)
        return ob.Upscaler(name, up.scale, lambda a: (calls.append(name), up.fn(a))[1])

    src = v3.MappingSource({g: counted(g) for g in GENS}, tag)
    object.__setattr__(src, "calls", calls)  # frozen dataclass: a test-only attribute
    return src


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("v3")
    photos = camera_photos(tmp, 10, (300, 260), (24, 12))
    src = _source()
    manifest = v3.build_bench_v3(tmp / "out", photos, SPEC, 0, src, workers=1, cache_root=tmp / "cache",
                                 progress=False)
    return tmp, photos, src, manifest


def _digest_tree(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "bench.json":
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------- the build


def test_manifest_columns_splits_and_left_out_families(built) -> None:
    _, photos, _, manifest = built
    rows = _rows(manifest)
    assert tuple(rows[0]) == v3.MANIFEST_COLUMNS_V3
    assert {r["version"] for r in rows} == {"3"}
    assert {r["package"] for r in rows} == {"pkg0", "pkg1", "pkg2"}
    splits: dict[str, set[str]] = {}
    for r in rows:
        splits.setdefault(r["group"], set()).add(r["split"])
        assert (r["generator"] == "") == (r["label"] == "real")
        if r["label"] == "fake":
            assert r["family"] == ob.GENERATORS[r["generator"]].family
    assert all(len(s) == 1 for s in splits.values())  # no photo in two splits
    fams = {s: {r["family"] for r in rows if r["split"] == s and r["label"] == "fake"} for s in ob.SPLITS}
    val_out, test_out = v3plan.DEFAULT_HELDOUT
    assert val_out not in fams["train"] and test_out not in fams["train"] and len(fams["train"]) == 4
    for split, out in (("val", val_out), ("test", test_out)):
        fakes = [r for r in rows if r["split"] == split and r["label"] == "fake"]
        assert {r["family"] for r in fakes if r["family_seen"] == "no"} == {out}
        assert {r["family"] for r in fakes if r["family_seen"] == "yes"} <= fams["train"]
        assert sum(r["family_seen"] == "no" for r in fakes) == sum(r["family_seen"] == "yes" for r in fakes) > 0
    assert {r["family_seen"] for r in rows if r["split"] == "train"} == {"yes"}
    assert {r["history"] for r in rows} == {h.name for h in SPEC.histories}


def test_pairs_share_history_post_and_size(built) -> None:
    _, _, _, manifest = built
    by_path: dict[str, dict[str, dict[str, str]]] = {}
    for r in _rows(manifest):
        by_path.setdefault(r["path"].split("/", 3)[-1], {})[r["label"]] = r
    assert by_path and all(set(p) == {"real", "fake"} for p in by_path.values())
    for pair in by_path.values():
        real, fake = pair["real"], pair["fake"]
        assert {k: v for k, v in real.items() if k not in ("path", "label", "generator")} == \
               {k: v for k, v in fake.items() if k not in ("path", "label", "generator")}
        with Image.open(manifest.parent / real["path"]) as a, Image.open(manifest.parent / fake["path"]) as b:
            assert a.size == b.size and a.mode == b.mode == "RGB"
    assert len({p["real"]["post"] for p in by_path.values()}) > 3  # post-processing drawn per pair


def test_post_processing_is_the_same_for_both_members(tmp_path: Path) -> None:
    """A flat photo: its fake equals its real before post-processing, so any difference after it
    is the post-processing's, and both members must show the same noise level."""
    path = tmp_path / "flat.png"
    Image.fromarray(np.full((400, 420, 3), (120, 130, 140), np.uint8)).save(path)
    photos = [ob.photo_from_file(ob.PhotoRef(f"pkg{i}-flat{i}", f"pkg{i}", "flat.png"), path) for i in range(5)]
    spec = replace(SPEC, post=H.PostConfig(p_noise=0.7, sigma=(1.0, 3.0), p_jpeg=0.0))
    manifest = v3.build_bench_v3(tmp_path / "out", photos, spec, 1, _source(), workers=1,
                                 cache_root=tmp_path / "cache", progress=False)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    posts = {}
    for r in _rows(manifest):
        stem = Path(r["path"]).name + r["split"]
        pairs.setdefault(stem, {})[r["label"]] = np.asarray(Image.open(manifest.parent / r["path"]), np.float32)
        posts[stem] = r["post"]
    assert {p == "none" for p in posts.values()} == {True, False}
    for stem, pair in pairs.items():
        if posts[stem] == "none":
            assert np.array_equal(pair["real"], pair["fake"])
        else:
            sr, sf = pair["real"].std(), pair["fake"].std()
            assert sr > 0.5 and abs(sr - sf) < 0.1 * sr, (stem, sr, sf)


def test_rebuild_hits_the_cache_and_is_identical(built) -> None:
    tmp, photos, first, manifest = built
    assert first.calls  # the first build ran the super-resolvers
    again = _source()
    m2 = v3.build_bench_v3(tmp / "out2", photos, SPEC, 0, again, workers=1, cache_root=tmp / "cache", progress=False)
    assert again.calls == []
    assert _digest_tree(manifest.parent) == _digest_tree(m2.parent)
    m3 = v3.build_bench_v3(tmp / "out", photos, SPEC, 0, again, workers=1, cache_root=tmp / "fresh", progress=False)
    assert again.calls == [] and m3 == manifest  # files on disk: not even the cache is read
    other = _source("another-model")  # another model digest: the cache misses
    v3.build_bench_v3(tmp / "out4", photos, SPEC, 0, other, workers=1, cache_root=tmp / "cache", progress=False)
    assert other.calls


def test_two_workers_write_the_same_files(built) -> None:
    tmp, photos, _, manifest = built
    m = v3.build_bench_v3(tmp / "pool", photos, SPEC, 0, _source(), workers=2, cache_root=tmp / "cache2",
                          progress=False)
    assert _digest_tree(manifest.parent) == _digest_tree(m.parent)


def test_reusing_out_with_other_heldout_is_refused_and_heldout_checked(built) -> None:
    tmp, photos, src, _ = built
    with pytest.raises(ValueError, match="another spec, seed or held-out"):
        v3.build_bench_v3(tmp / "out", photos, SPEC, 0, src, heldout=("srmd", "span"), progress=False)
    for bad in (("srmd", "srmd"), ("srmd",), ("nope", "span")):
        with pytest.raises(ValueError, match="held-out famil"):
            v3plan.check_heldout(bad, GENS)


def test_rotated_heldout_and_bench_json(tmp_path: Path) -> None:
    photos = camera_photos(tmp_path, 6, (260, 240), (12, 12))
    m = v3.build_bench_v3(tmp_path / "o", photos, SPEC, 2, _source(), heldout=("srmd", "span"), workers=1,
                          cache_root=tmp_path / "c", progress=False)
    rows = _rows(m)
    assert not {"srmd", "span"} & {r["family"] for r in rows if r["split"] == "train"}
    meta = __import__("json").loads((m.parent / "bench.json").read_text())
    assert meta["left_out"] == {"val": "srmd", "test": "span"} and meta["heldout"] == ["srmd", "span"] and meta["version"] == 3
    assert meta["train_pixels"]["fake"] >= meta["train_pixels"]["real"] > 0
    assert (m.parent / "jpeg75" / "manifest.csv").exists()


# ------------------------------------------------------------------------------ the plan


@pytest.mark.parametrize("size, cap, n", [((2560, 1600), 1_500_000, 1), ((2560, 1600), 600_000, 0),
                                          ((1365, 1074), 4_000_000, 0), ((400, 300), 50_000, 0)])
def test_regions_inside_off_grid_capped(size: tuple[int, int], cap: int, n: int) -> None:
    w, h = size
    regs = v3plan.plan_regions(w, h, cap, n, seed=0, key="k", min_side=1032)
    assert regs and (n == 0 or len(regs) == n)
    cover = np.zeros((h, w), bool)
    for r in regs:
        assert 0 < r.left and r.left + r.width <= w and 0 < r.top and r.top + r.height <= h
        assert r.left % 8 and r.top % 8 and r.width % 12 == 0 and r.height % 12 == 0
        assert r.pixels <= cap
        cover[r.top : r.top + r.height, r.left : r.left + r.width] = True
    if n == 0:
        assert cover.mean() > 0.9  # tiles cover the photo but its edge slack
    assert regs == v3plan.plan_regions(w, h, cap, n, seed=0, key="k", min_side=1032)


def test_region_shape_keeps_short_side_where_the_photo_allows() -> None:
    assert v3plan.region_shape(2560, 1600, 1_500_000, 1032, 12) == (1452, 1032)
    assert v3plan.region_shape(2560, 1600, 5_000_000, 1032, 12) == (2544, 1584)  # the whole photo
    assert v3plan.region_shape(800, 600, 100_000, 1032, 12) == (312, 312)  # 1032 out of reach: as square as it gets
    assert v3plan.region_shape(3000, 900, 1_500_000, 1032, 12) == (1680, 888)  # the photo's short side


def test_prescale_histories_and_post_draws() -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), np.uint8))
    for hist in v3plan.HISTORIES_V3_FULL:
        assert hist.apply(img).size == hist.size(120, 90)
    assert v3plan.HISTORIES_V3[0].apply(img) is img
    with pytest.raises(ValueError, match="match_jpeg needs factor 1"):
        H.PreScale("bad", 2.0, match_jpeg=True)
    posts = [H.draw_post(H.PostConfig(), np.random.default_rng(i)) for i in range(200)]
    noisy = [p for p in posts if p.sigma > 0]
    assert 0.8 < len(noisy) / 200 < 0.97 and all(1.0 <= p.sigma <= 5.0 for p in noisy)
    assert all(p.quality == 0 or 70 <= p.quality <= 97 for p in posts)
    grey = np.full((32, 32, 3), 100, np.uint8)
    out = H.sensor_noise(grey, 2.0, 0.5, np.random.default_rng(0))
    assert (out[..., 0] == out[..., 1]).all() and out.std() > 1.0  # a grey image stays grey


# ------------------------------------------------------------------------------------- CLI


def test_cli_dispatches_versions_and_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from glassdetect.cli import app

    calls: list[tuple] = []
    monkeypatch.setattr(ob, "build_offline_bench", lambda out, size, seed, **kw: calls.append((2, size, seed, kw)) or out)
    monkeypatch.setattr(v3, "build_offline_bench_v3", lambda out, size, seed, **kw: calls.append((3, size, seed, kw)) or out)
    run = lambda *a: CliRunner().invoke(app, ["data", "build-offline-bench", str(tmp_path), *a])  # noqa: E731
    assert run().exit_code == 0 and calls[-1] == (2, "small", 0, {"num_threads": 1})  # version 2 stays the default
    assert run("--version", "3").exit_code == 0
    assert calls[-1] == (3, "pilot", 0, {"heldout": v3plan.DEFAULT_HELDOUT, "workers": 2, "num_threads": 1})
    assert run("--version", "3", "--size", "small", "--seed", "2", "--heldout-families", "srmd, span",
               "--workers", "1").exit_code == 0
    assert calls[-1] == (3, "small", 2, {"heldout": ("srmd", "span"), "workers": 1, "num_threads": 1})
    n = len(calls)
    for bad, msg in ((("--version", "1"), "only versions 2 and 3"), (("--heldout-families", "srmd,span"), "belong to"),
                     (("--size", "pilot"), "belong to")):
        res = run(*bad)
        assert res.exit_code != 0 and msg in res.output
    assert len(calls) == n


@pytest.mark.network
def test_real_ncnn_models_on_two_workers(tmp_path: Path) -> None:
    """The six families' real ncnn models (PyPI wheels) in forked workers, cached by model digest."""
    photos = camera_photos(tmp_path, 6, (200, 180), (12, 12))
    spec = replace(SPEC, generators=("spanx4_ch48", "realesr-animevideov3-x4", "realcugan-se-up4x-no-denoise",
                                     "srmdnf-x4", "waifu2x-upconv7-photo-x2", "waifu2x-cunet-x2"),
                   region_px=20_000, eval_side=96)
    src = v3.NcnnSource()
    m = v3.build_bench_v3(tmp_path / "o", photos, spec, 0, src, workers=2, cache_root=tmp_path / "c", progress=False)
    meta = __import__("json").loads((m.parent / "bench.json").read_text())
    assert meta["build"]["sr_runs"] == len(_rows(m)) // 2 > 0
    assert len(src.digest("srmdnf-x4")) == 64 and src.digest("srmdnf-x4") != src.digest("spanx4_ch48")
    m2 = v3.build_bench_v3(tmp_path / "o2", photos, spec, 0, src, workers=2, cache_root=tmp_path / "c", progress=False)
    assert __import__("json").loads((m2.parent / "bench.json").read_text())["build"]["sr_runs"] == 0
    assert _digest_tree(m.parent) == _digest_tree(m2.parent)
