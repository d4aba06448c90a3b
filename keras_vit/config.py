"""ViTConfig and the variant table: the one place where ViT sizes live."""

import dataclasses
from collections.abc import Sequence

from keras_vit.preprocessing import Preprocessing
from keras_vit.resize import RESIZE_METHODS

# "token": the class token; "gap": the mean of the patch tokens; "max": their maximum per
# channel (timm's global_pool="max"); "map": attention pooling with a learned query
# (big_vision's MAPHead, SigLIP).
POOLING_MODES = ("token", "gap", "max", "map")
PATCH_POOLINGS = ("gap", "max")  # read the patch tokens alone
# keras.applications' names for the same poolings ("max" is the same word in both).
POOLING_ALIASES = {"avg": "gap"}
MLP_ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")

# Width, depth, heads and MLP size of each model size, as in the ViT paper
# (Dosovitskiy et al., 2021, table 1) and DeiT (Ti, S).
MODEL_SIZES = {
    "Ti": dict(hidden_dim=192, num_layers=12, num_heads=3, mlp_dim=768),
    "S": dict(hidden_dim=384, num_layers=12, num_heads=6, mlp_dim=1536),
    "B": dict(hidden_dim=768, num_layers=12, num_heads=12, mlp_dim=3072),
    "L": dict(hidden_dim=1024, num_layers=24, num_heads=16, mlp_dim=4096),
    "H": dict(hidden_dim=1280, num_layers=32, num_heads=16, mlp_dim=5120),
}

# Named variants: builder name -> (model size, patch size).
VARIANTS = {
    "ViTTi16": ("Ti", 16),
    "ViTS14": ("S", 14),  # DINOv2's patch size
    "ViTS16": ("S", 16),
    "ViTS32": ("S", 32),
    "ViTB8": ("B", 8),
    "ViTB14": ("B", 14),
    "ViTB16": ("B", 16),
    "ViTB32": ("B", 32),
    "ViTL14": ("L", 14),
    "ViTL16": ("L", 16),
    "ViTL32": ("L", 32),
    "ViTH14": ("H", 14),
}


def _pair(value, what):
    if isinstance(value, int):
        return (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, int) for v in value):
        raise ValueError(f"{what} must be an int or a (height, width) pair of ints, got {value!r}.")
    return value


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Every option of a Vision Transformer, validated on construction.

    Sizes: `image_size` and `patch_size` accept an int or a (height, width) pair and are
    stored as pairs; `hidden_dim`, `num_layers`, `num_heads`, `mlp_dim`.

    Tokens and pooling: `class_token` (None: one, except for `gap`, `max` and `map` pooling),
    `distillation_token` (DeiT: a second token with its own head `head_dist`; the logits are
    the mean of the two heads), `num_register_tokens` (learned tokens after the class token,
    never pooled), `embed_prefix_tokens` (False: the position embedding covers the patch grid
    only, as timm's `no_embed_class`), `pooling` (`POOLING_MODES`, keras.applications'
    `"avg"` stored as `"gap"`, or None for the token sequence), `fc_norm` (the final
    LayerNorm after pooling instead of before, as timm's `fc_norm`; MAE, `*_gap` models;
    with `pooling=None` the tokens have no final norm).

    Blocks: `layer_scale_init` (None, or the initial value of a learned per-channel scale on
    both residual branches: DeiT-3, DINOv2), `mlp_activation` (`MLP_ACTIVATIONS`: exact GELU,
    its tanh form, or OpenAI CLIP's `x * sigmoid(1.702 x)`; `gelu_approximate=True` is the
    older spelling of `"gelu_tanh"`), `pre_norm` (a LayerNorm after the embeddings: CLIP),
    `patch_bias` (the patch embedding's bias; CLIP has none), `layer_norm_epsilon`.

    Image size at run time: `dynamic_image_size` (the model takes [B, H, W, C] of any size,
    its position embedding resized inside the graph to the input's patch grid with
    `position_resize_method`, "bicubic" as timm or "bilinear" as vit_jax; `image_size` is
    then the size the embedding was trained at), `dynamic_image_pad` (a side that is not a
    multiple of the patch size is zero-padded, as timm's `dynamic_img_pad`, instead of being
    an error).

    Besides the architecture, a config says what the model's inputs and outputs mean:
    `preprocessing` (a `Preprocessing`: normalisation, resize, crop) and `labels` (None, a
    label-set name such as `"imagenet1k"`, or the class names in index order). A keras_vit
    model carries its config (`model.vit_config`, or `config_of(model)`).
    """

    image_size: int | tuple[int, int] = 224
    patch_size: int | tuple[int, int] = 16
    hidden_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    num_classes: int = 1000
    num_channels: int = 3
    include_top: bool = True
    pooling: str | None = "token"
    class_token: bool | None = None
    distillation_token: bool = False
    num_register_tokens: int = 0
    embed_prefix_tokens: bool = True
    fc_norm: bool = False
    representation_size: int | None = None
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    classifier_activation: str | None = None
    layer_scale_init: float | None = None
    mlp_activation: str = "gelu"
    pre_norm: bool = False
    patch_bias: bool = True
    layer_norm_epsilon: float = 1e-6
    dynamic_image_size: bool = False
    dynamic_image_pad: bool = False
    position_resize_method: str = "bicubic"
    preprocessing: Preprocessing = Preprocessing()
    labels: None | str | Sequence[str] = None
    gelu_approximate: dataclasses.InitVar[bool | None] = None

    def __post_init__(self, gelu_approximate):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("image_size", _pair(self.image_size, "image_size"))
        set_("patch_size", _pair(self.patch_size, "patch_size"))
        if gelu_approximate is not None:
            set_("mlp_activation", _activation_of_gelu_approximate(gelu_approximate, self.mlp_activation))
        if isinstance(self.preprocessing, dict):
            set_("preprocessing", Preprocessing(**self.preprocessing))
        if not isinstance(self.preprocessing, Preprocessing):
            raise ValueError(f"preprocessing must be a keras_vit Preprocessing, got {self.preprocessing!r}.")
        if self.labels is not None and not isinstance(self.labels, str):
            set_("labels", tuple(str(name) for name in self.labels))
        if isinstance(self.pooling, str):
            set_("pooling", POOLING_ALIASES.get(self.pooling, self.pooling))
        if self.class_token is None:
            set_("class_token", self.pooling not in PATCH_POOLINGS + ("map",) or self.distillation_token)
        self._check_sizes()
        self._check_tokens_and_pooling()
        for key in ("dropout_rate", "attention_dropout_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {getattr(self, key)!r}.")
        if self.mlp_activation not in MLP_ACTIVATIONS:
            raise ValueError(f"Unknown mlp_activation {self.mlp_activation!r}: expected one of {MLP_ACTIVATIONS}.")
        if self.position_resize_method not in RESIZE_METHODS:
            raise ValueError(f"Unknown position_resize_method {self.position_resize_method!r}: expected one of {RESIZE_METHODS}.")
        if self.dynamic_image_pad and not self.dynamic_image_size:
            raise ValueError("dynamic_image_pad=True pads images of any size: it needs dynamic_image_size=True.")
        if self.layer_scale_init is not None and not self.layer_scale_init > 0:
            raise ValueError(f"layer_scale_init must be > 0 (or None for no LayerScale), got {self.layer_scale_init!r}.")
        if self.labels is not None and self.include_top:
            from keras_vit.labels import resolve_labels

            resolve_labels(self.labels, self.num_classes)  # a known set, as many names as classes

    def _check_sizes(self):
        (h, w), (ph, pw) = self.image_size, self.patch_size
        if min(h, w, ph, pw) <= 0:
            raise ValueError(f"image_size {self.image_size} and patch_size {self.patch_size} must be positive.")
        if h % ph or w % pw:
            raise ValueError(
                f"patch_size {ph}x{pw} does not divide image_size {h}x{w}: each image side must be "
                f"a multiple of the patch side (e.g. {h // ph * ph or ph}x{w // pw * pw or pw})."
            )
        for key in ("hidden_dim", "num_layers", "num_heads", "mlp_dim", "num_channels"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) <= 0:
                raise ValueError(f"{key} must be a positive int, got {getattr(self, key)!r}.")
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} does not divide hidden_dim {self.hidden_dim}.")
        if self.include_top and (not isinstance(self.num_classes, int) or self.num_classes <= 0):
            raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}.")

    def _check_tokens_and_pooling(self):
        if self.pooling not in POOLING_MODES + (None,):
            raise ValueError(
                f"Unknown pooling {self.pooling!r}: expected one of {POOLING_MODES} ('avg' is 'gap'), "
                "or None for the whole token sequence (include_top=False only)."
            )
        if self.pooling is None and self.include_top:
            raise ValueError("pooling=None (token sequence output) needs include_top=False.")
        if self.pooling == "token" and not self.class_token:
            raise ValueError("pooling='token' needs class_token=True.")
        if self.distillation_token and (not self.class_token or self.pooling not in ("token", None)):
            raise ValueError("distillation_token=True needs the class token and pooling='token' (DeiT).")
        if self.distillation_token and self.representation_size is not None:
            raise ValueError("distillation_token=True has no pre-logits layer: pass representation_size=None.")
        if not isinstance(self.num_register_tokens, int) or self.num_register_tokens < 0:
            raise ValueError(f"num_register_tokens must be an int >= 0, got {self.num_register_tokens!r}.")
        if self.fc_norm and self.pooling == "map":
            raise ValueError("fc_norm=True (the final norm after pooling, none before) does not go with pooling='map'.")

    @property
    def grid_size(self):
        """Patch grid (rows, cols)."""
        return (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])

    @property
    def num_prefix_tokens(self):
        """The tokens before the patches: [class, distillation, registers...]."""
        return int(self.class_token) + int(self.distillation_token) + self.num_register_tokens

    @property
    def class_names(self):
        """The class names in index order, or None when the labels are unknown."""
        if self.labels is None:
            return None
        from keras_vit.labels import resolve_labels

        return resolve_labels(self.labels, self.num_classes)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        """Plain JSON / YAML data (tuples as lists); `from_dict` reads it back."""

        def plain(value):
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            return list(value) if isinstance(value, tuple) else value

        return plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values):
        """The config `to_dict` wrote; unknown keys are an error naming them."""
        values = dict(values)
        gelu_approximate = values.pop("gelu_approximate", None)  # configs written before mlp_activation
        return dataclass_from_dict(cls, values, "ViTConfig option").replace(gelu_approximate=gelu_approximate)


def _activation_of_gelu_approximate(gelu_approximate, mlp_activation):
    """`gelu_approximate` (the older option) as an `mlp_activation`; both given must agree."""
    activation = "gelu_tanh" if gelu_approximate else "gelu"
    if mlp_activation not in ("gelu", activation):
        raise ValueError(f"gelu_approximate={gelu_approximate} contradicts mlp_activation={mlp_activation!r}.")
    return activation


def dataclass_from_dict(cls, values, what):
    """`cls(**values)` for a dataclass, naming the keys it does not know in a ValueError."""
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown {what}(s) {unknown}; known: {sorted(known)}.")
    return cls(**values)


def config_of(model):
    """The `ViTConfig` a keras_vit model carries (built, loaded from a checkpoint, or reloaded
    from a `.keras` file). A model keras_vit did not build raises a ValueError."""
    config = getattr(model, "vit_config", None)
    if not isinstance(config, ViTConfig):
        raise ValueError(
            f"Model {getattr(model, 'name', model)!r} is not a keras_vit model (it carries no ViTConfig): "
            "build it with keras_vit.VisionTransformer, a variant builder such as keras_vit.ViTB16, or `keras-vit train`."
        )
    return config
