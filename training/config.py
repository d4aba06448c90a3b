"""`TrainConfig`: every option of a training run, with defaults, validation and file I/O.

The resolved config is written to the run folder as `config.json` (and `config.yaml`), and
`keras-vit train --config FILE` reads the same format (YAML or JSON) back; command-line
flags override the file.
"""

import dataclasses
import json
import pathlib

from keras_vit.config import VARIANTS, dataclass_from_dict
from keras_vit.datasets import DEFAULT_VALIDATION_FRACTION
from keras_vit.training.recipe import OPTIMIZERS, PRECISIONS, STRATEGIES

# "ViT" is the fully configurable `keras_vit.VisionTransformer`; the others are named variants.
MODEL_NAMES = ("ViT",) + tuple(VARIANTS)
# The default "ViT": small enough to train on the digits in a couple of minutes on 2 CPU cores
# (how it was chosen, with the accuracies measured: docs/benchmarks.md, "Quickstart").
SMALL_VIT = dict(patch_size=4, hidden_dim=64, num_layers=4, num_heads=4, mlp_dim=128, pooling="gap", drop_path_rate=0.1)
SMALL_VIT_IMAGE_SIZE = 16


@dataclasses.dataclass
class TrainConfig:
    """A training run. Defaults: the quickstart (a small ViT on the offline digits data)."""

    # Model: a variant name or "ViT", plus keyword overrides (hidden_dim, patch_size, ...).
    model: str = "ViT"
    # None: SMALL_VIT for "ViT", nothing for a named variant.
    model_options: dict | None = None
    weights: str | None = None  # a checkpoint to fine-tune from (see keras_vit.weights)
    image_size: int | None = None  # None: SMALL_VIT_IMAGE_SIZE for "ViT", 224 for variants

    # Data.
    dataset: str = "digits"
    data_dir: str | None = None
    batch_size: int = 32
    # The test share of the training examples of an image folder without test/, or of a TFDS
    # dataset without a labelled test or validation split (stratified, seeded).
    test_fraction: float = 0.2
    # Held out of the training split (stratified, seeded) when the dataset has no validation
    # split; 0: no validation (the last epoch's model is kept).
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION
    # Choose the checkpoint (and early-stop) on the test split: its accuracy is then optimistic.
    validate_on_test: bool = False
    cache: bool | None = None
    random_crop: bool = True
    crop_scale_min: float = 0.7
    flip: bool = False
    randaugment: float | None = None
    mixup: float | None = None
    cutmix: float | None = None

    # Recipe.
    epochs: int = 100
    optimizer: str = "adamw"
    learning_rate: float = 2e-3
    end_learning_rate: float = 0.0
    warmup_epochs: float = 3.0
    weight_decay: float = 0.05
    momentum: float = 0.9
    clipnorm: float = 1.0
    # Exponential moving average of the weights (the final model gets the average); None: off.
    # Keras' EMA has no warm-up: keep 1 / (1 - momentum) well below the run's total steps.
    ema_momentum: float | None = None
    label_smoothing: float = 0.1
    precision: str = "float32"
    # XLA for the whole training step; None: the faster path for the backend (`recipe.jit_compile_for`).
    jit_compile: bool | None = None
    strategy: str = "default"
    seed: int = 0

    # Callbacks and output.
    early_stopping: int | None = None  # patience in epochs; None for off
    steps_per_epoch: int | None = None  # cap (quick tests); None: the whole training set
    out: str = "runs/train"
    overwrite: bool = False
    verbose: int = 1  # Keras' fit verbosity; 3: as 1, and TensorFlow's start-up lines are shown

    def __post_init__(self):
        if self.model not in MODEL_NAMES:
            raise ValueError(f"Unknown model {self.model!r}: expected one of {list(MODEL_NAMES)}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Unknown optimizer {self.optimizer!r}: expected one of {OPTIMIZERS}.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"Unknown precision {self.precision!r}: expected one of {PRECISIONS}.")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"Unknown strategy {self.strategy!r}: expected one of {STRATEGIES}.")
        for key in ("epochs", "batch_size"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) <= 0:
                raise ValueError(f"{key} must be a positive int, got {getattr(self, key)!r}.")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}.")
        if self.warmup_epochs < 0:  # longer than the run: warm-up is cut at the last step
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs!r}.")
        if self.verbose not in (0, 1, 2, 3):
            raise ValueError(f"verbose must be 0, 1, 2 or 3, got {self.verbose!r}.")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}.")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}.")
        if self.jit_compile == "auto":  # as on the command line
            self.jit_compile = None
        if self.jit_compile not in (None, True, False):
            raise ValueError(f"jit_compile must be true, false or auto, got {self.jit_compile!r}.")
        if self.model_options is None:
            self.model_options = {}
        if self.model == "ViT":  # given options refine the small default
            self.model_options = {**SMALL_VIT, **self.model_options}
        if self.image_size is None:
            self.image_size = SMALL_VIT_IMAGE_SIZE if self.model == "ViT" else 224
        if not isinstance(self.model_options, dict):
            raise ValueError(f"model_options must be a mapping, got {self.model_options!r}.")

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        return dataclass_from_dict(cls, values, "training option")

    # Options that may differ between an interrupted run and its resumption.
    RESUME_FREE = ("overwrite", "verbose", "out", "data_dir")


def read_config_file(path):
    """A dict of options from a `.yaml`/`.yml`/`.json` file (clear errors for bad files)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"Config file {str(path)!r} does not exist.")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
    except Exception as error:  # noqa: BLE001 - yaml and json raise different errors
        raise ValueError(f"Could not parse config file {str(path)!r}: {error}") from error
    if not isinstance(values, dict):
        raise ValueError(f"Config file {str(path)!r} must hold a mapping of options, got {type(values).__name__}.")
    # A run folder's config.yaml / config.json: its options (next to them: the resolved model
    # config, the XLA setting used, versions).
    return values["options"] if isinstance(values.get("options"), dict) else values
