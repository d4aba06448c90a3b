"""keras_vit.export: every format exported, verified and reported; bad input refused clearly.

Fast tests export a tiny untrained ViT (random head, so the logits differ per image) from a
bare `.keras` file, verified on seeded synthetic images. The slow tests train a tiny ViT on
the digits, write a run folder by hand, and run the default command (every format and
quantization) to check the int8 numbers on the real test split.
"""

import json
import logging
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY, perturb, tiny_vit

import keras_vit
from keras_vit import datasets
from keras_vit.export import bench_runners, cli, formats, onnx_export, pipeline, saved_model, source, tflite, verify

IMAGE_SIZE = TINY["image_size"]
VENV_BIN = pathlib.Path(sys.executable).parent


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.keras"
    tiny_vit(num_layers=2).save(path)  # the first block has the full attention, the last the class token's
    return path


@pytest.fixture(scope="session")
def tiny_export(tiny_model_file, tmp_path_factory):
    """Every format from a bare .keras file; the float quantizations (int8 variants are
    checked on a trained model and real images below: on an untrained model and synthetic
    images, top-1 is decided by near ties)."""
    out = tmp_path_factory.mktemp("tiny_export") / "export"
    report = pipeline.export(tiny_model_file, out, quantizations="none,float16", latency_repeats=2)
    return out, report


def rows_by_name(report):
    return {row["artifact"]: row for row in report["artifacts"]}


# ----------------------------------------------------------------------------- every format


def test_bare_keras_file_exports_every_format_within_tolerance(tiny_export):
    out, report = tiny_export
    rows = rows_by_name(report)
    assert report["passed"], [row["failures"] for row in report["artifacts"]]
    assert set(rows) == {"keras", "saved_model", "tflite_float32", "tflite_float16", "onnx", "onnx_optimized"}
    for name in ("saved_model", "tflite_float32", "onnx", "onnx_optimized"):
        assert rows[name]["max_abs_diff"] <= 1e-4, name
    assert rows["tflite_float16"]["max_abs_diff"] <= 1e-2
    for row in report["artifacts"]:
        assert row["latency_ms_batch1"] > 0 and row["latency_ms_batch8"] > 0
        assert row["size_bytes"] > 0
        if row["artifact"] != "keras":
            assert row["checked_batch_sizes"] == [1, 8]
            assert (out / row["path"]).exists()
    assert report["verification_data"]["description"].startswith("seeded synthetic images")
    assert rows["keras"]["accuracy"] is None  # no labels for a bare .keras file


def test_report_json_and_markdown_are_written(tiny_export):
    out, report = tiny_export
    assert json.loads((out / "export_report.json").read_text()) == json.loads(json.dumps(report))
    table = (out / "export_report.md").read_text()
    for header in ("artifact", "size", "max abs diff", "top-1 agreement", "accuracy", "latency b1 (ms)", "latency b8 (ms)"):
        assert header in table
    assert "| tflite_float16 | float16 |" in table and "GELU" in table
    assert not list(out.parent.glob(".export.*")), "staging folders left behind"


def test_tflite_models_use_builtin_ops_only_and_resize_batch(tiny_export, tiny_model_file):
    out, report = tiny_export
    model = keras.models.load_model(tiny_model_file)
    images = source.synthetic_images((IMAGE_SIZE, IMAGE_SIZE), count=8)
    x = keras_vit.preprocess_input(images).numpy()
    expected = model(x, training=False).numpy()
    for quantization in ("none", "float16"):
        path = out / formats.TFLITE_FILE_NAMES[quantization]
        content = path.read_bytes()
        assert tflite.non_builtin_ops(content) == []
        run = tflite.load_runner(path)
        for batch in (1, 8, 3):
            logits = run(x[:batch])
            assert logits.shape == (batch, 10)
            if quantization == "none":
                np.testing.assert_allclose(logits, expected[:batch], atol=1e-4)


def test_non_builtin_ops_finds_flex_ops():
    """The check above can fail: a graph that needs TensorFlow's own kernels (Flex) is caught."""

    @tf.function(input_signature=[tf.TensorSpec([4], tf.string)], autograph=False)
    def string_length(text):
        return tf.strings.length(text)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([string_length.get_concrete_function()])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    assert tflite.non_builtin_ops(converter.convert()) == ["CUSTOM:FlexStringLength"]


@pytest.mark.parametrize("pooling", ["token", "gap"])
def test_float_tflite_runs_in_one_xnnpack_partition(pooling):
    """No op of the float graph falls back to TFLite's own kernels (e.g. UNPACK, a slice
    that drops an axis, or shape arithmetic on the dynamic batch): XNNPACK takes it whole,
    at every batch size. Two blocks, so both the full attention and the class token's are in."""
    model = trained_like_vit(pooling=pooling)
    content = tflite.convert(model, "none")
    assert tflite.xnnpack_partitions(content) == 1
    assert tflite.xnnpack_partitions(tflite.convert(model, "float16")) == 1
    x = keras_vit.preprocess_input(source.synthetic_images((IMAGE_SIZE, IMAGE_SIZE), count=8)).numpy()
    run = tflite.load_runner(content)
    np.testing.assert_allclose(run(x), model(x, training=False).numpy(), atol=1e-4)


def test_export_report_gives_xnnpack_partitions(tiny_export):
    out, report = tiny_export
    rows = rows_by_name(report)
    assert rows["tflite_float32"]["details"]["xnnpack_partitions"] == 1
    assert "(XNNPACK: 1 partition)" in (out / "export_report.md").read_text()


def test_saved_model_signatures_reload(tiny_export, tiny_model_file):
    out, _ = tiny_export
    model = keras.models.load_model(tiny_model_file)
    loaded = tf.saved_model.load(str(out / "saved_model"))
    assert set(loaded.signatures) == {"serving_default", "serving_bytes"}
    images = source.synthetic_images((IMAGE_SIZE, IMAGE_SIZE), count=5)
    x = keras_vit.preprocess_input(images).numpy()
    outputs = loaded.signatures["serving_default"](images=tf.constant(x))
    expected = model(x, training=False).numpy()
    np.testing.assert_allclose(outputs["logits"].numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(outputs["probabilities"].numpy().sum(-1), 1.0, atol=1e-5)

    # Encoded bytes of another size: decoded and resized in the graph, top-k returned.
    big = tf.image.resize(images, (40, 40)).numpy().round().astype(np.uint8)
    encoded = [tf.io.encode_jpeg(big[0]).numpy()] + saved_model.encode_png(big[1:])
    top = saved_model.run_bytes_signature(loaded, encoded)
    assert top["class_ids"].shape == (5, 5) and top["scores"].shape == (5, 5)
    assert np.all(np.diff(top["scores"], axis=-1) <= 0)
    assert [n.decode() for n in top["class_names"][0]] == [f"class_{i}" for i in top["class_ids"][0]]

    # Same-size PNGs: exactly what the float signature computes.
    top = saved_model.run_bytes_signature(loaded, saved_model.encode_png(images))
    assert verify.verify_top_k(top["class_ids"], top["scores"], expected)["failures"] == []


def test_int8_rule_fails_an_accuracy_drop_and_disagreement_not_a_gain():
    """The int8 rule: >= 98% top-1 agreement, and accuracy at most 1 point below Keras'."""
    n, classes = 500, 10
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(n, classes)).astype("float32")
    predicted = reference.argmax(-1)
    labels = predicted.copy()
    labels[:50] = (predicted[:50] + 1) % classes  # Keras is right on 90%
    images = np.arange(n, dtype="float32").reshape(n, 1, 1, 1)  # an image's value is its row

    def runner_flipping(rows, to):
        logits = reference.copy()
        for row, cls in zip(rows, to):
            logits[row, cls] = logits[row].max() + 1.0
        return lambda x: logits[x[:, 0, 0, 0].astype(int)]

    def check(run):
        return verify.verify(run, images, reference, labels=labels, precision="int8")

    gain = check(runner_flipping(range(6), labels[:6]))  # 6 of Keras' errors become right: +1.2 points
    assert gain["passed"] and gain["accuracy"] == pytest.approx(0.912) and gain["top1_agreement"] == pytest.approx(0.988)
    drop = check(runner_flipping(range(50, 56), (labels[50:56] + 1) % classes))  # 6 right become wrong: -1.2 points
    assert not drop["passed"] and drop["failures"] == ["accuracy 88.80% is more than 1% below Keras' 90.00%"]
    small_drop = check(runner_flipping(range(50, 55), (labels[50:55] + 1) % classes))  # -1.0 point: allowed
    assert small_drop["passed"]
    disagreeing = check(runner_flipping(range(100, 111), (predicted[100:111] + 1) % classes))  # 97.8% agreement
    assert not disagreeing["passed"] and "top-1 agreement 97.80% < 98%" in disagreeing["failures"]


def test_saved_model_cli_runs_the_float_signature(tiny_export, tiny_model_file, tmp_path):
    out, _ = tiny_export
    x = keras_vit.preprocess_input(source.synthetic_images((IMAGE_SIZE, IMAGE_SIZE), count=3)).numpy()
    np.save(tmp_path / "images.npy", x)
    result = subprocess.run(
        [
            str(VENV_BIN / "saved_model_cli"), "run",
            "--dir", str(out / "saved_model"),
            "--tag_set", "serve",
            "--signature_def", "serving_default",
            "--inputs", f"images={tmp_path / 'images.npy'}",
            "--outdir", str(tmp_path / "cli_out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    expected = keras.models.load_model(tiny_model_file)(x, training=False).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "cli_out" / "logits.npy"), expected, atol=1e-4)


def test_onnx_has_opset_17_dynamic_batch_and_passes_checker(tiny_export):
    import onnx

    out, _ = tiny_export
    proto = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    details = onnx_export.describe(out / "model.onnx")
    assert details["opset"] >= 17
    assert details["input_shape"] == ["batch", IMAGE_SIZE, IMAGE_SIZE, 3]
    run = onnx_export.load_runner(out / "model.onnx")
    x = keras_vit.preprocess_input(source.synthetic_images((IMAGE_SIZE, IMAGE_SIZE), count=8)).numpy()
    assert run(x[:1]).shape == (1, 10) and run(x).shape == (8, 10)


@pytest.mark.parametrize("gelu", ["exact_erf", "approximate", "tf_nn_gelu_exact"])
def test_every_gelu_exports_to_onnx_and_tflite(gelu, monkeypatch):
    """Exact GELU via erf (keras_vit's own), tanh GELU, and tf.nn.gelu, whose graph holds the
    TF op Erfc that tf2onnx cannot convert by itself."""
    if gelu == "tf_nn_gelu_exact":
        monkeypatch.setattr(keras_vit.layers, "mlp_activation", lambda x, name="gelu", training=False: keras.ops.gelu(x, approximate=False))
    model = tiny_vit(num_layers=1, gelu_approximate=(gelu == "approximate"))
    graph_ops = {node.op for node in tflite.frozen_function(model).graph.as_graph_def().node}
    assert ("Erfc" in graph_ops) == (gelu == "tf_nn_gelu_exact")

    x = keras_vit.preprocess_input(source.synthetic_images((IMAGE_SIZE, IMAGE_SIZE), count=8)).numpy()
    expected = model(x, training=False).numpy()
    proto = onnx_export.convert(model)
    import onnxruntime

    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x})[0], expected, atol=1e-4)

    content = tflite.convert(model, "none")
    assert tflite.non_builtin_ops(content) == []
    interpreter_run = tflite.load_runner(content)
    np.testing.assert_allclose(interpreter_run(x), expected, atol=1e-4)


def trained_like_vit(**overrides):
    return perturb(tiny_vit(**overrides))


def op_counts(proto):
    counts = {}
    for node in proto.graph.node:
        key = f"{node.domain}:{node.op_type}" if node.domain else node.op_type
        counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.parametrize("gelu", ["exact_erf", "approximate"])
@pytest.mark.parametrize("weights", ["trained_like", "fresh"])  # fresh: zero biases, folded away by tf2onnx
@pytest.mark.parametrize("pooling", ["gap", "token"])
def test_optimized_onnx_fuses_attention_layer_norm_and_gelu(gelu, weights, pooling):
    """Two blocks: 5 LayerNormalization (2 per block + the final one), 2 GELUs, and an
    Attention per full block. With "gap" pooling both blocks are full and none of the unfused
    patterns' ops is left; with "token" the last block attends from the class token alone
    (no Attention pattern: its one Softmax stays). The fused graph still matches Keras."""
    approximate = gelu == "approximate"
    overrides = dict(gelu_approximate=approximate, pooling=pooling)
    model = trained_like_vit(**overrides) if weights == "trained_like" else tiny_vit(**overrides)
    proto = onnx_export.convert(model)
    fused, fused_ops = onnx_export.optimize(proto)
    attention = 2 if pooling == "gap" else 1
    expected_gelu = {"Gelu": 0, "FastGelu": 2, "QuickGelu": 0} if approximate else {"Gelu": 2, "FastGelu": 0, "QuickGelu": 0}
    assert fused_ops == {"Attention": attention, "LayerNormalization": 5, **expected_gelu}

    before, after = op_counts(proto), op_counts(fused)
    assert after["com.microsoft:Attention"] == attention and after["LayerNormalization"] == 5
    gelu_op = "com.microsoft:FastGelu" if approximate else "com.microsoft:Gelu"
    assert after[gelu_op] == 2
    assert before["GlobalAveragePool"] == 10 and before["Softmax"] == 2
    assert after.get("Softmax", 0) == 2 - attention
    unfused_ops = ("GlobalAveragePool", "Sqrt", "Reciprocal", "Neg", "Sub", "Erf", "Tanh", "Pow")
    if pooling == "gap":
        unfused_ops += ("Softmax", "Split", "Mul")
    for unfused in unfused_ops:
        assert unfused not in after, unfused
    assert fused.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    x = keras_vit.preprocess_input(source.synthetic_images((IMAGE_SIZE, IMAGE_SIZE), count=8)).numpy()
    expected = model(x, training=False).numpy()
    import onnxruntime

    session = onnxruntime.InferenceSession(fused.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 8):
        logits = session.run(None, {"images": x[:batch]})[0]
        np.testing.assert_allclose(logits, expected[:batch], atol=1e-4)


def _ops_reading_int8_and_float_tensors(tflite_bytes):
    """(the ops with an int8 input, the graph's float32 tensors) of a `.tflite` flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(tflite_bytes, 0)
    graph = model.Subgraphs(0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    int8_readers = set()
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        inputs = [graph.Tensors(t) for t in op.InputsAsNumpy() if t >= 0]
        if any(tensor.Type() == schema.TensorType.INT8 for tensor in inputs):
            int8_readers.add(names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())])
    floats = {graph.Tensors(t).Name().decode() for t in range(graph.TensorsLength()) if graph.Tensors(t).Type() == schema.TensorType.FLOAT32}
    return int8_readers, floats


def test_tflite_int8_quantizes_the_matmuls_and_full_int8_every_op_close_to_keras():
    """The two calibrated LiteRT variants on a two-block model: `int8` runs int8 only in
    the matmuls and the patch convolution, in one XNNPACK partition; `full_int8` has no
    float32 tensor but the graph's input and output. Both stay close to Keras (measured on
    these images: logit correlation 0.999 and 0.997, top-1 agreement 94% and 97%)."""
    model = trained_like_vit(num_layers=2)
    calibration = keras_vit.preprocess_input(source.synthetic_images((IMAGE_SIZE, IMAGE_SIZE), count=64)).numpy()
    images = keras_vit.preprocess_input(source.synthetic_images((IMAGE_SIZE, IMAGE_SIZE), count=64, seed=7)).numpy()
    expected = model(images, training=False).numpy()
    float_model = tflite.convert(model, "none")
    assert len(_ops_reading_int8_and_float_tensors(float_model)[1]) > 20  # every activation float32

    static = tflite.convert(model, "int8", calibration, float_model=float_model)
    int8_readers, floats = _ops_reading_int8_and_float_tensors(static)
    assert int8_readers == {"FULLY_CONNECTED", "CONV_2D", "DEQUANTIZE"} and len(floats) > 20
    assert tflite.xnnpack_partitions(static) == 1

    full = tflite.convert(model, "full_int8", calibration)
    int8_readers, floats = _ops_reading_int8_and_float_tensors(full)
    assert {"FULLY_CONNECTED", "BATCH_MATMUL", "SOFTMAX", "GELU", "ADD", "DEQUANTIZE"} <= int8_readers
    assert len(floats) == 2  # the images in, the logits out

    for content in (static, full):
        logits = tflite.load_runner(content)(images)
        assert np.corrcoef(logits.ravel(), expected.ravel())[0, 1] >= 0.98
        assert (logits.argmax(-1) == expected.argmax(-1)).mean() >= 0.85
        assert np.abs(logits - expected).max() > 1e-3  # quantized, not the float graph again


def test_onnx_quantize_runs_the_matmuls_in_int8_close_to_float(tmp_path, caplog):
    """`onnx_export.quantize` on the fused graph of a two-block model: int8 weights and
    matmuls (the full block's attention as QAttention), LayerNorm / GELU / softmax in float;
    logits close to Keras' (measured: 4% of the logit scale, 97% top-1 on these images)."""
    import onnx

    model = trained_like_vit()
    fused, _ = onnx_export.optimize(onnx_export.convert(model))
    root_filters = list(logging.getLogger().filters)
    quantized = onnx_export.quantize(fused)
    # onnxruntime's advice to pre-process, logged for every model, is not shown (nor kept off later).
    assert not [r for r in caplog.records if "pre-processing" in r.getMessage()]
    assert logging.getLogger().filters == root_filters
    ops = op_counts(quantized)
    assert ops["MatMulInteger"] >= 4 and ops["com.microsoft:QAttention"] == 1 and ops["DynamicQuantizeLinear"] >= 4
    assert ops["LayerNormalization"] == 5 and ops["com.microsoft:Gelu"] == 2
    assert quantized.ByteSize() < 0.8 * fused.ByteSize()
    onnx.save(quantized, str(tmp_path / "int8.onnx"))
    images = np.random.default_rng(0).uniform(-1, 1, (64, *model.input_shape[1:])).astype("float32")
    expected = model(images, training=False).numpy()
    logits = onnx_export.load_runner(tmp_path / "int8.onnx")(images)
    assert np.abs(logits - expected).max() <= 0.1 * np.abs(expected).max()
    assert (logits.argmax(-1) == expected.argmax(-1)).mean() >= 0.9
    assert np.abs(logits - expected).max() > 1e-4  # quantized, not the float graph again


def test_onnx_conversion_runs_tf2onnx_optimizers_in_place_and_restores_the_environment(monkeypatch):
    """tf2onnx's optimizers run without their per-optimizer deep copies (the memory of
    converting ViT-B/16 fell from 19 to 13 GB), and the switch is only set during `convert`."""
    import os

    import tf2onnx.optimizer

    seen = []
    real_optimize_graph = tf2onnx.optimizer.optimize_graph

    def optimize_graph(graph, catch_errors=True, optimizers=None):
        seen.append((catch_errors, os.environ.get("TF2ONNX_CATCH_ERRORS")))
        return real_optimize_graph(graph, catch_errors, optimizers)

    monkeypatch.setattr(tf2onnx.optimizer, "optimize_graph", optimize_graph)
    monkeypatch.delenv("TF2ONNX_CATCH_ERRORS", raising=False)
    onnx_export.convert(tiny_vit())
    assert seen == [(False, "FALSE")]
    assert "TF2ONNX_CATCH_ERRORS" not in os.environ
    monkeypatch.setenv("TF2ONNX_CATCH_ERRORS", "user value")
    onnx_export.convert(tiny_vit())
    assert os.environ["TF2ONNX_CATCH_ERRORS"] == "user value"


def test_pipeline_reports_the_optimized_onnx_and_its_fusions(tiny_export):
    out, report = tiny_export
    row = rows_by_name(report)["onnx_optimized"]
    assert row["passed"] and row["path"] == formats.ONNX_OPTIMIZED_FILE_NAME and (out / row["path"]).exists()
    assert row["max_abs_diff"] <= 1e-4 and row["checked_batch_sizes"] == [1, 8]
    assert {"com.microsoft:Attention", "com.microsoft:Gelu", "LayerNormalization"} <= set(row["ops"])
    assert "GlobalAveragePool" not in row["ops"]
    assert row["details"]["fused_ops"] == {"Attention": 1, "LayerNormalization": 5, "Gelu": 2, "FastGelu": 0, "QuickGelu": 0}
    assert row["details"]["not_fused"] == {"Softmax": 1}  # the class token's one-query attention
    assert row["details"]["input_shape"] == ["batch", IMAGE_SIZE, IMAGE_SIZE, 3]
    table = (out / "export_report.md").read_text()
    assert "| onnx_optimized | none |" in table
    assert "- onnx_optimized: " in table and "(fused: 1 Attention, 5 LayerNormalization, 2 Gelu; not fused: 1 Softmax)" in table


def test_onnx_runner_stops_its_threads_spinning_after_each_run(tmp_path, monkeypatch):
    """Idle onnxruntime workers must not spin on the cores the next session (or TensorFlow,
    or LiteRT) runs on; the runner still gives Keras' logits."""
    import onnx
    import onnxruntime

    model = tiny_vit()
    path = tmp_path / "model.onnx"
    onnx.save(onnx_export.convert(model), str(path))
    seen = []
    real_session = onnxruntime.InferenceSession

    def session(path, options, **kwargs):
        seen.append(options.get_session_config_entry("session.force_spinning_stop"))
        return real_session(path, options, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    x = keras_vit.preprocess_input(source.synthetic_images((IMAGE_SIZE, IMAGE_SIZE), count=2)).numpy()
    np.testing.assert_allclose(onnx_export.load_runner(path, num_threads=2)(x), model(x, training=False).numpy(), atol=1e-4)
    assert seen == ["1"]


def test_bench_runners_match_keras(tmp_path):
    model = trained_like_vit(num_layers=1, image_size=32)
    x = keras_vit.preprocess_input(source.synthetic_images((32, 32), count=3)).numpy()
    expected = model(x, training=False).numpy()
    runners = bench_runners(model, x, tmp_path / "bench")
    assert set(runners) == {"keras_vit ONNX Runtime", "keras_vit ONNX Runtime (fused)", "keras_vit LiteRT (XNNPACK)"}
    for name, run in runners.items():
        np.testing.assert_allclose(run(), expected, atol=1e-4, err_msg=name)
    assert sorted(p.name for p in (tmp_path / "bench").iterdir()) == ["model.onnx", "model_float32.tflite", "model_optimized.onnx"]
    with pytest.raises(ValueError, match="images must be float32"):
        bench_runners(model, x[..., :2], tmp_path / "bench")


# ----------------------------------------------------------------------------- atomicity


def test_failed_check_exits_nonzero_and_leaves_no_artifact(tiny_model_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(verify.TOLERANCES, "float16", {"max_abs_diff_relative": 1e-12})
    out = tmp_path / "out"
    code = cli.main([str(tiny_model_file), "--formats", "tflite", "--quantize", "none,float16", "--out", str(out), "--latency-repeats", "1"])
    assert code == 1
    assert "failed verification" in capsys.readouterr().err
    assert (out / formats.TFLITE_FILE_NAMES["none"]).exists()
    assert not (out / formats.TFLITE_FILE_NAMES["float16"]).exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]
    assert not [p for p in tmp_path.iterdir() if p.name != "out"]
    report = json.loads((out / "export_report.json").read_text())
    failed = rows_by_name(report)["tflite_float16"]
    assert not report["passed"] and not failed["passed"] and failed["path"] is None
    assert "max abs logit diff" in failed["failures"][0]


def test_reexport_replaces_an_earlier_export(tiny_model_file, tmp_path):
    out = tmp_path / "out"
    pipeline.export(tiny_model_file, out, formats="tflite", quantizations="none,float16", latency_repeats=1)
    assert (out / formats.TFLITE_FILE_NAMES["float16"]).exists()
    pipeline.export(tiny_model_file, out, formats="onnx", quantizations="none", latency_repeats=1)
    assert sorted(p.name for p in out.iterdir()) == ["export_report.json", "export_report.md", "model.onnx", "model_optimized.onnx"]


# ----------------------------------------------------------------------------- bad input


def run_cli(args, capsys):
    code = cli.main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    code, err = run_cli([tmp_path / "nope.keras"], capsys)
    assert code == 2 and "does not exist" in err and "Traceback" not in err


def test_folder_that_is_not_a_run_folder_is_a_clear_error(tmp_path, capsys):
    code, err = run_cli([tmp_path], capsys)
    assert code == 2 and "not a training run folder" in err
    (tmp_path / "dataset.json").write_text("{}")
    code, err = run_cli([tmp_path], capsys)
    assert code == 2 and "is a folder without model.keras: an unfinished run" in err


def test_non_keras_vit_model_is_refused(tmp_path, capsys):
    path = tmp_path / "mlp.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(path)
    code, err = run_cli([path, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "is not a keras_vit model" in err
    features = tmp_path / "features.keras"
    tiny_vit(include_top=False).save(features)
    code, err = run_cli([features, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "include_top=False" in err
    probabilities = tmp_path / "probabilities.keras"
    tiny_vit(classifier_activation="softmax").save(probabilities)
    code, err = run_cli([probabilities, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "classifier_activation='softmax'" in err


def test_file_that_is_not_a_keras_archive_is_refused(tmp_path, capsys):
    path = tmp_path / "broken.keras"
    path.write_text("not a zip")
    code, err = run_cli([path], capsys)
    assert code == 2 and "could not be loaded as a Keras model" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "option, message",
    [(["--formats", "saved_model,tfjs"], "Unknown format 'tfjs'"), (["--quantize", "int4"], "Unknown quantization 'int4'")],
)
def test_unknown_format_or_quantization_is_refused(tiny_model_file, tmp_path, capsys, option, message):
    code, err = run_cli([tiny_model_file, *option, "--out", tmp_path / "out"], capsys)
    assert code == 2 and message in err and "expected one of" in err
    assert not (tmp_path / "out").exists()


def test_int8_without_data_is_refused(tiny_model_file, tmp_path, capsys):
    code, err = run_cli([tiny_model_file, "--formats", "tflite", "--quantize", "int8", "--out", tmp_path / "out"], capsys)
    assert code == 2 and "int8 request without data" in err and "--calibration" in err
    assert not (tmp_path / "out").exists()


def test_out_folder_with_other_files_is_refused(tiny_model_file, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    code, err = run_cli([tiny_model_file, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "is not an earlier export" in err
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"


def test_cli_defaults_cover_every_format_and_the_useful_quantizations():
    args = cli.build_parser().parse_args(["run"])
    assert args.formats == "saved_model,tflite,onnx" and args.quantize == "none,float16,dynamic,int8"  # not full_int8
    assert cli.default_out(pathlib.Path("model.keras")) == pathlib.Path("model_export")


# ----------------------------------------------------------------------------- digits (slow)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A run folder written by hand: a tiny ViT trained ~20 s on the digits (train split),
    saved as the run's model.keras, with its dataset facts and test accuracy."""
    facts = datasets.resolve_dataset("digits")
    size = (IMAGE_SIZE, IMAGE_SIZE)
    images, labels = datasets.load_images(facts, "train", size)
    test_images, test_labels = datasets.load_images(facts, "test", size)
    keras.utils.set_random_seed(0)
    model = keras_vit.VisionTransformer(**TINY, labels=facts["class_names"])
    model.compile(
        keras.optimizers.AdamW(3e-3, weight_decay=1e-4),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(keras_vit.preprocess_input(images).numpy(), labels, batch_size=32, epochs=20, verbose=0)
    accuracy = float(np.mean(model.predict(keras_vit.preprocess_input(test_images).numpy(), verbose=0).argmax(-1) == test_labels))
    run = tmp_path_factory.mktemp("digits_run")
    model.save(run / "model.keras")
    (run / "dataset.json").write_text(json.dumps(facts))
    (run / "metrics.json").write_text(json.dumps({"model": "model.keras", "test_accuracy": accuracy}))
    return run


@pytest.mark.slow
def test_default_command_exports_digits_run_with_int8_within_bounds(digits_run, capsys):
    code = cli.main([str(digits_run), "--latency-repeats", "2"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    out = digits_run / "export"
    report = json.loads((out / "export_report.json").read_text())
    rows = rows_by_name(report)
    assert set(rows) == {"keras", "saved_model", "tflite_float32", "tflite_float16", "tflite_dynamic", "tflite_int8",
                         "onnx", "onnx_optimized", "onnx_int8"}
    assert report["verification_data"] == {"description": "the test split of digits", "num_images": 360, "labelled": True}
    # The report is about the run's model, and its Keras row measures metrics.json's figure.
    metrics = json.loads((digits_run / "metrics.json").read_text())
    assert report["model"] == metrics["model"] == "model.keras"
    keras_accuracy = rows["keras"]["accuracy"]
    assert keras_accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    assert keras_accuracy > 0.85
    for name in ("saved_model", "tflite_float32", "onnx", "onnx_optimized"):
        assert rows[name]["max_abs_diff"] <= 1e-4
    # float16: 1e-2 of the logit scale (weight rounding alone costs ~2e-3 of it, see verify.py).
    facts = json.loads((digits_run / "dataset.json").read_text())
    images, _ = datasets.load_images(facts, "test", (IMAGE_SIZE, IMAGE_SIZE))
    keras_logits = keras.saving.load_model(digits_run / "model.keras").predict(keras_vit.preprocess_input(images), verbose=0)
    assert rows["tflite_float16"]["max_abs_diff"] <= 1e-2 * max(1.0, np.abs(keras_logits).max())
    for name in ("tflite_dynamic", "tflite_int8", "onnx_int8"):
        assert rows[name]["top1_agreement"] >= 0.98
        assert keras_accuracy - rows[name]["accuracy"] <= 0.01 + 1e-9  # at most 1 point below (verify.py)
    # The int8 matmuls run in XNNPACK with the float ops, in one partition.
    assert rows["tflite_int8"]["details"]["xnnpack_partitions"] == 1 and "QUANTIZE" in rows["tflite_int8"]["ops"]
    # Smaller (about 4x for ViT-Ti and ViT-B, docs/benchmarks.md; less for this tiny model,
    # whose float position embedding and quantization parameters weigh more).
    assert rows["tflite_int8"]["size_bytes"] < 0.7 * rows["tflite_float32"]["size_bytes"]
    assert "com.microsoft:QAttention" in rows["onnx_int8"]["ops"] and "MatMulInteger" in rows["onnx_int8"]["ops"]
    assert set(report["speed"]["fastest"]) == {"batch1", "batch8"}
    assert report["calibration_data"]["description"] == "the train split of digits"
    assert report["class_names"] == [str(i) for i in range(10)]
    assert "| tflite_int8 | int8 |" in printed  # the table is printed


@pytest.mark.slow
def test_bare_keras_file_int8_with_calibration_images(digits_run, tmp_path):
    facts = json.loads((digits_run / "dataset.json").read_text())
    images, _ = datasets.load_images(facts, "train", (IMAGE_SIZE, IMAGE_SIZE), limit=120)
    np.save(tmp_path / "calibration.npy", images)
    report = pipeline.export(
        digits_run / "model.keras", tmp_path / "out", formats="tflite", quantizations="int8",
        calibration=tmp_path / "calibration.npy", latency_repeats=1,
    )
    assert report["passed"]
    assert report["verification_data"]["description"].startswith("the calibration images")
    assert rows_by_name(report)["tflite_int8"]["top1_agreement"] >= 0.98


# ----------------------------------------------------------------------------- every family

# family -> the fusions of its optimised ONNX graph (2 blocks) and what is left unfused.
FAMILY_FUSIONS = {
    "deit3": ({"Attention": 1, "LayerNormalization": 5, "Gelu": 2}, {"Softmax": 1}),
    "dinov2_reg4": ({"Attention": 1, "LayerNormalization": 5, "Gelu": 2}, {"Softmax": 1}),
    "reg4_gap": ({"Attention": 2, "LayerNormalization": 5, "Gelu": 2}, {}),
    "mae_avg": ({"Attention": 2, "LayerNormalization": 5, "Gelu": 2}, {}),
    "max": ({"Attention": 2, "LayerNormalization": 5, "Gelu": 2}, {}),
    "token_max_fc_norm": ({"Attention": 2, "LayerNormalization": 5, "Gelu": 2}, {}),
    "clip": ({"Attention": 1, "LayerNormalization": 6, "QuickGelu": 2}, {"Softmax": 1}),
    "siglip_map": ({"Attention": 2, "LayerNormalization": 6, "Gelu": 3}, {"Softmax": 1}),  # the MAP head's one query
    "deit_distilled": ({"Attention": 1, "LayerNormalization": 5, "Gelu": 2}, {"Softmax": 1}),
}


@pytest.mark.parametrize("family", sorted(FAMILY_FUSIONS))
def test_every_family_exports_to_every_format_verified(family, tmp_path):
    from test_families import FAMILIES

    path = tmp_path / f"{family}.keras"
    trained_like_vit(**FAMILIES[family]).save(path)
    report = pipeline.export(path, tmp_path / "out", quantizations="none,float16", latency_repeats=1)
    rows = rows_by_name(report)
    assert report["passed"], [row["failures"] for row in report["artifacts"]]
    assert set(rows) == {"keras", "saved_model", "tflite_float32", "tflite_float16", "onnx", "onnx_optimized"}
    for name in ("saved_model", "tflite_float32", "onnx", "onnx_optimized"):
        assert rows[name]["max_abs_diff"] <= 1e-4, name
    assert rows["tflite_float32"]["details"]["xnnpack_partitions"] == 1 and rows["tflite_float16"]["details"]["xnnpack_partitions"] == 1
    assert not any(op.startswith("CUSTOM:") for op in rows["tflite_float32"]["ops"])
    fused, unfused = FAMILY_FUSIONS[family]
    assert {op: n for op, n in rows["onnx_optimized"]["details"]["fused_ops"].items() if n} == fused
    assert rows["onnx_optimized"]["details"]["not_fused"] == unfused


def test_saved_model_of_a_centre_crop_model_serves_bytes_as_keras_sees_them(tmp_path):
    """The bytes signature resizes and crops in the graph as the model's preprocessing says;
    the check compares it with Keras on the images through the same resize."""
    preprocessing = keras_vit.Preprocessing(interpolation="bicubic", crop_mode="center", crop_fraction=0.875)
    path = tmp_path / "crop.keras"
    trained_like_vit(preprocessing=preprocessing).save(path)
    report = pipeline.export(path, tmp_path / "out", formats="saved_model", latency_repeats=1)
    row = rows_by_name(report)["saved_model"]
    assert report["passed"] and row["details"]["bytes_signature"]["max_abs_score_diff"] <= 1e-4


def test_speed_summary_names_the_fastest_artifact_and_flags_slow_quantized_ones():
    """Made-up rows: the Keras reference is never 'the fastest artifact'; a quantized artifact
    slower than its runtime's float32 one is flagged with the ratio, per batch size."""
    from keras_vit.export import report

    def row(artifact, fmt, quantization, b1, b8, passed=True):
        return {"artifact": artifact, "format": fmt, "quantization": quantization, "passed": passed,
                "latency_ms_batch1": b1, "latency_ms_batch8": b8}

    rows = [
        row("keras", "keras", "none", 0.5, 1.0),
        row("tflite_float32", "tflite", "none", 2.0, 10.0),
        row("tflite_int8", "tflite", "int8", 1.0, 12.0),
        row("tflite_full_int8", "tflite", "full_int8", 0.1, 0.1, passed=False),  # unverified: ignored
        row("onnx", "onnx", "none", 3.0, 9.0),
        row("onnx_optimized", "onnx", "none", 2.5, 9.5),
        row("onnx_int8", "onnx", "int8", 3.0, 8.0),
    ]
    summary = report.speed_summary(rows)
    assert summary["fastest"] == {"batch1": {"artifact": "tflite_int8", "latency_ms": 1.0},
                                  "batch8": {"artifact": "onnx_int8", "latency_ms": 8.0}}
    assert summary["slower_than_float32"] == {"tflite_int8": {"batch8": 1.2}, "onnx_int8": {"batch1": 1.2}}
