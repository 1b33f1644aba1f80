"""The baseline: standard transfer learning on the 224-resized image only.

Like GLASS, it runs the backbone over a few images at a time in CPU evaluation (``cpu_microbatch``).
"""
from __future__ import annotations

import torch
from torch import nn

from .common import CPU_MICROBATCH, CpuGraphs, Preprocess, backbone_features, classifier_head, microbatched
from .config import ModelConfig


class StandardClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.prep = Preprocess(cfg.mean, cfg.std, cfg.channels_last)
        self.global_backbone = backbone
        self.head = classifier_head(cfg.num_features, cfg.dropout, len(cfg.class_names))
        self.cpu_microbatch = CPU_MICROBATCH  # images per backbone call in CPU evaluation; 0 = one call
        self.cpu_graphs: CpuGraphs | None = CpuGraphs()  # frozen BatchNorm backbone in CPU inference; None = eager

    def forward(
        self, global_view: torch.Tensor, crops: torch.Tensor | None = None, crop_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """global_view (B, 3, S, S) -> logits (B, num_classes) and empty attention (B, 0)."""
        chunk = 0 if self.training else self.cpu_microbatch
        logits = self.head(microbatched(lambda v: backbone_features(self, self.global_backbone, v), global_view, chunk))
        return logits, logits.new_zeros((logits.shape[0], 0))
