"""keras_vit: Vision Transformers for Keras 3."""

from keras_vit import console

console.quiet_tensorflow_startup()  # before Keras imports TensorFlow; only under the keras-vit command

from keras_vit import layers  # noqa: E402
from keras_vit.attention import attention_maps, attention_rollout  # noqa: E402
from keras_vit.config import MODEL_SIZES, VARIANTS, ViTConfig, config_of  # noqa: E402
from keras_vit.labels import decode_predictions  # noqa: E402
from keras_vit.model import (  # noqa: E402
    VARIANT_BUILDERS,
    VisionTransformer,
    ViTB8,
    ViTB14,
    ViTB16,
    ViTB32,
    ViTH14,
    ViTL14,
    ViTL16,
    ViTL32,
    ViTModel,
    ViTS14,
    ViTS16,
    ViTS32,
    ViTTi16,
    build_vit,
    create_model,
)
from keras_vit.preprocessing import Preprocessing, preprocess_input  # noqa: E402
from keras_vit.weights import load_weights  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "MODEL_SIZES",
    "VARIANTS",
    "VARIANT_BUILDERS",
    "Preprocessing",
    "ViTB8",
    "ViTB14",
    "ViTB16",
    "ViTB32",
    "ViTConfig",
    "ViTH14",
    "ViTL14",
    "ViTL16",
    "ViTL32",
    "ViTModel",
    "ViTS14",
    "ViTS16",
    "ViTS32",
    "ViTTi16",
    "VisionTransformer",
    "attention_maps",
    "attention_rollout",
    "build_vit",
    "config_of",
    "create_model",
    "decode_predictions",
    "layers",
    "load_weights",
    "preprocess_input",
]
