"""keras_vit.training.train / cli / quickstart: the run folder, bad input, resume after a kill."""

import csv
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from keras_vit import datasets, native_ops, preprocess_input
from keras_vit.training import cli
from keras_vit.training.train import train

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--model-option", "hidden_dim=32", "--model-option", "num_layers=1", "--model-option", "num_heads=2",
        "--model-option", "mlp_dim=64", "--image-size", "8"]


def _tiny_options(out, **kw):
    return {
        **dict(
            out=str(out), epochs=2, steps_per_epoch=6, batch_size=32, image_size=8, jit_compile=False, verbose=0,
            model_options=dict(hidden_dim=32, num_layers=1, num_heads=2, mlp_dim=64),
        ),
        **kw,
    }


def test_run_folder_has_one_model_chosen_on_validation_and_metrics_describe_it(tmp_path):
    run = tmp_path / "run"
    result = train(_tiny_options(run, learning_rate=3e-3, epochs=3))
    names = {p.name for p in run.iterdir()}
    assert names == {"config.json", "config.yaml", "dataset.json", "model.keras", "history.csv",
                     "tensorboard", "curves.png", "metrics.json"}  # backup/ is gone once finished
    metrics = json.loads((run / "metrics.json").read_text())
    facts = json.loads((run / "dataset.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert metrics["model"] == "model.keras"
    assert (metrics["num_train"], metrics["num_validation"], metrics["num_test"]) == (1293, 144, 360)
    assert facts["validation"]["source"] == "held_out" and metrics["chosen_by"].startswith("lowest validation loss")
    # config.json's model config is the one the model carries.
    model = keras.saving.load_model(run / "model.keras")
    assert config["model_config"] == model.vit_config.to_dict() and config["options"]["epochs"] == 3
    assert model.vit_config.class_names == facts["class_names"]
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    val_loss = [float(r["val_loss"]) for r in rows]
    chosen = val_loss.index(min(val_loss))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert metrics["chosen_epoch"] == chosen + 1 and metrics["validation_loss"] == min(val_loss)
    assert metrics["validation_accuracy"] == float(rows[chosen]["val_accuracy"])
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # model.keras is the chosen epoch's model: its validation accuracy is the chosen one, and
    # metrics.json's test accuracy is its accuracy on the test split.
    preprocessing = model.vit_config.preprocessing
    for split, expected in (("validation", metrics["validation_accuracy"]), ("test", metrics["test_accuracy"])):
        images, labels = datasets.load_images(facts, split, (8, 8), preprocessing)
        logits = model.predict(preprocess_input(images, preprocessing.mean, preprocessing.std), verbose=0)
        assert float((logits.argmax(-1) == labels).mean()) == pytest.approx(expected, abs=1e-6), split
    assert metrics["test_accuracy"] > 0.2  # 18 steps on 10 classes: clearly above chance (0.1)
    assert result["metrics"] == metrics


def test_ema_run_saves_the_averaged_weights_that_validation_measured(tmp_path, capsys):
    """With a weights EMA the chosen model holds the average (what validation measured), not
    the raw weights the optimizer steps; a run too short for its momentum says so."""
    run = tmp_path / "run"
    result = train(_tiny_options(run, learning_rate=3e-3, epochs=2, ema_momentum=0.9))
    # 12 steps: 0.9 ** 12 = 28% of the initial weights are still in the average.
    assert "warning: the moving average of the weights (ema_momentum 0.9) will still hold 28%" in capsys.readouterr().err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["weights"].startswith("exponential moving average")
    model = keras.saving.load_model(run / "model.keras")
    facts = json.loads((run / "dataset.json").read_text())
    images, labels = datasets.load_images(facts, "validation", (8, 8))
    accuracy = float((model.predict(preprocess_input(images), verbose=0).argmax(-1) == labels).mean())
    assert accuracy == pytest.approx(metrics["validation_accuracy"], abs=1e-6)
    # The last epoch's model: fit ends with the average in the model (Keras finalises EMA).
    final = result["model"]
    last_is_chosen = metrics["chosen_epoch"] == metrics["epochs_run"]
    same = all(np.array_equal(a, b) for a, b in zip(final.get_weights(), model.get_weights()))
    assert same == last_is_chosen


def test_no_validation_keeps_the_last_epoch_and_test_only_when_asked(tmp_path):
    result = train(_tiny_options(tmp_path / "none", validation_fraction=0.0))
    metrics = result["metrics"]
    assert metrics["chosen_by"] == "the last epoch (no validation)" and metrics["chosen_epoch"] == 2
    assert metrics["num_validation"] == 0 and metrics["num_train"] == 1437
    asked = train(_tiny_options(tmp_path / "asked", validate_on_test=True))["metrics"]
    assert "test split" in asked["chosen_by"] and "optimistic" in asked["chosen_by"]
    facts = json.loads((tmp_path / "asked" / "dataset.json").read_text())
    assert facts["validation"]["source"] == "test"
    with pytest.raises(ValueError, match="early_stopping needs validation"):
        train(_tiny_options(tmp_path / "early", validation_fraction=0.0, early_stopping=2))


def test_cli_with_config_file_and_finished_run_protection(tmp_path, capsys):
    run = tmp_path / "run"
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        "epochs: 1\nsteps_per_epoch: 3\nbatch_size: 16\nverbose: 0\n"
        "image_size: 8\nmodel_options: {hidden_dim: 16, num_layers: 1, num_heads: 2, mlp_dim: 32}\n"
    )
    assert cli.main(["--config", str(config_file), "--out", str(run), "--learning-rate", "0.001"]) == 0
    options = json.loads((run / "config.json").read_text())["options"]
    assert options["batch_size"] == 16 and options["learning_rate"] == 0.001
    assert options["model_options"]["patch_size"] == 4  # the small default, refined by the file
    assert options["jit_compile"] is None  # auto: on TensorFlow, no XLA
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["jit_compile_used"] is False
    assert resolved["native_kernels_used"] is (native_ops.load() is not None)  # tests/test_native_ops.py
    stamp = (run / "model.keras").stat().st_mtime_ns
    assert cli.main(["--config", str(config_file), "--out", str(run)]) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert (run / "model.keras").stat().st_mtime_ns == stamp  # nothing overwritten
    # The run's own config.yaml trains the same run again.
    again = tmp_path / "again"
    assert cli.main(["--config", str(run / "config.yaml"), "--out", str(again)]) == 0
    assert json.loads((again / "config.json").read_text())["options"] == {**options, "out": str(again)}
    assert cli.main(["--config", str(config_file), "--out", str(run), "--overwrite"]) == 0
    assert (run / "model.keras").stat().st_mtime_ns != stamp


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "cifar11"], "Unknown dataset 'cifar11'"),
        (["--batch-size", "5000"], "batch_size 5000 is larger than the 1293 training examples"),
        (["--model-option", "patch_size=3"], "patch_size 3x3 does not divide image_size 8x8"),
        (["--model-option", "colour=1"], "Bad model_options"),
    ],
)
def test_cli_bad_input(tmp_path, capsys, argv, message):
    assert cli.main(TINY + ["--out", str(tmp_path / "run")] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_cli_unknown_model_and_non_run_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--model", "ViTZ99"])
    assert exit_info.value.code == 2 and "invalid choice: 'ViTZ99'" in capsys.readouterr().err
    (tmp_path / "precious.txt").write_text("keep me")
    assert cli.main(TINY + ["--out", str(tmp_path), "--epochs", "1", "--steps-per-epoch", "1"]) == 2
    assert "is not a keras-vit run folder" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def _train_command(run, epochs):
    return [sys.executable, "-m", "keras_vit.cli", "train", *TINY, "--epochs", str(epochs),
            "--steps-per-epoch", "30", "--batch-size", "16", "--jit-compile", "false", "--verbose", "2",
            "--out", str(run)]


@pytest.mark.slow
def test_resume_after_killing_a_real_training_process(tmp_path):
    run, epochs = tmp_path / "run", 12
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    meta = run / "backup" / "training_metadata.json"
    first = subprocess.Popen(_train_command(run, epochs), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None:
        if meta.is_file() and json.loads(meta.read_text() or '{"epoch": 0}')["epoch"] >= 2:
            break
        time.sleep(0.05)
    assert first.poll() is None, "training finished (or failed) before it could be killed:\n" + first.stdout.read().decode()
    first.send_signal(signal.SIGKILL)
    first.wait()
    saved_epoch = json.loads(meta.read_text())["epoch"]
    assert 2 <= saved_epoch < epochs and not (run / "metrics.json").exists()

    second = subprocess.run(_train_command(run, epochs), env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resuming the unfinished run" in second.stderr
    epochs_run = [int(m) for m in re.findall(rf"^Epoch (\d+)/{epochs}", second.stdout, re.M)]
    assert epochs_run == list(range(saved_epoch + 1, epochs + 1))  # continues from the saved epoch
    with open(run / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(epochs))  # each epoch once
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resumed"] and metrics["epochs_run"] == epochs
    # The optimizer state was restored too: the step count (which drives the LR schedule) of
    # the chosen model is that of one uninterrupted run at its epoch.
    model = keras.saving.load_model(run / "model.keras")
    assert int(model.optimizer.iterations.numpy()) == metrics["chosen_epoch"] * 30


@pytest.mark.slow
def test_quickstart_reaches_95_5_percent_on_held_out_digits(tmp_path):
    """The quickstart's model, chosen on its held-out validation share, on the 360 test digits.
    Runs differ (the random crop runs in a parallel tf.data map, sums differ between CPUs) and
    one image is 0.28 points: ten runs of this recipe (seeds 0 and 1, two CPUs) measured
    96.7-99.4%, mean 98.3%, standard deviation 0.8 points (docs/benchmarks.md, "Measured
    facts"). The bound sits over 3 deviations below the mean: it fails on a broken recipe, not
    on that spread (a 97% bound failed CI once, at 96.67%). The 144 validation digits
    (96.5-97.2% in three of those runs) get a bound as far below."""
    from keras_vit import quickstart

    assert quickstart.main(["--out", str(tmp_path / "quickstart"), "--skip-export"]) == 0
    metrics = json.loads((tmp_path / "quickstart" / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.955 and metrics["validation_accuracy"] >= 0.92, metrics


def test_fine_tuning_starts_from_the_checkpoint(tmp_path, fixtures_dir):
    """--weights builds the model from a checkpoint: the reference ViT's own logits before
    training, and a short fine-tuning run on the digits from there."""
    from keras_vit.training.config import TrainConfig
    from keras_vit.training.train import build_model

    checkpoint = fixtures_dir / "google_vit" / "i32_p4_token" / "params.npz"
    architecture = dict(patch_size=4, hidden_dim=64, num_layers=2, num_heads=4, mlp_dim=128, pooling="token")
    options = dict(_tiny_options(tmp_path / "run"), image_size=32, model_options=architecture, weights=str(checkpoint))
    model = build_model(TrainConfig(**options), class_names=[str(i) for i in range(10)])
    reference = np.load(checkpoint.parent / "logits.npy")
    np.testing.assert_allclose(model.predict(np.load(checkpoint.parent / "input.npy"), verbose=0), reference, atol=1e-4)

    result = train(dict(options, epochs=1, steps_per_epoch=3))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["options"]["weights"] == str(checkpoint)
    # What the checkpoint decided is in the run's record, as the model carries it.
    assert config["model_config"]["mlp_activation"] == "gelu_tanh" and config["model_config"]["layer_norm_epsilon"] == 1e-6
    assert keras.saving.load_model(tmp_path / "run" / "model.keras").vit_config.mlp_activation == "gelu_tanh"
    assert result["metrics"]["model"] == "model.keras"


def test_a_diverged_epoch_is_never_the_chosen_model(monkeypatch):
    """A NaN validation loss beats nothing (NaN compares false with everything): the file
    and metrics.json keep naming the same, lowest finite epoch."""
    from keras_vit.training import train as train_module

    nan = float("nan")
    losses = [nan, 1.0, nan, 0.5, 0.7, nan]
    saved = []
    monkeypatch.setattr(train_module.run_folder, "save_model_atomic", lambda model, path: saved.append(epoch))
    callback = train_module.SaveChosenModel("model.keras")
    for epoch, loss in enumerate(losses):
        callback.on_epoch_end(epoch, {"val_loss": loss})
    assert saved == [0, 1, 3]  # the first epoch (nothing saved yet), then each new lowest
    assert train_module.lowest_epoch(losses) == 3 and train_module.lowest_epoch([nan, nan]) == 0
