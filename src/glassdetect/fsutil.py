"""Atomic file and directory writing: the one way glassdetect replaces a file on disk.

Every writer puts its output under a temporary name in the target's own folder (so the final
rename never crosses a file system), then ``os.replace``s it onto the target; on any error,
``KeyboardInterrupt`` included, the temporary is removed and the target is left as it was.
A reader therefore sees the old file or the new one, never half of one.

* :func:`write_bytes_atomic` / :func:`write_text_atomic`: content already in memory.
* :func:`atomic_path`: for writers that want a path of their own (``PIL.Image.save``,
  ``torch.onnx.export`` ...): yields the temporary path, replaces the target when the block ends.
* :func:`atomic_dir`: the same for a whole directory (a checkpoint).

Temporary names are ``.<name>.<pid>.<random>.tmp`` (hidden, unique per writer, ``*.tmp``).
A new file gets the mode a plain ``open()`` gives it (``0o666`` less the umask) unless ``mode``
says otherwise.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path`` (not yet created); when the block ends normally
    it is ``os.replace``d onto ``path`` (after ``chmod(mode)`` when ``mode`` is given); when it
    raises, the temporary is deleted. The parent folder is created if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes, *, mode: int | None = None, fsync: bool = True) -> Path:
    """Replace ``path`` with ``data`` atomically (flushed to disk first unless ``fsync=False``)."""
    path = Path(path)
    with atomic_path(path, mode) as tmp:
        with open(tmp, "xb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
    return path


def write_text_atomic(path: str | Path, text: str, *, mode: int | None = None, fsync: bool = True,
                      encoding: str | None = None) -> Path:
    """Replace ``path`` with ``text`` atomically (``encoding`` as for ``open``: None = the locale's)."""
    path = Path(path)
    with atomic_path(path, mode) as tmp:
        with open(tmp, "x", encoding=encoding) as fh:
            fh.write(text)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
    return path


def replace_dir(src: str | Path, dst: str | Path) -> None:
    """Move directory ``src`` to ``dst``, replacing an existing ``dst`` with as small a window as possible."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old)
    else:
        os.replace(src, dst)


@contextlib.contextmanager
def atomic_dir(directory: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``directory`` (``tempfile.mkdtemp``, mode 0o700);
    when the block ends normally it replaces ``directory`` (:func:`replace_dir`); when it raises,
    the temporary directory is deleted. The parent folder is created if missing."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        yield tmp
        replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
