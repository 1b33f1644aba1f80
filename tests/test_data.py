"""Datasets, manifests, splits and batching (glassdetect.data.splits)."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TREE_N, make_image
from glassdetect.pipeline import ViewDataset, collate
from glassdetect.data.splits import (
    Sample,
    assign_splits,
    check_no_leak,
    load_manifest,
    load_samples,
    load_tree,
    read_split,
    write_split,
)
from glassdetect.views.build import ViewSpec


# ------------------------------------------------------------------------------------ trees

def test_load_tree_labels_generators_groups(tiny_tree):
    (tiny_tree / "real" / "notes.txt").write_text("not an image")
    (tiny_tree / "fake" / "gen_a" / ".DS_Store").write_bytes(b"\0\0")
    samples = load_tree(tiny_tree)
    assert len(samples) == 2 * TREE_N
    assert Counter(s.label for s in samples) == {0: TREE_N, 1: TREE_N}
    for s in samples:
        p = Path(s.path)
        assert p.is_absolute() and p.is_file()
        assert s.group == p.stem
        assert s.split == ""
        assert (tiny_tree / s.key).resolve() == p
        if s.label == 0:
            assert s.generator == "" and s.key.startswith("real/")
        else:
            assert s.generator == p.parent.name and s.generator in {"gen_a", "gen_b"}
    assert Counter(s.generator for s in samples if s.label == 1) == {"gen_a": TREE_N // 2, "gen_b": TREE_N // 2}
    # every real image has its fake partner in the same group
    by_group = defaultdict(set)
    for s in samples:
        by_group[s.group].add(s.label)
    assert all(v == {0, 1} for v in by_group.values()) and len(by_group) == TREE_N
    assert load_samples(tiny_tree) == samples
    # Order is deterministic.
    assert load_tree(tiny_tree) == samples


def test_load_tree_fake_files_directly_under_fake_have_no_generator(tmp_path):
    make_image(tmp_path / "real" / "a.png", 8, 8)
    make_image(tmp_path / "real" / "nested" / "b.png", 8, 8)
    make_image(tmp_path / "fake" / "c.png", 8, 8)
    make_image(tmp_path / "fake" / "sd" / "v1" / "d.JPG", 8, 8)
    got = {Path(s.path).name: s for s in load_tree(tmp_path)}
    assert set(got) == {"a.png", "b.png", "c.png", "d.JPG"}
    assert got["b.png"].generator == "" and got["b.png"].label == 0
    assert got["c.png"].generator == "" and got["c.png"].label == 1
    assert got["d.JPG"].generator == "sd" and got["d.JPG"].group == "d"


def test_load_tree_custom_class_names_and_missing_class(tmp_path):
    make_image(tmp_path / "nature" / "a.png", 8, 8)
    make_image(tmp_path / "ai" / "g" / "a.png", 8, 8)
    s = load_tree(tmp_path, ("nature", "ai"))
    assert sorted((x.label, x.generator) for x in s) == [(0, ""), (1, "g")]
    with pytest.raises(FileNotFoundError, match="'real'"):
        load_tree(tmp_path)


def _split_tree(root: Path, splits=("train", "val", "test")) -> None:
    for i, split in enumerate(splits):
        make_image(root / split / "real" / f"r{i}.png", 8, 8, seed=i)
        make_image(root / split / "fake" / "genx" / f"r{i}.png", 8, 8, seed=10 + i)
        make_image(root / split / "fake" / "geny" / f"f{i}.jpg", 8, 8, seed=20 + i)


def test_load_tree_detects_split_folders(tmp_path):
    _split_tree(tmp_path)
    samples = load_tree(tmp_path)
    assert len(samples) == 9
    assert Counter(s.split for s in samples) == {"train": 3, "val": 3, "test": 3}
    for s in samples:
        assert s.key.startswith(f"{s.split}/")
        assert s.generator == ("" if s.label == 0 else Path(s.path).parent.name)
    check_no_leak(samples)
    # Pre-split samples keep their split.
    assert assign_splits(samples, seed=1) == samples


@pytest.mark.parametrize("splits", [("train", "val"), ("test",)])
def test_load_tree_detects_partial_split_folders(tmp_path, splits):
    _split_tree(tmp_path, splits)
    samples = load_tree(tmp_path)
    assert Counter(s.split for s in samples) == {sp: 3 for sp in splits}


# ------------------------------------------------------------------------------- manifests

def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


def test_load_manifest_relative_paths_names_and_indices(tmp_path):
    make_image(tmp_path / "imgs" / "a.png", 8, 8)
    csv = _write(
        tmp_path / "meta" / "m.csv",
        "path,label,group,generator,split\n"
        "../imgs/a.png,real,,,train\n"
        "../imgs/b.png,1,src7,midjourney,test\n"
        f"{tmp_path / 'abs.jpg'},fake,,,\n"
        " ../imgs/c.png , 0 ,,, val\n",
    )
    s = load_manifest(csv)
    assert [x.label for x in s] == [0, 1, 1, 0]
    assert s[0].path == str((tmp_path / "imgs" / "a.png").resolve())  # relative to the CSV
    assert s[0].key == "../imgs/a.png" and s[0].group == "a" and s[0].split == "train"
    assert s[1].group == "src7" and s[1].generator == "midjourney" and s[1].split == "test"
    assert s[2].path == str((tmp_path / "abs.jpg").resolve()) and s[2].group == "abs" and s[2].split == ""
    assert s[3].path == str((tmp_path / "imgs" / "c.png").resolve()) and s[3].split == "val"
    assert load_samples(csv) == s


def test_load_manifest_minimal_columns_and_directory_form(tmp_path):
    _write(tmp_path / "manifest.csv", "path,label\nx/one.jpg,fake\ny/two.png,real\n")
    s = load_samples(tmp_path)  # a directory holding manifest.csv
    assert [(x.label, x.group, x.generator, x.split) for x in s] == [(1, "one", "", ""), (0, "two", "", "")]


def test_load_manifest_with_utf8_bom(tmp_path):
    csv = _write(tmp_path / "m.csv", "path,label\nä/é.png,real\n", encoding="utf-8-sig")  # as Excel saves it
    s = load_manifest(csv)
    assert s[0].key == "ä/é.png" and s[0].group == "é"


@pytest.mark.parametrize(
    "body,match",
    [
        ("path,label\na.png,real\nb.png,cat\n", r"m\.csv:3: unknown label 'cat'"),
        ("path,label\na.png,2\n", r"m\.csv:2: unknown label '2'"),
        ("path,label\na.png,-1\n", r"m\.csv:2: unknown label '-1'"),
        ("path,label,split\na.png,real,holdout\n", r"m\.csv:2: unknown split 'holdout'"),
        ("file,class\na.png,real\n", r"m\.csv: a manifest needs at least the columns path,label"),
        ("", r"m\.csv: a manifest needs"),
    ],
)
def test_load_manifest_errors_name_file_and_line(tmp_path, body, match):
    csv = _write(tmp_path / "m.csv", body)
    with pytest.raises(ValueError, match=match):
        load_manifest(csv)


def test_load_samples_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="data not found"):
        load_samples(tmp_path / "nothing")


# ---------------------------------------------------------------------------------- splits

def _grouped_samples(n_groups: int = 60, seed: int = 0) -> list[Sample]:
    """Each group has one real and 1–3 fakes (both classes per group)."""
    rng = np.random.default_rng(seed)
    out = []
    for g in range(n_groups):
        out.append(Sample(f"/d/real/g{g}.png", 0, f"g{g}", f"real/g{g}.png"))
        for j in range(int(rng.integers(1, 4))):
            out.append(Sample(f"/d/fake/gen{j}/g{g}.png", 1, f"g{g}", f"fake/gen{j}/g{g}.png", f"gen{j}"))
    return out


def _groups_by_split(samples):
    where = defaultdict(set)
    for s in samples:
        where[s.group].add(s.split)
    return where


@pytest.mark.parametrize("fractions", [(0.7, 0.15, 0.15), (0.8, 0.1, 0.1), (0.6, 0.2, 0.2), (0.5, 0.0, 0.5)])
def test_assign_splits_grouped_stratified_deterministic(fractions):
    samples = _grouped_samples()
    out = assign_splits(samples, fractions, seed=0)
    assert len(out) == len(samples)
    assert [replace(s, split="") for s in out] == samples  # only the split changes; order kept
    assert all(s.split in {"train", "val", "test"} for s in out)
    where = _groups_by_split(out)
    assert all(len(v) == 1 for v in where.values())  # no group straddles splits
    check_no_leak(out)
    n_groups = len(where)
    per_split_groups = Counter(next(iter(v)) for v in where.values())
    for split, f in zip(("train", "val", "test"), fractions):
        if f == 0:
            assert per_split_groups[split] == 0
            continue
        assert abs(per_split_groups[split] / n_groups - f) < 0.06, (split, per_split_groups)
        for label in (0, 1):  # stratified: each label's share roughly follows the fractions
            n_label = sum(s.label == label for s in out)
            share = sum(s.label == label and s.split == split for s in out) / n_label
            assert abs(share - f) < 0.07, (split, label, share)
    assert assign_splits(samples, fractions, seed=0) == out  # deterministic for a seed
    others = [assign_splits(samples, fractions, seed=s) for s in (1, 2, 3)]
    assert any(o != out for o in others)  # and the seed matters


def test_assign_splits_stratifies_unbalanced_groups():
    """Real-only and fake-only groups: each label is still split by the fractions."""
    samples = [Sample(f"/r{i}", 0, f"r{i}", f"r{i}") for i in range(40)]
    samples += [Sample(f"/f{i}", 1, f"f{i}", f"f{i}") for i in range(40)]
    out = assign_splits(samples, (0.5, 0.25, 0.25), seed=3)
    for label in (0, 1):
        c = Counter(s.split for s in out if s.label == label)
        assert abs(c["train"] - 20) <= 2 and abs(c["val"] - 10) <= 2 and abs(c["test"] - 10) <= 2, (label, c)


def test_assign_splits_keeps_existing_splits():
    samples = _grouped_samples(30)
    preset = {}
    for s in samples:
        if s.group in {"g0", "g1", "g2"}:
            preset[s.path] = "test" if s.group == "g0" else "val"
    mixed = [replace(s, split=preset.get(s.path, "")) for s in samples]
    out = assign_splits(mixed, seed=0)
    for s, o in zip(mixed, out):
        if s.split:
            assert o.split == s.split
        else:
            assert o.split
    check_no_leak(out)
    fully = [replace(s, split="train") for s in samples]
    assert assign_splits(fully, seed=0) == fully


def test_assign_splits_partly_split_group_joins_its_split():
    """A manifest that gives a split to only some members of a group: the rest follow it."""
    samples = _grouped_samples(30)
    mixed = [replace(s, split="test") if s.group == "g4" and s.label == 0 else s for s in samples]
    for seed in range(5):
        out = assign_splits(mixed, seed=seed)
        assert {s.split for s in out if s.group == "g4"} == {"test"}
        check_no_leak(out)
    only = [s for s in mixed if s.group == "g4"]
    assert {s.split for s in assign_splits(only)} == {"test"}


def test_check_no_leak_raises_on_leak():
    samples = [
        Sample("/a", 0, "src1", "a", split="train"),
        Sample("/b", 1, "src1", "b", split="test"),
        Sample("/c", 1, "src2", "c", split="test"),
    ]
    with pytest.raises(ValueError, match="src1"):
        check_no_leak(samples)
    check_no_leak(samples[1:])


def test_write_read_split_round_trip(tmp_path):
    samples = assign_splits(_grouped_samples(20), seed=5)
    samples.append(Sample("/d/odd, name \"q\"/ü.png", 1, "odd", "odd", "gen,x", "test"))
    path = tmp_path / "split.csv"
    write_split(samples, path)
    assert read_split(path) == {s.path: s.split for s in samples}


def test_tree_split_then_assign_round_trip(tiny_tree, tmp_path):
    samples = assign_splits(load_tree(tiny_tree), seed=0)
    check_no_leak(samples)
    write_split(samples, tmp_path / "split.csv")
    where = read_split(tmp_path / "split.csv")
    assert [where[s.path] for s in load_tree(tiny_tree)] == [s.split for s in samples]


# --------------------------------------------------------------------------------- collate

def test_collate_pads_mixed_crop_counts(tmp_path):
    sizes = [(300, 300), (500, 460), (700, 690)]  # grid mode: G = 1, 2, 3 → 1, 4, 9 crops
    samples = []
    for i, (h, w) in enumerate(sizes):
        make_image(tmp_path / f"{i}.png", h, w, seed=i)
        samples.append(Sample(str(tmp_path / f"{i}.png"), i % 2, str(i), f"{i}.png"))
    samples.append(Sample(str(tmp_path / "missing.png"), 0, "m", "missing.png"))
    ds = ViewDataset(samples, ViewSpec(mode="grid"))
    items = [ds[i] for i in range(len(ds))]
    batch = collate(items)
    assert batch["crops"].shape == (3, 9, 3, 224, 224) and batch["crops"].dtype == torch.uint8
    assert batch["crop_mask"].tolist() == [[j < n for j in range(9)] for n in (1, 4, 9)]
    assert batch["boxes"].shape == (3, 9, 2)
    for i, n in enumerate((1, 4, 9)):
        assert torch.equal(batch["crops"][i, :n], items[i]["crops"])
        assert not batch["crops"][i, n:].any()
        assert torch.equal(batch["boxes"][i, :n], items[i]["boxes"])
        assert not batch["boxes"][i, n:].any()
        assert torch.equal(batch["global_view"][i], items[i]["global"])
    assert batch["label"].tolist() == [0, 1, 0]
    assert batch["index"].tolist() == [0, 1, 2]
    assert [(i, p) for i, p, _ in batch["errors"]] == [(3, str(tmp_path / "missing.png"))]
    assert "file not found" in batch["errors"][0][2]
    assert [it["index"] for it in batch["items"]] == [0, 1, 2] and batch["row_item"].tolist() == [0, 1, 2]


def test_collate_uniform_counts_no_mask_and_edge_cases(tmp_path):
    for i in range(3):
        make_image(tmp_path / f"{i}.jpg", 300 + 50 * i, 400, seed=i)
    samples = [Sample(str(tmp_path / f"{i}.jpg"), 1, str(i), f"{i}.jpg") for i in range(3)]
    batch = collate([ViewDataset(samples, ViewSpec(k=4))[i] for i in range(3)])
    assert batch["crops"].shape == (3, 4, 3, 224, 224) and batch["crop_mask"] is None
    assert batch["errors"] == []
    base = collate([ViewDataset(samples, ViewSpec(need_crops=False))[i] for i in range(3)])
    assert base["crops"].shape == (3, 0, 3, 224, 224) and base["boxes"].shape == (3, 0, 2)
    assert base["global_view"].shape == (3, 3, 224, 224)
    only_bad = collate([{"index": 0, "error": ("/x.jpg", "broken")}])
    assert only_bad == {"errors": [(0, "/x.jpg", "broken")], "items": []}


def test_dataloader_over_tiny_tree(tiny_tree):
    from torch.utils.data import DataLoader

    samples = load_tree(tiny_tree)
    ds = ViewDataset(samples, ViewSpec(k=2), train=True, seed=0)
    seen = []
    for batch in DataLoader(ds, batch_size=7, collate_fn=collate):
        assert batch["errors"] == []
        assert batch["crops"].shape[1:] == (2, 3, 224, 224)
        seen += batch["index"].tolist()
    assert seen == list(range(len(samples)))


def test_collate_one_row_per_image_and_draw(tmp_path):
    """Evaluation draws: each image gives ``draws`` rows in a row, with their own crops; labels follow."""
    for i in range(2):
        make_image(tmp_path / f"{i}.png", 700, 900, seed=i)
    samples = [Sample(str(tmp_path / f"{i}.png"), i, str(i), f"{i}.png") for i in range(2)]
    ds = ViewDataset(samples, ViewSpec(k=2), draws=3)
    items = [ds[i] for i in range(2)]
    batch = collate(items)
    assert batch["crops"].shape == (6, 2, 3, 224, 224)
    assert batch["index"].tolist() == [0, 0, 0, 1, 1, 1] and batch["draw"].tolist() == [0, 1, 2] * 2
    assert batch["label"].tolist() == [0, 0, 0, 1, 1, 1] and batch["row_item"].tolist() == [0, 0, 0, 1, 1, 1]
    for r in range(6):
        j, d = divmod(r, 3)
        assert torch.equal(batch["crops"][r], items[j]["crops"][2 * d:2 * d + 2])
        assert torch.equal(batch["global_view"][r], items[j]["global"])
    assert not torch.equal(batch["boxes"][0], batch["boxes"][1])  # different draws, different crops
    # training: one draw, whatever was asked
    assert ViewDataset(samples, ViewSpec(k=2), train=True, draws=3)[0]["draws"] == 1
