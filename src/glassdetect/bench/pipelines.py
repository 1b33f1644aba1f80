"""The pipelines ``bench views`` compares: the project's, a naive reference and the decode floors."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..views import build as V
from ..views.sampling import eval_rng, sample_boxes


def ours_views(path: str | Path, spec: V.ViewSpec | None = None) -> V.Views:
    """The project's pipeline (whatever decoder :mod:`glassdetect.views.build` picks)."""
    return V.build_views(path, spec or V.ViewSpec())


def ours_pillow_views(path: str | Path, spec: V.ViewSpec | None = None) -> V.Views:
    """The project's pipeline with the simplejpeg fast path switched off (Pillow decode)."""
    old = V.FAST_DECODE
    V.FAST_DECODE = False
    try:
        return V.build_views(path, spec or V.ViewSpec())
    finally:
        V.FAST_DECODE = old


def naive_views(path: str | Path, spec: V.ViewSpec | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The comparison point: decode, whole image to float CHW (torchvision ``ToTensor``),
    antialiased bicubic resize of the float tensor, crops cut from the float tensor."""
    spec = spec or V.ViewSpec()
    data = Path(path).read_bytes()
    rng = eval_rng(V.content_id(data), 0, 0)
    with Image.open(io.BytesIO(data)) as im:
        img = ImageOps.exif_transpose(im).convert("RGB")
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous().float().div(255)  # ToTensor
    del img
    h, w = x.shape[1:]
    g = F.interpolate(x[None], size=(spec.global_size, spec.global_size), mode="bicubic", antialias=True)[0]
    boxes = sample_boxes(h, w, spec.k, rng, spec.mode, spec.patch, spec.max_grid, spec.align)
    p = spec.patch
    crops = torch.zeros((len(boxes), 3, p, p))
    for i, (t, l) in enumerate(boxes):
        y0, x0, y1, x1 = max(t, 0), max(l, 0), min(t + p, h), min(l + p, w)
        crops[i, :, y0 - t:y1 - t, x0 - l:x1 - l] = x[:, y0:y1, x0:x1]
    return g, crops


def decode_only(path: str | Path) -> Any:
    """The floor: read and fully decode with the fastest decoder available."""
    data = Path(path).read_bytes()
    if V.simplejpeg is not None and data[:2] == b"\xff\xd8":
        return V.simplejpeg.decode_jpeg(data, colorspace="RGB")
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.im


_REUSE: dict[str, np.ndarray] = {}


def decode_reuse_only(path: str | Path) -> Any:
    """The floor without page faults: simplejpeg into a buffer reused across calls (what ``ours`` does)."""
    data = Path(path).read_bytes()
    if V.simplejpeg is None or data[:2] != b"\xff\xd8":
        return decode_only(path)
    h, w = V.simplejpeg.decode_jpeg_header(data)[:2]
    buf = _REUSE.get("buf")
    if buf is None or buf.size < h * w * 3:
        buf = _REUSE["buf"] = np.empty(h * w * 3, np.uint8)
    return V.simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=buf)


def pillow_decode_only(path: str | Path) -> Any:
    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.im


PIPELINES: dict[str, Callable[[Any], Any]] = {
    "ours": ours_views, "ours_pillow": ours_pillow_views, "naive": naive_views, "decode": decode_only,
    "decode_reuse": decode_reuse_only, "pillow_decode": pillow_decode_only,
}
