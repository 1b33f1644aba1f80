"""TrainConfig.ema: an exponential moving average of the weights is what training validates and saves."""
import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from glassdetect.training.ema import WeightEMA
from glassdetect.training.train import TrainConfig, train

from synth import assert_interrupted_run_resumes_exactly

FAST = dict(pretrained=False, workers=0, threads=1, progress=False, device="cpu")


def test_average_follows_the_warmed_up_decay():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = WeightEMA(net, decay=0.9)
    want = {k: v.clone() for k, v in net.state_dict().items()}
    for t in range(30):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net[1].running_mean.add_(1.0)
            net[1].num_batches_tracked.add_(1)
        d = min(0.9, (1 + t) / (10 + t))
        assert ema.current_decay() == pytest.approx(d)
        for k, v in net.state_dict().items():
            want[k] = d * want[k] + (1 - d) * v if v.dtype.is_floating_point else v.clone()
        ema.update(net)
    got = ema.module.state_dict()
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-5), k
    assert int(got["1.num_batches_tracked"]) == 30  # integer buffers are copied, not averaged
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    assert not torch.allclose(got["0.weight"], net.state_dict()["0.weight"])  # an average, not a copy
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(net, 1.0)


@pytest.fixture(scope="module")
def checker(tmp_path_factory):
    from synth import make_checker_tree

    return make_checker_tree(tmp_path_factory.mktemp("ema") / "data", n_groups=12, size=128)


def test_ema_run_saves_the_average_and_resumes_exactly(checker, tmp_path):
    common = dict(data=str(checker), arch="glass", backbone="test_resnet", k=2, patch=64, epochs=2, batch_size=8,
                  lr_global=1e-3, lr_local=1e-3, lr_head=1e-3, seed=1, ema=0.9, **FAST)
    train(TrainConfig(out=str(tmp_path / "full"), **common))
    saved = load_file(str(tmp_path / "full/last/model.safetensors"))
    state = torch.load(tmp_path / "full/last/trainer_state.pt", map_location="cpu", weights_only=True)
    trained = state["trained_weights"]
    assert state["ema_steps"] > 0 and saved.keys() == trained.keys()
    assert any(not torch.equal(saved[k], trained[k]) for k in saved if saved[k].dtype.is_floating_point)
    assert json.loads((tmp_path / "full/last/config.json").read_text())["train"]["ema"] == 0.9
    assert_interrupted_run_resumes_exactly(tmp_path / "full", tmp_path / "cut", **common)
    with pytest.raises(ValueError, match="written with ema"):  # the average is not the weights being trained
        train(TrainConfig(out=str(tmp_path / "cut"), resume=True, **{**common, "ema": 0.0, "epochs": 3}))
    with pytest.raises(ValueError, match="ema must be"):
        train(TrainConfig(out=str(tmp_path / "bad"), **{**common, "ema": 1.5}))


def test_cli_ema_option(checker, tmp_path):
    from typer.testing import CliRunner

    from glassdetect.cli import app

    base = ["train", "--data", str(checker), "--arch", "glass", "--backbone", "test_resnet", "--no-pretrained",
            "-k", "2", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--threads", "1", "--quiet"]
    r = CliRunner().invoke(app, base + ["--out", str(tmp_path / "run"), "--ema", "0.9"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run/best/config.json").read_text())["train"]["ema"] == 0.9
    bad = CliRunner().invoke(app, base + ["--out", str(tmp_path / "bad"), "--ema", "1.5"])
    assert bad.exit_code == 2 and not (tmp_path / "bad").exists()
