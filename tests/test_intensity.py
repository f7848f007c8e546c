from __future__ import annotations

import keras
import numpy as np
import pytest

from tumorclf.transforms.intensity import PercentileScaling
from tumorclf.models.factory import load_model


def images(n=4, size=16, top=255.0, seed=0):
    """Random 0-`top` images, each with its own spread, and a black border as on real slices."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, size, size, 3)) ** rng.uniform(0.5, 3, (n, 1, 1, 1)) * top
    x[:, :2] = 0
    return x.astype(np.float32)


def reference(x, low, high):
    """The layer's mapping, with numpy's (linear) percentiles per image."""
    lo = np.percentile(x.reshape(len(x), -1), low, axis=1).reshape(-1, 1, 1, 1)
    hi = np.percentile(x.reshape(len(x), -1), high, axis=1).reshape(-1, 1, 1, 1)
    return np.clip((x - lo) / (hi - lo), 0, 1) * 255


@pytest.mark.parametrize("low,high", [(0.5, 99.5), (5, 95), (0, 100), (20, 60)])
def test_matches_numpy_percentiles_per_image(low, high):
    """Each image is mapped by its own np.percentile (linear) low -> 0 and high -> 255, clipped."""
    x = images(seed=int(high))
    np.testing.assert_allclose(PercentileScaling(low, high)(x), reference(x, low, high), atol=0.02)


def test_dim_and_bright_copies_give_the_same_output():
    """Scale invariance: an image with values 0-60 and the same image x 3 are standardised alike."""
    dim = images(top=60.0)
    layer = PercentileScaling()
    np.testing.assert_allclose(layer(dim), layer(dim * 3), atol=1e-3)


def test_output_spans_0_to_255():
    """Output stays in [0, 255] and reaches both ends in every image."""
    out = np.asarray(PercentileScaling()(images(top=90.0) + 40))
    assert out.dtype == np.float32 and out.shape == (4, 16, 16, 3)
    assert out.min() >= 0 and out.max() <= 255
    np.testing.assert_array_equal(out.min(axis=(1, 2, 3)), 0)
    np.testing.assert_array_equal(out.max(axis=(1, 2, 3)), 255)


def test_flat_image_passes_unchanged():
    """An image whose low and high percentiles are equal is left as it is (others in the batch still scale)."""
    x = np.concatenate([np.full((1, 8, 8, 3), 77.0, np.float32), np.zeros((1, 8, 8, 3), np.float32),
                        images(n=1, size=8)])
    out = np.asarray(PercentileScaling()(x))
    np.testing.assert_array_equal(out[:2], x[:2])
    assert out[2].max() == 255


@pytest.mark.parametrize("low,high", [(-1, 50), (50, 50), (60, 40), (0, 101)])
def test_invalid_percentiles_raise(low, high):
    """Percentiles must satisfy 0 <= low < high <= 100."""
    with pytest.raises(ValueError):
        PercentileScaling(low, high)


def test_config_round_trip_and_saved_model_give_identical_outputs(tmp_path):
    """get_config/from_config keep the percentiles; a saved and reloaded model scales identically."""
    layer = PercentileScaling(2, 98, name="intensity")
    clone = PercentileScaling.from_config(layer.get_config())
    assert (clone.low, clone.high) == (2, 98)
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, layer(inputs))
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    assert isinstance(loaded.get_layer("intensity"), PercentileScaling)
    x = images()
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    np.testing.assert_array_equal(clone(x), layer(x))


def test_runs_in_float32_inside_a_mixed_bfloat16_model():
    """Under the mixed_bfloat16 policy the layer still computes and outputs float32."""
    x = images()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        inputs = keras.Input((16, 16, 3))
        out = keras.Model(inputs, PercentileScaling()(inputs)).predict(x, verbose=0)
    finally:
        keras.config.set_dtype_policy(previous)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, reference(x, 0.5, 99.5), atol=0.02)
