"""Pieces both architectures share."""
from __future__ import annotations

import torch
from torch import nn


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


def classifier_head(in_features: int, dropout: float, num_classes: int) -> nn.Sequential:
    """LayerNorm -> dropout -> Linear, as in the paper's classifier."""
    return nn.Sequential(nn.LayerNorm(in_features), nn.Dropout(dropout), nn.Linear(in_features, num_classes))
