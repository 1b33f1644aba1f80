"""An exponential moving average of a model's weights (``TrainConfig.ema``): what training validates
and saves when the option is on.

A short fine-tune (the CPU demo: about 20 optimizer steps an epoch) ends each epoch at a point of a
noisy path; the average over the last few dozen steps sits nearer the middle of it. The decay warms
up as in common practice, ``min(decay, (1 + t) / (10 + t))`` after ``t`` updates, so the first
steps are not dominated by the pretrained starting point. Floating-point parameters and buffers
(BatchNorm's running statistics included) are averaged; integer buffers (BatchNorm's step count)
are copied.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    """``module``: an eval-mode copy of the model holding the averaged weights; :meth:`update` after
    each optimizer step."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.steps = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.steps) / (10.0 + self.steps))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        avg, new = [], []
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                avg.append(e)
                new.append(m.detach().to(e.dtype))
            else:
                e.copy_(m)
        if avg:
            torch._foreach_lerp_(avg, new, 1.0 - d)
        self.steps += 1

    def state(self) -> dict:
        """What a resumed run needs beside the averaged weights (saved as the checkpoint's own)."""
        return {"ema_steps": self.steps}

    def load_state(self, state: dict) -> None:
        self.steps = int(state.get("ema_steps", 0))
