"""The model library and weight loading on Keras' JAX backend: a tested promise.

Each test runs a script in a fresh process with `KERAS_BACKEND=jax` (the backend is chosen
once, when Keras is imported). What needs TensorFlow stays out: the tf.data training
pipeline and the exporters.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[1]
PARITY_CASES = {  # weights, input, input is NCHW (as tests/test_weights.py)
    "google_npz": ("google_vit/i32_p4_token/params.npz", "google_vit/i32_p4_token/input.npy", False),
    "timm_safetensors": ("timm_vit/i32_p4_token/model.safetensors", "timm_vit/i32_p4_token/input.npy", True),
    "hf_folder": ("hf_vit/i32_p4", "hf_vit/i32_p4/pixel_values.npy", True),
}


def run_on_jax(code, tmp_path):
    """Runs `code` under the JAX backend; returns the JSON it prints after RESULT."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout.split("RESULT", 1)[1])


def test_weights_load_with_parity_on_jax(tmp_path, fixtures_dir):
    code = f"""
        import json, keras, numpy as np, pathlib, sys
        import keras_vit
        fixtures = pathlib.Path({str(fixtures_dir)!r})
        differences = {{"backend": keras.backend.backend(), "tensorflow_imported": "tensorflow" in sys.modules}}
        for case, (weights, inputs, nchw) in {PARITY_CASES!r}.items():
            model = keras_vit.VisionTransformer(
                weights=str(fixtures / weights), image_size=32, patch_size=4, hidden_dim=64, num_layers=2, num_heads=4, mlp_dim=128
            )
            images = np.load(fixtures / inputs)
            images = images.transpose(0, 2, 3, 1) if nchw else images
            expected = np.load(fixtures / weights.split("/")[0] / weights.split("/")[1] / "logits.npy")
            differences[case] = float(np.abs(np.asarray(model.predict(images, verbose=0)) - expected).max())
        print("RESULT", json.dumps(differences))
    """
    result = run_on_jax(code, tmp_path)
    assert result.pop("backend") == "jax"
    result.pop("tensorflow_imported")  # Keras itself may import TensorFlow for tf.data support
    assert set(result) == set(PARITY_CASES)
    for case, difference in result.items():
        assert difference <= 1e-4, (case, difference)


def test_fit_and_safe_mode_reload_on_jax(tmp_path):
    code = f"""
        import json, keras, numpy as np
        import keras_vit
        keras.utils.set_random_seed(0)
        rng = np.random.default_rng(0)
        images = rng.uniform(-1, 1, (32, 16, 16, 3)).astype("float32")
        labels = np.arange(32) % 4
        model = keras_vit.VisionTransformer(
            image_size=16, patch_size=4, hidden_dim=32, num_layers=2, num_heads=2, mlp_dim=64, num_classes=4,
            pooling="token", drop_path_rate=0.1, labels=["a", "b", "c", "d"],
        )
        model.compile(keras.optimizers.AdamW(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        history = model.fit(images, labels, batch_size=16, epochs=40, verbose=0).history
        path = "{tmp_path}/model.keras"
        model.save(path)
        reloaded = keras.saving.load_model(path, safe_mode=True)
        print("RESULT", json.dumps({{
            "first_loss": history["loss"][0], "last_loss": history["loss"][-1], "accuracy": history["accuracy"][-1],
            "reload_difference": float(np.abs(np.asarray(reloaded.predict(images, verbose=0)) - np.asarray(model.predict(images, verbose=0))).max()),
            "same_config": reloaded.vit_config == model.vit_config, "type": type(reloaded).__name__,
        }}))
    """
    result = run_on_jax(code, tmp_path)
    assert result["last_loss"] < 0.5 * result["first_loss"] and result["accuracy"] >= 0.9, result
    assert result["reload_difference"] == 0.0 and result["same_config"] and result["type"] == "ViTModel"

