"""One door in: build a model from a config, save it as a directory, load it back safely.

A checkpoint is a directory::

    model.safetensors   weights (no pickle)
    config.json         {"model": ModelConfig, "train": {...}, "format": 1, "glassdetect": version}

``load_checkpoint`` rebuilds the architecture from the config alone (no hub access, no
pretrained download) and loads the weights strictly.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .. import __version__
from ..fsutil import atomic_dir
from .backbones import create_backbone, is_convnet, truncate_backbone
from .common import local_preprocess
from .config import ModelConfig
from .glass import GLASS
from .standard import StandardClassifier

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


def create_model(cfg: ModelConfig, pretrained: bool = False, weights: str | Path | None = None) -> nn.Module:
    """Build GLASS or the baseline for ``cfg``.

    The model's own config (``model.cfg``) is a copy of ``cfg`` with the data fields (features,
    normalisation, layout, weight provenance, backbone kwargs) filled from the backbone, the
    interpolation too unless ``cfg`` sets one, and a torchvision name (``tv:vit_b_16``) replaced
    by the timm model built; the caller's ``cfg`` is left as it is.
    """
    cfg = replace(cfg, backbone_kwargs=dict(cfg.backbone_kwargs))
    first = create_backbone(cfg.backbone, pretrained=pretrained, weights=weights, **cfg.backbone_kwargs)
    cfg.backbone = first.name or cfg.backbone
    cfg.num_features = cfg.local_features = first.num_features
    cfg.mean, cfg.std = first.mean, first.std
    cfg.interpolation = cfg.interpolation or first.interpolation  # None: the weights' own
    cfg.channels_last = is_convnet(first.module)
    cfg.weights = first.weights
    cfg.backbone_kwargs = dict(first.create_kwargs)
    if cfg.arch == "standard":
        model: nn.Module = StandardClassifier(cfg, first.module)
    elif cfg.shared_backbone:
        model = GLASS(cfg, first.module)
    else:
        second = create_backbone(cfg.backbone, pretrained=pretrained, weights=weights, **first.create_kwargs)
        if cfg.local_depth:
            cfg.local_features = truncate_backbone(second.module, cfg.local_depth, cfg.backbone)
        model = GLASS(cfg, first.module, second.module)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _rebuild(cfg: ModelConfig) -> nn.Module:
    """The architecture of a saved model, with random weights, keeping the saved data config."""
    model = create_model(cfg, pretrained=False)
    built = model.cfg
    for name in ("mean", "std", "interpolation", "channels_last", "weights", "num_features"):
        setattr(built, name, getattr(cfg, name))
    model.prep.__init__(built.mean, built.std, built.channels_last)  # saved normalisation wins
    if isinstance(model, GLASS):  # the crops' preprocessing follows the saved layout too
        model.local_prep = local_preprocess(built.local_input, model.prep)
    return model


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    extra: dict[str, Any] | None = None,
    write_extra: Callable[[Path], None] | None = None,
    config: ModelConfig | None = None,
) -> Path:
    """Write ``model`` (weights + config) to ``directory`` atomically (temp dir, then rename).

    ``write_extra(tmp_dir)`` may add files (e.g. trainer state) before the directory appears.
    ``config``: save this config instead of ``model.cfg`` (same architecture; e.g. another decision
    rule), leaving the model's own config as it is.
    """
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        tensors = _dedup_state(_unwrap(model))
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        cfg = config if config is not None else _unwrap(model).cfg
        meta = {"format": FORMAT_VERSION, "glassdetect": __version__, "model": cfg.to_dict()}
        meta.update(extra or {})
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2, default=str))
        if write_extra is not None:
            write_extra(tmp)
        for f in tmp.iterdir():
            f.chmod(0o644)
        tmp.chmod(0o755)
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a glassdetect checkpoint (no {CONFIG_NAME})")
    return json.loads(path.read_text())


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild and load a checkpoint directory. Returns (model in eval mode, full config dict)."""
    directory = Path(directory)
    meta = read_config(directory)
    cfg = ModelConfig.from_dict(meta["model"])
    model = _rebuild(cfg)
    load_weights(model, directory / WEIGHTS_NAME)
    model.eval()
    return model.to(map_location), meta


def _dedup_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with each storage once (a shared backbone appears under two names), contiguous."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple] = set()
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().contiguous()
    return out


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Strictly load a safetensors file written by :func:`save_checkpoint` into ``model``."""
    tensors = load_file(str(path))
    expected = _dedup_state(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the config — missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(tensors, strict=False)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and not hasattr(model, "cfg") else model
