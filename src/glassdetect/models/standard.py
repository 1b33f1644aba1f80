"""The baseline: standard transfer learning on the 224-resized image only."""
from __future__ import annotations

import torch
from torch import nn

from .common import Preprocess, classifier_head
from .config import ModelConfig


class StandardClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig, backbone: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.prep = Preprocess(cfg.mean, cfg.std, cfg.channels_last)
        self.global_backbone = backbone
        self.head = classifier_head(cfg.num_features, cfg.dropout, len(cfg.class_names))

    def forward(
        self, global_view: torch.Tensor, crops: torch.Tensor | None = None, crop_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """global_view (B, 3, S, S) -> logits (B, num_classes) and empty attention (B, 0)."""
        logits = self.head(self.global_backbone(self.prep(global_view)))
        return logits, logits.new_zeros((logits.shape[0], 0))
