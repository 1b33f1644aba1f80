"""Dynamic batching for the HTTP service: concurrent requests share one model forward pass.

Each request prepares its own views in a worker thread (decoding is CPU work that parallelises),
then hands the prepared item to :class:`Batcher`. A single batcher task owns an asyncio queue: it
takes the first waiting item, waits up to ``max_wait_ms`` for more, up to ``max_batch`` in all,
runs one forward pass over them on a worker thread and resolves each request's future. It stops
waiting as soon as no other request is still building its views, so a lone request is not delayed.
At most ``forwards`` passes run at once (the service's ``concurrency``); while they run, new
requests wait in the queue and form the next, larger batch.

A failure is confined to its item: when a batch raises, its items are run again one by one, so
only the item that fails gets the exception and the others get their verdicts.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..pipeline import collate, prepare

log = logging.getLogger("glassdetect.service.serve")

RunBatch = Callable[[Sequence[Any]], Sequence[Any]]
OnBatch = Callable[[int, float], None]  # (images, seconds) of each forward pass


# max_batch=0 ("auto") per device type: on a GPU a batch costs little more than one image; on the
# CPU a batch is no faster per image (slower for EfficientNet: see benchmarks/results-serve.md).
AUTO_MAX_BATCH = {"cuda": 8, "mps": 8}


@dataclass(frozen=True)
class BatchConfig:
    """How requests are grouped: up to ``max_batch`` images, waiting at most ``max_wait_ms`` for them.

    ``max_batch=1`` switches batching off (each request runs its own forward pass, as before);
    ``max_batch=0`` (the default) chooses by device (:meth:`resolved`): 8 on a GPU, 1 on the CPU.
    """

    max_batch: int = 0
    max_wait_ms: float = 10.0

    def __post_init__(self) -> None:
        if int(self.max_batch) < 0:
            raise ValueError(f"max_batch must be 1 or more (0: auto), got {self.max_batch}")
        if not 0 <= float(self.max_wait_ms) <= 10_000:
            raise ValueError(f"max_wait_ms must be between 0 and 10000, got {self.max_wait_ms}")

    def resolved(self, device_type: str) -> BatchConfig:
        """The configuration with ``max_batch`` chosen for ``device_type`` when it is 0 (auto)."""
        if int(self.max_batch) > 0:
            return self
        return BatchConfig(AUTO_MAX_BATCH.get(device_type, 1), self.max_wait_ms)

    @property
    def batched(self) -> bool:
        return int(self.max_batch) > 1


@dataclass
class BatchStats:
    """What the batcher has done so far (reported by ``/healthz``)."""

    batches: int = 0
    images: int = 0
    largest: int = 0
    retried_alone: int = 0  # batches that failed and were rerun one item at a time

    def record(self, n: int) -> None:
        self.batches += 1
        self.images += n
        self.largest = max(self.largest, n)

    def to_dict(self) -> dict[str, Any]:
        mean = self.images / self.batches if self.batches else None
        return {"batches": self.batches, "images": self.images, "largest": self.largest,
                "mean_batch": None if mean is None else round(mean, 3), "retried_alone": self.retried_alone}


@dataclass
class Timing:
    """One item's way through the batcher: seconds queued before its forward pass, the pass, its size."""

    queue_s: float = 0.0
    forward_s: float = 0.0
    batch: int = 0


@dataclass
class _Pending:
    item: Any
    future: asyncio.Future = field(repr=False)
    timing: Timing = field(default_factory=Timing)
    queued_at: float = field(default_factory=time.perf_counter)


def run_isolated(run: RunBatch, items: Sequence[Any]) -> tuple[list[Any], bool]:
    """``run(items)``; when that raises, each item alone. Returns one result or exception per item,
    and whether the batch had to be split (blocking: called on a worker thread)."""
    try:
        results = list(run(items))
        if len(results) != len(items):
            raise RuntimeError(f"the batch returned {len(results)} results for {len(items)} items")
        return results, False
    except Exception as exc:  # noqa: BLE001 - decided per item below
        if len(items) == 1:
            return [exc], False
        log.warning("a batch of %d failed (%s: %s); running its items one by one", len(items), type(exc).__name__, exc)
    out: list[Any] = []
    for item in items:
        try:
            out.append(run([item])[0])
        except Exception as exc:  # noqa: BLE001 - this item's own failure, answered to its request
            out.append(exc)
    return out, True


class Batcher:
    """Collects submitted items into batches; ``run`` maps a list of items to one result per item.

    At most ``forwards`` batches run at once (each on its own worker thread); while they all run,
    new items wait in the queue and the next batch takes up to ``max_batch`` of them at once.
    """

    def __init__(self, run: RunBatch, cfg: BatchConfig, forwards: int = 1, on_batch: OnBatch | None = None):
        self.run, self.cfg, self.forwards, self.on_batch = run, cfg, max(1, int(forwards)), on_batch
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: set[asyncio.Task] = set()
        self._expected = 0  # requests building their views, to be submitted soon
        self._changed: asyncio.Event | None = None  # set on every submit and every end of a preparation

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Around a request's preparation: the batch being collected waits for it (up to ``max_wait_ms``);
        with nothing expected and nothing queued a batch starts at once, so a lone request never waits."""
        self._expected += 1
        try:
            yield
        finally:
            self._expected -= 1
            if self._changed is not None:
                self._changed.set()

    def _ensure_started(self) -> asyncio.Queue[_Pending]:
        """Start the batcher task in the running event loop (again, if the app moved to a new loop)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop, self._queue, self._changed = loop, asyncio.Queue(), asyncio.Event()
            self._task = loop.create_task(self._serve(self._queue, asyncio.Semaphore(self.forwards)),
                                          name="glassdetect-batcher")
        assert self._queue is not None
        return self._queue

    async def submit(self, item: Any, timing: Timing | None = None) -> Any:
        """The result for ``item`` once its batch has run; re-raises the item's own exception.
        ``timing``, when given, receives the item's queue wait, forward time and batch size."""
        queue = self._ensure_started()
        pending = _Pending(item, asyncio.get_running_loop().create_future(), timing or Timing())
        queue.put_nowait(pending)
        assert self._changed is not None
        self._changed.set()
        return await pending.future

    async def stop(self) -> None:
        """Cancel the batcher task and the batches in flight; requests still waiting get cancelled."""
        tasks = [t for t in (self._task, *self._running) if t is not None and not t.done()]
        queue = self._queue
        self._task = self._queue = None
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        while queue is not None and not queue.empty():
            queue.get_nowait().future.cancel()

    async def _collect(self, queue: asyncio.Queue[_Pending], batch: list[_Pending]) -> None:
        """Add to ``batch`` (holding the first item) what arrives within ``max_wait_ms``, up to ``max_batch``;
        stop waiting early when no other request is on its way (:meth:`expecting`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(self.cfg.max_wait_ms) / 1000
        changed = self._changed
        assert changed is not None
        while len(batch) < self.cfg.max_batch:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0 or self._expected <= 0:
                return
            changed.clear()
            try:  # woken by the next submit, or by a preparation that ended without one (a bad image)
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                return

    async def _serve(self, queue: asyncio.Queue[_Pending], slots: asyncio.Semaphore) -> None:
        """Forever: wait for a free forward slot, collect a batch, start it."""
        loop = asyncio.get_running_loop()
        while True:
            await slots.acquire()
            batch: list[_Pending] = []
            try:
                batch.append(await queue.get())
                await self._collect(queue, batch)
            except BaseException:  # cancelled (shutdown): nobody waits forever
                slots.release()
                _resolve(batch, [asyncio.CancelledError()] * len(batch))
                raise
            batch = [p for p in batch if not p.future.done()]  # a request that went away is not run
            if not batch:
                slots.release()
                continue
            task = loop.create_task(self._forward(batch, slots))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _forward(self, batch: list[_Pending], slots: asyncio.Semaphore) -> None:
        """One batch on a worker thread; each request gets its own result or exception."""
        t0 = time.perf_counter()
        for p in batch:
            p.timing.queue_s, p.timing.batch = t0 - p.queued_at, len(batch)
        try:
            results, split = await anyio.to_thread.run_sync(
                functools.partial(run_isolated, self.run, [p.item for p in batch]))
        except BaseException as exc:  # cancelled, or a failure outside run
            _resolve(batch, [exc] * len(batch))
            if not isinstance(exc, Exception):
                raise
            log.exception("a batch of %d failed outside the model", len(batch))
            return
        finally:
            slots.release()
        seconds = time.perf_counter() - t0
        self.stats.record(len(batch))
        self.stats.retried_alone += split
        for p in batch:
            p.timing.forward_s = seconds
        if self.on_batch is not None:
            self.on_batch(len(batch), seconds)
        _resolve(batch, results)


def _resolve(batch: Sequence[_Pending], results: Sequence[Any]) -> None:
    """Set each waiting request's result, exception or cancellation."""
    for p, result in zip(batch, results):
        if p.future.done():
            continue
        if isinstance(result, asyncio.CancelledError) or (isinstance(result, BaseException)
                                                         and not isinstance(result, Exception)):
            p.future.cancel()
        elif isinstance(result, BaseException):
            p.future.set_exception(result)
        else:
            p.future.set_result(result)


# ------------------------------------------------------------------ the detector's side of a batch

def prepare_upload(det: Any, data: bytes, explain: bool, name: str, thumbnail: int) -> dict[str, Any]:
    """One upload's views, exactly as ``det.predict(data, explain=..., name=..., thumbnail=...)`` builds
    them (with a thumbnail for the evidence map when ``explain``). Blocking: runs in a worker thread;
    raises :class:`~glassdetect.views.build.ImageError` for an unusable image."""
    return prepare(data, det.spec(), det.seed, det.draws, thumbnail if explain else 0, name)


def detect_prepared(det: Any, items: Sequence[dict[str, Any]]) -> list[Any]:
    """One :class:`~glassdetect.inference.api.Detection` per prepared item, in order, from one forward pass."""
    batch = collate([dict(it, index=i) for i, it in enumerate(items)])
    return [d for _, d in det.run_batch(batch)]
