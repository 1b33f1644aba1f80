"""What a run trains and how it is scored: the AdamW parameter groups, the frozen leading groups of
each backbone, and the optional per-crop loss."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .config import TrainConfig


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: each backbone and the head get their own LR and weight decay."""
    head = [p for n, p in model.named_parameters() if not n.startswith(("global_backbone.", "local_backbone."))]
    g = [p for p in model.global_backbone.parameters() if p.requires_grad]
    groups = [{"name": "global", "params": g, "lr": cfg.lr_global, "weight_decay": cfg.wd_global}]
    if getattr(model, "local_backbone", None) is not None and model.local_backbone is not model.global_backbone:
        loc = [p for p in model.local_backbone.parameters() if p.requires_grad]
        groups.append({"name": "local", "params": loc, "lr": cfg.lr_local, "weight_decay": cfg.wd_local})
    groups.append({"name": "head", "params": head, "lr": cfg.lr_head, "weight_decay": cfg.wd_head})
    return [grp for grp in groups if grp["params"]]


def freeze_leading(backbone: nn.Module, n_groups: int) -> int:
    """Freeze the first ``n_groups`` of timm's coarse parameter groups (stem, then stages).

    Returns how many parameters were frozen.
    """
    if n_groups <= 0:
        return 0
    from timm.models import group_parameters

    groups = group_parameters(backbone, backbone.group_matcher(coarse=True))
    ordered = sorted(groups.items(), key=lambda kv: kv[0])
    names = {n for _, members in ordered[:n_groups] for n in members}
    frozen = 0
    for n, p in backbone.named_parameters():
        if n in names:
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen


def train_mode(model: nn.Module, bn_eval: bool = False) -> nn.Module:
    """``model.train()``; with ``bn_eval`` every BatchNorm layer then goes back to eval mode: it
    normalises with its running (pretrained) statistics and stops updating them, while its scale and
    shift still train (``TrainConfig.bn_eval``; what detection training does with small batches)."""
    model.train()
    if bn_eval:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    return model


def crop_loss(crop_logits: torch.Tensor | None, y: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Mean label-smoothed cross-entropy of every real crop's logits (R, K, C) against its image's
    label (R,); padded crops (NaN logits, ``grid`` mode) are left out."""
    if crop_logits is None:
        raise ValueError("crop_loss: the model returned no per-crop logits (GLASS with K >= 1 crops needed)")
    flat = crop_logits.float().flatten(0, 1)
    labels = y.repeat_interleave(crop_logits.shape[1])
    keep = ~flat.isnan().any(-1)
    return nn.functional.cross_entropy(flat[keep], labels[keep], label_smoothing=smoothing)


def pair_loss(logits: torch.Tensor, y: torch.Tensor, keys: Sequence[int]) -> torch.Tensor:
    """Mean ``softplus(s_real - s_fake)`` over the (real, fake) pairs of a batch, ``s`` being a row's
    fake-minus-real logit and a pair two rows with one pair key (``TrainConfig.paired``'s draw key): the
    fake must score above the real it was made from, whatever the content they share. Labels are
    0 = real, 1 = fake (the last class). Zero, still attached to the graph, when the batch holds no pair."""
    s = (logits[:, -1] - logits[:, 0]).float()
    rows: dict[int, list[int]] = {}
    for i, k in enumerate(keys):
        rows.setdefault(int(k), []).append(i)
    real_idx, fake_idx = [], []
    for members in rows.values():
        reals = [i for i in members if int(y[i]) == 0]
        fakes = [i for i in members if int(y[i]) == logits.shape[-1] - 1]
        for r in reals:
            for f in fakes:
                real_idx.append(r)
                fake_idx.append(f)
    if not real_idx:
        return s.sum() * 0.0
    return nn.functional.softplus(s[real_idx] - s[fake_idx]).mean()
