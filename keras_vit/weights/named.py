"""Named pretrained weights, and turning `weights=` (name, URL or path) into a local file.

Each entry says where the weights are (their URL and format), what the tensors do not say
(the MLP activation and LayerNorm epsilon of their source, LayerScale's initial value), and
what the publisher says the inputs and outputs are (their `Preprocessing` and label set),
so that `ViTB16(weights="deit3_in1k")` builds the model and the image path it was trained
with. Preprocessing and label sets are those of timm's pretrained configs (timm 1.0.x,
`vision_transformer.py` / `deit.py` `_cfg` entries), as of 2026-12-01.

- AugReg ("How to train your ViT", Steiner et al. 2021): ImageNet-21k pre-training (21843
  classes), and the same fine-tuned on ImageNet-1k at 224 px; the ones timm and the
  google-research/vision_transformer README recommend. The paper checkpoints (Dosovitskiy
  et al. 2021) are ImageNet-21k with the pre-logits layer.
- DeiT-3 (Touvron et al. 2022): LayerScale, a grid-only position embedding.
- DeiT distilled (Touvron et al. 2021): a distillation token and a second classifier.
- DINOv2 (Oquab et al. 2024) and DINOv2 with registers (Darcet et al. 2024): self-supervised
  features at 518 px (no classifier), LayerScale.
- OpenAI CLIP (Radford et al. 2021) image tower: a pre-norm, no patch bias, QuickGELU, its
  projection to the 512-wide joint embedding as the "classifier"; and the same fine-tuned on
  ImageNet-1k by timm.
- SigLIP (Zhai et al. 2023): no class token, attention pooling (MAP head), no classifier.
- MAE (He et al. 2022): the pre-trained encoder (no classifier). The fine-tuned MAE
  ImageNet-1k weights are published only as torch pickles, which keras_vit does not read.
"""

import dataclasses
import os
import urllib.parse

import keras

from keras_vit import system
from keras_vit.config import MODEL_SIZES, VARIANTS
from keras_vit.preprocessing import Preprocessing
from keras_vit.weights.errors import CheckpointError

# Normalisations of timm's data/constants.py.
INCEPTION = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic", crop_mode="center", crop_fraction=0.9)
IMAGENET = dataclasses.replace(INCEPTION, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
OPENAI_CLIP = dataclasses.replace(INCEPTION, mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))


@dataclasses.dataclass(frozen=True)
class NamedWeights:
    """One published checkpoint.

    url: where it downloads from; format: its layout (a key of `mapping.FORMAT_NAMES`).
    num_classes: its classifier's outputs (None: it has none, a feature extractor).
    image_size: the side it was trained at (its position embedding's grid).
    options: `ViTConfig` options the tensors do not show (`mlp_activation`,
        `layer_norm_epsilon`, `layer_scale_init`).
    preprocessing, labels: what its inputs and outputs are (labels: a label-set name, or
        None for features and embeddings).
    """

    url: str
    format: str
    num_classes: int | None
    image_size: int
    description: str
    options: dict = dataclasses.field(default_factory=dict)
    preprocessing: Preprocessing = INCEPTION
    labels: str | None = None
    license: str = "apache-2.0"


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


def _timm(name, file_name="model.safetensors"):
    """The Hugging Face hub URL of a timm checkpoint (`arch.tag`)."""
    return f"https://huggingface.co/timm/{name}/resolve/main/{file_name}"


_DEIT3 = dict(layer_scale_init=1e-6)
_DINOV2 = dict(layer_scale_init=1e-5)
_CLIP = dict(layer_norm_epsilon=1e-5)
_DINOV2_PREPROCESSING = dataclasses.replace(IMAGENET, crop_fraction=1.0)
# (variant, name, NamedWeights) of the later ViT families, all timm-format unless said.
_FAMILY_WEIGHTS = (
    ("ViTS16", "deit3_in1k", NamedWeights(_timm("deit3_small_patch16_224.fb_in1k"), "timm", 1000, 224, "DeiT-3, ImageNet-1k", _DEIT3, IMAGENET, "imagenet1k")),
    ("ViTS16", "deit3_in21k_ft_in1k", NamedWeights(
        _timm("deit3_small_patch16_224.fb_in22k_ft_in1k"), "timm", 1000, 224, "DeiT-3, ImageNet-21k, fine-tuned on ImageNet-1k",
        _DEIT3, dataclasses.replace(IMAGENET, crop_fraction=1.0), "imagenet1k")),
    ("ViTB16", "deit3_in1k", NamedWeights(_timm("deit3_base_patch16_224.fb_in1k"), "timm", 1000, 224, "DeiT-3, ImageNet-1k", _DEIT3, IMAGENET, "imagenet1k")),
    ("ViTB16", "deit3_in21k_ft_in1k", NamedWeights(
        _timm("deit3_base_patch16_224.fb_in22k_ft_in1k"), "timm", 1000, 224, "DeiT-3, ImageNet-21k, fine-tuned on ImageNet-1k",
        _DEIT3, dataclasses.replace(IMAGENET, crop_fraction=1.0), "imagenet1k")),
    ("ViTTi16", "deit_distilled_in1k", NamedWeights(
        _timm("deit_tiny_distilled_patch16_224.fb_in1k"), "timm", 1000, 224, "DeiT distilled, ImageNet-1k", {}, IMAGENET, "imagenet1k")),
    ("ViTS16", "deit_distilled_in1k", NamedWeights(
        _timm("deit_small_distilled_patch16_224.fb_in1k"), "timm", 1000, 224, "DeiT distilled, ImageNet-1k", {}, IMAGENET, "imagenet1k")),
    ("ViTB16", "deit_distilled_in1k", NamedWeights(
        _timm("deit_base_distilled_patch16_224.fb_in1k"), "timm", 1000, 224, "DeiT distilled, ImageNet-1k", {}, IMAGENET, "imagenet1k")),
    ("ViTS14", "dinov2", NamedWeights(
        _timm("vit_small_patch14_dinov2.lvd142m"), "timm", None, 518, "DINOv2 features (LVD-142M)", _DINOV2, _DINOV2_PREPROCESSING)),
    ("ViTB14", "dinov2", NamedWeights(
        _timm("vit_base_patch14_dinov2.lvd142m"), "timm", None, 518, "DINOv2 features (LVD-142M)", _DINOV2, _DINOV2_PREPROCESSING)),
    ("ViTL14", "dinov2", NamedWeights(
        _timm("vit_large_patch14_dinov2.lvd142m"), "timm", None, 518, "DINOv2 features (LVD-142M)", _DINOV2, _DINOV2_PREPROCESSING)),
    ("ViTS14", "dinov2_reg4", NamedWeights(
        _timm("vit_small_patch14_reg4_dinov2.lvd142m"), "timm", None, 518, "DINOv2 with 4 registers, features", _DINOV2, _DINOV2_PREPROCESSING)),
    ("ViTB14", "dinov2_reg4", NamedWeights(
        _timm("vit_base_patch14_reg4_dinov2.lvd142m"), "timm", None, 518, "DINOv2 with 4 registers, features", _DINOV2, _DINOV2_PREPROCESSING)),
    ("ViTL14", "dinov2_reg4", NamedWeights(
        _timm("vit_large_patch14_reg4_dinov2.lvd142m"), "timm", None, 518, "DINOv2 with 4 registers, features", _DINOV2, _DINOV2_PREPROCESSING)),
    ("ViTB16", "clip_openai", NamedWeights(
        _timm("vit_base_patch16_clip_224.openai", "open_clip_model.safetensors"), "openai_clip", 512, 224,
        "OpenAI CLIP image tower; the 512-wide image embedding as output", {}, OPENAI_CLIP, None, "mit")),
    ("ViTB32", "clip_openai", NamedWeights(
        _timm("vit_base_patch32_clip_224.openai", "open_clip_model.safetensors"), "openai_clip", 512, 224,
        "OpenAI CLIP image tower; the 512-wide image embedding as output", {}, OPENAI_CLIP, None, "mit")),
    ("ViTB16", "clip_openai_ft_in1k", NamedWeights(
        _timm("vit_base_patch16_clip_224.openai_ft_in1k"), "timm", 1000, 224, "OpenAI CLIP, fine-tuned on ImageNet-1k by timm",
        _CLIP, OPENAI_CLIP, "imagenet1k")),
    ("ViTB32", "clip_openai_ft_in1k", NamedWeights(
        _timm("vit_base_patch32_clip_224.openai_ft_in1k"), "timm", 1000, 224, "OpenAI CLIP, fine-tuned on ImageNet-1k by timm",
        _CLIP, OPENAI_CLIP, "imagenet1k")),
    ("ViTB16", "siglip_webli", NamedWeights(
        _timm("vit_base_patch16_siglip_224.webli"), "timm", None, 224, "SigLIP image tower (WebLI): the MAP-pooled embedding")),
    ("ViTB16", "mae", NamedWeights(
        _timm("vit_base_patch16_224.mae"), "timm", None, 224, "MAE pre-trained encoder (features)", {}, IMAGENET, None, "cc-by-nc-4.0")),
)

# variant -> weights name -> NamedWeights
PRETRAINED_WEIGHTS = {variant: {} for variant in VARIANTS}
for _variant, _run, _lr in _AUGREG_RUNS:
    PRETRAINED_WEIGHTS[_variant]["augreg_in21k"] = NamedWeights(
        f"{_AUGREG}{_run}.npz", "npz", 21843, 224, "AugReg, ImageNet-21k", labels="imagenet21k"
    )
    PRETRAINED_WEIGHTS[_variant]["augreg_in21k_ft_in1k"] = NamedWeights(
        f"{_AUGREG}{_run}--imagenet2012-steps_20k-lr_{_lr}-res_224.npz", "npz", 1000, 224,
        "AugReg, ImageNet-21k, fine-tuned on ImageNet-1k", labels="imagenet1k",
    )
for _variant, _file in _PAPER_RUNS:
    PRETRAINED_WEIGHTS[_variant]["in21k"] = NamedWeights(
        f"{_PAPER_IN21K}{_file}.npz", "npz", 21843, 224, "ViT paper, ImageNet-21k, with the pre-logits layer", labels="imagenet21k"
    )
for _variant, _name, _entry in _FAMILY_WEIGHTS:
    PRETRAINED_WEIGHTS[_variant][_name] = _entry


def named_weights(weights, variant):
    """The `NamedWeights` entry `weights` names for `variant`, or None (a path, a URL, an
    unknown name)."""
    if not isinstance(weights, str) or os.path.exists(weights):
        return None
    return PRETRAINED_WEIGHTS.get(variant, {}).get(weights)


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
    return os.path.join(system.keras_home(), "models")


def _cache_name(url):
    """The file name a download is cached under: the URL's, with the repository in front for
    hub URLs, whose file names (`model.safetensors`) repeat across repositories."""
    parts = [part for part in urllib.parse.urlsplit(url).path.split("/") if part]
    if "resolve" in parts:
        return "--".join(parts[: parts.index("resolve")] + parts[-1:])
    return parts[-1] if parts else "weights"


def _download(url, what):
    file_name = _cache_name(url)
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
    named = named_weights(weights, variant)
    if named is not None:
        return _download(named.url, f"the weights {weights!r} of {variant}")
    if variant is None:
        where = "this model matches no named variant, so only paths and URLs work"
    else:
        where = f"names for {variant}: {', '.join(available_weights(variant)) or 'none'}"
    raise CheckpointError(f"weights={weights!r} is not an existing file or folder, a URL, or a known weights name ({where}).")
