"""Pretrained weights: the original ViT `.npz`, timm `.safetensors` and Hugging Face ViT
checkpoints, loaded with the numerics of their source.

    model = keras_vit.ViTB16(weights="augreg_in21k", num_classes=100, image_size=384)
    keras_vit.load_weights(model, "path/to/checkpoint.npz")
"""

from keras_vit.weights.checkpoint import Checkpoint, read_checkpoint
from keras_vit.weights.errors import CheckpointError
from keras_vit.weights.loader import (
    SOURCE_DECIDED_FIELDS,
    config_for_checkpoint,
    inspect_checkpoint,
    load_checkpoint,
    load_weights,
    model_variables,
    read_weights,
)
from keras_vit.weights.named import (
    PRETRAINED_WEIGHTS,
    NamedWeights,
    available_weights,
    match_variant,
    named_weights,
    resolve_weights,
    weights_cache_dir,
)

__all__ = [
    "PRETRAINED_WEIGHTS",
    "SOURCE_DECIDED_FIELDS",
    "Checkpoint",
    "CheckpointError",
    "NamedWeights",
    "available_weights",
    "config_for_checkpoint",
    "inspect_checkpoint",
    "load_checkpoint",
    "load_weights",
    "match_variant",
    "model_variables",
    "named_weights",
    "read_checkpoint",
    "read_weights",
    "resolve_weights",
    "weights_cache_dir",
]
