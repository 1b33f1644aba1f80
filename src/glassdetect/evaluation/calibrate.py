"""Calibration: temperature scaling on validation data, and the decision rule, stored in the checkpoint.

Temperature scaling divides the logits by one scalar T > 0 fitted to minimise the negative
log-likelihood of held-out labels (LBFGS on log T). It changes confidence, never the ranking
(AUC) nor the argmax. The result, the decision threshold and an optional "unsure" band are
written into the checkpoint's ``config.json`` (``model.temperature``, ``model.threshold``,
``model.unsure_band``; notes under ``calibration``). Only ``config.json`` is rewritten, atomically
(temporary file + rename); the weights file is never touched.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..models.decision import fake_probability_np, log_softmax_np
from ..fsutil import write_text_atomic

T_MIN, T_MAX = 0.01, 100.0


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / T)."""
    logp = log_softmax_np(logits, temperature)
    return float(-logp[np.arange(len(labels)), np.asarray(labels, dtype=int)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> float:
    """The T minimising :func:`nll` (LBFGS on log T, clamped to [0.01, 100])."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    t = float(log_t.detach().exp())
    if not np.isfinite(t):
        return 1.0
    return float(min(max(t, T_MIN), T_MAX))


def update_checkpoint_config(checkpoint: str | Path, model_changes: dict[str, Any],
                             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rewrite ``checkpoint/config.json`` with ``model_changes`` applied, atomically; returns the new config."""
    from ..models import ModelConfig
    from ..models.factory import CONFIG_NAME

    path = Path(checkpoint) / CONFIG_NAME
    meta = json.loads(path.read_text())
    meta["model"].update(model_changes)
    ModelConfig.from_dict(meta["model"])  # validate before writing anything
    meta.update(extra or {})
    write_text_atomic(path, json.dumps(meta, indent=2, default=str), mode=path.stat().st_mode & 0o777)
    return meta


def threshold_for_fpr(prob_real: np.ndarray, target_fpr: float) -> float:
    """A threshold (decision: fake when the probability is at or above it) that calls at most
    ``floor(target_fpr * n)`` of these real images fake: halfway between the highest real
    probability it must let through and the next higher one (or 1), so that the rounding of
    another path's float32 probabilities cannot move an image across it."""
    r = np.sort(np.asarray(prob_real, dtype=np.float64))[::-1]
    if not len(r):
        raise ValueError("no real images to set a threshold on")
    allowed = int(np.floor(target_fpr * len(r) + 1e-9))
    if allowed >= len(r):
        return 0.0
    above = r[:allowed][r[:allowed] > r[allowed]]
    upper = float(above.min()) if len(above) else 1.0
    return float((r[allowed] + upper) / 2)


def calibrate(
    checkpoint: str | Path,
    data: str | Path | None = None,
    split: str | None = "val",
    threshold: float | None = None,
    unsure: str | Sequence[float] | None | bool = False,
    batch_size: int = 16,
    workers: int = 2,
    device: str = "auto",
    threads: int = 0,
    seed: int = 0,
    progress: bool = True,
    dry_run: bool = False,
    target_fpr: float | None = None,
) -> dict[str, Any]:
    """Fit the temperature on ``data`` (its ``split``) and/or set the decision rule; update the checkpoint.

    ``unsure``: ``"lo,hi"`` to set a band, None to remove it, False to leave it as it is.
    ``target_fpr``: choose the threshold from the *real* images of ``data`` so that at most this
    fraction of them is called fake (with the fitted temperature); exclusive with ``threshold``.
    Returns a report: n, temperature before/after, NLL and ECE before/after (and the threshold's
    false-positive rate on ``data`` with ``target_fpr``).
    """
    from ..models.decision import parse_band
    from ..models import ModelConfig, read_config
    from .evaluate import refresh_cached

    checkpoint = Path(checkpoint)
    meta = read_config(checkpoint)
    cfg = ModelConfig.from_dict(meta["model"])
    changes: dict[str, Any] = {}
    report: dict[str, Any] = {"checkpoint": str(checkpoint), "temperature_before": cfg.temperature}
    if target_fpr is not None:
        if threshold is not None:
            raise ValueError("give either a threshold or a target false-positive rate, not both")
        if data is None:
            raise ValueError("a target false-positive rate needs --data with real images to set the threshold on")
        if not 0.0 <= target_fpr < 1.0:
            raise ValueError(f"target false-positive rate must be in [0, 1), got {target_fpr}")
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        changes["threshold"] = float(threshold)
    if unsure is not False:
        band = parse_band(unsure)
        changes["unsure_band"] = None if band is None else list(band)
    extra: dict[str, Any] = {}
    if data is not None:
        fit = _fit_on_data(checkpoint, data, split, batch_size, workers, device, threads, seed, progress)
        prob_real = fit.pop("prob_real")
        if target_fpr is not None:
            changes["threshold"] = threshold_for_fpr(prob_real, target_fpr)
            fit.update(target_fpr=target_fpr, n_real=int(len(prob_real)),
                       fpr=float((prob_real >= changes["threshold"]).mean()) if len(prob_real) else None)
        changes["temperature"] = fit["temperature_after"]
        report.update(fit)
        extra["calibration"] = {k: v for k, v in fit.items() if k != "temperature_before"}
        extra["calibration"]["fitted_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    elif not changes:
        raise ValueError("nothing to do: give --data to fit the temperature, or --threshold / --unsure")
    report.update(threshold=changes.get("threshold", cfg.threshold),
                  unsure_band=changes.get("unsure_band", list(cfg.unsure_band) if cfg.unsure_band else None),
                  temperature_after=changes.get("temperature", cfg.temperature), written=not dry_run)
    if not dry_run:
        update_checkpoint_config(checkpoint, changes, extra)
        refresh_cached(checkpoint)  # an evaluation that follows reuses the model (and its CPU graphs)
    return report


def _fit_on_data(checkpoint: Path, data, split, batch_size, workers, device, threads, seed, progress) -> dict[str, Any]:
    from tqdm import tqdm

    from ..data.splits import load_samples
    from .evaluate import load_cached, select_split
    from .metrics import expected_calibration_error
    from ..pipeline import ViewDataset, infer, make_loader
    from ..runtime import resolve_device, torch_threads

    dev = resolve_device(device)
    model, _ = load_cached(checkpoint, dev)  # shared with evaluate: its graphs are built once
    t_before = float(model.cfg.temperature)
    samples, split = select_split(load_samples(data, model.cfg.class_names), checkpoint, split)
    bar = tqdm(total=len(samples), desc="calibrate", unit="img", disable=not progress, leave=False)
    model.cfg.temperature = 1.0  # raw logits
    try:
        with torch_threads(threads):  # for this call only: the caller's thread count comes back
            preds = infer(model, make_loader(ViewDataset(samples, model.cfg.view_spec(), seed=seed), batch_size,
                                             workers, device=dev), dev, progress=bar.update)
    finally:
        model.cfg.temperature = t_before  # the cached model stays the checkpoint's
    bar.close()
    labels = np.array([samples[i].label for i in preds.index], dtype=int)
    if len(labels) < 2 or len(set(labels.tolist())) < 2:
        raise ValueError(f"calibration needs images of every class in split {split!r}; got {len(labels)} usable "
                         f"image(s) with labels {sorted(set(labels.tolist()))}")
    logits = preds.logits.astype(np.float64)
    t_after = fit_temperature(logits, labels)
    return {
        "prob_real": fake_probability_np(logits, t_after)[labels == 0],
        "data": str(data), "split": split, "n": int(len(labels)), "errors": len(preds.errors),
        "temperature_before": t_before, "temperature_after": t_after,
        "nll_before": nll(logits, labels, t_before), "nll_after": nll(logits, labels, t_after),
        "ece_before": expected_calibration_error(fake_probability_np(logits, t_before), labels),
        "ece_after": expected_calibration_error(fake_probability_np(logits, t_after), labels),
    }
