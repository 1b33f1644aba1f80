"""Stage 7 — service: the detector over HTTP.

The FastAPI application and server (:mod:`.serve`), request batching (:mod:`.batcher`) and the
upload page (:mod:`.page`). It may import inference and everything below it; never bench,
studies or the CLI.
"""
