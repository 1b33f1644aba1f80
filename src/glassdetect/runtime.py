"""Devices, threads and precision. The batching and inference path is :mod:`glassdetect.pipeline`."""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable, Iterator, TypeVar

import torch



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


def autocast(device: torch.device, enabled: bool = True, cpu: bool = False):
    """Mixed precision on CUDA (bf16 where supported, else fp16); on CPU plain fp32 unless ``cpu``
    (bf16 autocast: it is many times slower on CPUs without bf16 units, about as fast as fp32 on one
    with them, and keeps the activations saved for backward in half the bytes)."""
    if device.type == "cpu" and cpu:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively (``avx512_bf16`` or AMX; Linux's /proc/cpuinfo flags):
    where CPU bf16 autocast runs about as fast as fp32 instead of many times slower."""
    try:
        with open(cpuinfo) as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def release_memory() -> bool:
    """Hand freed memory back to the operating system: collect garbage, empty the CUDA cache, and ask
    glibc to trim its heaps (``malloc_trim``; freed tensor memory otherwise stays resident in the
    process, so a long-lived process that trains one model after another carries the largest run's
    high-water mark into the next). Returns whether glibc trimmed; a no-op elsewhere."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    name = ctypes.util.find_library("c")
    try:
        return bool(ctypes.CDLL(name).malloc_trim(0)) if name else False
    except (OSError, AttributeError):  # not glibc
        return False
