"""Stage 3 — models: the backbone factory, GLASS, the resize-only baseline, checkpoints, and what
the logits mean (:mod:`.decision`: temperature, fake probability, threshold, unsure band).

It may import :mod:`glassdetect.views` (the view spec a model is built for) and the top-level
helpers, never data or a higher stage."""
from .backbones import Backbone, create_backbone
from .config import ModelConfig
from .factory import create_model, load_checkpoint, read_config, save_checkpoint
from .glass import GLASS, CropAttention
from .standard import StandardClassifier

__all__ = [
    "Backbone", "create_backbone", "ModelConfig", "create_model", "load_checkpoint", "read_config",
    "save_checkpoint", "GLASS", "CropAttention", "StandardClassifier",
]
