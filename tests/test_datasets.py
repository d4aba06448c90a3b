"""keras_vit.datasets: facts, the three splits (validation held out of train, never the test
split unless asked), load_images, and bad input."""

import functools
import json

import numpy as np
import pytest

from keras_vit import datasets
from keras_vit.preprocessing import Preprocessing


def write_folder(root, classes=("cat", "dog"), per_class=5, size=(20, 24), fmt="png"):
    """Class folders of solid-colour images: class i is grey level 40 + 150 * i."""
    from PIL import Image

    for i, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            Image.fromarray(np.full((*size, 3), 40 + 150 * i, np.uint8)).save(root / name / f"{j}.{fmt}")
    return root


def test_digits_hold_out_a_stratified_seeded_validation_share_of_train():
    facts = datasets.resolve_dataset("digits")
    json.dumps(facts)  # JSON-able
    assert facts["validation"]["source"] == "held_out"
    assert (facts["num_train"], facts["num_validation"], facts["num_test"]) == (1293, 144, 360)
    train_images, train_labels = datasets._digits_arrays("train")  # the source split, in its order
    held_out = np.asarray(facts["validation_indices"])
    assert len(set(held_out)) == 144 and held_out.max() < 1437
    # Stratified: every class's share of the validation set is its share of train (within 1).
    expected = np.bincount(train_labels) * 144 / 1437
    assert np.abs(np.bincount(train_labels[held_out], minlength=10) - expected).max() <= 1
    # The splits stream exactly those examples: validation the held-out ones, train the rest.
    size = (8, 8)
    val_images, val_labels = datasets.load_images(facts, "validation", size)
    kept = np.setdiff1d(np.arange(1437), held_out)
    _, labels = datasets.load_images(facts, "train", size)
    np.testing.assert_array_equal(val_labels, train_labels[held_out])
    np.testing.assert_array_equal(labels, train_labels[kept])
    whole_train = datasets.load_images(datasets.resolve_dataset("digits", validation_fraction=0), "train", size)[0]
    np.testing.assert_array_equal(val_images, whole_train[held_out])
    # Seeded: the same split again, another with another seed.
    assert datasets.resolve_dataset("digits")["validation_indices"] == facts["validation_indices"]
    assert datasets.resolve_dataset("digits", seed=1)["validation_indices"] != facts["validation_indices"]


def test_test_split_only_when_asked_and_no_validation_when_the_fraction_is_zero():
    asked = datasets.resolve_dataset("digits", validate_on_test=True)
    assert asked["validation"]["source"] == "test" and "optimistic" in asked["validation"]["description"]
    assert (asked["num_train"], asked["num_validation"]) == (1437, 360)
    images, _ = datasets.load_images(asked, "validation", (8, 8))
    np.testing.assert_array_equal(images, datasets.load_images(asked, "test", (8, 8))[0])
    none = datasets.resolve_dataset("digits", validation_fraction=0)
    assert none["validation"]["source"] == "none" and none["num_validation"] == 0 and none["num_train"] == 1437
    with pytest.raises(ValueError, match="has no validation split"):
        datasets.raw_split(none, "validation")


def test_held_out_indices_are_stratified_even_for_tiny_classes():
    labels = np.array([0] * 3 + [1] * 3 + [2] * 14)
    chosen = datasets.held_out_indices(labels, 0.1, seed=0)
    assert len(chosen) == 2 and list(np.bincount(labels[chosen], minlength=3)) == [0, 0, 2]
    chosen = datasets.held_out_indices(labels, 0.5, seed=0)
    assert list(np.bincount(labels[chosen], minlength=3)) == [2, 1, 7] or list(np.bincount(labels[chosen], minlength=3)) == [1, 2, 7]


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_image_folder_splits_test_then_validation(tmp_path, fmt):
    root = write_folder(tmp_path / "pets", per_class=5, fmt=fmt)
    facts = datasets.resolve_dataset(str(root), test_fraction=0.4)
    assert facts["source"] == "folder" and facts["class_names"] == ["cat", "dog"]
    assert (facts["num_train"], facts["num_validation"], facts["num_test"]) == (5, 1, 4)
    files = {split: {f for f, _ in facts[f"{split}_files"]} for split in ("train", "validation", "test")}
    assert not (files["train"] & files["test"] or files["train"] & files["validation"] or files["validation"] & files["test"])
    images, labels = datasets.load_images(facts, "test", (8, 8))
    assert images.shape == (4, 8, 8, 3) and labels.tolist() == [0, 0, 1, 1]
    # Class 0 is dark, class 1 bright (JPEG is lossy: approximately).
    assert abs(int(images[0].mean()) - 40) <= 3 and abs(int(images[-1].mean()) - 190) <= 3


def test_image_folder_with_split_subfolders(tmp_path):
    write_folder(tmp_path / "ds" / "train", per_class=6)
    write_folder(tmp_path / "ds" / "test", per_class=2)
    facts = datasets.resolve_dataset(f"folder:{tmp_path / 'ds'}")
    assert (facts["num_train"], facts["num_validation"], facts["num_test"]) == (11, 1, 4)
    assert facts["validation"]["source"] == "held_out"
    write_folder(tmp_path / "ds" / "validation", per_class=3)
    facts = datasets.resolve_dataset(f"folder:{tmp_path / 'ds'}")
    assert facts["validation"]["source"] == "split" and (facts["num_train"], facts["num_validation"], facts["num_test"]) == (12, 6, 4)
    # train/ and val/ only: val/ is what is reported on, validation is held out of train/.
    write_folder(tmp_path / "imagenet_like" / "train", per_class=6)
    write_folder(tmp_path / "imagenet_like" / "val", per_class=2)
    facts = datasets.resolve_dataset(str(tmp_path / "imagenet_like"))
    assert facts["test_files"][0][0].startswith(str(tmp_path / "imagenet_like" / "val"))
    assert facts["validation"]["source"] == "held_out" and facts["num_test"] == 4


def test_tfds_with_mock_data(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    # mock_data records no split names: say which splits each dataset has.
    monkeypatch.setattr(datasets, "_tfds_split_names", lambda builder: ["train", "test"])
    with tfds.testing.mock_data(num_examples=20):
        facts = datasets.resolve_dataset("cifar10", data_dir=str(tmp_path))
        assert facts["source"] == "tfds" and facts["num_classes"] == len(facts["class_names"]) == 10
        assert facts["test_split"] == "test" and facts["validation"]["source"] == "held_out"
        assert facts["num_train"] + facts["num_validation"] == 20 and facts["num_validation"] == 2
        images, labels = datasets.load_images(facts, "validation", (16, 16))
        assert images.shape == (2, 16, 16, 3) and labels.shape == (2,)
        # A dataset with its own validation split uses it.
        monkeypatch.setattr(datasets, "_tfds_split_names", lambda builder: ["train", "validation", "test"])
        flowers = datasets.resolve_dataset("oxford_flowers102", data_dir=str(tmp_path))
        assert flowers["validation"]["source"] == "split" and flowers["validation_split"] == "validation"
        assert flowers["test_split"] == "test" and flowers["num_validation"] == 20


@functools.cache
def _local_tfds_builders():
    """Two TFDS builders defined here, registered once per process: "keras_vit_test_shades"
    generates 24 train and 8 test 8x8 images of two grey levels without a network;
    "keras_vit_test_unreachable" first downloads from a host that cannot resolve (.invalid,
    RFC 2606), as a machine without a network sees any download."""
    import tensorflow_datasets as tfds

    def info(self):
        features = {"image": tfds.features.Image(shape=(8, 8, 3)), "label": tfds.features.ClassLabel(names=["dark", "light"])}
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features), supervised_keys=("image", "label"))

    def generate_examples(self, count):
        for i in range(count):
            yield i, {"image": np.full((8, 8, 3), 40 + 150 * (i % 2), np.uint8), "label": i % 2}

    def local_splits(self, dl_manager):
        return {"train": self._generate_examples(24), "test": self._generate_examples(8)}

    def unreachable_splits(self, dl_manager):
        dl_manager.download("https://keras-vit-test.invalid/shades.tar.gz")
        return local_splits(self, dl_manager)

    def builder(class_name, split_generators):
        namespace = {"VERSION": tfds.core.Version("1.0.0"), "_info": info, "_split_generators": split_generators, "_generate_examples": generate_examples}
        # In a package's module, as TFDS's own builders are: TFDS then looks for the builder's
        # checksums beside its code, which is what imports importlib_resources.
        namespace["__module__"] = "keras_vit.tfds_test_builders"
        return type(class_name, (tfds.core.GeneratorBasedBuilder,), namespace)

    return builder("KerasVitTestShades", local_splits), builder("KerasVitTestUnreachable", unreachable_splits)


def test_a_tfds_dataset_is_prepared_on_first_use_and_read_from_its_folder(tmp_path):
    """The real TFDS path that mock_data skips: the builder prepares the dataset in data_dir
    (its files written there), then its splits are read back with their labels."""
    _local_tfds_builders()
    facts = datasets.resolve_dataset("keras_vit_test_shades", data_dir=str(tmp_path))
    assert list(tmp_path.glob("keras_vit_test_shades/1.0.0/*.tfrecord*"))
    assert facts["class_names"] == ["dark", "light"] and facts["test_split"] == "test" and facts["num_test"] == 8
    assert facts["num_train"] + facts["num_validation"] == 24
    images, labels = datasets.load_images(facts, "test", (8, 8))
    np.testing.assert_array_equal(images[:, 0, 0, 0], np.where(labels == 1, 190, 40))


def test_a_tfds_dataset_that_cannot_be_downloaded_is_one_clear_error(tmp_path, monkeypatch):
    from tensorflow_datasets.core.download import downloader

    _local_tfds_builders()
    # TFDS retries a failed request 10 times with exponential back-off (about 200 s).
    monkeypatch.setattr(downloader, "MAX_RETRIES", 0)
    with pytest.raises(ValueError) as error:
        datasets.resolve_dataset("keras_vit_test_unreachable", data_dir=str(tmp_path))
    message = str(error.value)
    assert message.startswith(f"Could not download and prepare TFDS dataset 'keras_vit_test_unreachable' in {tmp_path}: ")
    assert "keras-vit-test.invalid" in message and "tfds build keras_vit_test_unreachable --data_dir DIR" in message
    assert not list(tmp_path.glob("keras_vit_test_unreachable/1.0.0/*.tfrecord*"))


def _whole_train_split(facts):
    """The source's whole training split, decoded by tfds.load: (images, labels) arrays."""
    pairs = list(datasets._tfds_rgb(datasets._tfds_load(facts, "train")).as_numpy_iterator())
    return np.stack([x for x, _ in pairs]), np.asarray([y for _, y in pairs])


def test_tfds_without_a_test_split_holds_test_and_validation_out_of_train(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(datasets, "_tfds_split_names", lambda builder: ["train"])  # as tf_flowers
    loads = []
    original_load = datasets._tfds_load

    def spy(facts, split, decode_images=True):
        loads.append(decode_images)
        return original_load(facts, split, decode_images)

    monkeypatch.setattr(datasets, "_tfds_load", spy)
    with tfds.testing.mock_data(num_examples=40):
        facts = datasets.resolve_dataset("cifar10", data_dir=str(tmp_path), test_fraction=0.25, validation_fraction=0.2)
        assert facts["test_split"].startswith("a stratified 25% of the training split")
        assert (facts["num_train"], facts["num_validation"], facts["num_test"]) == (24, 6, 10)
        test, validation = set(facts["test_indices"]), set(facts["validation_indices"])
        assert len(test) == 10 and len(validation) == 6 and not test & validation and max(test | validation) < 40
        all_images, all_labels = _whole_train_split(facts)
        train = sorted(set(range(40)) - test - validation)
        for split, positions in (("train", train), ("validation", sorted(validation)), ("test", sorted(test))):
            loads.clear()
            stream = list(datasets.raw_split(facts, split).as_numpy_iterator())
            assert loads == [False]  # filtered on the encoded images, then decoded
            np.testing.assert_array_equal(np.stack([x for x, _ in stream]), all_images[positions])
            np.testing.assert_array_equal([y for _, y in stream], all_labels[positions])
        assert json.loads(json.dumps(facts)) == facts


def test_tfds_test_split_without_labels_is_not_the_test_split(tmp_path, monkeypatch):
    """ImageNet's TFDS "test" split has the label -1 throughout: report on "validation"."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    monkeypatch.setattr(datasets, "_tfds_split_names", lambda builder: ["train", "validation", "test"])
    original_load = datasets._tfds_load

    def unlabelled_test(facts, split, decode_images=True):
        stream = original_load(facts, split, decode_images)
        return stream.map(lambda x, y: (x, tf.constant(-1, tf.int64))) if split == "test" else stream

    monkeypatch.setattr(datasets, "_tfds_load", unlabelled_test)
    with tfds.testing.mock_data(num_examples=20):
        facts = datasets.resolve_dataset("cifar10", data_dir=str(tmp_path))
        assert facts["test_split"] == "validation" and facts["validation_split"] is None
        assert facts["validation"]["source"] == "held_out" and facts["num_test"] == 20
        _, labels = datasets.load_images(facts, "test", (8, 8))
        assert ((labels >= 0) & (labels < 10)).all()


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match=r"Unknown dataset 'cifar11'.*Did you mean.*cifar10"):
        datasets.resolve_dataset("cifar11")


def test_folder_without_images(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="No images found"):
        datasets.resolve_dataset(str(tmp_path / "empty"))


def test_folder_with_a_corrupt_file(tmp_path):
    root = write_folder(tmp_path / "pets", per_class=3)
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(ValueError, match=r"Corrupt or unreadable image file .*broken\.png"):
        datasets.resolve_dataset(str(root))


def test_bad_validation_fraction():
    with pytest.raises(ValueError, match="validation_fraction must be in"):
        datasets.resolve_dataset("digits", validation_fraction=1.0)


def test_load_images_uses_the_preprocessing_resize():
    facts = datasets.resolve_dataset("digits")
    squash, _ = datasets.load_images(facts, "test", (16, 16), limit=3)
    center, _ = datasets.load_images(facts, "test", (16, 16), Preprocessing(crop_mode="center", crop_fraction=0.5), limit=3)
    assert squash.shape == center.shape == (3, 16, 16, 3)
    # A centre crop of half the (resized) digit: its middle, magnified.
    assert not np.array_equal(squash, center)
    half = Preprocessing(crop_mode="center", crop_fraction=0.5)
    expected = [np.asarray(datasets.resize_for_model(x, (16, 16), half)) for x in datasets._digits_arrays("test")[0][:3]]
    np.testing.assert_array_equal(center, np.stack(expected))
