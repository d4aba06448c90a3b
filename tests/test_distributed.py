"""The same training under MirroredStrategy (2 logical CPUs) and MultiWorkerMirroredStrategy
(2 worker processes on 127.0.0.1). Each runs in fresh processes: logical devices and
TF_CONFIG must be set before TensorFlow initialises."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# No augmentation and no dropout: the only randomness is the initialisation and shuffling,
# both seeded, so one device and two replicas see the same batches. SGD, not Adam: Adam's
# first steps are sign(gradient) * lr, so float rounding in the cross-replica sum flips the
# sign of near-zero gradients and the runs drift apart (checked: identical initial weights
# and first loss, then ~1% apart); SGD's update is linear in the gradient.
OPTIONS = dict(
    epochs=2, steps_per_epoch=8, batch_size=32, image_size=8, jit_compile=False, verbose=0,
    random_crop=False, flip=False, label_smoothing=0.0, optimizer="sgd", learning_rate=0.02, warmup_epochs=0,
    model_options=dict(hidden_dim=32, num_layers=1, num_heads=2, mlp_dim=64),
)


def _run_python(code, env=None, timeout=300):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _finish(process, timeout=300):
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        pytest.fail("distributed training timed out:\n" + out[-5000:])
    assert process.returncode == 0, out[-5000:]
    return out


def test_mirrored_two_devices_matches_one_device(tmp_path):
    code = f"""
        import json, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from keras_vit.training.train import train
        losses = {{}}
        for strategy in ("default", "mirrored"):
            result = train(dict({OPTIONS!r}, strategy=strategy, out="{tmp_path}/" + strategy))
            losses[strategy] = result["history"]["loss"] + result["history"]["val_loss"]
            losses[strategy + "_replicas"] = result["metrics"]["replicas"]
        print("RESULT", json.dumps(losses))
    """
    out = _finish(_run_python(code))
    result = json.loads(out.split("RESULT", 1)[1])
    assert (result["default_replicas"], result["mirrored_replicas"]) == (1, 2)
    # Measured: the first epoch agrees within 0.2%, later values within ~2% (float summation
    # order over 2 replicas, amplified by training; runs on one device in two processes
    # also differ by ~1%). Without compat fix 3 (clip after the cross-replica sum) the gap
    # was ~6%.
    np.testing.assert_allclose(result["mirrored"][0], result["default"][0], rtol=1e-2)
    np.testing.assert_allclose(result["mirrored"], result["default"], rtol=4e-2)
    assert (tmp_path / "mirrored" / "metrics.json").is_file()


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_two_processes(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    code = f"""
        import os, numpy as np
        from keras_vit.training.train import train
        result = train(dict({OPTIONS!r}, strategy="multi_worker", out="{tmp_path}/run"))
        weights = [np.asarray(v) for v in result["model"].weights]
        np.savez("{tmp_path}/worker_" + os.environ["WORKER"] + ".npz", *weights)
        print("REPLICAS", result["metrics"].get("replicas"))
    """
    workers = [
        _run_python(code, env={"WORKER": str(i), "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
        for i in range(2)
    ]
    outputs = [_finish(w) for w in workers]
    chief_weights = np.load(tmp_path / "worker_0.npz")
    other_weights = np.load(tmp_path / "worker_1.npz")
    assert len(chief_weights.files) > 10
    for key in chief_weights.files:
        np.testing.assert_array_equal(chief_weights[key], other_weights[key])
    # Both workers trained (the weights moved away from the zero-initialised head).
    assert any(np.abs(chief_weights[k]).sum() > 0 for k in chief_weights.files)
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["replicas"] == 2 and metrics["strategy"] == "multi_worker"
    assert {"model.keras", "history.csv", "dataset.json"} <= {p.name for p in run.iterdir()}
    assert "non-chief worker: writes no files" in outputs[1]
    # Only the chief wrote: no stray worker files in the run folder or next to it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "worker_0.npz", "worker_1.npz"]
