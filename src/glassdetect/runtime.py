"""Devices, threads, precision and the one inference loop everyone shares."""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator, TypeVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .data import ViewDataset, collate, worker_init
from .decision import fake_probability, scale_logits


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op elsewhere. For timing GPU code."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_threads(threads: int = 0) -> int:
    """The intra-op thread count for ``threads`` (0: one per physical core, capped at 8)."""
    if threads <= 0:
        threads = max(1, min(8, (os.cpu_count() or 2) // 2))
    return int(threads)


def configure_threads(threads: int = 0) -> int:
    """Set torch's intra-op threads deliberately (0: one per physical core, capped at 8), for the rest
    of the process: for the command line and the service, which own their process. Library calls
    that take a ``threads`` option run under :func:`torch_threads` (or :func:`restores_threads`),
    so their caller gets its own count back.

    The environment is not touched here: the ``glassdetect`` command (``cli.main``) defaults
    ``OMP_WAIT_POLICY=PASSIVE`` before torch starts (OpenMP spin-waiting makes oversubscribed
    threads catastrophically slow when another process holds a core).
    """
    threads = resolve_threads(threads)
    torch.set_num_threads(threads)
    return threads


@contextlib.contextmanager
def torch_threads(threads: int | None = None) -> Iterator[int]:
    """Run a block with torch's intra-op thread count set to ``threads`` (as :func:`configure_threads`:
    0 = auto; None: left as it is), then give the caller's ``torch.get_num_threads()`` back,
    whatever the block changed. Yields the count in force."""
    before = torch.get_num_threads()
    n = before if threads is None else resolve_threads(threads)
    if n != before:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


_F = TypeVar("_F", bound=Callable)


def restores_threads(fn: _F) -> _F:
    """Decorator for library entry points that call :func:`configure_threads`: the caller's torch
    thread count is restored when ``fn`` returns or raises (:func:`torch_threads`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch_threads(None):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def autocast(device: torch.device, enabled: bool = True):
    """Mixed precision on CUDA (bf16 where supported, else fp16); plain fp32 on CPU, where
    bf16 autocast is many times slower on CPUs without bf16 units."""
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def make_loader(
    dataset: ViewDataset,
    batch_size: int,
    workers: int,
    device: torch.device | None = None,
    sampler=None,
) -> DataLoader:
    """Batches of views in dataset order (or ``sampler``'s), decoded in ``workers`` processes."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        worker_init_fn=worker_init if workers > 0 else None,
        pin_memory=device is not None and device.type == "cuda",
        prefetch_factor=2 if workers > 0 else None,
    )


def to_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    mask = batch.get("crop_mask")
    return (
        batch["global_view"].to(device, non_blocking=True),
        batch["crops"].to(device, non_blocking=True),
        None if mask is None else mask.to(device, non_blocking=True),
    )


@dataclass
class Predictions:
    """Per-image outputs of one pass over a dataset, in dataset order for the images that decoded."""

    index: np.ndarray  # (N,) dataset indices
    logits: np.ndarray  # (N, C) temperature-scaled
    prob_fake: np.ndarray  # (N,)
    attention: list[np.ndarray]  # per image (K,)
    boxes: list[np.ndarray]  # per image (K, 2)
    errors: list[tuple[str, str]] = field(default_factory=list)


@torch.inference_mode()
def infer(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = True, progress=None) -> Predictions:
    """Run ``model`` over ``loader``; bad images are collected in ``errors``, never raised."""
    model.eval()
    temperature = float(getattr(model.cfg, "temperature", 1.0))
    idx, logits, attn, boxes, errors = [], [], [], [], []
    for batch in loader:
        errors += batch["errors"]
        if "index" in batch:
            g, c, m = to_device(batch, device)
            with autocast(device, amp):
                out, weights = model(g, c, m)
            out = scale_logits(out.float(), temperature)
            idx.append(batch["index"].numpy())
            logits.append(out.cpu().numpy())
            w = weights.float().cpu().numpy()
            mask = batch["crop_mask"]
            for i in range(out.shape[0]):
                keep = slice(None) if mask is None else mask[i].numpy()
                attn.append(w[i][keep] if w.shape[1] else w[i])
                boxes.append(batch["boxes"][i].numpy()[keep] if w.shape[1] else np.zeros((0, 2), np.int64))
        if progress is not None:
            progress(len(batch.get("index", [])) + len(batch["errors"]))
    n_cls = len(model.cfg.class_names)
    lg = np.concatenate(logits) if logits else np.zeros((0, n_cls), np.float32)
    prob = fake_probability(torch.from_numpy(lg)).numpy() if len(lg) else np.zeros(0, np.float32)
    return Predictions(np.concatenate(idx) if idx else np.zeros(0, np.int64), lg, prob, attn, boxes, errors)
