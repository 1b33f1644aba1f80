"""TrainConfig.paired: a real and the fake made from it train side by side, with the same views."""
import json

import pytest
import torch

from glassdetect.data import Sample, load_samples, pair_key, pair_units
from glassdetect.pipeline import ViewDataset
from glassdetect.training.distributed import ShardSampler
from glassdetect.training.train import TrainConfig, train
from glassdetect.views.build import ViewSpec

from conftest import make_image

CLASSES = ("real", "fake")


def _s(key: str, label: int, group: str, generator: str = "") -> Sample:
    return Sample("/x/" + key, label, group, key, generator)


def test_pair_key_drops_the_class_folder_and_a_generator_folder_below_it():
    assert pair_key(_s("images/train/real/a.png", 0, "g"), CLASSES) == ("g", "images/train/a.png")
    assert pair_key(_s("images/train/fake/a.png", 1, "g", "span-x4"), CLASSES) == ("g", "images/train/a.png")
    assert pair_key(_s("fake/gen_a/a.png", 1, "g", "gen_a"), CLASSES) == ("g", "a.png")
    assert pair_key(_s("fake/other/a.png", 1, "g", "gen_a"), CLASSES) == ("g", "other/a.png")
    assert pair_key(_s("real/fake/a.png", 0, "g"), CLASSES) == ("g", "fake/a.png")  # only its own class folder


def test_pair_units_group_classes_and_leave_the_rest_alone():
    samples = [
        _s("fake/a.png", 1, "a"), _s("real/a.png", 0, "a"),  # a pair, listed fake first
        _s("real/b.png", 0, "b"),  # no fake
        _s("fake/g1/c.png", 1, "c", "g1"), _s("real/c.png", 0, "c"), _s("fake/g2/c.png", 1, "c", "g2"),
        _s("real/d.png", 0, "d"), _s("fake/d.png", 1, "other-group"),  # same file name, another source
    ]
    assert pair_units(samples, CLASSES) == [[1, 0], [2], [4, 3, 5], [6], [7]]


def test_sampler_shuffles_units_and_keeps_their_members_together():
    units = [[0, 1], [2], [3, 4], [5, 6], [7, 8]]
    sampler = ShardSampler(9, 0, 1, lambda e: 100 + e, units)
    orders = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(9))
        for a, b in ([0, 1], [3, 4], [5, 6], [7, 8]):
            assert order.index(b) == order.index(a) + 1
        orders.append(order)
    assert len({tuple(o) for o in orders}) > 1  # a fresh order each epoch
    with pytest.raises(ValueError, match="each of the 9 indices once"):
        ShardSampler(9, 0, 1, lambda e: e, [[0, 1], [1, 2]])


def test_one_draw_key_gives_a_pair_the_same_window_and_crops(tmp_path):
    a = make_image(tmp_path / "a.png", 700, 900, seed=1)
    make_image(tmp_path / "b.png", 700, 900, seed=2)
    make_image(tmp_path / "c.png", 700, 900, seed=3)
    spec = ViewSpec(k=3, patch=64, global_size=64)
    paths = [str(tmp_path / n) for n in ("a.png", "b.png", "c.png")]
    ds = ViewDataset(paths, spec, train=True, seed=5, degrade="window:side=400-600", draw_keys=[0, 0, 2])
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        x, y, z = ds[0], ds[1], ds[2]
        assert torch.equal(x["boxes"], y["boxes"]) and x["size"] == y["size"]
        assert not torch.equal(x["crops"], y["crops"])  # same places, other pixels
        assert not torch.equal(x["boxes"], z["boxes"])
    assert a.shape[:2] == (700, 900)
    with pytest.raises(ValueError, match="draw_keys"):
        ViewDataset(paths, spec, train=True, draw_keys=[0, 0])


@pytest.fixture(scope="module")
def paired_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("paired") / "data"
    for i in range(8):
        make_image(root / "real" / f"img{i:02d}.png", 160, 200, seed=i)
        make_image(root / "fake" / f"img{i:02d}.png", 160, 200, seed=100 + i)
    return root


def test_paired_run_trains_and_records_the_option(paired_tree, tmp_path):
    common = dict(data=str(paired_tree), arch="glass", backbone="test_resnet", pretrained=False, k=2, patch=64,
                  epochs=1, batch_size=4, workers=0, threads=1, progress=False, device="cpu", seed=0)
    samples = load_samples(paired_tree, CLASSES)
    assert all(len(u) == 2 for u in pair_units(samples, CLASSES))
    train(TrainConfig(out=str(tmp_path / "run"), paired=True, **common))
    assert json.loads((tmp_path / "run/last/config.json").read_text())["train"]["paired"] is True


def test_paired_without_pairs_is_refused(tmp_path):
    root = tmp_path / "data"
    for i in range(6):
        make_image(root / "real" / f"r{i}.png", 96, 96, seed=i)
        make_image(root / "fake" / f"f{i}.png", 96, 96, seed=10 + i)
    cfg = TrainConfig(data=str(root), out=str(tmp_path / "run"), arch="glass", backbone="test_resnet", pretrained=False,
                      k=2, patch=64, epochs=1, batch_size=4, workers=0, threads=1, progress=False, device="cpu",
                      paired=True)
    with pytest.raises(ValueError, match="--paired"):
        train(cfg)


def test_pair_loss_ranks_each_fake_above_its_own_real():
    from glassdetect.training.params import pair_loss

    # rows: (real a, fake a), (real b, fake b), a lone real c; s = logit_fake - logit_real
    logits = torch.tensor([[0.0, 1.0], [0.0, 3.0], [0.0, 2.0], [0.0, -1.0], [0.0, 9.0]], requires_grad=True)
    y = torch.tensor([0, 1, 0, 1, 0])
    got = pair_loss(logits, y, [7, 7, 3, 3, 5])
    want = (torch.nn.functional.softplus(torch.tensor(1.0 - 3.0)) + torch.nn.functional.softplus(torch.tensor(2.0 + 1.0))) / 2
    assert torch.allclose(got, want)
    got.backward()
    assert logits.grad[4].abs().sum() == 0  # the lone real takes no part
    assert logits.grad[1, 1] < 0 < logits.grad[0, 1]  # raise the fake's score, lower its real's
    none = pair_loss(logits, y, [0, 1, 2, 3, 4])
    assert float(none.detach()) == 0.0 and none.requires_grad


def test_pair_loss_needs_paired_training(paired_tree, tmp_path):
    cfg = TrainConfig(data=str(paired_tree), out=str(tmp_path / "run"), arch="glass", backbone="test_resnet",
                      pretrained=False, k=2, patch=64, epochs=1, batch_size=4, workers=0, threads=1, progress=False,
                      device="cpu", pair_loss=0.5)
    with pytest.raises(ValueError, match="--paired"):
        train(cfg)


def test_paired_run_with_pair_loss_trains(paired_tree, tmp_path):
    cfg = TrainConfig(data=str(paired_tree), out=str(tmp_path / "run"), arch="standard", backbone="test_resnet",
                      pretrained=False, patch=64, epochs=1, batch_size=4, workers=0, threads=1, progress=False,
                      device="cpu", paired=True, pair_loss=1.0)
    summary = train(cfg)
    assert json.loads((tmp_path / "run/last/config.json").read_text())["train"]["pair_loss"] == 1.0
    assert summary["history"][0]["train_loss"] > 0


def test_cli_paired_options(paired_tree, tmp_path):
    from typer.testing import CliRunner

    from glassdetect.cli import app

    base = ["train", "--data", str(paired_tree), "--arch", "standard", "--backbone", "test_resnet", "--no-pretrained",
            "--epochs", "1", "--batch-size", "4", "--workers", "0", "--threads", "1", "--quiet"]
    r = CliRunner().invoke(app, base + ["--out", str(tmp_path / "run"), "--paired", "--pair-loss", "0.5"])
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "run/best/config.json").read_text())["train"]
    assert saved["paired"] is True and saved["pair_loss"] == 0.5
    bad = CliRunner().invoke(app, base + ["--out", str(tmp_path / "bad"), "--pair-loss", "0.5"])  # without --paired
    assert bad.exit_code != 0 and "--paired" in (bad.output + str(bad.exception))
