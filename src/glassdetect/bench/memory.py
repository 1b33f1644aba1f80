"""Peak memory of one pipeline call, measured in a fresh interpreter so that every allocation counts.

After the imports and a warm-up call on a tiny image the kernel's peak-RSS mark is reset
(``/proc/self/clear_refs`` = 5) and ``peak = VmHWM - VmRSS`` (before) around one call: numpy,
Pillow, libjpeg and torch allocations alike (fallback where the reset is not available: the
``ru_maxrss`` delta).
"""
from __future__ import annotations

import gc
import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import torch

from .pipelines import PIPELINES


def _proc_status() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}


def memory_child(pipeline: str, path: str, warm_path: str) -> None:
    """Run in a fresh interpreter: print the peak memory added by one call of ``pipeline`` on ``path``."""
    torch.set_num_threads(1)
    fn = PIPELINES[pipeline]
    fn(warm_path)  # imports, lazy initialisation, allocator pools
    gc.collect()
    method = "VmHWM reset (/proc/self/clear_refs=5)"
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before = _proc_status()["VmRSS"]
        out = fn(path)
        peak = _proc_status()["VmHWM"] - before
    except OSError:
        method = "ru_maxrss delta"
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out = fn(path)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    del out
    print(json.dumps({"peak_bytes": max(0, peak), "method": method}))


def measure_peak_mb(pipeline: str, path: Path, warm_path: Path) -> tuple[float, str]:
    """Peak memory (MB = 1e6 bytes) of one call, in a fresh subprocess; and the method used."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    code = (f"from glassdetect.bench.memory import memory_child; "
            f"memory_child({pipeline!r}, {str(path)!r}, {str(warm_path)!r})")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"memory probe {pipeline} on {path} failed:\n{res.stderr[-2000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return out["peak_bytes"] / 1e6, out["method"]
