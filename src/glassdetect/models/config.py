"""The model config: plain values that fully rebuild a model, saved inside every checkpoint."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ..views.build import INTERPOLATIONS, ViewSpec

ARCHS = ("glass", "standard")
LOCAL_INPUTS = ("rgb", "residual", "hessian")  # what the local backbone sees of each crop (models.common)


@dataclass
class ModelConfig:
    arch: str = "glass"  # "glass" (global + K local crops) or "standard" (resize-only baseline)
    backbone: str = "resnet50"  # a timm model name (the factory resolves torchvision names such as tv:vit_b_16)
    k: int = 4  # local crops per image
    patch: int = 224  # crop side, at native resolution
    global_size: int = 224  # side of the resized whole-image view
    max_grid: int = 8  # cap on the stratification grid G
    sampling: str = "stratified"  # stratified | grid | random
    # Crop offsets on multiples of this (views.sampling): 12 shows every crop of a ×2/×3/×4 upscaler's
    # output at the same phase of its upsampling pattern. 1 = the paper's uniform offsets (and every
    # checkpoint written before this field).
    crop_align: int = 1
    shared_backbone: bool = False  # one backbone for global and local views (half the parameters)
    # The crops as the local backbone sees them: "rgb" (the paper) or "residual" (their per-channel
    # 4-neighbour Laplacian, which exposes the period-2 trace of upsampling; models.common.ResidualPreprocess).
    # The baseline has no crops: its config always says "rgb". Checkpoints written before this field load as "rgb".
    local_input: str = "rgb"
    # How deep the local backbone goes: 0 = the whole backbone (the paper); L >= 1 = only its first L
    # feature levels (timm's ``feature_info``: EfficientNet-Lite0 level 3 ends at stride 8 with 40
    # channels, level 4 at stride 16 with 112), global-average pooled. A pixel-level trace such as an
    # upsampling pattern lives in the early layers; the later ones add capacity to fit photo content.
    # Not with ``shared_backbone``. Checkpoints written before this field load as 0.
    local_depth: int = 0
    dropout: float = 0.1
    attn_hidden: int = 128
    class_names: tuple[str, ...] = ("real", "fake")  # index 1 is the positive ("fake") class
    # Filled from the backbone's pretrained data config by the factory:
    num_features: int = 0
    local_features: int = 0  # the local backbone's feature width (num_features unless local_depth is set)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str | None = None  # global-view resize filter; None: the backbone weights' own (set by the factory)
    channels_last: bool = True  # chosen by the factory: True for convnets
    weights: str = "random"  # provenance of the initial backbone weights
    backbone_kwargs: dict = field(default_factory=dict)
    temperature: float = 1.0  # logit temperature (calibration)
    threshold: float = 0.5  # fake_probability >= threshold -> "fake"
    unsure_band: tuple[float, float] | None = None  # lo <= fake_probability <= hi -> "unsure" (None: off)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not 1 <= int(self.crop_align) <= 4096:
            raise ValueError(f"crop_align must be in [1, 4096], got {self.crop_align}")
        self.crop_align = int(self.crop_align)
        if self.local_input not in LOCAL_INPUTS:
            raise ValueError(f"local_input must be one of {LOCAL_INPUTS}, got {self.local_input!r}")
        if not 0 <= int(self.local_depth) <= 64:
            raise ValueError(f"local_depth must be in [0, 64] (0 = the whole backbone), got {self.local_depth}")
        self.local_depth = int(self.local_depth)
        if self.arch == "standard":
            self.local_input = "rgb"  # no crops: nothing the option could change
            self.local_depth = 0
        if self.local_depth and self.shared_backbone:
            raise ValueError("local_depth needs a local backbone of its own (not shared_backbone)")
        self.class_names = tuple(self.class_names)
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.unsure_band is not None:
            lo, hi = (float(v) for v in self.unsure_band)
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"unsure_band must satisfy 0 <= lo <= hi <= 1, got {self.unsure_band}")
            self.unsure_band = (lo, hi)

    def view_spec(self, max_pixels: int | None = None, mode: str | None = None) -> ViewSpec:
        if self.interpolation is None:
            raise ValueError("model config without an interpolation: build the model (create_model) first, "
                             "which fills it from the backbone weights")
        extra = {} if max_pixels is None else {"max_pixels": max_pixels}
        return ViewSpec(
            k=self.k,
            patch=self.patch,
            global_size=self.global_size,
            max_grid=self.max_grid,
            mode=mode or self.sampling,
            interpolation=self.interpolation,
            need_crops=self.arch == "glass",
            align=self.crop_align,
            **extra,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        check_fields(cls, d, "model config keys")
        return cls(**d)


def check_fields(cls, d: dict, what: str) -> None:
    """Refuse keys that are not fields of dataclass ``cls`` (a typo must not pass silently)."""
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what}: {sorted(unknown)}")
