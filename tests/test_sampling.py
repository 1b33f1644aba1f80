"""Crop geometry (glassdetect.views.sampling) and where its randomness comes from.

Property loops use plain numpy over a few hundred random image sizes (no hypothesis).
Cell boundaries are recomputed here with integer arithmetic (``r * H // G``), independently of
the implementation's ``floor(linspace)``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from conftest import make_image
from glassdetect.data.splits import Sample
from glassdetect.pipeline import ViewDataset
from glassdetect.views.sampling import (
    MODES,
    eval_rng,
    grid_boxes,
    grid_size,
    random_boxes,
    sample_boxes,
    stable_hash,
    stratified_boxes,
    train_rng,
)
from glassdetect.views.build import ViewSpec, build_views

P = 224


def _edges(extent: int, g: int) -> list[int]:
    return [r * extent // g for r in range(g + 1)]


def _cell_of(top: int, left: int, h: int, w: int, g: int, patch: int = P) -> tuple[int, int] | None:
    """The (row, col) of the cell that wholly contains the box, or None."""
    ys, xs = _edges(h, g), _edges(w, g)
    rows = [r for r in range(g) if ys[r] <= top and top + patch <= ys[r + 1]]
    cols = [c for c in range(g) if xs[c] <= left and left + patch <= xs[c + 1]]
    return (rows[0], cols[0]) if rows and cols else None


def _random_sizes(n: int, seed: int, lo: int = 1, hi: int = 4000) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    # Mix of log-uniform sizes (many small/medium ones) and exact multiples of the patch.
    out = []
    for i in range(n):
        if i % 5 == 0:
            out.append((int(P * rng.integers(1, 12)), int(P * rng.integers(1, 12))))
        else:
            h, w = np.exp(rng.uniform(np.log(lo), np.log(hi), 2)).astype(int)
            out.append((min(max(int(h), lo), hi), min(max(int(w), lo), hi)))
    return out


# --------------------------------------------------------------------------------- grid size

def test_grid_size_formula_and_cap():
    assert grid_size(500, 500) == 2
    assert grid_size(223, 5000) == 0
    assert grid_size(224, 224) == 1
    assert grid_size(447, 10_000) == 1
    assert grid_size(448, 10_000) == 2
    assert grid_size(224 * 20, 224 * 20) == 8  # capped at max_grid
    assert grid_size(224 * 20, 224 * 20, max_grid=3) == 3
    for h, w in _random_sizes(300, seed=1):
        assert grid_size(h, w) == min(min(h, w) // P, 8)


# ------------------------------------------------------------------------------- stratified

def test_stratified_property_loop():
    """Boxes inside the image; one box per distinct cell, lying in its cell; fallback when G² < K."""
    rng = np.random.default_rng(123)
    n_strat = n_fallback = 0
    for h, w in _random_sizes(400, seed=2, lo=P, hi=4000):
        k = int(rng.integers(1, 10))
        max_grid = int(rng.choice([8, 8, 3, 1]))
        g = min(min(h, w) // P, max_grid)
        boxes = sample_boxes(h, w, k, np.random.default_rng(int(rng.integers(1 << 30))), "stratified", P, max_grid)
        assert len(boxes) == k
        for top, left in boxes:
            assert isinstance(top, int) and isinstance(left, int)
            assert 0 <= top <= h - P and 0 <= left <= w - P, (h, w, top, left)
        if g * g >= k:
            n_strat += 1
            cells = [_cell_of(t, l, h, w, g) for t, l in boxes]
            assert None not in cells, (h, w, g, boxes)
            assert len(set(cells)) == k, (h, w, g, boxes)
        else:
            n_fallback += 1
    assert n_strat > 100 and n_fallback > 20  # both branches exercised


def test_stratified_fallback_is_uniform_random():
    """500×500, K=5: G=2, G²=4 < 5 → exactly the K uniform boxes of ``random`` mode."""
    assert grid_size(500, 500) == 2
    tops, lefts = [], []
    for s in range(300):
        got = sample_boxes(500, 500, 5, np.random.default_rng(s), "stratified")
        assert got == random_boxes(500, 500, 5, np.random.default_rng(s))
        assert got == sample_boxes(500, 500, 5, np.random.default_rng(s), "random")
        tops += [t for t, _ in got]
        lefts += [l for _, l in got]
    # Uniform over [0, 276] in both axes: the whole range is reached, the mean sits in the middle.
    for v in (np.array(tops), np.array(lefts)):
        assert v.min() <= 5 and v.max() >= 271
        assert abs(v.mean() - 138) < 8


def test_stratified_cells_uniform_and_offsets_cover_the_cell():
    h, w, k, g = 700, 900, 4, 3  # G = 3
    counts: Counter = Counter()
    offsets: dict[tuple[int, int], list[tuple[int, int]]] = {}
    n = 1500
    for s in range(n):
        for t, l in stratified_boxes(h, w, k, np.random.default_rng(s)):
            cell = _cell_of(t, l, h, w, g)
            counts[cell] += 1
            offsets.setdefault(cell, []).append((t, l))
    assert len(counts) == g * g
    expected = n * k / (g * g)
    assert all(abs(c - expected) < 0.2 * expected for c in counts.values()), counts
    ys, xs = _edges(h, g), _edges(w, g)
    for (r, c), tl in offsets.items():
        t = np.array([a for a, _ in tl])
        l = np.array([b for _, b in tl])
        # Random placement within the cell: both extremes are reached.
        assert t.min() == ys[r] and t.max() == ys[r + 1] - P
        assert l.min() == xs[c] and l.max() == xs[c + 1] - P


def test_stratified_k_equals_g_squared_uses_every_cell():
    h = w = 224 * 3 + 50
    boxes = stratified_boxes(h, w, 9, np.random.default_rng(0))
    assert sorted(_cell_of(t, l, h, w, 3) for t, l in boxes) == [(r, c) for r in range(3) for c in range(3)]


def test_stratified_rejects_bad_k_and_mode():
    with pytest.raises(ValueError):
        sample_boxes(500, 500, 0, np.random.default_rng(0), "stratified")
    with pytest.raises(ValueError, match="unknown sampling mode"):
        sample_boxes(500, 500, 4, np.random.default_rng(0), "zigzag")
    with pytest.raises(ValueError):
        sample_boxes(0, 500, 4, np.random.default_rng(0))
    assert set(MODES) == {"stratified", "grid", "random"}


# ---------------------------------------------------------------------- images below the patch

@pytest.mark.parametrize("mode", MODES)
def test_small_images_boxes_start_at_zero(mode):
    rng = np.random.default_rng(5)
    for h, w in _random_sizes(200, seed=3, lo=1, hi=P):
        h, w = min(h, P - 1), min(w, P - 1)
        boxes = sample_boxes(h, w, 4, np.random.default_rng(int(rng.integers(1 << 30))), mode)
        assert len(boxes) == (1 if mode == "grid" else 4)
        assert all(b == (0, 0) for b in boxes)


def test_one_side_below_patch():
    """100×1000: G = 0 → uniform fallback; top pinned at 0, left anywhere in [0, W-P]."""
    lefts = []
    for s in range(200):
        for t, l in sample_boxes(100, 1000, 4, np.random.default_rng(s)):
            assert t == 0 and 0 <= l <= 1000 - P
            lefts.append(l)
    assert min(lefts) < 20 and max(lefts) > 1000 - P - 20


def test_small_image_crops_are_zero_padded(tmp_path):
    arr = make_image(tmp_path / "small.png", 100, 150, seed=1)
    v = build_views(tmp_path / "small.png", ViewSpec(k=3))
    assert v.boxes == [(0, 0)] * 3
    assert v.crops.shape == (3, 3, P, P)
    for crop in v.crops:
        assert np.array_equal(crop[:, :100, :150], arr.transpose(2, 0, 1))
        assert not crop[:, 100:, :].any() and not crop[:, :, 150:].any()


# -------------------------------------------------------------------------------------- grid

def test_grid_mode_centred_cells_and_cap():
    for h, w in _random_sizes(300, seed=4, lo=1, hi=5000):
        for max_grid in (8, 2):
            g = min(min(h, w) // P, max_grid)
            a = sample_boxes(h, w, 3, np.random.default_rng(0), "grid", P, max_grid)
            b = sample_boxes(h, w, 7, np.random.default_rng(99), "grid", P, max_grid)
            assert a == b == grid_boxes(h, w, P, max_grid)  # deterministic; K and rng ignored
            if g == 0:
                assert a == [(0, 0)]
                continue
            assert len(a) == g * g
            ys, xs = _edges(h, g), _edges(w, g)
            for i, (t, l) in enumerate(a):
                r, c = divmod(i, g)  # row-major
                assert _cell_of(t, l, h, w, g) == (r, c)
                assert abs(t + P / 2 - (ys[r] + ys[r + 1]) / 2) <= 0.5
                assert abs(l + P / 2 - (xs[c] + xs[c + 1]) / 2) <= 0.5


def test_grid_capped_at_max_grid():
    side = 224 * 12
    assert len(grid_boxes(side, side)) == 64
    assert len(grid_boxes(side, side, max_grid=3)) == 9
    assert len(sample_boxes(side, side, 4, np.random.default_rng(0), "stratified", max_grid=1)) == 4  # G=1 → fallback


# ------------------------------------------------------------------------------------ random

def test_random_mode_inside_image():
    rng = np.random.default_rng(6)
    for h, w in _random_sizes(300, seed=5, lo=P, hi=4000):
        k = int(rng.integers(1, 12))
        boxes = sample_boxes(h, w, k, np.random.default_rng(int(rng.integers(1 << 30))), "random")
        assert len(boxes) == k
        assert all(0 <= t <= h - P and 0 <= l <= w - P for t, l in boxes)


# ----------------------------------------------------------------------------- determinism

def test_same_generator_same_boxes():
    for mode in MODES:
        a = sample_boxes(1500, 1100, 5, np.random.default_rng(42), mode)
        b = sample_boxes(1500, 1100, 5, np.random.default_rng(42), mode)
        assert a == b


def test_eval_crops_depend_on_content_not_name(tmp_path):
    make_image(tmp_path / "a.png", 900, 1000, seed=7)
    (tmp_path / "renamed_copy.png").write_bytes((tmp_path / "a.png").read_bytes())
    make_image(tmp_path / "other.png", 900, 1000, seed=8)
    spec = ViewSpec(k=4)
    v1 = build_views(tmp_path / "a.png", spec)
    v2 = build_views(tmp_path / "renamed_copy.png", spec)
    v3 = build_views((tmp_path / "a.png").read_bytes(), spec)
    assert v1.boxes == v2.boxes == v3.boxes
    assert np.array_equal(v1.crops, v2.crops) and np.array_equal(v1.global_view, v2.global_view)
    # Different draw, seed or content → different crops (G = 4, 16 cells: a collision is ~impossible).
    assert build_views(tmp_path / "a.png", spec, draw=1).boxes != v1.boxes
    assert build_views(tmp_path / "a.png", spec, seed=1).boxes != v1.boxes
    assert build_views(tmp_path / "other.png", spec).boxes != v1.boxes
    # Repeating a draw repeats it.
    assert build_views(tmp_path / "a.png", spec, draw=1).boxes == build_views(tmp_path / "renamed_copy.png", spec, draw=1).boxes


def test_eval_dataset_crops_fixed_across_epochs(tmp_path):
    make_image(tmp_path / "x.png", 800, 800, seed=9)
    s = Sample(str(tmp_path / "x.png"), 0, "x", "x.png")
    ds = ViewDataset([s], ViewSpec(k=4), train=False, seed=3)
    first = ds[0]["boxes"].tolist()
    ds.set_epoch(5)
    assert ds[0]["boxes"].tolist() == first
    assert [list(b) for b in build_views(tmp_path / "x.png", ViewSpec(k=4), seed=3).boxes] == first


def test_stable_hash_and_eval_rng_same_in_a_fresh_process():
    code = (
        "from glassdetect.views.sampling import stable_hash, eval_rng\n"
        "print(stable_hash('img/abc.jpg'), eval_rng('abc', 3, 1).integers(1 << 40, size=3).tolist())"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.split(" ", 1)
    assert int(out[0]) == stable_hash("img/abc.jpg")
    assert out[1].strip() == str(eval_rng("abc", 3, 1).integers(1 << 40, size=3).tolist())
    assert 0 <= stable_hash("x") < 2**63


# --------------------------------------------------------------------------------- training

def test_train_rng_fresh_per_epoch_identical_on_resume():
    def draw(seed, epoch, index):
        return sample_boxes(2000, 2000, 4, train_rng(seed, epoch, index))

    assert draw(0, 0, 7) == draw(0, 0, 7)  # a resumed run draws what an uninterrupted one would
    assert np.array_equal(train_rng(1, 2, 3).random(8), train_rng(1, 2, 3).random(8))
    epochs = [tuple(draw(0, e, 7)) for e in range(10)]
    assert len(set(epochs)) == 10  # fresh crops every epoch
    assert len({tuple(draw(0, 0, i)) for i in range(10)}) == 10  # and per index
    assert draw(0, 0, 7) != draw(1, 0, 7)  # and per seed
    # The training stream is not the evaluation stream.
    assert not np.array_equal(train_rng(0, 0, 0).random(4), eval_rng("", 0, 0).random(4))


def test_train_dataset_crops_change_with_epoch(tmp_path):
    make_image(tmp_path / "x.png", 1000, 1000, seed=10)
    s = Sample(str(tmp_path / "x.png"), 1, "x", "x.png")
    ds = ViewDataset([s], ViewSpec(k=4), train=True, seed=0)
    e0 = ds[0]["boxes"].tolist()
    assert ds[0]["boxes"].tolist() == e0
    ds.set_epoch(1)
    e1 = ds[0]["boxes"].tolist()
    assert e1 != e0
    ds2 = ViewDataset([s], ViewSpec(k=4), train=True, seed=0)
    ds2.set_epoch(1)
    assert ds2[0]["boxes"].tolist() == e1  # resume: same (seed, epoch, index) → same crops


# ------------------------------------------------------------------------------------ align

@pytest.mark.parametrize("mode", MODES)
def test_aligned_boxes_are_on_multiples_inside_the_image_in_distinct_cells(mode):
    rng = np.random.default_rng(7)
    for h, w in _random_sizes(200, seed=5, lo=1, hi=3000):
        k = int(rng.integers(1, 9))
        align = int(rng.choice([2, 3, 8, 12]))
        boxes = sample_boxes(h, w, k, np.random.default_rng(int(rng.integers(1 << 30))), mode, P, 8, align)
        for top, left in boxes:
            assert top % align == 0 and left % align == 0, (h, w, align, top, left)
            assert 0 <= top <= max(h - P, 0) and 0 <= left <= max(w - P, 0), (h, w, top, left)
        g = grid_size(h, w)
        if mode == "stratified" and g * g >= k and min(h, w) >= P:
            # a box may reach back at most align - 1 pixels into the previous cell: one per cell still
            ys, xs = _edges(h, g), _edges(w, g)
            cell = lambda e, x: max(r for r in range(g) if e[r] <= x)  # noqa: E731
            cells = {(cell(ys, t + align - 1), cell(xs, l + align - 1)) for t, l in boxes}
            assert len(cells) == k, (h, w, g, align, boxes)


def test_align_one_draws_exactly_the_unaligned_boxes_and_align_spreads_over_its_multiples():
    for mode in MODES:
        for seed in range(20):
            a = sample_boxes(1500, 2100, 5, np.random.default_rng(seed), mode)
            assert a == sample_boxes(1500, 2100, 5, np.random.default_rng(seed), mode, P, 8, 1)
    tops = Counter(t for s in range(400) for t, _ in sample_boxes(1032, 1032, 4, np.random.default_rng(s),
                                                                 "stratified", P, 8, 12))
    # G = 4 cells of 258 px: a box starts on a multiple of 12 in [cell start, cell end - 224]
    assert set(tops) == {0, 12, 24, 264, 276, 288, 516, 528, 540, 780, 792, 804}
    with pytest.raises(ValueError, match="align"):
        sample_boxes(500, 500, 2, np.random.default_rng(0), "stratified", P, 8, 0)


def test_views_and_checkpoint_carry_the_alignment(tmp_path):
    from glassdetect.models import ModelConfig

    path = tmp_path / "a.png"
    make_image(path, 1000, 1300)
    spec = ViewSpec(k=6, align=12)
    v = build_views(path, spec, seed=3)
    assert all(t % 12 == 0 and l % 12 == 0 for t, l in v.boxes)
    assert build_views(path, spec, seed=3).boxes == v.boxes  # deterministic like every evaluation
    cfg = ModelConfig(arch="glass", backbone="test_resnet", crop_align=12, interpolation="bicubic")
    assert cfg.view_spec().align == 12 and ModelConfig.from_dict(cfg.to_dict()).crop_align == 12
    old = cfg.to_dict()
    del old["crop_align"]  # a checkpoint written before the field: the paper's uniform offsets
    assert ModelConfig.from_dict(old).view_spec().align == 1
    with pytest.raises(ValueError, match="crop_align"):
        ModelConfig(crop_align=0)
