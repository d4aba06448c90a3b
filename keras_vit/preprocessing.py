"""The one image path of keras_vit: decode, resize, normalise. Training, export and
prediction all use these functions, so a model sees the same pixels everywhere.

    image = decode_image("cat.jpg")                          # uint8 [h, w, 3]
    image = resize_for_model(image, (224, 224), preprocessing)  # uint8 [224, 224, 3]
    x = preprocess_input(image, preprocessing.mean, preprocessing.std)  # float32

`Preprocessing` says how the images a model was trained (or published) with were made:
normalisation, resize interpolation, and crop. A keras_vit model carries its own
(`model.vit_config.preprocessing`).
"""

import dataclasses
import math
import pathlib

from keras import ops

# The original ViT and the AugReg checkpoints map [0, 255] to [-1, 1].
VIT_MEAN = (0.5, 0.5, 0.5)
VIT_STD = (0.5, 0.5, 0.5)
INTERPOLATIONS = ("bilinear", "bicubic")
CROP_MODES = ("squash", "center")
# What `decode_image` reads (PIL); TensorFlow's in-graph decoder (the SavedModel's bytes
# signature) reads the first four.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def image_files(folder):
    """The image files (`IMAGE_EXTENSIONS`, any case) under `folder`, recursively, sorted."""
    return sorted(p for p in pathlib.Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


class ImageError(ValueError):
    """A file that is not a readable image."""


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input.

    mean, std: per-channel normalisation of values in [0, 1]: `(x / 255 - mean) / std`.
    interpolation: `"bilinear"` or `"bicubic"` (antialiased when shrinking).
    crop_mode: `"squash"` resizes the whole image to the model's size (the original ViT's
        evaluation, and keras_vit training); `"center"` resizes the shorter side to
        `size / crop_fraction` and cuts the centre (timm's evaluation, `crop_pct`).
    crop_fraction: the share of the resized image the centre crop keeps (1.0: none).
    """

    mean: tuple[float, float, float] = VIT_MEAN
    std: tuple[float, float, float] = VIT_STD
    interpolation: str = "bilinear"
    crop_mode: str = "squash"
    crop_fraction: float = 1.0

    def __post_init__(self):
        for key in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, key))
            if len(value) != 3 or (key == "std" and min(value) <= 0):
                raise ValueError(f"{key} must be three numbers{' > 0' if key == 'std' else ''}, got {getattr(self, key)!r}.")
            object.__setattr__(self, key, value)
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"Unknown interpolation {self.interpolation!r}: expected one of {INTERPOLATIONS}.")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"Unknown crop_mode {self.crop_mode!r}: expected one of {CROP_MODES}.")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction!r}.")


def preprocess_input(images, mean=VIT_MEAN, std=VIT_STD):
    """Images with values in [0, 255] (any dtype), [..., H, W, C] -> float32 normalised as
    `(x / 255 - mean) / std` ([-1, 1] by default)."""
    images = ops.cast(images, "float32") / 255.0
    return (images - ops.convert_to_tensor(mean, "float32")) / ops.convert_to_tensor(std, "float32")


def decode_image(source):
    """An image file (path) or its bytes -> uint8 RGB array [h, w, 3].

    The EXIF orientation is applied; grayscale, palette, RGBA (alpha dropped, as timm and
    torchvision do) and 16-bit images become 8-bit RGB. Anything PIL cannot read raises
    `ImageError` naming the file.
    """
    import io

    import numpy as np
    from PIL import Image, ImageOps

    name = "image bytes" if isinstance(source, (bytes, bytearray)) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit (or 32-bit int) grayscale
                array = np.asarray(image, np.float64) * (255.0 / 65535.0)
                array = np.clip(np.round(array), 0, 255).astype(np.uint8)
            elif image.mode == "F":
                array = np.clip(np.round(np.asarray(image, np.float64)), 0, 255).astype(np.uint8)
            else:
                array = np.asarray(image.convert("RGB"), np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageError(f"Cannot read {name} as an image: {error}") from None
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    return array


def resize_uint8(image, size, interpolation="bilinear"):
    """uint8 [h, w, 3] -> uint8 [*size, 3]: antialiased when shrinking, rounded (TensorFlow)."""
    import tensorflow as tf

    image = tf.image.resize(image, size, method=interpolation, antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def resize_for_model(image, image_size, preprocessing=Preprocessing()):
    """The evaluation resize: uint8 [h, w, 3] (any size) -> uint8 [H, W, 3], `image_size`
    (H, W), as `preprocessing` says (works eagerly and inside a `tf.function`)."""
    import tensorflow as tf

    height, width = (int(s) for s in image_size)
    if preprocessing.crop_mode == "squash":
        return resize_uint8(image, (height, width), preprocessing.interpolation)
    # timm's evaluation transform: Resize(size / crop_pct) (the shorter side for a square
    # size, both sides otherwise), then CenterCrop(size).
    if height == width:
        short = math.floor(height / preprocessing.crop_fraction)
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = short / tf.reduce_min(shape)
        # torchvision keeps the shorter side exact and truncates the longer one.
        resized_shape = tf.where(shape == tf.reduce_min(shape), float(short), tf.floor(shape * scale))
        resized_shape = tf.cast(resized_shape, tf.int32)
    else:
        resized_shape = tf.constant(
            [math.floor(height / preprocessing.crop_fraction), math.floor(width / preprocessing.crop_fraction)], tf.int32
        )
    image = resize_uint8(image, resized_shape, preprocessing.interpolation)
    top = tf.cast(tf.round(tf.cast(tf.shape(image)[0] - height, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(tf.shape(image)[1] - width, tf.float32) / 2.0), tf.int32)
    return tf.ensure_shape(image[top : top + height, left : left + width], (height, width, 3))
