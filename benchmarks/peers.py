"""The models being compared: keras_vit and keras-hub's ViT with the same configuration.

keras-hub is a benchmark-only dependency (the `bench` extra).
"""

import keras

import keras_vit
from keras_vit.config import MODEL_SIZES


def keras_vit_model(size, image_size, patch_size, num_classes=1000):
    return keras_vit.VisionTransformer(
        image_size=image_size, patch_size=patch_size, num_classes=num_classes, **MODEL_SIZES[size]
    )


def keras_hub_model(size, image_size, patch_size, num_classes=1000):
    from keras_hub.models import ViTBackbone, ViTImageClassifier

    sizes = MODEL_SIZES[size]
    backbone = ViTBackbone(
        image_shape=(image_size, image_size, 3),
        patch_size=patch_size,
        num_layers=sizes["num_layers"],
        num_heads=sizes["num_heads"],
        hidden_dim=sizes["hidden_dim"],
        mlp_dim=sizes["mlp_dim"],
    )
    return ViTImageClassifier(backbone=backbone, num_classes=num_classes)


PEERS = {"keras_vit": keras_vit_model, "keras-hub": keras_hub_model}


def forward_flops(size, image_size, patch_size, num_classes=1000):
    """Multiply-adds x 2 of one image's forward pass (matmuls and the patch projection)."""
    s = MODEL_SIZES[size]
    d, m, layers = s["hidden_dim"], s["mlp_dim"], s["num_layers"]
    patches = (image_size // patch_size) ** 2
    tokens = patches + 1
    patch_embedding = 2 * patches * patch_size * patch_size * 3 * d
    block = 2 * tokens * d * 3 * d + 2 * 2 * tokens * tokens * d + 2 * tokens * d * d + 2 * 2 * tokens * d * m
    return patch_embedding + layers * block + 2 * d * num_classes


def count_check():
    """Both peers have the same parameter count (the same model), checked before timing."""
    a = keras_vit_model("Ti", 224, 16).count_params()
    b = keras_hub_model("Ti", 224, 16).count_params()
    keras.backend.clear_session()
    return a, b
