"""The benchmark entry points run end to end in --quick mode (no timing assertions), the
step profile groups TensorFlow's op types as its table says, and the optional timm peer
stays out cleanly where torch is missing."""

import importlib.util
import pathlib
import re
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
    assert "- keras-hub: " in text and "- onnxruntime: " in text and "- ai-edge-litert: " in text
    for path in ("keras_vit predict_on_batch", "keras_vit tf.function+XLA", "keras-hub predict_on_batch",
                 "keras-hub tf.function+XLA", "keras_vit ONNX Runtime", "keras_vit ONNX Runtime (fused)",
                 "keras_vit LiteRT (XNNPACK)"):
        assert f"| {path} |" in text, path
    assert "### ONNX: the fused graph against the plain one" in text and "| ViT-Ti/16 | 1 |" in text
    assert "| keras_vit | float32 | False |" in text and "| keras-hub | float32 | False |" in text
    assert "| keras_vit default | float32 | False |" in text  # what `keras-vit train` runs unless told
    assert "| keras_vit default, no compiled kernels | float32 | False |" in text
    # The float32 rows' share of the matmul limit, timed in the same rounds: "NN% | NN%-NN% |".
    default_row = next(line for line in text.splitlines() if line.startswith("| keras_vit default | float32 |"))
    assert re.search(r"\| \d+% \| \d+%-\d+% \|$", default_row), default_row
    assert "among the float32 training rows: " in text
    assert "### Quantized inference: the int8 artifacts against float32 LiteRT" in text
    for artifact in ("LiteRT (XNNPACK)", "LiteRT dynamic", "LiteRT int8", "LiteRT full_int8", "ONNX Runtime int8"):
        assert f"| ViT-Ti/16 | 1 | {artifact} |" in text, artifact
    assert "### Training step op by op" in text
    for group in ("| MatMul (2-D) |", "| optimizer update (AdamW) |", "| all ops |"):
        assert group in text, group


def test_profile_groups_count_onednn_kernels_as_their_op_and_the_optimizer_by_scope():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import profile_step

    assert profile_step._group("gradient_tape/vit/block_0/qkv/MatMul_1", "_MklMatMul") == "MatMul (2-D)"
    assert profile_step._group("vit/block_0/qkv/MatMul", "_MklNativeFusedMatMul") == "MatMul (2-D)"
    assert profile_step._group("vit/block_0/attention/einsum/Einsum", "_MklBatchMatMulV2") == "BatchMatMul"
    assert profile_step._group("vit/patches/Conv2D", "_MklNativeFusedConv2D") == "Conv2D (patches)"
    assert profile_step._group(f"{profile_step.OPTIMIZER_NAME}/Mul_3", "Mul") == profile_step.OPTIMIZER
    assert profile_step._group(f"{profile_step.OPTIMIZER_NAME}/MatMul", "MatMul") == profile_step.OPTIMIZER
    assert profile_step._group("vit/block_0/mlp_norm/Mean", "Mean") == profile_step.OTHER
    assert profile_step._group("vit/block_0/mlp_norm/KerasVitLayerNorm", "KerasVitLayerNorm") == profile_step.NATIVE
    assert profile_step._group("KerasVitBiasGeluGrad_3", "KerasVitBiasGeluGrad") == profile_step.NATIVE


def test_timm_peer_without_torch_is_left_out_with_the_reason_and_a_dead_child_raises():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import timm_peer

    if importlib.util.find_spec("torch") and importlib.util.find_spec("timm"):
        pytest.skip("torch and timm are installed here")
    peer, why_not = timm_peer.start(sys.executable)
    assert peer is None and ("torch" in why_not or "timm" in why_not), why_not
    with pytest.raises(RuntimeError, match="the timm process exited"):
        timm_peer.TimmPeer(sys.executable)


def test_forward_flops_match_the_published_count_and_keras_vit_skips_the_last_blocks_other_tokens():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import peers

    full = peers.forward_flops("B", 224, 16)
    assert abs(full / 1e9 - 35.1) < 0.05  # ViT-B/16's published 35.1 GFLOPs per image (multiply-adds x 2)
    tokens, d, m = 197, 768, 3072
    per_skipped_token = 2 * (d * d + 2 * tokens * d + d * d + 2 * d * m)  # q, attention, output, MLP
    assert full - peers.forward_flops("B", 224, 16, peer="keras_vit") == (tokens - 1) * per_skipped_token


@pytest.mark.slow
def test_regression_check_compares_two_checkouts_of_the_same_models(tmp_path):
    """HEAD against the working tree: both children build the plain ViT from their own copy
    (the check refuses a child that imported keras_vit from elsewhere) and the row is written."""
    doc = tmp_path / "benchmarks.md"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "regression.py"), "--base", "HEAD", "--quick", "--doc", str(doc)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = doc.read_text()
    assert "<!-- BEGIN regression -->" in text and "| ViT-Ti/16 b1 tf.function |" in text


def test_regression_check_names_an_unknown_base_commit():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "regression.py"), "--base", "no-such-commit", "--quick",
         "--doc", "/dev/null"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0 and "Unknown commit 'no-such-commit'" in result.stderr
