"""The one normalisation used by training, export and prediction."""

from keras import ops

# The original ViT and the AugReg checkpoints map [0, 255] to [-1, 1].
VIT_MEAN = (0.5, 0.5, 0.5)
VIT_STD = (0.5, 0.5, 0.5)


def preprocess_input(images, mean=VIT_MEAN, std=VIT_STD):
    """Images with values in [0, 255] (any dtype), [..., H, W, C] -> float32 normalised as
    `(x / 255 - mean) / std` ([-1, 1] by default)."""
    images = ops.cast(images, "float32") / 255.0
    return (images - ops.convert_to_tensor(mean, "float32")) / ops.convert_to_tensor(std, "float32")
