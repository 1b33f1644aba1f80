"""A training-free reference detector: the 2×2-phase statistic of second-order residuals.

Upsampling by pixel shuffle, transposed convolution or interpolation leaves a period-2 pattern in
how neighbouring pixels relate (the premise of NPR, CVPR 2024); a camera's pixels have none
(unless a JPEG's 4:2:0 chroma wrote one, which luma does not carry). The statistic:

1. integer luma ``Y = 299 R + 587 G + 114 B`` of the **whole image at full resolution** (decoded
   by the project's own path, :func:`glassdetect.views.build.decode`, EXIF-upright; no crops, no
   resize: every pixel counts, in row strips so memory stays small);
2. two second-order residuals of it: the 4-neighbour Laplacian
   (:func:`glassdetect.models.common.laplacian_residual`, the residual the ``local_input="residual"``
   GLASS option feeds its local backbone) and the 2×2 cross difference (:func:`cross_residual`);
3. for each, ``m_p`` = mean magnitude over the pixels of each 2×2 phase ``p = (row % 2, col % 2)``;
4. score = the mean over the two residuals of the four ``m_p``'s coefficient of variation divided
   by its maximum √3, in [0, 1]: higher = more periodic = more likely upsampled (fake). A constant
   image scores 0.

Why two residuals: a symmetric, pixel-centred filter such as the Laplacian gives mirror-image
phases the same mean magnitude, so it cannot see plain nearest / bilinear / bicubic ×2 upsampling
(which the cross difference sees at once), while it sees most neural super-resolvers better.
Pilot (docs/backbones.md, "The residual local input"): 20 area-halved 384 px crops of 10 Debian
photos against their super-resolved partners (8 generators of 6 families); AUC clean / both
classes JPEG q90 / q75: Laplacian 0.84 / 0.65 / 0.63, cross 0.75 / 0.72 / 0.67, **both 0.80 / 0.74
/ 0.69**, the NPR block residual 0.61 / 0.57 / -.

:func:`evaluate_reference` scores a data split as ``glassdetect evaluate`` scores a checkpoint and
writes the same metrics JSON (the score stands in for the fake probability; ``ece`` and ``nll``
therefore mean little), with per-generator and, where the manifest has them, per-family and
per-history rows. It is deterministic: a function of the file bytes (and of the degradation,
drawn from the image content as evaluate draws it).
"""
from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..data.splits import Sample, load_samples
from ..models.common import LUMA_WEIGHTS, laplacian_residual
from ..views.build import ImageError, content_id, decode, read_bytes
from ..views.degrade import Degradation
from ..views.degrade import parse as parse_degradation
from ..views.limits import DEFAULT_MAX_PIXELS
from ..views.sampling import eval_degrade_rng
from .calibrate import threshold_for_fpr
from .metrics import binary_metrics, per_generator

LUMA = np.array([round(1000 * w) for w in LUMA_WEIGHTS], dtype=np.int32)  # luma × 1000 in integers: the residuals are exact
STRIP_ROWS = 256  # residual rows per strip (bounds memory for any image size)
PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))
MAX_CV = math.sqrt(3.0)  # the coefficient of variation of four non-negative numbers is at most √3
GROUPINGS = ("generator", "family", "history")  # Sample fields reported per value when present
ARCH = "reference-2x2-phase"


def cross_residual(y: np.ndarray) -> np.ndarray:
    """The 2×2 mixed second difference ``y[i, j] - y[i+1, j] - y[i, j+1] + y[i+1, j+1]`` of (H, W)
    luma, (H - 1, W - 1): zero on anything of the form f(row) + g(col) (constants, ramps, straight
    edges); the only phase of a nearest ×2 upsampling where it is not zero is (1, 1)."""
    return y[:-1, :-1] - y[1:, :-1] - y[:-1, 1:] + y[1:, 1:]


def _phase_sums(r: np.ndarray, row0: int, col0: int, sums: np.ndarray, counts: np.ndarray) -> None:
    """Add |r| (whose first element sits at image pixel (row0, col0)) to the four phases' sums."""
    for p, (pi, pj) in enumerate(PHASES):
        part = np.abs(r[(pi - row0) % 2::2, (pj - col0) % 2::2])
        sums[p] += float(part.sum(dtype=np.float64))
        counts[p] += part.size


def phase_means(img: np.ndarray, strip: int = STRIP_ROWS) -> np.ndarray:
    """Mean magnitude of two second-order residuals of luma in each 2×2 phase of an (H, W, 3) uint8
    image: (2, 4) float64, row 0 the 4-neighbour Laplacian, row 1 the 2×2 cross difference, columns
    the phases (row % 2, col % 2) = (0, 0), (0, 1), (1, 0), (1, 1) in image coordinates. Computed in
    strips of ``strip`` rows (the result does not depend on it); zeros below 4×4 pixels."""
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {img.shape} {img.dtype}")
    h, w = img.shape[:2]
    sums, counts = np.zeros((2, 4)), np.zeros((2, 4))
    if h < 4 or w < 4:
        return sums
    for a in range(1, h - 1, strip):  # residual rows a .. b-1 need luma rows a-1 .. b
        b = min(a + strip, h - 1)
        luma = (img[a - 1:b + 1].astype(np.int32) @ LUMA).astype(np.float32)  # < 2**24: exact
        _phase_sums(laplacian_residual(torch.from_numpy(luma)).numpy(), a, 1, sums[0], counts[0])
        _phase_sums(cross_residual(luma[1:]), a, 0, sums[1], counts[1])  # top-left rows a .. b-1
    return sums / np.maximum(counts, 1)


def phase_score(img: np.ndarray) -> float:
    """The reference detector's score of an (H, W, 3) uint8 image, in [0, 1] (higher = more likely
    fake): the mean over the two residuals of the four phase means' coefficient of variation / √3."""
    cvs = []
    for m in phase_means(img):
        mean = float(m.mean())
        cvs.append(0.0 if mean <= 1e-12 else min(float(m.std()) / mean / MAX_CV, 1.0))
    return float(np.mean(cvs))


def image_pixels(path: str, degrade: Degradation, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A file's upright pixels as evaluation sees them: decoded by the views' own path and, for a
    degradation, degraded exactly as ``glassdetect evaluate --degrade`` degrades it (draw 0)."""
    data = read_bytes(path)
    pixels = decode(data, max_pixels, name=path).pixels
    if degrade.is_identity:
        return np.ascontiguousarray(pixels)
    try:
        return degrade(pixels, eval_degrade_rng(content_id(data), degrade.name, 0))
    except (ValueError, OSError) as exc:
        raise ImageError(path, f"cannot apply degradation {degrade.name}: {exc}") from None


def score_samples(samples: Sequence[Sample], degrade: Degradation, max_pixels: int = DEFAULT_MAX_PIXELS,
                  progress: Callable[[int], None] | None = None) -> tuple[list[int], np.ndarray, list[dict]]:
    """Scores of the samples that decode: (their indices, scores, errors as {path, reason})."""
    idx, scores, errors = [], [], []
    for i, s in enumerate(samples):
        try:
            scores.append(phase_score(image_pixels(s.path, degrade, max_pixels)))
            idx.append(i)
        except (ImageError, OSError) as exc:
            errors.append({"path": s.path, "reason": getattr(exc, "reason", str(exc))})
        if progress is not None:
            progress(1)
    return idx, np.asarray(scores, dtype=np.float64), errors


def per_value(prob: np.ndarray, labels: np.ndarray, values: Sequence[str], threshold: float) -> dict:
    """Metrics per value of a grouping column, by :func:`~.metrics.per_generator`'s rule. A column
    only the fakes carry (``generator``) compares every real with that value's fakes; a column the
    reals carry too (``history``; a version-3 ``family``, which a real takes from its partner)
    compares the reals and fakes of that value with each other."""
    values = np.asarray(values, dtype=object)
    if not any(values[labels == 0]):
        return per_generator(prob, labels, list(values), threshold)
    out = {}
    for v in sorted({v for v in values if v}):
        sel = values == v
        out.update(per_generator(prob[sel], labels[sel], list(values[sel]), threshold))
    return out


def select_samples(samples: list[Sample], split: str | None) -> tuple[list[Sample], str]:
    """The samples of ``split`` as the data names them; ``None``/``auto``: test when the data has one,
    else all."""
    if split in (None, "auto"):
        split = "test" if any(s.split == "test" for s in samples) else "all"
    if split == "all":
        return samples, split
    chosen = [s for s in samples if s.split == split]
    if not chosen:
        raise ValueError(f"--split {split}: no images in that split (the data names: "
                         f"{', '.join(sorted({s.split for s in samples if s.split})) or 'none'})")
    return chosen, split


def fit_threshold(samples: list[Sample], degrade: Degradation, target_fpr: float, max_pixels: int,
                  progress: Callable[[int], None] | None = None) -> tuple[float, int]:
    """The score at which at most ``target_fpr`` of the validation reals are called fake (as
    ``glassdetect calibrate --target-fpr`` sets a checkpoint's threshold), and how many reals set it;
    (0.5, 0) when the data has no validation reals."""
    reals = [s for s in samples if s.split == "val" and s.label == 0]
    if not reals:
        return 0.5, 0
    _, scores, _ = score_samples(reals, degrade, max_pixels, progress)
    return (threshold_for_fpr(scores, target_fpr), len(scores)) if len(scores) else (0.5, 0)


def _write(out: Path, result: dict, samples: list[Sample], idx: list[int], prob: np.ndarray,
           class_names: Sequence[str], title: str) -> None:
    from .curves import write_plots

    labels = np.array([samples[i].label for i in idx], dtype=int)
    out.parent.mkdir(parents=True, exist_ok=True)
    result["plots"] = write_plots(prob, labels, out, result["threshold"], title=title)
    out.write_text(json.dumps(result, indent=2))
    with open(out.with_suffix(".predictions.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "group", "generator", "family", "history", "fake_probability"])
        for j, i in enumerate(idx):
            s = samples[i]
            w.writerow([s.path, class_names[s.label], s.group, s.generator, s.family, s.history, f"{prob[j]:.6f}"])


def evaluate_reference(
    data: str | Path,
    split: str | None = "test",
    out: str | Path | None = None,
    degrade: str | None = None,
    threshold: float | None = None,
    target_fpr: float = 0.1,
    class_names: Sequence[str] = ("real", "fake"),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Score ``split`` of ``data`` with the reference detector -> ``glassdetect evaluate``'s metrics.

    The accuracies are at ``threshold``; ``None``: fitted on the data's validation reals for
    ``target_fpr`` (so they compare with a checkpoint calibrated the same way), 0.5 without any.
    ``out``: write the JSON there, the plots beside it and ``OUT.predictions.csv``.
    """
    try:
        deg = parse_degradation(degrade)
    except ValueError as exc:
        raise ValueError(f"degrade {degrade!r}: {exc}") from None
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"target false-positive rate must be in [0, 1), got {target_fpr}")
    everything = load_samples(data, class_names)
    samples, split = select_samples(everything, split)
    fitted_on = 0
    if threshold is None:
        threshold, fitted_on = fit_threshold(everything, deg, target_fpr, max_pixels)
    t0 = time.perf_counter()
    idx, prob, errors = score_samples(samples, deg, max_pixels, progress)
    seconds = time.perf_counter() - t0
    labels = np.array([samples[i].label for i in idx], dtype=int)
    result = binary_metrics(prob, labels, threshold)
    result.update(split=split, degrade=deg.name, draws=1, mean_spread=0.0, max_spread=0.0, seed=0,
                  checkpoint=None, data=str(data), arch=ARCH, backbone=None, k=None, errors=errors,
                  seconds=seconds, seconds_per_image=seconds / max(len(samples), 1), device="cpu")
    if fitted_on:
        result.update(target_fpr=target_fpr, threshold_fitted_on=f"{fitted_on} validation reals")
    for name in GROUPINGS:
        values = [getattr(samples[i], name) for i in idx]
        if any(values):
            result[f"per_{name}"] = per_value(prob, labels, values, threshold)
    if out is not None:
        _write(Path(out), result, samples, idx, prob, class_names, f"{ARCH} · {split}")
    return result
