"""`export()`: a run folder or `.keras` file -> verified artifacts + `export_report.json`.

The stages, each a function below and one log line:
1. `source.load_source`: the model (the one a run folder's metrics.json names), what it
   carries (config, preprocessing, class names), the run's dataset facts;
2. `_verification_data`: the verification images (the run's test split; for a bare
   `.keras` file the `--calibration` images or seeded synthetic ones) and
   `_calibration_data`: the int8 calibration images (the run's train split, or
   `--calibration`);
3. `_keras_row`: the Keras model on them: the reference logits, accuracy and latency;
4. `_export_one`, per artifact: convert into a staging folder next to `out_dir`, verify it
   against the reference (`verify.verify`), time it, and give it its final name only if
   it passed;
5. `_write_report`: the report, then the staging folder moved to `out_dir` in one rename.

A failed check leaves the failed artifact out (its row in the report says why) and makes
`export()` return a report with `passed: False` (the command exits 1). Nothing in
`out_dir` is touched until the end, and an `out_dir` left by an earlier export is replaced
as a whole, so no stale artifact survives next to a newer report.
"""

import dataclasses
import datetime
import functools
import os
import pathlib
import shutil
from collections.abc import Callable

import numpy as np

from keras_vit import console, system
from keras_vit.export import onnx_export, report, saved_model, source, tflite, verify
from keras_vit.export.formats import (
    DEFAULT_QUANTIZATIONS,
    FORMATS,
    ONNX_FILE_NAME,
    ONNX_INT8_FILE_NAME,
    ONNX_OPTIMIZED_FILE_NAME,
    QUANTIZATIONS,
    REPORT_FILE,
    REPORT_MARKDOWN_FILE,
    SAVED_MODEL_DIR,
    TFLITE_FILE_NAMES,
)
from keras_vit.export.source import ExportError

NUM_VERIFICATION_IMAGES = 1000
NUM_BYTES_CHECK_IMAGES = 32
VERSIONED_PACKAGES = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert")


@dataclasses.dataclass
class Artifact:
    """One thing to export: how to write it, how to run it, which tolerance applies."""

    name: str
    format: str
    quantization: str
    file_name: str
    precision: str  # a key of verify.TOLERANCES
    build: Callable  # (path) -> dict of details for the report
    load: Callable  # (path) -> runner


def log(message):
    console.log("export", message)


def parse_names(value, allowed, what):
    """"a,b" or a list -> tuple of names, each checked against `allowed`."""
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if not names:
        raise ExportError(f"No {what} given: choose from {', '.join(allowed)}.")
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ExportError(f"Unknown {what} {', '.join(map(repr, unknown))}: expected one of {', '.join(allowed)}.")
    return tuple(dict.fromkeys(names))


def export(
    model_or_run_dir,
    out_dir,
    formats=FORMATS,
    quantizations=DEFAULT_QUANTIZATIONS,
    calibration=None,
    num_images=NUM_VERIFICATION_IMAGES,
    latency_repeats=verify.LATENCY_REPEATS,
):
    """Exports, verifies and reports. Returns the report dict (`report["passed"]`).

    Args:
        model_or_run_dir: a training run folder or a `.keras` file of a keras_vit model.
        out_dir: where the artifacts and `export_report.{json,md}` go (replaced if it holds
            an earlier export; refused if it holds anything else).
        formats: names from `FORMATS` (a list or "a,b").
        quantizations: names from `QUANTIZATIONS`: the TFLite variants, and "int8" also an
            int8 ONNX model (`model_int8.onnx`).
        calibration: int8 calibration images: a run folder, a `.npy` file of uint8
            [N, H, W, 3] or a folder of images. Defaults to the run's train split.
        num_images: at most this many verification images.
        latency_repeats: timed runs per latency figure.

    Raises `ExportError` for bad input (before anything is written).
    """
    formats = parse_names(formats, FORMATS, "format")
    quantizations = parse_names(quantizations, QUANTIZATIONS, "quantization")
    out_dir = pathlib.Path(out_dir)
    _check_out_dir(out_dir)
    needs_int8_data = "tflite" in formats and bool(set(tflite.NEEDS_CALIBRATION) & set(quantizations))

    log(f"loading {model_or_run_dir}")
    src = source.load_source(model_or_run_dir)
    if needs_int8_data and src.run_dir is None and calibration is None:
        raise ExportError(
            f"int8 request without data: {src.model_path} is a bare .keras file, so static int8 "
            "needs calibration images (--calibration RUN_DIR|images.npy|IMAGE_FOLDER), or leave "
            "int8 and full_int8 out of --quantize (dynamic needs none)."
        )

    log("loading verification images")
    images, labels, data_description = _verification_data(src, calibration, num_images)
    calibration_images, calibration_description = None, None
    if needs_int8_data:
        log("loading int8 calibration images")
        calibration_images, calibration_description = _calibration_data(src, calibration)
    x = src.normalise(images)

    log(f"running the Keras model on {len(x)} images")
    keras_run = _keras_runner(src.model)
    reference = verify.predict(keras_run, x)
    rows = [_keras_row(src, keras_run, x, reference, labels, latency_repeats)]
    second_size = _second_size_reference(src, images, keras_run) if src.config.dynamic_image_size else None

    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for artifact in _artifacts(src, formats, quantizations, calibration_images):
            rows.append(_export_one(artifact, staging, x, reference, labels, images, src, latency_repeats, second_size))
        result = _write_report(src, rows, staging, data_description, len(x), labels is not None, calibration_description, latency_repeats)
        _move_into_place(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"{'all artifacts verified' if result['passed'] else 'SOME ARTIFACTS FAILED'}; report in {out_dir / REPORT_MARKDOWN_FILE}")
    return result


# ----------------------------------------------------------------------------- inputs


def _check_out_dir(out_dir):
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {out_dir} is a file; give a folder.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / REPORT_FILE).exists():
        raise ExportError(f"--out {out_dir} exists and is not an earlier export: choose an empty or new folder.")


def _verification_data(src, calibration, num_images):
    """-> (uint8 images [N, H, W, 3], int labels [N] or None, description)."""
    if src.run_dir is not None:
        images, labels = src.dataset_images("test", limit=num_images)
        name = src.facts.get("name") or src.facts.get("source")
        return images, labels, f"the test split of {name}"
    if calibration is not None:
        images = source.images_from_path(calibration, src)[:num_images]
        return images, None, f"the calibration images {calibration} (no labels)"
    return source.synthetic_images(src.image_size), None, f"seeded synthetic images (seed {source.SYNTHETIC_SEED}, no labels)"


def _calibration_data(src, calibration):
    """-> (float32 normalised images [N, H, W, 3], description)."""
    if calibration is not None:
        images = source.images_from_path(calibration, src)
        description = f"{calibration}"
    else:
        images, _ = src.dataset_images("train", limit=tflite.NUM_CALIBRATION_IMAGES)
        description = f"the train split of {src.facts.get('name') or src.facts.get('source')}"
    if len(images) == 0:
        raise ExportError(f"int8 request without data: no calibration images in {calibration or src.run_dir}.")
    images = images[: tflite.NUM_CALIBRATION_IMAGES]
    return src.normalise(images), {"description": description, "num_images": int(len(images))}


def _write_report(src, rows, folder, data_description, num_images, labelled, calibration_description, latency_repeats):
    """The report of every row, written as export_report.json / .md into `folder`."""
    result = {
        # As the run folder's metrics.json names it (the file name inside run_dir).
        "model": src.model_path.name if src.run_dir is not None else str(src.model_path),
        "run_dir": None if src.run_dir is None else str(src.run_dir),
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": system.machine(),
        "versions": system.package_versions(VERSIONED_PACKAGES),
        "class_names": src.class_names,
        "image_size": list(src.image_size),
        "preprocessing": dataclasses.asdict(src.preprocessing),
        "verification_data": {"description": data_description, "num_images": int(num_images), "labelled": labelled},
        "calibration_data": calibration_description,
        "metrics_test_accuracy": (src.metrics or {}).get("test_accuracy"),
        "latency_repeats": latency_repeats,
        "tolerances": verify.TOLERANCES,
        "artifacts": rows,
        "speed": report.speed_summary(rows),
        "passed": all(row["passed"] for row in rows),
    }
    report.write(result, folder)
    return result


# ----------------------------------------------------------------------------- artifacts


def _artifacts(src, formats, quantizations, calibration_images):
    model = src.model
    artifacts = []
    if "saved_model" in formats:
        artifacts.append(
            Artifact(
                "saved_model", "saved_model", "none", SAVED_MODEL_DIR, "float32",
                build=lambda path: _build_saved_model(model, src.class_names, path),
                load=saved_model.load_runner,
            )
        )
    if "tflite" in formats:
        float_once = functools.cache(lambda: tflite.convert(model, "none"))  # the int8 variant reads its ops
        for quantization in quantizations:
            artifacts.append(
                Artifact(
                    f"tflite_{'float32' if quantization == 'none' else quantization}",
                    "tflite",
                    quantization,
                    TFLITE_FILE_NAMES[quantization],
                    {"none": "float32", "float16": "float16"}.get(quantization, "int8"),
                    build=lambda path, q=quantization: _build_tflite(model, q, calibration_images, float_once, path),
                    load=tflite.load_runner,
                )
            )
    if "onnx" in formats:
        convert_once = functools.cache(lambda: onnx_export.convert(model))  # both ONNX artifacts start from it
        artifacts.append(
            Artifact(
                "onnx", "onnx", "none", ONNX_FILE_NAME, "float32",
                build=lambda path: _build_onnx(convert_once(), path),
                load=onnx_export.load_runner,
            )
        )
        optimize_once = functools.cache(lambda: onnx_export.optimize(convert_once()))
        artifacts.append(
            Artifact(
                "onnx_optimized", "onnx", "none", ONNX_OPTIMIZED_FILE_NAME, "float32",
                build=lambda path: _build_onnx_optimized(optimize_once(), path),
                load=onnx_export.load_runner,
            )
        )
        if "int8" in quantizations:
            artifacts.append(
                Artifact(
                    "onnx_int8", "onnx", "int8", ONNX_INT8_FILE_NAME, "int8",
                    build=lambda path: _build_onnx(onnx_export.quantize(optimize_once()[0]), path),
                    load=onnx_export.load_runner,
                )
            )
    return artifacts


def _build_saved_model(model, class_names, path):
    saved_model.export_saved_model(model, class_names, path)
    return {"signatures": [saved_model.DEFAULT_SIGNATURE, saved_model.BYTES_SIGNATURE]}


def _build_tflite(model, quantization, calibration_images, float_once, path):
    if quantization == "none":
        content = float_once()
    else:
        content = tflite.convert(model, quantization, calibration_images, float_model=float_once() if quantization == "int8" else None)
    extra = tflite.non_builtin_ops(content)
    if extra:  # cannot happen with TFLITE_BUILTINS only, but a stock runtime must load it
        raise RuntimeError(f"non-builtin ops {extra}")
    path.write_bytes(content)
    return {
        "ops": tflite.op_names(content),
        "tensor_dtypes": tflite.tensor_dtypes(content),
        "xnnpack_partitions": tflite.xnnpack_partitions(content),
    }


def _build_onnx(proto, path):
    import onnx

    onnx.save(proto, str(path))
    details = onnx_export.describe(path)
    return {"ops": details.pop("ops"), **details}


def _build_onnx_optimized(optimized, path):
    from keras_vit.export import onnx_fusions

    fused, fused_ops = optimized
    return {**_build_onnx(fused, path), "fused_ops": fused_ops, "not_fused": onnx_fusions.unfused_ops(fused)}


def _export_one(artifact, staging, x, reference, labels, images, src, latency_repeats, second_size=None):
    """Converts, verifies and times one artifact; renames it into place only if it passed.
    `second_size`: `_second_size_reference`'s, for a model with a dynamic image size."""
    tmp_path = staging / f".tmp-{artifact.file_name}"
    final_path = staging / artifact.file_name
    row = {
        "artifact": artifact.name,
        "format": artifact.format,
        "quantization": artifact.quantization,
        "precision": artifact.precision,
        "path": artifact.file_name,
    }
    log(f"{artifact.name}: converting")
    try:
        details = artifact.build(tmp_path) or {}
    except Exception as error:  # noqa: BLE001 - a converter failure is reported, not raised
        _remove(tmp_path)
        message = f"conversion failed: {type(error).__name__}: {_first_line(error)}"
        log(f"{artifact.name}: {message}")
        return {**row, "path": None, "passed": False, "failures": [message]}
    row["size_bytes"] = _size(tmp_path)
    row.update({k: v for k, v in details.items() if k == "ops"})
    row["details"] = {k: v for k, v in details.items() if k != "ops"}

    log(f"{artifact.name}: verifying on {len(x)} images (batch 1 and {verify.BATCH_SIZE})")
    run = artifact.load(tmp_path)
    row.update(verify.verify(run, x, reference, labels, artifact.precision))
    if src.config.dynamic_image_size:
        if artifact.format == "tflite":
            row["details"]["input_size"] = f"fixed {src.image_size[0]}x{src.image_size[1]} (TFLite; the model's size is dynamic)"
        else:
            size_check = _check_second_size(run, second_size, artifact.precision)
            row["details"]["second_size"] = size_check
            row["failures"] += size_check.pop("failures")
            row["passed"] = not row["failures"]
    if artifact.format == "saved_model":
        bytes_check = _check_bytes_signature(tmp_path, images, src)
        row["details"]["bytes_signature"] = bytes_check
        row["failures"] += bytes_check.pop("failures")
        row["passed"] = not row["failures"]

    if row["passed"]:
        log(f"{artifact.name}: verified; timing")
        row["latency_ms_batch1"] = verify.median_latency_ms(run, x[:1], latency_repeats)
        row["latency_ms_batch8"] = verify.median_latency_ms(run, x[: verify.BATCH_SIZE], latency_repeats)
        del run
        tmp_path.rename(final_path)
    else:
        log(f"{artifact.name}: FAILED: {'; '.join(row['failures'])}")
        del run
        _remove(tmp_path)
        row["path"] = None
    return row


# Images checked at the second size of a dynamic-size model: enough that one top-1 flip of a
# quantized artifact still meets its 98% agreement (63 of 64: 98.4%).
SECOND_SIZE_IMAGES = 64


def _second_size_reference(src, images, keras_run):
    """(size, images, Keras logits) at a second image size, one patch taller and two wider
    than the model's: the first `SECOND_SIZE_IMAGES` verification images resized to it. Made
    once per export; every dynamic-size artifact is checked against it."""
    from keras_vit.preprocessing import resize_uint8

    (height, width), (ph, pw) = src.image_size, src.config.patch_size
    size = (height + ph, width + 2 * pw)
    x = src.normalise(np.asarray(resize_uint8(images[:SECOND_SIZE_IMAGES], size)))
    log(f"running the Keras model on {len(x)} images at {size[0]}x{size[1]} (the second size)")
    return size, x, verify.predict(keras_run, x)


def _check_second_size(run, second_size, precision):
    """A dynamic-size artifact against Keras at the second image size."""
    size, x, reference = second_size
    result = verify.verify(run, x, reference, None, precision)
    return {"size": list(size), "num_images": len(x), "max_abs_diff": result["max_abs_diff"],
            "failures": [f"at {size[0]}x{size[1]}: {f}" for f in result["failures"]]}


def _check_bytes_signature(path, images, src):
    """`serving_bytes` on PNG-encoded verification images vs the Keras probabilities.

    The signature resizes what it decodes as the model's preprocessing says; the images are
    at the model's size already, which a centre crop still changes: Keras sees them through
    the same resize.
    """
    from keras_vit.preprocessing import resize_for_model

    n = min(NUM_BYTES_CHECK_IMAGES, len(images))
    class_names = src.class_names
    outputs = saved_model.run_bytes_signature(path, saved_model.encode_png(images[:n]))
    resized = np.stack([np.asarray(resize_for_model(image, src.image_size, src.preprocessing)) for image in images[:n]])
    reference = verify.predict(_keras_runner(src.model), src.normalise(resized))
    result = verify.verify_top_k(outputs["class_ids"], outputs["scores"], reference)
    names_ok = all(
        name.decode() == class_names[i]
        for ids, names in zip(outputs["class_ids"], outputs["class_names"])
        for i, name in zip(ids, names)
    )
    if not names_ok:
        result["failures"].append("class_names do not match class_ids")
    return {"num_images": n, **result}


def _keras_runner(model):
    import tensorflow as tf

    spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
    function = tf.function(lambda images: model(images, training=False), input_signature=[spec])
    return lambda images: function(images).numpy()


def _keras_row(src, keras_run, x, reference, labels, latency_repeats):
    return {
        "artifact": "keras",
        "format": "keras",
        "quantization": "none",
        "precision": "float32",
        "path": str(src.model_path),
        "size_bytes": _size(src.model_path),
        "max_abs_diff": 0.0,
        "top1_agreement": 1.0,
        "accuracy": None if labels is None else float(np.mean(reference.argmax(-1) == labels)),
        "latency_ms_batch1": verify.median_latency_ms(keras_run, x[:1], latency_repeats),
        "latency_ms_batch8": verify.median_latency_ms(keras_run, x[: verify.BATCH_SIZE], latency_repeats),
        "passed": True,
        "failures": [],
    }


# ----------------------------------------------------------------------------- helpers


def _move_into_place(staging, out_dir):
    """Replaces `out_dir` by `staging` (two renames; the old export is deleted after)."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        out_dir.rename(old)
    staging.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _size(path):
    path = pathlib.Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _remove(path):
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def _first_line(error):
    text = str(error).strip()
    return (text.splitlines()[0] if text else "")[:300]
