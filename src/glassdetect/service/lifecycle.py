"""The service's life: warm-up and readiness, and uvicorn with a graceful SIGTERM.

Liveness and readiness are separate: ``/healthz`` answers as soon as the process serves HTTP;
``/readyz`` answers 200 only once the model has run a forward pass on a synthetic image (the first
pass builds CPU graphs and allocator pools: :func:`warm_up`) and until the service starts draining.
Requests that arrive during the warm-up wait for it instead of racing it.

On SIGTERM (or Ctrl-C) :func:`run_server` marks the service draining (``/readyz`` answers 503, so a
load balancer stops sending), stops accepting connections, lets the requests in flight finish within
``shutdown_timeout_s`` (then cancels them), stops the batcher and returns: the process exits 0.
"""
from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

import numpy as np

from .batcher import BatchConfig, detect_prepared, prepare_upload

log = logging.getLogger("glassdetect.service.serve")


class Readiness:
    """``warming`` → ``ready`` (or ``failed``); ``draining`` once shutdown began."""

    def __init__(self, warm: bool = True):
        self.state = "warming" if warm else "ready"
        self.detail: str | None = None
        self._warmed: asyncio.Event | None = None

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def _event(self) -> asyncio.Event:
        if self._warmed is None:
            self._warmed = asyncio.Event()
            if self.state != "warming":
                self._warmed.set()
        return self._warmed

    async def wait_warm(self) -> None:
        """Return once the warm-up is over (at once when there is none)."""
        if self.state != "warming":
            return
        await self._event().wait()

    def warmed(self, error: BaseException | None = None) -> None:
        """The warm-up ended (with ``error`` when it failed); waiting requests go on."""
        if self.state == "warming":
            self.state, self.detail = ("ready", None) if error is None else ("failed", f"warm-up failed: {error}")
        self._event().set()

    def drain(self) -> None:
        self.state, self.detail = "draining", "shutting down: finishing the requests in flight"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.state, **({"detail": self.detail} if self.detail else {})}


def warm_up(det: Any, batch: BatchConfig) -> int:
    """Forward passes on a synthetic image at the batch sizes the service will use first (1, and
    ``max_batch`` when batching). Blocking (a worker thread); returns the number of passes."""
    side = 2 * int(det.cfg.patch)
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    image = np.stack([np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, 255 - ramp) / 2,
                      np.full((side, side), 128.0)], -1).astype(np.uint8)
    item = prepare_upload(det, image, False, "warm-up", 0)
    sizes = sorted({1, int(batch.max_batch) if batch.batched else 1})
    for n in sizes:
        detect_prepared(det, [item] * n)
    return len(sizes)


def run_server(app: Any, host: str, port: int, *, shutdown_timeout_s: float, on_drain: Callable[[], None],
               log_config: dict[str, Any], log_level: str, access_log: bool) -> None:
    """uvicorn until SIGTERM/SIGINT, then a graceful shutdown (module docstring); returns normally."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if not self.should_exit:
                log.info("signal %s: draining (%.0f s for the requests in flight)", signal.Signals(sig).name,
                         shutdown_timeout_s)
                on_drain()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                            log_config=log_config, timeout_graceful_shutdown=max(1, round(shutdown_timeout_s)),
                            lifespan="on")
    server = GracefulServer(config)
    # uvicorn re-raises a captured signal once it has shut down; with these handlers in place that
    # ends the process normally (exit 0) instead of by the signal's default action.
    previous = {sig: signal.signal(sig, _after_shutdown) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _after_shutdown(sig: int, frame: Any) -> None:
    log.info("shut down after %s", signal.Signals(sig).name)
