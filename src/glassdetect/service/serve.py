"""HTTP service: ``glassdetect serve CKPT`` (FastAPI + uvicorn; ``pip install 'glassdetect[serve]'``).

Endpoints
    ``POST /v1/detect``  an image as multipart form field ``file`` (optional form field or query
                         parameter ``explain=true`` adds the evidence map as a PNG data URL), or
                         as the raw request body -> JSON verdict.
    ``GET /healthz``     liveness plus what model is loaded (always open).
    ``GET /readyz``      readiness: 200 once the model is loaded and warm, 503 while warming or draining.
    ``GET /metrics``     Prometheus text format (:mod:`glassdetect.service.metrics`).
    ``GET /``            a small page: upload an image, see the verdict and the evidence map.

Bad input never produces a 500: a body over ``max_bytes`` -> 413, bytes that are not an image
-> 415, an image over ``max_pixels`` or one that cannot be decoded -> 422, a missing field or
malformed form -> 400/422, ``max_waiting`` requests already inside the service -> 503 with
``Retry-After``. Access control, the rate limit (429), the request deadline (408/503), request ids,
metrics and the JSON access log: :mod:`glassdetect.service.ops`; warm-up, readiness and the graceful
SIGTERM: :mod:`glassdetect.service.lifecycle`. The model is loaded once; inference runs in worker
threads (at most ``concurrency`` at a time) so the event loop keeps serving.

Batching (``max_batch`` > 1, :mod:`glassdetect.service.batcher`): each request still decodes and builds its
views in a worker thread, then waits up to ``max_wait_ms`` for other requests to share one forward
pass of up to ``max_batch`` images. ``max_batch=1`` runs one forward pass per request; the default
(0, auto) batches up to 8 on a GPU and not on the CPU, where a batch is no faster per image.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import io
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..inference.api import Detection, Detector
from ..inference.explain import data_url
from ..views.build import ImageError
from ..views.limits import SERVE_MAX_PIXELS
from ..views.pilguard import identify
from .batcher import BatchConfig, Batcher, Timing, detect_prepared, prepare_upload
from .lifecycle import Readiness, run_server, warm_up
from .metrics import ServiceMetrics
from .ops import Ops, OpsConfig, Trace, log_config
from .ops import send_json as _send_json
from .page import render_page

log = logging.getLogger("glassdetect.service.serve")

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
# The pixel limit of uploads defaults to SERVE_MAX_PIXELS (glassdetect.views.limits): a service setting,
# smaller than the library's DEFAULT_MAX_PIXELS because anyone may upload.
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and small fields on top of the file itself
TRUE = {"1", "true", "yes", "on"}


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse bodies over ``limit`` bytes with 413, by Content-Length or while streaming."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _send_json(send, 413, _too_large(self.limit))
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await _send_json(send, 413, _too_large(self.limit))


def _too_large(limit: int) -> dict:
    return {"error": "payload_too_large", "detail": f"the upload exceeds {limit / 2**20:.1f} MiB"}


def sniff(data: bytes) -> tuple[str, tuple[int, int]] | None:
    """(format, (width, height)) from the image header, or None when the bytes are not an image.

    The header only, without Pillow's process-wide decompression-bomb guard: the caller applies the
    service's own pixel limit to the size (422 with its own message).
    """
    try:
        with identify(io.BytesIO(data)) as img:
            return str(img.format), img.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    except Exception:  # noqa: BLE001 - any parser surprise on hostile bytes means "not an image we can use"
        return None


class _Refused(Exception):
    """An answer other than the verdict (4xx/503), raised from the steps of :meth:`_Service.detect`."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(status)
        self.code = code
        self.response = JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def _refused_too_large(limit: int) -> _Refused:
    return _Refused(413, "payload_too_large", _too_large(limit)["detail"])


# The request body of POST /v1/detect, for the OpenAPI page (the route reads the request itself).
DETECT_BODY_DOC = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}, "explain": {"type": "boolean", "default": False}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
}}}


def create_app(
    detector: Detector | str | Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = SERVE_MAX_PIXELS,
    concurrency: int = 2,
    max_waiting: int = 64,
    explain_size: int = 640,
    device: str = "auto",
    batch: BatchConfig | None = None,
    ops: OpsConfig | None = None,
    warm: bool = True,
) -> FastAPI:
    """The FastAPI app around one shared :class:`Detector` (loaded here when given a path).

    A detector passed in is left as it is: the app uses a copy (sharing the model) with the service's
    pixel limit. ``batch``: how concurrent requests share forward passes (default :class:`BatchConfig`:
    automatic, up to 8 images on a GPU and none on the CPU, waiting at most 10 ms;
    ``BatchConfig(max_batch=1)``: one pass per request). ``ops``: access tokens, rate limit, request
    deadline, access log (default :class:`OpsConfig`: open, no rate limit, 60 s). ``warm``: run a
    warm-up pass when the app starts (``/readyz`` answers 503 until it is done).
    """
    det = copy.copy(detector) if isinstance(detector, Detector) else Detector.from_pretrained(detector, device)
    det.max_pixels = int(max_pixels)
    ops = ops or OpsConfig()
    svc = _Service(det, max_bytes=max_bytes, max_pixels=max_pixels, concurrency=concurrency, max_waiting=max_waiting,
                   explain_size=explain_size, batch=(batch or BatchConfig()).resolved(det.device.type), ops=ops, warm=warm)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        svc.start_warm_up()
        yield
        await svc.close()

    app = FastAPI(title="glassdetect", version=__version__, lifespan=lifespan,
                  description="Is this image AI-generated? GLASS: global view + native-resolution crops.")
    app.add_middleware(BodyLimit, limit=max_bytes + FORM_OVERHEAD)
    app.add_middleware(Ops, cfg=ops, metrics=svc.metrics)  # added last: the outermost, sees every answer
    app.state.detector = det
    app.state.service = svc
    page = render_page(max_bytes, auth=ops.tokens.enabled)

    @app.get("/healthz")
    async def healthz() -> dict:
        return svc.health()

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        return JSONResponse(svc.readiness.to_dict(), status_code=200 if svc.readiness.ready else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        body, content_type = svc.metrics.render(request.headers.get("accept"))
        return Response(body, headers={"content-type": content_type})

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.post("/v1/detect", openapi_extra=DETECT_BODY_DOC)
    async def detect(request: Request, explain: bool = False) -> JSONResponse:
        """Upload one image (form field ``file`` or the raw body); returns the verdict as JSON."""
        return await svc.detect(request, explain)

    return app


class _Service:
    """The detector behind the routes, the upload limits, readiness, metrics and the in-flight / served counters."""

    def __init__(self, det: Detector, *, max_bytes: int, max_pixels: int, concurrency: int, max_waiting: int,
                 explain_size: int, batch: BatchConfig, ops: OpsConfig, warm: bool):
        self.det, self.batch, self.ops = det, batch, ops
        cfg = det.cfg
        self.model_info = {
            "arch": cfg.arch, "backbone": cfg.backbone, "k": cfg.k, "patch": cfg.patch,
            "sampling": det.mode or cfg.sampling, "crop_align": cfg.crop_align, "draws": det.draws,
            "local_input": cfg.local_input, "local_depth": cfg.local_depth,
            "temperature": cfg.temperature,
            "threshold": det.threshold, "unsure_band": det.unsure_band, "class_names": list(cfg.class_names),
        }
        self.metrics = ServiceMetrics(__version__, {**self.model_info, "device": det.device.type,
                                                    "max_batch": batch.max_batch})
        self.batcher = (Batcher(functools.partial(detect_prepared, det), batch, forwards=concurrency,
                                on_batch=self.metrics.observe_batch) if batch.batched else None)
        self.max_bytes, self.max_pixels, self.max_waiting = max_bytes, max_pixels, max_waiting
        self.explain_size = explain_size
        self.limiter = anyio.CapacityLimiter(max(1, int(concurrency)))
        self.in_flight = self.served = 0
        self.readiness = Readiness(warm)
        self._warming: asyncio.Future | None = None
        self.metrics.in_flight.set_function(lambda: self.in_flight)
        self.metrics.ready.set_function(lambda: float(self.readiness.ready))

    def health(self) -> dict:
        batching: dict[str, Any] = {"max_batch": int(self.batch.max_batch), "max_wait_ms": float(self.batch.max_wait_ms)}
        if self.batcher is not None:
            batching.update(self.batcher.stats.to_dict())
        return {"status": "ok", "ready": self.readiness.state, "version": __version__, "model": self.model_info,
                "in_flight": self.in_flight, "served": self.served, "batching": batching}

    def start_warm_up(self) -> None:
        """Start the warm-up pass (once) in the running event loop."""
        if self._warming is None and self.readiness.state == "warming":
            self._warming = asyncio.ensure_future(self._warm_up())

    async def _warm_up(self) -> None:
        error: BaseException | None = None
        try:
            n = await anyio.to_thread.run_sync(functools.partial(warm_up, self.det, self.batch), limiter=self.limiter)
            log.info("warm-up: %d forward pass(es); ready", n)
        except Exception as exc:  # noqa: BLE001 - reported by /readyz; requests still get their own answer
            log.exception("warm-up failed")
            error = exc
        finally:
            self.readiness.warmed(error)

    async def close(self) -> None:
        if self._warming is not None and not self._warming.done():
            self._warming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warming
        if self.batcher is not None:
            await self.batcher.stop()

    async def detect(self, request: Request, explain: bool) -> JSONResponse:
        """Read the upload, check it against the limits, run the model: the verdict, or why not."""
        trace = getattr(request.state, "trace", None) or Trace("-")
        try:
            data, name, explain = await _read_upload(request, explain, self.max_bytes)
            fmt = self.check_limits(data, trace)
            out = await self.infer(data, explain, name, trace)
        except _Refused as refused:
            trace.error = refused.code
            return refused.response
        out["format"] = fmt
        trace.decision, trace.fake_probability = out.get("decision"), out.get("fake_probability")
        return JSONResponse(out)

    def check_limits(self, data: bytes, trace: Trace) -> str:
        """The image format, once the bytes pass the size, format, pixel and queue limits."""
        if len(data) > self.max_bytes:
            raise _refused_too_large(self.max_bytes)
        if not data:
            raise _Refused(415, "not_an_image", "the upload is empty")
        head = sniff(data)
        if head is None:
            raise _Refused(415, "not_an_image", "the uploaded bytes are not an image format we can read")
        fmt, (w, h) = head
        trace.format, trace.image_size = fmt, (h, w)  # as the verdict gives it
        if w * h > self.max_pixels:
            raise _Refused(422, "too_many_pixels",
                           f"{w}×{h} = {w * h:,} pixels exceeds the limit of {self.max_pixels:,} pixels")
        if self.in_flight >= self.max_waiting:
            raise _Refused(503, "busy", "too many requests in progress; retry shortly",
                           {"Retry-After": str(self.ops.retry_after_s)})
        return fmt

    async def infer(self, data: bytes, explain: bool, name: str, trace: Trace) -> dict[str, Any]:
        """:meth:`run` in a worker thread (at most ``concurrency`` at a time), or :meth:`run_batched`,
        once the warm-up is over; a bad image is a 422."""
        self.in_flight += 1
        try:
            self.start_warm_up()
            await self.readiness.wait_warm()
            t_enter = time.perf_counter()
            if self.batcher is None:
                out = await anyio.to_thread.run_sync(functools.partial(self.run, data, explain, name, trace, t_enter),
                                                     limiter=self.limiter)
            else:
                out = await self.run_batched(data, explain, name, trace, t_enter)
        except ImageError as exc:
            raise _Refused(422, "cannot_decode", exc.reason) from None
        except (ValueError, OSError) as exc:
            raise _Refused(422, "cannot_decode", str(exc)) from None
        except Exception:  # noqa: BLE001 - a bug, not bad input: log it, answer 500 without internals
            log.exception("inference failed for %s", name)
            raise _Refused(500, "internal_error", "inference failed; see the server log") from None
        finally:
            self.in_flight -= 1
        self.served += 1
        return out

    def _prepare(self, data: bytes, explain: bool, name: str, trace: Trace, t_enter: float) -> dict[str, Any]:
        """The upload's views (blocking: a worker thread); the wait for the thread is queue time."""
        t0 = time.perf_counter()
        trace.queue_s = t0 - t_enter
        try:
            return prepare_upload(self.det, data, explain, name, self.explain_size)
        finally:
            trace.prepare_s = time.perf_counter() - t0
            self.metrics.prepare_seconds.observe(trace.prepare_s)

    def run(self, data: bytes, explain: bool, name: str, trace: Trace, t_enter: float) -> dict[str, Any]:
        """The verdict as JSON: the views, then the request's own forward pass (blocking: a worker thread)."""
        item = self._prepare(data, explain, name, trace, t_enter)
        t1 = time.perf_counter()
        r = detect_prepared(self.det, [item])[0]
        trace.forward_s, trace.batch = time.perf_counter() - t1, 1
        self.metrics.observe_batch(1, trace.forward_s)
        self.metrics.queue_wait_seconds.observe(trace.queue_s or 0.0)
        return self.answer(r, explain, name, t1 - (trace.prepare_s or 0.0))

    async def run_batched(self, data: bytes, explain: bool, name: str, trace: Trace, t_enter: float) -> dict[str, Any]:
        """The views built in a worker thread, the forward pass shared with other requests (the batcher)."""
        assert self.batcher is not None
        with self.batcher.expecting():
            item = await anyio.to_thread.run_sync(
                functools.partial(self._prepare, data, explain, name, trace, t_enter), limiter=self.limiter)
        timing = Timing()
        r = await self.batcher.submit(item, timing)
        trace.queue_s = (trace.queue_s or 0.0) + timing.queue_s
        trace.forward_s, trace.batch = timing.forward_s, timing.batch
        self.metrics.queue_wait_seconds.observe(trace.queue_s)
        if not explain:
            return self.answer(r, explain, name, t_enter)
        return await anyio.to_thread.run_sync(functools.partial(self.answer, r, explain, name, t_enter),
                                              limiter=self.limiter)  # drawing the evidence map is CPU work

    def answer(self, r: Detection, explain: bool, name: str, t0: float) -> dict[str, Any]:
        """The JSON body of a verdict; ``elapsed_ms`` counts from ``t0``."""
        det = self.det
        out = r.to_dict()
        for key in ("source", "error"):
            out.pop(key, None)
        out["filename"] = name
        out["threshold"] = det.threshold
        out["unsure_band"] = list(det.unsure_band) if det.unsure_band else None
        if explain:
            out["evidence_map"] = data_url(r.evidence_map())
        out["elapsed_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        return out


async def _read_upload(request: Request, explain: bool, max_bytes: int) -> tuple[bytes, str, bool]:
    """(bytes, file name, explain) from a multipart form (field ``file``; a form field ``explain``
    overrides the query parameter) or from the raw body."""
    name = "upload"
    try:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return await request.body(), name, explain
        async with request.form(max_files=1, max_fields=16) as form:
            up = form.get("file")
            if up is None or isinstance(up, str):
                raise _Refused(422, "missing_file", "send the image as the multipart form field 'file'")
            data = await up.read()
            name = up.filename or name
            flag = form.get("explain")
            if isinstance(flag, str):
                explain = flag.strip().lower() in TRUE
        return data, name, explain
    except _BodyTooLarge:
        raise _refused_too_large(max_bytes) from None
    except StarletteHTTPException as exc:  # malformed multipart
        raise _Refused(400, "bad_request", str(exc.detail)) from None


def serve(
    checkpoint: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    device: str = "auto",
    threads: int = 0,
    concurrency: int = 2,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = SERVE_MAX_PIXELS,
    threshold: float | None = None,
    unsure: Any = False,
    draws: int = 1,
    mode: str | None = None,
    log_level: str = "info",
    access_log: bool = True,
    max_batch: int = 0,
    max_wait_ms: float = 10.0,
    max_waiting: int = 64,
    ops: OpsConfig | None = None,
    log_format: str = "text",
    shutdown_timeout_s: float = 30.0,
) -> None:
    """Load the checkpoint once and serve it with uvicorn until SIGTERM or Ctrl-C, then shut down
    gracefully (:func:`glassdetect.service.lifecycle.run_server`). ``log_format="json"``: every log
    line a JSON object, one per request (:mod:`glassdetect.service.ops`)."""
    from ..runtime import configure_threads

    batch = BatchConfig(max_batch=max_batch, max_wait_ms=max_wait_ms)  # checked before the model loads
    logging_config = log_config(log_format, log_level)
    ops = replace(ops or OpsConfig(), log_requests=log_format == "json")
    if max_waiting < 1:
        raise ValueError(f"max_waiting must be at least 1, got {max_waiting}")
    configure_threads(threads)
    det = Detector.from_pretrained(checkpoint, device, threshold=threshold, unsure_band=unsure, draws=draws, mode=mode)
    app = create_app(det, max_bytes=max_bytes, max_pixels=max_pixels, concurrency=concurrency, max_waiting=max_waiting,
                     batch=batch, ops=ops)
    run_server(app, host, port, shutdown_timeout_s=shutdown_timeout_s, on_drain=app.state.service.readiness.drain,
               log_config=logging_config, log_level=log_level, access_log=access_log and log_format == "text")
