"""Pieces both architectures share."""
from __future__ import annotations

from typing import Callable

import torch
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


def classifier_head(in_features: int, dropout: float, num_classes: int) -> nn.Sequential:
    """LayerNorm -> dropout -> Linear, as in the paper's classifier."""
    return nn.Sequential(nn.LayerNorm(in_features), nn.Dropout(dropout), nn.Linear(in_features, num_classes))
