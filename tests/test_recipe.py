"""keras_vit.training.recipe: schedule, weight-decay exclusion, optimizers, precision, strategy."""

import math

import keras
import numpy as np
import pytest
from conftest import tiny_vit

from keras_vit.training import recipe


def _tiny_vit():
    return tiny_vit(image_size=8, num_layers=1, num_classes=3)


def test_warmup_cosine_values():
    schedule = recipe.warmup_cosine(1e-3, total_steps=1000, warmup_steps=100, end_learning_rate=1e-5)
    lr = lambda step: float(schedule(step))  # noqa: E731
    assert lr(0) == 0.0
    assert lr(50) == pytest.approx(0.5e-3)
    assert lr(100) == pytest.approx(1e-3)  # end of warm-up: the peak
    assert lr(550) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr(1000) == pytest.approx(1e-5)  # last step: the end rate
    assert lr(5000) == pytest.approx(1e-5)
    values = [lr(s) for s in range(100, 1001, 50)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay


def test_warmup_cosine_serializes():
    schedule = recipe.warmup_cosine(3e-4, total_steps=500, warmup_steps=20)
    clone = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert clone.get_config() == schedule.get_config()
    assert float(clone(20)) == pytest.approx(3e-4) and float(clone(500)) == pytest.approx(0.0, abs=1e-12)
    assert float(recipe.warmup_cosine(1e-3, total_steps=10)(0)) == pytest.approx(1e-3)  # no warm-up
    with pytest.raises(ValueError, match="warmup_steps"):
        recipe.warmup_cosine(1e-3, total_steps=10, warmup_steps=20)


def test_weight_decay_skips_biases_norms_position_embedding_and_class_token():
    model = _tiny_vit()
    optimizer = recipe.make_optimizer(model, "adamw", learning_rate=0.1, weight_decay=0.5)
    before = {v.path: np.array(v) + 1.0 for v in model.trainable_variables}
    for v in model.trainable_variables:  # nonzero everywhere (the head starts at zero)
        v.assign(before[v.path])
    # Zero gradients: Adam's update is 0, so only weight decay moves a variable.
    optimizer.apply_gradients([(np.zeros(v.shape, "float32"), v) for v in model.trainable_variables])
    decayed = {v.path for v in model.trainable_variables if not np.allclose(np.array(v), before[v.path])}
    kept = {v.path for v in model.trainable_variables} - decayed
    assert decayed == {v.path for v in model.trainable_variables if v.path.endswith("/kernel")}
    assert {"class_token/token", "position_embedding/embedding", "encoder_norm/gamma", "head/bias"} <= kept
    assert any(p.endswith("attention_norm/beta") for p in kept)
    # Decay shrinks by lr * wd: x * (1 - 0.05).
    kernel = next(v for v in model.trainable_variables if v.path == "head/kernel")
    np.testing.assert_allclose(np.array(kernel), before["head/kernel"] * (1 - 0.1 * 0.5), rtol=1e-5)


def test_the_recipe_asks_the_model_which_weights_skip_decay():
    model = _tiny_vit()
    model.no_weight_decay = lambda: []  # a model that says: decay everything
    optimizer = recipe.make_optimizer(model, "adamw", learning_rate=0.1, weight_decay=0.5)
    for v in model.trainable_variables:
        v.assign(np.array(v) + 1.0)
    before = {v.path: np.array(v) for v in model.trainable_variables}
    optimizer.apply_gradients([(np.zeros(v.shape, "float32"), v) for v in model.trainable_variables])
    assert all(not np.allclose(np.array(v), before[v.path]) for v in model.trainable_variables)


def test_sgd_and_gradient_clipping():
    model = _tiny_vit()
    sgd = recipe.make_optimizer(model, "sgd", learning_rate=0.01, momentum=0.9)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0.9 and sgd.global_clipnorm == 1.0
    adamw = recipe.make_optimizer(model, clipnorm=None)
    assert adamw.global_clipnorm is None
    with pytest.raises(ValueError, match="Unknown optimizer 'adam'"):
        recipe.make_optimizer(model, "adam")


def test_mixed_bfloat16_keeps_float32_logits():
    recipe.set_precision("mixed_bfloat16")
    model = _tiny_vit()
    assert model.get_layer("encoder_block_0").compute_dtype == "bfloat16"
    logits = model(np.zeros((2, 8, 8, 3), "float32"))
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    with pytest.raises(ValueError, match="Unknown precision"):
        recipe.set_precision("float8")


def test_strategy_by_name(monkeypatch):
    assert recipe.make_strategy("default").num_replicas_in_sync == 1
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        recipe.make_strategy("multi_worker")
    with pytest.raises(ValueError, match="Unknown strategy"):
        recipe.make_strategy("horovod")


def test_xla_for_the_step_is_off_by_default_on_tensorflow_and_the_cli_can_ask_for_it():
    """None (auto) means no whole-step XLA on TensorFlow, where keras_vit's step measured no
    faster compiled (docs/benchmarks.md); an explicit choice always wins."""
    from keras_vit.training import cli

    assert recipe.jit_compile_for(None) is False
    assert recipe.jit_compile_for(True) is True and recipe.jit_compile_for(False) is False
    parse = lambda *argv: cli.config_from_args(list(argv)).jit_compile  # noqa: E731
    assert parse() is None
    assert parse("--jit-compile", "auto") is None
    assert parse("--jit-compile") is True
    assert parse("--jit-compile", "false") is False
    with pytest.raises(SystemExit):
        parse("--jit-compile", "sometimes")
    from keras_vit.training.config import TrainConfig

    assert TrainConfig.from_dict({"jit_compile": "auto"}).jit_compile is None  # as a config file says it
    with pytest.raises(ValueError, match="jit_compile must be true, false or auto"):
        TrainConfig.from_dict({"jit_compile": "sometimes"})


@pytest.mark.parametrize("momentum, steps", [(0.998, 600), (0.9, 12), (0.9999, 4100)])
def test_a_moving_average_too_slow_for_the_run_is_named_with_a_momentum_that_fits(momentum, steps):
    """Keras' average starts at the first step's weights: after n steps they weigh m ** n. The
    warning gives that share and a momentum whose leftover is within the limit."""
    message = recipe.ema_too_slow(momentum, steps)
    assert f"{momentum ** steps:.0%} of the initial weights" in message
    largest = float(message.rsplit("ema_momentum <= ", 1)[1].split()[0])
    assert largest < momentum and largest ** steps <= recipe.EMA_LEFTOVER_LIMIT
    assert recipe.ema_too_slow(largest, steps) is None


def test_a_moving_average_that_forgets_its_start_in_time_is_not_warned_about():
    assert recipe.ema_too_slow(0.998, 100 * 41) is None  # the quickstart: 100 epochs of 41 steps
    assert recipe.ema_too_slow(None, 10) is None and recipe.ema_too_slow(0.0, 10) is None


def test_weights_ema_is_what_the_model_holds_after_fit():
    """With ema_momentum, fit ends with the exponential moving average of the weights: the
    same average recomputed by hand from the weights after every step."""
    model = _tiny_vit()
    model.compile(optimizer=recipe.make_optimizer(model, learning_rate=1e-2, ema_momentum=0.5, clipnorm=None),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images = np.random.RandomState(0).uniform(-1, 1, (8, 8, 8, 3)).astype("float32")
    labels = np.arange(8) % 3

    class RecordWeights(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raw = [np.array(v) for v in model.trainable_weights]
            averages.append(raw if not averages else [0.5 * a + 0.5 * w for a, w in zip(averages[-1], raw)])

    averages = []
    model.fit(images, labels, batch_size=2, epochs=1, verbose=0, shuffle=False, callbacks=[RecordWeights()])
    assert len(averages) == 4
    for variable, expected in zip(model.trainable_weights, averages[-1]):
        np.testing.assert_allclose(np.array(variable), expected, atol=1e-6)
