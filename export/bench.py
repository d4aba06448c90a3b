"""Runners for the benchmark suite: a keras_vit model in onnxruntime (plain and fused) and LiteRT.

    runners = bench_runners(model, images, "/tmp/bench")
    logits = runners["keras_vit ONNX Runtime (fused)"]()     # float32 [B, C]

or, converting once for several batches: `write_artifacts(model, folder)`, then
`load_runners(folder, images, expected_logits)` per batch.

The artifacts are made by the exporters (`onnx_export`, `tflite`) exactly as `export()`
makes them, but without the export's verification: one sanity check against Keras on
`images` (float32 max abs logit diff <= `SANITY_TOLERANCE`).
"""

import functools
import pathlib

import numpy as np

from keras_vit.export import formats, onnx_export, tflite

NUM_THREADS = 2
SANITY_TOLERANCE = 1e-4
ONNX = "keras_vit ONNX Runtime"
ONNX_FUSED = "keras_vit ONNX Runtime (fused)"
LITERT = "keras_vit LiteRT (XNNPACK)"


def write_artifacts(model, workdir):
    """Converts `model` into `workdir` (created if missing): `model.onnx`,
    `model_optimized.onnx` (the fused graph) and `model_float32.tflite`."""
    import onnx

    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    proto = onnx_export.convert(model)
    onnx.save(proto, str(workdir / formats.ONNX_FILE_NAME))
    onnx.save(onnx_export.optimize(proto)[0], str(workdir / formats.ONNX_OPTIMIZED_FILE_NAME))
    (workdir / formats.TFLITE_FILE_NAMES["none"]).write_bytes(tflite.convert(model, "none"))


def load_runners(workdir, images, expected, num_threads=NUM_THREADS):
    """{runner name: zero-argument callable} running `images` through the artifacts that
    `write_artifacts` left in `workdir`.

    Args:
        images: float32 [B, H, W, 3] normalised images, any B.
        expected: the Keras model's logits for `images`, [B, C]; every runner is checked
            against them once.
        num_threads: intra-op threads of onnxruntime and of the LiteRT interpreter.

    Returns: {ONNX, ONNX_FUSED, LITERT: callable}; each call runs the whole batch and returns
    the logits float32 [B, C] (numpy, computed by the time it returns). LiteRT runs with
    XNNPACK (ai_edge_litert's default delegate), its input resized to B once, here.

    Raises `RuntimeError` if a runner's logits differ from `expected` by more than
    `SANITY_TOLERANCE`.
    """
    workdir = pathlib.Path(workdir)
    images = np.ascontiguousarray(images, np.float32)
    runs = {
        ONNX: onnx_export.load_runner(workdir / formats.ONNX_FILE_NAME, num_threads),
        ONNX_FUSED: onnx_export.load_runner(workdir / formats.ONNX_OPTIMIZED_FILE_NAME, num_threads),
        LITERT: tflite.load_runner(workdir / formats.TFLITE_FILE_NAMES["none"], num_threads),
    }
    for name, run in runs.items():
        diff = float(np.abs(run(images) - expected).max())  # also resizes LiteRT's input to B
        if not diff <= SANITY_TOLERANCE:
            raise RuntimeError(f"{name}: max abs logit diff {diff:.3g} vs Keras > {SANITY_TOLERANCE:g}")
    return {name: functools.partial(run, images) for name, run in runs.items()}


def bench_runners(model, images, workdir, num_threads=NUM_THREADS):
    """`write_artifacts` then `load_runners`: `model` (a keras_vit model, any image size)
    converted into `workdir` and run on `images`, float32 [B, H, W, 3] with H, W the model's."""
    images = np.ascontiguousarray(images, np.float32)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(model.input_shape[1:]):
        raise ValueError(f"images must be float32 [B, {', '.join(map(str, model.input_shape[1:]))}], got shape {images.shape}.")
    write_artifacts(model, workdir)
    return load_runners(workdir, images, np.asarray(model(images, training=False)), num_threads)
