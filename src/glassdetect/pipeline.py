"""Stage 4 — one path from an image to model outputs, shared by every job. It imports views, data,
models and the top-level helpers, nothing above them.

Training, ``evaluate``, ``calibrate``, ``predict``, the service, the :class:`~glassdetect.inference.api.Detector`
and the ONNX export all go through the same four steps, top to bottom::

    source --prepare--> item --ViewDataset / collate--> batch --forward--> Outputs
                                                                  --fake_probability(logits, T)--> p(fake)

* :func:`prepare` turns one image (a path, bytes, a PIL image or a uint8 array) into its global
  view and the crops of ``draws`` draws. Files and bytes go through
  :func:`glassdetect.views.build.build_views`: in evaluation the crops (and any degradation) are a
  function of the image's bytes, the seed and the draw, so the same image always gets the same
  crops; in training the caller passes the training RNGs instead. PIL images and arrays are cut
  with the same functions, seeded by their decoded pixels.
* :class:`ViewDataset` maps sources (or labelled :class:`~glassdetect.data.splits.Sample` s) to items; a
  bad image becomes ``{"index", "error"}`` instead of raising.
* :func:`collate` stacks items into one batch, one **row** per (image, draw), padded with a crop
  mask when crop counts differ (``grid`` mode); failures are listed under ``errors``.
* :func:`forward` runs the model on a batch (device transfer, mixed precision on CUDA, optional
  per-crop logits); :func:`run_model` is its device-free core, which the ONNX graph traces.
  :func:`infer` loops :func:`forward` over a loader and gathers :class:`Predictions`.

The fake probability is :func:`glassdetect.models.decision.fake_probability` and the decision rule
:func:`glassdetect.models.decision.decide`: one definition each, used by every job.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .data.splits import Sample
from .models.decision import fake_probability, scale_logits
from .views.degrade import Degradation, parse as parse_degradation
from .runtime import autocast
from .views.sampling import eval_rng, sample_boxes, train_degrade_rng, train_rng
from .views.build import ImageError, ViewSpec, _to_rgb, build_views, content_id, cut_crops, open_image, read_bytes, resize_global

# ------------------------------------------------------------------------------ one image

def _pixels_identity(img: Image.Image) -> str:
    return content_id(f"{img.mode}:{img.size}:".encode() + img.tobytes())


def _pil_input(source: Any, spec: ViewSpec, name: str | None) -> tuple[Image.Image, str, str]:
    """A PIL image or uint8 array -> (RGB image, identity for the crop RNG, display name)."""
    if isinstance(source, np.ndarray):
        name = name or "<array>"
        arr = source
        if arr.dtype != np.uint8:
            raise ImageError(name, f"arrays must be uint8 (H, W[, 1|3|4]), got dtype {arr.dtype}")
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
            raise ImageError(name, f"arrays must be (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA, got {source.shape}")
        source = Image.fromarray(np.ascontiguousarray(arr))
    if not isinstance(source, Image.Image):
        raise TypeError(f"unsupported image input {type(source).__name__}: give a path, bytes, a PIL image or a uint8 array")
    name = name or "<PIL image>"
    w, h = source.size
    if w * h > spec.max_pixels:
        raise ImageError(name, f"{w}×{h} = {w * h / 1e6:.1f} MP exceeds the pixel limit of {spec.max_pixels / 1e6:.0f} MP")
    if w < 1 or h < 1:
        raise ImageError(name, "empty image")
    try:
        img = _to_rgb(ImageOps.exif_transpose(source))
    except (OSError, ValueError) as exc:
        raise ImageError(name, f"cannot convert: {exc}") from None
    return img, _pixels_identity(img), name


def _thumbnail(img: Image.Image, side: int) -> Image.Image:
    img = img.copy()
    img.thumbnail((side, side), Image.Resampling.BICUBIC, reducing_gap=2.0)
    return img


def _file_views(data: bytes, name: str, spec: ViewSpec, seed: int, draws: int, thumbnail: int,
                rng: np.random.Generator | None, degrade: Degradation | None,
                degrade_rng: np.random.Generator | None) -> tuple:
    views = [build_views(data, spec, rng, seed=seed, draw=d, name=name, degrade=degrade, degrade_rng=degrade_rng)
             for d in range(draws)]
    thumb = None
    if thumbnail:  # JPEGs decode at a reduced DCT scale here: cheap
        thumb = _thumbnail(open_image(data, spec.max_pixels, draft_size=thumbnail, name=name), thumbnail)
    return (views[0].global_view, views[0].size, [v.crops for v in views], [b for v in views for b in v.boxes], thumb)


def _pil_views(source: Any, name: str | None, spec: ViewSpec, seed: int, draws: int, thumbnail: int) -> tuple:
    img, identity, name = _pil_input(source, spec, name)
    w, h = img.size
    g = resize_global(img, spec.global_size, spec.interpolation)
    all_crops, all_boxes = [], []
    if spec.need_crops:
        pixels = np.asarray(img)
        for d in range(draws):
            b = sample_boxes(h, w, spec.k, eval_rng(identity, seed, d), spec.mode, spec.patch, spec.max_grid,
                                 spec.align)
            all_boxes += b
            all_crops.append(cut_crops(pixels, b, spec.patch))
    return g, (h, w), all_crops, all_boxes, _thumbnail(img, thumbnail) if thumbnail else None, name


def prepare(
    source: Any,
    spec: ViewSpec,
    seed: int = 0,
    draws: int = 1,
    thumbnail: int = 0,
    name: str | None = None,
    *,
    rng: np.random.Generator | None = None,
    degrade: Degradation | None = None,
    degrade_rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    """The global view and the crops of ``draws`` draws of one image (``grid`` and the baseline: one draw).

    ``rng`` (training): the crop generator, instead of one derived from the image's content, seed
    and draw; one draw only. ``degrade``: applied to the whole decoded image before the views
    (:func:`~glassdetect.views.build.build_views`), with ``degrade_rng`` or else a generator of the
    image's content, the degradation and the draw; files and bytes only.

    Returns ``global`` (3, S, S) uint8, ``crops`` (D·K, 3, P, P) uint8, ``boxes`` (D·K, 2) as
    (top, left), ``k`` (crops per draw), ``draws``, ``size`` (H, W), ``name`` and ``thumb``
    (an RGB PIL image whose longer side is at most ``thumbnail``, or None). Raises
    :class:`~glassdetect.views.build.ImageError` for an unusable image.
    """
    draws = 1 if (not spec.need_crops or spec.mode == "grid" or rng is not None) else max(1, int(draws))
    if isinstance(source, (str, Path, bytes, bytearray, memoryview)):
        if isinstance(source, (str, Path)):
            data, name = read_bytes(source), name or str(source)
        else:
            data, name = bytes(source), name or "<bytes>"
        g, (h, w), all_crops, all_boxes, thumb = _file_views(data, name, spec, seed, draws, thumbnail, rng, degrade,
                                                             degrade_rng)
    else:
        if degrade is not None or rng is not None:
            raise TypeError("training draws and degradations apply to files and bytes, not to PIL images or arrays")
        g, (h, w), all_crops, all_boxes, thumb, name = _pil_views(source, name, spec, seed, draws, thumbnail)
    k = len(all_boxes) // draws
    crops = (torch.from_numpy(np.ascontiguousarray(np.concatenate(all_crops))) if all_boxes
             else torch.zeros((0, 3, spec.patch, spec.patch), dtype=torch.uint8))
    boxes = torch.tensor(all_boxes, dtype=torch.int64).view(-1, 2)
    return {"global": torch.from_numpy(np.ascontiguousarray(g)), "crops": crops, "boxes": boxes, "k": k,
            "draws": draws, "size": (int(h), int(w)), "name": name, "thumb": thumb}


# ------------------------------------------------------------------------------ many images

class ViewDataset(Dataset):
    """Sources -> prepared items, for a DataLoader with :func:`collate`.

    ``sources``: :class:`~glassdetect.data.splits.Sample` s (their ``label`` travels with the item) or
    anything :func:`prepare` takes. ``train=True``: fresh crops per (seed, epoch, index) and one
    draw (:func:`~glassdetect.views.sampling.train_rng`); otherwise the crops of ``draws`` draws come from
    each image's content. ``degrade`` (a :class:`~glassdetect.views.degrade.Degradation` or a spec/preset
    string) is applied to each whole image before its views: in training with a generator of (seed,
    epoch, index) independent of the crops' (:func:`~glassdetect.views.sampling.train_degrade_rng`), in
    evaluation with one of the image's content, the degradation and the draw. ``draw_keys`` (training):
    the index each source's draws are keyed by instead of its own — sources with one key (a real and
    the fake made from it, :func:`~glassdetect.data.splits.pair_units`) get the same window, crops and
    degradation when they have the same size.

    A bad image yields ``{"index", "error": (name, reason)}`` instead of raising.
    """

    def __init__(self, sources: Sequence[Any], spec: ViewSpec, train: bool = False, seed: int = 0, draws: int = 1,
                 degrade: Degradation | str | None = None, thumbnail: int = 0,
                 draw_keys: Sequence[int] | None = None):
        self.sources = list(sources)
        if draw_keys is not None and len(draw_keys) != len(self.sources):
            raise ValueError(f"draw_keys: {len(draw_keys)} keys for {len(self.sources)} sources")
        self.draw_keys = list(draw_keys) if draw_keys is not None else None
        self.spec, self.train, self.seed, self.thumbnail = spec, train, seed, thumbnail
        self.draws = 1 if train else max(1, int(draws))
        self.epoch = 0
        deg = parse_degradation(degrade)
        self.degrade: Degradation | None = None if deg.is_identity else deg

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> dict:
        src = self.sources[index]
        sample = src if isinstance(src, Sample) else None
        source = sample.path if sample else src
        key = self.draw_keys[index] if self.draw_keys is not None else index
        rng = train_rng(self.seed, self.epoch, key) if self.train else None
        deg_rng = train_degrade_rng(self.seed, self.epoch, key) if self.train and self.degrade is not None else None
        try:
            item = prepare(source, self.spec, self.seed, self.draws, self.thumbnail, rng=rng, degrade=self.degrade,
                           degrade_rng=deg_rng)
        except ImageError as exc:
            return {"index": index, "error": (exc.path, exc.reason)}
        except (TypeError, ValueError, OSError) as exc:  # defensive: one input never takes the whole run down
            return {"index": index, "error": (str(source), f"cannot use: {exc}")}
        item["index"] = index
        item["label"] = sample.label if sample else -1
        return item


def collate(items: Sequence[dict]) -> dict[str, Any]:
    """Stack prepared items (and ``{"index", "error"}`` failures) into one model batch.

    Row r is one (image, draw): ``global_view`` (R, 3, S, S), ``crops`` (R, K, 3, P, P),
    ``crop_mask`` (R, K) or None when every row has K crops, ``boxes`` (R, K, 2), and per row
    ``index`` (the dataset index), ``draw``, ``label`` and ``row_item`` (the image's position in
    ``items``). ``items``: the good images' metadata (no pixels); ``errors``: (index, name, reason)
    of the failures. A batch of failures only has ``errors`` and an empty ``items``.
    """
    good = [it for it in items if "error" not in it]
    batch: dict[str, Any] = {"errors": [(it.get("index"), *it["error"]) for it in items if "error" in it], "items": []}
    if not good:
        return batch
    rows = [(j, d) for j, it in enumerate(good) for d in range(it["draws"])]
    ks = [good[j]["k"] for j, _ in rows]
    kmax = max(ks)
    n = len(rows)
    crops = torch.zeros((n, kmax, *good[0]["crops"].shape[1:]), dtype=torch.uint8)
    mask = torch.zeros((n, kmax), dtype=torch.bool)
    boxes = torch.zeros((n, kmax, 2), dtype=torch.int64)
    for r, (j, d) in enumerate(rows):
        k = ks[r]
        crops[r, :k] = good[j]["crops"][d * k:(d + 1) * k]
        boxes[r, :k] = good[j]["boxes"][d * k:(d + 1) * k]
        mask[r, :k] = True
    batch.update(
        global_view=torch.stack([good[j]["global"] for j, _ in rows]),
        crops=crops,
        crop_mask=mask if kmax and min(ks) != kmax else None,
        boxes=boxes,
        index=torch.tensor([good[j]["index"] for j, _ in rows]),
        draw=torch.tensor([d for _, d in rows]),
        label=torch.tensor([good[j].get("label", -1) for j, _ in rows]),
        row_item=torch.tensor([j for j, _ in rows]),
        items=[{key: v for key, v in it.items() if key not in ("global", "crops")} for it in good],
    )
    return batch


def worker_init(_: int) -> None:
    """One intra-op thread per DataLoader worker: decoding parallelises across workers."""
    torch.set_num_threads(1)


def worker_start_method() -> str | None:
    """How DataLoader workers start: from a small fork server (``forkserver``, where the platform has
    it; ``$GLASSDETECT_WORKER_START`` overrides), not as forks of the calling process. A forked worker
    keeps a copy-on-write image of its parent's whole heap while the parent goes on writing to it: beside
    a training process the demo measured 2.7 GB of memory (PSS) in its one decode worker; a worker from
    the fork server holds the imports and its own batches. The dataset is pickled to each worker."""
    import multiprocessing
    import os

    method = os.environ.get("GLASSDETECT_WORKER_START", "forkserver")
    if method not in multiprocessing.get_all_start_methods():
        return None
    if method == "forkserver":  # workers fork from a server that has already imported this module
        multiprocessing.set_forkserver_preload([__name__])
    return method


def make_loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device | None = None,
                sampler=None) -> DataLoader:
    """Batches of :func:`collate` in dataset order (or ``sampler``'s), decoded in ``workers`` processes
    (started by :func:`worker_start_method`)."""
    workers = max(0, int(workers))
    return DataLoader(
        dataset,
        batch_size=max(1, int(batch_size)),
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        worker_init_fn=worker_init if workers > 0 else None,
        pin_memory=device is not None and device.type == "cuda",
        prefetch_factor=2 if workers > 0 else None,
        multiprocessing_context=worker_start_method() if workers > 0 else None,
    )


# ------------------------------------------------------------------------------ the model

class Outputs(NamedTuple):
    """Raw model outputs for R rows: ``logits`` (R, C), ``attention`` (R, K; (R, 0) for the
    baseline) and, when asked for and available, each crop's own ``crop_logits`` (R, K, C)."""

    logits: torch.Tensor
    attention: torch.Tensor
    crop_logits: torch.Tensor | None = None


def run_model(model: nn.Module, global_view: torch.Tensor, crops: torch.Tensor | None = None,
              crop_mask: torch.Tensor | None = None, crop_scores: bool = False) -> Outputs:
    """The model on tensors already on its device (no autocast): what :func:`forward` and the ONNX graph run."""
    if crop_scores and hasattr(model, "crop_scores") and crops is not None and crops.shape[1] > 0:
        return Outputs(*model.crop_scores(global_view, crops, crop_mask))
    logits, weights = model(global_view, crops, crop_mask)
    return Outputs(logits, weights)


def forward(model: nn.Module, batch: dict, device: torch.device, amp: bool = True, crop_scores: bool = False,
            cpu_amp: bool = False) -> Outputs:
    """The model on a :func:`collate` batch: moved to ``device``, mixed precision on CUDA when ``amp``
    (and bf16 autocast on a CPU when ``cpu_amp``: :func:`glassdetect.runtime.autocast`).

    Gradients flow unless the caller runs it under ``torch.inference_mode()`` (evaluation does,
    training does not).
    """
    g = batch["global_view"].to(device, non_blocking=True)
    c = batch["crops"].to(device, non_blocking=True)
    m = batch.get("crop_mask")
    m = None if m is None else m.to(device, non_blocking=True)
    with autocast(device, amp, cpu=cpu_amp):
        return run_model(model, g, c, m, crop_scores)


@dataclass
class Predictions:
    """Per-row outputs of one pass over a dataset (row = image and draw), in dataset order for the
    images that decoded; ``errors``: (name, reason) of the images that did not."""

    index: np.ndarray  # (R,) dataset index of each row
    draw: np.ndarray  # (R,)
    logits: np.ndarray  # (R, C) temperature-scaled
    prob_fake: np.ndarray  # (R,)
    attention: list[np.ndarray]  # per row (K,)
    boxes: list[np.ndarray]  # per row (K, 2) as (top, left)
    errors: list[tuple[str, str]] = field(default_factory=list)

    def per_image(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dataset index (N,), mean fake probability over the draws (N,), their standard deviation (N,))."""
        if not len(self.index):
            return self.index, self.prob_fake.astype(np.float64), self.prob_fake.astype(np.float64)
        starts = np.flatnonzero(np.r_[True, self.index[1:] != self.index[:-1]])
        counts = np.diff(np.r_[starts, len(self.index)])
        p = self.prob_fake.astype(np.float64)
        mean = np.add.reduceat(p, starts) / counts
        var = np.add.reduceat(p * p, starts) / counts - mean * mean
        return self.index[starts], mean, np.sqrt(np.maximum(var, 0.0))


def _row_crops(batch: dict, weights: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    if not weights.shape[1]:
        return weights[r], np.zeros((0, 2), np.int64)
    mask = batch["crop_mask"]
    keep = slice(None) if mask is None else mask[r].numpy()
    return weights[r][keep], batch["boxes"][r].numpy()[keep]


@torch.inference_mode()
def infer(model: nn.Module, loader, device: torch.device, amp: bool = True, progress=None) -> Predictions:
    """:func:`forward` over every batch of ``loader``; bad images are collected in ``errors``, never raised.
    Logits are divided by the model's temperature (``model.cfg.temperature``)."""
    model.eval()
    temperature = float(getattr(model.cfg, "temperature", 1.0))
    idx, draw, logits, attn, boxes, errors = [], [], [], [], [], []
    for batch in loader:
        errors += [(name, reason) for _, name, reason in batch["errors"]]
        if batch["items"]:
            out = forward(model, batch, device, amp)
            idx.append(batch["index"].numpy())
            draw.append(batch["draw"].numpy())
            logits.append(scale_logits(out.logits.float(), temperature).cpu().numpy())
            w = out.attention.float().cpu().numpy()
            for r in range(w.shape[0]):
                a, b = _row_crops(batch, w, r)
                attn.append(a)
                boxes.append(b)
        if progress is not None:
            progress(len(batch["items"]) + len(batch["errors"]))
    n_cls = len(model.cfg.class_names)
    lg = np.concatenate(logits) if logits else np.zeros((0, n_cls), np.float32)
    prob = fake_probability(torch.from_numpy(lg)).numpy() if len(lg) else np.zeros(0, np.float32)
    empty = np.zeros(0, np.int64)
    return Predictions(np.concatenate(idx) if idx else empty, np.concatenate(draw) if draw else empty, lg, prob,
                       attn, boxes, errors)
