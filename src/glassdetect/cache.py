"""Where downloaded artefacts (offline weights, benchmark sources) are kept."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir(sub: str = "") -> Path:
    """The glassdetect cache: ``$GLASSDETECT_CACHE`` or ``~/.cache/glassdetect``; created on demand."""
    root = Path(os.environ.get("GLASSDETECT_CACHE", Path.home() / ".cache" / "glassdetect"))
    path = root / sub if sub else root
    path.mkdir(parents=True, exist_ok=True)
    return path
