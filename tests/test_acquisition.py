from __future__ import annotations

from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

from tumorclf.transforms.acquisition import RandomAcquisition
from tumorclf.training.callbacks import EpochSeeding, seed_states
from tumorclf.transforms.pipeline import augmenter, make_train_dataset

OFF = dict(bias=0.0, gamma=0.0, contrast=0.0, brightness=0.0, sharpness=0.0, resample=0.0, noise=0.0)


def images(n=8, size=16, low=0.0, high=255.0, seed=0):
    return np.random.default_rng(seed).uniform(low, high, (n, size, size, 3)).astype(np.float32)


def only(seed=0, **limits):
    """A layer that always applies the changes in `limits` (at full strength) and none of the others."""
    return RandomAcquisition(strength=1.0, probability=1.0, seed=seed, **{**OFF, **limits})


def test_identity_outside_training_and_at_zero_strength_or_probability():
    """training=False, strength=0 and probability=0 each return the batch exactly."""
    x = images()
    np.testing.assert_array_equal(RandomAcquisition(probability=1, seed=0)(x, training=False), x)
    np.testing.assert_array_equal(RandomAcquisition(strength=0, probability=1, seed=0)(x, training=True), x)
    np.testing.assert_array_equal(RandomAcquisition(probability=0, seed=0)(x, training=True), x)
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, RandomAcquisition(probability=1, seed=0)(inputs))
    np.testing.assert_array_equal(model.predict(x, verbose=0), x)  # inference


def test_training_output_is_in_range_same_shape_and_changed():
    """At full strength and probability the output differs from the input, stays float32 and in [0, 255]."""
    x = images()
    out = np.asarray(RandomAcquisition(strength=1, probability=1, seed=0)(x, training=True))
    assert out.shape == x.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255
    assert (np.abs(out - x).mean(axis=(1, 2, 3)) > 1).all()  # every image changed


def test_same_seed_same_output_and_other_seed_differs():
    """Two layers with one seed give identical batches; another seed gives another batch."""
    x = images()
    first = np.asarray(RandomAcquisition(seed=3)(x))
    np.testing.assert_array_equal(RandomAcquisition(seed=3)(x), first)
    assert not np.allclose(RandomAcquisition(seed=4)(x), first)


def test_epoch_seeding_reset_reproduces_the_output():
    """After EpochSeeding resets the seed state for an epoch, a layer (even a fresh one) repeats its output."""
    x = images()

    def seeded_layer():
        data = SimpleNamespace(epoch=tf.Variable(0, dtype=tf.int64),
                               augmentation=keras.Sequential([RandomAcquisition(seed=5)]))
        seeding = EpochSeeding(5, data)
        inputs = keras.Input((2,))
        seeding.set_model(keras.Model(inputs, keras.layers.Dropout(0.5)(inputs)))
        return data.augmentation, seeding

    augmentation, seeding = seeded_layer()
    assert len(seed_states(augmentation)) == 1  # the layer's seed generator is what gets reset
    seeding.on_epoch_begin(0)
    epoch0 = np.asarray(augmentation(x, training=True))
    assert not np.array_equal(augmentation(x, training=True), epoch0)  # the state advances
    seeding.on_epoch_begin(1)
    assert not np.array_equal(augmentation(x, training=True), epoch0)
    seeding.on_epoch_begin(0)
    np.testing.assert_array_equal(augmentation(x, training=True), epoch0)
    fresh, fresh_seeding = seeded_layer()  # as in a resumed run: a new layer, reset to the epoch
    fresh_seeding.on_epoch_begin(0)
    np.testing.assert_array_equal(fresh(x, training=True), epoch0)


def test_gamma_alone_is_a_monotone_power_curve_within_its_limit():
    """With only gamma on, each image is mapped by 255 (x / 255) ** g with exp(-gamma) <= g <= exp(gamma)."""
    x = images(low=5.0, high=250.0)
    out = np.asarray(only(gamma=0.4)(x))
    exponents = np.log(out / 255) / np.log(x / 255)
    for per_pixel in exponents:
        assert per_pixel.std() < 1e-3  # one exponent per image: a monotone function of the input
    g = exponents.mean(axis=(1, 2, 3))
    assert (g >= np.exp(-0.4) - 1e-3).all() and (g <= np.exp(0.4) + 1e-3).all() and g.std() > 0.05
    for image, result in zip(x.reshape(len(x), -1), out.reshape(len(x), -1)):
        assert (np.diff(result[np.argsort(image)]) >= -1e-3).all()


def test_brightness_and_contrast_alone_stay_within_their_limits():
    """Brightness alone shifts each image by at most brightness x 255; contrast alone scales about the mean
    by a factor in [exp(-contrast), exp(contrast)]."""
    x = images(low=100.0, high=150.0)  # mid-grey: no clipping
    shift = np.asarray(only(brightness=0.1)(x)) - x
    per_image = shift.mean(axis=(1, 2, 3))
    np.testing.assert_allclose(shift, np.broadcast_to(per_image.reshape(-1, 1, 1, 1), shift.shape), atol=1e-3)
    assert np.abs(per_image).max() <= 25.5 + 1e-3 and per_image.std() > 3
    clipped = images(seed=1)  # with clipping the mean moves by at most as much
    assert np.abs(np.asarray(only(brightness=0.1)(clipped)).mean(axis=(1, 2, 3))
                  - clipped.mean(axis=(1, 2, 3))).max() <= 25.5
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    away = np.abs(x - mean) > 5  # pixels near the mean would only measure round-off
    factor = np.where(away, (np.asarray(only(contrast=0.3)(x)) - mean) / np.where(away, x - mean, 1), np.nan)
    assert np.nanmin(factor) >= np.exp(-0.3) - 1e-3 and np.nanmax(factor) <= np.exp(0.3) + 1e-3
    assert np.nanstd(factor, axis=(1, 2, 3)).max() < 1e-3 and np.nanmean(factor, axis=(1, 2, 3)).std() > 0.05


def test_bias_field_noise_blur_and_resampling_stay_within_their_limits():
    """Bias field: |log(out / in)| <= 5 x bias; noise: residual std <= noise x 255; blur/sharpening and
    resampling leave a flat image flat (away from the border the blur's zero padding reaches)."""
    x = images(low=20.0, high=80.0)
    log_ratio = np.log(np.asarray(only(bias=0.3)(x)) / x)
    assert np.abs(log_ratio).max() <= 1.5 + 1e-3 and np.abs(log_ratio).max() > 0.1
    grey = np.full((8, 16, 16, 3), 128.0, np.float32)
    residual_std = (np.asarray(only(noise=0.03)(grey)) - grey).std(axis=(1, 2, 3))
    assert residual_std.max() <= 0.03 * 255 * 1.15 and residual_std.max() > 1
    np.testing.assert_allclose(np.asarray(only(sharpness=1.0)(grey))[:, 2:-2, 2:-2], 128.0, atol=1e-3)
    np.testing.assert_allclose(only(resample=1.0)(grey), grey, atol=1e-3)


def test_augmenter_adds_the_layer_only_when_asked():
    """augmenter(seed, acquisition=True) ends with a RandomAcquisition layer; augmenter(seed) has none."""
    assert not any(isinstance(layer, RandomAcquisition) for layer in augmenter(7, 16).layers)
    layers = [layer for layer in augmenter(7, 16, acquisition=True).layers if isinstance(layer, RandomAcquisition)]
    assert len(layers) == 1 and layers[0].seed == 15


def test_train_dataset_with_acquisition_is_reproducible_per_epoch():
    """In the tf.data pipeline (graph mode) the acquisition changes repeat for the same epoch and stay in range."""
    x = images(n=12).astype(np.uint8)
    data = make_train_dataset(x, np.arange(12) % 2, batch_size=12, seed=2, deterministic=True, acquisition=True)
    seeding = EpochSeeding(2, data)
    inputs = keras.Input((2,))
    seeding.set_model(keras.Model(inputs, inputs))
    runs = []
    for epoch in (0, 1, 0):
        seeding.on_epoch_begin(epoch)
        runs.append(np.concatenate([batch.numpy() for batch, _ in data.dataset]))
    np.testing.assert_array_equal(runs[0], runs[2])
    assert not np.array_equal(runs[0], runs[1]) and runs[0].min() >= 0 and runs[0].max() <= 255


@pytest.mark.parametrize("kwargs", [dict(strength=1.5), dict(strength=-0.1), dict(probability=1.1),
                                    dict(gamma=-0.1), dict(noise=-0.01), dict(resample=1.5)])
def test_invalid_arguments_raise(kwargs):
    """strength and probability outside [0, 1], negative limits and resample > 1 are rejected."""
    with pytest.raises(ValueError):
        RandomAcquisition(**kwargs)


def test_config_round_trip():
    """get_config/from_config keep every argument, and the clone draws the same changes."""
    layer = RandomAcquisition(strength=0.5, probability=0.8, bias=0.2, gamma=0.1, contrast=0.2, brightness=0.05,
                              sharpness=0.5, resample=0.7, noise=0.01, seed=9)
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(clone, RandomAcquisition)
    assert (clone.strength, clone.probability, clone.seed, clone.limits) == (0.5, 0.8, 9, layer.limits)
    x = images()
    np.testing.assert_array_equal(clone(x), layer(x))
