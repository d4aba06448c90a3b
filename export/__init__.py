"""Exporting ViTs to SavedModel, TFLite/LiteRT and ONNX, each verified against Keras.

    from keras_vit.export import export
    report = export("runs/quickstart", "runs/quickstart/export")   # every format
    report = export("model.keras", "out", formats="tflite", quantizations="none,float16")

Modules: `formats` (the names of formats, quantizations and files), `source` (what is
exported: the model, what it carries, its run's dataset and images), one converter per
format (`saved_model`, `tflite`, `onnx_export`; `onnx_fusions`: the transformer fusions of
the optimised ONNX), `verify` (one verifier for every artifact), `report` (JSON +
markdown), `pipeline` (the steps), `cli` (`keras-vit export`), `bench` (runners for the
benchmark suite).
"""

from keras_vit.export.bench import bench_runners
from keras_vit.export.formats import FORMATS, QUANTIZATIONS
from keras_vit.export.pipeline import export
from keras_vit.export.source import ExportError, load_source

__all__ = ["FORMATS", "QUANTIZATIONS", "ExportError", "bench_runners", "export", "load_source"]
