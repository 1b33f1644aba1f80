"""From logits to a verdict: temperature scaling, the fake-class probability and the decision rule.

The one place that says what a checkpoint's ``temperature``, ``threshold`` and ``unsure_band``
mean; inference (:mod:`glassdetect.runtime`, :mod:`glassdetect.inference.api`), calibration
(:mod:`glassdetect.evaluation.calibrate`) and the ONNX graph (:mod:`glassdetect.inference.export`) all go through it.

* The calibrated logits are ``logits / T`` (:func:`scale_logits`).
* The fake probability is ``softmax(logits / T)[..., -1]``: the last class is the positive
  ("fake") one (:func:`fake_probability` for torch tensors, in float32;
  :func:`fake_probability_np` for numpy arrays, in float64).
* The decision is ``unsure`` inside the band (inclusive), else the positive class at or above
  the threshold, else the negative class (:func:`decide`).

Importing this module does not import torch: the torch functions only use tensor methods.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch


def scale_logits(logits: "torch.Tensor", temperature: float) -> "torch.Tensor":
    """The calibrated logits ``logits / T`` (same dtype; traceable, so the ONNX graph uses it too)."""
    return logits / float(temperature)


def fake_probability(logits: "torch.Tensor", temperature: float = 1.0) -> "torch.Tensor":
    """``softmax(logits / T)[..., -1]`` computed in float32: (..., C) logits -> (...) probabilities."""
    return scale_logits(logits.float(), temperature).softmax(-1)[..., -1]


def _shifted(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    return z - z.max(axis=-1, keepdims=True)


def log_softmax_np(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``log softmax(logits / T)`` over the last axis, in float64 (numerically stable)."""
    z = _shifted(logits, temperature)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def fake_probability_np(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """:func:`fake_probability` for numpy arrays, in float64 (numerically stable)."""
    e = np.exp(_shifted(logits, temperature))
    return e[..., -1] / e.sum(axis=-1)


def decide(probability: float, threshold: float, unsure_band: Sequence[float] | None, class_names: Sequence[str]) -> str:
    """``unsure`` inside the band (inclusive), else the positive class at or above ``threshold``."""
    if unsure_band is not None and unsure_band[0] <= probability <= unsure_band[1]:
        return "unsure"
    return class_names[-1] if probability >= threshold else class_names[0]


def parse_band(text: str | Sequence[float] | None) -> tuple[float, float] | None:
    """``"0.4,0.6"`` -> (0.4, 0.6); ``"none"``/``""``/None -> None."""
    if text is None:
        return None
    if isinstance(text, str):
        if text.strip().lower() in ("", "none", "off"):
            return None
        parts = [p.strip() for p in text.split(",")]
    else:
        parts = list(text)
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"an unsure band is two probabilities 'lo,hi', got {text!r}") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"an unsure band needs 0 <= lo <= hi <= 1, got {text!r}")
    return lo, hi
