"""glassdetect.pipeline: how DataLoader workers start (not as forks of a large parent)."""
from __future__ import annotations

import sys

import pytest
import torch

from glassdetect.pipeline import make_loader, worker_start_method


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


class WorkerRss(torch.utils.data.Dataset):
    """Each item: the resident memory (MB) of the process that produced it."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> dict:
        return {"index": index, "rss": _rss_mb()}


def _collate(items: list[dict]) -> list[dict]:
    return items


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_workers_do_not_inherit_the_parents_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLASSDETECT_WORKER_START", raising=False)
    assert worker_start_method() == "forkserver"
    ballast = bytearray(800 * 2**20)  # a parent holding 800 MB (as a training process holds its heap)
    ballast[::4096] = b"\x01" * len(ballast[::4096])
    parent = _rss_mb()
    loader = make_loader(WorkerRss(), batch_size=1, workers=1)
    loader.collate_fn = _collate
    rss = [item["rss"] for batch in loader for item in batch]
    assert len(rss) == 2 and max(rss) < parent - 500, (parent, rss)  # a fork holds the 800 MB too (measured)
    assert len(ballast) == 800 * 2**20


def test_worker_start_method_can_be_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLASSDETECT_WORKER_START", "fork")
    assert worker_start_method() == "fork"
    monkeypatch.setenv("GLASSDETECT_WORKER_START", "no-such-method")
    assert worker_start_method() is None  # the platform's default
