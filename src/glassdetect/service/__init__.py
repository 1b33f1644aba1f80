"""Stage 7 — service: the detector over HTTP.

The FastAPI application and server (:mod:`.serve`), request batching (:mod:`.batcher`), the upload
page (:mod:`.page`), access tokens (:mod:`.auth`), what every request goes through — id, access,
rate limit, deadline, access log — (:mod:`.ops`), ``/metrics`` (:mod:`.metrics`), warm-up,
readiness and the graceful SIGTERM (:mod:`.lifecycle`) and the container's health check
(:mod:`.healthcheck`). It may import inference and everything below it; never bench, studies or
the CLI.
"""
