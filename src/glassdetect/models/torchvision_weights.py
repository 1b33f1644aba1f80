"""torchvision's backbones by their own names, and torchvision state-dict files loaded into timm models.

The paper names its backbones as torchvision does (``resnet50``, ``convnext_tiny``, ``vit_b_16``,
with torchvision's ImageNet-1k weights). glassdetect builds every backbone with timm, so here:

* :func:`resolve_name` maps ``tv:<torchvision name>`` (and a torchvision-only name such as
  ``vit_b_16``) to the timm architecture, and to the timm tag that holds a copy of
  torchvision's weights where timm has one (``resnet50`` -> ``resnet50.tv_in1k``);
* :func:`convert_state_dict` renames the keys of a torchvision ``state_dict`` file (ResNet,
  ConvNeXt, ViT) to timm's, so that the timm model computes what the torchvision model computes.

A plain ``resnet50`` or ``convnext_tiny`` stays timm's model with timm's default weights: both
libraries use these names, and the default must not change under old command lines.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

TV_PREFIX = "tv:"
# torchvision's ImageNet-1k eval transforms (ImageClassification): bilinear resize, ImageNet statistics.
TORCHVISION_DATA_CONFIG: dict = {
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "interpolation": "bilinear",
    "input_size": (3, 224, 224),
}


@dataclass(frozen=True)
class TorchvisionModel:
    name: str  # torchvision's builder name
    timm_name: str  # the same architecture in timm
    family: str  # "resnet", "convnext" or "vit": which key conversion applies
    timm_tag: str | None = None  # timm's copy of torchvision's IMAGENET1K_V1 weights, when timm has one

    @property
    def timm_model(self) -> str:
        """What ``timm.create_model`` gets: the tagged name when timm holds torchvision's weights."""
        return f"{self.timm_name}.{self.timm_tag}" if self.timm_tag else self.timm_name


TORCHVISION_MODELS: dict[str, TorchvisionModel] = {
    m.name: m
    for m in (
        *(TorchvisionModel(f"resnet{d}", f"resnet{d}", "resnet", "tv_in1k") for d in (18, 34, 50, 101, 152)),
        *(TorchvisionModel(f"convnext_{s}", f"convnext_{s}", "convnext") for s in ("tiny", "small", "base", "large")),
        TorchvisionModel("vit_b_16", "vit_base_patch16_224", "vit"),
        TorchvisionModel("vit_b_32", "vit_base_patch32_224", "vit"),
        TorchvisionModel("vit_l_16", "vit_large_patch16_224", "vit"),
        TorchvisionModel("vit_l_32", "vit_large_patch32_224", "vit"),
    )
}


def resolve_name(name: str) -> TorchvisionModel | None:
    """The torchvision model ``name`` asks for, or None for a timm name.

    ``tv:<name>`` always means torchvision's model (an unknown one is an error listing the known
    ones); a bare name means torchvision's only when timm does not know it (``vit_b_16``).
    """
    if name.startswith(TV_PREFIX):
        tv = name[len(TV_PREFIX):]
        if tv not in TORCHVISION_MODELS:
            raise ValueError(f"unknown torchvision backbone {name!r}; known: "
                             + ", ".join(TV_PREFIX + n for n in TORCHVISION_MODELS))
        return TORCHVISION_MODELS[tv]
    if name in TORCHVISION_MODELS:
        import timm

        if not timm.is_model(name):
            return TORCHVISION_MODELS[name]
    return None


def detect_family(sd: dict[str, torch.Tensor]) -> str | None:
    """``"convnext"`` or ``"vit"`` when ``sd`` has torchvision's key names for that family, else None.

    A torchvision ResNet has timm's key names already, so it needs no detection (nor conversion).
    """
    if "conv_proj.weight" in sd and "class_token" in sd and any(k.startswith("encoder.layers.") for k in sd):
        return "vit"
    if "features.0.0.weight" in sd and any(re.match(r"features\.1\.\d+\.block\.0\.weight$", k) for k in sd):
        return "convnext"
    return None


def convert_state_dict(sd: dict[str, torch.Tensor], family: str, source: str = "<state dict>") -> dict[str, torch.Tensor]:
    """A torchvision ``state_dict`` of ``family`` with timm's key names (classifier included).

    Raises ValueError naming ``source`` for a key with no timm counterpart.
    """
    if family == "resnet":
        return dict(sd)
    rename = {"convnext": _convnext_key, "vit": _vit_key}.get(family)
    if rename is None:
        raise ValueError(f"{source}: no torchvision key conversion for family {family!r}")
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        new = rename(key)
        if new is None:
            unknown.append(key)
            continue
        out[new] = value.flatten() if new.endswith(".gamma") else value  # ConvNeXt layer scale: (C,1,1) -> (C,)
    if unknown:
        raise ValueError(f"{source}: torchvision {family} keys with no timm counterpart: {unknown[:5]}"
                         + ("…" if len(unknown) > 5 else ""))
    return out


_CONVNEXT_BLOCK = {"block.0": "conv_dw", "block.2": "norm", "block.3": "mlp.fc1", "block.5": "mlp.fc2",
                   "layer_scale": "gamma"}


def _convnext_key(key: str) -> str | None:
    """torchvision ``features.{0,2i+1,2i}...`` / ``classifier.{0,2}`` -> timm ``stem`` / ``stages`` / ``head``."""
    if m := re.fullmatch(r"features\.0\.([01])\.(weight|bias)", key):
        return f"stem.{m[1]}.{m[2]}"
    if m := re.fullmatch(r"features\.(\d+)\.(\d+)\.(block\.\d|layer_scale)(\.weight|\.bias)?", key):
        index, block, part, tail = int(m[1]), m[2], m[3], m[4] or ""
        if index % 2 == 1 and part in _CONVNEXT_BLOCK:
            return f"stages.{index // 2}.blocks.{block}.{_CONVNEXT_BLOCK[part]}{tail}"
        return None
    if m := re.fullmatch(r"features\.(\d+)\.([01])\.(weight|bias)", key):  # downsample: LayerNorm2d, conv
        index = int(m[1])
        return f"stages.{index // 2}.downsample.{m[2]}.{m[3]}" if index >= 2 and index % 2 == 0 else None
    if m := re.fullmatch(r"classifier\.([02])\.(weight|bias)", key):
        return f"head.{'norm' if m[1] == '0' else 'fc'}.{m[2]}"
    return None


_VIT_TOP = {"class_token": "cls_token", "encoder.pos_embedding": "pos_embed", "conv_proj.weight": "patch_embed.proj.weight",
            "conv_proj.bias": "patch_embed.proj.bias", "encoder.ln.weight": "norm.weight", "encoder.ln.bias": "norm.bias",
            "heads.head.weight": "head.weight", "heads.head.bias": "head.bias"}
_VIT_LAYER = {"ln_1": "norm1", "ln_2": "norm2", "self_attention.in_proj_weight": "attn.qkv.weight",
              "self_attention.in_proj_bias": "attn.qkv.bias", "self_attention.out_proj": "attn.proj",
              "mlp.0": "mlp.fc1", "mlp.3": "mlp.fc2", "mlp.linear_1": "mlp.fc1", "mlp.linear_2": "mlp.fc2"}


def _vit_key(key: str) -> str | None:
    """torchvision ``encoder.layers.encoder_layer_N.*`` / ``conv_proj`` / ``class_token`` -> timm names.

    torchvision's ``in_proj_weight`` stacks q, k, v as timm's ``qkv`` does (heads split alike);
    ``mlp.linear_1``/``linear_2`` are the MLP's names in files saved by torchvision < 0.13.
    """
    if key in _VIT_TOP:
        return _VIT_TOP[key]
    m = re.fullmatch(r"encoder\.layers\.encoder_layer_(\d+)\.(.+)", key)
    if m is None:
        return None  # e.g. heads.pre_logits (a representation layer timm's ViT-B has not)
    rest = m[2]
    for tv, timm_part in _VIT_LAYER.items():
        if rest == tv or rest.startswith(tv + "."):
            return f"blocks.{m[1]}.{timm_part}{rest[len(tv):]}"
    return None
