"""What ``GET /metrics`` exports, in the Prometheus text format (the ``prometheus-client`` library).

Each app has its own registry (several apps may live in one process: tests, ``bench serve``).
Names, all prefixed ``glassdetect_``:

``requests_total{route,status}``        every answered request (route: a known path or ``other``)
``request_seconds{route}``              time from the request's arrival to its answer
``prepare_seconds``                     decoding the upload and building its views (a worker thread)
``queue_wait_seconds``                  from the views being ready to the start of their forward pass
``forward_seconds``                     one forward pass (shared by a batch)
``batch_size``                          images per forward pass
``in_flight``                           requests inside the service (past the limits, not yet answered)
``rejections_total{reason}``            refused requests by HTTP status: 400, 401, 408, 413, 415, 422, 429, 503
                                        (not the probes /healthz and /readyz)
``token_requests_total{token}``         requests by token name (only with access control)
``ready``                               1 when the model is loaded and warm and the service not draining
``model_info{...}`` / ``build_info{version}``  the checkpoint's settings and the package version
plus the ``process_*`` gauges (resident memory, CPU time, open files) of ``prometheus_client``.
"""
from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.exposition import choose_encoder

ROUTES = ("/v1/detect", "/healthz", "/readyz", "/metrics", "/")
REJECTIONS = (400, 401, 408, 413, 415, 422, 429, 503)
PROBES = ("/healthz", "/readyz")  # their 503 means "not ready", not a refused request
# Seconds: from a millisecond (a queue with nobody in it) to two minutes (a loaded CPU, a huge image).
TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def route_label(path: str) -> str:
    """The ``route`` label of a path: one of :data:`ROUTES`, or ``other`` (a bounded set of values)."""
    return path if path in ROUTES else "other"


class ServiceMetrics:
    """The service's counters, gauges and histograms in a registry of its own."""

    def __init__(self, version: str, model: dict[str, Any]):
        self.registry = reg = CollectorRegistry(auto_describe=True)
        p = "glassdetect_"
        self.requests = Counter(p + "requests", "Answered requests by route and HTTP status.", ("route", "status"),
                                registry=reg)
        self.request_seconds = Histogram(p + "request_seconds", "Time from a request's arrival to its answer.",
                                         ("route",), buckets=TIME_BUCKETS, registry=reg)
        self.prepare_seconds = Histogram(p + "prepare_seconds", "Decoding an upload and building its views.",
                                         buckets=TIME_BUCKETS, registry=reg)
        self.queue_wait_seconds = Histogram(p + "queue_wait_seconds",
                                            "From an upload's views being ready to the start of its forward pass.",
                                            buckets=TIME_BUCKETS, registry=reg)
        self.forward_seconds = Histogram(p + "forward_seconds", "One forward pass of the model (one batch).",
                                         buckets=TIME_BUCKETS, registry=reg)
        self.batch_size = Histogram(p + "batch_size", "Images per forward pass.", buckets=BATCH_BUCKETS, registry=reg)
        self.in_flight = Gauge(p + "in_flight", "Requests past the limits and not yet answered.", registry=reg)
        self.rejections = Counter(p + "rejections", "Refused requests by HTTP status.", ("reason",), registry=reg)
        self.token_requests = Counter(p + "token_requests", "Requests by the name of their access token.", ("token",),
                                      registry=reg)
        self.ready = Gauge(p + "ready", "1 when the model is loaded and warm and the service is not draining.",
                           registry=reg)
        Info(p + "model", "The checkpoint the service runs.", registry=reg).info(
            {k: str(v) for k, v in model.items()})
        Info(p + "build", "The glassdetect package.", registry=reg).info({"version": version})
        ProcessCollector(registry=reg)
        for reason in REJECTIONS:  # every reason present from the start, at 0
            self.rejections.labels(reason=str(reason))

    def observe_request(self, path: str, status: int, seconds: float, token: str | None) -> None:
        """Count one answered request (and its refusal, when it is one)."""
        route = route_label(path)
        self.requests.labels(route=route, status=str(status)).inc()
        self.request_seconds.labels(route=route).observe(seconds)
        if status in REJECTIONS and path not in PROBES:
            self.rejections.labels(reason=str(status)).inc()
        if token is not None:
            self.token_requests.labels(token=token).inc()

    def observe_batch(self, size: int, seconds: float) -> None:
        """One forward pass of ``size`` images that took ``seconds``."""
        self.batch_size.observe(size)
        self.forward_seconds.observe(seconds)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """(body, content type) of ``/metrics`` in the format the scraper accepts (text by default)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
