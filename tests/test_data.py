"""keras_vit.training.data: the three sources, the pipeline, load_images and bad input."""

import json

import numpy as np
import pytest
import tensorflow as tf

import keras_vit
from keras_vit.training import data


def _first(ds):
    return next(iter(ds))


def _write_folder(root, classes=("cat", "dog"), per_class=5, size=(20, 24), fmt="png"):
    """Class folders of solid-colour images: class i is grey level 40 + 150 * i."""
    from PIL import Image

    for i, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            pixels = np.full((*size, 3), 40 + 150 * i, np.uint8)
            Image.fromarray(pixels).save(root / name / f"{j}.{fmt}")
    return root


def test_digits_facts_split_and_batches():
    d = data.load_data("digits", image_size=(16, 16), batch_size=32)
    f = d.facts
    assert f["source"] == "digits" and f["class_names"] == [str(i) for i in range(10)]
    assert (f["num_train"], f["num_test"]) == (1437, 360)
    assert f["image_size"] == [16, 16] and f["mean"] == [0.5] * 3 and f["validation"] == "test"
    json.dumps(f)  # JSON-able
    x, y = _first(d.train)
    assert x.shape == (32, 16, 16, 3) and x.dtype == tf.float32 and y.shape == (32, 10)
    assert -1.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1.0
    # The test split is stratified: each class's share matches the whole set's (within 1).
    from sklearn.datasets import load_digits

    _, labels = data.load_images(f, "test")
    expected = np.bincount(load_digits().target) * 360 / 1797
    assert np.abs(np.bincount(labels) - expected).max() <= 1


def test_load_images_matches_the_evaluation_pipeline():
    d = data.load_data("digits", image_size=(16, 16), batch_size=64, eval_batch_size=50)
    images, labels = data.load_images(d.facts, "test", limit=50)
    assert images.shape == (50, 16, 16, 3) and images.dtype == np.uint8 and labels.shape == (50,)
    x, y = _first(d.test)
    normalised = keras_vit.preprocess_input(images, d.facts["mean"], d.facts["std"])
    np.testing.assert_array_equal(np.asarray(normalised), x.numpy())
    np.testing.assert_array_equal(labels, y.numpy().argmax(-1))
    # Deterministic: same order twice, the train split too.
    again, _ = data.load_images(d.facts, "test", limit=50)
    np.testing.assert_array_equal(images, again)
    train_images, train_labels = data.load_images(d.facts, "train")
    assert train_images.shape == (1437, 16, 16, 3) and train_labels.shape == (1437,)


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


def test_held_out_validation():
    d = data.load_data("digits", image_size=(8, 8), batch_size=32, validation_fraction=0.1)
    assert d.facts["validation"] == "held_out" and d.facts["num_validation"] == 144
    n_val = sum(int(x.shape[0]) for x, _ in d.validation)
    n_train = sum(int(x.shape[0]) for x, _ in d.train)
    assert n_val == 144 and n_train == (1437 - 144) // 32 * 32


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_image_folder(tmp_path, fmt):
    root = _write_folder(tmp_path / "pets", per_class=5, fmt=fmt)
    d = data.load_data(str(root), image_size=(8, 8), batch_size=4, test_fraction=0.4)
    f = d.facts
    assert f["source"] == "folder" and f["class_names"] == ["cat", "dog"]
    assert (f["num_train"], f["num_test"]) == (6, 4)
    images, labels = data.load_images(f, "test")
    assert images.shape == (4, 8, 8, 3) and labels.tolist() == [0, 0, 1, 1]
    # Class 0 is dark, class 1 bright (JPEG is lossy: approximately).
    assert abs(int(images[0].mean()) - 40) <= 3 and abs(int(images[-1].mean()) - 190) <= 3
    x, y = _first(d.train)
    assert x.shape == (4, 8, 8, 3) and y.shape == (4, 2)


def test_image_folder_with_train_and_test_subfolders(tmp_path):
    _write_folder(tmp_path / "ds" / "train", per_class=3)
    _write_folder(tmp_path / "ds" / "test", per_class=2)
    f = data.resolve_dataset(f"folder:{tmp_path / 'ds'}")
    assert (f["num_train"], f["num_test"], f["class_names"]) == (6, 4, ["cat", "dog"])


def test_tfds_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        d = data.load_data("cifar10", image_size=(16, 16), batch_size=4, data_dir=str(tmp_path))
        f = d.facts
        assert f["source"] == "tfds" and f["num_classes"] == len(f["class_names"]) == 10
        assert (f["num_train"], f["num_test"]) == (12, 12) and f["test_split"] == "test"
        x, y = _first(d.train)
        assert x.shape == (4, 16, 16, 3) and y.shape == (4, 10)
        images, labels = data.load_images(f, "test", limit=5)
        assert images.shape == (5, 16, 16, 3) and labels.shape == (5,)


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match=r"Unknown dataset 'cifar11'.*Did you mean.*cifar10"):
        data.resolve_dataset("cifar11")


def test_folder_without_images(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="No images found"):
        data.resolve_dataset(str(tmp_path / "empty"))


def test_folder_with_a_corrupt_file(tmp_path):
    root = _write_folder(tmp_path / "pets", per_class=3)
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(ValueError, match=r"Corrupt or unreadable image file .*broken\.png"):
        data.resolve_dataset(str(root))


def test_batch_larger_than_the_dataset():
    with pytest.raises(ValueError, match="batch_size 4096 is larger than the 1437 training examples"):
        data.load_data("digits", image_size=(8, 8), batch_size=4096)
