"""Backbones by torchvision's names and torchvision state-dict files (glassdetect.models.torchvision_weights),
and the --interpolation option.

No weights can be downloaded here, so every file is a randomly initialised torchvision model saved
with ``torch.save(model.state_dict(), path)``; the converted timm model must compute the same logits.
Measured (torch 2.14, CPU, 1×3×224×224): max |diff| 0 for ResNet-50, ConvNeXt-T and ViT-B/16.
"""
from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.vision_transformer import VisionTransformer
from typer.testing import CliRunner

from glassdetect.models import ModelConfig, create_model, load_checkpoint, save_checkpoint
from glassdetect.models.backbones import create_backbone
from glassdetect.models.torchvision_weights import (
    TORCHVISION_DATA_CONFIG, TORCHVISION_MODELS, convert_state_dict, detect_family, resolve_name,
)
from glassdetect.training.train import TrainConfig

ATOL = 1e-4
IMAGENET_MEAN = pytest.approx((0.485, 0.456, 0.406))
HEAD = {"resnet": "fc", "convnext": "head.fc", "vit": "head"}  # timm's classifier, after conversion


def _randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Noise on every parameter, relative to its size (absolute for all-zero ones), and ConvNeXt's
    layer scales drawn afresh: torchvision zero-initialises ViT's head and starts the layer scales
    at 1e-6, which would hide a wrong mapping of either. (Large absolute noise makes deep nets
    ill-conditioned in float32: at 0.2 the fused and unfused attention of ViT-B differ by 2e-3.)"""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("layer_scale"):
                p.copy_(0.5 * noise)
            else:
                p.add_(0.1 * noise * (float(p.abs().mean()) or 0.5))
    return model.eval()


def _tv_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision's pooled features: the input of the final Linear layer."""
    seen: list[torch.Tensor] = []
    last = {"resnet": lambda m: m.fc, "convnext": lambda m: m.classifier[2], "vit": lambda m: m.heads.head}
    family = "vit" if isinstance(model, VisionTransformer) else "convnext" if isinstance(model, ConvNeXt) else "resnet"
    handle = last[family](model).register_forward_hook(lambda _m, inp, _out: seen.append(inp[0]))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


def _assert_same_logits(tv_model: torch.nn.Module, timm_model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        ref, out = tv_model(x), timm_model.eval()(x)
    assert ref.abs().max() > 1e-2  # a real signal, not a zero-initialised head
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


# ------------------------------------------------------------ the key conversions (tiny models)

def test_tiny_vit_conversion_gives_the_same_logits():
    tv = _randomised(VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                       mlp_dim=64, num_classes=5))
    sd = tv.state_dict()
    assert detect_family(sd) == "vit"
    vit = timm.models.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                                        num_classes=5)
    vit.load_state_dict(convert_state_dict(sd, "vit"), strict=True)
    _assert_same_logits(tv, vit, torch.randn(2, 3, 32, 32))
    # files saved by torchvision < 0.13 name the MLP's layers linear_1 / linear_2
    legacy = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v for k, v in sd.items()}
    assert any("linear_1" in k for k in legacy)
    assert convert_state_dict(legacy, "vit").keys() == convert_state_dict(sd, "vit").keys()


def test_tiny_convnext_conversion_gives_the_same_logits():
    blocks = [CNBlockConfig(8, 16, 2), CNBlockConfig(16, 24, 1), CNBlockConfig(24, 32, 1), CNBlockConfig(32, None, 1)]
    tv = _randomised(ConvNeXt(blocks, num_classes=5))
    sd = tv.state_dict()
    assert detect_family(sd) == "convnext"
    cnx = timm.models.ConvNeXt(depths=(2, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=5)
    cnx.load_state_dict(convert_state_dict(sd, "convnext"), strict=True)
    _assert_same_logits(tv, cnx, torch.randn(2, 3, 64, 64))


def test_unknown_torchvision_keys_are_named():
    sd = VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64,
                           representation_size=16).state_dict()
    with pytest.raises(ValueError, match=r"vit.pth: torchvision vit keys with no timm counterpart: \['heads.pre_logits"):
        convert_state_dict(sd, "vit", "vit.pth")


# ---------------------------------------------- the paper's three backbones, from files on disk

# ViT-B/16 takes ~10 s on a busy CPU (a 330 MB file): slow; test_tiny_vit_conversion_gives_the_same_logits
# covers the same conversion in milliseconds.
@pytest.mark.parametrize("name", ["resnet50", "convnext_tiny", pytest.param("vit_b_16", marks=pytest.mark.slow)])
def test_torchvision_file_same_logits_as_torchvision(tmp_path, name):
    """A torchvision state-dict file loads for ``tv:NAME`` with torchvision's data config, and the
    backbone's features through the converted classifier give torchvision's logits."""
    tv_model = _randomised(getattr(torchvision.models, name)(), seed=len(name))
    path = tmp_path / f"{name}.pth"
    torch.save(tv_model.state_dict(), path)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_logits = tv_model(x)
    ref_features = _tv_features(tv_model, x)
    info = TORCHVISION_MODELS[name]

    bb = create_backbone(f"tv:{name}", weights=path)
    assert bb.name == info.timm_model and bb.weights == str(path)
    assert bb.mean == IMAGENET_MEAN and bb.interpolation == "bilinear"  # torchvision's eval transform
    with torch.no_grad():
        features = bb.module.eval()(x)
    torch.testing.assert_close(features, ref_features, atol=ATOL, rtol=0)
    sd = torch.load(path, weights_only=True)
    converted = convert_state_dict(sd, detect_family(sd) or "resnet")
    logits = F.linear(features, converted[f"{HEAD[info.family]}.weight"], converted[f"{HEAD[info.family]}.bias"])
    torch.testing.assert_close(logits, ref_logits, atol=ATOL, rtol=0)
    with torch.device("meta"):  # every converted key is a timm key of the full model, shapes included
        full = timm.create_model(info.timm_name, pretrained=False).state_dict()
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in full.items()}


# --------------------------------------------------------------------------------- the names

def test_names_resolve_to_timm_models():
    assert resolve_name("tv:resnet50").timm_model == "resnet50.tv_in1k"  # timm's copy of torchvision's weights
    assert resolve_name("tv:convnext_tiny").timm_model == "convnext_tiny"  # timm has none: a file is needed
    assert resolve_name("tv:vit_b_16").timm_model == "vit_base_patch16_224"
    assert resolve_name("vit_b_16") is resolve_name("tv:vit_b_16")  # a torchvision-only name is an alias
    assert resolve_name("resnet50") is None and resolve_name("convnext_tiny") is None  # timm's own, as before
    assert resolve_name("resnet50.tv_in1k") is None and resolve_name("test_resnet") is None
    for info in TORCHVISION_MODELS.values():
        assert timm.is_model(info.timm_name)
        if info.timm_tag:
            assert info.timm_model in timm.list_pretrained(f"{info.timm_name}.*")
    with pytest.raises(ValueError, match="unknown torchvision backbone 'tv:resnet51'; known: tv:resnet18"):
        resolve_name("tv:resnet51")


def test_pretrained_torchvision_name_without_timm_copy_asks_for_a_file():
    with pytest.raises(ValueError, match=r"tv:vit_b_16: timm holds no copy.*--weights FILE"):
        create_backbone("tv:vit_b_16", pretrained=True)


def test_torchvision_name_model_config_and_checkpoint(tmp_path):
    """tv:NAME is stored as the timm model it built, with torchvision's data config, and loads back."""
    model = create_model(ModelConfig(arch="standard", backbone="tv:resnet18"), pretrained=False).eval()
    cfg = model.cfg
    assert cfg.backbone == "resnet18.tv_in1k" and cfg.weights == "random"
    assert cfg.mean == IMAGENET_MEAN and cfg.interpolation == "bilinear" and cfg.view_spec().interpolation == "bilinear"
    save_checkpoint(tmp_path / "ck", model)
    loaded, meta = load_checkpoint(tmp_path / "ck")
    assert meta["model"]["backbone"] == "resnet18.tv_in1k" and loaded.cfg.interpolation == "bilinear"
    g = torch.randint(0, 256, (1, 3, 224, 224), dtype=torch.uint8)
    with torch.inference_mode():
        assert torch.equal(model(g)[0], loaded(g)[0])


def test_torchvision_file_for_another_family_is_refused(tmp_path):
    sd = VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64).state_dict()
    torch.save(sd, tmp_path / "vit.pth")
    with pytest.raises(ValueError, match=r"vit.pth: a torchvision vit state dict, not weights for resnet18"):
        create_backbone("tv:resnet18", weights=tmp_path / "vit.pth")
    with pytest.raises(ValueError, match=r"vit.pth: weights do not fit"):  # timm name: converted, then does not fit
        create_backbone("test_vit", weights=tmp_path / "vit.pth")


def test_torchvision_data_config_is_torchvisions():
    assert TORCHVISION_DATA_CONFIG["interpolation"] == "bilinear"
    ref = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.transforms()
    assert tuple(ref.mean) == TORCHVISION_DATA_CONFIG["mean"] and tuple(ref.std) == TORCHVISION_DATA_CONFIG["std"]
    assert ref.interpolation.value == TORCHVISION_DATA_CONFIG["interpolation"]
    for weights in (torchvision.models.ConvNeXt_Tiny_Weights.IMAGENET1K_V1, torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1):
        t = weights.transforms()
        assert (tuple(t.mean), tuple(t.std), t.interpolation.value) == (tuple(ref.mean), tuple(ref.std), "bilinear")


# ------------------------------------------------------------------------------ interpolation

def test_interpolation_default_is_the_weights_own_and_a_choice_wins(tmp_path):
    own = create_model(ModelConfig(arch="standard", backbone="test_convnext")).cfg
    assert own.interpolation == timm.create_model("test_convnext").pretrained_cfg["interpolation"] == "bicubic"
    chosen = create_model(ModelConfig(arch="standard", backbone="test_convnext", interpolation="bilinear"))
    assert chosen.cfg.interpolation == "bilinear" and chosen.cfg.view_spec().interpolation == "bilinear"
    save_checkpoint(tmp_path / "ck", chosen)
    assert load_checkpoint(tmp_path / "ck")[0].cfg.view_spec().interpolation == "bilinear"
    with pytest.raises(ValueError, match="interpolation must be one of"):
        ModelConfig(interpolation="cubic")
    with pytest.raises(ValueError, match="build the model"):
        ModelConfig().view_spec()


def test_train_interpolation_option_reaches_the_checkpoint(tiny_tree, tmp_path):
    assert TrainConfig(interpolation="bilinear").model_config().interpolation == "bilinear"
    assert TrainConfig().model_config().interpolation is None
    from glassdetect.cli import app

    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--data", str(tiny_tree), "--out", str(out), "--arch", "standard",
                                 "--backbone", "test_convnext", "--no-pretrained", "--epochs", "1", "--batch-size", "8",
                                 "--workers", "0", "--threads", "1", "--device", "cpu", "--quiet",
                                 "--interpolation", "bilinear"])
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "best" / "config.json").read_text())
    assert meta["model"]["interpolation"] == "bilinear" and meta["train"]["interpolation"] == "bilinear"
    bad = CliRunner().invoke(app, ["train", "--data", str(tiny_tree), "--out", str(tmp_path / "bad"), "--no-pretrained",
                                   "--interpolation", "cubic"])
    assert bad.exit_code == 2 and "'cubic' is not one of bicubic" in bad.output, bad.output
    assert not (tmp_path / "bad").exists()  # refused before anything is written
