"""The training recipe: optimizer, learning-rate schedule, loss, precision and strategy.

- `warmup_cosine`: linear warm-up to the peak rate, then cosine decay to `end_learning_rate`
  (Keras's serializable `CosineDecay` schedule).
- `make_optimizer`: AdamW whose weight decay skips what the model says
  (`ViTModel.no_weight_decay()`: biases, norms, the position embedding and the tokens); or
  SGD with momentum (the paper's fine-tuning recipe). AdamW's update runs as TensorFlow's
  fused kernels (`fused_optimizer`). Both clip gradients by global norm (1.0 by default).
- `ema_too_slow`: whether a moving average of the weights would still hold the initial
  weights at the end of the run.
- `make_loss`: categorical cross-entropy on float32 logits with label smoothing.
- `set_precision`: "float32", "mixed_bfloat16" (CPU/TPU) or "mixed_float16" (GPU).
- `jit_compile_for`: XLA for the whole step or not, when the run does not say.
- `make_strategy`: a `tf.distribute` strategy by name.
"""

import json
import math
import os

import keras
import tensorflow as tf

from keras_vit.training import compat, fused_optimizer

OPTIMIZERS = ("adamw", "sgd")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def warmup_cosine(peak_learning_rate, total_steps, warmup_steps=0, end_learning_rate=0.0):
    """Linear warm-up from 0 to `peak_learning_rate` over `warmup_steps`, then cosine decay
    to `end_learning_rate` at `total_steps` (constant after it):

    lr(step) = peak * step / warmup                                    for step < warmup
             = end + (peak - end) * 0.5 * (1 + cos(pi * progress))     otherwise,
    with progress = (step - warmup) / (total - warmup), clipped to [0, 1].

    Returns Keras's own `CosineDecay` (which has this warm-up built in), so saved models
    re-load anywhere without importing keras_vit.training.
    """
    if total_steps <= 0 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"Need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps}) and total_steps > 0."
        )
    if peak_learning_rate <= 0 or not 0 <= end_learning_rate <= peak_learning_rate:
        raise ValueError(f"Need 0 <= end_learning_rate ({end_learning_rate}) <= peak ({peak_learning_rate}), peak > 0.")
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else float(peak_learning_rate),
        decay_steps=max(int(total_steps) - int(warmup_steps), 1),
        alpha=float(end_learning_rate) / float(peak_learning_rate),
        warmup_target=float(peak_learning_rate) if warmup_steps else None,
        warmup_steps=int(warmup_steps),
    )


def make_optimizer(
    model,
    name="adamw",
    learning_rate=1e-3,
    weight_decay=0.05,
    momentum=0.9,
    clipnorm=1.0,
    beta_2=0.999,
    ema_momentum=None,
):
    """An optimizer for `model`, a keras_vit model (its `no_weight_decay()` lists the
    variables weight decay skips).

    name: "adamw" (weight decay on kernels only) or "sgd" (momentum, no decay, as in the
        ViT paper's fine-tuning). `learning_rate` may be a float or a schedule.
    clipnorm: global-norm gradient clipping threshold (None or 0 for off).
    ema_momentum: keep an exponential moving average of the weights (e.g. 0.998) and put
        it into the model at the end of `fit` (Keras' `use_ema`); None for off.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}: expected one of {OPTIMIZERS}.")
    options = {"global_clipnorm": float(clipnorm)} if clipnorm else {}
    if ema_momentum:
        options.update(use_ema=True, ema_momentum=float(ema_momentum))
    if name == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum, **options)
    else:
        optimizer = keras.optimizers.AdamW(
            learning_rate=learning_rate, weight_decay=weight_decay, beta_2=beta_2, **options
        )
        optimizer.exclude_from_weight_decay(var_list=model.no_weight_decay())
        optimizer = fused_optimizer.fuse_adamw(optimizer)  # same numbers, fewer kernels

    # Clip the summed gradient, not each replica's share of it (see compat.py, fix 3).
    return compat.clip_after_cross_replica_sum(optimizer)


def jit_compile_for(asked=None):
    """Whether `model.compile` XLA-compiles the training step: `asked` when it is a bool;
    else, on TensorFlow, False: keras_vit's TensorFlow step already runs its element-wise
    hot spots as XLA kernels (`keras_vit.tensorflow_kernels`) next to oneDNN's matmuls, and
    compiling the whole step measured no faster (docs/benchmarks.md, "Training step", with
    keras_vit's default as a row of its own); on the other backends Keras' own "auto" (JAX
    always compiles)."""
    if asked is not None:
        return bool(asked)
    return False if keras.backend.backend() == "tensorflow" else "auto"


# The share of the weights after the first step (about the random initial ones) that a moving
# average may still hold at the end of a run before `train` warns. Keras' average starts from
# them, without bias correction, so after n steps they weigh momentum ** n.
EMA_LEFTOVER_LIMIT = 0.01


def ema_too_slow(ema_momentum, total_steps):
    """None, or a sentence for the log when an average of `ema_momentum` over `total_steps`
    steps still holds more than `EMA_LEFTOVER_LIMIT` of the initial weights at the end (e.g.
    0.998 over 600 steps: 30%); the largest momentum that would not."""
    if not ema_momentum or total_steps <= 0:
        return None
    leftover = ema_momentum ** total_steps
    if leftover <= EMA_LEFTOVER_LIMIT:
        return None
    largest = math.floor(EMA_LEFTOVER_LIMIT ** (1 / total_steps) * 1000) / 1000
    return (
        f"the moving average of the weights (ema_momentum {ema_momentum}) will still hold "
        f"{leftover:.0%} of the initial weights after this run's {total_steps} steps, and validation, "
        f"model.keras and the test accuracy use it: use ema_momentum <= {largest} or more epochs"
    )


def make_loss(label_smoothing=0.0):
    """Cross-entropy between one-hot (or MixUp-soft) labels [B, K] and float32 logits [B, K]."""
    return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing)


def set_precision(precision="float32"):
    """Sets the global Keras dtype policy. The model's head is float32, so logits stay float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}: expected one of {PRECISIONS}.")
    if precision == "mixed_float16" and not tf.config.list_physical_devices("GPU"):
        raise ValueError("mixed_float16 needs a GPU; use mixed_bfloat16 on CPU or TPU.")
    keras.mixed_precision.set_global_policy(precision)


def make_strategy(name="default", tpu=None):
    """A `tf.distribute` strategy: "default" (one device), "mirrored" (all local devices),
    "multi_worker" (workers from the TF_CONFIG environment variable) or "tpu"."""
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}: expected one of {STRATEGIES}.")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("strategy 'multi_worker' needs the TF_CONFIG environment variable (cluster and task).")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as error:
            raise ValueError(f"TF_CONFIG is not valid JSON: {error}") from error
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy):
    """True on the worker that writes files: always, except on non-chief multi-workers."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type is None or task_type == "chief" or (task_type == "worker" and task_id == 0 and
                                                          "chief" not in resolver.cluster_spec().as_dict())
