"""Runners for the benchmark suite: a keras_vit model in onnxruntime (plain, fused, int8) and
LiteRT (float32 and the int8 variants).

    runners = bench_runners(model, images, "/tmp/bench")
    logits = runners["keras_vit ONNX Runtime (fused)"]()     # float32 [B, C]

or, converting once for several batches: `write_artifacts(model, folder, calibration)`, then
`load_runners(folder, images, expected_logits)` per batch.

The artifacts are made by the exporters (`onnx_export`, `tflite`) exactly as `export()`
makes them, but without the export's verification: one sanity check against Keras on
`images` (float32: max abs logit diff <= `SANITY_TOLERANCE`; int8: finite logits of the
right shape, as their accuracy is measured on trained models elsewhere).
"""

import functools
import pathlib

import numpy as np

from keras_vit.export import formats, onnx_export, tflite

NUM_THREADS = 2
SANITY_TOLERANCE = 1e-4
ONNX = "keras_vit ONNX Runtime"
ONNX_FUSED = "keras_vit ONNX Runtime (fused)"
ONNX_INT8 = "keras_vit ONNX Runtime int8"
LITERT = "keras_vit LiteRT (XNNPACK)"
# LiteRT's int8 variants: path name -> quantization.
LITERT_INT8 = {f"keras_vit LiteRT {q}": q for q in ("dynamic", "int8", "full_int8")}
INT8_PATHS = (ONNX_INT8, *LITERT_INT8)


def write_artifacts(model, workdir, calibration_images=None):
    """Converts `model` into `workdir` (created if missing): `model.onnx`,
    `model_optimized.onnx` (the fused graph), `model_float32.tflite`, and with
    `calibration_images` (float32 [N, H, W, 3] normalised) the int8 variants too:
    `model_int8.onnx` and the LiteRT `dynamic`, `int8` and `full_int8` files."""
    import onnx

    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    proto = onnx_export.convert(model)
    onnx.save(proto, str(workdir / formats.ONNX_FILE_NAME))
    fused = onnx_export.optimize(proto)[0]
    onnx.save(fused, str(workdir / formats.ONNX_OPTIMIZED_FILE_NAME))
    float_model = tflite.convert(model, "none")
    (workdir / formats.TFLITE_FILE_NAMES["none"]).write_bytes(float_model)
    if calibration_images is not None:
        onnx.save(onnx_export.quantize(fused), str(workdir / formats.ONNX_INT8_FILE_NAME))
        for quantization in LITERT_INT8.values():
            content = tflite.convert(model, quantization, calibration_images, float_model=float_model)
            (workdir / formats.TFLITE_FILE_NAMES[quantization]).write_bytes(content)


def artifact_files(workdir):
    """{runner name: file} of what `write_artifacts` left in `workdir`."""
    workdir = pathlib.Path(workdir)
    files = {
        ONNX: workdir / formats.ONNX_FILE_NAME,
        ONNX_FUSED: workdir / formats.ONNX_OPTIMIZED_FILE_NAME,
        ONNX_INT8: workdir / formats.ONNX_INT8_FILE_NAME,
        LITERT: workdir / formats.TFLITE_FILE_NAMES["none"],
        **{name: workdir / formats.TFLITE_FILE_NAMES[q] for name, q in LITERT_INT8.items()},
    }
    return {name: path for name, path in files.items() if path.exists()}


def load_runners(workdir, images, expected, num_threads=NUM_THREADS):
    """{runner name: zero-argument callable} running `images` through the artifacts that
    `write_artifacts` left in `workdir`.

    Args:
        images: float32 [B, H, W, 3] normalised images, any B.
        expected: the Keras model's logits for `images`, [B, C]; every runner is checked
            against them once.
        num_threads: intra-op threads of onnxruntime and of the LiteRT interpreter.

    Returns: {name: callable} for each artifact present; each call runs the whole batch and
    returns the logits float32 [B, C] (numpy, computed by the time it returns). LiteRT runs
    with XNNPACK (ai_edge_litert's default delegate), its input resized to B once, here.

    Raises `RuntimeError` if a float32 runner's logits differ from `expected` by more than
    `SANITY_TOLERANCE`, or an int8 one's are not finite logits of the right shape.
    """
    images = np.ascontiguousarray(images, np.float32)
    runs = {}
    for name, path in artifact_files(workdir).items():
        load = onnx_export.load_runner if path.suffix == ".onnx" else tflite.load_runner
        runs[name] = load(path, num_threads)
    for name, run in runs.items():
        logits = run(images)  # also resizes LiteRT's input to B
        if name in INT8_PATHS:
            if logits.shape != expected.shape or not np.all(np.isfinite(logits)):
                raise RuntimeError(f"{name}: logits of shape {logits.shape} (Keras {expected.shape}) or not finite")
            continue
        diff = float(np.abs(logits - expected).max())
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
