"""What a training run learns from and is judged on: the split (grouped by source, seeded by the
split seed, saved with the run), the training set with its seeded order, and the validation pass
(sharded under DDP, gathered, the same metrics on every rank)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import distributed as ddp
from ..data.splits import (
    Sample, assign_splits, carve_val, check_no_leak, load_samples, pair_units, read_split, write_split,
)
from ..models.common import eager_backbones
from ..models.decision import fake_probability
from ..evaluation.metrics import binary_metrics
from ..pipeline import ViewDataset, infer, make_loader
from .config import TrainConfig


def split_samples(cfg: TrainConfig, out: Path) -> list[Sample]:
    samples = load_samples(cfg.data, cfg.class_names)
    if not samples:
        raise ValueError(f"{cfg.data}: no images found")
    saved = out / "split.csv"
    if cfg.resume and saved.exists():
        where = read_split(saved)
        samples = [s if s.split else type(s)(**{**asdict(s), "split": where.get(s.path, "")}) for s in samples]
    samples = assign_splits(samples, cfg.split_fractions, cfg.split_seed)
    samples = carve_missing_val(samples, cfg)
    check_no_leak(samples)
    ddp.barrier()  # under DDP every rank has read split.csv before rank 0 rewrites it
    if ddp.is_main():
        write_split(samples, saved)
    return samples


def carve_missing_val(samples: list[Sample], cfg: TrainConfig) -> list[Sample]:
    """Data that comes with train (and test) but no val split, e.g. Kaggle's ``ROOT/{train,test}/{real,fake}``:
    carve val out of train, grouped and stratified, seeded by ``split_seed``, in the train:val
    ratio of ``split_fractions`` (0.7, 0.15 -> 15/85 of train)."""
    if any(s.split == "val" for s in samples) or not any(s.split == "train" for s in samples):
        return samples
    f_train, f_val = cfg.split_fractions[0], cfg.split_fractions[1]
    if f_val <= 0 or f_train <= 0:
        return samples  # no val wanted: the check after the split names the problem
    return carve_val(samples, f_val / (f_train + f_val), cfg.split_seed)


def _val_metrics(prob_fake: np.ndarray, logits: np.ndarray, labels: np.ndarray, errors: list, smoothing: float) -> dict:
    m = binary_metrics(prob_fake, labels)
    if len(labels):
        loss = nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels),
                                           label_smoothing=smoothing)
        m["loss"] = float(loss)
    else:
        m["loss"] = float("nan")
    m["errors"] = errors
    return m


def evaluate_loss(model: nn.Module, loader, shard: list[int], val_s: list[Sample], device: torch.device,
                  amp: bool, smoothing: float) -> dict:
    """Validation metrics (deterministic crops) plus the mean loss. Each rank infers its shard
    (``shard[i]`` is the global index of its i-th image; a single process holds every image);
    predictions are gathered and every rank computes the same metrics over the whole set."""
    with eager_backbones(model):  # the weights change every epoch: a graph per pass would be built and kept
        preds = infer(model, loader, device, amp)
    parts = ddp.all_gather_object(([shard[i] for i in preds.index], preds.logits, preds.errors))
    idx = np.array([i for p in parts for i in p[0]], dtype=np.int64)
    n_cls = preds.logits.shape[1]
    logits = np.concatenate([p[1].reshape(-1, n_cls) for p in parts]).astype(np.float32)
    order = np.argsort(idx, kind="stable")
    idx, logits = idx[order], logits[order]
    # The gathered logits are temperature-scaled already (runtime.infer): T = 1 here.
    prob = fake_probability(torch.from_numpy(logits)).numpy() if len(logits) else np.zeros(0, np.float32)
    labels = np.array([val_s[i].label for i in idx], dtype=int)
    return _val_metrics(prob, logits, labels, [e for p in parts for e in p[2]], smoothing)


@dataclass
class TrainData:
    """The training set with its seeded per-epoch order, and this process's share of the validation set."""

    spec: object  # the model's ViewSpec
    train_ds: ViewDataset
    sampler: ddp.ShardSampler
    local_batch: int  # this process's share of the global batch
    val_s: list[Sample]
    val_shard: list[int]  # global indices of the validation images this process infers
    val_loader: object


def build_data(cfg: TrainConfig, dist: ddp.DistInfo, device: torch.device, spec, train_s: list[Sample],
                val_s: list[Sample], augment) -> TrainData:
    """``spec``: the model's views (``model.cfg``, filled from the backbone: normalisation, interpolation ...)."""
    units = pair_units(train_s, cfg.class_names) if cfg.paired else None
    if units is not None and all(len(u) == 1 for u in units):
        raise ValueError(f"{cfg.data}: --paired, but no real image of the training split has its fake beside it "
                         "(a pair: one source group, one file path but for the class folder)")
    draw_keys = {i: min(u) for u in units for i in u} if units is not None else None
    # validation stays clean
    train_ds = ViewDataset(train_s, spec, train=True, seed=cfg.seed, degrade=augment,
                           draw_keys=[draw_keys[i] for i in range(len(train_s))] if draw_keys else None)
    # One explicit, seeded order per epoch; under DDP each rank takes its share of the same order.
    local_batch = cfg.batch_size // dist.world_size
    sampler = ddp.ShardSampler(len(train_ds), dist.rank, dist.world_size, lambda e: cfg.seed * 100_003 + e, units)
    val_shard = list(range(dist.rank, len(val_s), dist.world_size))
    val_loader = make_loader(ViewDataset([val_s[i] for i in val_shard], spec, train=False, seed=cfg.seed),
                             local_batch, cfg.workers, device=device)
    return TrainData(spec, train_ds, sampler, local_batch, val_s, val_shard, val_loader)
