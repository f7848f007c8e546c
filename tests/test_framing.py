from __future__ import annotations

import keras
import numpy as np
import pytest

from tumorclf.transforms.framing import ForegroundCrop
from tumorclf.models.factory import load_model

SIZE = 64


def square(cy: int, cx: int, side: int, size: int = SIZE) -> np.ndarray:
    """A bright square of `side` pixels centred near (cy, cx) on black, with a darker top-left quadrant
    (so a flip or a rotation would show)."""
    image = np.zeros((size, size, 3), np.float32)
    top, left = cy - side // 2, cx - side // 2
    image[top:top + side, left:left + side] = 200.0
    image[top:cy, left:cx] = 100.0
    return image


def bright(out: np.ndarray) -> np.ndarray:
    """Mask of the pixels of the object (above half of the darker quadrant)."""
    return np.asarray(out)[..., 0] > 50


def test_boxes_give_centre_and_side_with_margin_and_min_fraction_floor():
    """`boxes` is the bbox centre and its longer side * (1 + 2 margin), at least min_fraction of the image."""
    images = np.stack([square(18, 22, 16), square(40, 36, 32), square(30, 30, 3)])
    images[0, 10:14, 20:24] = 0  # a hole inside does not change the box
    cx, cy, side = (np.asarray(v) for v in ForegroundCrop(margin=0.05).boxes(images))
    np.testing.assert_allclose(cx, [21.5, 35.5, 30.0])  # columns 14..29, 20..51, 29..31
    np.testing.assert_allclose(cy, [17.5, 39.5, 30.0])
    np.testing.assert_allclose(side, [16 * 1.1, 32 * 1.1, 0.25 * SIZE], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ForegroundCrop(margin=0.25, min_fraction=0.1).boxes(images)[2]),
                               [16 * 1.5, 32 * 1.5, 0.1 * SIZE], rtol=1e-6)


def test_boxes_threshold_is_relative_to_the_brightest_pixel():
    """Pixels at or below threshold x the image's peak channel mean are background, at any exposure."""
    image = square(32, 32, 20)
    image[2:6, 2:6] = 15.0  # dim noise in a corner: 15 < 0.1 * 200
    for exposure in (1.0, 0.2):
        cx, cy, side = (float(v[0]) for v in ForegroundCrop().boxes(image[None] * exposure))
        assert (cx, cy) == (31.5, 31.5) and side == pytest.approx(22.0)
    cx, _, side = (float(v[0]) for v in ForegroundCrop(threshold=0.05).boxes(image[None]))
    assert (cx, side) == (21.5, pytest.approx(44.0))  # a lower threshold takes the corner in: columns 2..41


def test_crop_centres_the_object_and_fills_the_expected_fraction():
    """After the crop the object is centred, upright, and spans 1 / (1 + 2 margin) of the output."""
    images = np.stack([square(18, 22, 16), square(30, 30, 3)])
    out = np.asarray(ForegroundCrop()(images))
    assert out.shape == images.shape and out.dtype == np.float32

    def extent(image, through):  # first and last pixel above half the 200 level, along a row and a column
        return [tuple(np.flatnonzero(line > 100)[[0, -1]]) for line in (image[through, :, 0], image[:, through, 0])]

    assert extent(out[0], 47) == [(3, 60)] * 2  # 64 / 1.1 = 58.2 px around the centre 31.5
    assert abs(bright(out[0]).sum() - (SIZE / 1.1) ** 2) < 4 * SIZE
    assert out[0, 15, 15, 0] == pytest.approx(100, abs=1) and out[0, 47, 47, 0] == pytest.approx(200, abs=1)
    assert extent(out[1], 36) == [(26, 37)] * 2  # a 3 px blob: the min_fraction crop (16 px) magnifies it 4x


def test_same_object_at_other_position_and_scale_gives_nearly_the_same_output():
    """Translation and scale invariance: a 16 px and a 32 px copy at different places crop alike."""
    out = np.asarray(ForegroundCrop()(np.stack([square(18, 22, 16), square(40, 36, 32)])))
    assert np.abs(out[0] - out[1]).mean() < 8  # of 0-255; the differences are at the blurred edges
    assert (bright(out[0]) != bright(out[1])).mean() < 0.02


def test_black_image_is_unchanged_and_uniform_image_only_gets_the_margin_border():
    """No foreground: passes unchanged. All foreground: shrunk by 1 + 2 margin (black border), none at margin 0."""
    black, grey = np.zeros((1, SIZE, SIZE, 3), np.float32), np.full((1, SIZE, SIZE, 3), 120.0, np.float32)
    np.testing.assert_array_equal(ForegroundCrop()(black), black)
    np.testing.assert_allclose(ForegroundCrop(margin=0.0)(grey), grey, atol=1e-3)
    out = np.asarray(ForegroundCrop(margin=0.05)(grey))[0, ..., 0]
    np.testing.assert_allclose(out[4:-4, 4:-4], 120.0, atol=1e-3)  # the middle is still the image
    assert out[0].max() == 0 and out[:, 0].max() == 0 and out[SIZE // 2, 2] < 120  # edges are black


@pytest.mark.parametrize("kwargs", [dict(threshold=1.0), dict(threshold=-0.1), dict(margin=-0.01),
                                    dict(margin=1.5), dict(min_fraction=0.0), dict(min_fraction=1.1)])
def test_invalid_arguments_raise(kwargs):
    """Out-of-range threshold, margin or min_fraction are rejected."""
    with pytest.raises(ValueError):
        ForegroundCrop(**kwargs)


def test_config_round_trip_and_saved_model_give_identical_outputs(tmp_path):
    """get_config/from_config keep the arguments; a saved and reloaded model crops identically."""
    layer = ForegroundCrop(threshold=0.2, margin=0.1, min_fraction=0.3, name="framing")
    clone = ForegroundCrop.from_config(layer.get_config())
    assert (clone.threshold, clone.margin, clone.min_fraction) == (0.2, 0.1, 0.3)
    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, layer(inputs))
    images = np.stack([square(18, 22, 16), square(40, 36, 32)])
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    assert isinstance(loaded.get_layer("framing"), ForegroundCrop)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), model.predict(images, verbose=0))
    np.testing.assert_array_equal(clone(images), layer(images))


def test_runs_in_float32_inside_a_mixed_bfloat16_model():
    """Under the mixed_bfloat16 policy the layer still computes and outputs float32, with the same crop."""
    images = np.stack([square(18, 22, 16), square(40, 36, 32)])
    expected = np.asarray(ForegroundCrop()(images))
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        inputs = keras.Input((SIZE, SIZE, 3))
        model = keras.Model(inputs, ForegroundCrop()(inputs))
        out = model.predict(images, verbose=0)
    finally:
        keras.config.set_dtype_policy(previous)
    assert out.dtype == np.float32 and out.shape == images.shape
    np.testing.assert_allclose(out, expected, atol=1e-3)


def test_a_non_square_image_is_cropped_to_a_square_of_its_pixels():
    """On a 32x64 image a 16 px square comes back whole, filling 1/1.1 of each side (a stretched square crop)."""
    x = np.zeros((1, 32, 64, 3), np.float32)
    x[:, 8:24, 24:40] = 200
    out = np.asarray(ForegroundCrop(margin=0.05)(x))[0, ..., 0]
    rows, cols = np.nonzero(out > 100)
    assert rows.min() >= 1 and rows.max() <= 30  # black margin top and bottom: nothing cut off
    assert abs((rows.max() - rows.min() + 1) - 32 / 1.1) <= 2 and abs((cols.max() - cols.min() + 1) - 64 / 1.1) <= 2
