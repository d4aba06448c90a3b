"""ImageNet label sets and `decode_predictions`.

Two label sets ship as text files next to this module, one class per line, line ``i``
(counting from 0) being class index ``i``: ``<WordNet id><TAB><name>``. The name is the
first WordNet lemma of the synset ("tench", not "tench, Tinca tinca"); names are not unique
(e.g. "crane" is class 134, the bird, and class 517, the machine), the WordNet ids are.

- ``imagenet1k.txt``: the 1000 ILSVRC-2012 classes in the standard index order, i.e. the
  WordNet ids sorted (0 "tench" n01440764, 1 "goldfish", ..., 999 "toilet tissue"
  n15075141), the order of Keras' ``imagenet_class_index.json``, timm and the Google ViT
  checkpoints.
- ``imagenet21k.txt``: the 21843 ImageNet-21k (fall 2011 release) classes in the order of
  the original Google ViT ``in21k`` checkpoints, i.e. the WordNet ids sorted (0 "organism"
  n00004475, ..., 21842 "knothole" n15102894). It holds 999 of the 1k classes: the fall 2011
  release has no n04399382 ("teddy", 1k class 850).

Origin: read from timm 1.0.31 (Apache-2.0), ``timm/data/_info/``: the WordNet ids from
``imagenet_synsets.txt`` (1k) and ``imagenet21k_goog_synsets.txt`` (21k), the names from
``imagenet_synset_to_lemma.txt``, whose lemmas come from WordNet 3.0 (Princeton WordNet
license, permissive). To regenerate: for each id of the synset file, in order, write the id,
a tab and the lemma string cut at the first ", ".

Nothing here imports TensorFlow: it works with any Keras backend.
"""

import functools
import importlib.resources
import numbers

import numpy as np

_NUM_CLASSES = {"imagenet1k": 1000, "imagenet21k": 21843}
LABEL_SETS = tuple(_NUM_CLASSES)


@functools.cache
def _load(label_set):
    """Returns ``(wnids, names)``, two tuples in class-index order."""
    if label_set not in _NUM_CLASSES:
        raise ValueError(f"Unknown label set {label_set!r}; expected one of {LABEL_SETS}.")
    text = importlib.resources.files(__name__).joinpath(f"{label_set}.txt").read_text("utf-8")
    rows = [line.split("\t") for line in text.splitlines()]
    return tuple(wnid for wnid, _ in rows), tuple(name for _, name in rows)


def class_names(label_set):
    """The class names of `label_set` (one of `LABEL_SETS`), in class-index order."""
    return list(_load(label_set)[1])


def synsets(label_set):
    """The WordNet ids ("n01440764", ...) of `label_set`, in class-index order."""
    return list(_load(label_set)[0])


def resolve_labels(labels, num_classes):
    """Class names for a classifier with `num_classes` outputs.

    Args:
        labels: None (the label set whose size is `num_classes`), a label-set name from
            `LABEL_SETS`, or a sequence of `num_classes` class names.
        num_classes: int, the width C of the predictions.

    Returns:
        A list of `num_classes` names, in class-index order.
    """
    if labels is None:
        by_size = {size: name for name, size in _NUM_CLASSES.items()}
        if num_classes not in by_size:
            known = ", ".join(f"{size} ({name})" for size, name in by_size.items())
            raise ValueError(
                f"No known label set has {num_classes} classes (known: {known}); "
                "pass labels=<a sequence of class names>."
            )
        labels = by_size[num_classes]
    names = class_names(labels) if isinstance(labels, str) else list(labels)
    if len(names) != num_classes:
        raise ValueError(f"labels has {len(names)} class names, expected {num_classes}.")
    return names


def class_names_or_default(names, num_classes):
    """A model's class names (`names`, e.g. `ViTConfig.class_names`) as strings; without them
    the label set of `num_classes` classes (ImageNet-1k / 21k), else `class_0`, `class_1`, ...
    The names a model's outputs are shown and exported with."""
    if names:
        return [str(name) for name in names]
    try:
        return resolve_labels(None, num_classes)
    except ValueError:
        return [f"class_{i}" for i in range(num_classes)]


def decode_predictions(preds, top=5, labels=None):
    """The `top` best classes of each prediction, best first.

    Args:
        preds: array-like of shape [B, C] (numpy, or any tensor `np.asarray` accepts):
            scores, logits or probabilities.
        top: int >= 1, how many classes per image; clipped to C.
        labels: see `resolve_labels`: None (inferred from C: 1000 or 21843), a label-set
            name, or a sequence of C class names.

    Returns:
        B lists of ``min(top, C)`` tuples ``(class_id: int, name: str, score: float)``.
    """
    if not isinstance(top, numbers.Integral) or top < 1:
        raise ValueError(f"top must be an integer >= 1, got {top!r}.")
    preds = np.asarray(preds, dtype=np.float64)
    if preds.ndim != 2:
        raise ValueError(
            f"decode_predictions expects preds of shape [batch, num_classes], got shape "
            f"{preds.shape}."
        )
    try:
        names = resolve_labels(labels, preds.shape[1])
    except ValueError as err:
        raise ValueError(f"preds has shape {preds.shape}: {err}") from None
    # A stable sort on the negated scores keeps equal scores in class-index order.
    best = np.argsort(-preds, axis=1, kind="stable")[:, :top]
    return [
        [(int(i), names[i], float(scores[i])) for i in indices]
        for scores, indices in zip(preds, best)
    ]
