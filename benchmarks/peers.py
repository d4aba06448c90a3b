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

# The training-step benchmark: a ViT-Ti-shaped model at 32x32, patch 4, batch 64, AdamW.
# Keras' AdamW default weight decay, which the peers' optimizer uses (as of Keras 3.15).
KERAS_ADAMW_DECAY = 0.004
TRAINING_STEP = {"size": "Ti", "image_size": 32, "patch_size": 4, "num_classes": 10, "batch": 64}


def training_step(peer, jit_compile=False, optimizer_name="adamw", recipe_optimizer=False):
    """(model compiled with AdamW and the loss, images, labels) for `peer`'s training step.

    Images [64, 32, 32, 3] uniform in [-1, 1] (seed 0), labels seed 1; timm_peer.py makes
    the same batch in PyTorch. The optimizer is Keras' AdamW at 1e-3 (its defaults otherwise);
    with `recipe_optimizer` (keras_vit only), the same hyperparameters through the optimizer
    `keras-vit train` builds (`recipe.make_optimizer`: biases, norms and tokens not decayed,
    fused update kernels), without its gradient clipping and weight average.
    """
    import numpy as np

    step = TRAINING_STEP
    shape = (step["batch"], step["image_size"], step["image_size"], 3)
    images = np.random.RandomState(0).uniform(-1, 1, shape).astype("float32")
    labels = np.random.RandomState(1).randint(0, step["num_classes"], step["batch"])
    model = PEERS[peer](step["size"], step["image_size"], step["patch_size"], num_classes=step["num_classes"])
    if recipe_optimizer:
        from keras_vit.training import recipe

        optimizer = recipe.make_optimizer(model, learning_rate=1e-3, weight_decay=KERAS_ADAMW_DECAY, clipnorm=None)
        optimizer.name = optimizer_name  # the name scope profile_step.py looks for
    else:
        optimizer = keras.optimizers.AdamW(1e-3, name=optimizer_name)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return model, images, labels


def forward_flops(size, image_size, patch_size, num_classes=1000, peer="keras-hub"):
    """Multiply-adds x 2 of one image's forward pass (matmuls and the patch projection), as
    `peer` computes it: keras_vit's last block computes the class token's output alone (its
    queries, attention output and MLP on 1 token, keys and values on all); the others, and
    the usual ViT FLOP counts, compute it for every token."""
    s = MODEL_SIZES[size]
    d, m, layers = s["hidden_dim"], s["mlp_dim"], s["num_layers"]
    patches = (image_size // patch_size) ** 2
    tokens = patches + 1

    def block(queries):
        key_value = 2 * tokens * d * 2 * d
        query_attention_output = 2 * queries * d * d + 2 * 2 * queries * tokens * d + 2 * queries * d * d
        return key_value + query_attention_output + 2 * 2 * queries * d * m

    last_block = block(1 if peer == "keras_vit" else tokens)
    patch_embedding = 2 * patches * patch_size * patch_size * 3 * d
    return patch_embedding + (layers - 1) * block(tokens) + last_block + 2 * d * num_classes
