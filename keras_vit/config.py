"""ViTConfig and the variant table: the one place where ViT sizes live."""

import dataclasses
from typing import Optional, Tuple, Union

POOLING_MODES = ("token", "gap")

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
    "ViTS16": ("S", 16),
    "ViTS32": ("S", 32),
    "ViTB8": ("B", 8),
    "ViTB16": ("B", 16),
    "ViTB32": ("B", 32),
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

    `image_size` and `patch_size` accept an int or a (height, width) pair and are stored as
    pairs. `class_token=None` means: a class token for `token` pooling, none for `gap`.
    """

    image_size: Union[int, Tuple[int, int]] = 224
    patch_size: Union[int, Tuple[int, int]] = 16
    hidden_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    num_classes: int = 1000
    num_channels: int = 3
    include_top: bool = True
    pooling: Optional[str] = "token"
    class_token: Optional[bool] = None
    representation_size: Optional[int] = None
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    classifier_activation: Optional[str] = None
    gelu_approximate: bool = False
    layer_norm_epsilon: float = 1e-6

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("image_size", _pair(self.image_size, "image_size"))
        set_("patch_size", _pair(self.patch_size, "patch_size"))
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
            raise ValueError(
                f"num_heads {self.num_heads} does not divide hidden_dim {self.hidden_dim}."
            )
        if self.pooling not in POOLING_MODES + (None,):
            raise ValueError(
                f"Unknown pooling {self.pooling!r}: expected one of {POOLING_MODES}, "
                "or None for the whole token sequence (include_top=False only)."
            )
        if self.pooling is None and self.include_top:
            raise ValueError("pooling=None (token sequence output) needs include_top=False.")
        if self.include_top and (not isinstance(self.num_classes, int) or self.num_classes <= 0):
            raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}.")
        if self.class_token is None:
            set_("class_token", self.pooling != "gap")
        if self.pooling == "token" and not self.class_token:
            raise ValueError("pooling='token' needs class_token=True.")
        for key in ("dropout_rate", "attention_dropout_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {getattr(self, key)!r}.")

    @property
    def grid_size(self):
        """Patch grid (rows, cols)."""
        return (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])

    @property
    def num_prefix_tokens(self):
        return int(self.class_token)

    @property
    def sequence_length(self):
        gh, gw = self.grid_size
        return gh * gw + self.num_prefix_tokens

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_variant(cls, variant, **overrides):
        """The config of a named variant (`"ViTB16"`), with keyword overrides."""
        if variant not in VARIANTS:
            raise ValueError(f"Unknown variant {variant!r}: expected one of {sorted(VARIANTS)}.")
        size, patch = VARIANTS[variant]
        return cls(**{**MODEL_SIZES[size], "patch_size": patch, **overrides})
