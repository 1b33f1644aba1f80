"""Resident memory of a command and all its descendants, sampled once a second (Linux /proc).

    python benchmarks/demo/peak_rss.py --out runs/demo-rss.csv -- make demo

Writes one CSV row per sample (seconds since start, clock time, the tree's total RSS and total PSS in MB,
the largest process's RSS and its command line) and prints the peaks at the end, so a peak can be
matched to the demo's log lines (which carry wall-clock times) by its time stamp. RSS counts a page
shared by several processes (the libraries, a forked child's inherited heap) once per process; PSS
divides it among them, so the tree's PSS is the memory it really holds.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(c) for c in fh.read().split()]
    except OSError:
        return []


def tree(root: int) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children(pid)
    return out


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * PAGE_MB
    except OSError:
        return 0.0


def pss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()[:160]
    except OSError:
        return ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="CSV of the samples")
    ap.add_argument("--every", type=float, default=1.0, help="seconds between samples")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the command (after --)")
    a = ap.parse_args()
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        ap.error("no command given")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd)
    t0, peak, peak_pss, peak_one = time.time(), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0, "")
    with open(a.out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["t_s", "clock", "tree_rss_mb", "tree_pss_mb", "largest_rss_mb", "largest_cmd"])
        while proc.poll() is None:
            pids = tree(proc.pid)
            sizes = {pid: rss_mb(pid) for pid in pids}
            total, total_pss = sum(sizes.values()), sum(pss_mb(pid) for pid in pids)
            big = max(sizes, key=sizes.get)
            t = time.time() - t0
            w.writerow([f"{t:.0f}", time.strftime("%H:%M:%S"), f"{total:.0f}", f"{total_pss:.0f}", f"{sizes[big]:.0f}",
                        cmdline(big)])
            fh.flush()
            peak, peak_pss = max(peak, (total, t)), max(peak_pss, (total_pss, t))
            peak_one = max(peak_one, (sizes[big], t, cmdline(big)))
            time.sleep(a.every)
    print(f"peak: tree RSS {peak[0]:.0f} MB at {peak[1]:.0f} s, tree PSS {peak_pss[0]:.0f} MB at {peak_pss[1]:.0f} s; one process {peak_one[0]:.0f} MB at {peak_one[1]:.0f} s "
          f"({peak_one[2]}); wall {time.time() - t0:.0f} s; exit {proc.returncode}", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
