"""keras_vit.training.data: the tf.data pipelines (batches, augmentation, evaluation = load_images)."""

import numpy as np
import pytest
import tensorflow as tf
from test_datasets import write_folder

import keras_vit
from keras_vit import datasets
from keras_vit.training import data


def _first(ds):
    return next(iter(ds))


def _count(ds):
    return sum(int(x.shape[0]) for x, _ in ds)


def _one_hot_maps(ds):
    """How many dataset ops apply a function holding a OneHot, upstream and downstream of the
    pipeline's cache (read from the dataset's graph)."""
    graph = tf.compat.v1.GraphDef.FromString(ds._as_serialized_graph().numpy())
    one_hot = {f.signature.name for f in graph.library.function if any(n.op == "OneHot" for n in f.node_def)}
    nodes = {n.name: n for n in graph.node}
    counts, node, after = {"before cache": 0, "after cache": 0}, graph.node[-1], True
    while node is not None:  # from the output back to the source, along each op's dataset input
        after = after and not node.op.startswith("CacheDataset")
        if any(attr.func.name in one_hot for attr in node.attr.values()):
            counts["after cache" if after else "before cache"] += 1
        node = nodes.get(node.input[0].split(":")[0].lstrip("^")) if node.input else None
    assert not after, "the pipeline has no cache"
    return counts


def test_digits_batches_and_split_sizes():
    d = data.load_data("digits", image_size=(16, 16), batch_size=32)
    x, y = _first(d.train)
    assert x.shape == (32, 16, 16, 3) and x.dtype == tf.float32 and y.shape == (32, 10)
    assert -1.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1.0
    assert _count(d.validation) == 144 and _count(d.test) == 360
    assert _count(d.train) == 1293 // 32 * 32  # drop_remainder
    none = data.load_data("digits", image_size=(8, 8), batch_size=32, validation_fraction=0)
    assert none.validation is None and _count(none.train) == 1437 // 32 * 32


def test_evaluation_pipelines_equal_load_images():
    preprocessing = keras_vit.Preprocessing(mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    d = data.load_data("digits", image_size=(16, 16), batch_size=64, eval_batch_size=50, preprocessing=preprocessing)
    for split, stream in (("test", d.test), ("validation", d.validation)):
        images, labels = datasets.load_images(d.facts, split, (16, 16), preprocessing, limit=50)
        x, y = _first(stream)
        normalised = keras_vit.preprocess_input(images, preprocessing.mean, preprocessing.std)
        np.testing.assert_array_equal(np.asarray(normalised), x.numpy())
        np.testing.assert_array_equal(labels, y.numpy().argmax(-1))


def test_evaluation_is_deterministic_and_training_is_augmented():
    aug = data.Augmentation(random_crop=True, crop_scale=(0.3, 0.6), flip=True)
    d = data.load_data("digits", image_size=(16, 16), batch_size=16, augmentation=aug, seed=1)
    first, second = _first(d.test)[0].numpy(), _first(d.test)[0].numpy()
    np.testing.assert_array_equal(first, second)
    # Training epochs differ (reshuffled and augmented).
    assert not np.array_equal(_first(d.train)[0].numpy(), _first(d.train)[0].numpy())


def test_keras_cv_augmentations_and_mixing():
    aug = data.Augmentation(random_crop=False, flip=False, randaugment=0.3, mixup=0.2, cutmix=1.0)
    d = data.load_data("digits", image_size=(16, 16), batch_size=32, augmentation=aug)
    x, y = _first(d.train)
    assert x.shape == (32, 16, 16, 3) and y.shape == (32, 10)
    np.testing.assert_allclose(y.numpy().sum(-1), 1.0, atol=1e-5)
    assert (y.numpy().max(-1) < 1.0).any()  # mixed (soft) labels


def test_image_folder_pipeline(tmp_path):
    root = write_folder(tmp_path / "pets", per_class=6)
    d = data.load_data(str(root), image_size=(8, 8), batch_size=4, test_fraction=0.34)
    x, y = _first(d.train)
    assert x.shape == (4, 8, 8, 3) and y.shape == (4, 2)
    assert _count(d.test) == 4 and _count(d.validation) == 1


def test_batch_larger_than_the_dataset():
    with pytest.raises(ValueError, match="batch_size 4096 is larger than the 1293 training examples"):
        data.load_data("digits", image_size=(8, 8), batch_size=4096)


def test_labels_are_one_hot_after_caching_and_the_cache_counts_every_split(monkeypatch):
    cached = {}
    original = data._evaluation_pipeline

    def spy(facts, split, image_size, preprocessing, batch_size, cache):
        cached[split] = cache
        return original(facts, split, image_size, preprocessing, batch_size, cache)

    monkeypatch.setattr(data, "_evaluation_pipeline", spy)
    # Digits at 16 px: 1293 + 144 + 360 examples of 16 * 16 * 3 bytes (+ an int64 label).
    all_splits = (1293 + 144 + 360) * (16 * 16 * 3 + 8)
    monkeypatch.setattr(data, "CACHE_LIMIT_BYTES", all_splits + 1)
    d = data.load_data("digits", image_size=(16, 16), batch_size=32)
    assert cached == {"test": True, "validation": True}
    monkeypatch.setattr(data, "CACHE_LIMIT_BYTES", all_splits)  # the training split alone would fit
    data.load_data("digits", image_size=(16, 16), batch_size=32)
    assert cached == {"test": False, "validation": False}
    # Cached elements are (image, int label): one-hot comes after the cache, in every pipeline.
    for stream in (d.train, d.validation, d.test):
        assert _one_hot_maps(stream) == {"before cache": 0, "after cache": 1}
    x, y = _first(d.test)
    assert y.shape == (32, 10) and y.dtype == tf.float32 and np.array_equal(y.numpy().sum(-1), np.ones(32))


def test_validation_on_test_is_the_test_pipeline(monkeypatch):
    splits = []
    original = datasets.raw_split
    monkeypatch.setattr(datasets, "raw_split", lambda facts, split: splits.append(split) or original(facts, split))
    d = data.load_data("digits", image_size=(8, 8), batch_size=32, validate_on_test=True)
    assert sorted(splits) == ["test", "train"]  # the test split is read by one pipeline
    assert d.facts["validation"]["source"] == "test" and _count(d.validation) == _count(d.test) == 360
