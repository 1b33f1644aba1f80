"""HTTP service: ``glassdetect serve CKPT`` (FastAPI + uvicorn; ``pip install 'glassdetect[serve]'``).

Endpoints
    ``POST /v1/detect``  an image as multipart form field ``file`` (optional form field or query
                         parameter ``explain=true`` adds the evidence map as a PNG data URL), or
                         as the raw request body -> JSON verdict.
    ``GET /healthz``     liveness plus what model is loaded.
    ``GET /``            a small page: upload an image, see the verdict and the evidence map.

Bad input never produces a 500: a body over ``max_bytes`` -> 413, bytes that are not an image
-> 415, an image over ``max_pixels`` or one that cannot be decoded -> 422, a missing field or
malformed form -> 400/422, too many requests waiting -> 503. The model is loaded once; inference
runs in worker threads (at most ``concurrency`` at a time) so the event loop keeps serving.

Batching (``max_batch`` > 1, :mod:`glassdetect.service.batcher`): each request still decodes and builds its
views in a worker thread, then waits up to ``max_wait_ms`` for other requests to share one forward
pass of up to ``max_batch`` images. ``max_batch=1`` runs one forward pass per request; the default
(0, auto) batches up to 8 on a GPU and not on the CPU, where a batch is no faster per image.
"""
from __future__ import annotations

import copy
import functools
import io
import json
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image, UnidentifiedImageError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..inference.api import Detection, Detector
from .batcher import BatchConfig, Batcher, detect_prepared, prepare_upload
from ..inference.explain import data_url
from ..views.limits import SERVE_MAX_PIXELS
from ..views.pilguard import identify
from .page import INDEX_HTML
from ..views.build import ImageError

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


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data})


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


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

    def __init__(self, response: JSONResponse):
        super().__init__(response.status_code)
        self.response = response


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
) -> FastAPI:
    """The FastAPI app around one shared :class:`Detector` (loaded here when given a path).

    A detector passed in is left as it is: the app uses a copy (sharing the model) with the service's
    pixel limit. ``batch``: how concurrent requests share forward passes (default :class:`BatchConfig`:
    automatic, up to 8 images on a GPU and none on the CPU, waiting at most 10 ms;
    ``BatchConfig(max_batch=1)``: one pass per request).
    """
    det = copy.copy(detector) if isinstance(detector, Detector) else Detector.from_pretrained(detector, device)
    det.max_pixels = int(max_pixels)
    svc = _Service(det, max_bytes=max_bytes, max_pixels=max_pixels, concurrency=concurrency,
                   max_waiting=max_waiting, explain_size=explain_size, batch=(batch or BatchConfig()).resolved(det.device.type))

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        await svc.close()

    app = FastAPI(title="glassdetect", version=__version__, lifespan=lifespan,
                  description="Is this image AI-generated? GLASS: global view + native-resolution crops.")
    app.add_middleware(BodyLimit, limit=max_bytes + FORM_OVERHEAD)
    app.state.detector = det

    @app.get("/healthz")
    async def healthz() -> dict:
        return svc.health()

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(INDEX_HTML.replace("{{MAX_MB}}", f"{max_bytes / 2**20:.0f}"))

    @app.post("/v1/detect", openapi_extra=DETECT_BODY_DOC)
    async def detect(request: Request, explain: bool = False) -> JSONResponse:
        """Upload one image (form field ``file`` or the raw body); returns the verdict as JSON."""
        return await svc.detect(request, explain)

    return app


class _Service:
    """The detector behind the routes, the upload limits, and the in-flight / served counters."""

    def __init__(self, det: Detector, *, max_bytes: int, max_pixels: int, concurrency: int, max_waiting: int,
                 explain_size: int, batch: BatchConfig):
        self.det = det
        self.batch = batch
        self.batcher = (Batcher(functools.partial(detect_prepared, det), batch, forwards=concurrency)
                        if batch.batched else None)
        self.max_bytes, self.max_pixels, self.max_waiting = max_bytes, max_pixels, max_waiting
        self.explain_size = explain_size
        self.limiter = anyio.CapacityLimiter(max(1, int(concurrency)))
        self.in_flight = self.served = 0
        cfg = det.cfg
        self.model_info = {
            "arch": cfg.arch, "backbone": cfg.backbone, "k": cfg.k, "patch": cfg.patch,
            "sampling": det.mode or cfg.sampling, "draws": det.draws, "temperature": cfg.temperature,
            "threshold": det.threshold, "unsure_band": det.unsure_band, "class_names": list(cfg.class_names),
        }

    def health(self) -> dict:
        batching: dict[str, Any] = {"max_batch": int(self.batch.max_batch), "max_wait_ms": float(self.batch.max_wait_ms)}
        if self.batcher is not None:
            batching.update(self.batcher.stats.to_dict())
        return {"status": "ok", "version": __version__, "model": self.model_info, "in_flight": self.in_flight,
                "served": self.served, "batching": batching}

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()

    async def detect(self, request: Request, explain: bool) -> JSONResponse:
        """Read the upload, check it against the limits, run the model: the verdict, or why not."""
        try:
            data, name, explain = await _read_upload(request, explain, self.max_bytes)
            fmt = self.check_limits(data)
            out = await self.infer(data, explain, name)
        except _Refused as refused:
            return refused.response
        out["format"] = fmt
        return JSONResponse(out)

    def check_limits(self, data: bytes) -> str:
        """The image format, once the bytes pass the size, format, pixel and queue limits."""
        if len(data) > self.max_bytes:
            raise _Refused(JSONResponse(_too_large(self.max_bytes), status_code=413))
        if not data:
            raise _Refused(_error(415, "not_an_image", "the upload is empty"))
        head = sniff(data)
        if head is None:
            raise _Refused(_error(415, "not_an_image", "the uploaded bytes are not an image format we can read"))
        fmt, (w, h) = head
        if w * h > self.max_pixels:
            raise _Refused(_error(422, "too_many_pixels",
                                  f"{w}×{h} = {w * h:,} pixels exceeds the limit of {self.max_pixels:,} pixels"))
        if self.in_flight >= self.max_waiting:
            raise _Refused(JSONResponse({"error": "busy", "detail": "too many requests in progress; retry shortly"},
                                        status_code=503, headers={"Retry-After": "1"}))
        return fmt

    async def infer(self, data: bytes, explain: bool, name: str) -> dict[str, Any]:
        """:meth:`run` in a worker thread (at most ``concurrency`` at a time), or :meth:`run_batched`;
        a bad image is a 422."""
        self.in_flight += 1
        try:
            if self.batcher is None:
                out = await anyio.to_thread.run_sync(functools.partial(self.run, data, explain, name),
                                                     limiter=self.limiter)
            else:
                out = await self.run_batched(data, explain, name)
        except ImageError as exc:
            raise _Refused(_error(422, "cannot_decode", exc.reason)) from None
        except (ValueError, OSError) as exc:
            raise _Refused(_error(422, "cannot_decode", str(exc))) from None
        except Exception:  # noqa: BLE001 - a bug, not bad input: log it, answer 500 without internals
            log.exception("inference failed for %s", name)
            raise _Refused(_error(500, "internal_error", "inference failed; see the server log")) from None
        finally:
            self.in_flight -= 1
        self.served += 1
        return out

    def run(self, data: bytes, explain: bool, name: str) -> dict[str, Any]:
        """The verdict as JSON (blocking: runs in a worker thread)."""
        t0 = time.perf_counter()
        r = self.det.predict(data, explain=explain, name=name, thumbnail=self.explain_size)
        return self.answer(r, explain, name, t0)

    async def run_batched(self, data: bytes, explain: bool, name: str) -> dict[str, Any]:
        """The views built in a worker thread, the forward pass shared with other requests (the batcher)."""
        assert self.batcher is not None
        t0 = time.perf_counter()
        with self.batcher.expecting():
            item = await anyio.to_thread.run_sync(
                functools.partial(prepare_upload, self.det, data, explain, name, self.explain_size),
                limiter=self.limiter)
        r = await self.batcher.submit(item)
        if not explain:
            return self.answer(r, explain, name, t0)
        return await anyio.to_thread.run_sync(functools.partial(self.answer, r, explain, name, t0),
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
                raise _Refused(_error(422, "missing_file", "send the image as the multipart form field 'file'"))
            data = await up.read()
            name = up.filename or name
            flag = form.get("explain")
            if isinstance(flag, str):
                explain = flag.strip().lower() in TRUE
        return data, name, explain
    except _BodyTooLarge:
        raise _Refused(JSONResponse(_too_large(max_bytes), status_code=413)) from None
    except StarletteHTTPException as exc:  # malformed multipart
        raise _Refused(_error(400, "bad_request", str(exc.detail))) from None


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
) -> None:
    """Load the checkpoint once and serve it with uvicorn until interrupted."""
    import uvicorn

    from ..runtime import configure_threads

    batch = BatchConfig(max_batch=max_batch, max_wait_ms=max_wait_ms)  # checked before the model loads
    configure_threads(threads)
    det = Detector.from_pretrained(checkpoint, device, threshold=threshold, unsure_band=unsure, draws=draws, mode=mode)
    app = create_app(det, max_bytes=max_bytes, max_pixels=max_pixels, concurrency=concurrency, batch=batch)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)
