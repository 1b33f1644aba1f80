"""CPU evaluation runs the backbones over micro-batches of views: same outputs, training untouched."""
from __future__ import annotations

import copy

import pytest
import torch

from glassdetect.models import ModelConfig, create_model
from glassdetect.models.common import CPU_MICROBATCH, microbatched


def _views(b: int, k: int, size: int = 96, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=g),
            torch.randint(0, 256, (b, k, 3, size, size), dtype=torch.uint8, generator=g))


def _count_calls(model) -> dict[str, int]:
    calls = {"global": 0, "local": 0}
    model.global_backbone.register_forward_pre_hook(lambda *_: calls.__setitem__("global", calls["global"] + 1))
    local = getattr(model, "local_backbone", model.global_backbone)
    if local is not model.global_backbone:
        local.register_forward_pre_hook(lambda *_: calls.__setitem__("local", calls["local"] + 1))
    return calls


def test_chunk_counts_are_balanced():
    seen = []
    fn = lambda v: (seen.append(v.shape[0]), v * 2)[1]  # noqa: E731
    for n, chunk, want in ((5, 4, [5]), (6, 4, [3, 3]), (11, 4, [4, 4, 3]), (80, 4, [4] * 20), (3, 0, [3]), (1, 4, [1])):
        seen.clear()
        x = torch.arange(n, dtype=torch.float32)[:, None]
        assert torch.equal(microbatched(fn, x, chunk), x * 2)
        assert seen == want, (n, chunk, seen)
    seen.clear()
    microbatched(fn, torch.empty(12, 1, device="meta"), 4)  # not the CPU (as CUDA): one call
    assert seen == [12]
    assert CPU_MICROBATCH == 4


def test_tracing_keeps_one_call_and_a_dynamic_batch():
    class Chunked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

        def forward(self, x):
            return microbatched(self.lin, x, 2)

    model = Chunked().eval()
    lin = model.lin
    traced = torch.jit.trace(model, torch.randn(6, 3))
    x = torch.randn(9, 3)
    with torch.no_grad():
        assert torch.allclose(traced(x), lin(x), atol=1e-6)


@pytest.mark.parametrize("backbone", ["test_resnet", "test_convnext"])
@pytest.mark.parametrize("arch,shared", [("glass", False), ("glass", True), ("standard", False)])
def test_eval_outputs_equal_unchunked(backbone, arch, shared):
    model = create_model(ModelConfig(arch=arch, backbone=backbone, k=3, shared_backbone=shared)).eval()
    assert model.cpu_microbatch == CPU_MICROBATCH
    model.cpu_graphs = None  # the eager backbones, whose calls the hooks count (graphs: tests below)
    g, c = _views(3, 3)
    with torch.inference_mode():
        model.cpu_microbatch = 0
        want = model(g, c)
        want_scores = model.crop_scores(g, c) if arch == "glass" else None
        model.cpu_microbatch = 2  # 3 global views -> 2 calls, 9 crops -> 5 calls (12 shared -> 6)
        calls = _count_calls(model)
        got = model(g, c)
        expect = {"glass": {"global": 6, "local": 0} if shared else {"global": 2, "local": 5},
                  "standard": {"global": 2, "local": 0}}[arch]
        assert calls == expect
        for a, b in zip(got, want):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
        if want_scores is not None:
            for a, b in zip(model.crop_scores(g, c), want_scores):
                assert torch.allclose(a, b, atol=1e-5, rtol=1e-5, equal_nan=True)


@pytest.mark.parametrize("backbone", ["test_resnet", "test_convnext"])
def test_training_mode_is_one_call_and_unchanged(backbone):
    model = create_model(ModelConfig(arch="glass", backbone=backbone, k=3, dropout=0.0)).train()
    g, c = _views(3, 3)
    model.cpu_microbatch = 0
    torch.manual_seed(0)
    want = model(g, c)[0]
    model.cpu_microbatch = 2
    calls = _count_calls(model)
    torch.manual_seed(0)
    got = model(g, c)[0]
    assert calls == {"global": 1, "local": 1}  # BatchNorm statistics stay per batch
    assert torch.equal(got, want)
    got.sum().backward()  # gradients flow as before
    assert all(p.grad is not None for p in model.local_backbone.parameters() if p.requires_grad)


# ------------------------------------------------------------------------------ frozen CPU graphs

def _backbone_graph_count(model) -> int:
    return len(model.cpu_graphs._graphs)


@pytest.mark.parametrize("backbone", ["test_resnet", "test_convnext"])
@pytest.mark.parametrize("arch,shared", [("glass", False), ("glass", True), ("standard", False)])
def test_cpu_graphs_equal_the_eager_backbones_and_follow_the_weights(backbone, arch, shared):
    """Convolutional backbones run as frozen oneDNN graphs in CPU inference: same outputs as eager
    (1e-4), rebuilt when the weights change, never in training or outside inference mode; the
    process-wide fusion switch is back as it was."""
    fusion_before = torch.jit.onednn_fusion_enabled()
    model = create_model(ModelConfig(arch=arch, backbone=backbone, k=3, shared_backbone=shared)).eval()
    g, c = _views(3, 3)
    eager = copy.deepcopy(model)
    eager.cpu_graphs = None
    with torch.inference_mode():
        want, got = eager(g, c), model(g, c)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    n = _backbone_graph_count(model)
    assert n == (1 if arch == "standard" or shared else 2)
    with torch.no_grad():  # not inference mode: eager, no new graph
        model(g, c)
    assert _backbone_graph_count(model) == n
    # the weights change (a training step, a loaded state dict): the graphs follow
    with torch.no_grad():
        for p in model.global_backbone.parameters():
            p.mul_(0.9)
        eager.load_state_dict(model.state_dict())
    with torch.inference_mode():
        want, got = eager(g, c), model(g, c)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert copy.deepcopy(model).cpu_graphs._graphs == {}  # a copy starts without graphs
    assert torch.jit.onednn_fusion_enabled() == fusion_before


def test_eager_backbones_builds_no_graph_and_gives_the_same_outputs():
    """Training's validation passes run eagerly (weights change every epoch: a frozen graph per pass
    would be kept by TorchScript for the life of the process)."""
    from glassdetect.models.common import CpuGraphs, eager_backbones

    model = create_model(ModelConfig(arch="glass", backbone="test_resnet", k=3)).eval()
    g, c = _views(3, 3)
    with torch.inference_mode(), eager_backbones(model):
        inside = model(g, c)
        assert model.cpu_graphs is None
    assert isinstance(model.cpu_graphs, CpuGraphs) and _backbone_graph_count(model) == 0
    with torch.inference_mode():
        graphs = model(g, c)
    assert _backbone_graph_count(model) == 2  # without the block the same call builds graphs
    for a, b in zip(inside, graphs):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    with torch.inference_mode(), eager_backbones(model):  # built graphs are dropped, not kept for later
        model(g, c)
    assert _backbone_graph_count(model) == 0
    model.cpu_graphs = None
    with eager_backbones(model):  # a model already eager stays so
        pass
    assert model.cpu_graphs is None


def test_cpu_graphs_skip_transformers_training_and_tracing():
    vit = create_model(ModelConfig(arch="glass", backbone="test_vit", k=2)).eval()
    resnet = create_model(ModelConfig(arch="glass", backbone="test_resnet", k=2))
    g, c = _views(2, 2, size=160)
    with torch.inference_mode():
        vit(g, c)
        resnet.train()(g, c)
    assert _backbone_graph_count(vit) == 0 and _backbone_graph_count(resnet) == 0
    resnet.eval()
    with torch.inference_mode():  # the ONNX export traces the model: the eager backbones go into its graph
        torch.jit.trace(resnet, (g, c), check_trace=False)
    assert _backbone_graph_count(resnet) == 0


def test_cpu_graphs_give_the_same_bits_whatever_came_before():
    """The same views give the same output on the first call and after other batch sizes (each new
    batch size is warmed up before its first real call): evaluation stays repeatable bit for bit."""
    model = create_model(ModelConfig(arch="glass", backbone="test_convnext", k=3)).eval()
    g, c = _views(2, 3)
    with torch.inference_mode():
        first = model(g, c)[0]
        for b in (1, 3, 2):
            gb, cb = _views(b, 3, seed=b)
            model(gb, cb)
        again = model(g, c)[0]
    assert torch.equal(first, again)
