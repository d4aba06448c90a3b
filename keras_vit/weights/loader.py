"""Loading a checkpoint into a keras_vit model: validate everything, then assign.

`load_weights` first turns every checkpoint tensor into the value of a model variable and
collects every problem (missing or unexpected tensors, wrong shapes, another variant); only
when there is none does it assign, so a model is never left half-loaded.
"""

import logging

import numpy as np

from keras_vit.config import config_of
from keras_vit.resize import resize_position_embedding
from keras_vit.weights.checkpoint import read_checkpoint
from keras_vit.weights.errors import CheckpointError
from keras_vit.weights.mapping import IGNORED_KEYS, MAPPINGS, TRANSFORMS
from keras_vit.weights.named import match_variant, resolve_weights

logger = logging.getLogger("keras_vit.weights")

# The config fields a checkpoint decides unless the caller set them.
SOURCE_DECIDED_FIELDS = ("num_classes", "representation_size", "gelu_approximate", "layer_norm_epsilon")
_ARCHITECTURE_FIELDS = ("hidden_dim", "num_layers", "num_heads", "mlp_dim", "patch_size", "num_channels")
_MAX_LISTED = 12


def _layers_by_name(model):
    return {layer.name: layer for layer in model.layers}


def model_variables(model):
    """`{mapping target: variable}` of a keras_vit model (targets as in `mapping.py`)."""
    config_of(model)  # a keras_vit model, or a clear error
    layers = _layers_by_name(model)
    variables = {
        "patch_embedding/kernel": layers["patch_embedding"].projection.kernel,
        "patch_embedding/bias": layers["patch_embedding"].projection.bias,
        "position_embedding/embedding": layers["position_embedding"].embedding,
        "encoder_norm/gamma": layers["encoder_norm"].gamma,
        "encoder_norm/beta": layers["encoder_norm"].beta,
    }
    if "class_token" in layers:
        variables["class_token/token"] = layers["class_token"].token
    for name in ("pre_logits", "head"):
        if name in layers:
            variables[f"{name}/kernel"], variables[f"{name}/bias"] = layers[name].kernel, layers[name].bias
    i = 0
    while f"encoder_block_{i}" in layers:
        block = layers[f"encoder_block_{i}"]
        for part, layer in (
            ("attention_norm", block.attention_norm),
            ("mlp_norm", block.mlp_norm),
        ):
            variables[f"encoder_block_{i}/{part}/gamma"] = layer.gamma
            variables[f"encoder_block_{i}/{part}/beta"] = layer.beta
        for part, layer in (
            ("attention/qkv", block.attention.qkv),
            ("attention/output", block.attention.output_projection),
            ("mlp_dense_1", block.mlp_dense_1),
            ("mlp_dense_2", block.mlp_dense_2),
        ):
            variables[f"encoder_block_{i}/{part}/kernel"] = layer.kernel
            variables[f"encoder_block_{i}/{part}/bias"] = layer.bias
        i += 1
    return variables


def _architecture(config):
    return {key: getattr(config, key) for key in _ARCHITECTURE_FIELDS}


def _architecture_mismatches(model_arch, checkpoint_arch):
    return [
        f"{key}: checkpoint {checkpoint_arch[key]}, model {model_arch[key]}"
        for key in _ARCHITECTURE_FIELDS
        if checkpoint_arch.get(key) is not None and model_arch.get(key) is not None and checkpoint_arch[key] != model_arch[key]
    ]


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
    """Class token, pre-logits layer and classifier: the model decides which it has; the
    checkpoint's are loaded, dropped, or (classifier) re-created zero-initialised."""
    if ("class_token/token" in values) != ("class_token/token" in variables):
        plan.problems.append(
            "class token: the checkpoint has one and the model has none (pooling='gap' with class_token=False?)"
            if "class_token/token" in values
            else "class token: the model has one and the checkpoint has none (a 'gap' model: pass pooling='gap')"
        )
    recreate_head = None
    if "pre_logits/kernel" in variables and "pre_logits/kernel" not in values:
        plan.problems.append("pre-logits layer: the model has one (representation_size) and the checkpoint has none")
    elif "pre_logits/kernel" in values and "pre_logits/kernel" not in variables:
        width = values["pre_logits/kernel"].shape[-1]
        plan.notes.append(f"Dropped the checkpoint's pre-logits layer (representation_size={width}), as asked (representation_size=None).")
        for key in ("pre_logits/kernel", "pre_logits/bias"):
            values.pop(key, None)
        if "head/kernel" in variables and "head/kernel" in values:
            recreate_head = "its classifier was trained on the dropped pre-logits layer"
    if "head/kernel" in variables:
        model_shape = tuple(variables["head/kernel"].shape)
        if "head/kernel" not in values:
            recreate_head = "the checkpoint has no classifier"
        elif recreate_head is None and values["head/kernel"].shape != model_shape:
            recreate_head = f"the checkpoint's classifier has {values['head/kernel'].shape[-1]} classes"
        if recreate_head:
            values["head/kernel"] = np.zeros(model_shape, np.float32)
            values["head/bias"] = np.zeros(tuple(variables["head/bias"].shape), np.float32)
            plan.notes.append(f"Re-created the classifier (head) with {model_shape[-1]} classes, zero-initialised: {recreate_head}.")
    else:
        for key in ("head/kernel", "head/bias"):
            values.pop(key, None)


def _fit_position_embedding(plan, values, variables, layer, checkpoint, resize_method, source_grid_size):
    """Resizes the checkpoint's position embedding on the patch grid when the image size
    differs, with the source's method unless `resize_method` says otherwise."""
    embedding = values.get("position_embedding/embedding")
    if embedding is None:
        return
    embedding = embedding.reshape(1, -1, embedding.shape[-1])
    values["position_embedding/embedding"] = embedding
    target_shape = tuple(variables["position_embedding/embedding"].shape)
    same_prefix = ("class_token/token" in variables) == ("class_token/token" in values)
    if embedding.shape == target_shape or embedding.shape[-1] != target_shape[-1] or not same_prefix:
        return  # nothing to resize, or a mismatch reported elsewhere
    prefix = layer.num_prefix_tokens
    grid = tuple(source_grid_size) if source_grid_size is not None else checkpoint.source_grid_size(prefix)
    if grid is None or grid[0] * grid[1] != embedding.shape[1] - prefix:
        plan.problems.append(
            f"position embedding: cannot tell the patch grid of the checkpoint's {embedding.shape[1] - prefix} "
            "grid tokens (not a square): pass source_grid_size=(rows, cols)"
        )
        return
    method = resize_method or checkpoint.numerics["resize_method"]
    values["position_embedding/embedding"] = resize_position_embedding(embedding, grid, layer.grid_size, prefix, method)
    plan.notes.append(
        f"Resized the position embedding from the checkpoint's {grid[0]}x{grid[1]} patch grid to "
        f"{layer.grid_size[0]}x{layer.grid_size[1]} ({method})."
    )


def _plan_load(model, checkpoint, resize_method=None, source_grid_size=None):
    config = config_of(model)
    variables = model_variables(model)
    layers = _layers_by_name(model)
    num_blocks = config.num_layers
    plan = _Plan()
    used = set()

    problems = _architecture_mismatches(_architecture(config), checkpoint.architecture)
    if problems:  # another variant: the per-tensor list would only repeat this
        plan.problems = problems
        return plan

    values, sources_of = {}, {}
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

    unexpected = sorted(set(checkpoint.tensors) - used - set(IGNORED_KEYS[checkpoint.format]))
    if unexpected:
        plan.problems.append(f"unexpected tensors (not part of this model): {', '.join(unexpected)}")

    _decide_optional_parts(plan, values, variables)
    _fit_position_embedding(plan, values, variables, layers["position_embedding"], checkpoint, resize_method, source_grid_size)

    for target, variable in variables.items():
        if target not in values:
            if not target.startswith(("class_token/", "pre_logits/")):  # reported above
                wanted = ", ".join(sources_of.get(target, ["?"]))
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
    if config.gelu_approximate != expected["gelu_approximate"]:
        forms = {True: "tanh-approximate", False: "exact (erf)"}
        logger.warning(
            f"The model uses {forms[config.gelu_approximate]} GELU, {checkpoint.format} checkpoints usually "
            f"{forms[expected['gelu_approximate']]}: outputs may differ from the source by about 1e-4 "
            f"(build with gelu_approximate={expected['gelu_approximate']} to match it)."
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
            folder (`config.json` + `model.safetensors`), a URL to a file, or a weights name
            (`keras_vit.weights.available_weights()`).
        resize_method: `"bilinear"` or `"bicubic"` for the position embedding when the
            image size differs; default: the source's own (original ViT bilinear, timm and
            Hugging Face bicubic).
        source_grid_size: (rows, cols) of the checkpoint's patch grid, only needed for a
            non-square grid without a config.json.

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
    checkpoint = read_checkpoint(resolve_weights(weights, variant))
    return load_checkpoint(model, checkpoint, resize_method=resize_method, source_grid_size=source_grid_size)


def config_for_checkpoint(config, checkpoint, explicit=()):
    """`config` with the options that `checkpoint` decides, except those in `explicit`.

    A checkpoint decides `num_classes` (its classifier, with `include_top`),
    `representation_size` (its pre-logits layer, or None), and `gelu_approximate` and
    `layer_norm_epsilon` (how its source computes). Its architecture (width, depth, heads,
    MLP, patch) must be the config's; the image size may differ.

    Raises:
        CheckpointError: the architectures differ (the message lists how).
    """
    arch = checkpoint.architecture
    mismatches = _architecture_mismatches(_architecture(config), arch)
    if mismatches:
        variant = match_variant(config.hidden_dim, config.num_layers, config.num_heads, config.mlp_dim, config.patch_size)
        raise _mismatch_error(checkpoint, f"a {variant or 'ViT'} with this config", mismatches)
    decided = {key: value for key, value in checkpoint.numerics.items() if key in SOURCE_DECIDED_FIELDS}
    decided["representation_size"] = arch["representation_size"]
    if config.include_top and arch["num_classes"] is not None:
        decided["num_classes"] = arch["num_classes"]
    return config.replace(**{key: value for key, value in decided.items() if key not in explicit})
