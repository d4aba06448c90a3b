"""Named pretrained weights, and turning `weights=` (name, URL or path) into a local file.

The AugReg checkpoints ("How to train your ViT", Steiner et al. 2021) are the ones timm
and the google-research/vision_transformer README recommend per model: ImageNet-21k
pre-training (21843 classes), and the same fine-tuned on ImageNet-1k at 224 px. The paper
checkpoints (Dosovitskiy et al. 2021) are ImageNet-21k with the pre-logits layer.
"""

import os
import typing
import urllib.parse

import keras

from keras_vit.config import MODEL_SIZES, VARIANTS
from keras_vit.weights.errors import CheckpointError


class NamedWeights(typing.NamedTuple):
    url: str
    num_classes: int
    image_size: int
    description: str


_AUGREG = "https://storage.googleapis.com/vit_models/augreg/"
_PAPER_IN21K = "https://storage.googleapis.com/vit_models/imagenet21k/"
# (variant, AugReg ImageNet-21k run, learning rate of its ImageNet-1k fine-tuning at 224 px)
_AUGREG_RUNS = (
    ("ViTTi16", "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0", "0.03"),
    ("ViTS16", "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0", "0.03"),
    ("ViTS32", "S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0", "0.03"),
    ("ViTB16", "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0", "0.01"),
    ("ViTB32", "B_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.03-do_0.0-sd_0.0", "0.03"),
    ("ViTL16", "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1", "0.01"),
)
_PAPER_RUNS = (("ViTB16", "ViT-B_16"), ("ViTB32", "ViT-B_32"), ("ViTL16", "ViT-L_16"), ("ViTL32", "ViT-L_32"), ("ViTH14", "ViT-H_14"))

# variant -> weights name -> NamedWeights
PRETRAINED_WEIGHTS = {variant: {} for variant in VARIANTS}
for _variant, _run, _lr in _AUGREG_RUNS:
    PRETRAINED_WEIGHTS[_variant]["augreg_in21k"] = NamedWeights(
        f"{_AUGREG}{_run}.npz", 21843, 224, "AugReg, ImageNet-21k"
    )
    PRETRAINED_WEIGHTS[_variant]["augreg_in21k_ft_in1k"] = NamedWeights(
        f"{_AUGREG}{_run}--imagenet2012-steps_20k-lr_{_lr}-res_224.npz", 1000, 224, "AugReg, ImageNet-21k, fine-tuned on ImageNet-1k"
    )
for _variant, _file in _PAPER_RUNS:
    PRETRAINED_WEIGHTS[_variant]["in21k"] = NamedWeights(
        f"{_PAPER_IN21K}{_file}.npz", 21843, 224, "ViT paper, ImageNet-21k, with the pre-logits layer"
    )


def available_weights(variant=None):
    """Names of the pretrained weights of `variant` (e.g. `"ViTB16"`), or `{variant: names}`."""
    if variant is None:
        return {v: sorted(names) for v, names in PRETRAINED_WEIGHTS.items() if names}
    return sorted(PRETRAINED_WEIGHTS.get(variant, {}))


def match_variant(hidden_dim, num_layers, num_heads, mlp_dim, patch_size):
    """The named variant with these sizes (`"ViTB16"`), or None."""
    for variant, (size, patch) in VARIANTS.items():
        sizes = dict(hidden_dim=hidden_dim, num_layers=num_layers, num_heads=num_heads, mlp_dim=mlp_dim)
        if MODEL_SIZES[size] == sizes and tuple(patch_size) == (patch, patch):
            return variant
    return None


def weights_cache_dir():
    """The folder `keras.utils.get_file` caches downloads in: `$KERAS_HOME/models` (default
    `~/.keras/models`), or `/tmp/.keras/models` when that is not writable."""
    base = os.path.expanduser(os.environ.get("KERAS_HOME") or os.path.join("~", ".keras"))
    try:
        os.makedirs(base, exist_ok=True)
    except OSError:
        pass
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return os.path.join(base, "models")


def _download(url, what):
    file_name = os.path.basename(urllib.parse.urlsplit(url).path)
    cache_dir = weights_cache_dir()
    cached = os.path.join(cache_dir, file_name)
    if os.path.isfile(cached):
        return cached
    try:
        # get_file falls back to /tmp when its cache_dir does not exist yet: create it.
        os.makedirs(cache_dir, exist_ok=True)
        return keras.utils.get_file(
            fname=file_name, origin=url, cache_dir=os.path.dirname(cache_dir), cache_subdir=os.path.basename(cache_dir)
        )
    except Exception as error:  # get_file raises bare Exceptions for network errors
        raise CheckpointError(
            f"Could not download {what} from {url} ({error}). Without internet access, fetch "
            f"that file on another machine and put it at {cached} (it is then used as is), or "
            "pass its local path as `weights=`."
        ) from None


def resolve_weights(weights, variant=None):
    """A local path for `weights`: an existing file or folder as is, a URL (`https://`,
    `file://`) or a weights name (`"augreg_in21k"`, for `variant`) downloaded with
    `keras.utils.get_file` into the Keras cache."""
    if isinstance(weights, os.PathLike) or (isinstance(weights, str) and os.path.exists(weights)):
        return os.fspath(weights)
    if not isinstance(weights, str):
        raise CheckpointError(f"weights must be a path, a URL or a weights name, got {weights!r}.")
    if "://" in weights:
        return _download(weights, "the weights")
    named = PRETRAINED_WEIGHTS.get(variant, {}).get(weights)
    if named is not None:
        return _download(named.url, f"the weights {weights!r} of {variant}")
    if variant is None:
        where = "this model matches no named variant, so only paths and URLs work"
    else:
        where = f"names for {variant}: {', '.join(available_weights(variant)) or 'none'}"
    raise CheckpointError(f"weights={weights!r} is not an existing file or folder, a URL, or a known weights name ({where}).")
