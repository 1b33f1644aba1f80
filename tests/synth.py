"""Synthetic data whose real/fake signal exists only at native resolution."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def smooth_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Photo-like low-frequency content plus mild noise, float HWC in about [50, 205]."""
    small = rng.normal(0, 1, (h // 32 + 2, w // 32 + 2, 3))
    small = ((small - small.min()) / (np.ptp(small) + 1e-9) * 255).astype(np.uint8)
    img = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), dtype=float)
    return img * 0.6 + 50 + rng.normal(0, 2, (h, w, 3))


def make_checker_tree(root: Path, n_groups: int, size: int = 448, amplitude: float = 4.0, seed: int = 0) -> Path:
    """``root/real/sNNN.png`` and its partner ``root/fake/sNNN.png``: the same content plus a faint
    ±``amplitude`` pixel checkerboard. A 2× antialiased resize to 224 erases the checkerboard,
    so only native-resolution crops can see the difference."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    checker = np.where((yy + xx) % 2 == 0, 1.0, -1.0)[..., None]
    for i in range(n_groups):
        base = smooth_background(rng, size, size)
        for cls, amp in (("real", 0.0), ("fake", amplitude)):
            d = root / cls
            d.mkdir(parents=True, exist_ok=True)
            pixels = np.clip(np.rint(base + amp * checker), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(d / f"s{i:03d}.png")
    return root


def bicubic_upscaler(name: str, scale: int):
    """A stand-in super-resolver for the offline benchmark builder: plain bicubic upscaling."""
    from glassdetect.studies.offline_bench import Upscaler

    def fn(a: np.ndarray) -> np.ndarray:
        h, w, _ = a.shape
        return np.asarray(Image.fromarray(a).resize((w * scale, h * scale), Image.BICUBIC))

    return Upscaler(name, scale, fn)


def camera_photos(root: Path, n: int, size: tuple[int, int], step: tuple[int, int], packages: int = 3,
                  seed: int = 7, rotate_first: bool = False) -> list:
    """``n`` small camera-like JPEGs (smooth content + noise, q = 90) as offline-benchmark
    ``SourcePhoto`` s: photo i is ``size + i * step`` (w, h) pixels, from package ``pkg{i % packages}``;
    with ``rotate_first`` the first one carries EXIF orientation 6."""
    from glassdetect.studies import offline_bench as ob

    rng = np.random.default_rng(seed)
    photos = []
    for i in range(n):
        w, h = size[0] + step[0] * i, size[1] + step[1] * i
        base = Image.fromarray(rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        arr = np.clip(np.asarray(base, np.int16) + rng.integers(-12, 13, (h, w, 3)), 0, 255).astype(np.uint8)
        path = root / f"p{i}.jpg"
        exif = Image.Exif()
        if rotate_first and i == 0:
            exif[0x0112] = 6
        Image.fromarray(arr).save(path, quality=90, exif=exif.tobytes())
        ref = ob.PhotoRef(f"pkg{i % packages}-p{i}", f"pkg{i % packages}", f"usr/p{i}.jpg")
        photos.append(ob.photo_from_file(ref, path))
    return photos


def metrics_history(run: Path) -> list[tuple[float, float]]:
    """(train loss, val accuracy) per epoch from a run's metrics.jsonl."""
    import json

    return [(h["train_loss"], h["val_accuracy"]) for h in map(json.loads, open(run / "metrics.jsonl"))]


def assert_interrupted_run_resumes_exactly(full: Path, cut: Path, **config) -> None:
    """Train into ``cut`` with ``config``, stop it after its first epoch, resume it; its last
    weights and per-epoch history must equal those of the uninterrupted run already in ``full``."""
    import json

    import torch
    from safetensors.torch import load_file

    from glassdetect.training.train import TrainConfig, train

    class Interrupt(Exception):
        pass

    def stop(epoch, rec):
        raise Interrupt

    try:
        train(TrainConfig(out=str(cut), **config), on_epoch_end=stop)
        raise AssertionError("the run was not interrupted")
    except Interrupt:
        pass
    assert json.loads((cut / "last" / "config.json").read_text())["epoch"] == 1
    train(TrainConfig(out=str(cut), resume=True, **config))
    a, b = load_file(str(full / "last/model.safetensors")), load_file(str(cut / "last/model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert metrics_history(full) == metrics_history(cut)
