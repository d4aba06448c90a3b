"""Datasets by name: their facts, their splits as plain (image, label) streams, and images.

`resolve_dataset(dataset, ...)` returns the facts of a dataset (a JSON-able dict; a
training run saves it as `dataset.json`): its source, class names, and its three splits,
train, validation and test, with their sizes and where each comes from. Three sources:

- `"digits"`: the 8x8 handwritten digits that ship with scikit-learn (no download), split
  once with a fixed stratified split (`DIGITS_TEST_SIZE` test images, seed 0);
- a TFDS name (`"cifar10"`, `"oxford_flowers102"`, `"imagenet2012"`, ...; `"tfds:NAME"`
  also works), read with `tfds.load(..., data_dir=...)`;
- an image folder (`"folder:PATH"` or any existing directory), one sub-folder per class, or
  `train/`, `test/` and `validation/` (or `val/`) sub-folders that each hold class folders.

Validation never uses the test split unless asked (`validate_on_test=True`): a dataset with
a validation split (and a separate test split) uses it; otherwise a stratified, seeded share
of the training split (`validation_fraction`) is held out, and the facts list it
(`validation_indices` or `validation_files`). The test split is for the final figure only:
a TFDS dataset's labelled "test" split, else its "validation" split, else a held-out share
of "train" (`test_indices`), as for an image folder without a test sub-folder.

`raw_split(facts, split)` streams (uint8 image [h, w, 3], int64 label) in a fixed order;
`load_images(facts, split, image_size, preprocessing)` returns a whole split resized for a
model, as the evaluation pipeline of training does. TensorFlow (tf.data) is needed here;
scikit-learn for the digits, tensorflow-datasets for TFDS names.
"""

import difflib
import os
import pathlib

import numpy as np

from keras_vit.preprocessing import IMAGE_EXTENSIONS, Preprocessing, decode_image, image_files, resize_for_model

SPLITS = ("train", "validation", "test")
DIGITS_TEST_SIZE = 360  # 20% of the 1797 scikit-learn digits, stratified, seed 0
DEFAULT_VALIDATION_FRACTION = 0.1


# ----------------------------------------------------------------------------- facts


def resolve_dataset(
    dataset,
    data_dir=None,
    test_fraction=0.2,
    validation_fraction=DEFAULT_VALIDATION_FRACTION,
    validate_on_test=False,
    seed=0,
    verify_images=True,
):
    """The facts of `dataset` ("digits", a TFDS name, "tfds:NAME", "folder:PATH" or a directory).

    Args:
        test_fraction: the test share of the training examples of an image folder that has no
            test sub-folder, or of a TFDS dataset that has no labelled test or validation split.
        validation_fraction: the share of the training split held out for validation when
            the dataset has no validation split of its own; 0 for no validation.
        validate_on_test: validate on the test split (the test figure is then optimistic;
            the facts say so).
        seed: the seed of every split keras_vit makes.

    Raises ValueError for unknown names, empty folders, corrupt image files, bad fractions.
    """
    if not isinstance(dataset, str) or not dataset:
        raise ValueError(f"dataset must be a non-empty string, got {dataset!r}.")
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}.")
    if dataset == "digits":
        facts, train_labels = _digits_facts()
    elif dataset.startswith("folder:") or os.path.isdir(os.path.expanduser(dataset)):
        facts, train_labels = _folder_facts(dataset.removeprefix("folder:"), test_fraction, seed, verify_images)
    else:
        facts, train_labels = _tfds_facts(dataset.removeprefix("tfds:"), data_dir, test_fraction, seed)
    facts["num_classes"] = len(facts["class_names"])
    facts["seed"] = seed
    _choose_validation(facts, train_labels, validation_fraction, validate_on_test, seed)
    return facts


def _choose_validation(facts, train_labels, fraction, validate_on_test, seed):
    """Sets `validation` (where it comes from) and the split sizes in `facts`.
    `train_labels()` gives the training split's labels (read only when they are needed)."""
    if validate_on_test:
        facts["validation"] = {
            "source": "test",
            "description": "the test split, asked for with validate_on_test: checkpoint choice saw "
            "the test split, so the test accuracy is optimistic",
        }
        facts["num_validation"] = facts["num_test"]
    elif facts.get("validation_split") is not None:
        facts["validation"] = {"source": "split", "description": f"the dataset's {facts['validation_split']!r} split"}
    elif fraction > 0:
        train_labels = train_labels()
        held_out = held_out_indices(train_labels, fraction, seed)
        if len(held_out) >= len(train_labels):
            raise ValueError(f"{facts['name']!r} has too few training examples ({len(train_labels)}) to hold out a validation share.")
        facts["validation"] = {
            "source": "held_out",
            "description": f"a stratified {fraction:.0%} of the training split (seed {seed})",
            "fraction": fraction,
        }
        if facts["source"] == "folder":  # file lists are plain facts: move the files across
            keep = np.ones(len(train_labels), bool)
            keep[held_out] = False
            facts["validation_files"] = [pair for pair, k in zip(facts["train_files"], keep) if not k]
            facts["train_files"] = [pair for pair, k in zip(facts["train_files"], keep) if k]
        else:  # positions in the source's training split, of which a test share may be held out
            source_positions = np.delete(np.arange(len(train_labels) + len(facts.get("test_indices", []))), facts.get("test_indices", []))
            facts["validation_indices"] = [int(i) for i in source_positions[held_out]]
        facts["num_train"] -= len(held_out)
        facts["num_validation"] = len(held_out)
    else:
        facts["validation"] = {"source": "none", "description": "no validation (validation_fraction 0)"}
        facts["num_validation"] = 0


def held_out_indices(labels, fraction, seed):
    """Sorted indices of a stratified, seeded share of `labels` (int [N]).

    round(fraction * N) examples in all (at least one), shared out over the classes in
    proportion to their sizes (largest remainders first), each class's drawn with
    `np.random.default_rng(seed)`: the same split every time, also for tiny classes.
    """
    labels = np.asarray(labels)
    classes, sizes = np.unique(labels, return_counts=True)
    total = max(1, int(round(fraction * len(labels)))) if len(labels) > 1 else 0
    ideal = sizes * total / max(len(labels), 1)
    counts = np.floor(ideal).astype(int)
    for i in np.argsort(-(ideal - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, counts)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros((0,), np.int64)


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
    _, train_labels = _digits_arrays("train")
    x_test, _ = _digits_arrays("test")
    facts = {
        "source": "digits",
        "name": "digits",
        "class_names": [str(i) for i in range(10)],
        "num_train": int(len(train_labels)),
        "num_test": int(len(x_test)),
        "original_image_size": [8, 8],
        "test_split": f"sklearn train_test_split(test_size={DIGITS_TEST_SIZE}, stratify=labels, random_state=0)",
    }
    return facts, lambda: train_labels


def _tfds_module():
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:  # pragma: no cover - part of the train extra
        raise ValueError("TFDS datasets need `pip install tensorflow-datasets` (keras_vit[train]).") from error
    return tfds


def _tfds_load(facts, split_name, decode_images=True):
    tfds = _tfds_module()
    decoders = None if decode_images else {"image": tfds.decode.SkipDecoding()}
    return tfds.load(
        facts["name"], split=split_name, data_dir=facts.get("data_dir"), as_supervised=True,
        shuffle_files=False, decoders=decoders,
    )


def _tfds_labels(facts, split_name):
    """The labels of a split in order, int64 [N] (images are not decoded)."""
    labels = [y for _, y in _tfds_load(facts, split_name, decode_images=False).as_numpy_iterator()]
    return np.asarray(labels, np.int64)


def _tfds_split_names(builder):
    """The split names a prepared TFDS dataset records ("train", "validation", "test", ...)."""
    return list(builder.info.splits.keys())


def _tfds_prepare(builder, name):
    """Downloads and prepares a TFDS dataset once (nothing to do when it is prepared). A failure
    (no network, a manual download missing, a full disk) is a `ValueError` that names the
    dataset, its folder and TFDS's reason, not TFDS's stack trace."""
    try:
        builder.download_and_prepare()
    except Exception as error:  # noqa: BLE001 - network, checksum, manual-download and disk errors alike
        reason = " ".join(str(error).split())[:500] or type(error).__name__
        raise ValueError(
            f"Could not download and prepare TFDS dataset {name!r} in {builder.data_dir_root}: "
            f"{type(error).__name__}: {reason}. If this machine has no network, prepare it where there is one "
            f"(`tfds build {name} --data_dir DIR`) and pass that folder as --data-dir."
        ) from error


def _tfds_facts(name, data_dir, test_fraction, seed):
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
    _tfds_prepare(builder, name)
    info = builder.info
    splits = _tfds_split_names(builder)
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
        "original_image_size": list(image_shape[:2]) if image_shape and None not in image_shape[:2] else None,
    }
    # Report on the labelled "test" split, else on "validation" (ImageNet: its "test" split
    # has no labels), else on a held-out share of "train". A dataset with both validates on
    # "validation"; the others hold a validation share out of "train" (`_choose_validation`).
    labelled = [s for s in ("test", "validation") if s in splits and _tfds_labelled(facts, s)]
    facts["test_split"] = labelled[0] if labelled else None
    facts["validation_split"] = "validation" if labelled == ["test", "validation"] else None
    for key, split_name in (("num_train", "train"), ("num_test", facts["test_split"]), ("num_validation", facts["validation_split"])):
        if split_name is None:
            continue
        if split_name in info.splits:
            facts[key] = int(info.splits[split_name].num_examples)
        else:  # e.g. under tfds.testing.mock_data, which has no split metadata: count
            facts[key] = len(_tfds_labels(facts, split_name))
    if facts["test_split"] is not None:
        return facts, lambda: _tfds_labels(facts, "train")
    train_labels = _tfds_labels(facts, "train")
    test = held_out_indices(train_labels, test_fraction, seed)
    if not 0 < len(test) < len(train_labels):
        raise ValueError(f"TFDS dataset {name!r} has no labelled test split and too few training examples to hold one out.")
    facts["test_split"] = f"a stratified {test_fraction:.0%} of the training split (seed {seed}): the dataset has no labelled test split"
    facts["test_indices"] = [int(i) for i in test]
    facts["num_train"], facts["num_test"] = len(train_labels) - len(test), len(test)
    return facts, lambda: np.delete(train_labels, test)


def _tfds_labelled(facts, split_name, sample=256):
    """Whether a TFDS split has labels: ImageNet's "test" split, for one, has -1 throughout."""
    first = _tfds_load(facts, split_name, decode_images=False).take(sample)
    return any(0 <= int(y) < len(facts["class_names"]) for _, y in first.as_numpy_iterator())


def _list_class_files(root):
    """{class name: [sorted files]} for the class sub-folders of `root`."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {
        c: [str(f) for f in image_files(root / c)]
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
    validation_dir = split_dirs.get("validation", split_dirs.get("val"))
    test_dir = split_dirs.get("test")
    if "train" in split_dirs and test_dir is None and validation_dir is not None:
        test_dir, validation_dir = validation_dir, None  # train/ + val/: val/ is what gets reported
    if "train" in split_dirs and test_dir is not None:
        files = {"train": _list_class_files(split_dirs["train"]), "test": _list_class_files(test_dir)}
        if validation_dir is not None:
            files["validation"] = _list_class_files(validation_dir)
        layout = ", ".join(f"{d.name}/" for d in (split_dirs["train"], validation_dir, test_dir) if d is not None) + " sub-folders"
    else:
        files, layout = {"train": _list_class_files(root)}, "one sub-folder per class"
    if not files["train"]:
        raise ValueError(
            f"No images found in {str(root)!r}: expected one sub-folder per class holding "
            f"{'/'.join(IMAGE_EXTENSIONS)} files (or train/ and test/ sub-folders of those)."
        )
    class_names = sorted(files["train"])
    index = {c: i for i, c in enumerate(class_names)}
    for split in ("validation", "test"):
        unknown = sorted(set(files.get(split, {})) - set(class_names))
        if unknown:
            raise ValueError(f"{split.capitalize()} classes {unknown} of {str(root)!r} have no training images.")
    pairs = {split: [(f, index[c]) for c in class_names for f in by_class.get(c, [])] for split, by_class in files.items()}
    if "test" not in pairs:  # a stratified test split, fixed by the seed
        labels = np.asarray([y for _, y in pairs["train"]])
        is_test = np.zeros(len(labels), bool)
        is_test[held_out_indices(labels, test_fraction, seed)] = True
        pairs["test"] = [pair for pair, t in zip(pairs["train"], is_test) if t]
        pairs["train"] = [pair for pair, t in zip(pairs["train"], is_test) if not t]
    if not pairs["test"]:
        raise ValueError(f"Image folder {str(root)!r} has too few images for a test split.")
    if verify_images:
        _check_images([f for split_pairs in pairs.values() for f, _ in split_pairs])
    facts = {
        "source": "folder",
        "name": root.name,
        "path": str(root),
        "layout": layout,
        "class_names": class_names,
        "num_train": len(pairs["train"]),
        "num_test": len(pairs["test"]),
        "test_split": "test" if test_dir is not None else f"a stratified {test_fraction:.0%} of the images (seed {seed})",
        "validation_split": "validation" if "validation" in pairs else None,
        "original_image_size": None,
    }
    for split, split_pairs in pairs.items():
        facts[f"{split}_files"] = [[f, y] for f, y in split_pairs]
    if "validation" in pairs:
        facts["num_validation"] = len(pairs["validation"])
    return facts, lambda: np.asarray([y for _, y in pairs["train"]], np.int64)


# ----------------------------------------------------------------------------- splits


def raw_split(facts, split):
    """A split as a `tf.data.Dataset` of (uint8 image [h, w, 3], int64 label), fixed order.

    `split` is "train" (the examples trained on), "validation" or "test". Image sizes may
    differ between examples (folders, most TFDS sets).
    """
    import tensorflow as tf

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    source, validation = facts["source"], facts["validation"]["source"]
    if split == "validation" and validation == "none":
        raise ValueError(f"{facts['name']!r} has no validation split (validation_fraction 0).")
    if split == "validation" and validation == "test":
        split = "test"
    if source == "folder":
        pairs = facts[f"{split}_files"]
        files = tf.constant([f for f, _ in pairs], tf.string)
        labels = tf.constant([y for _, y in pairs], tf.int64)
        return tf.data.Dataset.from_tensor_slices((files, labels)).map(_decode_file, num_parallel_calls=tf.data.AUTOTUNE)
    if split == "validation" and validation == "split" or split == "test" and "test_indices" not in facts:
        if source == "digits":
            return tf.data.Dataset.from_tensor_slices(_digits_arrays("test"))
        return _tfds_rgb(_tfds_load(facts, facts[f"{split}_split"]))
    # The rest are parts of the source's training split: `split`'s positions in it, or for
    # "train" every position not held out (for validation, or as the test split).
    held_out = {name: facts.get(f"{name}_indices", []) for name in ("validation", "test")}
    if split == "train" and not any(held_out.values()):
        return tf.data.Dataset.from_tensor_slices(_digits_arrays("train")) if source == "digits" else _tfds_rgb(_tfds_load(facts, facts["train_split"]))
    keep = np.zeros(facts["num_train"] + sum(len(i) for i in held_out.values()), bool)
    if split == "train":
        keep[:] = True
        keep[held_out["validation"] + held_out["test"]] = False
    else:
        keep[held_out[split]] = True
    if source == "digits":
        images, labels = _digits_arrays("train")
        return tf.data.Dataset.from_tensor_slices((images[keep], labels[keep]))
    # Filtered before decoding: only the kept images are decoded (ImageNet's held-out
    # validation is 10% of "train"; decoding all of it for each evaluation would be 10x).
    encoded = tf.data.Dataset.zip((_tfds_load(facts, facts["train_split"], decode_images=False), tf.data.Dataset.from_tensor_slices(keep)))
    encoded = encoded.filter(lambda example, kept: kept).map(lambda example, kept: example)
    # A filter hides the size; Keras needs it to end an evaluation without a warning.
    encoded = encoded.apply(tf.data.experimental.assert_cardinality(int(keep.sum())))
    image_feature = _tfds_module().builder(facts["name"], data_dir=facts.get("data_dir")).info.features["image"]
    return _tfds_rgb(encoded.map(lambda image, label: (image_feature.decode_example(image), label), num_parallel_calls=tf.data.AUTOTUNE))


def _decode_file(path, label):
    """An image file decoded by `decode_image` (EXIF orientation, any mode to RGB)."""
    import tensorflow as tf

    image = tf.numpy_function(lambda p: decode_image(p.decode()), [path], tf.uint8, stateful=False)
    image.set_shape([None, None, 3])
    return image, label


def _tfds_rgb(stream):
    import tensorflow as tf

    def to_rgb(image, label):
        image = tf.convert_to_tensor(image)
        if image.shape.rank == 2:
            image = image[..., None]
        if image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        return tf.cast(image, tf.uint8), tf.cast(label, tf.int64)

    return stream.map(to_rgb, num_parallel_calls=tf.data.AUTOTUNE)


def load_images(facts, split, image_size, preprocessing=Preprocessing(), limit=None):
    """A split resized for a model, as training evaluates: (uint8 images [N, H, W, 3], int64
    labels [N]), in the split's fixed order, at most `limit` of them. Normalise with
    `keras_vit.preprocess_input(images, preprocessing.mean, preprocessing.std)`."""
    import tensorflow as tf

    image_size = tuple(int(s) for s in image_size)
    stream = raw_split(facts, split)
    if limit is not None:
        stream = stream.take(int(limit))
    stream = stream.map(lambda x, y: (resize_for_model(x, image_size, preprocessing), y), num_parallel_calls=tf.data.AUTOTUNE)
    images, labels = [], []
    for x, y in stream.batch(256).as_numpy_iterator():
        images.append(x)
        labels.append(y)
    if not images:
        return np.zeros((0, *image_size, 3), np.uint8), np.zeros((0,), np.int64)
    return np.concatenate(images), np.concatenate(labels)
