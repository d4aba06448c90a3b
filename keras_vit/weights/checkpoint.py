"""Reads a checkpoint file or folder into a `Checkpoint`: its format, its tensors under
normalised names, and what it says about the model that made it."""

import dataclasses
import json
import math
import os
import re

import numpy as np

from keras_vit.weights.errors import CheckpointError
from keras_vit.weights.mapping import (
    FORMAT_MARKERS,
    FORMAT_NAMES,
    MAPPINGS,
    NPZ_LINEN_RENAMES,
    PREFIX_ONLY_FORMATS,
    SOURCE_NUMERICS,
    TRANSFORMS,
)
from keras_vit.weights.npz_reader import read_npz
from keras_vit.weights.safetensors_reader import read_safetensors

TORCH_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_BLOCK_INDEX = {
    "npz": re.compile(r"^Transformer/encoderblock_(\d+)/"),
    "timm": re.compile(r"^blocks\.(\d+)\."),
    "hf": re.compile(r"^encoder\.layer\.(\d+)\."),
    "openai_clip": re.compile(r"^transformer\.resblocks\.(\d+)\."),
}
_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "quick_gelu": "quick_gelu"}


@dataclasses.dataclass
class Checkpoint:
    """A checkpoint in memory.

    Attributes:
        path: where it was read from.
        format: a key of `mapping.FORMAT_NAMES` (`"npz"`, `"timm"`, `"hf"`, `"openai_clip"`).
        tensors: `{name: float32 array}`, names normalised (prefix stripped, flax linen
            names renamed to the released ones) so that `mapping.MAPPINGS[format]` applies.
        hf_config: the Hugging Face `config.json`, for `"hf"` checkpoints that have one.
        published_options: what the publisher of named weights says the tensors do not show
            (`NamedWeights.options`); it overrides the source's rules in `numerics`.
    """

    path: str
    format: str
    tensors: dict
    hf_config: dict | None = None
    published_options: dict | None = None

    @property
    def description(self):
        return f"{FORMAT_NAMES[self.format]} checkpoint {self.path}"

    @property
    def numerics(self):
        """`mlp_activation`, `layer_norm_epsilon` and `resize_method` of the source, and the
        `published_options` (e.g. `layer_scale_init`) over them."""
        numerics = dict(SOURCE_NUMERICS[self.format])
        if self.hf_config is not None:
            numerics["mlp_activation"] = _HF_ACTIVATIONS[self.hf_config.get("hidden_act", "gelu")]
            numerics["layer_norm_epsilon"] = float(self.hf_config.get("layer_norm_eps", 1e-12))
        return {**numerics, **(self.published_options or {})}

    def source_keys(self, target):
        """The checkpoint tensors a mapping target is made from (`[]` when the format has none)."""
        entry = MAPPINGS[self.format].get(target)
        return [] if entry is None else list(entry[1:])

    def mapped(self, target, block=0):
        """The Keras-layout value of one mapping target, or None when the checkpoint lacks it."""
        entry = MAPPINGS[self.format].get(target)
        if entry is None:
            return None
        transform, *sources = entry
        sources = [source.format(i=block) for source in sources]
        if not all(source in self.tensors for source in sources):
            return None
        return TRANSFORMS[transform](*(self.tensors[source] for source in sources))

    def has(self, target):
        """Whether the checkpoint holds `target`; a per-block target ("{i}") in any block, so
        that a family tensor missing from some blocks (block 0 too) is reported as missing."""
        if "{i}" not in target:
            return self.mapped(target) is not None
        return any(self.mapped(target, block) is not None for block in sorted(self._block_indices()))

    def _block_indices(self):
        return {int(m.group(1)) for m in map(_BLOCK_INDEX[self.format].match, self.tensors) if m}

    @property
    def architecture(self):
        """The sizes the tensors (and config.json) show, for defaults and errors:
        `hidden_dim`, `num_layers`, `mlp_dim`, `patch_size`, `num_channels`, `num_heads`
        (None when the format does not record it: timm), `representation_size`,
        `num_classes` (None without a head)."""
        try:
            patch_kernel = self.mapped("patch_embedding/projection/kernel")  # [ph, pw, C, D]
            mlp_kernel = self.mapped("encoder_block_{i}/mlp_dense_1/kernel")  # [D, M]
            pre_logits = self.mapped("pre_logits/kernel")
            head = self.mapped("head/kernel")
            return dict(
                hidden_dim=int(patch_kernel.shape[-1]),
                num_layers=len(self._block_indices()),
                mlp_dim=None if mlp_kernel is None else int(mlp_kernel.shape[-1]),
                patch_size=tuple(int(s) for s in patch_kernel.shape[:2]),
                num_channels=int(patch_kernel.shape[2]),
                num_heads=self._num_heads(),
                representation_size=None if pre_logits is None else int(pre_logits.shape[-1]),
                num_classes=None if head is None else int(head.shape[-1]),
            )
        except (AttributeError, IndexError, ValueError) as error:
            raise CheckpointError(
                f"{self.description}: its patch embedding or MLP tensors do not have ViT shapes ({error})."
            ) from None

    @property
    def family_options(self):
        """The `ViTConfig` options the tensors show: the tokens (class, distillation, how many
        registers), LayerScale, the pre-norm and the patch bias, the pooling head (an
        attention pool, a norm after pooling, or neither: None) and whether the position
        embedding has rows for the prefix tokens (None when its rows cannot tell)."""
        registers = self.mapped("register_tokens/token")
        options = dict(
            class_token=self.has("class_token/token"),
            distillation_token=self.has("distillation_token/token"),
            num_register_tokens=0 if registers is None else int(registers.shape[1]),
            layer_scale=self.has("encoder_block_{i}/attention_scale/gamma"),
            pre_norm=self.has("pre_norm/gamma"),
            patch_bias=self.has("patch_embedding/projection/bias"),
            pooling="map" if self.has("attention_pooling/latent") else ("gap" if self.has("fc_norm/gamma") else None),
            fc_norm=self.has("fc_norm/gamma"),
        )
        prefix = int(options["class_token"]) + int(options["distillation_token"]) + options["num_register_tokens"]
        options["embed_prefix_tokens"] = self._embeds_prefix_tokens(prefix)
        return options

    def _embeds_prefix_tokens(self, num_prefix_tokens):
        """True when the position embedding has rows for the prefix tokens, False when it
        covers the patch grid alone (timm's no_embed_class), None when it cannot tell."""
        if not self.has("position_embedding/embedding"):
            return None
        if num_prefix_tokens == 0:
            return True  # nothing to tell apart
        with_prefix, grid_only = self.grid_size(num_prefix_tokens) is not None, self.grid_size(0) is not None
        return with_prefix if with_prefix != grid_only else None

    def _num_heads(self):
        if self.format == "npz":
            query = self.tensors.get("Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel")
            return None if query is None or query.ndim != 3 else int(query.shape[1])
        if self.hf_config is not None and "num_attention_heads" in self.hf_config:
            return int(self.hf_config["num_attention_heads"])
        return None

    def grid_size(self, num_prefix_tokens):
        """The patch grid (rows, cols) of the position embedding, `num_prefix_tokens` of its
        rows not being grid rows: from config.json when there is one, else the square root of
        the number of grid rows; None if that is not a square."""
        positions = self.mapped("position_embedding/embedding")
        num_grid_tokens = int(np.prod(positions.shape[:-1])) - num_prefix_tokens
        if num_grid_tokens <= 0:
            return None
        if self.hf_config is not None and "image_size" in self.hf_config:
            image, patch = (self.hf_config[k] for k in ("image_size", "patch_size"))
            image = image if isinstance(image, (list, tuple)) else (image, image)
            patch = patch if isinstance(patch, (list, tuple)) else (patch, patch)
            grid = (image[0] // patch[0], image[1] // patch[1])
            if grid[0] * grid[1] == num_grid_tokens:
                return grid
        side = math.isqrt(num_grid_tokens)
        return (side, side) if side * side == num_grid_tokens else None


def _detect_format(keys, path):
    for name, marker in FORMAT_MARKERS.items():
        for key in keys:
            if key == marker or key.endswith("/" + marker) or key.endswith("." + marker):
                return name, key[: len(key) - len(marker)]
    sample = ", ".join(sorted(keys)[:8])
    raise CheckpointError(
        f"Cannot tell the format of {path}: none of the tensors that mark a known format "
        f"({', '.join(f'{FORMAT_NAMES[n]}: {m!r}' for n, m in FORMAT_MARKERS.items())}) is in it. "
        f"Its first tensors: {sample or 'none'}."
    )


def _normalise_names(tensors, fmt, prefix, path):
    if fmt in PREFIX_ONLY_FORMATS:
        tensors = {k: v for k, v in tensors.items() if k.startswith(prefix)}
    tensors = {(k[len(prefix):] if prefix and k.startswith(prefix) else k): v for k, v in tensors.items()}
    if fmt != "npz":
        return tensors
    block_parts = {part for key in tensors if key.startswith("Transformer/encoderblock_") for part in key.split("/")}
    linen = block_parts & set(NPZ_LINEN_RENAMES)
    released = block_parts & set(NPZ_LINEN_RENAMES.values())
    if not linen:
        return tensors
    if released:
        raise CheckpointError(
            f"{path} mixes the released flax names ({sorted(released)}) with the current flax "
            f"names ({sorted(linen)}) inside encoder blocks."
        )
    renamed = {}
    for key, value in tensors.items():
        parts = key.split("/")
        if key.startswith("Transformer/encoderblock_"):
            parts = [NPZ_LINEN_RENAMES.get(part, part) for part in parts]
        renamed["/".join(parts)] = value
    return renamed


def _read_hf_config(path):
    with open(path, encoding="utf-8") as file:
        try:
            config = json.load(file)
        except json.JSONDecodeError as error:
            raise CheckpointError(f"Cannot read {path}: not valid JSON ({error}).") from None
    return config if isinstance(config, dict) else None


def _check_hf_config(config, path):
    model_type = config.get("model_type", "vit")
    problems = []
    if model_type != "vit":
        problems.append(f"model_type {model_type!r} (only 'vit' is a plain ViT)")
    if config.get("hidden_act", "gelu") not in _HF_ACTIVATIONS:
        problems.append(f"hidden_act {config['hidden_act']!r} (expected one of {sorted(_HF_ACTIVATIONS)})")
    if not config.get("qkv_bias", True):
        problems.append("qkv_bias false (keras_vit's q/k/v projection has a bias)")
    if config.get("pooler_act", "tanh") != "tanh":
        problems.append(f"pooler_act {config['pooler_act']!r} (the representation layer is tanh)")
    if problems:
        raise CheckpointError(f"{path} describes a model keras_vit cannot reproduce: " + "; ".join(problems) + ".")


def _read_tensors(path):
    """Tensors of a file or a checkpoint folder, and the folder's Hugging Face config (if any)."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    if os.path.isdir(path):
        for candidate in ("model.safetensors", "model.safetensors.index.json"):
            if os.path.isfile(os.path.join(path, candidate)):
                return _read_tensors(os.path.join(path, candidate))[0], folder
        present = sorted(os.listdir(path))
        hint = ""
        if any(name.endswith(TORCH_PICKLE_SUFFIXES) for name in present):
            hint = (
                " It has torch pickle files, which keras_vit does not read (that needs torch): "
                "use the model.safetensors of the same model (e.g. from the Hugging Face hub)."
            )
        raise CheckpointError(f"No model.safetensors in the folder {path} (it has: {', '.join(present) or 'nothing'}).{hint}")
    lower = path.lower()
    if lower.endswith(TORCH_PICKLE_SUFFIXES):
        raise CheckpointError(
            f"{path} is a torch pickle; keras_vit reads .npz and .safetensors only (no torch dependency). "
            "Use the .safetensors or .npz release of the same weights."
        )
    if lower.endswith(".index.json"):
        with open(path, encoding="utf-8") as file:
            shards = sorted(set(json.load(file).get("weight_map", {}).values()))
        tensors = {}
        for shard in shards:
            tensors.update(read_safetensors(os.path.join(folder, shard)))
        return tensors, folder
    with open(path, "rb") as file:
        is_zip = file.read(4) == b"PK\x03\x04"
    return (read_npz(path) if is_zip or lower.endswith(".npz") else read_safetensors(path)), folder


def read_checkpoint(path):
    """Reads an `.npz`, a `.safetensors` file or a folder holding `model.safetensors`
    (and, for Hugging Face, `config.json`) into a `Checkpoint`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    tensors, folder = _read_tensors(path)
    fmt, prefix = _detect_format(list(tensors), path)
    tensors = _normalise_names(tensors, fmt, prefix, path)
    tensors = {k: (np.asarray(v, np.float32) if np.issubdtype(v.dtype, np.floating) else v) for k, v in tensors.items()}
    hf_config = None
    config_path = os.path.join(folder, "config.json")
    if fmt == "hf" and os.path.isfile(config_path):
        hf_config = _read_hf_config(config_path)
        if hf_config is not None:
            _check_hf_config(hf_config, config_path)
    return Checkpoint(path=path, format=fmt, tensors=tensors, hf_config=hf_config)
