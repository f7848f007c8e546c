"""RandomElastic: identity where it should be, bounded smooth warps, determinism, serialisation."""

from __future__ import annotations

from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

from tumorclf.training.callbacks import EpochSeeding, seed_states
from tumorclf.transforms.elastic import RandomElastic, _bilinear
from tumorclf.transforms.pipeline import augmenter


def images(n=6, size=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def test_identity_outside_training_and_at_zero_magnitude_or_probability():
    """training=False, magnitude=0 and probability=0 each return the batch exactly; so does inference."""
    x = images()
    np.testing.assert_array_equal(RandomElastic(probability=1, seed=0)(x, training=False), x)
    np.testing.assert_array_equal(RandomElastic(magnitude=0, probability=1, seed=0)(x, training=True), x)
    np.testing.assert_array_equal(RandomElastic(probability=0, seed=0)(x, training=True), x)
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, RandomElastic(probability=1, seed=0)(inputs))
    np.testing.assert_array_equal(model.predict(x, verbose=0), x)


def test_bilinear_sampling_at_integer_and_half_pixel_positions():
    """At the pixel grid the sampler returns the pixels; half a pixel to the right, the mean of two
    neighbours; outside the image, zero."""
    x = images(2, 8)
    rows = np.broadcast_to(np.arange(8, dtype=np.float32)[None, :, None], (2, 8, 8))
    cols = np.broadcast_to(np.arange(8, dtype=np.float32)[None, None, :], (2, 8, 8))
    np.testing.assert_allclose(_bilinear(x, rows, cols), x, atol=1e-4)
    shifted = np.asarray(_bilinear(x, rows, cols + 0.5))
    np.testing.assert_allclose(shifted[:, :, :7], (x[:, :, :7] + x[:, :, 1:]) / 2, atol=1e-3)
    np.testing.assert_allclose(np.asarray(_bilinear(x, rows, cols + 20)), 0.0)


def test_warps_are_smooth_bounded_and_not_mirror_symmetric():
    """A warped vertical line moves by at most magnitude x size, bends smoothly, and a mirror-symmetric
    image stops being symmetric."""
    size, magnitude = 64, 0.06
    line = np.zeros((4, size, size, 3), np.float32)
    line[:, :, 31:33] = 255.0
    out = np.asarray(RandomElastic(magnitude=magnitude, probability=1, seed=3)(line, training=True))[..., 0]
    inner = out[:, 8:-8]  # rows near the top and bottom may be pulled in from outside the image (black)
    assert (inner.sum(2) > 255).all()
    centre = (inner * np.arange(size)).sum(2) / inner.sum(2)  # the line's column, per row
    assert np.abs(centre - 31.5).max() <= magnitude * size + 1
    assert np.abs(np.diff(centre, axis=1)).max() < 1.0  # smooth: neighbouring rows move alike
    assert np.abs(centre - 31.5).max() > 0.5  # and it did move
    symmetric = images(4, size)
    symmetric = (symmetric + symmetric[:, :, ::-1]) / 2
    warped = np.asarray(RandomElastic(magnitude=magnitude, probability=1, seed=4)(symmetric, training=True))
    assert np.abs(warped - warped[:, :, ::-1]).mean() > 5 * np.abs(symmetric - symmetric[:, :, ::-1]).mean() + 1


def test_probability_picks_whole_images():
    """With probability 0.5 some images are warped and the others pass exactly unchanged."""
    x = images(32)
    out = np.asarray(RandomElastic(probability=0.5, seed=5)(x, training=True))
    unchanged = [np.array_equal(a, b) for a, b in zip(out, x)]
    assert 4 <= sum(unchanged) <= 28


def test_same_seed_same_warp_and_epoch_seeding_reproduces_it():
    """Two layers with one seed warp alike, another seed differently, and resetting the seed state as
    `EpochSeeding` does at an epoch start gives the epoch's warp again (what resume relies on)."""
    x = images()
    first = np.asarray(RandomElastic(probability=1, seed=7)(x, training=True))
    np.testing.assert_array_equal(RandomElastic(probability=1, seed=7)(x, training=True), first)
    assert not np.array_equal(RandomElastic(probability=1, seed=8)(x, training=True), first)
    augmentation = augmenter(7, 32, elastic=True)
    seeding = EpochSeeding(1, SimpleNamespace(epoch=tf.Variable(0, dtype=tf.int64), augmentation=augmentation))
    seeding.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    seeding.on_epoch_begin(3)
    epoch3 = np.asarray(augmentation(x, training=True))
    augmentation(x, training=True)
    seeding.on_epoch_begin(3)
    np.testing.assert_array_equal(augmentation(x, training=True), epoch3)


def test_the_augmenter_is_the_same_on_its_first_call_under_mixed_precision():
    """Under a bfloat16 policy the augmenter's first call equals its later ones at the same seed state (a
    Sequential built by its first call would cast that batch differently)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        augmentation = augmenter(7, 32, acquisition=True, elastic=True)
        states = seed_states(augmentation)
        start = [state.numpy().copy() for state in states]
        x = images()
        first = np.asarray(augmentation(x, training=True))
        for state, value in zip(states, start):
            state.assign(value)
        np.testing.assert_array_equal(np.asarray(augmentation(x, training=True)), first)
    finally:
        keras.config.set_dtype_policy(previous)


def test_augmenter_puts_the_warp_first_only_when_asked():
    assert isinstance(augmenter(7, 16, elastic=True).layers[0], RandomElastic)
    assert not any(isinstance(layer, RandomElastic) for layer in augmenter(7, 16).layers)


@pytest.mark.parametrize("kwargs", [{"magnitude": -0.1}, {"magnitude": 0.6}, {"grid": 1}, {"probability": 1.5}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        RandomElastic(**kwargs)


def test_config_round_trip():
    layer = RandomElastic(magnitude=0.1, grid=5, probability=0.3, seed=9)
    clone = RandomElastic.from_config(layer.get_config())
    assert (clone.magnitude, clone.grid, clone.probability, clone.seed) == (0.1, 5, 0.3, 9)
    x = images()
    np.testing.assert_array_equal(clone(x, training=True), layer(x, training=True))
