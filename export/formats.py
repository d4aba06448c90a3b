"""The names of what `keras-vit export` writes: one place for the command line, the
pipeline, the converters and the benchmarks."""

FORMATS = ("saved_model", "tflite", "onnx")
# Quantizations. TFLite: float16 weights; "dynamic", int8 weights and activations quantized
# at run time; "int8", static int8 matmuls and convolution (calibrated), every other op in
# float; "full_int8", every op int8 (for integer-only accelerators; slow on a CPU). ONNX:
# "int8", onnxruntime's dynamic int8. SavedModel is float32.
QUANTIZATIONS = ("none", "float16", "dynamic", "int8", "full_int8")
DEFAULT_QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
TFLITE_FILE_NAMES = {q: f"model_{'float32' if q == 'none' else q}.tflite" for q in QUANTIZATIONS}
ONNX_FILE_NAME = "model.onnx"
ONNX_OPTIMIZED_FILE_NAME = "model_optimized.onnx"
ONNX_INT8_FILE_NAME = "model_int8.onnx"
SAVED_MODEL_DIR = "saved_model"
REPORT_FILE = "export_report.json"
REPORT_MARKDOWN_FILE = "export_report.md"  # the same rows as a table
