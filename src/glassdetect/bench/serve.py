"""``bench serve``: the HTTP service's throughput and latency, batched against unbatched, side by side.

Two apps around the same loaded model run in this process, each under uvicorn on a free loopback
port: ``unbatched`` (``max_batch=1``, one forward pass per request, as the service always did)
and ``batched`` (``max_batch``/``max_wait_ms``). For each number of concurrent clients (asyncio
tasks with httpx, each posting the next JPEG of one shared set as the raw body as soon as its
previous answer came back) both services get the same requests, one after the other, in
``rounds`` interleaved runs (unbatched, batched, then batched, unbatched, ...), so drifting load on
the machine hits both alike. Per client count and service: requests per second over its runs,
p50/p95 latency of all its requests, the mean batch size and ``/healthz`` latency measured while
the load runs.

Then the hostile mix (:mod:`.serve_hostile`, ``hostile``; ``None`` skips it): ``glassdetect serve``
in its own process under valid uploads mixed with broken files, oversize bodies, slow clients and
malformed forms, at 1, 16 and 64 clients (results under ``hostile_mix``).
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .common import log
from .serve_hostile import HostileConfig, bench_hostile, hostile_markdown
from .synth import write_folder

MODES = ("unbatched", "batched")


@dataclass(frozen=True)
class ServeBenchConfig:
    """What ``bench serve`` measures: the model, the images, the load and the service settings."""

    backbone: str = "efficientnet_lite0"  # the demo's backbone (random weights: the time does not depend on them)
    k: int = 4
    patch: int = 224
    global_size: int = 224
    images: int = 8
    size: tuple[int, int] = (1600, 1200)  # (width, height) of the JPEGs posted
    clients: tuple[int, ...] = (1, 4, 16)
    requests: int = 24  # per run; at least 3 per client
    rounds: int = 2  # runs per service and client count, interleaved (unbatched, batched, batched, unbatched ...)
    warmup: int = 4  # requests per service before the measured runs
    max_batch: int = 8
    max_wait_ms: float = 10.0
    concurrency: int = 2
    threads: int = 0
    device: str = "auto"
    hostile: HostileConfig | None = field(default_factory=HostileConfig)

    def n_requests(self, clients: int) -> int:
        return max(self.requests, 3 * clients)


@contextlib.contextmanager
def serving(app: Any, host: str = "127.0.0.1", timeout_s: float = 60.0) -> Iterator[str]:
    """Run ``app`` under uvicorn on a free port of ``host`` in a thread; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"uvicorn on {host}:{port} did not start within {timeout_s:.0f} s")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _percentiles(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    p50, p95 = np.percentile(np.asarray(values), [50, 95])
    return float(p50), float(p95)


async def _load(base: str, payloads: list[bytes], clients: int, n: int) -> dict[str, Any]:
    """``n`` POSTs from ``clients`` concurrent clients, and ``/healthz`` probed every 50 ms meanwhile."""
    import httpx

    todo = iter(range(n))
    latencies: list[float] = []
    health: list[float] = []
    errors: list[str] = []
    done = asyncio.Event()
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as cl:
        async def client() -> None:
            for i in todo:
                t0 = time.perf_counter()
                r = await cl.post("/v1/detect", content=payloads[i % len(payloads)],
                                  headers={"content-type": "image/jpeg"})
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")

        async def probe() -> None:
            while not done.is_set():
                t0 = time.perf_counter()
                r = await cl.get("/healthz")
                health.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors.append(f"/healthz {r.status_code}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.05)

        async def clients_then_stop() -> None:
            await asyncio.gather(*(client() for _ in range(clients)))
            done.set()

        before = (await cl.get("/healthz")).json()["batching"]
        t0 = time.perf_counter()
        await asyncio.gather(clients_then_stop(), probe())
        wall = time.perf_counter() - t0
        after = (await cl.get("/healthz")).json()["batching"]
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} requests failed against {base}: {errors[:3]}")
    return {"latencies": latencies, "health": health, "wall_s": wall,
            "batches": after.get("batches", 0) - before.get("batches", 0),
            "images": after.get("images", 0) - before.get("images", 0)}


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Requests per second over all rounds, latency percentiles of all their requests pooled."""
    latencies = [t for r in rounds for t in r["latencies"]]
    health = [t for r in rounds for t in r["health"]]
    wall = sum(r["wall_s"] for r in rounds)
    batches, images = sum(r["batches"] for r in rounds), sum(r["images"] for r in rounds)
    p50, p95 = _percentiles(latencies)
    h50, h95 = _percentiles(health)
    return {"requests": len(latencies), "rounds": len(rounds), "wall_s": wall, "requests_per_s": len(latencies) / wall,
            "requests_per_s_by_round": [len(r["latencies"]) / r["wall_s"] for r in rounds],
            "p50_ms": p50 * 1e3, "p95_ms": p95 * 1e3, "mean_batch": images / batches if batches else 1.0,
            "healthz_p50_ms": None if h50 is None else h50 * 1e3, "healthz_p95_ms": None if h95 is None else h95 * 1e3,
            "healthz_probes": len(health)}


def _detector(workdir: Path, cfg: ServeBenchConfig):
    from ..inference.api import Detector
    from ..models import ModelConfig, create_model, save_checkpoint
    from ..runtime import resolve_device

    model_cfg = ModelConfig(arch="glass", backbone=cfg.backbone, k=cfg.k, patch=cfg.patch, global_size=cfg.global_size)
    ckpt = save_checkpoint(workdir / "serve_ckpt", create_model(model_cfg, pretrained=False))
    return Detector.from_pretrained(ckpt, str(resolve_device(cfg.device)))


def _apps(det, cfg: ServeBenchConfig) -> dict[str, Any]:
    from ..service.batcher import BatchConfig
    from ..service.serve import create_app

    batching = {"unbatched": BatchConfig(max_batch=1, max_wait_ms=cfg.max_wait_ms),
                "batched": BatchConfig(max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms)}
    return {mode: create_app(det, concurrency=cfg.concurrency, batch=batching[mode]) for mode in MODES}


def _measure(bases: dict[str, str], payloads: list[bytes], cfg: ServeBenchConfig) -> list[dict[str, Any]]:
    """Warm both services up, then for each client count run unbatched and batched in turn, ``rounds`` times."""
    for base in bases.values():  # first requests: lazy initialisation, allocator warm-up
        asyncio.run(_load(base, payloads, min(4, max(1, cfg.warmup)), max(1, cfg.warmup)))
    rows = []
    for clients in cfg.clients:
        n = cfg.n_requests(clients)
        raw: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        for i in range(cfg.rounds):  # interleaved, the order alternating: drifting load hits both alike
            for mode in (MODES if i % 2 == 0 else MODES[::-1]):
                raw[mode].append(asyncio.run(_load(bases[mode], payloads, clients, n)))
        row: dict[str, Any] = {"clients": clients, "requests": n * cfg.rounds}
        for mode in MODES:
            row[mode] = r = _summary(raw[mode])
            log(f"serve {mode}, {clients} client(s): {r['requests_per_s']:.2f} req/s, p50 {r['p50_ms']:.0f} ms, "
                f"p95 {r['p95_ms']:.0f} ms, mean batch {r['mean_batch']:.2f}, /healthz p95 {r['healthz_p95_ms']:.0f} ms")
        row["speedup"] = row["batched"]["requests_per_s"] / row["unbatched"]["requests_per_s"]
        rows.append(row)
    return rows


def forward_per_image(det, payloads: list[bytes], sizes: tuple[int, ...], repeats: int = 3) -> dict[str, float]:
    """The model alone (one forward pass, as the batcher runs it) in seconds per image at each batch
    size: median of ``repeats`` after a warm-up. Shows what a batch saves on this device, without HTTP."""
    from ..service.batcher import detect_prepared, prepare_upload
    from .common import sync

    items = [prepare_upload(det, payloads[i % len(payloads)], False, f"img{i}", 0) for i in range(max(sizes))]
    out: dict[str, float] = {}
    for b in sizes:
        detect_prepared(det, items[:b])
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            detect_prepared(det, items[:b])
            sync(det.device)
            ts.append(time.perf_counter() - t0)
        out[str(b)] = float(np.median(ts)) / b
    return out


def bench_serve(workdir: str | Path, cfg: ServeBenchConfig | None = None) -> dict[str, Any]:
    """Requests per second and p50/p95 latency of the service, unbatched vs batched, per client count."""
    from ..runtime import configure_threads, torch_threads

    cfg = cfg or ServeBenchConfig()
    workdir = Path(workdir)
    t0 = time.perf_counter()
    w, h = cfg.size
    paths = write_folder(workdir / "serve_images", cfg.images, cfg.size)
    payloads = [p.read_bytes() for p in paths]
    log(f"serve: {cfg.images} JPEGs of {w}×{h} ({np.mean([len(b) for b in payloads]) / 1e3:.0f} kB on average)")
    with torch_threads(None):
        det = _detector(workdir, cfg)
        threads = configure_threads(cfg.threads) if det.device.type == "cpu" else None
        sizes = tuple(sorted({1, max(1, cfg.max_batch // 2), cfg.max_batch}))
        forward = forward_per_image(det, payloads, sizes)
        log("serve: the model alone, " + ", ".join(f"batch {b}: {t * 1e3:.0f} ms/image" for b, t in forward.items()))
        apps = _apps(det, cfg)
        with serving(apps["unbatched"]) as unbatched, serving(apps["batched"]) as batched:
            rows = _measure({"unbatched": unbatched, "batched": batched}, payloads, cfg)
        del apps
    hostile = None
    if cfg.hostile is not None:
        hostile = bench_hostile(workdir / "serve_ckpt", payloads, cfg.hostile, device=str(det.device),
                                threads=threads or cfg.threads, concurrency=cfg.concurrency)
    return {**asdict(cfg), "size": list(cfg.size), "clients": list(cfg.clients), "device": str(det.device),
            "torch_threads": threads, "image_kb": float(np.mean([len(b) for b in payloads]) / 1e3),
            "forward_s_per_image": forward, "runs": rows, "hostile_mix": hostile, "elapsed_s": time.perf_counter() - t0}


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}"


def serve_markdown(res: dict[str, Any]) -> list[str]:
    """The Markdown section of a ``bench serve`` result."""
    w, h = res["size"]
    title = (f"## serve: unbatched vs batched ({res['backbone']} K={res['k']}, {res['device']}, "
             f"{res['torch_threads'] or 'default'} torch thread(s), concurrency {res['concurrency']}; "
             f"batched: max_batch {res['max_batch']}, max_wait_ms {res['max_wait_ms']:g})")
    how = (f"{res['images']} JPEGs of {w}×{h} ({res['image_kb']:.0f} kB on average) posted as the raw body over "
           "loopback by concurrent clients, each sending its next request when its previous answer arrives; "
           f"server and clients in one process; {res['rounds']} interleaved runs per service and client count "
           "(requests: the total over them). Latency: from sending a request to its answer.")
    head = ("| clients | requests | unbatched req/s | p50 ms | p95 ms | batched req/s | p50 ms | p95 ms | "
            "mean batch | batched / unbatched | /healthz p95 ms (unbatched / batched) |")
    lines = [title, "", how, "", head, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["runs"]:
        u, b = r["unbatched"], r["batched"]
        lines.append(f"| {r['clients']} | {r['requests']} | {u['requests_per_s']:.2f} | {u['p50_ms']:.0f} | "
                     f"{u['p95_ms']:.0f} | {b['requests_per_s']:.2f} | {b['p50_ms']:.0f} | {b['p95_ms']:.0f} | "
                     f"{b['mean_batch']:.2f} | {r['speedup']:.2f}× | {_ms(u['healthz_p95_ms'])} / {_ms(b['healthz_p95_ms'])} |")
    fwd = res.get("forward_s_per_image") or {}
    if fwd:
        lines += ["", "The model alone (one forward pass over prepared images, no HTTP), per image: "
                  + ", ".join(f"batch {b} {t * 1e3:.0f} ms" for b, t in fwd.items()) + "."]
    if res.get("hostile_mix"):
        lines += [""] + hostile_markdown(res["hostile_mix"])
    return lines + ["", f"The serve part took {res['elapsed_s']:.0f} s.", ""]
