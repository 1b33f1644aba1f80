"""Dataset layouts read as they are (glassdetect.data.layouts) and ``glassdetect data inspect``."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_image
from glassdetect.cli import app
from glassdetect.data.splits import check_no_leak, load_samples, load_tree
from glassdetect.data.layouts import detect_layout, inspect, render


def _img(path: Path, seed: int = 0, size: int = 16) -> None:
    make_image(path, size, size, seed=seed)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under root with its size and modification time."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.stat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_size, st.st_mtime_ns)
    return out


def _by_key(samples) -> dict:
    return {s.key: s for s in samples}


# ------------------------------------------------------------------------ fixtures per layout

def make_kaggle(root: Path, real: str = "real", fake: str = "fake", splits=("train", "test")) -> Path:
    """``ROOT/{train,test}/{real,fake}``; the same file names in both splits and both classes."""
    for i, split in enumerate(splits):
        for j in range(2):
            _img(root / split / real / f"{j:04d}.jpg", seed=10 * i + j)
            _img(root / split / fake / f"{j:04d}.png", seed=100 + 10 * i + j)
    return root


def make_forensynths(root: Path) -> Path:
    """CNNDetection-style: train/val by category, test by generator (one with categories)."""
    for split in ("train", "val"):
        for cat in ("car", "cat"):
            _img(root / split / cat / "0_real" / "00001.png", seed=1)
            _img(root / split / cat / "1_fake" / "00001.png", seed=2)
    for gen in ("progan/airplane", "progan/bird", "stylegan"):
        _img(root / "test" / gen / "0_real" / "00001.png", seed=3)
        _img(root / "test" / gen / "1_fake" / "00001.png", seed=4)
        _img(root / "test" / gen / "1_fake" / "more" / "00002.jpg", seed=5)
    return root


def make_genimage(root: Path) -> Path:
    for gen, subset in (("Midjourney", "imagenet_midjourney"), ("ADM", "imagenet_ai_0508_adm")):
        for split in ("train", "val"):
            base = root / gen / subset / split
            _img(base / "nature" / "n01440764_1.JPEG", seed=6)
            _img(base / "nature" / "n01440764_2.JPEG", seed=7)
            _img(base / "ai" / f"0_{gen.lower()}_1.png", seed=8)
    return root


# -------------------------------------------------------------------------- the Kaggle set

def test_kaggle_train_test_splits_and_groups(tmp_path):
    root = make_kaggle(tmp_path / "kaggle")
    assert detect_layout(root).name == "kaggle"
    samples = load_samples(root)
    assert len(samples) == 8
    assert Counter((s.split, s.label) for s in samples) == {(sp, lab): 2 for sp in ("train", "test") for lab in (0, 1)}
    s = _by_key(samples)[os.path.join("test", "fake", "0001.png")]
    assert s.label == 1 and s.split == "test" and s.generator == "" and s.group == "test/0001"
    assert Path(s.path) == (root / "test" / "fake" / "0001.png").resolve()
    # train/real/0001 and test/real/0001 are different images: they must not form one group
    check_no_leak(samples)
    assert {s.group for s in samples} == {f"{sp}/{j:04d}" for sp in ("train", "test") for j in range(2)}


def test_kaggle_class_folders_ignore_case(tmp_path):
    root = make_kaggle(tmp_path / "cifake", real="REAL", fake="FAKE")
    samples = load_samples(root)
    assert detect_layout(root).name == "kaggle" and len(samples) == 8
    assert all(Path(s.path).parent.name == ("REAL", "FAKE")[s.label] for s in samples)


def test_kaggle_test_alone_and_pointing_at_test(tmp_path):
    root = make_kaggle(tmp_path / "kaggle", splits=("test",))
    whole, test_only = load_samples(root), load_samples(root / "test")
    assert detect_layout(root).name == detect_layout(root / "test").name == "kaggle"
    assert {s.split for s in whole} == {s.split for s in test_only} == {"test"}
    assert sorted(s.path for s in whole) == sorted(s.path for s in test_only) and len(whole) == 4
    assert sorted((s.label, s.group) for s in whole) == sorted((s.label, s.group) for s in test_only)


def test_train_val_test_tree_stays_our_own_layout(tmp_path):
    root = make_kaggle(tmp_path / "ours", splits=("train", "val", "test"))
    assert detect_layout(root).name == "imagefolder"
    assert load_samples(root) == load_tree(root)  # stem groups, as before


# ----------------------------------------------------------------------- ForenSynths family

def test_forensynths_splits_generators_categories_groups(tmp_path):
    root = make_forensynths(tmp_path / "CNNDetection")
    assert detect_layout(root).name == "forensynths"
    samples = load_samples(root)
    assert len(samples) == 2 * 2 * 2 + 3 * 3
    got = {(s.key, s.label, s.split, s.generator, s.group) for s in samples}
    j = os.path.join
    assert (j("train", "car", "0_real", "00001.png"), 0, "train", "", "train/car/00001") in got
    assert (j("val", "cat", "1_fake", "00001.png"), 1, "val", "", "val/cat/00001") in got
    assert (j("test", "progan", "bird", "1_fake", "more", "00002.jpg"), 1, "test", "progan",
            "test/progan/bird/more/00002") in got
    assert (j("test", "stylegan", "0_real", "00001.png"), 0, "test", "stylegan", "test/stylegan/00001") in got
    # the same file name in two generators or two categories: different groups; real and fake
    # of one folder with the same name: one group
    groups = Counter(s.group for s in samples)
    assert groups["test/progan/airplane/00001"] == 2 and groups["test/stylegan/00001"] == 2
    check_no_leak(samples)
    assert Counter(s.generator for s in samples if s.split == "test") == {"progan": 6, "stylegan": 3}


def test_forensynths_pointing_below_the_split_folder(tmp_path):
    root = make_forensynths(tmp_path / "CNNDetection")
    progan = load_samples(root / "test" / "progan")
    assert {(s.split, s.generator) for s in progan} == {("test", "progan")} and len(progan) == 6
    test = load_samples(root / "test")
    assert Counter(s.generator for s in test) == {"progan": 6, "stylegan": 3} and {s.split for s in test} == {"test"}
    # the CNNDetection test set as downloaded: no split folder, generator at the top
    bare = tmp_path / "CNN_synth_testset"
    _img(bare / "biggan" / "0_real" / "a.png")
    _img(bare / "biggan" / "1_fake" / "a.png")
    _img(bare / "gaugan" / "1_fake" / "a.png")
    s = load_samples(bare)
    assert sorted((x.label, x.split, x.generator, x.group) for x in s) == [
        (0, "", "biggan", "biggan/a"), (1, "", "biggan", "biggan/a"), (1, "", "gaugan", "gaugan/a")]


def test_wildrf_platforms_under_test(tmp_path):
    root = tmp_path / "WildRF"  # train/val hold 0_real/1_fake directly; test is split by platform
    for split in ("train", "val"):
        _img(root / split / "0_real" / "a.jpg")
        _img(root / split / "1_fake" / "b.png")
    for platform in ("reddit", "twitter"):
        _img(root / "test" / platform / "0_real" / "a.jpg")
        _img(root / "test" / platform / "1_fake" / "a.png")
    assert detect_layout(root).name == "forensynths"
    got = sorted((s.split, s.generator, s.label, s.group) for s in load_samples(root))
    assert got == [("test", "reddit", 0, "test/reddit/a"), ("test", "reddit", 1, "test/reddit/a"),
                   ("test", "twitter", 0, "test/twitter/a"), ("test", "twitter", 1, "test/twitter/a"),
                   ("train", "", 0, "train/a"), ("train", "", 1, "train/b"),
                   ("val", "", 0, "val/a"), ("val", "", 1, "val/b")]


def test_foreign_layouts_need_two_classes(tmp_path):
    root = make_forensynths(tmp_path / "fs")
    with pytest.raises(ValueError, match="two classes"):
        load_samples(root, ("real", "fake", "other"))


# -------------------------------------------------------------------------------- GenImage

def test_genimage_val_is_test_and_generator_from_the_top(tmp_path):
    root = make_genimage(tmp_path / "GenImage")
    assert detect_layout(root).name == "genimage"
    samples = load_samples(root)
    assert len(samples) == 2 * 2 * 3
    assert {s.split for s in samples} == {"train", "test"}  # GenImage's val is its test set
    assert Counter((s.generator, s.split, s.label) for s in samples) == {
        (g, sp, lab): 2 if lab == 0 else 1 for g in ("Midjourney", "ADM") for sp in ("train", "test") for lab in (0, 1)}
    s = _by_key(samples)[os.path.join("ADM", "imagenet_ai_0508_adm", "val", "nature", "n01440764_1.JPEG")]
    assert s.label == 0 and s.split == "test" and s.group == "ADM/imagenet_ai_0508_adm/val/n01440764_1"
    check_no_leak(samples)
    # one generator, or one of its subsets: the same generator and splits
    for sub in (root / "ADM", root / "ADM" / "imagenet_ai_0508_adm"):
        part = load_samples(sub)
        assert {s.generator for s in part} == {"ADM"} and len(part) == 6
        assert sorted((s.path, s.split, s.group) for s in part) == sorted(
            (s.path, s.split, s.group) for s in samples if s.generator == "ADM")


# ------------------------------------------------------------------------------- CSV lists

def test_spai_csv(tmp_path):
    for name in ("a.png", "b.png", "c.jpg"):
        _img(tmp_path / "imgs" / name)
    csv = _write(tmp_path / "lists" / "spai.csv", "image,class,split\n../imgs/a.png,0,train\n"
                 "../imgs/b.png,1,test\n../imgs/c.jpg,1,val\n")
    assert detect_layout(csv).name == "spai-csv"
    s = load_samples(csv)
    assert [(x.label, x.split, x.group, x.key) for x in s] == [
        (0, "train", "../imgs/a", "../imgs/a.png"), (1, "test", "../imgs/b", "../imgs/b.png"),
        (1, "val", "../imgs/c", "../imgs/c.jpg")]
    assert s[0].path == str((tmp_path / "imgs" / "a.png").resolve())
    bad = _write(tmp_path / "bad.csv", "image,class,split\nx.png,0,train\ny.png,2,train\n")
    with pytest.raises(ValueError, match=r"bad\.csv:3: unknown class '2'"):
        load_samples(bad)


def test_bfree_csv(tmp_path):
    csv = _write(tmp_path / "bfree.csv", "filename,label\nreal/a.png,0\nfake/sd/a.png,1\nx.jpg,REAL\ny.jpg,fake\n")
    assert detect_layout(csv).name == "bfree-csv"
    s = load_samples(csv)
    assert [x.label for x in s] == [0, 1, 0, 1] and {x.split for x in s} == {""}
    assert s[1].path == str((tmp_path / "fake" / "sd" / "a.png").resolve()) and s[1].group == "fake/sd/a"
    bad = _write(tmp_path / "b2.csv", "filename,label\nx.png,maybe\n")
    with pytest.raises(ValueError, match=r"b2\.csv:2: unknown label 'maybe'"):
        load_samples(bad)


def test_our_manifest_and_tree_unchanged(tmp_path, tiny_tree):
    assert detect_layout(tiny_tree).name == "imagefolder" and load_samples(tiny_tree) == load_tree(tiny_tree)
    m = _write(tmp_path / "m" / "manifest.csv", "path,label,group,generator,split\nx.png,fake,g1,sd,test\n")
    assert detect_layout(m).name == detect_layout(m.parent).name == "manifest"
    assert load_samples(m) == load_samples(m.parent)
    assert (load_samples(m)[0].group, load_samples(m)[0].generator) == ("g1", "sd")
    # a CSV of none of the known kinds still gets the manifest's error
    with pytest.raises(ValueError, match="a manifest needs at least the columns path,label"):
        load_samples(_write(tmp_path / "other.csv", "file,class\na.png,real\n"))


# ------------------------------------------------------------------------------ errors, safety

def test_unrecognised_folder_and_missing_class(tmp_path):
    _img(tmp_path / "photos" / "holiday" / "a.png")
    with pytest.raises(FileNotFoundError, match=r"photos: no dataset layout recognised(.|\n)*forensynths"):
        load_samples(tmp_path / "photos")
    r = CliRunner().invoke(app, ["data", "inspect", str(tmp_path / "photos")])
    assert r.exit_code == 2 and "no dataset layout recognised" in " ".join(r.output.split())  # rich wraps lines
    _img(tmp_path / "half" / "real" / "a.png")  # our tree with a class missing: the tree's own error
    with pytest.raises(FileNotFoundError, match="expected a class folder 'fake'"):
        load_samples(tmp_path / "half")
    with pytest.raises(FileNotFoundError, match="data not found"):
        load_samples(tmp_path / "nothing")


def test_nothing_is_written_into_the_data(tmp_path):
    roots = [make_kaggle(tmp_path / "k"), make_forensynths(tmp_path / "f"), make_genimage(tmp_path / "g")]
    _write(tmp_path / "c" / "list.csv", "image,class\nx.png,1\n")
    before = _snapshot(tmp_path)
    for root in [*roots, tmp_path / "c" / "list.csv"]:
        load_samples(root)
        render(inspect(root))
    assert _snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------- inspect

def test_inspect_summary_and_cli(tmp_path):
    root = make_forensynths(tmp_path / "CNNDetection")
    summary = inspect(root)
    assert summary["layout"] == "forensynths" and summary["n_images"] == 17 and summary["missing_files"] == 0
    assert summary["splits"] == {"train": {"real": 2, "fake": 2}, "val": {"real": 2, "fake": 2},
                                 "test": {"real": 3, "fake": 6}}
    assert summary["generators"]["test"] == {"progan": {"real": 2, "fake": 4}, "stylegan": {"real": 1, "fake": 2}}
    out = tmp_path / "out" / "summary.json"
    r = CliRunner().invoke(app, ["data", "inspect", str(root), "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "layout:  forensynths" in r.stdout and "17 in" in r.stdout
    assert [ln.split() for ln in r.stdout.splitlines() if ln.split()[:1] == ["test"]] == [
        ["test", "3", "6", "9"], ["test", "progan", "2", "4"], ["test", "stylegan", "1", "2"]]
    assert json.loads(out.read_text()) == summary | {"path": str(root)}


def test_inspect_notes(tmp_path):
    g = inspect(make_genimage(tmp_path / "g"))
    assert any("read as split 'test'" in n for n in g["notes"]) and any("no val split" in n for n in g["notes"])
    csv = _write(tmp_path / "c" / "l.csv", "filename,label\nmissing.png,1\n")
    c = inspect(csv)
    assert c["missing_files"] == 1 and any("no 'real' images" in n for n in c["notes"])
    assert any("no split given" in n for n in c["notes"])
    r = CliRunner().invoke(app, ["data", "inspect", str(csv), "--classes", "nature,ai"])
    assert r.exit_code == 0 and "classes: nature = 0, ai = 1" in r.stdout and "bfree-csv" in r.stdout


# ------------------------------------------------------------------- train + evaluate on one

def test_train_and_evaluate_on_forensynths_layout(tmp_path):
    root = tmp_path / "fs"
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for i in range(n):
            where = "car" if split != "test" else "progan"
            _img(root / split / where / "0_real" / f"{i}.png", seed=i, size=64)
            _img(root / split / where / "1_fake" / f"{i}.png", seed=50 + i, size=64)
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--data", str(root), "--arch", "glass", "--backbone", "test_resnet",
                                 "--no-pretrained", "--epochs", "1", "--batch-size", "4", "-k", "2",
                                 "--out", str(run), "--workers", "0", "--threads", "1", "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_train"] == 8 and summary["n_val"] == 4 and summary["n_test"] == 4
    out = tmp_path / "m.json"
    r = CliRunner().invoke(app, ["evaluate", str(run / "best"), "--data", str(root), "--out", str(out),
                                 "--workers", "0", "--threads", "1", "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["split"] == "test" and res["n"] == 4 and set(res["per_generator"]) == {"progan"}
