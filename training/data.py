"""tf.data pipelines for training a ViT: `load_data(dataset, image_size, batch_size, ...)`.

The dataset, its facts and its three splits (train, validation held out from train unless
the dataset has its own, test) come from `keras_vit.datasets`; this module turns them into
ready `tf.data.Dataset`s:

- train: resized (and cached), shuffled, augmented (random resized crop, flip, keras-cv
  RandAugment / MixUp / CutMix), batched with `drop_remainder`, normalised;
- validation and test: deterministic, the evaluation resize of `keras_vit.preprocessing`
  (the one export and `keras-vit predict` use), batched, normalised, in file order.

Batches are `(images, labels)`: images [B, H, W, 3] float32 normalised as the model's
`Preprocessing` says, labels [B, num_classes] float32 one-hot (soft after MixUp / CutMix).
"""

import dataclasses

import tensorflow as tf

from keras_vit import datasets
from keras_vit.preprocessing import Preprocessing, preprocess_input, resize_for_model, resize_uint8

AUTOTUNE = tf.data.AUTOTUNE
CACHE_LIMIT_BYTES = 2 * 1024**3  # resized uint8 images of all splits are cached in memory below this


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Training-side augmentation; evaluation is never augmented.

    random_crop: random resized crop (Inception style) covering `crop_scale` of the area
        with aspect ratio in `crop_ratio`, resized back to the model's size.
    flip: random horizontal flip (off for digits and text, which are not mirror-symmetric).
    randaugment: keras-cv RandAugment magnitude in [0, 1], None for off.
    mixup / cutmix: keras-cv MixUp / CutMix alpha, None for off (one of them is picked per
        batch when both are on).
    """

    random_crop: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    randaugment: float | None = None
    mixup: float | None = None
    cutmix: float | None = None

    def __post_init__(self):
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale!r}.")
        if self.randaugment is not None and not 0 <= self.randaugment <= 1:
            raise ValueError(f"randaugment magnitude must be in [0, 1], got {self.randaugment!r}.")
        for key in ("mixup", "cutmix"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ValueError(f"{key} alpha must be > 0 (or None for off), got {getattr(self, key)!r}.")


NO_AUGMENTATION = Augmentation(random_crop=False, flip=False)


@dataclasses.dataclass
class Data:
    """train: shuffled, augmented, batched (drop_remainder) and prefetched.
    validation: deterministic batches of the validation split, or None when there is none.
    test: deterministic batches of the test split (the last batch may be short).
    facts: the JSON-able dataset facts (`keras_vit.datasets.resolve_dataset`)."""

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    test: tf.data.Dataset
    facts: dict


# ----------------------------------------------------------------------------- transforms


def random_resized_crop(image, image_size, scale, ratio, seed=None):
    """A random crop covering `scale` of the area with aspect ratio in `ratio`, resized to
    `image_size`. uint8 [h, w, 3] -> uint8 [H, W, 3]."""
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        min_object_covered=0.0,
        aspect_ratio_range=ratio,
        area_range=scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
        seed=seed or 0,
    )
    return resize_uint8(tf.slice(image, begin, size), image_size)


def _batch_augmenter(augmentation, seed):
    """keras-cv batch augmentations (RandAugment, MixUp, CutMix), or None when all are off.
    Maps (uint8 images [B, H, W, 3], one-hot [B, K]) -> (float32 images in [0, 255], labels)."""
    layers = []
    if augmentation.randaugment is None and augmentation.mixup is None and augmentation.cutmix is None:
        return None
    import keras_cv  # imported only when used: it is slow to import

    if augmentation.randaugment is not None:
        layers.append(keras_cv.layers.RandAugment(value_range=(0, 255), magnitude=augmentation.randaugment, seed=seed))
    mixers = []
    if augmentation.mixup is not None:
        mixers.append(keras_cv.layers.MixUp(alpha=augmentation.mixup, seed=seed))
    if augmentation.cutmix is not None:
        mixers.append(keras_cv.layers.CutMix(alpha=augmentation.cutmix, seed=seed))
    if len(mixers) == 2:
        mixers = [keras_cv.layers.RandomChoice(mixers, batchwise=True, seed=seed)]

    def apply(images, labels):
        images = tf.cast(images, tf.float32)
        for layer in layers:
            images = layer(images, training=True)
        for mixer in mixers:
            out = mixer({"images": images, "labels": labels}, training=True)
            images, labels = out["images"], out["labels"]
        return images, tf.cast(labels, tf.float32)

    return apply


# ----------------------------------------------------------------------------- pipelines


def load_data(
    dataset="digits",
    image_size=(32, 32),
    batch_size=64,
    augmentation=NO_AUGMENTATION,
    preprocessing=Preprocessing(),
    data_dir=None,
    seed=0,
    test_fraction=0.2,
    validation_fraction=datasets.DEFAULT_VALIDATION_FRACTION,
    validate_on_test=False,
    eval_batch_size=None,
    cache=None,
    verify_images=True,
    facts=None,
):
    """Ready `tf.data` pipelines and the dataset facts for training a ViT.

    Args:
        dataset: "digits", a TFDS name ("cifar10", "tfds:cifar10"), "folder:PATH" or a path.
        image_size: (H, W) of the model input; images are resized to it.
        batch_size: global training batch size (batches hold [batch_size, H, W, 3]).
        augmentation: an `Augmentation` (training side only).
        preprocessing: the model's `Preprocessing` (normalisation, evaluation resize).
        data_dir: TFDS data directory.
        seed: shuffling, augmentation and split seed.
        test_fraction, validation_fraction, validate_on_test: see
            `keras_vit.datasets.resolve_dataset`.
        eval_batch_size: batch size for validation and test (default `batch_size`).
        cache: cache the resized images of every split in memory; None decides by their
            size (< `CACHE_LIMIT_BYTES` in all).
        facts: already-resolved facts (skips `resolve_dataset`).

    Returns: a `Data` (train, validation, test, facts).
    """
    image_size = tuple(int(s) for s in (image_size if not isinstance(image_size, int) else (image_size,) * 2))
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    if facts is None:
        facts = datasets.resolve_dataset(
            dataset, data_dir, test_fraction, validation_fraction, validate_on_test, seed, verify_images
        )
    check_batch_size(facts, batch_size)
    validation_source = facts["validation"]["source"]
    if cache is None:  # images and int labels; the validation split, when it is the test split, once
        examples = facts["num_train"] + facts["num_test"] + (facts["num_validation"] if validation_source in ("split", "held_out") else 0)
        cache = examples * (image_size[0] * image_size[1] * 3 + 8) < CACHE_LIMIT_BYTES
    evaluate = lambda split: _evaluation_pipeline(facts, split, image_size, preprocessing, eval_batch_size or batch_size, cache)  # noqa: E731
    test = evaluate("test")
    # validate_on_test: the test pipeline itself (one pipeline and one cache, not two).
    if validation_source in ("none", "test"):
        validation = None if validation_source == "none" else test
    else:
        validation = evaluate("validation")
    train = _training_pipeline(facts, image_size, batch_size, augmentation, preprocessing, seed, cache)
    options = tf.data.Options()  # multi-worker: shard by data (sources are not file lists)
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return Data(
        train=train.with_options(options),
        validation=None if validation is None else validation.with_options(options),
        test=test.with_options(options),
        facts=facts,
    )


def check_batch_size(facts, batch_size):
    """A ValueError when one training batch needs more examples than the dataset has."""
    if batch_size > facts["num_train"]:
        raise ValueError(
            f"batch_size {batch_size} is larger than the {facts['num_train']} training examples "
            f"of {facts['name']!r}: use --batch-size {max(1, facts['num_train'] // 4)} or less."
        )


def _one_hot(num_classes):
    """Labels [B] -> one-hot [B, K] float32. After batching and caching: a cached one-hot
    label would weigh 4 K bytes per example (87 KB at ImageNet-21k's K), more than the image."""
    return lambda x, y: (x, tf.one_hot(y, num_classes, dtype=tf.float32))


def _normaliser(preprocessing):
    return lambda x, y: (preprocess_input(x, preprocessing.mean, preprocessing.std), y)


def _evaluation_pipeline(facts, split, image_size, preprocessing, batch_size, cache):
    """A split, resized as `keras_vit.preprocessing.resize_for_model`, batched, one-hot."""
    stream = datasets.raw_split(facts, split).map(
        lambda x, y: (resize_for_model(x, image_size, preprocessing), y), num_parallel_calls=AUTOTUNE
    )
    stream = stream.cache() if cache else stream
    stream = stream.batch(batch_size).map(_one_hot(facts["num_classes"]), num_parallel_calls=AUTOTUNE)
    return stream.map(_normaliser(preprocessing), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def _training_pipeline(facts, image_size, batch_size, augmentation, preprocessing, seed, cache):
    """Resize (and cache), shuffle, crop / flip, batch, batch augmentations, normalise."""
    stream = datasets.raw_split(facts, "train").map(
        lambda x, y: (resize_uint8(x, image_size, preprocessing.interpolation), y), num_parallel_calls=AUTOTUNE
    )
    stream = stream.cache() if cache else stream
    stream = stream.shuffle(min(facts["num_train"], 50_000), seed=seed, reshuffle_each_iteration=True)

    def augment_one(x, y):
        if augmentation.random_crop:
            x = random_resized_crop(x, image_size, augmentation.crop_scale, augmentation.crop_ratio)
        if augmentation.flip:
            x = tf.image.random_flip_left_right(x)
        return x, y

    if augmentation.random_crop or augmentation.flip:
        stream = stream.map(augment_one, num_parallel_calls=AUTOTUNE)
    stream = stream.batch(batch_size, drop_remainder=True).map(_one_hot(facts["num_classes"]), num_parallel_calls=AUTOTUNE)
    batch_augmenter = _batch_augmenter(augmentation, seed)
    if batch_augmenter is not None:
        stream = stream.map(batch_augmenter, num_parallel_calls=AUTOTUNE)
    return stream.map(_normaliser(preprocessing), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
