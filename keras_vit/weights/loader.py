"""Loading a checkpoint into a keras_vit model: validate everything, then assign.

`config_for_checkpoint` lets a checkpoint decide the options its tensors show (its tokens,
LayerScale, pre-norm, pooling head, classifier) and its source's numerics, and refuses
options the caller passed that contradict it. `load_checkpoint` then turns every checkpoint
tensor into the value of a model variable and collects every problem (another variant or
family, missing or unexpected tensors, wrong shapes); only when there is none does it
assign, so a model is never left half-loaded.
"""

import logging

import numpy as np

from keras_vit.config import PATCH_POOLINGS, config_of
from keras_vit.resize import resize_position_embedding
from keras_vit.weights.checkpoint import read_checkpoint
from keras_vit.weights.errors import CheckpointError
from keras_vit.weights.mapping import IGNORED_KEYS, MAPPINGS, TRANSFORMS
from keras_vit.weights.named import match_variant, named_weights, resolve_weights

logger = logging.getLogger("keras_vit.weights")

# The config fields a checkpoint (its tensors, or its source's rules) decides unless the
# caller set them.
SOURCE_DECIDED_FIELDS = (
    "num_classes", "representation_size", "mlp_activation", "layer_norm_epsilon",
    "class_token", "distillation_token", "num_register_tokens", "embed_prefix_tokens",
    "layer_scale_init", "pre_norm", "patch_bias", "pooling", "fc_norm", "position_resize_method",
)
# LayerScale's initial value, which no checkpoint records (its gammas are loaded over it).
DEFAULT_LAYER_SCALE_INIT = 1e-5
_ARCHITECTURE_FIELDS = ("hidden_dim", "num_layers", "num_heads", "mlp_dim", "patch_size", "num_channels")
# Parts of a checkpoint a model may leave out: the classifiers (include_top=False) and, for
# the token sequence (pooling=None), the pooling head.
_HEAD_PARTS = ("head/", "head_dist/")
_POOLING_PARTS = ("attention_pooling/", "fc_norm/")
_MAX_LISTED = 12


def model_variables(model):
    """`{variable path: variable}` of a keras_vit model (the targets of `mapping.py`)."""
    config_of(model)  # a keras_vit model, or a clear error
    return {variable.path: variable for variable in model.weights}


def _architecture(config):
    return {key: getattr(config, key) for key in _ARCHITECTURE_FIELDS}


def _architecture_mismatches(model_arch, checkpoint_arch):
    return [
        f"{key}: checkpoint {checkpoint_arch[key]}, model {model_arch[key]}"
        for key in _ARCHITECTURE_FIELDS
        if checkpoint_arch.get(key) is not None and model_arch.get(key) is not None and checkpoint_arch[key] != model_arch[key]
    ]


# What each option a checkpoint's tensors decide is called in an error.
_OPTION_WORDS = {
    "class_token": "class token",
    "distillation_token": "distillation token",
    "num_register_tokens": "register tokens",
    "layer_scale_init": "LayerScale",
    "pre_norm": "a LayerNorm after the embeddings",
    "patch_bias": "a patch-embedding bias",
    "embed_prefix_tokens": "position-embedding rows for the prefix tokens",
    "fc_norm": "the norm after pooling (fc_norm)",
    "pooling": "the pooling head",
}


def _family_mismatches(config, checkpoint):
    """How the model's options differ from what the checkpoint's tensors show: the rule of
    `config_for_checkpoint` (`_incompatible`) for a model that already exists."""
    problems = []
    for key, asked, shown in _incompatible(config, _options_shown(config, checkpoint), _OPTION_WORDS):
        words = _OPTION_WORDS[key]
        if key == "num_register_tokens":
            problems.append(f"{words}: the checkpoint has {shown}, the model {asked} ({key}={asked})")
        elif key == "pooling":
            problems.append(f"{words}: the checkpoint shows pooling={shown!r}, the model has pooling={asked!r}")
        else:
            has = lambda value: "has" if value not in (None, False) else "has no"  # noqa: E731
            problems.append(f"{words}: the checkpoint {has(shown)} {'it' if shown not in (None, False) else 'such part'}, "
                            f"the model {has(asked)} ({key}={asked!r})")
    return problems


def _listing(lines):
    shown = [f"  - {line}" for line in lines[:_MAX_LISTED]]
    if len(lines) > _MAX_LISTED:
        shown.append(f"  ... and {len(lines) - _MAX_LISTED} more")
    return "\n".join(shown)


def _mismatch_error(checkpoint, what, lines):
    return CheckpointError(
        f"Cannot load the {checkpoint.description} into {what}; nothing was loaded. "
        f"What does not match:\n{_listing(lines)}"
    )


class _Plan:
    """Values to assign, messages to log, problems found; filled by `_plan_load`."""

    def __init__(self):
        self.assignments = []  # (variable, float32 array)
        self.notes = []  # log lines, said once the load succeeds
        self.problems = []


def _decide_optional_parts(plan, values, variables):
    """Pre-logits layer and classifiers: the model decides which it has; the checkpoint's
    are loaded, dropped, or (classifiers) re-created zero-initialised."""
    recreate = None
    if "pre_logits/kernel" in variables and "pre_logits/kernel" not in values:
        plan.problems.append("pre-logits layer: the model has one (representation_size) and the checkpoint has none")
    elif "pre_logits/kernel" in values and "pre_logits/kernel" not in variables:
        width = values["pre_logits/kernel"].shape[-1]
        plan.notes.append(f"Dropped the checkpoint's pre-logits layer (representation_size={width}), as asked (representation_size=None).")
        for key in ("pre_logits/kernel", "pre_logits/bias"):
            values.pop(key, None)
        if "head/kernel" in variables and "head/kernel" in values:
            recreate = "its classifier was trained on the dropped pre-logits layer"
    for head in ("head", "head_dist"):
        if f"{head}/kernel" not in variables:
            for key in (f"{head}/kernel", f"{head}/bias"):
                values.pop(key, None)
            continue
        model_shape = tuple(variables[f"{head}/kernel"].shape)
        reason = recreate
        if f"{head}/kernel" not in values:
            reason = "the checkpoint has no classifier"
        elif reason is None and values[f"{head}/kernel"].shape != model_shape:
            reason = f"the checkpoint's classifier has {values[f'{head}/kernel'].shape[-1]} classes"
        if reason:
            values[f"{head}/kernel"] = np.zeros(model_shape, np.float32)
            values[f"{head}/bias"] = np.zeros(tuple(variables[f"{head}/bias"].shape), np.float32)
            plan.notes.append(f"Re-created the classifier ({head}) with {model_shape[-1]} classes, zero-initialised: {reason}.")


def _fit_position_embedding(plan, values, variables, config, checkpoint, resize_method, source_grid_size):
    """Resizes the checkpoint's position embedding on the patch grid when the image size
    differs (its prefix rows kept; none in a grid-only embedding), with the source's method
    unless `resize_method` says otherwise, as timm's `checkpoint_filter_fn`."""
    embedding = values.get("position_embedding/embedding")
    if embedding is None:
        return
    embedding = embedding.reshape(1, -1, embedding.shape[-1])
    values["position_embedding/embedding"] = embedding
    target_shape = tuple(variables["position_embedding/embedding"].shape)
    if embedding.shape == target_shape or embedding.shape[-1] != target_shape[-1]:
        return  # nothing to resize, or a mismatch reported elsewhere
    prefix = config.num_prefix_tokens if config.embed_prefix_tokens else 0
    grid = tuple(source_grid_size) if source_grid_size is not None else checkpoint.grid_size(prefix)
    if grid is None or grid[0] * grid[1] != embedding.shape[1] - prefix:
        plan.problems.append(
            f"position embedding: cannot tell the patch grid of the checkpoint's {embedding.shape[1] - prefix} "
            "grid tokens (not a square): pass source_grid_size=(rows, cols)"
        )
        return
    method = resize_method or checkpoint.numerics["resize_method"]
    values["position_embedding/embedding"] = resize_position_embedding(embedding, grid, config.grid_size, prefix, method)
    plan.notes.append(
        f"Resized the position embedding from the checkpoint's {grid[0]}x{grid[1]} patch grid to "
        f"{config.grid_size[0]}x{config.grid_size[1]} ({method})."
    )


def _checkpoint_values(plan, checkpoint, num_blocks):
    """{target: Keras-layout value} of every mapping target the checkpoint has tensors for,
    the source keys of each target, and the checkpoint keys that were used."""
    values, sources_of, used = {}, {}, set()
    for template, (transform, *source_templates) in MAPPINGS[checkpoint.format].items():
        for i in range(num_blocks) if "{i}" in template else [None]:
            target = template.format(i=i)
            sources = [s.format(i=i) for s in source_templates]
            present = [s for s in sources if s in checkpoint.tensors]
            used.update(present)
            sources_of[target] = sources
            if not present:
                continue
            if len(present) < len(sources):
                plan.problems.append(f"missing tensor(s) {', '.join(s for s in sources if s not in present)} (for {target})")
                continue
            try:
                values[target] = TRANSFORMS[transform](*(checkpoint.tensors[s] for s in sources))
            except (ValueError, IndexError) as error:
                shapes = ", ".join(f"{s} {list(checkpoint.tensors[s].shape)}" for s in sources)
                plan.problems.append(f"{shapes}: not the layout of {target} ({error})")
    return values, sources_of, used


def _plan_load(model, checkpoint, resize_method=None, source_grid_size=None):
    config = config_of(model)
    variables = model_variables(model)
    plan = _Plan()

    # Another variant or another family: the per-tensor list would only repeat it.
    plan.problems = _architecture_mismatches(_architecture(config), checkpoint.architecture) or _family_mismatches(config, checkpoint)
    if plan.problems:
        return plan

    values, sources_of, used = _checkpoint_values(plan, checkpoint, config.num_layers)
    unexpected = sorted(set(checkpoint.tensors) - used - set(IGNORED_KEYS[checkpoint.format]))
    if unexpected:
        plan.problems.append(f"unexpected tensors (not part of this model): {', '.join(unexpected)}")
    for target in [t for t in values if t not in variables]:
        if target.startswith(_POOLING_PARTS) and config.pooling is None:
            values.pop(target)  # the token sequence: no pooling head
        elif not target.startswith(_HEAD_PARTS + ("pre_logits/",)):  # those: `_decide_optional_parts`
            plan.problems.append(f"{target}: the checkpoint has it ({', '.join(sources_of[target])}), the model has no such weight")

    _decide_optional_parts(plan, values, variables)
    _fit_position_embedding(plan, values, variables, config, checkpoint, resize_method, source_grid_size)

    for target, variable in variables.items():
        if target not in values:
            if not target.startswith("pre_logits/"):  # reported above
                wanted = ", ".join(sources_of.get(target, ["(no tensor of this format)"]))
                plan.problems.append(f"missing tensor {wanted} (for {target} {list(variable.shape)})")
            continue
        value = values[target]
        if tuple(value.shape) != tuple(variable.shape):
            plan.problems.append(f"shape of {target}: checkpoint {list(value.shape)}, model {list(variable.shape)}")
            continue
        plan.assignments.append((variable, value))
    return plan


def _warn_on_numerics(config, checkpoint):
    expected = checkpoint.numerics
    if config.mlp_activation != expected["mlp_activation"]:
        logger.warning(
            f"The model's MLP uses {config.mlp_activation}, {checkpoint.format} checkpoints usually "
            f"{expected['mlp_activation']}: outputs may differ from the source (about 1e-4 between the two "
            f"GELU forms; build with mlp_activation={expected['mlp_activation']!r} to match it)."
        )
    if not np.isclose(config.layer_norm_epsilon, expected["layer_norm_epsilon"], rtol=1e-3, atol=0.0):
        logger.warning(
            f"The model's LayerNorm epsilon is {config.layer_norm_epsilon:g}, the checkpoint's source uses "
            f"{expected['layer_norm_epsilon']:g}."
        )


def load_checkpoint(model, checkpoint, *, resize_method=None, source_grid_size=None):
    """Loads a `Checkpoint` (see `read_checkpoint`) into `model`; all or nothing."""
    plan = _plan_load(model, checkpoint, resize_method, source_grid_size)
    if plan.problems:
        raise _mismatch_error(checkpoint, f"model {model.name!r}", plan.problems)
    _warn_on_numerics(config_of(model), checkpoint)
    for done, (variable, value) in enumerate(plan.assignments):
        try:
            variable.assign(value.astype(variable.dtype))
        except Exception as error:  # noqa: BLE001 - reported with what state the model is in
            raise CheckpointError(
                f"Assigning {variable.path} failed ({error}); the model is now PARTLY loaded "
                f"({done} of {len(plan.assignments)} variables): rebuild it before use."
            ) from error
    for note in plan.notes:
        logger.warning(note)
    logger.info(f"Loaded {len(plan.assignments)} variables from the {checkpoint.description}.")
    return model


def load_weights(model, weights, *, resize_method=None, source_grid_size=None):
    """Loads pretrained weights into an existing keras_vit model.

    Args:
        model: a model built by keras_vit (`VisionTransformer`, `ViTB16`, `build_vit`, ...).
        weights: a checkpoint: an original ViT `.npz`, a timm `.safetensors`, a Hugging Face
            folder (`config.json` + `model.safetensors`), an OpenAI CLIP / OpenCLIP
            `.safetensors`, a URL to a file, or a weights name
            (`keras_vit.weights.available_weights()`).
        resize_method: `"bilinear"` or `"bicubic"` for the position embedding when the
            image size differs; default: the source's own (original ViT bilinear, the others
            bicubic).
        source_grid_size: (rows, cols) of the checkpoint's patch grid, only needed for a
            non-square grid without a config.json.

    The model's architecture and family (tokens, LayerScale, pooling head, ...) must be the
    checkpoint's; build it with `weights=` to have them read from the checkpoint.
    Fine-tuning semantics: a classifier of another size (or none in the checkpoint) is
    re-created zero-initialised; a model without a head skips the checkpoint's; a model
    without a pre-logits layer drops the checkpoint's (and re-creates the classifier that
    sat on it). Each of these says so in one log line (logger `keras_vit.weights`).

    Raises:
        CheckpointError: the checkpoint cannot be read or found, or does not fit the model
            (the message lists every mismatch); the model is then unchanged.

    Returns:
        model.
    """
    config = config_of(model)
    variant = match_variant(config.hidden_dim, config.num_layers, config.num_heads, config.mlp_dim, config.patch_size)
    checkpoint, _ = read_weights(weights, variant)
    return load_checkpoint(model, checkpoint, resize_method=resize_method, source_grid_size=source_grid_size)


def read_weights(weights, variant):
    """(the `Checkpoint` that `weights` (a name of `variant`'s named weights, a path or a URL)
    stands for, the `NamedWeights` entry or None). A named entry's options are the
    checkpoint's `published_options`."""
    entry = named_weights(weights, variant)
    checkpoint = read_checkpoint(resolve_weights(weights, variant))
    if entry is not None:
        checkpoint.published_options = dict(entry.options)
    return checkpoint, entry


def config_for_checkpoint(config, checkpoint, explicit=()):
    """`config` with the options that `checkpoint` decides, except those in `explicit`.

    A checkpoint decides what its tensors show: `num_classes` (its classifier, with
    `include_top`), `representation_size` (its pre-logits layer, or None), its tokens
    (`class_token`, `distillation_token`, `num_register_tokens`), `embed_prefix_tokens`,
    `layer_scale_init` (LayerScale or None), `pre_norm`, `patch_bias`, and its pooling head
    (`pooling` "map" with an attention pool, "gap" + `fc_norm` with a norm after pooling,
    else "token" with a class token and "gap" without); and, by its source's rules,
    `mlp_activation` and `layer_norm_epsilon` (`Checkpoint.numerics`, with what named weights'
    publisher says). Its architecture (width, depth, heads, MLP,
    patch) must be the config's; the image size may differ.

    Raises:
        CheckpointError: the architectures differ, or an option in `explicit` contradicts the
            checkpoint (the message names both).
    """
    arch = checkpoint.architecture
    mismatches = _architecture_mismatches(_architecture(config), arch)
    if mismatches:
        variant = match_variant(config.hidden_dim, config.num_layers, config.num_heads, config.mlp_dim, config.patch_size)
        raise _mismatch_error(checkpoint, f"a {variant or 'ViT'} with this config", mismatches)
    rules = {key: value for key, value in checkpoint.numerics.items() if key in SOURCE_DECIDED_FIELDS}
    rules["position_resize_method"] = checkpoint.numerics["resize_method"]  # for a dynamic image size
    rules.pop("layer_scale_init", None)  # in `_options_shown`
    shown = _options_shown(config, checkpoint)
    contradictions = [_contradiction(key, asked, value, checkpoint) for key, asked, value in _incompatible(config, shown, explicit)]
    if contradictions:
        raise CheckpointError(f"The {checkpoint.description} contradicts options passed:\n{_listing(contradictions)}")
    changes = {key: value for key, value in {**rules, **shown}.items() if key not in explicit}
    return config.replace(**changes)


def _options_shown(config, checkpoint):
    """The `ViTConfig` options that `checkpoint`'s tensors decide, for `config`'s model."""
    arch, family = checkpoint.architecture, checkpoint.family_options
    layer_scale_init = checkpoint.numerics.get("layer_scale_init") or config.layer_scale_init or DEFAULT_LAYER_SCALE_INIT
    shown = dict(
        class_token=family["class_token"],
        distillation_token=family["distillation_token"],
        num_register_tokens=family["num_register_tokens"],
        layer_scale_init=layer_scale_init if family["layer_scale"] else None,
        pre_norm=family["pre_norm"],
        patch_bias=family["patch_bias"],
        fc_norm=family["fc_norm"],
        pooling=family["pooling"] or ("token" if family["class_token"] else "gap"),
        representation_size=arch["representation_size"],
    )
    if family["embed_prefix_tokens"] is not None:
        shown["embed_prefix_tokens"] = family["embed_prefix_tokens"]
    if config.include_top and arch["num_classes"] is not None:
        shown["num_classes"] = arch["num_classes"]
    return shown


def _incompatible(config, shown, keys):
    """[(option, config's value, the checkpoint's)] for the options among `keys` whose value
    in `config` cannot load a checkpoint that shows `shown` (`_options_shown`): one rule for
    building a model from a checkpoint and for loading one into an existing model."""
    return [(key, getattr(config, key), shown[key]) for key in sorted(set(keys) & set(shown)) if not _compatible(key, config, shown)]


def _compatible(key, config, shown_options):
    """Whether `config`'s value of option `key` can load a checkpoint whose tensors show
    `shown_options` (`_options_shown`)."""
    asked, shown = getattr(config, key), shown_options[key]
    if key in ("num_classes", "representation_size"):
        return True  # fine-tuning: a classifier is re-created, a pre-logits layer dropped
    if key == "layer_scale_init":
        return (asked is None) == (shown is None)  # the initial value itself is not recorded
    if key == "pooling":
        # The token sequence (None) leaves any head out; the patch tokens of a checkpoint
        # without a pooling head (class token or not) may be mean- or max-pooled instead.
        return asked is None or asked == shown or (asked in PATCH_POOLINGS and shown in ("token", "gap"))
    if key == "embed_prefix_tokens":
        checkpoint_prefix = shown_options["class_token"] + shown_options["distillation_token"] + shown_options["num_register_tokens"]
        if not (config.num_prefix_tokens and checkpoint_prefix):
            return True  # no prefix tokens: both embeddings are the same
    return asked == shown


def _contradiction(key, asked, shown, checkpoint):
    sources = {
        "class_token": "cls_token", "distillation_token": "dist_token", "num_register_tokens": "reg_token",
        "layer_scale_init": "LayerScale gammas", "pre_norm": "the pre-norm", "patch_bias": "the patch bias",
        "fc_norm": "fc_norm", "pooling": "the pooling head", "embed_prefix_tokens": "the position embedding's rows",
    }
    return f"{key}={asked!r} was passed, the checkpoint shows {key}={shown!r} (from {sources.get(key, key)})"


def inspect_checkpoint(path):
    """What `VisionTransformer(weights=path)` would build, without building it.

    Returns a dict: `path`, `format`, `sizes` (what the tensors show: hidden_dim,
    num_layers, num_heads (None when the format does not record it), mlp_dim, patch_size,
    num_channels), `options` (the `ViTConfig` options the checkpoint decides: tokens,
    LayerScale, pre-norm, patch bias, pooling, fc_norm, embed_prefix_tokens, numerics),
    `grid` (the position embedding's patch grid, or None when it is not square),
    `num_classes` (None without a classifier), `representation_size`.
    """
    checkpoint = read_checkpoint(resolve_weights(path))
    arch = checkpoint.architecture
    family = checkpoint.family_options
    prefix = int(family["class_token"]) + int(family["distillation_token"]) + family["num_register_tokens"]
    options = {key: value for key, value in family.items() if key != "layer_scale"}
    options["layer_scale"] = family["layer_scale"]
    options["pooling"] = family["pooling"] or ("token" if family["class_token"] else "gap")
    options.update({k: v for k, v in checkpoint.numerics.items() if k != "resize_method"})
    grid = None
    if checkpoint.has("position_embedding/embedding"):
        grid = checkpoint.grid_size(prefix if family["embed_prefix_tokens"] is not False else 0)
    return {
        "path": checkpoint.path,
        "format": checkpoint.format,
        "sizes": {key: arch[key] for key in _ARCHITECTURE_FIELDS},
        "options": options,
        "grid": grid,
        "num_classes": arch["num_classes"],
        "representation_size": arch["representation_size"],
        "resize_method": checkpoint.numerics["resize_method"],
    }
