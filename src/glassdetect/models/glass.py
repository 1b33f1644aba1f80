"""GLASS: a global view and K native-resolution crops, fused by additive attention.

    g = B_global(resize(x))                       (B, D)
    f_i = B_local(crop_i(x)),  i = 1..K           (B, K, D)
    a = softmax_i( w2 · dropout(tanh(W1 f_i)) )   (B, K)
    l = sum_i a_i f_i                             (B, D)
    logits = Linear(dropout(LayerNorm([g; l])))   (B, 2)

In evaluation on the CPU the backbones run over the views a few at a time (``cpu_microbatch``,
default 4; 0 = all B·(K+1) views in one call), which is faster there; training and CUDA always
use one call. The outputs are the same within float rounding.

``cfg.local_input = "residual"`` (an option; the paper's RGB crops are the default) feeds the local
backbone each crop's scaled Laplacian residual instead of its pixels (:class:`~.common.ResidualPreprocess`);
the global view stays RGB. ``cfg.local_depth = L`` (an option; 0, the whole backbone, is the paper's)
cuts the local backbone after its first L feature levels (:func:`~.backbones.truncate_backbone`), so
f_i is the pooled output of an early stage (D_local channels) and the head sees [g; l] of D + D_local.
"""
from __future__ import annotations

import torch
from torch import nn

from .common import (CPU_MICROBATCH, CpuGraphs, Preprocess, backbone_features, classifier_head, local_preprocess,
                     microbatched)
from .config import ModelConfig


class CropAttention(nn.Module):
    """Additive attention over crops: Linear(D, h) -> tanh -> dropout -> Linear(h, 1), softmax over K."""

    def __init__(self, dim: int, hidden: int = 128, dropout: float = 0.0):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.score(feats).squeeze(-1)  # (B, K)
        if mask is not None:  # False marks padding crops (images with fewer crops in a batch)
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.float().softmax(dim=-1).to(feats.dtype)  # (B, K), sums to 1
        pooled = torch.einsum("bk,bkd->bd", weights, feats)  # (B, D)
        return pooled, weights


class GLASS(nn.Module):
    def __init__(self, cfg: ModelConfig, global_backbone: nn.Module, local_backbone: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.prep = Preprocess(cfg.mean, cfg.std, cfg.channels_last)
        self.local_prep = local_preprocess(cfg.local_input, self.prep)  # ``prep`` itself for RGB crops
        self.global_backbone = global_backbone
        # With a shared backbone both names point at one module (saved once by safetensors).
        self.local_backbone = global_backbone if local_backbone is None else local_backbone
        local_dim = cfg.local_features or cfg.num_features  # narrower with ``cfg.local_depth``
        self.attention = CropAttention(local_dim, cfg.attn_hidden, cfg.dropout)
        self.head = classifier_head(cfg.num_features + local_dim, cfg.dropout, len(cfg.class_names))
        self.cpu_microbatch = CPU_MICROBATCH  # views per backbone call in CPU evaluation; 0 = one call
        self.cpu_graphs: CpuGraphs | None = CpuGraphs()  # frozen BatchNorm backbones in CPU inference; None = eager

    @property
    def shared(self) -> bool:
        return self.local_backbone is self.global_backbone

    def forward(
        self, global_view: torch.Tensor, crops: torch.Tensor, crop_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """global_view (B, 3, S, S), crops (B, K, 3, P, P), uint8 or float in [0, 255].

        Returns logits (B, num_classes) and attention weights (B, K).
        """
        g, f = self.encode(global_view, crops)
        pooled, weights = self.attention(f, crop_mask)
        logits = self.head(torch.cat([g, pooled], dim=-1))
        return logits, weights

    def encode(self, global_view: torch.Tensor, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features: g (B, D) of the global view and f (B, K, D) of the crops."""
        b, k = crops.shape[:2]
        flat = crops.flatten(0, 1)  # (B*K, 3, P, P)
        chunk = 0 if self.training else self.cpu_microbatch  # BatchNorm statistics are per batch in training
        run_global = lambda v: backbone_features(self, self.global_backbone, v)  # noqa: E731
        if self.shared and self.local_prep is self.prep and global_view.shape[-2:] == flat.shape[-2:]:
            feats = microbatched(run_global, torch.cat([global_view, flat]), chunk)  # one batched pass
            g, f = feats[:b], feats[b:]
        else:
            g = microbatched(run_global, global_view, chunk)  # (B, D)
            run_local = lambda v: backbone_features(self, self.local_backbone, v, self.local_prep)  # noqa: E731
            f = microbatched(run_local, flat, chunk)  # (B*K, D)
        return g, f.reshape(b, k, -1)

    def crop_scores(
        self, global_view: torch.Tensor, crops: torch.Tensor, crop_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward`` plus each crop's own logits, from one backbone pass.

        Crop i's logits are the classifier applied to [g; f_i]: the prediction the model would
        make if the attention put all its weight on crop i. Returns logits (B, C), attention
        (B, K) and crop logits (B, K, C); padded crops (``crop_mask`` False) get NaN logits.
        """
        g, f = self.encode(global_view, crops)
        pooled, weights = self.attention(f, crop_mask)
        logits = self.head(torch.cat([g, pooled], dim=-1))
        crop_logits = self.head(torch.cat([g.unsqueeze(1).expand(-1, f.shape[1], -1), f], dim=-1))
        if crop_mask is not None:
            crop_logits = crop_logits.masked_fill(~crop_mask.unsqueeze(-1), float("nan"))
        return logits, weights, crop_logits
