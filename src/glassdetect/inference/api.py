"""The Python API: load a detector once, ask it about images.

    >>> from glassdetect import Detector
    >>> det = Detector.from_pretrained("runs/x/best")        # a checkpoint / Hugging Face-style dir
    >>> r = det.predict("photo.jpg")                          # path, bytes, PIL image or numpy array
    >>> r.probability, r.decision, r.crops[0].box, r.crops[0].weight, r.crops[0].score

The image-to-numbers path is :mod:`glassdetect.pipeline` (``prepare`` → ``ViewDataset`` /
``collate`` → ``forward``), the one evaluation and training use too: for a file or bytes, draw ``d``
is :func:`glassdetect.views.build.build_views` (``seed``, ``draw=d``) — a function of the image's bytes,
so the same image always gets the same crops and the same score; for a PIL image or an array the
crop seed is a digest of its decoded pixels. :meth:`Detector.run_batch` turns one batch's outputs
into one :class:`Detection` per image; ``glassdetect predict`` (:mod:`glassdetect.inference.predict`), the
HTTP service (:mod:`glassdetect.service.serve`) and the evidence maps (:mod:`glassdetect.inference.explain`) use it.

Per-crop score
--------------
``Crop.score`` is the fake probability the classifier gives to ``[g; f_i]`` — the global feature
next to crop *i*'s feature alone — i.e. the prediction the model would make if the attention put
all of its weight on crop *i* (temperature-scaled like the image's probability). It comes from
the same backbone pass as the prediction (:meth:`glassdetect.models.GLASS.crop_scores`).
``Crop.weight`` is crop *i*'s attention weight; the weights of one draw sum to 1.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from ..models.decision import decide, fake_probability, parse_band  # decide, parse_band: also part of this API
from .explain import CROP_SCORE_DEFINITION, render_evidence  # noqa: F401 - the definition is re-exported
from ..views.limits import DEFAULT_MAX_PIXELS
from ..models import load_checkpoint, save_checkpoint
from ..models.factory import CONFIG_NAME, WEIGHTS_NAME
from ..pipeline import ViewDataset, collate, forward, prepare  # noqa: F401 - prepare: also part of this API
from ..runtime import resolve_device, torch_threads
from ..views.sampling import MODES
from ..views.build import ViewSpec


# ------------------------------------------------------------------------------------ results

@dataclass
class Crop:
    """One native-resolution crop the model looked at."""

    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels of the EXIF-oriented image; may pass the border (zero-padded)
    weight: float  # attention weight within its draw (a draw's weights sum to 1)
    score: float  # this crop's own fake probability (see the module docstring)
    draw: int = 0  # which stratified draw it belongs to


@dataclass
class Detection:
    """The verdict on one image."""

    probability: float | None  # fake probability (mean over draws); None when the image failed
    decision: str  # "fake" / "real" (the checkpoint's class names), "unsure", or "error"
    crops: list[Crop] = field(default_factory=list)
    draws: int = 1
    spread: float | None = 0.0  # standard deviation of the probability over draws
    image_size: tuple[int, int] | None = None  # decoded (H, W)
    source: str = ""  # path or a short description of the input
    error: str = ""
    draw_probabilities: list[float] = field(default_factory=list)
    thumbnail: Image.Image | None = field(default=None, repr=False, compare=False)  # kept when explain=True

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def crops_per_draw(self) -> int:
        return sum(1 for c in self.crops if c.draw == 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: everything but the thumbnail."""
        d = asdict(replace(self, thumbnail=None))
        d.pop("thumbnail")
        d["fake_probability"] = d.pop("probability")
        d["crops"] = [dict(c, box=list(c["box"])) for c in d["crops"]]
        d["image_size"] = list(self.image_size) if self.image_size else None
        return d

    def evidence_map(self) -> Image.Image:
        """The evidence map (needs ``predict(..., explain=True)``); see :mod:`glassdetect.inference.explain`."""
        return render_evidence(self)


# ---------------------------------------------------------------------------------- detector

def _resolve_pretrained(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file() and p.name in (CONFIG_NAME, WEIGHTS_NAME):
        return p.parent
    if p.is_dir():
        return p
    if not p.exists() and isinstance(path, str) and path.count("/") == 1 and not path.startswith((".", "/")):
        try:  # a Hugging Face Hub repo id: only when huggingface_hub is installed and the hub is reachable
            from huggingface_hub import snapshot_download
        except ImportError:
            raise FileNotFoundError(f"{path}: no such directory (install huggingface_hub to load hub repo ids)") from None
        return Path(snapshot_download(repo_id=path, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))
    raise FileNotFoundError(f"{path}: no such checkpoint directory")


class Detector:
    """A loaded model plus how to look at images (seed, draws, crop mode) and how to decide.

    Thread-safe for concurrent :meth:`predict` calls (inference only, no shared mutable state).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        meta: dict | None = None,
        device: str | torch.device | None = None,
        *,
        seed: int = 0,
        draws: int = 1,
        mode: str | None = None,
        threshold: float | None = None,
        unsure_band: str | Sequence[float] | None | bool = False,
        max_pixels: int | None = None,
        amp: bool = True,
    ):
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.meta = dict(meta or {"model": model.cfg.to_dict()})
        self.threshold = float(model.cfg.threshold)
        self.unsure_band = model.cfg.unsure_band
        self.set_decision(threshold, unsure_band)
        if mode is not None and mode not in MODES:
            raise ValueError(f"unknown crop mode {mode!r}; choose one of {', '.join(MODES)}")
        self.seed, self.draws, self.mode, self.amp = int(seed), max(1, int(draws)), mode, amp
        self.max_pixels = int(max_pixels) if max_pixels else DEFAULT_MAX_PIXELS

    # -- loading and saving

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "auto", **options) -> "Detector":
        """Load a checkpoint directory (``model.safetensors`` + ``config.json``, as written by training or
        :meth:`save_pretrained`), or a path to either file inside one. Options as in the constructor."""
        directory = _resolve_pretrained(path)
        dev = resolve_device(device)
        model, meta = load_checkpoint(directory, dev)
        return cls(model, meta, dev, **options)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` + ``config.json`` (a Hugging Face-style folder; upload it as is).

        The current threshold and unsure band are saved with the model; training metadata and
        calibration notes in the loaded config are kept.
        """
        keep = {k: v for k, v in self.meta.items() if k not in ("model", "format", "glassdetect")}
        cfg = replace(self.model.cfg, threshold=self.threshold, unsure_band=self.unsure_band)  # the model's stays as is
        return save_checkpoint(directory, self.model, extra=keep, config=cfg)

    # -- configuration

    @property
    def cfg(self):
        return self.model.cfg

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.cfg.class_names

    def spec(self, mode: str | None = None) -> ViewSpec:
        mode = mode or self.mode
        if mode is not None and mode not in MODES:
            raise ValueError(f"unknown crop mode {mode!r}; choose one of {', '.join(MODES)}")
        return self.cfg.view_spec(max_pixels=self.max_pixels, mode=mode)

    def set_decision(self, threshold: float | None = None, unsure_band: str | Sequence[float] | None | bool = False) -> None:
        """Override the decision rule (``None`` threshold / ``False`` band: keep; band ``None``: switch off)."""
        if threshold is not None:
            if not 0.0 <= float(threshold) <= 1.0:
                raise ValueError(f"threshold must be in [0, 1], got {threshold}")
            self.threshold = float(threshold)
        if unsure_band is not False:
            self.unsure_band = parse_band(unsure_band)

    def decide(self, probability: float) -> str:
        return decide(probability, self.threshold, self.unsure_band, self.class_names)

    # -- inference

    def predict(self, image: Any, *, explain: bool = False, draws: int | None = None, mode: str | None = None,
                name: str | None = None, thumbnail: int = 768) -> Detection:
        """The verdict on one image (path, bytes, PIL image or uint8 array).

        Raises :class:`~glassdetect.views.build.ImageError` (a ``ValueError``) when the image cannot be used.
        ``explain=True`` keeps a thumbnail so ``result.evidence_map()`` can draw the crops.
        """
        with torch_threads(None):  # the caller's torch thread count is the caller's
            item = prepare(image, self.spec(mode), self.seed, draws or self.draws, thumbnail if explain else 0, name)
            item["index"] = 0
            return self.run_batch(collate([item]))[0][1]

    def predict_batch(self, images: Iterable[Any], *, batch_size: int = 8, explain: bool = False,
                      draws: int | None = None, mode: str | None = None, thumbnail: int = 768) -> list[Detection]:
        """One :class:`Detection` per image, in order; unusable images get ``error`` set instead of raising."""
        images = list(images)
        ds = ViewDataset(images, self.spec(mode), seed=self.seed, draws=draws or self.draws, thumbnail=thumbnail if explain else 0)
        out: list[Detection] = []
        with torch_threads(None):
            for start in range(0, len(images), batch_size):
                items = [ds[i] for i in range(start, min(start + batch_size, len(images)))]
                out += [d for _, d in self.run_batch(collate(items))]
        return out

    @torch.inference_mode()
    def scores(self, batch: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row of a :func:`~glassdetect.pipeline.collate` batch: fake probability (R,), attention
        (R, K) and each crop's own fake probability (R, K), all at the checkpoint's temperature."""
        out = forward(self.model, batch, self.device, self.amp, crop_scores=True)
        t = float(getattr(self.cfg, "temperature", 1.0))
        attn = out.attention.float().cpu().numpy()
        crop = np.zeros_like(attn) if out.crop_logits is None else fake_probability(out.crop_logits, t).cpu().numpy()
        return fake_probability(out.logits, t).cpu().numpy(), attn, crop

    def run_batch(self, batch: dict) -> list[tuple[int, Detection]]:
        """(index, Detection) for every item of a :func:`~glassdetect.pipeline.collate` batch, failures
        included, by index."""
        out: list[tuple[int, Detection]] = []
        for index, name, reason in batch["errors"]:
            out.append((index, Detection(None, "error", draws=0, spread=None, source=name, error=reason)))
        if batch["items"]:
            with torch_threads(None):
                prob, attn, scores = self.scores(batch)
            row_item = batch["row_item"].numpy()
            patch = self.cfg.patch
            for j, it in enumerate(batch["items"]):
                rows = np.flatnonzero(row_item == j)
                p = prob[rows].astype(np.float64)
                crops = []
                boxes = it["boxes"].numpy()
                k = it["k"]
                for d, r in enumerate(rows):
                    for i in range(k):
                        top, left = (int(v) for v in boxes[d * k + i])
                        crops.append(Crop((left, top, left + patch, top + patch), float(attn[r, i]), float(scores[r, i]), d))
                mean = float(p.mean())
                out.append((it["index"], Detection(
                    probability=mean, decision=self.decide(mean), crops=crops, draws=int(it["draws"]),
                    spread=float(p.std()), image_size=tuple(int(v) for v in it["size"]), source=it["name"],
                    draw_probabilities=[float(v) for v in p], thumbnail=it.get("thumb"),
                )))
        out.sort(key=lambda t: t[0])
        return out

    def __repr__(self) -> str:
        c = self.cfg
        return (f"Detector({c.arch}/{c.backbone}, k={c.k}, mode={self.mode or c.sampling}, draws={self.draws}, "
                f"T={c.temperature:.3g}, threshold={self.threshold}, unsure={self.unsure_band}, device={self.device})")
