"""Models: the backbone factory, GLASS, the resize-only baseline, checkpoints."""
from .backbones import Backbone, create_backbone
from .config import ModelConfig
from .factory import create_model, load_checkpoint, read_config, save_checkpoint
from .glass import GLASS, CropAttention
from .standard import StandardClassifier

__all__ = [
    "Backbone", "create_backbone", "ModelConfig", "create_model", "load_checkpoint", "read_config",
    "save_checkpoint", "GLASS", "CropAttention", "StandardClassifier",
]
