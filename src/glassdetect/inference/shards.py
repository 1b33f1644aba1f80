"""Scanning archives larger than one run: shards, crash-safe appends, resume and merge.

* **Shards.** :class:`Shard` ``I/N`` owns the paths whose hash (BLAKE2b of the path string) is
  ``I`` modulo ``N``: a partition that does not depend on the order or the rest of the listing.
  :func:`resolve_shard` takes ``--shard`` (``I/N``, ``auto`` or ``off``); ``auto`` reads
  ``RANK``/``WORLD_SIZE`` (torchrun) and ``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``, and only
  shards when one of the counts is above 1 (both: ``N = tasks × world``). Shard ``I/N`` writes
  ``OUT.part-0000I-of-0000N`` (:func:`part_path`).
* **Appends.** :class:`Appender` writes each batch of rows with one ``os.write`` on an
  ``O_APPEND`` descriptor (``fsync`` ed at least once a second), so a killed run leaves whole
  batches, plus at most one partial row at the end if the kernel was cut off mid-write.
* **Resume.** :func:`scan_output` reads an existing output: its columns, the paths it has rows
  for, the results by content hash (``sha256`` column) and where its last complete row ends; a
  partial last row (no newline, or an unclosed CSV quote) is cut away by :func:`open_output`.
* **Merge.** :func:`merge_parts` concatenates part files into one, checking that no path is in
  two rows, that every part ``00000..N-1`` is there and complete, and (given the input list) that
  no input is missing.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

PART_RE = re.compile(r"\.part-(\d{5,})-of-(\d{5,})$")
EXAMPLES = 10  # paths named per problem in a merge report


# ------------------------------------------------------------------------------------ shards

def shard_of(path: str, count: int) -> int:
    """The shard (0..count-1) that owns ``path``: a hash of the path string, not its position."""
    digest = hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based); ``source``: where it came from (``--shard``, the environment)."""

    index: int
    count: int
    source: str = field(default="--shard", compare=False)

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: needs 0 <= I < N (I counts from 0)")

    def owns(self, path: str) -> bool:
        return self.count == 1 or shard_of(path, self.count) == self.index

    def __str__(self) -> str:
        return f"shard {self.index}/{self.count} (from {self.source})"


def parse_shard(text: str) -> Shard:
    """``"I/N"`` -> :class:`Shard` (``I`` counts from 0)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"--shard {text!r}: expected I/N (e.g. 3/8, I from 0), 'auto' or 'off'")
    return Shard(int(m.group(1)), int(m.group(2)))


def _env_int(env: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def shard_from_env(env: Mapping[str, str] | None = None) -> Shard | None:
    """The shard a torchrun rank and/or a Slurm array task should scan, or None for a single process.

    torchrun: ``RANK`` of ``WORLD_SIZE``. Slurm array: ``(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN)
    / SLURM_ARRAY_TASK_STEP`` of ``SLURM_ARRAY_TASK_COUNT`` (so ``--array=1-8`` works too). A count
    of 1 (or none) means no sharding from that source.
    """
    env = os.environ if env is None else env
    world, rank = _env_int(env, "WORLD_SIZE", 1), _env_int(env, "RANK", 0)
    tasks = _env_int(env, "SLURM_ARRAY_TASK_COUNT", 1)
    task = 0
    if tasks and tasks > 1:
        step = _env_int(env, "SLURM_ARRAY_TASK_STEP", 1) or 1
        task_id = _env_int(env, "SLURM_ARRAY_TASK_ID")
        if task_id is None:
            raise ValueError("SLURM_ARRAY_TASK_COUNT is set but SLURM_ARRAY_TASK_ID is not")
        task = (task_id - (_env_int(env, "SLURM_ARRAY_TASK_MIN", 0) or 0)) // step
    world, tasks = max(1, world or 1), max(1, tasks or 1)
    if world == 1 and tasks == 1:
        return None
    names = [n for n, c in (("SLURM_ARRAY_TASK_ID/COUNT", tasks), ("RANK/WORLD_SIZE", world)) if c > 1]
    return Shard(task * world + (rank or 0), tasks * world, " and ".join(names))


def resolve_shard(option: str | None, env: Mapping[str, str] | None = None) -> Shard | None:
    """``--shard``: ``I/N``, ``auto`` (default: from the environment, see :func:`shard_from_env`) or ``off``."""
    text = (option or "auto").strip().lower()
    if text in ("off", "none"):
        return None
    if text == "auto":
        return shard_from_env(env)
    return parse_shard(text)


def rank_device(device: str, env: Mapping[str, str] | None = None) -> str:
    """``auto`` under torchrun on a machine with several GPUs: ``cuda:LOCAL_RANK`` (one GPU per rank);
    any other device, or no ``LOCAL_RANK``, as given."""
    env = os.environ if env is None else env
    local = _env_int(env, "LOCAL_RANK")
    if device != "auto" or local is None:
        return device
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"cuda:{local % n}" if n > 1 else device


def part_path(out: str | Path, shard: Shard | None) -> Path:
    """``OUT`` for one process; ``OUT.part-00003-of-00008`` for shard 3 of 8."""
    out = Path(out)
    if shard is None:
        return out
    return out.with_name(f"{out.name}.part-{shard.index:05d}-of-{shard.count:05d}")


# ------------------------------------------------------------------------------ reading rows

def _records(fh: IO[bytes], quoted: bool) -> Iterator[tuple[bytes, int]]:
    """Complete records of a CSV (``quoted``: a newline inside quotes does not end one) or JSON
    Lines file, each with the byte offset where it ends. A trailing partial record is not yielded."""
    offset, parity, parts = 0, 0, []
    for line in fh:
        if not line.endswith(b"\n"):
            return
        offset += len(line)
        parts.append(line)
        if quoted:
            parity ^= line.count(b'"') & 1
        if not parity:
            yield b"".join(parts), offset
            parts = []


def sniff_format(path: Path) -> str:
    """``jsonl`` when the file's first byte is ``{``, else ``csv``."""
    with open(path, "rb") as fh:
        return "jsonl" if fh.read(1) == b"{" else "csv"


def _decode(record: bytes, fmt: str, columns: list[str] | None, where: str) -> dict[str, str]:
    text = record.decode("utf-8")
    if fmt == "jsonl":
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not a JSON Lines row ({exc})") from None
        if not isinstance(rec, dict) or "path" not in rec:
            raise ValueError(f"{where}: a row without a 'path'")
        return rec
    values = next(csv.reader(io.StringIO(text)))
    if columns is None or len(values) != len(columns):
        raise ValueError(f"{where}: {len(values)} fields where the header has {len(columns or [])}")
    return dict(zip(columns, values))


def iter_rows(path: Path, fmt: str) -> Iterator[tuple[list[str], dict[str, str], int]]:
    """(columns, row, end offset) for every complete row of an output file (CSV header checked)."""
    columns: list[str] | None = None
    with open(path, "rb") as fh:
        for n, (record, end) in enumerate(_records(fh, fmt == "csv")):
            if fmt == "csv" and columns is None:
                columns = next(csv.reader([record.decode("utf-8-sig").rstrip("\r\n")]))
                if "path" not in columns:
                    raise ValueError(f"{path}: the first line is not a header with a 'path' column")
                yield columns, {}, end
                continue
            row = _decode(record, fmt, columns, f"{path}, row {n + 1}")
            yield columns or list(row), row, end


@dataclass
class Existing:
    """What an output file already holds (see :func:`scan_output`)."""

    columns: list[str] | None = None  # None: nothing complete yet (no header)
    paths: set[str] = field(default_factory=set)
    by_hash: dict[str, dict[str, str]] = field(default_factory=dict)  # sha256 -> a good row with it
    rows: int = 0
    complete: int = 0  # byte offset where the last complete row ends
    size: int = 0

    @property
    def partial(self) -> bool:
        return self.size > self.complete


def scan_output(path: str | Path, fmt: str, keep_hashes: bool = False) -> Existing:
    """Read an existing output for a resume: the paths it has rows for (and with ``keep_hashes`` its
    good rows by ``sha256``). Memory: about 130 bytes per row (1e6 rows: 124 MB, read in ~5 s), more with hashes."""
    path = Path(path)
    ex = Existing()
    if not path.exists():
        return ex
    ex.size = path.stat().st_size
    for columns, row, end in iter_rows(path, fmt):
        ex.columns, ex.complete = columns, end
        if not row:
            continue
        ex.rows += 1
        ex.paths.add(str(row["path"]))
        digest = row.get("sha256") or ""
        if keep_hashes and digest and not row.get("error"):
            ex.by_hash.setdefault(str(digest), row)
    return ex


# ------------------------------------------------------------------------------ writing rows

class Appender:
    """Append-only output: :meth:`append` writes one batch's text with a single ``os.write`` on an
    ``O_APPEND`` descriptor. Open it with :func:`open_output`.

    Once ``write`` returns, the rows are the kernel's: killing the process loses none of them. They
    reach the disk (``fsync``) at most ``sync_every`` seconds later (0: after every batch) and on
    :meth:`close`; a power cut can lose at most that much, and a resume scores those rows again.
    """

    def __init__(self, path: str | Path, truncate_to: int | None = None, sync_every: float = 1.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        self.fd = os.open(self.path, flags | (os.O_TRUNC if truncate_to == 0 else 0), 0o666)
        if truncate_to:
            os.truncate(self.fd, truncate_to)
        self.sync_every = float(sync_every)
        self._synced = time.monotonic()

    def append(self, text: str) -> None:
        data = memoryview(text.encode("utf-8"))
        while len(data):  # a regular file takes it in one write; loop only for a short write
            data = data[os.write(self.fd, data):]
        if time.monotonic() - self._synced >= self.sync_every:
            self.sync()

    def sync(self) -> None:
        os.fsync(self.fd)
        self._synced = time.monotonic()

    def close(self) -> None:
        if self.fd >= 0:
            self.sync()
            os.close(self.fd)
            self.fd = -1


def open_output(path: str | Path, fmt: str, columns: Iterable[str], resume: bool,
                keep_hashes: bool = False) -> tuple[Appender, Existing]:
    """The output ready for appending: fresh (header written for CSV) or, with ``resume``, the rows
    already there read and a partial last row cut away. Raises ValueError when the columns differ."""
    columns = list(columns)
    ex = scan_output(path, fmt, keep_hashes) if resume else Existing()
    if ex.columns is not None and ex.columns != columns:
        raise ValueError(f"{path}: has columns {', '.join(ex.columns)}, this run writes {', '.join(columns)} "
                         "(--dedupe adds sha256): resume with the options that wrote it, or write a new file")
    if ex.columns is None:  # nothing complete: start the file over
        out = Appender(path, truncate_to=0)
        if fmt == "csv":
            out.append(_csv_line(columns))
        return out, Existing(columns=columns)
    return Appender(path, truncate_to=ex.complete if ex.partial else None), ex


def _csv_line(values: Iterable[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(list(values))
    return buf.getvalue()


# ------------------------------------------------------------------------------------- merge

@dataclass
class MergeReport:
    """What :func:`merge_parts` found; ``ok`` when nothing is duplicated, missing or incomplete."""

    rows: int = 0
    parts: int = 0
    duplicated: dict[str, int] = field(default_factory=dict)  # path -> rows (examples only)
    n_duplicated: int = 0
    missing: list[str] = field(default_factory=list)  # inputs without a row (examples only)
    n_missing: int = 0
    extra: list[str] = field(default_factory=list)  # rows for paths not in the inputs (examples only)
    n_extra: int = 0
    problems: list[str] = field(default_factory=list)  # partial parts, missing part numbers, mixed columns

    @property
    def ok(self) -> bool:
        return not (self.n_duplicated or self.n_missing or self.problems)

    def lines(self) -> list[str]:
        out = list(self.problems)
        if self.n_duplicated:
            out.append(f"{self.n_duplicated} path(s) with more than one row, e.g. "
                       + ", ".join(f"{p} ({n} rows)" for p, n in self.duplicated.items()))
        if self.n_missing:
            out.append(f"{self.n_missing} input path(s) without a row, e.g. " + ", ".join(self.missing))
        if self.n_extra:
            out.append(f"{self.n_extra} row(s) for paths not in the inputs, e.g. " + ", ".join(self.extra))
        return out


def _check_part_names(parts: list[Path], report: MergeReport) -> None:
    numbered = [(PART_RE.search(p.name), p) for p in parts]
    if not numbered or not all(m for m, _ in numbered):
        return
    counts = {int(m.group(2)) for m, _ in numbered if m}
    if len(counts) > 1:
        report.problems.append(f"parts from different shard counts: {sorted(counts)}")
        return
    n = counts.pop()
    have = {int(m.group(1)) for m, _ in numbered if m}
    gone = [i for i in range(n) if i not in have]
    if gone:
        report.problems.append(f"missing part(s) {', '.join(f'{i:05d}' for i in gone[:EXAMPLES])} of {n:05d}")


def _merge_rows(parts: list[Path], sink: IO[bytes], report: MergeReport) -> dict[str, int]:
    """Copy every complete row of ``parts`` into ``sink`` (one header); count rows per path."""
    counts: dict[str, int] = {}
    header: list[str] | None = None
    fmt0 = sniff_format(parts[0]) if parts else "csv"
    for part in parts:
        fmt = sniff_format(part) if part.stat().st_size else fmt0
        if fmt != fmt0:
            report.problems.append(f"{part}: {fmt} where {parts[0]} is {fmt0}")
            continue
        end = 0
        with open(part, "rb") as raw:
            for columns, row, end in iter_rows(part, fmt):
                if not row:  # the CSV header
                    if header is None:
                        header = columns
                        sink.write(_csv_line(columns).encode("utf-8"))
                    elif columns != header:
                        report.problems.append(f"{part}: columns {columns} differ from {header}")
                        break
                    continue
                counts[row["path"]] = counts.get(row["path"], 0) + 1
                report.rows += 1
            raw.seek(0)
            _copy_rows(raw, sink, end, skip_header=fmt == "csv")
        if part.stat().st_size > end:
            report.problems.append(f"{part}: ends with a partial row (an interrupted shard: rerun it with --resume)")
        report.parts += 1
    return counts


def _copy_rows(raw: IO[bytes], sink: IO[bytes], end: int, skip_header: bool) -> None:
    if skip_header:
        first = raw.readline()
        end -= len(first)
    while end > 0:
        chunk = raw.read(min(end, 1 << 20))
        if not chunk:
            break
        sink.write(chunk)
        end -= len(chunk)


def merge_parts(parts: Iterable[str | Path], out: str | Path, inputs: Iterable[str] | None = None,
                force: bool = False) -> MergeReport:
    """Concatenate part files (in the order given) into ``out``, written atomically, header once.

    Checks: every row's path appears once; numbered parts (``*.part-I-of-N``) are all there and
    none ends with a partial row; with ``inputs`` (the paths the scan was given) every input has a
    row. ``out`` is written only when the checks pass, or with ``force``.
    """
    from ..fsutil import atomic_path

    parts = [Path(p) for p in parts]
    for p in parts:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such part file")
    report = MergeReport()
    _check_part_names(parts, report)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as sink:
            counts = _merge_rows(parts, sink, report)
            sink.flush()
            os.fsync(sink.fileno())
        _check_counts(counts, inputs, report)
        if not (report.ok or force):
            raise MergeError(report)
    return report


class MergeError(ValueError):
    def __init__(self, report: MergeReport):
        super().__init__("; ".join(report.lines()))
        self.report = report


def _check_counts(counts: dict[str, int], inputs: Iterable[str] | None, report: MergeReport) -> None:
    for path, n in counts.items():
        if n > 1:
            report.n_duplicated += 1
            if len(report.duplicated) < EXAMPLES:
                report.duplicated[path] = n
    if inputs is None:
        return
    listed: set[str] = set()
    for path in inputs:
        if path in listed:
            continue
        listed.add(path)
        if path not in counts:
            report.n_missing += 1
            if len(report.missing) < EXAMPLES:
                report.missing.append(path)
    extra = [p for p in counts if p not in listed]
    report.n_extra, report.extra = len(extra), extra[:EXAMPLES]
