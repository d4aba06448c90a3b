"""AdamW's update as TensorFlow's fused kernels, on one Keras AdamW instance.

Keras 3 writes each variable's Adam update with `keras.ops`: about ten element-wise ops
and two powers per variable, each its own kernel and its own pass over memory on
TensorFlow without XLA (keras_vit's default training path, `recipe.jit_compile_for`).
For ViT-Ti that is ~2,000 small ops per step. `fuse_adamw(optimizer)` replaces:

- the Adam update of each variable by TensorFlow's `ResourceApplyAdam` kernel (one op:
  the same formula as Keras',
  `m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2); w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)`);
- the decoupled weight decay `w -= w * wd * lr` with the learning rate (a schedule)
  evaluated once per step instead of once per variable;
- the moving average of the weights (`use_ema`), `a = m a + (1 - m) w`, by
  `ResourceApplyGradientDescent` (`a -= (1 - m)(a - w)`), on one replica (under several,
  Keras' own).

The result equals Keras' update to float32 rounding (tests/test_fused_optimizer.py).
Only this instance changes: its saved config stays Keras' AdamW, and a model saved with
it re-loads without keras_vit. Nothing changes for other backends, amsgrad, or Keras
versions other than those checked (`compat.CHECKED_KERAS_VERSIONS`), whose private
optimizer attributes this reads. The gain: docs/benchmarks.md, "Measured facts".
"""

import keras

from keras_vit.training import compat


def fuse_adamw(optimizer):
    """Returns `optimizer` (a Keras AdamW or Adam) with its per-variable updates run as
    TensorFlow's fused kernels; unchanged where that does not apply (see the module)."""
    if (
        keras.backend.backend() != "tensorflow"
        or not isinstance(optimizer, keras.optimizers.Adam)
        or optimizer.amsgrad
        or not compat.keras_version_checked()
    ):
        return optimizer
    import tensorflow as tf

    def step_scalars(dtype):
        # Per variable, as Keras does: a few scalar ops, against ten passes over the variable.
        step = tf.cast(optimizer.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(optimizer.beta_1, dtype), tf.cast(optimizer.beta_2, dtype)
        return {
            "beta1_power": tf.pow(beta_1, step), "beta2_power": tf.pow(beta_2, step),
            "beta1": beta_1, "beta2": beta_2, "epsilon": tf.cast(optimizer.epsilon, dtype),
        }

    def update_step(gradient, variable, learning_rate):
        index = optimizer._get_variable_index(variable)
        dtype = variable.dtype
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable),
            m=_handle(optimizer._momentums[index]),
            v=_handle(optimizer._velocities[index]),
            lr=tf.cast(learning_rate, dtype),
            grad=tf.cast(gradient, dtype),
            **step_scalars(dtype),
        )

    def apply_weight_decay(variables):
        if optimizer.weight_decay is None:
            return
        decayed = [v for v in variables if optimizer._use_weight_decay(v)]
        if not decayed:
            return
        # lr * wd once; Keras' TF optimizer evaluates the schedule once per variable.
        decay = tf.cast(optimizer.learning_rate, "float32") * optimizer.weight_decay

        def shrink(variable):
            variable.assign_sub(variable * tf.cast(decay, variable.dtype))

        def distributed(distribution, variables):
            for variable in variables:
                distribution.extended.update(_tf_variable(variable), shrink, group=False)

        tf.__internal__.distribute.interim.maybe_merge_call(distributed, optimizer._distribution_strategy, decayed)

    keras_moving_average = optimizer._update_model_variables_moving_average

    def update_moving_average(trainable_variables):
        if tf.distribute.get_strategy().num_replicas_in_sync > 1:
            return keras_moving_average(trainable_variables)  # Keras' own, under several replicas
        momentum = tf.cast(tf.not_equal(optimizer.iterations, 0), "float32") * optimizer.ema_momentum
        for variable, average in zip(trainable_variables, optimizer._model_variables_moving_average):
            if average is None:
                continue
            dtype = average.dtype
            tf.raw_ops.ResourceApplyGradientDescent(
                var=_handle(average),
                alpha=tf.cast(1.0 - momentum, dtype),
                delta=average.value - tf.cast(variable.value, dtype),
            )

    optimizer.update_step = update_step
    if isinstance(optimizer, keras.optimizers.AdamW):
        optimizer._apply_weight_decay = apply_weight_decay
    if optimizer.use_ema:
        optimizer._update_model_variables_moving_average = update_moving_average
    return optimizer


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def _handle(variable):
    """The resource handle of a Keras or TF variable (this device's copy under a strategy's
    `update`, where the optimizer applies updates)."""
    return _tf_variable(variable).handle
