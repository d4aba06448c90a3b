import re

import numpy as np
import pytest

from keras_vit.labels import (
    LABEL_SETS,
    class_names,
    decode_predictions,
    resolve_labels,
    synsets,
)

# Independent facts: Keras' imagenet_class_index.json (index: wnid, name with "_" for " ").
IMAGENET1K_KNOWN = {
    0: ("n01440764", "tench"),
    1: ("n01443537", "goldfish"),
    134: ("n02012849", "crane"),
    207: ("n02099601", "golden retriever"),
    281: ("n02123045", "tabby"),
    409: ("n02708093", "analog clock"),
    517: ("n03126707", "crane"),
    850: ("n04399382", "teddy"),
    999: ("n15075141", "toilet tissue"),
}
# ImageNet-21k (fall 2011) as in the Google ViT in21k checkpoints: the wnids sorted.
IMAGENET21K_KNOWN = {
    0: ("n00004475", "organism"),
    359: ("n01440764", "tench"),
    21842: ("n15102894", "knothole"),
}


def test_label_sets_have_the_published_class_counts():
    assert LABEL_SETS == ("imagenet1k", "imagenet21k")
    assert len(class_names("imagenet1k")) == len(synsets("imagenet1k")) == 1000
    assert len(class_names("imagenet21k")) == len(synsets("imagenet21k")) == 21843


@pytest.mark.parametrize("label_set", LABEL_SETS)
def test_wnids_are_unique_wordnet_ids_in_sorted_order(label_set):
    wnids = synsets(label_set)
    assert len(set(wnids)) == len(wnids)
    assert all(w[0] == "n" and len(w) == 9 and w[1:].isdigit() for w in wnids)
    assert wnids == sorted(wnids)


@pytest.mark.parametrize(
    "label_set, known", [("imagenet1k", IMAGENET1K_KNOWN), ("imagenet21k", IMAGENET21K_KNOWN)]
)
def test_known_indices_have_the_expected_wnid_and_first_lemma(label_set, known):
    wnids, names = synsets(label_set), class_names(label_set)
    assert {i: (wnids[i], names[i]) for i in known} == known


def test_imagenet21k_holds_the_1k_classes_except_teddy():
    missing = set(synsets("imagenet1k")) - set(synsets("imagenet21k"))
    assert missing == {"n04399382"}


def test_names_are_single_lemmas():
    for label_set in LABEL_SETS:
        names = class_names(label_set)
        assert all(name and "," not in name and name == name.strip() for name in names)


def test_class_names_returns_a_copy():
    class_names("imagenet1k")[0] = "changed"
    assert class_names("imagenet1k")[0] == "tench"


def test_decode_predictions_imagenet1k_ranks_classes_best_first():
    preds = np.full((2, 1000), 0.001, np.float32)
    preds[0, [207, 281, 1]] = [0.7, 0.2, 0.05]
    preds[1, 999] = 0.9
    decoded = decode_predictions(preds, top=3)
    assert [[(i, n) for i, n, _ in row] for row in decoded] == [
        [(207, "golden retriever"), (281, "tabby"), (1, "goldfish")],
        [(999, "toilet tissue"), (0, "tench"), (1, "goldfish")],  # ties: lowest index first
    ]
    assert decoded[0][0][2] == pytest.approx(0.7)
    for row in decoded:
        scores = [score for _, _, score in row]
        assert scores == sorted(scores, reverse=True)
        assert all(type(i) is int and type(score) is float for i, _, score in row)


def test_decode_predictions_imagenet21k_from_width():
    preds = np.zeros((1, 21843))
    preds[0, 359] = 5.0
    preds[0, 21842] = 3.0
    decoded = decode_predictions(preds)
    assert len(decoded) == 1 and len(decoded[0]) == 5
    assert decoded[0][:2] == [(359, "tench", 5.0), (21842, "knothole", 3.0)]


def test_decode_predictions_with_explicit_labels_and_clipped_top():
    decoded = decode_predictions([[0.1, 0.6, 0.3]], top=10, labels=["cat", "dog", "fox"])
    assert decoded == [[(1, "dog", 0.6), (2, "fox", 0.3), (0, "cat", 0.1)]]


def test_decode_predictions_with_a_named_label_set():
    preds = np.zeros((1, 1000))
    preds[0, 850] = 1.0
    assert decode_predictions(preds, top=1, labels="imagenet1k") == [[(850, "teddy", 1.0)]]


@pytest.mark.parametrize("shape", [(1000,), (1, 2, 1000)])
def test_decode_predictions_rejects_wrong_rank(shape):
    with pytest.raises(ValueError, match=r"\[batch, num_classes\].*" + re.escape(str(shape))):
        decode_predictions(np.zeros(shape))


def test_decode_predictions_rejects_unknown_width():
    with pytest.raises(ValueError, match=r"shape \(2, 999\).*999 classes.*1000 \(imagenet1k\)"):
        decode_predictions(np.zeros((2, 999)))


def test_decode_predictions_rejects_labels_of_the_wrong_length():
    with pytest.raises(ValueError, match=r"shape \(1, 1000\).*3 class names, expected 1000"):
        decode_predictions(np.zeros((1, 1000)), labels=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"1000 class names, expected 21843"):
        decode_predictions(np.zeros((1, 21843)), labels="imagenet1k")


@pytest.mark.parametrize("top", [0, -1, 2.5])
def test_decode_predictions_rejects_bad_top(top):
    with pytest.raises(ValueError, match="top must be an integer >= 1"):
        decode_predictions(np.zeros((1, 1000)), top=top)


def test_resolve_labels_rejects_unknown_label_set():
    with pytest.raises(ValueError, match=r"Unknown label set 'imagenet22k'"):
        resolve_labels("imagenet22k", 21841)
