"""keras_vit.predict / `keras-vit predict`: every source kind agrees with the Keras model,
the outputs parse back, unreadable files are reported and skipped, bad input exits 2.

One tiny training run (a few steps on the offline digits) and its export (SavedModel,
TFLite float32, ONNX) are made once per session; the named-weights source is the reference
fixture checkpoint behind a `file://` URL, with ViTTi16 given the fixture's sizes.
"""

import csv
import dataclasses
import io
import json
import pathlib
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

import keras_vit
from keras_vit import predict
from keras_vit.config import MODEL_SIZES, VARIANTS
from keras_vit.export import pipeline
from keras_vit.preprocessing import Preprocessing, decode_image, preprocess_input, resize_for_model
from keras_vit.training.train import train
from keras_vit.weights import PRETRAINED_WEIGHTS, NamedWeights, named

KERAS_VIT = pathlib.Path(sys.executable).with_name("keras-vit")
FLOAT_TOLERANCE = 1e-4
TOP_K = 3
# Not the default normalisation and resize, so that a source that ignored them would differ.
# (Squash: with crop_mode="center" the export drops its SavedModel, whose bytes-signature
# check re-crops images that are already at the model's size.)
PREPROCESSING = Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic", "squash")
FIXTURE = "google_vit/i32_p4_token"  # ../shared/fixtures: a 32 px ViT, patch 4, 64 wide, 10 classes


def write_images(folder):
    """Image files of several kinds under `folder` (and a broken one, and a text file that a
    folder walk skips) -> the readable files, in the order a folder walk gives them."""
    rng = np.random.default_rng(7)
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (31, 17, 3), dtype=np.uint8)).save(folder / "b.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (18, 18), dtype=np.uint8), mode="L").save(folder / "sub" / "gray.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), mode="RGBA").save(folder / "sub" / "rgba.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    (folder / "notes.txt").write_text("not an image; a folder walk leaves it out")
    return [folder / "a.png", folder / "b.jpg", folder / "sub" / "gray.png", folder / "sub" / "rgba.png"]


@pytest.fixture(scope="session")
def exported_run(tmp_path_factory):
    """(run folder, export folder): a tiny ViT (with PREPROCESSING) trained for a few steps,
    exported as float32."""
    root = tmp_path_factory.mktemp("predict_run")
    options = dict(hidden_dim=32, num_layers=1, num_heads=2, mlp_dim=64, preprocessing=dataclasses.asdict(PREPROCESSING))
    train(dict(out=str(root / "run"), epochs=1, steps_per_epoch=3, batch_size=32, image_size=16, learning_rate=3e-3,
               jit_compile=False, verbose=0, model_options=options))
    report = pipeline.export(root / "run", root / "export", formats="saved_model,tflite,onnx", quantizations="none", num_images=16, latency_repeats=1)
    assert report["passed"], [row["failures"] for row in report["artifacts"]]
    return root / "run", root / "export"


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """(folder, its readable files, a text file outside it that is named explicitly)."""
    root = tmp_path_factory.mktemp("predict_images")
    readable = write_images(root / "photos")
    (root / "readme.txt").write_text("a text file named on the command line")
    return root / "photos", readable, root / "readme.txt"


def keras_probabilities(model, files):
    """The Keras model's own softmax probabilities [N, C] of `files`, preprocessed here."""
    config = keras_vit.config_of(model)
    pixels = np.stack([np.asarray(resize_for_model(decode_image(f), config.image_size, config.preprocessing)) for f in files])
    logits = np.asarray(model(preprocess_input(pixels, config.preprocessing.mean, config.preprocessing.std)), np.float64)
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


def assert_bad_input(capsys, argv, message):
    assert predict.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("keras-vit predict: error: ")]
    assert len(errors) == 1 and message in errors[0], captured.err


# ----------------------------------------------------------------------------- sources


# kind -> (the source in the run or export folder, the runtime predict runs it in)
SOURCES = {
    "run_folder": (lambda run, export: run, "keras"),
    "keras_file": (lambda run, export: run / "model.keras", "keras"),
    "saved_model": (lambda run, export: export / "saved_model", "saved_model"),
    "tflite": (lambda run, export: export / "model_float32.tflite", "tflite"),
    "onnx": (lambda run, export: export / "model.onnx", "onnx"),
    "onnx_optimized": (lambda run, export: export / "model_optimized.onnx", "onnx"),
}


@pytest.mark.parametrize("kind", list(SOURCES))
def test_every_source_agrees_with_the_keras_models_probabilities(exported_run, images, kind):
    run, export = exported_run
    folder, readable, _ = images
    class_names = json.loads((run / "dataset.json").read_text())["class_names"]
    expected = keras_probabilities(keras.saving.load_model(run / "model.keras"), readable)
    where, runtime = SOURCES[kind]

    predictor = predict.load_predictor(where(run, export))
    results, errors = predict.predict(predictor, [folder], top_k=TOP_K)

    assert predictor.runtime == runtime and predictor.class_names == class_names and predictor.preprocessing == PREPROCESSING
    assert [r["file"] for r in results] == [str(f) for f in readable]  # notes.txt is not looked at
    assert [e["file"] for e in errors] == [str(folder / "broken.png")] and "broken.png" in errors[0]["error"]
    for result, reference in zip(results, expected):
        ids = [p["class_id"] for p in result["predictions"]]
        probabilities = np.array([p["probability"] for p in result["predictions"]])
        assert ids[0] == int(reference.argmax())
        np.testing.assert_allclose(probabilities, reference[ids], atol=FLOAT_TOLERANCE)
        assert np.all(np.diff(probabilities) <= 0) and probabilities[-1] >= np.sort(reference)[-TOP_K] - FLOAT_TOLERANCE
        assert [p["name"] for p in result["predictions"]] == [class_names[i] for i in ids]


def test_named_weights_reproduce_the_checkpoints_reference_logits(fixtures_dir, tmp_path, monkeypatch, capsys):
    """`--model ViTTi16 --weights NAME` (a table entry whose URL is a file:// checkpoint) and
    `--weights PATH` predict the softmax of the logits the reference implementation computed."""
    monkeypatch.setitem(MODEL_SIZES, "Ti", dict(hidden_dim=64, num_layers=2, num_heads=4, mlp_dim=128))
    monkeypatch.setitem(VARIANTS, "ViTTi16", ("Ti", 4))
    monkeypatch.setattr(named, "weights_cache_dir", lambda: str(tmp_path / "cache"))
    checkpoint = fixtures_dir / FIXTURE / "params.npz"
    names = [f"thing {i}" for i in range(10)]
    entry = NamedWeights(checkpoint.resolve().as_uri(), "npz", 10, 32, "reference fixture", preprocessing=Preprocessing(), labels=names)
    monkeypatch.setitem(PRETRAINED_WEIGHTS["ViTTi16"], "fixture_in10", entry)
    files = []
    for i, image in enumerate(np.load(fixtures_dir / FIXTURE / "images_uint8.npy")):
        files.append(tmp_path / f"image_{i}.png")
        Image.fromarray(image).save(files[-1])
    logits = np.load(fixtures_dir / FIXTURE / "logits.npy").astype(np.float64)
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)

    for weights, labels in (("fixture_in10", names), (str(checkpoint), [f"class_{i}" for i in range(10)])):
        argv = ["--model", "ViTTi16", "--weights", weights, "--image-size", "32", *map(str, files), "--json", "--top-k", "10"]
        assert predict.main(argv) == 0
        results = json.loads(capsys.readouterr().out)["results"]
        assert [r["file"] for r in results] == [str(f) for f in files]
        for result, reference in zip(results, expected):
            ids = [p["class_id"] for p in result["predictions"]]
            assert ids[0] == int(reference.argmax())
            assert [p["name"] for p in result["predictions"]] == [labels[i] for i in ids]
            np.testing.assert_allclose([p["probability"] for p in result["predictions"]], reference[ids], atol=FLOAT_TOLERANCE)
    assert (tmp_path / "cache" / "params.npz").is_file()  # fetched from the file:// URL, nothing else


# ----------------------------------------------------------------------------- command line


def test_command_outputs_parse_back_and_unreadable_files_are_reported(exported_run, images, capsys):
    run, _ = exported_run
    folder, readable, readme = images
    argv = [str(run), str(folder), str(readme), "--top-k", str(TOP_K), "--batch-size", "2"]

    assert predict.main([*argv, "--json"]) == 1
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert [r["file"] for r in data["results"]] == [str(f) for f in readable]
    assert all(len(r["predictions"]) == TOP_K and set(r["predictions"][0]) == {"class_id", "name", "probability"} for r in data["results"])
    assert [e["file"] for e in data["errors"]] == [str(folder / "broken.png"), str(readme)]
    for bad in (folder / "broken.png", readme):  # named on stderr, with the reason
        assert any(str(bad) in line and "skipped" in line for line in captured.err.splitlines()), captured.err
    # A progress bar on stderr: 5 files in the folder walk + readme.txt, 2 per batch.
    assert "6/6" in captured.err and "6/6" not in captured.out
    assert "4 images predicted, 2 files could not be read" in captured.err and "Traceback" not in captured.err

    assert predict.main([*argv, "--csv"]) == 1
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == len(readable) * TOP_K
    assert list(rows[0]) == ["file", "rank", "class_id", "name", "probability"]
    for row in rows:
        result = data["results"][[str(f) for f in readable].index(row["file"])]
        prediction = result["predictions"][int(row["rank"]) - 1]
        assert (int(row["class_id"]), row["name"]) == (prediction["class_id"], prediction["name"])
        assert float(row["probability"]) == pytest.approx(prediction["probability"], abs=1e-6)

    assert predict.main(argv) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["file", "top-1", "top-2", "top-3"] and len(lines) == 1 + len(readable)
    for line, result in zip(lines[1:], data["results"]):
        top = result["predictions"][0]
        assert line.startswith(result["file"]) and f"{top['name']} ({top['probability']:.4f})" in line


def test_exit_code_is_0_when_every_file_is_read(exported_run, images, capsys):
    run, _ = exported_run
    _, readable, _ = images
    assert predict.main([str(run / "model.keras"), *map(str, readable[2:]), "--top-k", "1"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 3 and "skipped" not in captured.err


def test_bad_input_exits_2_with_one_clear_line(exported_run, images, tmp_path, capsys):
    run, export = exported_run
    folder, readable, readme = images
    image = str(readable[0])
    (tmp_path / "empty").mkdir()
    (tmp_path / "lonely").mkdir()
    shutil.copy(export / "model_float32.tflite", tmp_path / "lonely" / "model.tflite")
    cases = [
        ([str(tmp_path / "missing.keras"), image], f"{tmp_path / 'missing.keras'} does not exist"),
        ([str(run)], "no IMAGES given"),
        ([], "no SOURCE given"),
        ([str(run), str(tmp_path / "empty")], f"no images found in {tmp_path / 'empty'}"),
        ([str(run), str(tmp_path / "gone.png")], f"no images found in {tmp_path / 'gone.png'} ({tmp_path / 'gone.png'} does not exist)"),
        ([str(tmp_path / "empty"), image], f"{tmp_path / 'empty'} is a folder without model.keras"),
        ([str(export), image], f"{export} is a `keras-vit export` folder: give its saved_model folder"),
        ([str(tmp_path / "lonely" / "model.tflite"), image], "predict needs the export_report.json"),
        ([str(readme), image], f"{readme} is not a .keras, .tflite or .onnx file"),
        (["--model", "ViTX99", "--weights", "augreg_in21k", image], "unknown --model 'ViTX99'"),
        (["--weights", "augreg_in21k", image], "--model VARIANT and --weights NAME_OR_PATH go together"),
        (["--model", "ViTTi16", "--weights", "no_such_weights", image], "weights='no_such_weights' is not an existing file"),
        ([str(run), image, "--image-size", "32"], "--image-size applies to --model/--weights only"),
        ([str(run), image, "--top-k", "0"], "--top-k must be at least 1, got 0"),
    ]
    for argv, message in cases:
        assert_bad_input(capsys, argv, message)


def test_keras_vit_predict_command_prints_only_results_on_stdout(exported_run, images):
    _, export = exported_run
    folder, readable, _ = images
    result = subprocess.run(
        [str(KERAS_VIT), "predict", str(export / "model_float32.tflite"), str(folder), "--csv", "--top-k", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["file", "rank", "class_id", "name", "probability"] and len(rows) == 1 + 2 * len(readable)
    assert f"skipped: Cannot read {folder / 'broken.png'}" in result.stderr and "Traceback" not in result.stderr


def test_one_path_given_as_a_string_is_named_whole(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(predict.PredictError, match=re.escape(f"no images found in {tmp_path / 'empty'}.")):
        predict.images_to_process(str(tmp_path / "empty"))


def test_a_model_without_labels_is_shown_and_exported_under_the_same_names(tmp_path):
    """predict and export name the outputs of a label-less model alike: ImageNet-1k's for
    1000 classes, `class_i` for a size no label set has."""
    from conftest import tiny_vit

    from keras_vit.export.source import ExportSource

    for num_classes, first in ((1000, "tench"), (7, "class_0")):
        model = tiny_vit(num_classes=num_classes)
        assert model.vit_config.labels is None
        shown = predict.load_predictor(model).class_names
        exported = ExportSource(model_path=tmp_path / "model.keras", model=model).class_names
        assert shown == exported and len(shown) == num_classes and shown[0] == first
