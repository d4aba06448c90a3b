"""The benchmark entry point runs end to end in --quick mode (no timing assertions)."""

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_benchmark_quick_mode_writes_its_tables(tmp_path):
    doc = tmp_path / "benchmarks.md"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--doc", str(doc)],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = doc.read_text()
    assert "<!-- BEGIN performance -->" in text and "fp32 matmul" in text
    for path in ("keras_vit predict_on_batch", "keras_vit tf.function+XLA", "keras-hub predict_on_batch",
                 "keras-hub tf.function+XLA", "keras_vit ONNX Runtime", "keras_vit ONNX Runtime (fused)",
                 "keras_vit LiteRT (XNNPACK)"):
        assert f"| {path} |" in text, path
    assert "| keras_vit | float32 | False |" in text and "| keras-hub | float32 | False |" in text
