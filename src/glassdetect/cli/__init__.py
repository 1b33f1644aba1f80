"""Stage 10 — the ``glassdetect`` command line, the top: it may import every stage. It is one Typer app (``_app``), its commands grouped by job —
``training`` (train, tune, final), ``inference`` (evaluate, robustness, predict, merge, calibrate,
export, serve), ``datasets`` (``data inspect / audit / build-offline-bench``) and ``studies`` (cost,
crossgen, demo, bench). Each command imports the
library lazily, so ``glassdetect --help`` starts fast."""
from __future__ import annotations

import os

from . import datasets, inference, reference, studies, training  # noqa: F401 - registers the commands
from ._app import app

__all__ = ["app", "main"]


def main() -> None:
    """The ``glassdetect`` command. It owns its process, so it sets the process-wide defaults a library
    import must not: ``OMP_WAIT_POLICY=PASSIVE`` unless set (before torch starts its OpenMP pool;
    spin-waiting threads are catastrophically slow when another process holds a core)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    app()
