"""The backbone factory: a timm name in, a pooled-feature extractor and its metadata out.

Where weights come from is decided here and only here (timm's own pretrained source when
online, a local ``.safetensors``/``.pth`` file, a named offline source, or none); the model
code never cares. The data config (mean, std, interpolation) comes from the weights' own
pretrained config and travels in the model config, never as a global constant.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

OFFLINE_PREFIX = "offline:"


@dataclass(frozen=True)
class Backbone:
    module: nn.Module  # images (N, 3, H, W) normalised float -> features (N, num_features)
    num_features: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    weights: str  # where the weights came from: "timm", "random", a file path or an offline source
    create_kwargs: dict  # timm.create_model kwargs needed to rebuild this architecture


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file, or a ``.pth``/``.pt``/``.bin`` loaded with ``weights_only=True``.

    Never unpickles arbitrary objects. Common wrappers (``state_dict``, ``model``) and DDP
    ``module.`` prefixes are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - unsafe or corrupt pickles land here
            raise ValueError(f"{path}: cannot load as a weights-only checkpoint ({exc})") from None
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(sd, dict) and isinstance(sd.get(key), dict):
                sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: does not contain a flat dict of tensors")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_backbone_weights(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Load a full-model (timm key names) state dict into a headless timm model.

    Classifier weights in the file are ignored; any other missing, unexpected or mis-shaped key
    is an error naming the file.
    """
    own = model.state_dict()
    classifier = model.pretrained_cfg.get("classifier", "") if hasattr(model, "pretrained_cfg") else ""
    heads = tuple(c for c in ([classifier] if isinstance(classifier, str) else list(classifier)) if c)
    sd = {k: v for k, v in sd.items() if not (heads and k.startswith(heads) and k not in own)}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or unexpected or shapes:
        raise ValueError(
            f"{source}: weights do not fit this backbone — missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}, wrong shape {shapes[:5]}"
        )
    model.load_state_dict(sd, strict=True)


def create_backbone(
    name: str,
    pretrained: bool = True,
    weights: str | Path | None = None,
    **kwargs,
) -> Backbone:
    """Create timm model ``name`` without its classifier (global-pooled features).

    ``weights``: a local file, or ``offline:<source>`` (see :mod:`glassdetect.models.offline_weights`);
    it takes precedence over ``pretrained`` (timm's own source, needs a model hub).
    """
    data_cfg: dict | None = None
    if weights is not None:
        weights = str(weights)
        if weights.startswith(OFFLINE_PREFIX):
            from .offline_weights import (
                OFFLINE_WEIGHTS, check_offline_architecture, ensure_offline_weights, offline_create_kwargs,
                offline_data_config,
            )

            source = weights[len(OFFLINE_PREFIX):]
            if source not in OFFLINE_WEIGHTS:
                raise ValueError(f"unknown offline weights {source!r}; known: {', '.join(sorted(OFFLINE_WEIGHTS))}")
            if OFFLINE_WEIGHTS[source].architecture != name:
                raise ValueError(f"offline weights {source!r} are for {OFFLINE_WEIGHTS[source].architecture!r}, not {name!r}")
            kwargs = {**offline_create_kwargs(source), **kwargs}
            model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
            check_offline_architecture(model, source)
            path = ensure_offline_weights(source)
            data_cfg = offline_data_config(source)
        else:
            path = Path(weights)
            kwargs, data_cfg = _file_provenance(path, name, kwargs)
            model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        load_backbone_weights(model, read_state_dict(path), str(path))
        origin = weights
    else:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
        origin = "timm" if pretrained else "random"
    if data_cfg is None:
        data_cfg = timm.data.resolve_model_data_config(model)
    return Backbone(
        module=model,
        num_features=int(model.num_features),
        mean=tuple(float(v) for v in data_cfg["mean"]),
        std=tuple(float(v) for v in data_cfg["std"]),
        interpolation=str(data_cfg.get("interpolation", "bicubic")),
        weights=origin,
        create_kwargs=dict(kwargs),
    )


def _file_provenance(path: Path, name: str, kwargs: dict) -> tuple[dict, dict | None]:
    """Architecture kwargs and data config recorded in a converted ``.safetensors`` file.

    Files written by :func:`glassdetect.models.offline_weights.ensure_offline_weights` carry the
    timm architecture and the create kwargs their weights need (e.g. TF "same" padding); without
    them the weights would load but compute something else, so they are applied here.
    """
    if path.suffix != ".safetensors" or not path.is_file():
        return kwargs, None
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata() or {}
    if "architecture" not in meta:
        return kwargs, None
    if meta["architecture"] != name:
        raise ValueError(f"{path}: weights are for {meta['architecture']!r}, not {name!r}")
    import json

    kwargs = {**json.loads(meta.get("create_kwargs", "{}")), **kwargs}
    data_cfg = None
    source = meta.get("source", "")
    from .offline_weights import OFFLINE_WEIGHTS, offline_data_config

    if source in OFFLINE_WEIGHTS:
        data_cfg = offline_data_config(source)
    return kwargs, data_cfg


def is_convnet(module: nn.Module) -> bool:
    """True when the model has no attention blocks — then channels_last is the faster layout."""
    return not any(isinstance(m, nn.MultiheadAttention) or hasattr(m, "qkv") for m in module.modules())
