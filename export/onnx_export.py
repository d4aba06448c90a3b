"""ONNX export through tf2onnx (opset 17+, dynamic batch), run with onnxruntime.

Exact GELU: keras_vit spells it `0.5 * x * (1 + erf(x / sqrt(2)))`, which tf2onnx maps to
ONNX `Erf`. A graph that uses `tf.nn.gelu` instead (`keras.activations.gelu`,
`keras.ops.gelu(approximate=False)`) contains the TF op `Erfc`, which tf2onnx does not
convert ("Tensorflow op Erfc is not supported", the failure of Keras'
`model.export(format="onnx")`); `_erfc_handler` rewrites it as `1 - Erf(x)`, so every
model converts whatever its GELU.

Optimised for serving: `optimize` rewrites the converted graph with onnxruntime's fused
transformer ops (LayerNormalization, com.microsoft Attention and Gelu/FastGelu; the patterns
and why onnxruntime's own optimizer does not find them are in `onnx_fusions`). The result
is a plain `.onnx` file (no hardware-specific optimisation baked in) that any stock
onnxruntime CPU session loads; onnxruntime applies its own graph optimisations on top when
it loads it, as it does for the plain graph.

Model interface (plain and optimised alike): input `images` float32 [batch, H, W, 3]
(normalised), output logits float32 [batch, C].
"""

import contextlib
import logging
import os

import numpy as np

OPSET = 17


def _erfc_handler(ctx, node, name, args):
    """tf2onnx handler: TF `Erfc(x)` -> ONNX `Sub(1, Erf(x))`."""
    from onnx import numpy_helper  # noqa: F401 (tf2onnx needs onnx; fail early if absent)
    from tf2onnx import utils

    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    erf = ctx.insert_new_node_on_input(node, "Erf", node.input[0], name=utils.make_name(node.name + "_erf"))
    one = ctx.make_const(utils.make_name(node.name + "_one"), np.array(1, dtype=dtype))
    node.type = "Sub"
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])


@contextlib.contextmanager
def _optimizers_in_place():
    """tf2onnx's graph optimizers working on the graph itself, not on copies.

    By default tf2onnx deep-copies the whole graph, weights included, before each optimizer
    (to fall back to the copy if the optimizer fails), and the dropped copies are reference
    cycles that Python frees only in a rare full collection: converting ViT-B/16 took several
    GB more at its peak (docs/benchmarks.md, "Measured facts"). Its environment switch `TF2ONNX_CATCH_ERRORS` turns the copies off (in
    tf2onnx 1.17 any value does: it compares the variable's name, not its value, to "TRUE").
    A failing optimizer then fails the conversion instead of being skipped.
    """
    previous = os.environ.get("TF2ONNX_CATCH_ERRORS")
    os.environ["TF2ONNX_CATCH_ERRORS"] = "FALSE"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TF2ONNX_CATCH_ERRORS"]
        else:
            os.environ["TF2ONNX_CATCH_ERRORS"] = previous


def convert(model, opset=OPSET):
    """Keras model -> `onnx.ModelProto` with a dynamic batch axis (and dynamic `height` and
    `width` for a model built with a dynamic image size), checked by `onnx.checker`."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name="images")
    function = tf.function(lambda images: model(images, training=False))
    with _optimizers_in_place():
        proto, _ = tf2onnx.convert.from_function(
            function,
            input_signature=[spec],
            opset=opset,
            custom_op_handlers={"Erfc": (_erfc_handler, [])},
        )
    for value, names in ((proto.graph.input[0], ("batch", "height", "width")), (proto.graph.output[0], ("batch",))):
        for dim, name in zip(value.type.tensor_type.shape.dim, names):
            if not dim.dim_value:
                dim.dim_param = name  # readable names for the dynamic axes
    onnx.checker.check_model(proto, full_check=True)
    return proto


def optimize(proto):
    """Converted `onnx.ModelProto` -> (fused `onnx.ModelProto`, {fused op type: count}).

    The counts are what actually matched (0 for a pattern that was not found); the input
    proto is not modified. The result passes `onnx.checker` (contrib ops are not checked
    against a schema there; onnxruntime checks them when it loads the model).
    """
    import onnx

    from keras_vit.export import onnx_fusions

    fused, counts = onnx_fusions.fuse(proto)
    onnx.checker.check_model(fused, full_check=True)
    return fused, counts


# What `quantize` makes int8: the matmuls and the fused attention. The patch convolution
# stays float: onnxruntime's ConvInteger is slower than its float Conv on a CPU
# (docs/benchmarks.md, "Measured facts").
INT8_OP_TYPES = ("MatMul", "Gemm", "Attention")


def quantize(proto):
    """A float `onnx.ModelProto` (best: the fused graph of `optimize`) -> onnxruntime's dynamic
    int8 `onnx.ModelProto`: int8 weights; activations quantized at run time (MatMulInteger,
    which onnxruntime fuses into DynamicQuantizeMatMul when it loads the model, and
    QAttention); LayerNorm, GELU and softmax stay float. No calibration data."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as folder, _without_preprocessing_advice():
        output = os.path.join(folder, "int8.onnx")
        quantize_dynamic(
            proto,
            output,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(INT8_OP_TYPES),
            # The contrib ops (Attention, Gelu) have no ONNX type inference: without this the
            # quantizer fails with "Unable to find data type for weight_name=...".
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        return onnx.load(output)


class _PreprocessingAdvice(logging.Filter):
    def filter(self, record):
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _without_preprocessing_advice():
    """Drops the warning onnxruntime's quantizer logs through the root logger for every model
    without its pre-processing mark. On the fused graph, `quant_pre_process` (as of
    onnxruntime 1.32) changed neither the quantized ops nor the logits (0.0 difference on the
    quickstart model), and every quantized export is verified against Keras."""
    advice = _PreprocessingAdvice()
    logging.getLogger().addFilter(advice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(advice)


def describe(path):
    """Facts for the report: opset, input/output shapes, op types."""
    import onnx

    proto = onnx.load(str(path))
    dims = lambda value: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]  # noqa: E731
    return {
        "opset": max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "input_shape": dims(proto.graph.input[0]),
        "output_shape": dims(proto.graph.output[0]),
        # Ops of other domains than ONNX's (onnxruntime's contrib ops) as `domain:OpType`.
        "ops": sorted({f"{node.domain}:{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type for node in proto.graph.node}),
    }


def load_runner(path, num_threads=None):
    """A `.onnx` file as `run(images float32 [B, H, W, 3]) -> logits [B, C]` in onnxruntime (CPU).

    `num_threads`: onnxruntime's intra-op threads (None: its default, one per core).
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if num_threads:
        options.intra_op_num_threads = num_threads
    # onnxruntime's worker threads spin-wait after each run by default, taking the cores from
    # whatever runs next in the process: another session, TensorFlow, LiteRT. Spinning stays
    # on within a run; each call pays one thread wake-up instead (both measured:
    # docs/benchmarks.md, "Measured facts").
    options.add_session_config_entry("session.force_spinning_stop", "1")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(images):
        return session.run(None, {input_name: np.asarray(images, np.float32)})[0]

    return run
