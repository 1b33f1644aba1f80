"""What every request goes through before and after the routes: an id, access control, a rate
limit, a deadline, the metrics and one log line (:class:`Ops`, an ASGI middleware).

Order, for each HTTP request:

1. ``X-Request-ID``: the client's (1-128 characters of ``A-Za-z0-9._:-``) or a new one; it comes back
   on every answer, refusals included.
2. Access control (:mod:`.auth`), when tokens are given: 401 with a JSON error and
   ``WWW-Authenticate: Bearer`` for a missing or wrong token. ``/healthz``, ``/readyz`` and the upload
   page ``/`` stay open (the page asks for the token and sends it with the upload).
3. The per-client rate limit on ``POST /v1/detect`` (optional): a token bucket per token name, or per
   client address without tokens; 429 with ``Retry-After`` (whole seconds until the next request fits).
4. The request deadline: a request not answered within ``request_timeout_s`` is cut off with 408
   when the client was still sending its body (a slow or stalled upload), else 503 + ``Retry-After``.
5. Afterwards: the metrics (:mod:`.metrics`) and, with ``log_requests``, one JSON line on the logger
   ``glassdetect.service.access``: id, method, route, status, client, token name, timings, body
   size, image size and format, verdict; never the image, its name or the token.
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel

from .auth import Tokens
from .metrics import ServiceMetrics, route_label

access_log = logging.getLogger("glassdetect.service.access")

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"})
RATE_LIMITED = frozenset({"/v1/detect"})
REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


@dataclass(frozen=True)
class OpsConfig:
    """Access, rate limit, deadline and logging settings of the service.

    ``rate_limit``: requests per second each client may send to ``/v1/detect`` (0: no limit), with
    bursts of up to ``rate_burst`` (0: ``max(1, ceil(rate_limit))``). ``request_timeout_s``: the
    deadline of a request, from its arrival (0: none). ``retry_after_s``: the ``Retry-After`` of a
    503 (queue full or deadline passed).
    """

    tokens: Tokens = field(default_factory=Tokens)
    rate_limit: float = 0.0
    rate_burst: int = 0
    request_timeout_s: float = 60.0
    retry_after_s: int = 1
    log_requests: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate_limit) and self.rate_limit >= 0):
            raise ValueError(f"rate_limit must be 0 (off) or a positive number of requests per second, got {self.rate_limit}")
        if self.rate_burst < 0:
            raise ValueError(f"rate_burst must be 0 (auto) or more, got {self.rate_burst}")
        if not (math.isfinite(self.request_timeout_s) and self.request_timeout_s >= 0):
            raise ValueError(f"request_timeout_s must be 0 (none) or a positive number, got {self.request_timeout_s}")
        if self.retry_after_s < 1:
            raise ValueError(f"retry_after_s must be at least 1, got {self.retry_after_s}")

    @property
    def burst(self) -> int:
        return int(self.rate_burst) or max(1, math.ceil(self.rate_limit))


@dataclass
class Trace:
    """What one request did, filled in as it goes (``request.state.trace``); logged when it ends."""

    request_id: str
    method: str = ""
    path: str = ""
    client: str | None = None
    token: str | None = None
    status: int = 0
    body_bytes: int = 0
    image_size: tuple[int, int] | None = None  # (height, width), as in the verdict
    format: str | None = None
    decision: str | None = None
    fake_probability: float | None = None
    error: str | None = None
    prepare_s: float | None = None
    queue_s: float | None = None
    forward_s: float | None = None
    batch: int | None = None

    def to_log(self, seconds: float) -> dict[str, Any]:
        ms = lambda s: None if s is None else round(s * 1e3, 2)  # noqa: E731
        return {"request_id": self.request_id, "method": self.method, "route": route_label(self.path),
                "status": self.status, "client": self.client, "token": self.token, "duration_ms": ms(seconds),
                "prepare_ms": ms(self.prepare_s), "queue_ms": ms(self.queue_s), "forward_ms": ms(self.forward_s),
                "batch": self.batch, "body_bytes": self.body_bytes,
                "image_size": None if self.image_size is None else list(self.image_size), "format": self.format,
                "decision": self.decision, "fake_probability": self.fake_probability, "error": self.error}


class RateLimiter:
    """Token buckets per client key: ``rate`` requests per second, bursts of ``burst``. At most
    ``max_clients`` buckets are kept (the longest idle ones go first; a forgotten bucket is full)."""

    def __init__(self, rate: float, burst: int, max_clients: int = 10_000):
        self.rate, self.burst, self.max_clients = float(rate), float(burst), max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, time of the last update)

    def take(self, key: str, now: float | None = None) -> float:
        """0 when ``key`` may send a request now (and it is counted), else the seconds until it may."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self._buckets[key] = (tokens - 1 if wait == 0 else tokens, now)  # most recent last
        while len(self._buckets) > self.max_clients:
            self._buckets.pop(next(iter(self._buckets)))
        return wait


def request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's ``X-Request-ID`` when it is a sane one, else a new random id."""
    for key, value in headers:
        if key.lower() == b"x-request-id":
            text = value.decode("latin-1").strip()
            if REQUEST_ID.fullmatch(text):
                return text
    return uuid.uuid4().hex


async def send_json(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """A complete JSON answer; the connection is closed after it (the body may not have been read)."""
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": data})


class Ops:
    """ASGI middleware: request id, access control, rate limit, deadline, metrics and the access log."""

    def __init__(self, app, cfg: OpsConfig, metrics: ServiceMetrics):
        self.app, self.cfg, self.metrics = app, cfg, metrics
        self.limiter = RateLimiter(cfg.rate_limit, cfg.burst) if cfg.rate_limit > 0 else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        headers = scope.get("headers") or []
        client = scope.get("client")
        trace = Trace(request_id(headers), scope.get("method", ""), scope.get("path", ""),
                      client[0] if client else None)
        scope.setdefault("state", {})["trace"] = trace
        rid = (b"x-request-id", trace.request_id.encode())

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                trace.status = int(message["status"])
                message = {**message, "headers": [*message.get("headers", []), rid]}
            await send(message)

        try:
            refusal = self.admit(scope, headers, trace)
            if refusal is not None:
                await send_json(send_with_id, *refusal)
            else:
                await self.run(scope, receive, send_with_id, trace)
        except BaseException:
            trace.status = trace.status or 500  # a bug (Starlette answers 500) or a client gone away
            raise
        finally:
            self.finish(trace, time.perf_counter() - t0)

    def admit(self, scope, headers, trace: Trace) -> tuple[int, dict, list] | None:
        """None when the request may go on, else (status, body, headers) of its refusal (401 or 429)."""
        path = scope.get("path", "")
        if self.cfg.tokens.enabled and path not in OPEN_PATHS:
            auth = next((v.decode("latin-1") for k, v in headers if k.lower() == b"authorization"), None)
            trace.token = self.cfg.tokens.check(auth)
            if trace.token is None:
                detail = "a valid access token is required: send 'Authorization: Bearer TOKEN'"
                return 401, {"error": "unauthorized", "detail": detail}, [(b"www-authenticate", b"Bearer")]
        if self.limiter is not None and path in RATE_LIMITED:
            wait = self.limiter.take(trace.token or trace.client or "unknown")
            if wait > 0:
                retry = str(max(1, math.ceil(wait))).encode()
                detail = f"more than {self.cfg.rate_limit:g} requests per second from this client; retry later"
                return 429, {"error": "rate_limited", "detail": detail}, [(b"retry-after", retry)]
        return None

    async def run(self, scope, receive, send, trace: Trace) -> None:
        """The app under the request deadline; a request past it is answered 408 or 503 when still possible."""
        waiting_for_body = False

        async def tracked_receive():
            nonlocal waiting_for_body
            waiting_for_body = True
            message = await receive()  # cancelled here by the deadline: the body was still arriving
            waiting_for_body = False
            if message["type"] == "http.request":
                trace.body_bytes += len(message.get("body", b""))
            return message

        async def guarded_send(message):
            if message["type"] == "http.response.start":  # past the deadline: nothing goes out, the 503 does
                await anyio.lowlevel.checkpoint_if_cancelled()
            with anyio.CancelScope(shield=True):  # a started answer is not cut in half by the deadline
                await send(message)

        timeout = self.cfg.request_timeout_s
        with anyio.move_on_after(timeout if timeout > 0 else math.inf) as deadline:
            await self.app(scope, tracked_receive, guarded_send)
        if not deadline.cancelled_caught or trace.status:
            return
        if waiting_for_body:
            trace.error = "request_timeout"
            await send_json(send, 408, {"error": "request_timeout",
                                        "detail": f"the request body did not arrive within {timeout:g} s"})
        else:
            trace.error = "timeout"
            await send_json(send, 503, {"error": "timeout", "detail": f"not answered within {timeout:g} s; retry later"},
                            [(b"retry-after", str(self.cfg.retry_after_s).encode())])

    def finish(self, trace: Trace, seconds: float) -> None:
        """Metrics and the access-log line of a request that ended."""
        self.metrics.observe_request(trace.path, trace.status, seconds, trace.token)
        if self.cfg.log_requests:
            access_log.info("request", extra={"fields": trace.to_log(seconds)})


class JsonFormatter(logging.Formatter):
    """One JSON object per log record: time, level, logger, message and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                               + f".{int(record.msecs):03d}Z", "level": record.levelname.lower(),
                               "logger": record.name, "message": record.getMessage()}
        out.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def log_config(log_format: str, level: str) -> dict[str, Any]:
    """The ``logging.config`` dict for uvicorn and the service: ``text`` (uvicorn's own) or ``json``
    (every line a JSON object; uvicorn's access lines replaced by the service's)."""
    from uvicorn.config import LOGGING_CONFIG

    if log_format == "text":
        return LOGGING_CONFIG
    if log_format != "json":
        raise ValueError(f"log format must be text or json, got {log_format!r}")
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    level = level.upper()
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
            "handlers": {"json": handler},
            "loggers": {name: {"handlers": ["json"], "level": level, "propagate": False}
                        for name in ("uvicorn", "uvicorn.error", "glassdetect")}
            | {"uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
               "glassdetect.service.access": {"handlers": ["json"], "level": "INFO", "propagate": False}}}
