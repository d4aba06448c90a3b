"""TFLite / LiteRT export: float32, float16, and three int8 variants.

Every model is converted with TFLite builtin ops only (no Flex / SELECT_TF_OPS, which a
stock mobile runtime lacks), from a concrete function whose variables are frozen into
constants (converting the Keras model's un-frozen function leaves VAR_HANDLE /
READ_VARIABLE ops and gives NaNs).

Model interface, every quantization alike: input float32 [B, H, W, 3] (normalised, as the
Keras model; B is 1 in the file and resized at run time), output float32 logits [B, C], so
the same pre-processing serves every variant.

The int8 variants, for XNNPACK (LiteRT's CPU delegate), where int8 pays only in the
matmuls (FULLY_CONNECTED, CONV_2D: int8 dot products) and every op without an int8 kernel
splits the graph:
- `dynamic`: int8 weights (per channel), activations quantized per row at run time; every
  other op float32. No calibration; one XNNPACK partition.
- `int8`: static int8 matmuls and convolution (per-channel weights, activation scales
  calibrated on images), every other op (LayerNorm, GELU, softmax, the attention products
  of two activations) left in float32; one XNNPACK partition.
- `full_int8`: every op int8 (TFLITE_BUILTINS_INT8), for integer-only accelerators. XNNPACK
  lacks int8 kernels for LayerNorm, GELU, softmax and the attention batch-matmuls, which run
  in TFLite's reference kernels: slower than float32 on a CPU (the export report says so).
"""

import os

import numpy as np
import tensorflow as tf

from keras_vit.export.formats import QUANTIZATIONS

NUM_CALIBRATION_IMAGES = 200


# The ops the `int8` variant quantizes; every other op of the graph stays float32, so that the
# graph stays in one XNNPACK partition (XNNPACK has no int8 LayerNorm, GELU, softmax or
# batch-matmul; `full_int8` quantizes them anyway: docs/benchmarks.md, measured facts).
INT8_OPS = ("FULLY_CONNECTED", "CONV_2D")
NEEDS_CALIBRATION = ("int8", "full_int8")


def convert(model, quantization="none", calibration_images=None, float_model=None):
    """Keras model -> `.tflite` bytes.

    `calibration_images`: float32 [N, H, W, 3] normalised images (the representative
    dataset), required for `int8` and `full_int8`. `float_model`: the float32 `.tflite`
    bytes of the same model, when already made (`int8` reads its op list from them instead
    of converting again).
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantization {quantization!r}: expected one of {QUANTIZATIONS}.")
    converter = _converter(model, quantization)
    if quantization in NEEDS_CALIBRATION:
        if calibration_images is None or len(calibration_images) == 0:
            raise ValueError(f"{quantization} quantization needs calibration images.")
        images = np.asarray(calibration_images[:NUM_CALIBRATION_IMAGES], np.float32)
        converter.representative_dataset = lambda: ([image[None]] for image in images)
    if quantization == "int8":
        return _quantize_matmuls_only(converter, images, float_model or _converter(model, "none").convert())
    return converter.convert()


def _converter(model, quantization):
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen_function(model)], model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization == "full_int8":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter


def _quantize_matmuls_only(converter, images, float_model):
    """Static int8 for `INT8_OPS`, every other op of the float graph (`float_model`, its
    `.tflite` bytes) denied quantization (TF's selective quantization,
    `tf.lite.experimental.QuantizationDebugger`)."""
    float_ops = sorted(set(op_names(float_model)) - set(INT8_OPS))
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=float_ops)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: ([image[None]] for image in images[:1]), debug_options=options
    )
    return debugger.get_nondebug_quantized_model()


def frozen_function(model):
    """`model(images, training=False)` as a concrete function, variables frozen to constants.

    Input `images` float32 [None, H, W, 3] (dynamic batch; H x W the model's image size, also
    for a model built with a dynamic image size: TFLite files are fixed-size); output logits
    [None, C].
    """
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    config = model.vit_config
    spec = tf.TensorSpec([None, *config.image_size, config.num_channels], tf.float32, name="images")
    function = tf.function(lambda images: model(images, training=False)).get_concrete_function(spec)
    return convert_variables_to_constants_v2(function)


def op_names(tflite_bytes):
    """Sorted names of the ops in a `.tflite` flatbuffer; custom (incl. Flex) ops are listed
    as `CUSTOM:<name>`."""
    from ai_edge_litert import schema_py_generated as schema

    names_by_code = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAs(tflite_bytes, 0)
    names = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            names.add("CUSTOM:" + (code.CustomCode() or b"?").decode())
        else:
            names.add(names_by_code.get(builtin, f"BUILTIN_{builtin}"))
    return sorted(names)


def non_builtin_ops(tflite_bytes):
    """The custom / Flex ops of a model (empty for a builtins-only model)."""
    return [name for name in op_names(tflite_bytes) if name.startswith("CUSTOM:")]


def tensor_dtypes(tflite_bytes):
    """{dtype name: number of tensors}: shows how much of a quantized model is int8."""
    interpreter = _interpreter(tflite_bytes)
    counts = {}
    for detail in interpreter.get_tensor_details():
        name = np.dtype(detail["dtype"]).name
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def xnnpack_partitions(tflite_bytes_or_path):
    """How many parts of the graph the CPU interpreter hands to XNNPACK, its default delegate.

    1: the whole graph runs in XNNPACK. Each op XNNPACK has no kernel for (UNPACK, a slice
    that drops an axis, shape arithmetic on a dynamic batch) splits it, and the split parts
    hand their tensors back and forth through TFLite's own kernels; a GPU/NPU delegate that
    takes one partition leaves the rest on the CPU.
    """
    interpreter = _interpreter(tflite_bytes_or_path)
    interpreter.allocate_tensors()  # delegates are applied here
    # The interpreter has no public listing of its nodes; the delegate nodes are named DELEGATE.
    return sum(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())


def _interpreter(tflite_bytes_or_path, num_threads=None):
    from ai_edge_litert.interpreter import Interpreter

    kwargs = {"num_threads": num_threads or os.cpu_count() or 1}
    if isinstance(tflite_bytes_or_path, (bytes, bytearray)):
        return Interpreter(model_content=bytes(tflite_bytes_or_path), **kwargs)
    return Interpreter(model_path=str(tflite_bytes_or_path), **kwargs)


def load_runner(path, num_threads=None):
    """A `.tflite` file (or its bytes) as `run(images float32 [B, H, W, 3]) -> logits [B, C]` (numpy), in the
    `ai_edge_litert` interpreter (XNNPACK, `num_threads` threads; None: one per core); the
    input is resized to each call's batch size."""
    interpreter = _interpreter(path, num_threads)
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    state = {"shape": None}

    def run(images):
        images = np.asarray(images, np.float32)
        if state["shape"] != images.shape:
            interpreter.resize_tensor_input(input_index, list(images.shape), strict=True)
            interpreter.allocate_tensors()
            state["shape"] = images.shape
        interpreter.set_tensor(input_index, images)
        interpreter.invoke()
        return interpreter.get_tensor(output_index).copy()

    return run
