"""keras_vit.training.fused_optimizer: Keras' AdamW numbers from TensorFlow's fused kernels."""

import json
import textwrap

import keras
import numpy as np
import tensorflow as tf
from conftest import tiny_vit
from test_distributed import _finish, _run_python

from keras_vit.training import fused_optimizer, recipe

# Tolerance of the fused update against Keras', in units of the learning rate: both compute
# Keras' formula in float32 in another order (measured: up to 2e-5 lr after 5 steps, a few
# ulps of the weights). A wrong step count, decay or average is off by > 1e-2 lr.
_ROUNDING = 1e-4


def _adamw(model, fused, ema_momentum=0.9):
    schedule = recipe.warmup_cosine(1e-2, total_steps=20, warmup_steps=2)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=0.1, use_ema=True, ema_momentum=ema_momentum)
    optimizer.exclude_from_weight_decay(var_list=model.no_weight_decay())
    return fused_optimizer.fuse_adamw(optimizer) if fused else optimizer


def _op_types(optimizer, model):
    variables = model.trainable_variables
    grads = [tf.ones_like(v) for v in variables]
    graph = tf.function(lambda: optimizer.apply(grads, variables)).get_concrete_function().graph
    return [op.type for op in graph.get_operations()]


def test_fused_adamw_equals_keras_adamw_weights_slots_and_average():
    models = {fused: tiny_vit(seed=0) for fused in (False, True)}
    optimizers = {fused: _adamw(model, fused) for fused, model in models.items()}
    rng = np.random.default_rng(0)
    for _ in range(5):  # through warm-up (lr 0 at step 0) into the decay; the same gradients on both
        grads = [rng.normal(0, 1, v.shape).astype("float32") for v in models[False].trainable_variables]
        for fused, optimizer in optimizers.items():
            optimizer.apply(grads, models[fused].trainable_variables)
    assert int(optimizers[True].iterations) == 5
    for name in ("_trainable_variables", "_momentums", "_velocities", "_model_variables_moving_average"):
        for a, b in zip(getattr(optimizers[False], name), getattr(optimizers[True], name)):
            np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-5, atol=_ROUNDING * 1e-2, err_msg=f"{name}: {a.path}")
    # The steps moved the weights (a test of two unchanged models could not fail).
    assert not np.allclose(np.array(models[True].get_layer("head").kernel), np.array(tiny_vit(seed=0).get_layer("head").kernel))


def test_fused_adamw_trains_as_keras_adamw():
    models = {fused: tiny_vit(seed=0) for fused in (False, True)}
    for fused, model in models.items():
        model.compile(optimizer=_adamw(model, fused), loss=recipe.make_loss(), jit_compile=False)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (8, 16, 16, 3)).astype("float32")
    labels = np.eye(10, dtype="float32")[rng.integers(0, 10, 8)]
    losses = {fused: [model.train_on_batch(images, labels) for _ in range(6)] for fused, model in models.items()}
    assert losses[True][-1] < 0.8 * losses[True][0]  # it learns
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)  # measured: ~1e-6


def test_fused_adamw_runs_one_kernel_per_variable():
    model = tiny_vit()
    keras_ops = _op_types(_adamw(model, fused=False), model)
    fused_ops = _op_types(_adamw(model, fused=True), model)
    variables = len(model.trainable_variables)
    assert fused_ops.count("ResourceApplyAdam") == variables
    assert fused_ops.count("ResourceApplyGradientDescent") == variables  # the moving average
    assert "ResourceApplyAdam" not in keras_ops
    assert len(fused_ops) < 0.5 * len(keras_ops)  # measured: about a third


def test_fused_adamw_keeps_keras_config_and_reloads_without_keras_vit(tmp_path):
    model = tiny_vit()
    optimizer = recipe.make_optimizer(model, learning_rate=1e-3)
    assert optimizer.update_step is not keras.optimizers.AdamW.update_step.__get__(optimizer)  # fused
    model.compile(optimizer=optimizer, loss=recipe.make_loss(), jit_compile=False)
    model.train_on_batch(np.zeros((2, 16, 16, 3), "float32"), np.eye(10, dtype="float32")[:2])
    model.save(tmp_path / "m.keras")
    config = keras.optimizers.serialize(optimizer)
    assert (config["module"], config["class_name"]) == ("keras.optimizers", "AdamW")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert type(loaded.optimizer) is keras.optimizers.AdamW
    assert int(loaded.optimizer.iterations) == 1


def test_fused_adamw_leaves_what_it_does_not_cover_alone():
    model = tiny_vit()
    amsgrad = fused_optimizer.fuse_adamw(keras.optimizers.AdamW(amsgrad=True))
    sgd = fused_optimizer.fuse_adamw(keras.optimizers.SGD())
    assert "update_step" not in vars(amsgrad) and "update_step" not in vars(sgd)
    assert "ResourceApplyAdam" not in _op_types(amsgrad, model)


def test_fused_adamw_under_mirrored_strategy_updates_every_replica_as_keras():
    code = """
        import json, numpy as np, tensorflow as tf, keras
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from keras_vit.training import fused_optimizer
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        result = {}
        for fused in (False, True):
            with strategy.scope():
                kernel = keras.Variable(np.linspace(-1, 1, 12).reshape(3, 4).astype("float32"), name="kernel")
                bias = keras.Variable(np.ones(4, "float32"), name="bias")
                optimizer = keras.optimizers.AdamW(0.1, weight_decay=0.5, use_ema=True, ema_momentum=0.5)
                optimizer.exclude_from_weight_decay(var_list=[bias])
                if fused:
                    fused_optimizer.fuse_adamw(optimizer)
                optimizer.build([kernel, bias])

            @tf.function
            def step():
                def replica_step():
                    replica = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, "float32")
                    grads = [tf.sin(kernel.value * (3.0 + replica)), tf.cos(bias.value + replica)]
                    optimizer.apply(grads, [kernel, bias])
                strategy.run(replica_step)

            for _ in range(3):
                step()
            result[str(fused)] = {
                v.name: [c.numpy().tolist() for c in v.value.values]
                for v in (kernel, bias, *optimizer.variables) if hasattr(v.value, "values")
            }
        print("RESULT", json.dumps(result))
    """
    out = _finish(_run_python(textwrap.dedent(code)))
    result = json.loads(out.split("RESULT", 1)[1])
    keras_values, fused_values = result["False"], result["True"]
    assert {"kernel", "bias"} <= set(keras_values) and keras_values.keys() == fused_values.keys()
    for name, copies in fused_values.items():
        np.testing.assert_allclose(copies[0], copies[1], err_msg=name)  # both replicas alike
        np.testing.assert_allclose(copies, keras_values[name], rtol=1e-5, atol=_ROUNDING * 0.1, err_msg=name)
    assert not np.allclose(fused_values["kernel"][0], np.linspace(-1, 1, 12).reshape(3, 4))
