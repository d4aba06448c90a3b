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

from keras_vit.training import cli, data
from keras_vit.training.train import train

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--model-option", "hidden_dim=32", "--model-option", "num_layers=1", "--model-option", "num_heads=2",
        "--model-option", "mlp_dim=64", "--image-size", "8"]


def _tiny_options(out, **kw):
    return dict(
        out=str(out), epochs=2, steps_per_epoch=6, batch_size=32, image_size=8, jit_compile=False, verbose=0,
        model_options=dict(hidden_dim=32, num_layers=1, num_heads=2, mlp_dim=64), **kw,
    )


def test_run_folder_contents_reload_and_metrics(tmp_path):
    run = tmp_path / "run"
    result = train(_tiny_options(run, learning_rate=3e-3))
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "config.yaml", "dataset.json", "best.keras", "final.keras", "history.csv",
            "tensorboard", "curves.png", "metrics.json"} <= names
    assert "backup" not in names  # BackupAndRestore cleans up after a finished run
    metrics = json.loads((run / "metrics.json").read_text())
    facts = json.loads((run / "dataset.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert config["model_config"]["hidden_dim"] == 32 and config["options"]["epochs"] == 2
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1] and "val_accuracy" in rows[0]
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The saved model re-loads and reproduces metrics.json's test accuracy from load_images.
    model = keras.saving.load_model(run / "final.keras")
    images, labels = data.load_images(facts, "test")
    from keras_vit import preprocess_input

    logits = model.predict(preprocess_input(images, facts["mean"], facts["std"]), verbose=0)
    accuracy = float((logits.argmax(-1) == labels).mean())
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    assert metrics["test_accuracy"] > 0.2  # 12 steps on 10 classes: clearly above chance (0.1)
    keras.saving.load_model(run / "best.keras").predict(np.zeros((1, 8, 8, 3), "float32"), verbose=0)
    assert result["metrics"]["test_accuracy"] == metrics["test_accuracy"]


def test_cli_with_config_file_and_finished_run_protection(tmp_path, capsys):
    run = tmp_path / "run"
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        "epochs: 1\nsteps_per_epoch: 3\nbatch_size: 16\njit_compile: false\nverbose: 0\n"
        "image_size: 8\nmodel_options: {hidden_dim: 16, num_layers: 1, num_heads: 2, mlp_dim: 32}\n"
    )
    assert cli.main(["--config", str(config_file), "--out", str(run), "--learning-rate", "0.001"]) == 0
    options = json.loads((run / "config.json").read_text())["options"]
    assert options["batch_size"] == 16 and options["learning_rate"] == 0.001
    assert options["model_options"]["patch_size"] == 4  # the small default, refined by the file
    # The resolved config.yaml trains the same run again.
    stamp = (run / "final.keras").stat().st_mtime_ns
    assert cli.main(["--config", str(config_file), "--out", str(run)]) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert (run / "final.keras").stat().st_mtime_ns == stamp  # nothing overwritten
    assert cli.main(["--config", str(config_file), "--out", str(run), "--overwrite"]) == 0
    assert (run / "final.keras").stat().st_mtime_ns != stamp


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "cifar11"], "Unknown dataset 'cifar11'"),
        (["--batch-size", "5000"], "batch_size 5000 is larger than the 1437 training examples"),
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
    epochs_run = [int(m) for m in re.findall(r"^Epoch (\d+)/%d" % epochs, second.stdout, re.M)]
    assert epochs_run == list(range(saved_epoch + 1, epochs + 1))  # continues from the saved epoch
    with open(run / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(epochs))  # each epoch once
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resumed"] and metrics["epochs_run"] == epochs
    # The optimizer state was restored too: the step count (which drives the LR schedule) is
    # that of one uninterrupted run.
    model = keras.saving.load_model(run / "final.keras")
    assert int(model.optimizer.iterations.numpy()) == epochs * 30


@pytest.mark.slow
def test_quickstart_reaches_98_percent_on_digits(tmp_path):
    from keras_vit import quickstart

    assert quickstart.main(["--out", str(tmp_path / "quickstart"), "--skip-export"]) == 0
    metrics = json.loads((tmp_path / "quickstart" / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.98, metrics


def test_fine_tuning_starts_from_the_checkpoint(tmp_path, fixtures_dir):
    """--weights builds the model from a checkpoint: the reference ViT's own logits before
    training, and a short fine-tuning run on the digits from there."""
    from keras_vit.training.config import TrainConfig
    from keras_vit.training.train import build_model

    checkpoint = fixtures_dir / "google_vit" / "i32_p4_token" / "params.npz"
    architecture = dict(patch_size=4, hidden_dim=64, num_layers=2, num_heads=4, mlp_dim=128, pooling="token")
    options = dict(_tiny_options(tmp_path / "run"), image_size=32, model_options=architecture, weights=str(checkpoint))
    model = build_model(TrainConfig(**options), num_classes=10)
    reference = np.load(checkpoint.parent / "logits.npy")
    np.testing.assert_allclose(model.predict(np.load(checkpoint.parent / "input.npy"), verbose=0), reference, atol=1e-4)

    result = train(dict(options, epochs=1, steps_per_epoch=3))
    assert 0.0 <= result["metrics"]["test_accuracy"] <= 1.0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["options"]["weights"] == str(checkpoint)
