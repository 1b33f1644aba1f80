"""The backbone factory: a timm (or torchvision) name in, a pooled-feature extractor and its metadata out.

Where weights come from is decided here and only here (timm's own pretrained source when
online, a local ``.safetensors``/``.pth`` file with timm's or torchvision's key names, a named
offline source, or none); the model code never cares. The data config (mean, std,
interpolation) comes from the weights' own pretrained config (torchvision's for torchvision
names and files) and travels in the model config, never as a global constant.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from .torchvision_weights import TORCHVISION_DATA_CONFIG, TorchvisionModel, convert_state_dict, detect_family, resolve_name

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
    name: str = ""  # the timm model built (a torchvision name resolved, e.g. tv:vit_b_16 -> vit_base_patch16_224)


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
    """Create backbone ``name`` without its classifier (global-pooled features).

    ``name``: a timm model name (a pretrained tag such as ``resnet50.tv_in1k`` included), or a
    torchvision name: ``tv:resnet50``, ``tv:convnext_tiny``, ``tv:vit_b_16``, ... or a bare
    torchvision-only name such as ``vit_b_16`` (:mod:`glassdetect.models.torchvision_weights`);
    these build timm's architecture with torchvision's data config, and with ``pretrained``
    timm's copy of torchvision's weights where timm has one.
    ``weights``: a local file (timm's or torchvision's key names), or ``offline:<source>`` (see
    :mod:`glassdetect.models.offline_weights`); it takes precedence over ``pretrained`` (timm's
    own source, needs a model hub).
    """
    tv = resolve_name(name)
    arch = tv.timm_model if tv is not None else name
    if weights is not None:
        weights = str(weights)
        if weights.startswith(OFFLINE_PREFIX):
            model, kwargs, data_cfg = _offline_model(arch, weights[len(OFFLINE_PREFIX):], kwargs)
        else:
            model, kwargs, data_cfg = _file_model(arch, Path(weights), tv, kwargs)
        origin = weights
    else:
        if pretrained and tv is not None and tv.timm_tag is None:
            raise ValueError(
                f"{name}: timm holds no copy of torchvision's weights for {tv.name}; pass the torchvision "
                f"state-dict file (e.g. the one torchvision.models.{tv.name}(weights='IMAGENET1K_V1') downloads) "
                f"with --weights FILE, or use --no-pretrained")
        model = timm.create_model(arch, pretrained=pretrained, num_classes=0, **kwargs)
        origin = "timm" if pretrained else "random"
        data_cfg = None
    if data_cfg is None:
        data_cfg = dict(TORCHVISION_DATA_CONFIG) if tv is not None else timm.data.resolve_model_data_config(model)
    return Backbone(
        module=model,
        num_features=int(model.num_features),
        mean=tuple(float(v) for v in data_cfg["mean"]),
        std=tuple(float(v) for v in data_cfg["std"]),
        interpolation=str(data_cfg.get("interpolation", "bicubic")),
        weights=origin,
        create_kwargs=dict(kwargs),
        name=arch,
    )


def _offline_model(name: str, source: str, kwargs: dict) -> tuple[nn.Module, dict, dict | None]:
    """(model with the weights of offline source ``source``, its create kwargs, its data config)."""
    from .offline_weights import (
        OFFLINE_WEIGHTS, check_offline_architecture, ensure_offline_weights, offline_create_kwargs,
        offline_data_config,
    )

    if source not in OFFLINE_WEIGHTS:
        raise ValueError(f"unknown offline weights {source!r}; known: {', '.join(sorted(OFFLINE_WEIGHTS))}")
    if OFFLINE_WEIGHTS[source].architecture != name:
        raise ValueError(f"offline weights {source!r} are for {OFFLINE_WEIGHTS[source].architecture!r}, not {name!r}")
    kwargs = {**offline_create_kwargs(source), **kwargs}
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    check_offline_architecture(model, source)
    path = ensure_offline_weights(source)
    load_backbone_weights(model, read_state_dict(path), str(path))
    return model, kwargs, offline_data_config(source)


def _file_model(name: str, path: Path, tv: TorchvisionModel | None, kwargs: dict) -> tuple[nn.Module, dict, dict | None]:
    """(model with the weights of file ``path``, its create kwargs, its data config or None).

    A file with torchvision's key names (ConvNeXt, ViT; a ResNet's are timm's already) is
    converted to timm's and gets torchvision's data config.
    """
    kwargs, data_cfg = _file_provenance(path, name, kwargs)
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    sd = read_state_dict(path)
    family = detect_family(sd)
    if family is not None:
        if tv is not None and tv.family != family:
            raise ValueError(f"{path}: a torchvision {family} state dict, not weights for {tv.name} ({tv.family})")
        sd = convert_state_dict(sd, family, str(path))
        data_cfg = data_cfg or dict(TORCHVISION_DATA_CONFIG)
    load_backbone_weights(model, sd, str(path))
    return model, kwargs, data_cfg


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


def truncate_backbone(module: nn.Module, depth: int, name: str = "") -> int:
    """Cut a headless timm backbone after its first ``depth`` feature levels, in place, and keep its
    global pooling: ``module(x)`` then gives the pooled features of level ``depth`` (timm's
    ``feature_info``; EfficientNet-Lite0: 16/24/40/112/320 channels at strides 2-32). The layers after
    it (and a final norm or 1×1 head convolution) are removed, so the parameters they held are gone
    from the state dict; the names of the rest stay as they were, and so do the parameter groups
    ``freeze`` counts. Returns the new feature width."""
    from timm.layers import SelectAdaptivePool2d

    levels = len(getattr(module, "feature_info", []) or [])
    if not hasattr(module, "prune_intermediate_layers") or not levels:
        raise ValueError(f"backbone {name or type(module).__name__}: timm cannot truncate it (no feature levels)")
    if not 1 <= depth <= levels:
        raise ValueError(f"backbone {name or type(module).__name__}: local_depth {depth} is not one of its "
                         f"feature levels 1-{levels}")
    pool = getattr(module, "global_pool", None)
    if not isinstance(pool, str):  # a convnet's pooling layer; a ViT names its pooling as a string
        pool = next((m.pool_type for m in module.modules() if isinstance(m, SelectAdaptivePool2d)), "avg")
    module.prune_intermediate_layers([depth - 1], prune_norm=True, prune_head=True)
    module.reset_classifier(0, pool or "avg")  # pruning drops the pooling with the head: pooled features again
    return int(module.feature_info[depth - 1]["num_chs"])
