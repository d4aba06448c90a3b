"""keras_vit: Vision Transformers for Keras 3."""

from keras_vit import layers
from keras_vit.config import MODEL_SIZES, VARIANTS, ViTConfig
from keras_vit.model import VARIANT_BUILDERS, VisionTransformer, build_vit, create_model
from keras_vit.preprocessing import preprocess_input
from keras_vit.weights import load_weights

globals().update(VARIANT_BUILDERS)  # ViTTi16, ViTS16, ..., ViTH14

__version__ = "0.1.0"
__all__ = [
    "MODEL_SIZES",
    "VARIANTS",
    "ViTConfig",
    "VisionTransformer",
    "build_vit",
    "create_model",
    "layers",
    "load_weights",
    "preprocess_input",
    *VARIANT_BUILDERS,
]
