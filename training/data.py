"""Datasets for training and evaluating ViTs: one entry point, three sources.

`load_data(dataset, image_size, batch_size, ...)` returns a `Data` with ready
`tf.data.Dataset`s and the dataset facts (a JSON-able dict, saved as `dataset.json`):

- `"digits"`: the 8x8 handwritten digits that ship with scikit-learn (no download), split
  once with a fixed stratified split (`DIGITS_TEST_SIZE` test images, seed 0);
- a TFDS name (`"cifar10"`, `"oxford_flowers102"`, `"imagenet2012"`, ...; `"tfds:NAME"`
  also works), read with `tfds.load(..., data_dir=...)`;
- an image folder (`"folder:PATH"` or any existing directory), one sub-folder per class, or
  `train/` and `test/` (or `validation/`) sub-folders that each hold the class folders.

Both splits yield `(images, labels)` batches: images [B, H, W, 3] float32 normalised by
`keras_vit.preprocess_input`, labels [B, num_classes] float32 one-hot (soft after MixUp /
CutMix). The evaluation side is deterministic: decode -> resize -> normalise, in file order.
`load_images(facts, split)` returns exactly the evaluation images before normalisation.
"""

import dataclasses
import difflib
import os
import pathlib
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from keras_vit.preprocessing import VIT_MEAN, VIT_STD, preprocess_input

AUTOTUNE = tf.data.AUTOTUNE
DIGITS_TEST_SIZE = 360  # 20% of the 1797 scikit-learn digits, stratified, seed 0
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
CACHE_LIMIT_BYTES = 2 * 1024**3  # resized uint8 training images are cached in memory below this


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
    crop_scale: Tuple[float, float] = (0.08, 1.0)
    crop_ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    randaugment: Optional[float] = None
    mixup: Optional[float] = None
    cutmix: Optional[float] = None

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
    test: deterministic, batched (last batch may be short) and prefetched; also used for
    validation unless `facts["validation"] == "held_out"`.
    validation: the validation dataset (`test` itself, or a held-out part of train).
    facts: the JSON-able dataset facts (see module docstring)."""

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    facts: dict


# ----------------------------------------------------------------------------- sources
# A source turns (facts, split) into a dataset of (uint8 image [h, w, 3], int64 label) in a
# deterministic order. Image sizes may differ between examples (folders, most TFDS sets).


def _digits_arrays(split):
    """The scikit-learn digits, [N, 8, 8, 3] uint8 in [0, 255] and [N] int64, fixed split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # values 0..16 -> 0..255
    images = np.repeat(images[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=DIGITS_TEST_SIZE, stratify=labels, random_state=0
    )
    return (x_train, y_train) if split == "train" else (x_test, y_test)


def _digits_facts():
    x_train, _ = _digits_arrays("train")
    x_test, _ = _digits_arrays("test")
    return {
        "source": "digits",
        "name": "digits",
        "class_names": [str(i) for i in range(10)],
        "num_train": int(len(x_train)),
        "num_test": int(len(x_test)),
        "original_image_size": [8, 8],
        "train_split": "train",
        "test_split": "test",
        "split": f"sklearn train_test_split(test_size={DIGITS_TEST_SIZE}, stratify=labels, random_state=0)",
    }


def _tfds_module():
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:  # pragma: no cover - part of the train extra
        raise ValueError("TFDS datasets need `pip install tensorflow-datasets` (keras_vit[train]).") from error
    return tfds


def _tfds_load(facts, split):
    tfds = _tfds_module()
    name = facts["train_split"] if split == "train" else facts["test_split"]
    return tfds.load(
        facts["name"], split=name, data_dir=facts.get("data_dir"), as_supervised=True, shuffle_files=False
    )


def _tfds_facts(name, data_dir):
    tfds = _tfds_module()
    known = tfds.list_builders()
    base = name.split(":")[0].split("/")[0]
    if base not in known:
        close = difflib.get_close_matches(base, known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown dataset {name!r}: not 'digits', not an existing folder, and not a TFDS "
            f"dataset.{hint} Use 'digits', a TFDS name (e.g. 'cifar10') or 'folder:PATH'."
        )
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # noqa: BLE001 - TFDS raises many kinds; report them plainly
        raise ValueError(f"Could not open TFDS dataset {name!r}: {error}") from error
    info = builder.info
    splits = list(info.splits.keys())
    test_split = next((s for s in ("test", "validation") if s in splits), "test")
    label = info.features["label"] if "label" in info.features else None
    class_names = list(label.names) if label is not None and hasattr(label, "names") else []
    if not class_names:
        raise ValueError(f"TFDS dataset {name!r} has no class label feature; it cannot train a classifier.")
    image_shape = info.features["image"].shape if "image" in info.features else None
    facts = {
        "source": "tfds",
        "name": name,
        "class_names": class_names,
        "data_dir": data_dir,
        "train_split": "train",
        "test_split": test_split,
        "original_image_size": list(image_shape[:2]) if image_shape and None not in image_shape[:2] else None,
    }
    for key, split in (("num_train", "train"), ("num_test", test_split)):
        if split in info.splits:
            facts[key] = int(info.splits[split].num_examples)
        else:  # e.g. under tfds.testing.mock_data, which has no split metadata: count
            facts[key] = int(_tfds_load(facts, split).reduce(0, lambda n, _: n + 1))
    return facts


def _list_class_files(root):
    """{class name: [sorted files]} for the class sub-folders of `root`."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {
        c: sorted(str(f) for f in (root / c).rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        for c in classes
    }
    return {c: fs for c, fs in files.items() if fs}


def _check_images(paths):
    """Raises a ValueError naming the first file that is not a readable image."""
    from PIL import Image

    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as error:  # noqa: BLE001 - PIL raises many kinds for bad files
            raise ValueError(f"Corrupt or unreadable image file {path}: {error}") from error


def _folder_facts(path, test_fraction, seed, verify_images):
    root = pathlib.Path(path).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"Image folder {str(root)!r} does not exist.")
    split_dirs = {s: root / s for s in ("train", "test", "validation", "val") if (root / s).is_dir()}
    if "train" in split_dirs and len(split_dirs) > 1:
        test_dir = next(split_dirs[s] for s in ("test", "validation", "val") if s in split_dirs)
        train_files, test_files = _list_class_files(split_dirs["train"]), _list_class_files(test_dir)
        layout = f"train/ and {test_dir.name}/ sub-folders"
    else:
        train_files, test_files, layout = _list_class_files(root), None, "one sub-folder per class"
    if not train_files:
        raise ValueError(
            f"No images found in {str(root)!r}: expected one sub-folder per class holding "
            f"{'/'.join(IMAGE_EXTENSIONS)} files (or train/ and test/ sub-folders of those)."
        )
    class_names = sorted(train_files)
    index = {c: i for i, c in enumerate(class_names)}
    rng = np.random.default_rng(seed)
    train, test = [], []
    if test_files is None:  # a stratified split, fixed by the seed
        for c in class_names:
            files = list(train_files[c])
            rng.shuffle(files)
            n_test = int(round(len(files) * test_fraction)) if len(files) > 1 else 0
            test += [(f, index[c]) for f in sorted(files[:n_test])]
            train += [(f, index[c]) for f in sorted(files[n_test:])]
    else:
        unknown = sorted(set(test_files) - set(class_names))
        if unknown:
            raise ValueError(f"Test classes {unknown} of {str(root)!r} have no training images.")
        train = [(f, index[c]) for c in class_names for f in train_files[c]]
        test = [(f, index[c]) for c in class_names for f in test_files.get(c, [])]
    if not test:
        raise ValueError(f"Image folder {str(root)!r} has too few images for a test split.")
    if verify_images:
        _check_images([f for f, _ in train + test])
    return {
        "source": "folder",
        "name": root.name,
        "path": str(root),
        "layout": layout,
        "class_names": class_names,
        "num_train": len(train),
        "num_test": len(test),
        "train_files": [[f, y] for f, y in train],
        "test_files": [[f, y] for f, y in test],
        "train_split": "train",
        "test_split": "test",
        "test_fraction": test_fraction,
        "original_image_size": None,
    }


def _decode_file(path, label):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return image, label


def _raw_dataset(facts, split):
    """(uint8 image [h, w, 3], int64 label) in a fixed order, for `split` "train" or "test"."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    source = facts["source"]
    if source == "digits":
        return tf.data.Dataset.from_tensor_slices(_digits_arrays(split))
    if source == "tfds":
        ds = _tfds_load(facts, split)
        return ds.map(lambda x, y: (_to_rgb(x), tf.cast(y, tf.int64)), num_parallel_calls=AUTOTUNE)
    if source == "folder":
        pairs = facts[f"{split}_files"]
        files = tf.constant([f for f, _ in pairs], tf.string)
        labels = tf.constant([y for _, y in pairs], tf.int64)
        return tf.data.Dataset.from_tensor_slices((files, labels)).map(_decode_file, num_parallel_calls=AUTOTUNE)
    raise ValueError(f"Unknown dataset source {source!r} in the dataset facts.")


def _to_rgb(image):
    image = tf.convert_to_tensor(image)
    if image.shape.rank == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    return tf.cast(image, tf.uint8)


# ----------------------------------------------------------------------------- facts


def resolve_dataset(dataset, data_dir=None, test_fraction=0.2, seed=0, verify_images=True):
    """The facts of `dataset` ("digits", a TFDS name, "tfds:NAME", "folder:PATH" or a directory).

    Raises ValueError for unknown names, empty folders and corrupt image files.
    """
    if not isinstance(dataset, str) or not dataset:
        raise ValueError(f"dataset must be a non-empty string, got {dataset!r}.")
    if dataset == "digits":
        facts = _digits_facts()
    elif dataset.startswith("folder:") or os.path.isdir(os.path.expanduser(dataset)):
        facts = _folder_facts(dataset.removeprefix("folder:"), test_fraction, seed, verify_images)
    else:
        facts = _tfds_facts(dataset.removeprefix("tfds:"), data_dir)
    facts["num_classes"] = len(facts["class_names"])
    facts["seed"] = seed
    return facts


# ----------------------------------------------------------------------------- transforms


def resize_uint8(image, image_size):
    """The evaluation resize: uint8 [h, w, 3] -> uint8 [H, W, 3] (bilinear, antialiased when
    shrinking, rounded). Also what `load_images` returns."""
    image = tf.image.resize(image, image_size, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


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


def _batch_augmenter(augmentation, num_classes, seed):
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
    mean=VIT_MEAN,
    std=VIT_STD,
    data_dir=None,
    seed=0,
    test_fraction=0.2,
    validation_fraction=0.0,
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
        mean, std: normalisation the model's weights expect ([-1, 1] for ViT by default).
        data_dir: TFDS data directory.
        seed: shuffling, augmentation, and folder split seed.
        test_fraction: test share of an image folder without train/ and test/ sub-folders.
        validation_fraction: > 0 holds out that share of the training set (stratified
            by the seed) for validation; 0 validates on the test split (recorded in facts).
        eval_batch_size: batch size for validation and test (default `batch_size`).
        cache: cache resized images in memory; None decides by size (< 2 GiB).
        facts: already-resolved facts (skips `resolve_dataset`).

    Returns: a `Data` (train, validation, test, facts).
    """
    image_size = tuple(int(s) for s in (image_size if not isinstance(image_size, int) else (image_size,) * 2))
    if facts is None:
        facts = resolve_dataset(dataset, data_dir, test_fraction, seed, verify_images)
    facts = dict(facts)
    facts.update(image_size=list(image_size), mean=[float(m) for m in mean], std=[float(s) for s in std])
    facts["validation_fraction"] = float(validation_fraction)
    facts["validation"] = "held_out" if validation_fraction > 0 else "test"
    num_classes = facts["num_classes"]
    num_train = facts["num_train"]
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}.")
    num_val = int(round(num_train * validation_fraction))
    facts["num_validation"] = num_val if num_val else facts["num_test"]
    if batch_size > num_train - num_val:
        raise ValueError(
            f"batch_size {batch_size} is larger than the {num_train - num_val} training examples "
            f"of {facts['name']!r}: use --batch-size {max(1, (num_train - num_val) // 4)} or less."
        )
    if cache is None:
        cache = num_train * image_size[0] * image_size[1] * 3 < CACHE_LIMIT_BYTES
    eval_batch_size = eval_batch_size or batch_size

    def prepare(ds):  # uint8 resized images, one-hot labels
        return ds.map(
            lambda x, y: (resize_uint8(x, image_size), tf.one_hot(y, num_classes, dtype=tf.float32)),
            num_parallel_calls=AUTOTUNE,
        )

    def normalise(x, y):
        return preprocess_input(x, mean, std), y

    def evaluation(ds):
        ds = prepare(ds)
        ds = ds.cache() if cache else ds
        return ds.batch(eval_batch_size).map(normalise, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)

    train_raw = _raw_dataset(facts, "train")
    if num_val:  # a held-out part of train, fixed by the seed
        order = np.random.default_rng(seed).permutation(num_train)
        val_mask = np.zeros(num_train, bool)
        val_mask[order[:num_val]] = True
        mask = tf.data.Dataset.from_tensor_slices(val_mask)
        both = tf.data.Dataset.zip((train_raw, mask))
        validation = evaluation(both.filter(lambda xy, m: m).map(lambda xy, m: xy))
        train_raw = both.filter(lambda xy, m: tf.logical_not(m)).map(lambda xy, m: xy)
    test = evaluation(_raw_dataset(facts, "test"))
    if not num_val:
        validation = test

    # Training: resize (and cache), shuffle, crop/flip, batch, batch augmentations, normalise.
    train = prepare(train_raw)
    train = train.cache() if cache else train
    train = train.shuffle(min(num_train, 50_000), seed=seed, reshuffle_each_iteration=True)
    aug = augmentation

    def augment_one(x, y):
        if aug.random_crop:
            x = random_resized_crop(x, image_size, aug.crop_scale, aug.crop_ratio)
        if aug.flip:
            x = tf.image.random_flip_left_right(x)
        return x, y

    if aug.random_crop or aug.flip:
        train = train.map(augment_one, num_parallel_calls=AUTOTUNE)
    train = train.batch(batch_size, drop_remainder=True)
    batch_aug = _batch_augmenter(aug, num_classes, seed)
    if batch_aug is not None:
        train = train.map(batch_aug, num_parallel_calls=AUTOTUNE)
    train = train.map(normalise, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)

    options = tf.data.Options()  # multi-worker: shard by data (sources are not file lists)
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train, validation, test = (d.with_options(options) for d in (train, validation, test))
    return Data(train=train, validation=validation, test=test, facts=facts)


def load_images(facts, split="test", limit=None):
    """Evaluation images before normalisation, in a fixed order.

    Args:
        facts: the dataset facts (`dataset.json` of a run).
        split: "test" or "train" (the whole training split, no augmentation).
        limit: at most this many images (the first ones).

    Returns: (uint8 images [N, H, W, 3] resized to `facts["image_size"]` exactly as the
    evaluation pipeline resizes them, int64 labels [N]). Normalise the images with
    `keras_vit.preprocess_input(images, facts["mean"], facts["std"])`.
    """
    image_size = tuple(facts["image_size"])
    ds = _raw_dataset(facts, split)
    if limit is not None:
        ds = ds.take(int(limit))
    ds = ds.map(lambda x, y: (resize_uint8(x, image_size), y), num_parallel_calls=AUTOTUNE, deterministic=True)
    images, labels = [], []
    for x, y in ds.batch(256).as_numpy_iterator():
        images.append(x)
        labels.append(y)
    if not images:
        return np.zeros((0, *image_size, 3), np.uint8), np.zeros((0,), np.int64)
    return np.concatenate(images), np.concatenate(labels)
