"""SavedModel export for TF Serving: a float-image signature and an encoded-bytes signature.

Signatures (B is dynamic):
- `serving_default(images)`: float32 [B, H, W, 3], already normalised (see
  `keras_vit.preprocess_input`) -> `logits` float32 [B, C], `probabilities` float32 [B, C].
  H and W are the model's image size, or any multiple of the patch size ([B, None, None, 3])
  for a model built with a dynamic image size.
- `serving_bytes(image_bytes)`: string [B] of encoded JPEG/PNG/BMP/GIF images of any size
  -> `class_ids` int32 [B, k], `scores` float32 [B, k] (softmax probabilities, best
  first), `class_names` string [B, k]. Decoding, resizing and normalisation happen inside
  the graph, with the model's preprocessing and the functions training evaluates with
  (`keras_vit.preprocessing.resize_for_model`, then `preprocess_input`). TensorFlow's
  decoder does not apply the EXIF orientation, which `keras-vit predict` does.
"""

import keras
import tensorflow as tf

from keras_vit.preprocessing import preprocess_input, resize_for_model

DEFAULT_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serving_bytes"
TOP_K = 5


def export_saved_model(model, class_names, path, top_k=TOP_K):
    """Writes a SavedModel of a keras_vit classifier with both signatures to `path` (a folder
    that must not exist); `class_names` name its outputs."""
    config = model.vit_config
    height, width = config.image_size
    k = min(top_k, len(class_names))
    class_names = tf.constant([str(name) for name in class_names])

    def serve_images(images):
        logits = model(images, training=False)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1)}

    def decode(image_bytes):
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        image = resize_for_model(image, (height, width), config.preprocessing)
        return preprocess_input(image, config.preprocessing.mean, config.preprocessing.std)

    def serve_bytes(image_bytes):
        images = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32))
        probabilities = tf.nn.softmax(model(images, training=False), axis=-1)
        scores, class_ids = tf.math.top_k(probabilities, k=k)
        return {"class_ids": class_ids, "scores": scores, "class_names": tf.gather(class_names, class_ids)}

    # Keras' ExportArchive tracks the variables so that TF1-style loaders (saved_model_cli,
    # TF Serving) restore them too; a plain tf.Module holding the model does not.
    archive = keras.export.ExportArchive()
    archive.track(model)
    side = (None, None) if config.dynamic_image_size else (height, width)
    archive.add_endpoint(DEFAULT_SIGNATURE, serve_images, [tf.TensorSpec([None, *side, 3], tf.float32, name="images")])
    archive.add_endpoint(BYTES_SIGNATURE, serve_bytes, [tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.write_out(str(path), verbose=False)


def load_runner(path):
    """A reloaded SavedModel as `run(images float32 [B, H, W, 3]) -> logits [B, C]` (numpy)."""
    loaded = tf.saved_model.load(str(path))
    serve = loaded.signatures[DEFAULT_SIGNATURE]

    def run(images):
        return serve(images=tf.constant(images, tf.float32))["logits"].numpy()

    run.loaded = loaded  # keeps the object (and its variables) alive
    return run


def run_bytes_signature(path_or_loaded, encoded_images):
    """Calls `serving_bytes` on a list of encoded images -> dict of numpy outputs."""
    loaded = tf.saved_model.load(str(path_or_loaded)) if not hasattr(path_or_loaded, "signatures") else path_or_loaded
    outputs = loaded.signatures[BYTES_SIGNATURE](image_bytes=tf.constant(encoded_images))
    return {key: value.numpy() for key, value in outputs.items()}


def encode_png(images):
    """uint8 [N, H, W, 3] -> list of N PNG byte strings (lossless, for exact checks)."""
    return [tf.io.encode_png(image).numpy() for image in images]
