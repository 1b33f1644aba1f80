"""Training: one loop for GLASS and the baseline.

AdamW with parameter groups (global backbone / local backbone / attention + head for GLASS;
backbone / head for the baseline), cosine annealing to ``min_lr``, label smoothing, mixed
precision on CUDA (fp32 on CPU), gradient accumulation. The best epoch by validation accuracy
is kept in ``OUT/best/``; ``OUT/last/`` is rewritten atomically every epoch with everything
``--resume`` needs to continue exactly as an uninterrupted run would.

The same function runs under ``torchrun --nproc_per_node N`` (DistributedDataParallel; NCCL on
CUDA, gloo on CPU). ``batch_size`` is then the *global* batch: each of the N processes takes
``batch_size / N`` images of the very order a single process would use (see
:class:`glassdetect.distributed.ShardSampler`), gradients are averaged across processes, the
validation set is sharded and its predictions gathered, the epoch's metrics are summed over
processes, and only rank 0 writes files. A run started with N processes resumes with N.
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import distributed as ddp
from .decision import fake_probability
from .degrade import parse as parse_degradation
from .data import (
    Sample, assign_splits, carve_val, check_no_leak, load_samples, read_split, write_split,
)
from .metrics import binary_metrics
from .models import ModelConfig, create_model, save_checkpoint
from .models.config import check_fields
from .models.factory import load_weights, WEIGHTS_NAME
from .pipeline import ViewDataset, forward, infer, make_loader
from .runtime import configure_threads, resolve_device, torch_threads
from .limits import DEFAULT_MAX_PIXELS

STATE_NAME = "trainer_state.pt"


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
    dropout: float = 0.1
    freeze: int = 0  # leading parameter groups of each backbone kept frozen (1 = stem)
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
    # data
    class_names: tuple[str, ...] = ("real", "fake")
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    # Seed of the train/val/test split of data that has none (and of the val carve-out of data
    # with train and test only): independent of ``seed``, so runs with different training seeds
    # are evaluated on the same test images.
    split_seed: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    augment: str = "none"  # degradations of training images before their views (glassdetect.degrade spec or preset)
    # runtime
    seed: int = 0
    workers: int = 2
    threads: int = 0
    device: str = "auto"
    amp: bool = True
    progress: bool = True
    resume: bool = False
    sync_bn: bool = False  # DistributedDataParallel only: BatchNorm statistics over the global batch

    def model_config(self) -> ModelConfig:
        return ModelConfig(arch=self.arch, backbone=self.backbone, k=self.k, patch=self.patch, sampling=self.sampling,
                           shared_backbone=self.shared_backbone, dropout=self.dropout, class_names=self.class_names,
                           interpolation=self.interpolation)

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


def _split_samples(cfg: TrainConfig, out: Path) -> list[Sample]:
    samples = load_samples(cfg.data, cfg.class_names)
    if not samples:
        raise ValueError(f"{cfg.data}: no images found")
    saved = out / "split.csv"
    if cfg.resume and saved.exists():
        where = read_split(saved)
        samples = [s if s.split else type(s)(**{**asdict(s), "split": where.get(s.path, "")}) for s in samples]
    samples = assign_splits(samples, cfg.split_fractions, cfg.split_seed)
    samples = _carve_missing_val(samples, cfg)
    check_no_leak(samples)
    ddp.barrier()  # under DDP every rank has read split.csv before rank 0 rewrites it
    if ddp.is_main():
        write_split(samples, saved)
    return samples


def _carve_missing_val(samples: list[Sample], cfg: TrainConfig) -> list[Sample]:
    """Data that comes with train (and test) but no val split, e.g. Kaggle's ``ROOT/{train,test}/{real,fake}``:
    carve val out of train, grouped and stratified, seeded by ``split_seed``, in the train:val
    ratio of ``split_fractions`` (0.7, 0.15 -> 15/85 of train)."""
    if any(s.split == "val" for s in samples) or not any(s.split == "train" for s in samples):
        return samples
    f_train, f_val = cfg.split_fractions[0], cfg.split_fractions[1]
    if f_val <= 0 or f_train <= 0:
        return samples  # no val wanted: the check after the split names the problem
    return carve_val(samples, f_val / (f_train + f_val), cfg.split_seed)


def _plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ax[0].plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    ax[0].plot(ep, [h["val_loss"] for h in history], "o-", label="validation")
    ax[0].set_xlabel("epoch"), ax[0].set_ylabel("loss"), ax[0].legend()
    ax[1].plot(ep, [h["val_accuracy"] for h in history], "o-", label="val accuracy")
    ax[1].plot(ep, [h["val_auc"] if h["val_auc"] is not None else float("nan") for h in history], "s--", label="val AUC")
    ax[1].set_xlabel("epoch"), ax[1].set_ylim(0, 1), ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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


def _dummy_inputs(spec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, None]:
    """One all-zero image, for a DDP rank whose whole batch failed to decode (it must still take part)."""
    k = spec.k if spec.need_crops else 0
    g = torch.zeros((1, 3, spec.global_size, spec.global_size), dtype=torch.uint8, device=device)
    c = torch.zeros((1, k, 3, spec.patch, spec.patch), dtype=torch.uint8, device=device)
    return g, c, None


def train(cfg: TrainConfig, on_epoch_end: Callable[[int, dict], None] | None = None) -> dict:
    """Train one model; returns the run summary (also written to ``OUT/summary.json``).

    Under a distributed launcher (``WORLD_SIZE > 1``) the process group is started here (unless
    the caller already did) and every rank returns the same summary; ``on_epoch_end`` runs on
    every rank with the same, globally reduced record.
    """
    env = ddp.env_info()
    device = ddp.resolve_device(cfg.device, env.local_rank) if env.enabled else resolve_device(cfg.device)
    owns_group = ddp.init(device)
    try:
        with torch_threads(None):  # cfg.threads applies to this run; the caller's thread count comes back
            return _train(cfg, on_epoch_end, device)
    finally:
        if owns_group:
            ddp.cleanup()


# ------------------------------------------------------------------------------ the run, step by step
#
# ``_train`` reads top to bottom like a script: data -> model -> optimizer (the LR schedule) ->
# loaders -> resume -> for each epoch: train, step the LR, validate, report, checkpoint.


@dataclass
class _Data:
    """The training set with its seeded per-epoch order, and this process's share of the validation set."""

    spec: object  # the model's ViewSpec
    train_ds: ViewDataset
    sampler: ddp.ShardSampler
    local_batch: int  # this process's share of the global batch
    val_s: list[Sample]
    val_shard: list[int]  # global indices of the validation images this process infers
    val_loader: object


@dataclass
class _Run:
    """What one training run holds fixed across epochs."""

    cfg: TrainConfig
    dist: ddp.DistInfo
    device: torch.device
    out: Path
    model: nn.Module  # the bare model (saved, evaluated)
    net: nn.Module  # what the training step calls: ``model`` or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    data: _Data


@dataclass
class _Progress:
    """What changes from epoch to epoch, and what ``--resume`` restores."""

    start: int = 0  # the next epoch to train (0-based)
    best_acc: float = -math.inf
    history: list[dict] = field(default_factory=list)
    bad: dict[str, str] = field(default_factory=dict)  # path -> why the image could not be used


def _train(cfg: TrainConfig, on_epoch_end: Callable[[int, dict], None] | None, device: torch.device) -> dict:
    dist = ddp.info() if ddp.is_initialized() else ddp.DistInfo()
    augment = _parse_augment(cfg.augment)  # a bad spec fails before anything is written
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    configure_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    samples = _split_samples(cfg, out)
    train_s = [s for s in samples if s.split == "train"]
    val_s = [s for s in samples if s.split == "val"]
    if not train_s or not val_s:
        raise ValueError(f"{cfg.data}: need images in both the train and val splits (got {len(train_s)}, {len(val_s)}; "
                         f"split fractions {cfg.split_fractions}, split seed {cfg.split_seed})")

    model, net, frozen = _build_model(cfg, dist, device)
    optimizer, scheduler, scaler = _build_optimizer(cfg, model, device)
    data = _build_data(cfg, dist, device, model.cfg.view_spec(cfg.max_pixels), train_s, val_s, augment)
    run = _Run(cfg, dist, device, out, model, net, optimizer, scheduler, scaler, data)
    progress = _resume(run) if cfg.resume and (out / "last" / STATE_NAME).exists() else _Progress()
    meta = {"train": _jsonable(asdict(cfg)), "frozen_parameters": frozen, "device": str(device)}
    if dist.enabled:
        meta["world_size"] = dist.world_size
    metrics_path = out / "metrics.jsonl"
    if dist.is_main and progress.start == 0 and metrics_path.exists():
        metrics_path.unlink()

    for epoch in range(progress.start, cfg.epochs):
        t0 = time.perf_counter()
        totals = _train_epoch(run, epoch, progress.bad)
        lrs = {grp["name"]: grp["lr"] for grp in optimizer.param_groups}  # the LRs this epoch trained with
        scheduler.step()  # cosine annealing, once per epoch
        val = evaluate_loss(model, data.val_loader, data.val_shard, val_s, device, cfg.amp, cfg.label_smoothing)
        tot_loss, tot_correct, tot_n = _reduce_epoch(run, totals, progress.bad)
        for path, reason in val.pop("errors"):
            progress.bad[path] = reason
        rec = {
            "epoch": epoch + 1, "train_loss": tot_loss / max(tot_n, 1), "train_accuracy": tot_correct / max(tot_n, 1),
            "val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_auc": val["auc"], "val_ece": val["ece"],
            "lr": lrs, "seconds": time.perf_counter() - t0, "train_images": tot_n,
        }
        progress.history.append(rec)
        if dist.is_main:
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            _plot_curves(progress.history, out / "curves.png")
        improved = val["accuracy"] is not None and val["accuracy"] > progress.best_acc
        if improved:
            progress.best_acc = val["accuracy"]
        _save_epoch(run, progress, epoch, {**meta, "epoch": epoch + 1, "val": dict(val)}, improved)
        if cfg.progress and dist.is_main:
            _print_epoch(cfg, rec, val, improved)
        ddp.barrier()  # DDP: the epoch's checkpoint is on disk before any rank goes on (or stops)
        if on_epoch_end is not None:
            on_epoch_end(epoch, rec)

    return _finish(run, progress, samples, train_s, augment.name)


def _parse_augment(spec: str):
    try:
        return parse_degradation(spec)
    except ValueError as exc:
        raise ValueError(f"augment {spec!r}: {exc}") from None


def _build_model(cfg: TrainConfig, dist: ddp.DistInfo, device: torch.device) -> tuple[nn.Module, nn.Module, int]:
    """(model, the module the training step calls, number of frozen parameters)."""
    model = create_model(cfg.model_config(), pretrained=cfg.pretrained, weights=cfg.weights)
    frozen = freeze_leading(model.global_backbone, cfg.freeze)
    if getattr(model, "local_backbone", model.global_backbone) is not model.global_backbone:
        frozen += freeze_leading(model.local_backbone, cfg.freeze)
    if dist.enabled and cfg.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    net: nn.Module = model
    if dist.enabled:
        if cfg.batch_size % dist.world_size:
            raise ValueError(f"batch size {cfg.batch_size} (the global batch) must be divisible by the "
                             f"{dist.world_size} processes")
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        if dist.rank > 0:  # rank 0 keeps the single-process random stream; the others get their own
            torch.manual_seed(cfg.seed * 1_000_003 + dist.rank)
    return model, net, frozen


def _build_optimizer(cfg: TrainConfig, model: nn.Module, device: torch.device):
    """AdamW over :func:`param_groups` (each group's LR and weight decay), cosine annealing of every
    group's LR to ``min_lr`` over the epochs, and the AMP gradient scaler (fp16 on CUDA without bf16)."""
    optimizer = torch.optim.AdamW(param_groups(model, cfg))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1), eta_min=cfg.min_lr)
    use_scaler = device.type == "cuda" and cfg.amp and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    return optimizer, scheduler, scaler


def _build_data(cfg: TrainConfig, dist: ddp.DistInfo, device: torch.device, spec, train_s: list[Sample],
                val_s: list[Sample], augment) -> _Data:
    """``spec``: the model's views (``model.cfg``, filled from the backbone: normalisation, interpolation ...)."""
    train_ds = ViewDataset(train_s, spec, train=True, seed=cfg.seed, degrade=augment)  # validation stays clean
    # One explicit, seeded order per epoch; under DDP each rank takes its share of the same order.
    local_batch = cfg.batch_size // dist.world_size
    sampler = ddp.ShardSampler(len(train_ds), dist.rank, dist.world_size, lambda e: cfg.seed * 100_003 + e)
    val_shard = list(range(dist.rank, len(val_s), dist.world_size))
    val_loader = make_loader(ViewDataset([val_s[i] for i in val_shard], spec, train=False, seed=cfg.seed),
                             local_batch, cfg.workers, device=device)
    return _Data(spec, train_ds, sampler, local_batch, val_s, val_shard, val_loader)


# ------------------------------------------------------------------------------ one epoch

def _train_epoch(run: _Run, epoch: int, bad: dict[str, str]) -> tuple[float, int, int]:
    """One pass over this process's share of the training set; returns its (loss sum, correct, images).

    Images that fail to decode are recorded in ``bad``. Gradients are accumulated over ``accum``
    batches; the epoch's last, partial accumulation is applied too.
    """
    cfg, dist, data = run.cfg, run.dist, run.data
    data.train_ds.set_epoch(epoch)
    data.sampler.set_epoch(epoch)
    loader = make_loader(data.train_ds, data.local_batch, cfg.workers, sampler=data.sampler, device=run.device)
    run.net.train()
    tot_loss, tot_correct, tot_n, step = 0.0, 0, 0, 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and dist.is_main),
               leave=False, unit="batch")
    run.optimizer.zero_grad(set_to_none=True)
    for batch in bar:
        for _, path, reason in batch["errors"]:
            bad[path] = reason
        has_images = bool(batch["items"])
        if dist.enabled:
            # Every rank must join every gradient all-reduce: a rank whose whole batch failed to
            # decode contributes a zero-weighted pass; the step is skipped only if all ranks are empty.
            (n_good,) = ddp.all_reduce_sum([len(batch["items"])])
            if n_good == 0:
                continue
        elif not has_images:
            continue
        if has_images:
            y = batch["label"].to(run.device)
            loss, logits = _forward_loss(run, batch, y)
            objective = loss / cfg.accum
        else:
            objective = _zero_weight_objective(run)
        run.scaler.scale(objective).backward()
        step += 1
        if step % cfg.accum == 0:
            _optimizer_step(run)
        if has_images:
            tot_loss += float(loss.detach()) * len(y)
            tot_correct += int((logits.argmax(-1) == y).sum())
            tot_n += len(y)
            bar.set_postfix(loss=f"{tot_loss / tot_n:.4f}", acc=f"{tot_correct / tot_n:.3f}")
    if step % cfg.accum:
        _optimizer_step(run)
    return tot_loss, tot_correct, tot_n


def _forward_loss(run: _Run, batch: dict, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(label-smoothed cross-entropy, logits) of one batch, under mixed precision where enabled."""
    logits = forward(run.net, batch, run.device, run.cfg.amp).logits
    loss = nn.functional.cross_entropy(logits.float(), y, label_smoothing=run.cfg.label_smoothing)
    return loss, logits


def _zero_weight_objective(run: _Run) -> torch.Tensor:
    """DDP: a zero loss through the whole network, for a rank whose whole batch failed to decode."""
    run.net.eval()
    logits, _ = run.net(*_dummy_inputs(run.data.spec, run.device))
    run.net.train()
    return logits.float().sum() * 0.0


def _optimizer_step(run: _Run) -> None:
    """Apply the accumulated gradients (through the AMP scaler) and clear them."""
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)


def _reduce_epoch(run: _Run, totals: tuple[float, int, int], bad: dict[str, str]) -> tuple[float, int, int]:
    """The epoch's training totals over all processes; every rank's bad images merged into ``bad``."""
    tot_loss, tot_correct, tot_n = totals
    if run.dist.enabled:
        tot_loss, tot_correct, tot_n = ddp.all_reduce_sum([tot_loss, tot_correct, tot_n])
        tot_correct, tot_n = int(round(tot_correct)), int(round(tot_n))
        for part in ddp.all_gather_object(bad):
            bad.update(part)
    return tot_loss, tot_correct, tot_n


def _print_epoch(cfg: TrainConfig, rec: dict, val: dict, improved: bool) -> None:
    tqdm.write(
        f"epoch {rec['epoch']}/{cfg.epochs}  train loss {rec['train_loss']:.4f} acc {rec['train_accuracy']:.3f}  "
        f"val loss {val['loss']:.4f} acc {val['accuracy']:.3f} auc {_fmt(val['auc'])}  "
        f"{rec['seconds']:.0f}s{'  *best' if improved else ''}"
    )


# ------------------------------------------------------------------------------ checkpoints and resume

def _save_epoch(run: _Run, progress: _Progress, epoch: int, ckpt_meta: dict, improved: bool) -> None:
    """``OUT/last/`` (weights + everything ``--resume`` needs) every epoch; ``OUT/best/`` when ``improved``."""
    state = {
        "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(), "torch_rng": torch.get_rng_state(), "epoch": epoch,
        "best_acc": progress.best_acc, "history": json.dumps(progress.history), "bad_images": json.dumps(progress.bad),
    }
    state.update(_rng_states(run))
    if run.dist.is_main:
        save_checkpoint(run.out / "last", run.model, ckpt_meta, write_extra=lambda d: torch.save(state, d / STATE_NAME))
        if improved:
            save_checkpoint(run.out / "best", run.model, ckpt_meta)


def _rng_states(run: _Run) -> dict:
    """The CUDA stream, and under DDP every rank's streams (gathered: a collective on every rank)."""
    state = {}
    if run.device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state()
    if run.dist.enabled:
        state["torch_rng_ranks"] = ddp.all_gather_object(torch.get_rng_state())
        if run.device.type == "cuda":
            state["cuda_rng_ranks"] = ddp.all_gather_object(torch.cuda.get_rng_state())
    return state


def _resume(run: _Run) -> _Progress:
    """Weights, optimizer, schedule, scaler, random streams and history from ``OUT/last/``."""
    last = run.out / "last"
    load_weights(run.model, last / WEIGHTS_NAME)
    state = torch.load(last / STATE_NAME, map_location="cpu", weights_only=True)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    rank = run.dist.rank
    ranks = state.get("torch_rng_ranks")  # per-rank streams of a DDP run
    same_world = ranks is not None and len(ranks) == run.dist.world_size
    torch.set_rng_state(ranks[rank] if same_world else state["torch_rng"])
    if run.device.type == "cuda" and "cuda_rng" in state:
        cuda_ranks = state.get("cuda_rng_ranks")
        torch.cuda.set_rng_state(cuda_ranks[rank] if same_world and cuda_ranks else state["cuda_rng"])
    return _Progress(start=int(state["epoch"]) + 1, best_acc=float(state["best_acc"]),
                     history=json.loads(state["history"]), bad=json.loads(state.get("bad_images", "{}")))


def _finish(run: _Run, progress: _Progress, samples: list[Sample], train_s: list[Sample], augment: str) -> dict:
    """``bad_images.csv`` and ``summary.json`` (rank 0); every rank returns the summary."""
    cfg, dist, out, bad = run.cfg, run.dist, run.out, progress.bad
    if bad and dist.is_main:
        with open(out / "bad_images.csv", "w", newline="", encoding="utf-8") as fh:
            fh.write("path,reason\n")  # rows quoted as before; the csv module escapes quotes, commas, newlines
            csv.writer(fh, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(sorted(bad.items()))
    summary = {
        "out": str(out), "best_val_accuracy": progress.best_acc, "epochs": cfg.epochs, "history": progress.history,
        "n_train": len(train_s), "n_val": len(run.data.val_s), "n_test": sum(s.split == "test" for s in samples),
        "bad_images": len(bad), "seed": cfg.seed, "device": str(run.device), "augment": augment,
    }
    if dist.enabled:
        summary["world_size"] = dist.world_size
    if dist.is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    ddp.barrier()  # every rank returns only once rank 0's files are complete
    return summary


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))
