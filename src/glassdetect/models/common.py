"""Pieces both architectures share."""
from __future__ import annotations

import contextlib
import itertools
import threading
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

# Views per backbone call in CPU evaluation (0 = the whole batch in one call). On CPU a backbone
# runs closer to the machine's matmul peak on a few views at a time than on B·(K+1) at once: the
# activations of a small chunk stay in the caches, so the memory-bound layers (BatchNorm/ReLU,
# LayerNorm/GELU, depthwise convolutions) stop dominating. Measured in ``docs/performance.md``.
CPU_MICROBATCH = 4


class Preprocess(nn.Module):
    """uint8 (or float in [0, 255]) images -> normalised float, in the backbone's memory layout."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], channels_last: bool):
        super().__init__()
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        # (x / 255 - mean) / std  ==  x * scale + shift
        self.register_buffer("scale", 1.0 / (255.0 * std_t), persistent=False)
        self.register_buffer("shift", -mean_t / std_t, persistent=False)
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x * self.scale + self.shift


# Scale of the residual view. The 4-neighbour Laplacian of real camera crops (224 px, 0-255 units,
# per channel) has a median per-crop standard deviation of 7.6 (192 crops of 24 Debian wallpaper
# photos, native and area-halved: 4.9 native, 9.6 halved; quartiles 2.7-17.8) and a median 99th
# percentile |r| of 28.5. Dividing by 8 gives the typical crop the unit spread and zero mean an
# ImageNet-normalised input has; clipping at ±4 (|r| = 32, about the 99th percentile) keeps the
# rare high-contrast edge (|r| up to 1020) from swamping the pretrained stem's BatchNorm statistics
# with values 100× outside anything it saw. Measured by docs/backbones.md's recipe (section "The
# residual local input").
RESIDUAL_SCALE = 1.0 / 8.0
RESIDUAL_CLIP = 4.0


def laplacian_residual(x: torch.Tensor) -> torch.Tensor:
    """Per-channel 4-neighbour Laplacian ``up + down + left + right - 4·centre`` of (..., H, W) float
    images, (..., H - 2, W - 2): zero on constant and linearly varying content, largest (8× the
    amplitude) on a period-2 checkerboard. Shifted slices and adds only, so it is exact for integer
    pixels on every device and under autocast, and traces to plain ONNX Slice/Add."""
    centre = x[..., 1:-1, 1:-1]
    return x[..., :-2, 1:-1] + x[..., 2:, 1:-1] + x[..., 1:-1, :-2] + x[..., 1:-1, 2:] - 4.0 * centre


class ResidualPreprocess(nn.Module):
    """uint8 (or float in [0, 255]) views -> their scaled, clipped Laplacian residual (same size: the
    one-pixel border, where the filter is undefined, is 0), in the backbone's memory layout.

    What a super-resolver leaves that a camera does not is a period-2 (period-s) pattern in the
    relation of neighbouring pixels; the residual removes the content a pretrained backbone would
    otherwise attend to and keeps that relation (see ``RESIDUAL_SCALE`` for the scale). A subclass
    names another high-pass (``residual``, 2 pixels smaller than its input) and its ``scale``."""

    scale = RESIDUAL_SCALE

    def __init__(self, channels_last: bool):
        super().__init__()
        self.channels_last = channels_last

    @staticmethod
    def residual(x: torch.Tensor) -> torch.Tensor:
        return laplacian_residual(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.residual(x.float()) * self.scale
        r = F.pad(r.clamp(-RESIDUAL_CLIP, RESIDUAL_CLIP), (1, 1, 1, 1))
        if self.channels_last:
            r = r.contiguous(memory_format=torch.channels_last)
        return r


# Luma weights of the Hessian view (ITU-R BT.601, as the training-free reference uses)
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# Scale of the Hessian view: on 224 px crops of version-3 training reals (192 crops of 24 photos of
# runs/bench-v3-pilot, sensor noise included) the three second differences of luma have a median
# spread 0.38, 0.41 and 0.31 of the per-channel Laplacian's (18.1: luma averages the channels' noise,
# and each is one term of the Laplacian or the 2×2 cross difference); 1/3 gives them about the
# spread RESIDUAL_SCALE gives the Laplacian.
HESSIAN_SCALE = 1.0 / 3.0


def luma_hessian(x: torch.Tensor) -> torch.Tensor:
    """The three second differences of the luma of (..., 3, H, W) float images, (..., 3, H - 2, W - 2):
    ``d_xx`` (left + right - 2·centre), ``d_yy`` (up + down - 2·centre) and the 2×2 cross difference
    ``d_xy`` (the pixel, its right, lower and lower-right neighbours; anchored at the centre's upper
    left). The Laplacian is ``d_xx + d_yy``: it sums the two and, being mirror-symmetric, cannot tell
    the phases of a plain interpolated ×2 upsampling apart, which ``d_xy`` separates at once (the
    training-free reference's two residuals, evaluation.reference). Luma only: a JPEG's 4:2:0 chroma
    writes a period-2 pattern into real photos that luma does not carry."""
    w = x.new_tensor(LUMA_WEIGHTS).view(3, 1, 1)
    y = (x * w).sum(-3)
    c = y[..., 1:-1, 1:-1]
    dxx = y[..., 1:-1, :-2] + y[..., 1:-1, 2:] - 2.0 * c
    dyy = y[..., :-2, 1:-1] + y[..., 2:, 1:-1] - 2.0 * c
    dxy = y[..., :-2, :-2] - y[..., 1:-1, :-2] - y[..., :-2, 1:-1] + c
    return torch.stack([dxx, dyy, dxy], dim=-3)


class HessianPreprocess(ResidualPreprocess):
    """uint8 (or float in [0, 255]) views -> the scaled, clipped second differences of their luma
    (:func:`luma_hessian`, 3 channels, same size: the one-pixel border is 0), in the backbone's memory
    layout. The :class:`ResidualPreprocess` that keeps the directions apart."""

    scale = HESSIAN_SCALE

    @staticmethod
    def residual(x: torch.Tensor) -> torch.Tensor:
        return luma_hessian(x)


def local_preprocess(local_input: str, prep: Preprocess) -> nn.Module:
    """What the crops go through before the local backbone: ``prep`` itself for ``"rgb"`` (the paper),
    a :class:`ResidualPreprocess` in the same memory layout for ``"residual"``, a
    :class:`HessianPreprocess` for ``"hessian"``."""
    if local_input == "rgb":
        return prep
    if local_input == "residual":
        return ResidualPreprocess(prep.channels_last)
    if local_input == "hessian":
        return HessianPreprocess(prep.channels_last)
    raise ValueError(f"unknown local_input {local_input!r} (rgb, residual or hessian)")


def _whole_batch_only() -> bool:
    """Tracing (which the ONNX export does), scripting, torch.compile or torch.export: one call, so the
    graph keeps a dynamic batch size."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()


def microbatched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunk: int) -> torch.Tensor:
    """``fn(x)`` computed over near-equal chunks of about ``chunk`` images along dim 0, concatenated.

    ``fn`` must treat images independently (an eval-mode backbone: BatchNorm uses its running
    statistics), so the result equals ``fn(x)`` up to kernel rounding. Applies on CPU only and
    when ``chunk`` > 0; ``round(n / chunk)`` chunks (at least 1), so 5 views with ``chunk`` 4 stay
    one call rather than becoming 4 + 1.
    """
    if chunk <= 0 or x.device.type != "cpu" or _whole_batch_only():
        return fn(x)
    parts = (x.shape[0] + chunk // 2) // chunk
    if parts <= 1:
        return fn(x)
    return torch.cat([fn(part) for part in x.tensor_split(parts)])


class CpuGraphs:
    """Frozen TorchScript graphs of convolutional backbones run by oneDNN Graph, for CPU inference.

    On the CPU a convnet runs markedly faster as a traced, frozen graph executed with oneDNN Graph
    fusion (``torch.jit.enable_onednn_fusion``): BatchNorm is folded into the convolutions and
    chains such as convolution + ReLU or LayerNorm + Linear + GELU become single oneDNN kernels
    (per view at K = 4, batch 8: ResNet-50 1.23×, ConvNeXt-T 1.14×; EfficientNet-Lite0 about 2× —
    ``glassdetect bench model``; transformers gain nothing and stay eager). The first call builds
    the graph and the next two are TorchScript's profiling and oneDNN compilation runs (about
    +0.8 s and +0.2 s for GLASS-ResNet-50), so the gain is for runs over many images.
    A graph is used only where it cannot change what the model means: eval mode, on the CPU,
    under ``torch.inference_mode()``, not while the model itself is being traced or compiled or a
    dispatch mode (FLOP counting, fake tensors) is active, and for convolutional backbones (no
    attention blocks). It is built on first use from the backbone's current weights and rebuilt
    when any of them changes (a loaded state dict; training's validation passes run eagerly instead,
    :func:`eager_backbones`, because TorchScript keeps about the size of the weights of every graph
    it froze for the life of the process), one per
    view shape and layout, and warmed up on zeros for every new batch size before its first real
    call, so outputs are bit-for-bit repeatable; they equal the eager backbone's up to float
    rounding (tested to 1e-4). A graph holds its own copy of the backbone's weights. oneDNN fusion is a process-wide
    TorchScript switch: it is on only while one of these graphs runs and is then restored.
    Thread-safe; a copy of the model starts with no graphs.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (backbone, view shape, dtype, layout) -> (weights stamp, graph, batch sizes already warmed up)
        self._graphs: dict[tuple, tuple[tuple, torch.jit.ScriptModule, set[int]]] = {}

    def __deepcopy__(self, memo) -> "CpuGraphs":
        return CpuGraphs()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    @staticmethod
    def applies(backbone: nn.Module, x: torch.Tensor) -> bool:
        from torch.utils._python_dispatch import _get_current_dispatch_mode

        return (x.device.type == "cpu" and not backbone.training and torch.is_inference_mode_enabled()
                and not _whole_batch_only() and _get_current_dispatch_mode() is None  # e.g. FLOP counting
                and is_convolutional(backbone))

    def __call__(self, backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        key = (id(backbone), tuple(x.shape[1:]), x.dtype, x.is_contiguous(memory_format=torch.channels_last))
        stamp = tuple((t.data_ptr(), _version(t)) for t in itertools.chain(backbone.parameters(), backbone.buffers()))
        with self._lock:
            hit = self._graphs.get(key)
            if hit is None or hit[0] != stamp:
                hit = self._graphs[key] = (stamp, _frozen_graph(backbone, x[:1]), set())
            graph, warmed = hit[1], hit[2]
            if x.shape[0] not in warmed:
                _warm_up(graph, x)
                warmed.add(x.shape[0])
        with _onednn_fusion():
            return graph(x)


def _warm_up(graph: torch.jit.ScriptModule, like: torch.Tensor, runs: int = 3) -> None:
    """Run ``graph`` on zeros shaped like ``like`` until TorchScript has profiled this shape and oneDNN
    has compiled its fused kernels: every real call then takes the same kernels, so the same input
    always gives the same output, bit for bit, whatever batch sizes came before."""
    zeros = torch.zeros_like(like)
    with _onednn_fusion():
        for _ in range(runs):
            graph(zeros)


def is_convolutional(module: nn.Module) -> bool:
    """Convolutions and no attention blocks: the backbones :class:`CpuGraphs` runs as graphs."""
    convs = any(isinstance(m, nn.Conv2d) for m in module.modules())
    return convs and not any(isinstance(m, nn.MultiheadAttention) or hasattr(m, "qkv") for m in module.modules())


_FUSION_LOCK = threading.Lock()
_FUSION_USERS = 0
_FUSION_BEFORE = False


@contextlib.contextmanager
def _onednn_fusion():
    """oneDNN Graph fusion on while any :class:`CpuGraphs` graph runs (a process-wide TorchScript
    switch: counted across threads, and the value found before the first user is restored)."""
    global _FUSION_USERS, _FUSION_BEFORE
    with _FUSION_LOCK:
        if _FUSION_USERS == 0:
            _FUSION_BEFORE = torch.jit.onednn_fusion_enabled()
            torch.jit.enable_onednn_fusion(True)
        _FUSION_USERS += 1
    try:
        yield
    finally:
        with _FUSION_LOCK:
            _FUSION_USERS -= 1
            if _FUSION_USERS == 0:
                torch.jit.enable_onednn_fusion(_FUSION_BEFORE)


def _version(t: torch.Tensor) -> int:
    """In-place updates bump a tensor's version (an optimizer step, ``load_state_dict``'s copy)."""
    try:
        return t._version
    except RuntimeError:  # an inference tensor: it cannot be changed in place outside inference mode
        return -1


def _frozen_graph(backbone: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about Python values in timm's code
        traced = torch.jit.trace(backbone, example, check_trace=False)
        return torch.jit.freeze(traced)


@contextlib.contextmanager
def eager_backbones(model: nn.Module):
    """Run ``model``'s backbones eagerly inside the block (its :class:`CpuGraphs` off, and dropped).
    For inference on weights that change between calls, such as training's validation passes: each
    pass would freeze new graphs, and TorchScript keeps about the size of the weights of every frozen
    graph for the life of the process (measured: +70 MB per GLASS-Lite0 rebuild, 1 GB over a
    5-epoch GLASS run and its evaluation)."""
    graphs = getattr(model, "cpu_graphs", None)
    if graphs is None:
        yield
        return
    model.cpu_graphs = None
    try:
        yield
    finally:
        model.cpu_graphs = CpuGraphs()


def backbone_features(model: nn.Module, backbone: nn.Module, views: torch.Tensor,
                      prep: nn.Module | None = None) -> torch.Tensor:
    """uint8 (or [0, 255] float) views -> pooled features: ``prep`` (default ``model.prep``) then
    ``backbone``, through the model's :class:`CpuGraphs` where they apply (``model.cpu_graphs = None``
    switches them off)."""
    x = (model.prep if prep is None else prep)(views)
    graphs = getattr(model, "cpu_graphs", None)
    if graphs is not None and CpuGraphs.applies(backbone, x):
        return graphs(backbone, x)
    return backbone(x)


def classifier_head(in_features: int, dropout: float, num_classes: int) -> nn.Sequential:
    """LayerNorm -> dropout -> Linear, as in the paper's classifier."""
    return nn.Sequential(nn.LayerNorm(in_features), nn.Dropout(dropout), nn.Linear(in_features, num_classes))
