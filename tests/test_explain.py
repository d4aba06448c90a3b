"""keras_vit.explain / `keras-vit explain`: one PNG per readable image, the --layers grid,
exported artifacts refused, and the normalised rollout of a model whose attention is known."""

import json

import numpy as np
import pytest
from conftest import tiny_vit
from PIL import Image
from test_predict import write_images

import keras_vit
from keras_vit import explain, predict
from keras_vit.predict import PredictError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASS_NAMES = [f"thing {i}" for i in range(10)]
LOOKED_AT = (1, 2)  # the patch (row, column) of the 4x4 grid the designed model attends to


def pixels(num_lines, num_blocks=0):
    width, height = explain.figure_size(num_lines, num_blocks)
    return round(width * explain.DPI), round(height * explain.DPI)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{pooling: a run folder written by hand}: a tiny 2-block ViT with its class names, with a
    class token ("token") and without ("gap")."""
    folders = {}
    for pooling in ("token", "gap"):
        folder = tmp_path_factory.mktemp(f"explain_run_{pooling}")
        tiny_vit(num_layers=2, pooling=pooling, labels=CLASS_NAMES).save(folder / "model.keras")
        (folder / "metrics.json").write_text(json.dumps({"model": "model.keras"}))
        folders[pooling] = folder
    return folders


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """(folder, readable files): the images of test_predict plus sub/a.jpg, whose PNG name
    collides with a.png's."""
    folder = tmp_path_factory.mktemp("explain_images") / "photos"
    readable = write_images(folder)
    Image.fromarray(np.full((12, 40, 3), 200, np.uint8)).save(folder / "sub" / "a.jpg")
    return folder, readable + [folder / "sub" / "a.jpg"]


def test_one_png_per_readable_image_named_after_it(runs, images, tmp_path, capsys):
    folder, readable = images
    out = tmp_path / "explained"
    assert explain.main([str(runs["token"]), str(folder), "--out", str(out), "--top-k", "2"]) == 1  # broken.png
    captured = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_2.png", "b.png", "gray.png", "rgba.png"]  # no temp files left
    assert len(captured.out.splitlines()) == len(readable)
    assert f"skipped: Cannot read {folder / 'broken.png'}" in captured.err and "Traceback" not in captured.err
    for png in out.iterdir():
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(png) as image:
            assert image.format == "PNG" and image.size == pixels(1 + 2)  # the file name and 2 labels


def test_figures_show_the_predictions_predict_gives(runs, images, tmp_path):
    _, readable = images
    written, errors = explain.explain(runs["token"], readable[:2], tmp_path / "out", top_k=3)
    results, _ = predict.predict(runs["token"], readable[:2], top_k=3)
    assert errors == [] and [w["png"] for w in written] == [str(tmp_path / "out" / "a.png"), str(tmp_path / "out" / "b.png")]
    assert [(w["file"], w["predictions"]) for w in written] == [(r["file"], r["predictions"]) for r in results]
    assert all(p["name"] == CLASS_NAMES[p["class_id"]] for w in written for p in w["predictions"])


@pytest.mark.parametrize("pooling", ["token", "gap"])
def test_layers_add_a_grid_of_block_maps(runs, images, tmp_path, pooling):
    _, readable = images
    for layers in (False, True):
        explain.explain(runs[pooling], readable[:1], tmp_path / str(layers), top_k=1, layers=layers)
    with Image.open(tmp_path / "False" / "a.png") as plain, Image.open(tmp_path / "True" / "a.png") as with_layers:
        assert plain.size == pixels(2) and with_layers.size == pixels(2, num_blocks=2)
        assert with_layers.size[0] == plain.size[0] and with_layers.size[1] > plain.size[1]


def test_exported_artifacts_are_refused(images, tmp_path, capsys):
    _, readable = images
    (tmp_path / "export" / "saved_model").mkdir(parents=True)
    (tmp_path / "export" / "saved_model" / "saved_model.pb").write_bytes(b"")
    for name in ("model_float32.tflite", "model.onnx"):
        (tmp_path / "export" / name).write_bytes(b"")
    for artifact, runtime in (("saved_model", "saved_model"), ("model_float32.tflite", "tflite"), ("model.onnx", "onnx")):
        source = tmp_path / "export" / artifact
        assert explain.main([str(source), str(readable[0]), "--out", str(tmp_path / "out")]) == 2
        captured = capsys.readouterr()
        assert captured.err.strip() == (
            f"keras-vit explain: error: {source} is an exported {runtime} artifact: explain reads the attention of the Keras "
            "model; give the training run folder, its .keras file or --model/--weights."
        )
        with pytest.raises(PredictError, match="explain reads the attention of the Keras model"):
            explain.explain(source, [readable[0]], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def looking_at_one_patch(pooling, attend=True):
    """A tiny ViT whose every query attends most to the patch LOOKED_AT, equally little to
    every other token, whatever the image: the patch embedding, class token and every
    residual branch are 0, so the tokens are their position embeddings, all 0 but the
    looked-at patch's (a +-1 vector v, which the LayerNorm keeps); the queries are the bias
    (1, ..., 1) and the keys `LN(token) * v`: (1, ..., 1) for that patch, 0 for the others.
    With `attend=False` every key is 0: the attention is uniform."""
    model = tiny_vit(num_layers=2, pooling=pooling)
    dim = model.vit_config.hidden_dim
    grid_h, grid_w = model.vit_config.grid_size
    v = np.where(np.arange(dim) % 2 == 0, 1.0, -1.0)
    for weight in model.weights:
        value = np.zeros(weight.shape, np.float32)
        if weight.path.endswith("attention_norm/gamma"):
            value[:] = 1.0
        elif weight.path.endswith("position_embedding/embedding") and attend:
            value[0, weight.shape[1] - grid_h * grid_w + LOOKED_AT[0] * grid_w + LOOKED_AT[1]] = v
        elif weight.path.endswith("attention/qkv/kernel"):
            value[:, dim : 2 * dim] = np.diag(v)
        elif weight.path.endswith("attention/qkv/bias"):
            value[:dim] = 1.0
        weight.assign(value)
    return model


@pytest.mark.parametrize("pooling", ["token", "gap"])
def test_rollout_heat_map_of_a_model_that_looks_at_one_patch(pooling):
    model = looking_at_one_patch(pooling)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
    one_hot = np.zeros(model.vit_config.grid_size, np.float32)
    one_hot[LOOKED_AT] = 1.0
    raw = keras_vit.attention_rollout(model, x)
    assert raw.max() < 0.9 and np.all(raw > 0)  # rollout itself is not in [0, 1] min-max form
    for head_fusion in ("mean", "max", "min"):
        heat, blocks = explain.heat_maps(model, x, head_fusion=head_fusion, layers=True)
        np.testing.assert_allclose(heat, np.broadcast_to(one_hot, heat.shape), atol=1e-5)
        np.testing.assert_allclose(blocks, np.broadcast_to(one_hot, blocks.shape), atol=1e-5)  # [B, 2 blocks, 4, 4]

    uniform, blocks = explain.heat_maps(looking_at_one_patch(pooling, attend=False), x, layers=True)
    assert np.all(uniform == 0.0) and np.all(blocks == 0.0)  # nothing stands out: no heat at all


def test_normalise_maps_scales_each_image_to_0_1():
    maps = np.array([[[1.0, 3.0], [2.0, 5.0]], [[-2.0, -2.0], [-2.0, -2.0]], [[0.5, 0.5], [0.5, 0.5 + 1e-3]]])
    np.testing.assert_allclose(explain.normalise_maps(maps), [[[0, 0.5], [0.25, 1]], [[0, 0], [0, 0]], [[0, 0], [0, 1]]], atol=1e-6)
