"""ONNX export of the model part: uint8 views in; logits, attention and per-crop logits out.

Inputs
    ``global_view`` uint8 (B, 3, S, S) and, for GLASS, ``crops`` uint8 (B, K, 3, P, P): exactly
    what :func:`glassdetect.inference.api.prepare` builds (B and K are dynamic; one K per call, so run
    images with different crop counts — ``grid`` mode — separately).
Outputs
    ``logits`` (B, C) — already divided by the checkpoint's temperature, so
    ``softmax(logits)[:, -1]`` is the calibrated fake probability; ``attention`` (B, K);
    ``crop_logits`` (B, K, C) — each crop's own logits (see :mod:`glassdetect.inference.api`), also
    temperature-scaled. The resize-only baseline has ``global_view`` only and returns an empty
    attention (B, 0) and no crop logits.

Normalisation happens inside the graph. The model config, view spec, threshold and unsure band
travel in the ONNX metadata (``glassdetect.config``), so a runtime can cut the same views.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..models.decision import scale_logits
from ..fsutil import atomic_path
from ..pipeline import run_model


class _GlassGraph(nn.Module):
    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(self, global_view: torch.Tensor, crops: torch.Tensor):
        out = run_model(self.model, global_view, crops, crop_scores=True)
        return scale_logits(out.logits, self.temperature), out.attention, scale_logits(out.crop_logits, self.temperature)


class _StandardGraph(nn.Module):
    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(self, global_view: torch.Tensor):
        out = run_model(self.model, global_view)
        return scale_logits(out.logits, self.temperature), out.attention


def export_onnx(model_or_checkpoint: Any, out: str | Path, opset: int = 17, check: bool = True) -> Path:
    """Write the model as ONNX (legacy TorchScript exporter: needs no onnxscript); returns ``out``."""
    from .api import Detector
    from ..models import load_checkpoint

    meta: dict = {}
    if isinstance(model_or_checkpoint, Detector):
        model, meta = model_or_checkpoint.model, model_or_checkpoint.meta
    elif isinstance(model_or_checkpoint, nn.Module):
        model = model_or_checkpoint
    else:
        model, meta = load_checkpoint(model_or_checkpoint, "cpu")
    if any(t.device.type != "cpu" for t in model.parameters()):
        model = copy.deepcopy(model).to("cpu")  # export on the CPU without moving the caller's model
    model = model.eval()
    cfg = model.cfg
    glass = cfg.arch == "glass"
    graph = (_GlassGraph if glass else _StandardGraph)(model, cfg.temperature).eval()
    s, p = cfg.global_size, cfg.patch
    g = torch.randint(0, 256, (2, 3, s, s), dtype=torch.uint8)
    args: tuple = (g, torch.randint(0, 256, (2, max(cfg.k, 2), 3, p, p), dtype=torch.uint8)) if glass else (g,)
    inputs = ["global_view", "crops"] if glass else ["global_view"]
    outputs = ["logits", "attention", "crop_logits"] if glass else ["logits", "attention"]
    axes: dict[str, dict[int, str]] = {"global_view": {0: "batch"}, "logits": {0: "batch"}, "attention": {0: "batch"}}
    if glass:
        axes.update(crops={0: "batch", 1: "crops"}, attention={0: "batch", 1: "crops"},
                    crop_logits={0: "batch", 1: "crops"})
    out = Path(out)
    try:
        with atomic_path(out) as tmp:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
                torch.onnx.export(graph, args, str(tmp), dynamo=False, input_names=inputs, output_names=outputs,
                                  dynamic_axes=axes, opset_version=opset, do_constant_folding=True)
            _add_metadata(tmp, cfg, meta)
            if check:
                import onnx

                onnx.checker.check_model(str(tmp))
    finally:
        model.eval()
    return out


def _add_metadata(path: Path, cfg, meta: dict) -> None:
    try:
        import onnx
    except ImportError:  # metadata is a convenience; the graph is complete without it
        return
    m = onnx.load(str(path))
    spec = cfg.view_spec()
    props = {
        "glassdetect.version": __version__,
        "glassdetect.config": json.dumps(cfg.to_dict(), default=str),
        "glassdetect.view_spec": json.dumps(dataclasses.asdict(spec)),
        "glassdetect.outputs": "logits and crop_logits are divided by the temperature; fake = class index -1",
        "glassdetect.class_names": ",".join(cfg.class_names),
        "glassdetect.threshold": str(cfg.threshold),
        "glassdetect.unsure_band": "" if cfg.unsure_band is None else ",".join(map(str, cfg.unsure_band)),
        "glassdetect.temperature": str(cfg.temperature),
    }
    if "calibration" in meta:
        props["glassdetect.calibration"] = json.dumps(meta["calibration"], default=str)
    del m.metadata_props[:]
    for k, v in props.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = k, v
    m.doc_string = "glassdetect model: uint8 views in, temperature-scaled logits and crop attention out"
    onnx.save(m, str(path))
