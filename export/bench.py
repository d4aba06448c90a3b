"""Runners for the benchmark suite: a keras_vit model in onnxruntime (plain and fused) and LiteRT.

    runners = bench_runners(model, images, "/tmp/bench")
    logits = runners["keras_vit ONNX Runtime (fused)"]()     # float32 [B, C]

The artifacts are made by the exporters (`onnx_export`, `tflite`) exactly as `export()`
makes them, but without the export's verification: one sanity check against Keras on
`images` (float32 max abs logit diff <= `SANITY_TOLERANCE`).
"""

import functools
import pathlib

import numpy as np

from keras_vit.export import onnx_export, tflite

NUM_THREADS = 2
SANITY_TOLERANCE = 1e-4
ONNX = "keras_vit ONNX Runtime"
ONNX_FUSED = "keras_vit ONNX Runtime (fused)"
LITERT = "keras_vit LiteRT (XNNPACK)"


def bench_runners(model, images, workdir, num_threads=NUM_THREADS):
    """Converts `model` and returns {runner name: zero-argument callable} running `images`.

    Args:
        model: a keras_vit model (any image size).
        images: float32 [B, H, W, 3] normalised images, any B; H, W the model's.
        workdir: folder for the artifacts (`model.onnx`, `model_optimized.onnx`,
            `model_float32.tflite`); created if missing.
        num_threads: intra-op threads of onnxruntime and of the LiteRT interpreter.

    Returns: {ONNX, ONNX_FUSED, LITERT: callable}; each call runs the whole batch and returns
    the logits float32 [B, C] (numpy, computed by the time it returns). LiteRT runs with
    XNNPACK (ai_edge_litert's default delegate), its input resized to B once, here.

    Raises `RuntimeError` if a runner's logits differ from Keras' by more than
    `SANITY_TOLERANCE`.
    """
    import onnx

    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    images = np.ascontiguousarray(images, np.float32)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(model.input_shape[1:]):
        raise ValueError(f"images must be float32 [B, {', '.join(map(str, model.input_shape[1:]))}], got shape {images.shape}.")

    proto = onnx_export.convert(model)
    onnx.save(proto, str(workdir / onnx_export.FILE_NAME))
    onnx.save(onnx_export.optimize(proto)[0], str(workdir / onnx_export.OPTIMIZED_FILE_NAME))
    (workdir / tflite.FILE_NAMES["none"]).write_bytes(tflite.convert(model, "none"))

    runs = {
        ONNX: onnx_export.load_runner(workdir / onnx_export.FILE_NAME, num_threads),
        ONNX_FUSED: onnx_export.load_runner(workdir / onnx_export.OPTIMIZED_FILE_NAME, num_threads),
        LITERT: tflite.load_runner(workdir / tflite.FILE_NAMES["none"], num_threads),
    }
    expected = np.asarray(model(images, training=False))
    for name, run in runs.items():
        diff = float(np.abs(run(images) - expected).max())  # also resizes LiteRT's input to B
        if not diff <= SANITY_TOLERANCE:
            raise RuntimeError(f"{name}: max abs logit diff {diff:.3g} vs Keras > {SANITY_TOLERANCE:g}")
    return {name: functools.partial(run, images) for name, run in runs.items()}
