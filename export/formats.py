"""The names of what `keras-vit export` writes: one place for the command line, the
pipeline and the converters (no TensorFlow import here, so the command parses fast)."""

FORMATS = ("saved_model", "tflite", "onnx")
# TFLite quantizations; SavedModel and ONNX are float32.
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
TFLITE_FILE_NAMES = {q: f"model_{'float32' if q == 'none' else q}.tflite" for q in QUANTIZATIONS}
ONNX_FILE_NAME = "model.onnx"
ONNX_OPTIMIZED_FILE_NAME = "model_optimized.onnx"
SAVED_MODEL_DIR = "saved_model"
REPORT_FILE = "export_report.json"
