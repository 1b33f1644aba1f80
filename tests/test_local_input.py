"""ModelConfig.local_input = "residual": the crops enter the local backbone as their Laplacian residual."""
import json

import numpy as np
import pytest
import torch

from glassdetect.models import GLASS, ModelConfig, create_model, load_checkpoint, save_checkpoint
from glassdetect.models.common import (HESSIAN_SCALE, LUMA_WEIGHTS, RESIDUAL_CLIP, RESIDUAL_SCALE, HessianPreprocess,
                                      Preprocess, ResidualPreprocess, luma_hessian)
from glassdetect.models.factory import CONFIG_NAME


def _views(b: int, k: int, size: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=g),
            torch.randint(0, 256, (b, k, 3, size, size), dtype=torch.uint8, generator=g))


def _residual_model(shared: bool = False, k: int = 3, local_input_override: str = "residual", **kw) -> GLASS:
    cfg = ModelConfig(arch="glass", backbone="test_resnet", k=k, patch=64, global_size=64, shared_backbone=shared,
                      local_input=local_input_override, **kw)
    return create_model(cfg).eval()


def test_default_is_the_papers_rgb_crops():
    model = create_model(ModelConfig(arch="glass", backbone="test_resnet", k=2))
    assert model.cfg.local_input == "rgb" and model.local_prep is model.prep
    with pytest.raises(ValueError, match="local_input"):
        ModelConfig(local_input="laplace")
    assert ModelConfig(arch="standard", local_input="residual").local_input == "rgb"  # no crops to change


@pytest.mark.parametrize("prep_cls", [ResidualPreprocess, HessianPreprocess])
@pytest.mark.parametrize("channels_last", [False, True])
def test_residual_shape_dtype_layout(channels_last, prep_cls):
    x = torch.randint(0, 256, (5, 3, 40, 31), dtype=torch.uint8)
    r = prep_cls(channels_last)(x)
    assert r.shape == x.shape and r.dtype == torch.float32
    assert r.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert (r[..., 0, :] == 0).all() and (r[..., :, -1] == 0).all()  # the undefined border is 0
    assert r.abs().max() <= RESIDUAL_CLIP


def test_residual_of_constant_and_smooth_images_is_about_zero():
    prep = ResidualPreprocess(False)
    const = torch.full((1, 3, 32, 32), 200, dtype=torch.uint8)
    assert prep(const).abs().max() == 0
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    ramp = (30 + 1.5 * yy + 2.0 * xx).expand(1, 3, 64, 64)  # linear: exactly zero
    assert prep(ramp).abs().max() == 0
    smooth = (128 + 60 * torch.sin(2 * np.pi * yy / 96) * torch.cos(2 * np.pi * xx / 128)).expand(1, 3, 64, 64)
    rgb = Preprocess((0.5,) * 3, (0.25,) * 3, False)(smooth)
    # amplitude 60 in the pixels, at most 0.05 in the residual (a typical real crop: spread 1)
    assert rgb.abs().max() > 0.9 and prep(smooth).abs().max() < 0.06


def test_period_two_pattern_shows_up_strongly():
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    base = torch.full((32, 32), 128.0)
    checker = base + 2 * (-1.0) ** (yy + xx)  # amplitude 2 in 0-255 units: invisible by eye
    stripes = base + 2 * (-1.0) ** yy
    prep = ResidualPreprocess(False)
    for pattern, gain in ((checker, 8), (stripes, 4)):
        r = prep(pattern.expand(1, 3, 32, 32))[..., 1:-1, 1:-1]
        assert torch.allclose(r.abs(), torch.full_like(r, 2 * gain * RESIDUAL_SCALE))  # 16 / 8 per pixel: unit scale


@pytest.mark.parametrize("shared", [False, True])
def test_residual_glass_shapes_and_it_changes_what_the_crops_give(shared):
    model = _residual_model(shared)
    rgb = create_model(ModelConfig(arch="glass", backbone="test_resnet", k=3, patch=64, global_size=64,
                                   shared_backbone=shared)).eval()
    rgb.load_state_dict(model.state_dict())  # same weights, other crop input
    g, c = _views(2, 3)
    with torch.inference_mode():
        logits, attn = model(g, c)
        ref, _ = rgb(g, c)
        gf = model.global_backbone(model.prep(g))
        lf = model.local_backbone(ResidualPreprocess(True)(c.flatten(0, 1))).view(2, 3, -1)
        pooled, _ = model.attention(lf)
        manual = model.head(torch.cat([gf, pooled], -1))
    assert logits.shape == (2, 2) and attn.shape == (2, 3)
    assert torch.allclose(logits, manual, atol=1e-4)
    assert not torch.allclose(logits, ref, atol=1e-3)


@pytest.mark.parametrize("shared,depth", [(False, 0), (True, 0), (False, 2)])  # depth: ModelConfig.local_depth
def test_cpu_graphs_equal_eager_with_residual_crops(shared, depth):
    model = _residual_model(shared, local_depth=depth)
    eager = _residual_model(shared, local_depth=depth)
    eager.load_state_dict(model.state_dict())
    eager.cpu_graphs = None
    g, c = _views(3, 3, seed=1)
    with torch.inference_mode():
        got, got_attn = model(g, c)
        ref, ref_attn = eager(g, c)
    assert len(model.cpu_graphs._graphs) >= 1  # the frozen graphs really ran
    assert torch.allclose(got, ref, atol=1e-4) and torch.allclose(got_attn, ref_attn, atol=1e-4)


def test_checkpoint_round_trip_and_old_checkpoints_load_as_rgb(tmp_path):
    torch.manual_seed(0)
    model = _residual_model()
    save_checkpoint(tmp_path / "res", model)
    loaded, meta = load_checkpoint(tmp_path / "res")
    assert meta["model"]["local_input"] == "residual" and loaded.cfg.local_input == "residual"
    assert type(loaded.local_prep) is ResidualPreprocess
    g, c = _views(2, 3, seed=2)
    with torch.inference_mode():
        assert torch.allclose(model(g, c)[0], loaded(g, c)[0], atol=1e-5)
    old = create_model(ModelConfig(arch="glass", backbone="test_resnet", k=2, patch=64, global_size=64))
    save_checkpoint(tmp_path / "old", old)
    cfg_path = tmp_path / "old" / CONFIG_NAME
    meta = json.loads(cfg_path.read_text())
    del meta["model"]["local_input"]  # a checkpoint written before the field existed
    cfg_path.write_text(json.dumps(meta))
    loaded_old, _ = load_checkpoint(tmp_path / "old")
    assert loaded_old.cfg.local_input == "rgb" and loaded_old.local_prep is loaded_old.prep


def test_tiny_training_run_with_residual_crops(tmp_path):
    from typer.testing import CliRunner

    from glassdetect.cli import app
    from glassdetect.evaluation.evaluate import evaluate
    from synth import make_checker_tree

    data = make_checker_tree(tmp_path / "data", n_groups=12, size=256)
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--data", str(data), "--arch", "glass", "--backbone", "test_resnet",
                                 "--no-pretrained", "--local-input", "residual", "--epochs", "2", "--batch-size", "8",
                                 "--lr-local", "1e-3", "--lr-head", "1e-3", "--out", str(run), "--workers", "0",
                                 "--threads", "1", "-k", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    meta = json.loads((run / "best" / "config.json").read_text())
    assert meta["model"]["local_input"] == "residual" and meta["train"]["local_input"] == "residual"
    res = evaluate(run / "best", data, split="all", workers=0, device="cpu", progress=False)
    assert res["n"] == 24 and res["auc"] is not None
    bad = CliRunner().invoke(app, ["train", "--data", str(data), "--local-input", "laplace", "--out", str(tmp_path / "x"),
                                   "--backbone", "test_resnet", "--no-pretrained", "--workers", "0", "--quiet"])
    assert bad.exit_code == 2 and "local_input" in bad.output
    assert not (tmp_path / "x" / "best").exists()


# ---- local_input = "hessian": the three second differences of luma ----

def _lumas(y: torch.Tensor) -> torch.Tensor:
    """(H, W) float luma -> a grey (1, 3, H, W) image with that luma."""
    return y.expand(1, 3, *y.shape).clone()


def test_hessian_keeps_the_directions_apart():
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    prep = HessianPreprocess(False)
    assert prep(_lumas(40 + 1.5 * yy + 2.0 * xx)).abs().max() < 1e-4  # linear: zero in all three (float luma)
    a = 2.0
    for pattern, want in (((-1.0) ** yy, (0, 4, 0)), ((-1.0) ** xx, (4, 0, 0)), ((-1.0) ** (yy + xx), (4, 4, 4))):
        r = prep(_lumas(128 + a * pattern))[0, :, 1:-1, 1:-1]
        for ch, gain in enumerate(want):
            assert torch.allclose(r[ch].abs(), torch.full_like(r[ch], a * gain * HESSIAN_SCALE)), (pattern, ch)


def test_hessian_cross_difference_marks_the_phase_of_a_nearest_upsampling():
    """Nearest ×2: the cross difference is non-zero only where the 2×2 it spans crosses a block corner,
    one phase of four; the Laplacian's mirror-symmetric residual spreads over the phases."""
    g = torch.Generator().manual_seed(0)
    small = torch.randint(0, 256, (16, 16), generator=g).float()
    up = small.repeat_interleave(2, 0).repeat_interleave(2, 1)
    dxy = luma_hessian(_lumas(up))[0, 2]  # at (i, j): pixels (i..i+1, j..j+1) of ``up``
    odd = torch.zeros_like(dxy, dtype=torch.bool)
    odd[1::2, 1::2] = True
    assert (dxy[~odd] == 0).all() and (dxy[odd] != 0).float().mean() > 0.9


def test_hessian_reads_luma_only():
    """A colour change that leaves luma constant (a JPEG's chroma pattern, say) gives nothing."""
    yy, xx = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    wave = 20.0 * (-1.0) ** (yy + xx)
    x = torch.stack([120 + wave, 120 - wave * LUMA_WEIGHTS[0] / LUMA_WEIGHTS[1], torch.full_like(wave, 120.0)])[None]
    assert luma_hessian(x).abs().max() < 1e-4
    assert luma_hessian(x[:, [0, 0, 0]]).abs().max() > 10  # the same wave in every channel: seen


def test_hessian_glass_graphs_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = _residual_model(local_input_override="hessian")
    assert isinstance(model.local_prep, HessianPreprocess)
    eager = _residual_model(local_input_override="hessian")
    eager.load_state_dict(model.state_dict())
    eager.cpu_graphs = None
    g, c = _views(2, 3, seed=3)
    with torch.inference_mode():
        got = model(g, c)[0]
        assert torch.allclose(got, eager(g, c)[0], atol=1e-4)
    save_checkpoint(tmp_path / "h", model)
    loaded, meta = load_checkpoint(tmp_path / "h")
    assert meta["model"]["local_input"] == "hessian" and isinstance(loaded.local_prep, HessianPreprocess)
    with torch.inference_mode():
        assert torch.allclose(got, loaded(g, c)[0], atol=1e-5)
