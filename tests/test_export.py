"""`glassdetect export --onnx`: onnxruntime gives PyTorch's outputs (dynamic batch and crop count)."""
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from glassdetect.cli import app
from glassdetect.inference.export import export_onnx
from glassdetect.models import ModelConfig, create_model, load_checkpoint, save_checkpoint

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

# Measured on CPU (test_resnet, fp32): max |ONNX - PyTorch| about 4e-7 on logits; 1e-4 leaves ample room.
ATOL = 1e-4


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(2)
    model = create_model(ModelConfig(arch="glass", backbone="test_resnet", k=3, patch=64, global_size=96))
    model.cfg.temperature = 1.7
    d = tmp_path_factory.mktemp("export") / "ckpt"
    save_checkpoint(d, model)
    return d


def test_onnx_matches_pytorch(ckpt, tmp_path):
    out = tmp_path / "m.onnx"
    r = CliRunner().invoke(app, ["export", str(ckpt), "--onnx", str(out)])
    assert r.exit_code == 0, r.output
    model, _ = load_checkpoint(ckpt)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["global_view", "crops"]
    assert [o.name for o in sess.get_outputs()] == ["logits", "attention", "crop_logits"]
    worst = 0.0
    gen = torch.Generator().manual_seed(0)
    for b, k in [(1, 3), (4, 3), (2, 7)]:  # dynamic batch and crop count
        g = torch.randint(0, 256, (b, 3, 96, 96), dtype=torch.uint8, generator=gen)
        c = torch.randint(0, 256, (b, k, 3, 64, 64), dtype=torch.uint8, generator=gen)
        with torch.inference_mode():
            logits, attn, crop_logits = model.crop_scores(g, c)
        got = sess.run(None, {"global_view": g.numpy(), "crops": c.numpy()})
        for ref, o in zip((logits / 1.7, attn, crop_logits / 1.7), got):
            assert o.shape == tuple(ref.shape)
            worst = max(worst, float(np.abs(o - ref.numpy()).max()))
    print(f"ONNX vs PyTorch max abs diff: {worst:.2e}")
    assert worst < ATOL
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["glassdetect.config"])["k"] == 3 and meta["glassdetect.temperature"] == "1.7"
    assert json.loads(meta["glassdetect.view_spec"])["patch"] == 64


def test_baseline_exports_too(tmp_path):
    model = create_model(ModelConfig(arch="standard", backbone="test_resnet", global_size=64)).eval()
    out = export_onnx(model, tmp_path / "std.onnx")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    g = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        ref, _ = model(g)
    logits, attn = sess.run(None, {"global_view": g.numpy()})
    assert attn.shape == (3, 0) and np.abs(logits - ref.numpy()).max() < ATOL


@pytest.mark.parametrize("depth", [0, 3])
def test_residual_local_input_exports(tmp_path, depth):
    """--local-input residual: the crops' Laplacian residual is part of the exported graph; so is a
    local backbone cut after its third feature level (--local-depth 3)."""
    torch.manual_seed(3)
    model = create_model(ModelConfig(arch="glass", backbone="test_resnet", k=2, patch=64, global_size=64,
                                     local_input="residual", local_depth=depth))
    save_checkpoint(tmp_path / "ckpt", model)
    r = CliRunner().invoke(app, ["export", str(tmp_path / "ckpt"), "--onnx", str(tmp_path / "res.onnx")])
    assert r.exit_code == 0, r.output
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    sess = ort.InferenceSession(str(tmp_path / "res.onnx"), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(1)
    g = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=gen)
    c = torch.randint(0, 256, (3, 4, 3, 64, 64), dtype=torch.uint8, generator=gen)
    with torch.inference_mode():
        ref = loaded.crop_scores(g, c)
    got = sess.run(None, {"global_view": g.numpy(), "crops": c.numpy()})
    for want, o in zip(ref, got):
        assert o.shape == tuple(want.shape) and np.abs(o - want.numpy()).max() < ATOL
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "res.onnx")).metadata_props}
    saved = json.loads(meta["glassdetect.config"])
    assert saved["local_input"] == "residual" and saved["local_depth"] == depth
