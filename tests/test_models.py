import pytest
import torch

from glassdetect.models import GLASS, ModelConfig, StandardClassifier, create_model, load_checkpoint, save_checkpoint
from glassdetect.models.backbones import create_backbone, read_state_dict
from glassdetect.models.factory import read_config


def _views(b: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (b, 3, 224, 224), dtype=torch.uint8, generator=g),
            torch.randint(0, 256, (b, k, 3, 224, 224), dtype=torch.uint8, generator=g))


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("k", [1, 4, 10])
def test_glass_shapes_and_attention_sum_to_one(k, shared):
    cfg = ModelConfig(arch="glass", backbone="test_resnet", k=k, shared_backbone=shared)
    model = create_model(cfg).eval()
    assert isinstance(model, GLASS) and model.shared is shared
    g, c = _views(3, k)
    with torch.inference_mode():
        logits, attn = model(g, c)
    assert logits.shape == (3, 2) and attn.shape == (3, k)
    assert torch.allclose(attn.sum(-1), torch.ones(3), atol=1e-5)
    assert (attn >= 0).all()


def test_shared_backbone_halves_backbone_parameters():
    sep = create_model(ModelConfig(arch="glass", backbone="test_resnet", k=2))
    shared = create_model(ModelConfig(arch="glass", backbone="test_resnet", k=2, shared_backbone=True))
    n_sep = sum(p.numel() for p in sep.parameters())
    n_shared = sum(p.numel() for p in shared.parameters())
    n_bb = sum(p.numel() for p in shared.global_backbone.parameters())
    assert n_sep - n_shared == n_bb


def test_shared_batched_call_equals_separate_calls():
    model = create_model(ModelConfig(arch="glass", backbone="test_resnet", k=3, shared_backbone=True)).eval()
    g, c = _views(2, 3)
    with torch.inference_mode():
        logits, attn = model(g, c)
        gf = model.global_backbone(model.prep(g))
        lf = model.local_backbone(model.prep(c.flatten(0, 1))).view(2, 3, -1)
        pooled, w = model.attention(lf)
        ref = model.head(torch.cat([gf, pooled], -1))
    assert torch.allclose(logits, ref, atol=1e-4) and torch.allclose(attn, w, atol=1e-5)


def test_crop_mask_excludes_padding_crops():
    model = create_model(ModelConfig(arch="glass", backbone="test_resnet", k=4)).eval()
    g, c = _views(1, 4)
    mask = torch.tensor([[True, True, False, False]])
    with torch.inference_mode():
        masked, attn = model(g, c, mask)
        ref, _ = model(g, c[:, :2])
    assert attn[0, 2:].sum() == 0
    assert torch.allclose(masked, ref, atol=1e-4)


def test_standard_baseline_shapes():
    model = create_model(ModelConfig(arch="standard", backbone="test_convnext")).eval()
    assert isinstance(model, StandardClassifier)
    g, _ = _views(2, 1)
    logits, attn = model(g)
    assert logits.shape == (2, 2) and attn.shape == (2, 0)


@pytest.mark.parametrize("backbone", ["test_resnet", "test_convnext", "test_vit", "test_efficientnet"])
def test_any_timm_backbone_and_layout(backbone):
    cfg = ModelConfig(arch="glass", backbone=backbone, k=2)
    model = create_model(cfg).eval()
    assert model.cfg.channels_last is (backbone != "test_vit")  # attention models stay NCHW
    assert model.cfg.num_features == model.global_backbone.num_features
    g, c = _views(1, 2)
    with torch.inference_mode():
        assert model(g, c)[0].shape == (1, 2)


def test_normalisation_comes_from_backbone_config():
    cfg = ModelConfig(arch="glass", backbone="test_resnet", k=1)
    filled = create_model(cfg).cfg
    assert filled.mean == (0.5, 0.5, 0.5) and filled.interpolation == "bilinear"  # timm's test_resnet cfg
    cfg2 = ModelConfig(arch="glass", backbone="test_efficientnet", k=1)
    assert create_model(cfg2).cfg.mean == pytest.approx((0.485, 0.456, 0.406))


def test_create_model_leaves_the_callers_config_alone():
    cfg = ModelConfig(arch="glass", backbone="test_resnet", k=1, backbone_kwargs={})
    before, kwargs = cfg.to_dict(), cfg.backbone_kwargs
    model = create_model(cfg)
    assert cfg.to_dict() == before and cfg.backbone_kwargs is kwargs and kwargs == {}
    assert model.cfg is not cfg and model.cfg.num_features > 0 and model.cfg.interpolation == "bilinear"


@pytest.mark.parametrize("arch,shared", [("glass", False), ("glass", True), ("standard", False)])
def test_checkpoint_round_trip_identical_logits(tmp_path, arch, shared):
    cfg = ModelConfig(arch=arch, backbone="test_resnet", k=3, shared_backbone=shared, dropout=0.2)
    model = create_model(cfg).eval()
    with torch.no_grad():  # make weights differ from a fresh init
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_checkpoint(tmp_path / "ck", model, {"note": "x"})
    assert {p.name for p in (tmp_path / "ck").iterdir()} == {"config.json", "model.safetensors"}
    loaded, meta = load_checkpoint(tmp_path / "ck")
    assert meta["note"] == "x" and read_config(tmp_path / "ck")["model"]["arch"] == arch
    g, c = _views(2, 3)
    with torch.inference_mode():
        assert torch.equal(model(g, c)[0], loaded(g, c)[0])


def test_weights_file_loading(tmp_path):
    """--weights FILE: a full timm state dict (classifier included) from .safetensors or .pth."""
    import timm
    from safetensors.torch import save_file

    src = timm.create_model("test_resnet", pretrained=False)
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": sd}, tmp_path / "w.pth")
    x = torch.randn(1, 3, 64, 64)
    src.reset_classifier(0)
    src.eval()
    for name in ("w.safetensors", "w.pth"):
        bb = create_backbone("test_resnet", weights=tmp_path / name)
        assert bb.weights.endswith(name)
        with torch.no_grad():
            assert torch.allclose(bb.module.eval()(x), src(x))


def test_weights_file_errors_are_clear(tmp_path):
    import timm
    from safetensors.torch import save_file

    other = timm.create_model("test_convnext", pretrained=False)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="do not fit"):
        create_backbone("test_resnet", weights=tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "missing.pth")

    class Evil:  # a pickle that would run code is refused by weights_only loading
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights-only"):
        read_state_dict(tmp_path / "evil.pth")
