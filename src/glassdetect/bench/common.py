"""What every part of ``glassdetect bench`` shares: the image sizes, the backbones, logging, threads."""
from __future__ import annotations

import sys
from contextlib import contextmanager

import torch

PARTS = ("views", "model", "predict")
# name -> (width, height) of the generated images (4:3 and 3:2 like camera sensors)
JPEG_SIZES = {"1MP": (1152, 864), "4MP": (2304, 1728), "12MP": (4000, 3000), "24MP": (6000, 4000), "48MP": (8000, 6000)}
PNG_SIZE = ("12MP-png", (4000, 3000))
BACKBONES = ("resnet50", "convnext_tiny", "vit_base_patch16_224")
GOAL_SIZES = ("12MP", "24MP")
AUGMENT_BENCH = ("standard", "strong")  # training augmentation presets timed by bench_views


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


@contextmanager
def torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def sync(device: torch.device) -> None:
    """Wait for the device (CUDA kernels are asynchronous); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
