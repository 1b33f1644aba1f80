"""``bench serve``, hostile mix: the service as deployed (``glassdetect serve`` in its own process)
under valid uploads mixed with what a public endpoint also gets.

Classes of requests, each on its own connection (raw HTTP/1.1 over asyncio streams, so every byte
and every pause is the client's choice), in a fixed interleaved order (:data:`MIX`):

``valid``      a JPEG as the multipart field ``file``                                      → 200
``hostile``    broken and hostile files: random bytes, an empty file, a truncated JPEG, a PNG that
               declares 100 000 × 100 000 pixels (a decompression bomb), a JPEG with its entropy
               data overwritten                                                            → 4xx (or 200)
``oversize``   a body over the limit, declared by Content-Length or streamed chunked       → 413
``slow``       a valid JPEG trickled in ``slow_chunks`` pieces ``slow_delay_s`` apart        → 200
``multipart``  malformed multipart: no boundary, no closing boundary, no ``file`` field    → 400/422

``clients`` tasks send the next request as soon as their previous one ended; ``/healthz`` is probed
every 100 ms meanwhile. Per client count: requests per second, p50/p95/p99 latency per class, the
status codes seen, 5xx count (the goal: 0), ``/healthz`` p95 and the server's peak RSS (VmHWM of
its process, reset before each client count). At the end the server's own ``/metrics`` rejections
are read and it is stopped with SIGTERM (its exit code is reported).
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .common import log

MIX = ("valid", "hostile", "valid", "slow", "multipart", "valid", "oversize", "hostile", "valid", "slow",
       "valid", "multipart", "valid", "hostile", "valid", "slow", "oversize", "valid", "multipart", "hostile")
CLASSES = ("valid", "hostile", "oversize", "slow", "multipart")
EXPECTED = {"valid": {200}, "hostile": {200, 415, 422}, "oversize": {413}, "slow": {200}, "multipart": {400, 422}}
BOUNDARY = "glassdetect-bench-7d1e"


@dataclass(frozen=True)
class HostileConfig:
    """The hostile mix: client counts, requests per count (at least 3 per client) and the slow clients' pace."""

    clients: tuple[int, ...] = (1, 16, 64)
    requests: int = 40
    slow_chunks: int = 8
    slow_delay_s: float = 0.25
    max_mb: float = 20.0  # the service's upload limit (its default)
    oversize_mb: float = 24.0
    timeout_s: float = 300.0

    def n_requests(self, clients: int) -> int:
        return max(self.requests, 3 * clients)


def hostile_files(jpeg: bytes, seed: int = 0) -> list[bytes]:
    """The broken and hostile files (module docstring), made from one valid JPEG."""
    import zlib

    rng = np.random.default_rng(seed)
    ihdr = (100_000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    chunk = lambda kind, data: (len(data).to_bytes(4, "big") + kind + data  # noqa: E731
                                + zlib.crc32(kind + data).to_bytes(4, "big"))
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 65536)) + chunk(b"IEND", b"")
    scrambled = bytearray(jpeg)
    start = len(jpeg) // 3
    scrambled[start:start + 4096] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    return [rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes(), b"", jpeg[: len(jpeg) // 2], bomb, bytes(scrambled)]


def _multipart(data: bytes, field: str = "file") -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"x.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def _head(content_type: str, length: int | None) -> bytes:
    size = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST /v1/detect HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nContent-Type: {content_type}\r\n"
            f"{size}\r\n\r\n").encode()


def build_request(kind: str, i: int, jpegs: list[bytes], hostile: list[bytes], cfg: HostileConfig
                  ) -> tuple[bytes, list[bytes], float]:
    """(head, body pieces, pause between pieces) of request ``i`` of class ``kind``."""
    form = f"multipart/form-data; boundary={BOUNDARY}"
    jpeg = jpegs[i % len(jpegs)]
    if kind == "valid":
        body = _multipart(jpeg)
        return _head(form, len(body)), [body], 0.0
    if kind == "hostile":
        body = _multipart(hostile[i % len(hostile)])
        return _head(form, len(body)), [body], 0.0
    if kind == "slow":
        n = max(1, cfg.slow_chunks)
        cuts = np.linspace(0, len(jpeg), n + 1).astype(int)
        return _head("image/jpeg", len(jpeg)), [jpeg[a:b] for a, b in zip(cuts[:-1], cuts[1:])], cfg.slow_delay_s
    if kind == "oversize":
        size, piece = int(cfg.oversize_mb * 2**20), b"\0" * 2**20
        if i % 2 == 0:  # declared: refused from the header
            return _head("image/jpeg", size), [piece[: 64 * 1024]], 0.0
        return _head("image/jpeg", None), [b"%x\r\n%s\r\n" % (len(piece), piece)] * int(cfg.oversize_mb) + [b"0\r\n\r\n"], 0.0
    if kind == "multipart":
        bodies = [(f"multipart/form-data", _multipart(jpeg)),  # no boundary parameter
                  (form, _multipart(jpeg)[:-40]),  # cut before the closing boundary
                  (form, _multipart(jpeg, field="image")),  # no 'file' field
                  (form, b"--" + BOUNDARY.encode() + b"\r\n\r\n\r\ngarbage without headers")]
        ctype, body = bodies[i % len(bodies)]
        return _head(ctype, len(body)), [body], 0.0
    raise ValueError(f"unknown request class {kind!r}")


async def _read_status(reader: asyncio.StreamReader) -> int:
    """The status of the HTTP answer on ``reader`` (the body read to the end); 0 when none came."""
    line = await reader.readline()
    if not line.startswith(b"HTTP/"):
        return 0
    status = int(line.split()[1])
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        await reader.read()  # Connection: close - the body ends with the connection
    return status


async def exchange(host: str, port: int, head: bytes, pieces: list[bytes], pause: float) -> int:
    """Send one request (``pieces`` ``pause`` seconds apart; stop sending once the answer came) and
    return its status (0: the connection ended without one)."""
    reader, writer = await asyncio.open_connection(host, port)
    answer = asyncio.ensure_future(_read_status(reader))
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(head)
            for k, piece in enumerate(pieces):
                if answer.done():
                    break
                if k and pause:
                    await asyncio.sleep(pause)
                writer.write(piece)
                await writer.drain()
        with contextlib.suppress(ConnectionError):
            return await answer
        return 0
    finally:
        answer.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def _probe_health(host: str, port: int, done: asyncio.Event, out: list[float], bad: list[int]) -> None:
    while not done.is_set():
        t0 = time.perf_counter()
        status = await exchange(host, port, b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n", [], 0)
        out.append(time.perf_counter() - t0)
        if status != 200:
            bad.append(status)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 0.1)


async def run_level(host: str, port: int, clients: int, n: int, jpegs: list[bytes], hostile: list[bytes],
                    cfg: HostileConfig) -> dict[str, Any]:
    """``n`` requests of the mix from ``clients`` concurrent clients: latencies and statuses per class."""
    todo = iter(range(n))
    seen: dict[str, list[tuple[float, int]]] = {k: [] for k in CLASSES}
    health: list[float] = []
    health_bad: list[int] = []
    done = asyncio.Event()

    async def client() -> None:
        for i in todo:
            kind = MIX[i % len(MIX)]
            head, pieces, pause = build_request(kind, i, jpegs, hostile, cfg)
            t0 = time.perf_counter()
            status = await exchange(host, port, head, pieces, pause)
            seen[kind].append((time.perf_counter() - t0, status))

    async def clients_then_stop() -> None:
        await asyncio.gather(*(client() for _ in range(clients)))
        done.set()

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(clients_then_stop(), _probe_health(host, port, done, health, health_bad)),
                           cfg.timeout_s)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "seen": seen, "health": health, "health_bad": health_bad}


def _pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    p = np.percentile(np.asarray(values) * 1e3, [50, 95, 99])
    return {"p50_ms": float(p[0]), "p95_ms": float(p[1]), "p99_ms": float(p[2])}


def summarise(clients: int, raw: dict[str, Any], peak_rss_mb: float | None) -> dict[str, Any]:
    """The row of one client count: totals, per-class latency and statuses, /healthz, peak RSS."""
    per_class = {}
    for kind, rows in raw["seen"].items():
        statuses = Counter(s for _, s in rows)
        per_class[kind] = {"requests": len(rows), **_pct([t for t, _ in rows]),
                           "statuses": {str(k): v for k, v in sorted(statuses.items())},
                           "unexpected": sum(v for k, v in statuses.items() if k not in EXPECTED[kind])}
    total = sum(c["requests"] for c in per_class.values())
    statuses = Counter()
    for c in per_class.values():
        statuses.update({int(k): v for k, v in c["statuses"].items()})
    h = _pct(raw["health"])
    return {"clients": clients, "requests": total, "wall_s": raw["wall_s"], "requests_per_s": total / raw["wall_s"],
            "valid_per_s": (per_class["valid"]["requests"] + per_class["slow"]["requests"]) / raw["wall_s"],
            "errors_5xx": sum(v for k, v in statuses.items() if k >= 500), "no_answer": statuses.get(0, 0),
            "unexpected": sum(c["unexpected"] for c in per_class.values()), "classes": per_class,
            "healthz_p50_ms": h["p50_ms"], "healthz_p95_ms": h["p95_ms"], "healthz_probes": len(raw["health"]),
            "healthz_failed": len(raw["health_bad"]), "peak_rss_mb": peak_rss_mb}


def _vm(pid: int, key: str) -> float | None:
    with contextlib.suppress(OSError, AttributeError, ValueError):
        text = Path(f"/proc/{pid}/status").read_text()
        return int(next(l for l in text.splitlines() if l.startswith(key + ":")).split()[1]) / 1024
    return None


def _reset_peak(pid: int) -> None:
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


@contextlib.contextmanager
def server_process(checkpoint: Path, *, device: str, threads: int, concurrency: int, max_mb: float,
                   timeout_s: float = 180.0):
    """``glassdetect serve`` on a free loopback port in its own process, once ``/readyz`` says ready;
    yields (process, port). Stopped with SIGTERM afterwards (its exit code: ``process.returncode``)."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "glassdetect.cli", "serve", str(checkpoint), "--host", "127.0.0.1", "--port", str(port),
           "--device", device, "--threads", str(threads), "--concurrency", str(concurrency), "--max-mb", f"{max_mb:g}",
           "--log-level", "warning", "--no-access-log"]
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"glassdetect serve exited ({proc.returncode}):\n"
                                   f"{proc.stderr.read().decode(errors='replace')[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"glassdetect serve was not ready within {timeout_s:.0f} s")
            time.sleep(0.2)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _rejections(port: int) -> dict[str, float]:
    """The server's own count of refusals by status (its /metrics)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {s.labels["reason"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "glassdetect_rejections_total"}


def bench_hostile(checkpoint: Path, jpegs: list[bytes], cfg: HostileConfig, *, device: str = "cpu", threads: int = 0,
                  concurrency: int = 2) -> dict[str, Any]:
    """The hostile mix at each client count against one ``glassdetect serve`` process (module docstring)."""
    hostile = hostile_files(jpegs[0])
    rows = []
    t0 = time.perf_counter()
    with server_process(checkpoint, device=device, threads=threads, concurrency=concurrency, max_mb=cfg.max_mb) as (proc, port):
        for clients in cfg.clients:
            _reset_peak(proc.pid)
            raw = asyncio.run(run_level("127.0.0.1", port, clients, cfg.n_requests(clients), jpegs, hostile, cfg))
            row = summarise(clients, raw, _vm(proc.pid, "VmHWM"))
            rows.append(row)
            log(f"serve hostile, {clients} client(s): {row['requests_per_s']:.2f} req/s ({row['valid_per_s']:.2f} "
                f"valid/s), 5xx {row['errors_5xx']}, unexpected {row['unexpected']}, /healthz p95 "
                f"{row['healthz_p95_ms']:.0f} ms, peak RSS {row['peak_rss_mb'] or 0:.0f} MB")
        rejections = _rejections(port)
    return {"clients": list(cfg.clients), "requests": cfg.requests, "slow_chunks": cfg.slow_chunks,
            "slow_delay_s": cfg.slow_delay_s, "max_mb": cfg.max_mb, "oversize_mb": cfg.oversize_mb,
            "concurrency": concurrency, "mix": {k: MIX.count(k) / len(MIX) for k in CLASSES}, "runs": rows,
            "server_rejections": rejections, "shutdown_exit_code": proc.returncode,
            "elapsed_s": time.perf_counter() - t0}


def hostile_markdown(res: dict[str, Any]) -> list[str]:
    """The Markdown section of the hostile mix."""
    mix = ", ".join(f"{k} {v:.0%}" for k, v in res["mix"].items())
    lines = [f"## serve under a hostile mix (`glassdetect serve` in its own process, concurrency {res['concurrency']}, "
             f"upload limit {res['max_mb']:g} MiB)", "",
             f"Mix: {mix}. Slow clients send a valid JPEG in {res['slow_chunks']} pieces {res['slow_delay_s']:g} s "
             f"apart; oversize bodies are {res['oversize_mb']:g} MiB, declared or chunked. One connection per "
             "request; /healthz probed every 100 ms. Latency: from connecting to the end of the answer. "
             "valid req/s: valid and slow uploads answered per second. Peak RSS: the server process's VmHWM, "
             "reset before each client count.", "",
             "| clients | requests | req/s | valid req/s | 5xx | unexpected status | no answer | /healthz p95 ms | "
             "peak RSS MB | " + " | ".join(f"{k} p50 / p95 / p99 ms" for k in CLASSES) + " |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(CLASSES)]
    fmt = lambda c: "n/a" if c["p50_ms"] is None else f"{c['p50_ms']:.0f} / {c['p95_ms']:.0f} / {c['p99_ms']:.0f}"  # noqa: E731
    for r in res["runs"]:
        lines.append(f"| {r['clients']} | {r['requests']} | {r['requests_per_s']:.2f} | {r['valid_per_s']:.2f} | "
                     f"{r['errors_5xx']} | {r['unexpected']} | {r['no_answer']} | {r['healthz_p95_ms']:.0f} | "
                     f"{r['peak_rss_mb'] or 0:.0f} | " + " | ".join(fmt(r["classes"][k]) for k in CLASSES) + " |")
    seen = Counter()
    for r in res["runs"]:
        for c in r["classes"].values():
            seen.update({k: v for k, v in c["statuses"].items()})
    lines += ["", "Statuses over all runs: " + ", ".join(f"{k}: {v}" for k, v in sorted(seen.items()))
              + ". The server's own rejections (/metrics): "
              + ", ".join(f"{k}: {v:.0f}" for k, v in sorted(res["server_rejections"].items()) if v)
              + f". Exit code after SIGTERM: {res['shutdown_exit_code']}. The hostile part took {res['elapsed_s']:.0f} s.", ""]
    return lines
