"""DistributedDataParallel plumbing: one process per device, started by ``torchrun``.

``torchrun`` (or any launcher that sets the same variables) gives every process ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Without them (or with
``WORLD_SIZE=1``) everything here is a no-op and training runs in one process, unchanged.

Backend: NCCL when the process trains on CUDA, gloo on CPU. Every helper works whether or not
a process group exists, so callers never branch on "am I distributed?" except where the
behaviour must differ (sampling, who writes files).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Sequence

import torch
import torch.distributed as dist

from .. import runtime


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank, world size and local rank from the launcher's environment variables."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    local = int(os.environ.get("LOCAL_RANK", str(rank)) or 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad distributed environment: RANK={rank} WORLD_SIZE={world}")
    return DistInfo(rank, world, local)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def info() -> DistInfo:
    """The running process group's view (falls back to the environment when none is up)."""
    if is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return env_info()


def is_main() -> bool:
    return info().is_main


def resolve_device(device: str, local_rank: int) -> torch.device:
    """:func:`glassdetect.runtime.resolve_device`, then ``auto``/``cuda`` -> ``cuda:LOCAL_RANK`` (when CUDA
    exists); an explicit ``cuda:N`` or ``cpu`` is kept."""
    dev = runtime.resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return dev


def init(device: torch.device, timeout_s: float = 1800.0) -> bool:
    """Start the process group from the environment if the launcher asked for more than one process.

    Returns True when this call created the group (the caller then owns :func:`cleanup`).
    """
    env = env_info()
    if not env.enabled or is_initialized():
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs: dict[str, Any] = {}
    if device.type == "cuda":
        kwargs["device_id"] = device  # binds NCCL to this GPU (and silences the barrier warning)
    dist.init_process_group(backend=backend, init_method="env://", rank=env.rank, world_size=env.world_size,
                            timeout=timedelta(seconds=timeout_s), **kwargs)
    return True


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _comm_device() -> torch.device:
    """Where tensors must live for the group's backend (NCCL: the current GPU)."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of a few numbers over all ranks (float64, so counts stay exact)."""
    if not (is_initialized() and dist.get_world_size() > 1):
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not (is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shuffled_order(n: int, seed: int) -> list[int]:
    """The training order of ``n`` items for one epoch: a permutation from an explicit seed."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


class ShardSampler(torch.utils.data.Sampler[int]):
    """This rank's share of a global shuffled order: positions ``rank, rank + W, rank + 2W, ...``.

    With a per-rank batch of ``B / W`` the union of the ranks' i-th batches is exactly the i-th
    batch of size ``B`` that one process would draw from the same order, so a DDP run follows
    the single-process run step for step. The order is padded (by wrapping around) to a
    multiple of ``W`` so that every rank takes the same number of steps, as
    :class:`torch.utils.data.DistributedSampler` does. Call :meth:`set_epoch` each epoch.
    ``units`` (``TrainConfig.paired``): the order shuffles these groups of indices instead, each
    group's members kept next to each other (a real and its fake in one global batch).
    """

    def __init__(self, n: int, rank: int, world_size: int, seed_for_epoch, units: Sequence[Sequence[int]] | None = None):
        self.n, self.rank, self.world_size = n, rank, world_size
        self.seed_for_epoch = seed_for_epoch
        self.epoch = 0
        self.units = [list(u) for u in units] if units is not None else None
        if self.units is not None and sorted(i for u in self.units for i in u) != list(range(n)):
            raise ValueError(f"ShardSampler: units must hold each of the {n} indices once")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n // self.world_size)

    def __iter__(self):
        if self.units is None:
            order = shuffled_order(self.n, self.seed_for_epoch(self.epoch))
        else:  # the units in a shuffled order, each unit's members next to each other
            order = [i for u in shuffled_order(len(self.units), self.seed_for_epoch(self.epoch)) for i in self.units[u]]
        total = len(self) * self.world_size
        if order and total > len(order):
            order += (order * (total // len(order) + 1))[: total - len(order)]
        return iter(order[self.rank:total:self.world_size])
