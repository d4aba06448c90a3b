"""keras_vit.preprocessing: decoding any image file to RGB, the evaluation resize, Preprocessing."""

import numpy as np
import pytest
from PIL import Image

from keras_vit.preprocessing import ImageError, Preprocessing, decode_image, preprocess_input, resize_for_model, resize_uint8


def _gradient(height, width):
    """An RGB image whose pixels say where they are: red grows down, green right."""
    rows = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    cols = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    return np.stack([rows, cols, np.full_like(rows, 90)], -1).round().astype(np.uint8)


def test_exif_orientation_is_applied(tmp_path):
    pixels = _gradient(20, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    decoded = decode_image(tmp_path / "rotated.jpg")
    assert decoded.shape == (40, 20, 3)
    # After a clockwise turn, the original top row (red 0) is the right-hand column.
    assert decoded[:, -1, 0].mean() < 20 and decoded[:, 0, 0].mean() > 235


@pytest.mark.parametrize(
    "mode, make, expected",
    [
        ("L", lambda: Image.fromarray(np.full((6, 5), 77, np.uint8)), 77),
        ("RGBA", lambda: Image.fromarray(np.dstack([np.full((6, 5, 3), 120, np.uint8), np.zeros((6, 5), np.uint8)])), 120),
        ("P", lambda: Image.fromarray(np.full((6, 5, 3), 200, np.uint8)).convert("P", palette=Image.ADAPTIVE), 200),
        ("I;16", lambda: Image.fromarray(np.full((6, 5), 65535 // 2, np.uint16)), 128),
    ],
)
def test_every_mode_becomes_8_bit_rgb(tmp_path, mode, make, expected):
    image = make()
    assert image.mode == mode
    image.save(tmp_path / "image.png")
    decoded = decode_image(tmp_path / "image.png")
    assert decoded.shape == (6, 5, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - expected).max() <= 1


def test_corrupt_and_non_image_files_raise_an_image_error_naming_them(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "notes.jpg").write_text("hello")
    for name in ("broken.png", "notes.jpg"):
        with pytest.raises(ImageError, match=name):
            decode_image(tmp_path / name)
    np.testing.assert_array_equal(decode_image(_png_bytes(_gradient(4, 4))), _gradient(4, 4))  # bytes too


def _png_bytes(pixels):
    import io

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_center_crop_matches_timms_resize_then_crop():
    """timm's evaluation: shorter side to floor(size / crop_pct), longer side truncated,
    then the centre `size`; here against PIL (bicubic) doing the same by hand."""
    image = _gradient(60, 90)
    preprocessing = Preprocessing(interpolation="bicubic", crop_mode="center", crop_fraction=0.875)
    ours = np.asarray(resize_for_model(image, (32, 32), preprocessing))
    short = int(32 / 0.875)  # 36
    resized = np.asarray(Image.fromarray(image).resize((int(90 * short / 60), short), Image.BICUBIC))
    top, left = round((resized.shape[0] - 32) / 2), round((resized.shape[1] - 32) / 2)
    reference = resized[top : top + 32, left : left + 32]
    assert ours.shape == (32, 32, 3)
    assert np.abs(ours.astype(int) - reference.astype(int)).mean() < 2.0  # TF's and PIL's cubic differ slightly


def test_squash_resizes_the_whole_image_and_normalisation():
    image = _gradient(10, 30)
    squashed = np.asarray(resize_for_model(image, (8, 8), Preprocessing()))
    np.testing.assert_array_equal(squashed, np.asarray(resize_uint8(image, (8, 8))))
    assert squashed[0, 0, 1] < 30 and squashed[0, -1, 1] > 225  # both ends of the width kept
    x = np.asarray(preprocess_input(np.array([0, 255, 127.5]), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
    np.testing.assert_allclose(x, [-1.0, 1.0, 0.0], atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(interpolation="lanczos"), "Unknown interpolation 'lanczos'"),
        (dict(crop_mode="border"), "Unknown crop_mode 'border'"),
        (dict(crop_fraction=1.5), "crop_fraction must be in"),
        (dict(std=(0.5, 0.0, 0.5)), "std must be three numbers > 0"),
        (dict(mean=(0.5, 0.5)), "mean must be three numbers"),
    ],
)
def test_bad_preprocessing_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Preprocessing(**kwargs)
