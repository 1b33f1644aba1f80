"""Training: one loop for GLASS and the baseline.

AdamW with parameter groups (global backbone / local backbone / attention + head for GLASS;
backbone / head for the baseline), cosine annealing to ``min_lr``, label smoothing, mixed
precision on CUDA (fp32 on CPU), gradient accumulation, and for GLASS an optional per-crop loss
(``crop_loss``: each crop's own logits against its image's label, added to the image loss). With
``ema`` > 0 an exponential moving average of the weights (:mod:`.ema`) is what is validated and
saved. The best epoch by validation accuracy is kept in ``OUT/best/``; ``OUT/last/`` is rewritten atomically every epoch with everything
``--resume`` needs to continue exactly as an uninterrupted run would.

The same function runs under ``torchrun --nproc_per_node N`` (DistributedDataParallel; NCCL on
CUDA, gloo on CPU). ``batch_size`` is then the *global* batch: each of the N processes takes
``batch_size / N`` images of the very order a single process would use (see
:class:`glassdetect.training.distributed.ShardSampler`), gradients are averaged across processes, the
validation set is sharded and its predictions gathered, the epoch's metrics are summed over
processes, and only rank 0 writes files. A run started with N processes resumes with N.
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn
from tqdm import tqdm

from . import distributed as ddp
from ..views.degrade import parse as parse_degradation
from ..data.splits import Sample
from ..models import create_model, save_checkpoint
from ..models.factory import load_weights, WEIGHTS_NAME
from ..pipeline import forward, make_loader
from ..evaluation.report import plot_training_curves
from .data import (  # noqa: F401 - split_samples/_split_samples, evaluate_loss: also used by the tests
    TrainData, build_data, evaluate_loss, split_samples, split_samples as _split_samples,
)
from ..runtime import configure_threads, release_memory, resolve_device, resolve_threads, torch_threads
from .config import TrainConfig
from .ema import WeightEMA
from .params import crop_loss, freeze_leading, pair_loss, param_groups, train_mode  # noqa: F401 - re-exported

STATE_NAME = "trainer_state.pt"


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

    Freed memory goes back to the system before and after the run (:func:`release_memory`), so a
    process that trains one model after another (demo, tune, final, crossgen) does not carry the
    previous run's high-water mark into the next (the version-3 demo grew from 3.4 to 7.8 GB without).
    """
    env = ddp.env_info()
    device = ddp.resolve_device(cfg.device, env.local_rank) if env.enabled else resolve_device(cfg.device)
    owns_group = ddp.init(device)
    release_memory()
    try:
        with torch_threads(None):  # cfg.threads applies to this run; the caller's thread count comes back
            return _train(cfg, on_epoch_end, device)
    finally:
        release_memory()  # _train's frame (model, optimizer, loaders) is gone by now
        if owns_group:
            ddp.cleanup()


# ------------------------------------------------------------------------------ the run, step by step
#
# ``_train`` reads top to bottom like a script: data -> model -> optimizer (the LR schedule) ->
# loaders -> resume -> for each epoch: train, step the LR, validate, report, checkpoint.


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
    data: TrainData
    ema: WeightEMA | None = None  # TrainConfig.ema > 0: the averaged weights, validated and saved

    @property
    def evaluated(self) -> nn.Module:
        """The model validation scores and the checkpoints hold: the weight average where there is one."""
        return self.ema.module if self.ema is not None else self.model


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
    configure_threads(training_threads(cfg.threads))
    torch.manual_seed(cfg.seed)
    samples = split_samples(cfg, out)
    train_s = [s for s in samples if s.split == "train"]
    val_s = [s for s in samples if s.split == "val"]
    if not train_s or not val_s:
        raise ValueError(f"{cfg.data}: need images in both the train and val splits (got {len(train_s)}, {len(val_s)}; "
                         f"split fractions {cfg.split_fractions}, split seed {cfg.split_seed})")

    run, frozen = build_run(cfg, dist, device, out, train_s, val_s, augment)
    optimizer, scheduler, data = run.optimizer, run.scheduler, run.data
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
        val = evaluate_loss(run.evaluated, data.val_loader, data.val_shard, val_s, device, cfg.amp, cfg.label_smoothing)
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
            plot_training_curves(progress.history, out / "curves.png")
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


def training_threads(threads: int) -> int:
    """torch's intra-op threads for a training run: -1 = every logical CPU (training is compute-bound:
    on the 2-vCPU machine, 0's one per physical core leaves a core idle), 0 = auto, N = N."""
    return max(1, os.cpu_count() or 1) if threads < 0 else resolve_threads(threads)


def check_options(cfg: TrainConfig, dist: ddp.DistInfo) -> None:
    """Options that cannot work together, refused before anything is written."""
    if cfg.pair_loss < 0 or (cfg.pair_loss > 0 and not cfg.paired):
        raise ValueError(f"pair_loss {cfg.pair_loss}: a non-negative weight, and it needs paired training (--paired)")
    if cfg.paired and dist.enabled:  # the sampler deals positions, not pairs, to the ranks
        raise ValueError("paired: not supported under torchrun (DistributedDataParallel) yet; use one process")
    if not 0.0 <= cfg.ema < 1.0:
        raise ValueError(f"ema must be in [0, 1) (the weight average's decay per optimizer step; 0 = off), got {cfg.ema}")
    if cfg.crop_loss < 0:
        raise ValueError(f"crop_loss must be >= 0 (the weight of the per-crop loss), got {cfg.crop_loss}")
    if cfg.crop_loss > 0 and cfg.arch != "glass":
        raise ValueError(f"crop_loss {cfg.crop_loss}: the per-crop loss needs GLASS's crops; arch {cfg.arch!r} has "
                         "none (use --crop-loss 0)")
    if cfg.crop_loss > 0 and dist.enabled:
        raise ValueError("crop_loss: not supported under torchrun (DistributedDataParallel) yet; use one process")


def build_run(cfg: TrainConfig, dist: ddp.DistInfo, device: torch.device, out: Path, train_s: list[Sample],
              val_s: list[Sample], augment) -> tuple[_Run, int]:
    """Model, optimizer, schedule and data of one run (also what ``glassdetect bench train`` times);
    returns the run and the number of frozen parameters."""
    check_options(cfg, dist)
    model, net, frozen = _build_model(cfg, dist, device)
    optimizer, scheduler, scaler = _build_optimizer(cfg, model, device)
    data = build_data(cfg, dist, device, model.cfg.view_spec(cfg.max_pixels), train_s, val_s, augment)
    ema = WeightEMA(model, cfg.ema) if cfg.ema > 0 else None
    return _Run(cfg, dist, device, out, model, net, optimizer, scheduler, scaler, data, ema), frozen


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


# ------------------------------------------------------------------------------ one epoch

def _train_epoch(run: _Run, epoch: int, bad: dict[str, str]) -> tuple[float, int, int]:
    """One pass over this process's share of the training set; returns its (loss sum, correct, images).

    Images that fail to decode are recorded in ``bad``. Gradients are accumulated over ``accum``
    batches; the epoch's last, partial accumulation is applied too.
    """
    tot_loss, tot_correct, tot_n = 0.0, 0, 0
    for rec in train_steps(run, epoch, bad):
        tot_loss, tot_correct, tot_n = tot_loss + rec.loss_sum, tot_correct + rec.correct, tot_n + rec.images
    return tot_loss, tot_correct, tot_n


@dataclass
class StepRecord:
    """One training batch: its loss sum, correct predictions and images, and the seconds the step
    waited for the batch (the data loader's stall)."""

    loss_sum: float
    correct: int
    images: int
    wait_s: float


def train_steps(run: _Run, epoch: int, bad: dict[str, str]) -> Iterator[StepRecord]:
    """The steps of one epoch, one :class:`StepRecord` each, yielded once the batch's backward pass
    (and, every ``accum`` batches, the optimizer step) is done: what :func:`_train_epoch` sums and
    ``glassdetect bench train`` times."""
    cfg, dist, data = run.cfg, run.dist, run.data
    data.train_ds.set_epoch(epoch)
    data.sampler.set_epoch(epoch)
    loader = make_loader(data.train_ds, data.local_batch, cfg.workers, sampler=data.sampler, device=run.device)
    train_mode(run.net, cfg.bn_eval)
    tot_loss, tot_correct, tot_n, step = 0.0, 0, 0, 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and dist.is_main),
               leave=False, unit="batch")
    run.optimizer.zero_grad(set_to_none=True)
    batches = iter(bar)
    while True:
        t0 = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            break
        wait = time.perf_counter() - t0
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
        if not has_images:
            continue
        rec = StepRecord(float(loss.detach()) * len(y), int((logits.argmax(-1) == y).sum()), len(y), wait)
        tot_loss, tot_correct, tot_n = tot_loss + rec.loss_sum, tot_correct + rec.correct, tot_n + rec.images
        bar.set_postfix(loss=f"{tot_loss / tot_n:.4f}", acc=f"{tot_correct / tot_n:.3f}")
        yield rec
    if step % cfg.accum:
        _optimizer_step(run)


def _forward_loss(run: _Run, batch: dict, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(label-smoothed cross-entropy, logits) of one batch, under mixed precision where enabled.

    With ``crop_loss`` > 0 (GLASS) the loss also holds that weight times the mean cross-entropy of
    each crop's own logits (:meth:`~glassdetect.models.glass.GLASS.crop_scores`: the shared head on
    [g; f_i]) against the image's label: every crop of a fake is fake, every crop of a real is real."""
    cfg = run.cfg
    out = forward(run.net, batch, run.device, cfg.amp, crop_scores=cfg.crop_loss > 0, cpu_amp=cfg.cpu_amp)
    loss = nn.functional.cross_entropy(out.logits.float(), y, label_smoothing=cfg.label_smoothing)
    if cfg.crop_loss > 0:
        loss = loss + cfg.crop_loss * crop_loss(out.crop_logits, y, cfg.label_smoothing)
    if cfg.pair_loss > 0:
        keys = run.data.train_ds.draw_keys
        loss = loss + cfg.pair_loss * pair_loss(out.logits, y, [keys[int(i)] for i in batch["index"]])
    return loss, out.logits


def _zero_weight_objective(run: _Run) -> torch.Tensor:
    """DDP: a zero loss through the whole network, for a rank whose whole batch failed to decode."""
    run.net.eval()
    logits, _ = run.net(*_dummy_inputs(run.data.spec, run.device))
    train_mode(run.net, run.cfg.bn_eval)
    return logits.float().sum() * 0.0


def _optimizer_step(run: _Run) -> None:
    """Apply the accumulated gradients (through the AMP scaler) and clear them."""
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.update(run.model)


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
    if run.ema is not None:  # the checkpoints hold the average; the weights being trained go with the state
        state.update(run.ema.state(), trained_weights=run.model.state_dict())
    if run.dist.is_main:
        save_checkpoint(run.out / "last", run.evaluated, ckpt_meta,
                        write_extra=lambda d: torch.save(state, d / STATE_NAME))
        if improved:
            save_checkpoint(run.out / "best", run.evaluated, ckpt_meta)


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
    load_weights(run.evaluated, last / WEIGHTS_NAME)
    state = torch.load(last / STATE_NAME, map_location="cpu", weights_only=True)
    if run.ema is not None:
        if "trained_weights" not in state:
            raise ValueError(f"{last}: written without ema; resume it without --ema (or start afresh)")
        run.model.load_state_dict(state["trained_weights"])
        run.ema.load_state(state)
    elif "trained_weights" in state:
        raise ValueError(f"{last}: written with ema; resume it with the same --ema")
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
