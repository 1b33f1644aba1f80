"""TrainConfig.bn_eval: BatchNorm on its running statistics during training, its scale and shift still trained."""
import json

import torch
from safetensors.torch import load_file
from torch import nn

from glassdetect.models import ModelConfig, create_model
from glassdetect.training.params import train_mode


def _bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}


def _step(model: nn.Module) -> None:
    g = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    c = torch.randint(0, 256, (4, 2, 3, 64, 64), dtype=torch.uint8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    logits, _ = model(g, c)
    nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0, 1])).backward()
    opt.step()


def test_bn_eval_keeps_running_statistics_and_trains_scale_and_shift():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="glass", backbone="test_resnet", k=2, patch=64, global_size=64)
    model = create_model(cfg)
    before = _bn_state(model)
    bn = next(m for m in model.global_backbone.modules() if isinstance(m, nn.BatchNorm2d))
    weight = bn.weight.detach().clone()
    train_mode(model, bn_eval=True)
    assert model.training and model.head.training and not bn.training
    _step(model)
    assert all(torch.equal(before[k], v) for k, v in _bn_state(model).items())
    assert not torch.equal(weight, bn.weight.detach())  # the affine parameters still learn
    train_mode(model)  # the default: BatchNorm on batch statistics, running ones updated
    assert bn.training
    _step(model)
    assert any(not torch.equal(before[k], v) for k, v in _bn_state(model).items() if "running_mean" in k)


def test_cli_bn_eval_run_saves_untouched_running_statistics(tmp_path):
    from typer.testing import CliRunner

    from glassdetect.cli import app
    from synth import make_checker_tree

    data = make_checker_tree(tmp_path / "data", n_groups=8, size=128)
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--data", str(data), "--arch", "glass", "--backbone", "test_resnet",
                                 "--no-pretrained", "--bn-eval", "--epochs", "1", "--batch-size", "4", "--out", str(run),
                                 "--workers", "0", "--threads", "1", "-k", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "best" / "config.json").read_text())["train"]["bn_eval"] is True
    tensors = load_file(str(run / "best" / "model.safetensors"))
    means = [v for k, v in tensors.items() if k.endswith("running_mean")]
    variances = [v for k, v in tensors.items() if k.endswith("running_var")]
    assert means and all(torch.equal(m, torch.zeros_like(m)) for m in means)  # timm's initial statistics
    assert all(torch.equal(v, torch.ones_like(v)) for v in variances)
