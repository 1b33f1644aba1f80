"""ModelConfig.local_depth = L: GLASS's local backbone cut after its first L feature levels."""
import json

import pytest
import torch

from glassdetect.models import GLASS, ModelConfig, create_model, load_checkpoint, save_checkpoint
from glassdetect.models.backbones import truncate_backbone
from glassdetect.models.factory import CONFIG_NAME


def _views(b: int, k: int, size: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=g),
            torch.randint(0, 256, (b, k, 3, size, size), dtype=torch.uint8, generator=g))


def _model(depth: int, backbone: str = "test_resnet", **kw) -> GLASS:
    cfg = ModelConfig(arch="glass", backbone=backbone, k=2, patch=64, global_size=64, local_depth=depth, **kw)
    return create_model(cfg).eval()


def test_default_is_the_whole_backbone_and_bad_values_are_refused():
    model = _model(0)
    assert model.cfg.local_depth == 0 and model.cfg.local_features == model.cfg.num_features
    with pytest.raises(ValueError, match="local_depth"):
        ModelConfig(local_depth=-1)
    with pytest.raises(ValueError, match="shared_backbone"):
        ModelConfig(local_depth=2, shared_backbone=True)
    assert ModelConfig(arch="standard", local_depth=3).local_depth == 0  # no local backbone to cut
    with pytest.raises(ValueError, match="feature levels 1-5"):
        _model(6)


@pytest.mark.parametrize("backbone", ["test_resnet", "test_efficientnet", "test_convnext"])
def test_truncated_features_are_the_full_backbones_pooled_intermediate(backbone):
    import timm

    full = timm.create_model(backbone, num_classes=0).eval()
    levels = len(full.feature_info)
    x = torch.randn(2, 3, 64, 64)
    for depth in range(1, levels):
        cut = timm.create_model(backbone, num_classes=0)
        cut.load_state_dict(full.state_dict())
        width = truncate_backbone(cut, depth, backbone)
        cut.eval()
        with torch.no_grad():
            ref = full.forward_intermediates(x, indices=[depth - 1], intermediates_only=True)[0].mean((2, 3))
            got = cut(x)
        assert got.shape == (2, width) == ref.shape
        assert torch.allclose(got, ref, atol=1e-5)
        assert set(cut.state_dict()) < set(full.state_dict())  # the later layers are gone, the names kept


def test_glass_with_a_cut_local_backbone_shapes_and_head():
    model = _model(3)
    width = model.cfg.local_features
    assert width == 48 and model.cfg.num_features == 96  # test_resnet: level 3 has 48 channels, the whole 96
    assert model.attention.score[0].in_features == width
    assert model.head[-1].in_features == model.cfg.num_features + width
    assert sum(p.numel() for p in model.local_backbone.parameters()) < sum(
        p.numel() for p in model.global_backbone.parameters())
    g, c = _views(3, 2)
    with torch.inference_mode():
        logits, attn = model(g, c)
        _, _, crop_logits = model.crop_scores(g, c)
    assert logits.shape == (3, 2) and attn.shape == (3, 2) and crop_logits.shape == (3, 2, 2)


def test_checkpoint_round_trip_and_old_checkpoints_load_whole(tmp_path):
    torch.manual_seed(0)
    model = _model(3)
    save_checkpoint(tmp_path / "cut", model)
    loaded, meta = load_checkpoint(tmp_path / "cut")
    assert meta["model"]["local_depth"] == 3 and loaded.cfg.local_features == model.cfg.local_features
    g, c = _views(2, 2, seed=2)
    with torch.inference_mode():
        assert torch.allclose(model(g, c)[0], loaded(g, c)[0], atol=1e-5)
    old = _model(0)
    save_checkpoint(tmp_path / "old", old)
    cfg_path = tmp_path / "old" / CONFIG_NAME
    meta = json.loads(cfg_path.read_text())
    del meta["model"]["local_depth"], meta["model"]["local_features"]  # written before the fields existed
    cfg_path.write_text(json.dumps(meta))
    loaded_old, _ = load_checkpoint(tmp_path / "old")
    assert loaded_old.cfg.local_depth == 0 and loaded_old.cfg.local_features == loaded_old.cfg.num_features
    with torch.inference_mode():
        assert torch.allclose(old(g, c)[0], loaded_old(g, c)[0], atol=1e-5)


def test_tiny_training_run_with_a_cut_local_backbone(tmp_path):
    from typer.testing import CliRunner

    from glassdetect.cli import app
    from glassdetect.evaluation.evaluate import evaluate
    from synth import make_checker_tree

    data = make_checker_tree(tmp_path / "data", n_groups=12, size=256)
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--data", str(data), "--arch", "glass", "--backbone", "test_resnet",
                                 "--no-pretrained", "--local-depth", "2", "--freeze", "1", "--epochs", "1",
                                 "--batch-size", "8", "--out", str(run), "--workers", "0", "--threads", "1", "-k", "2",
                                 "--quiet"])
    assert r.exit_code == 0, r.output
    meta = json.loads((run / "best" / "config.json").read_text())
    assert meta["model"]["local_depth"] == 2 and meta["train"]["local_depth"] == 2
    res = evaluate(run / "best", data, split="all", workers=0, device="cpu", progress=False)
    assert res["n"] == 24 and res["auc"] is not None
