"""Forward-convolution input gradients (tumorclf.training.conv_gradient): the same gradients as TensorFlow's
own, only on the convolutions where that holds, and a model that saves and loads as before."""

from __future__ import annotations

import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tumorclf.training.conv_gradient import eligible, use_forward_input_gradients


def model_of(*layers: keras.layers.Layer, size: int = 9, channels: int = 3) -> keras.Model:
    inputs = keras.Input((size, size, channels))
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


def gradients(model: keras.Model, x: np.ndarray) -> list[np.ndarray]:
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(model(x) ** 2)
    return [g.numpy() for g in tape.gradient(loss, [x, *model.trainable_variables])]


def build_pair(seed: int = 0):
    """Two copies of one model with 3x3 and 5x5 'same' convolutions (forward input gradients), a 3x3 stride-2
    and a 'valid' one (TensorFlow's), and a 1x1 with a relu."""
    def build():
        keras.utils.set_random_seed(seed)
        return model_of(keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
                        keras.layers.Conv2D(6, 5, padding="same"),
                        keras.layers.Conv2D(6, 3, strides=2, padding="same"),
                        keras.layers.Conv2D(4, 3, padding="valid"),
                        keras.layers.Conv2D(4, 1, padding="same", activation="relu"))
    return build(), build()


def test_the_gradients_are_tensorflows_own():
    plain, forward = build_pair()
    assert use_forward_input_gradients(forward) == 3  # the two 'same' stride-1 odd kernels and the 1x1
    x = np.random.default_rng(0).normal(size=(4, 9, 9, 3)).astype("float32")
    np.testing.assert_allclose(forward.predict(x, verbose=0), plain.predict(x, verbose=0), rtol=1e-6)
    for mine, theirs in zip(gradients(forward, x), gradients(plain, x), strict=True):
        assert np.abs(theirs).max() > 0
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-6)


def test_only_convolutions_whose_input_gradient_is_a_forward_one():
    assert eligible(keras.layers.Conv2D(4, 3, padding="same"))
    assert eligible(keras.layers.Conv2D(4, (1, 3), padding="same"))
    assert not eligible(keras.layers.Conv2D(4, 2, padding="same"))  # an even kernel pads one side more
    assert not eligible(keras.layers.Conv2D(4, 3, padding="valid"))
    assert not eligible(keras.layers.Conv2D(4, 3, strides=2, padding="same"))
    assert not eligible(keras.layers.Conv2D(4, 3, dilation_rate=2, padding="same"))
    assert not eligible(keras.layers.DepthwiseConv2D(3, padding="same"))
    assert not eligible(keras.layers.Dense(4))


def test_nested_models_and_training_match(tmp_path: Path):
    """A model nested in another gets them too; a few steps of SGD give the same weights; the saved model is
    made of Keras' own Conv2D and loads without tumorclf's help."""
    def build():
        keras.utils.set_random_seed(1)
        inner = model_of(keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
                         keras.layers.Conv2D(8, 3, padding="same", activation="relu"), size=8)
        inputs = keras.Input((8, 8, 3))
        outer = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inner(inputs)))
        outer.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
        return outer

    plain, forward = build(), build()
    assert use_forward_input_gradients(forward) == 2
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(16, 8, 8, 3)).astype("float32"), np.eye(2)[rng.integers(0, 2, 16)]
    for model in (plain, forward):
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    for mine, theirs in zip(forward.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-6)
    forward.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as archive:
        config = archive.read("config.json").decode()
    assert config.count('"class_name": "Conv2D"') == 2 and "tumorclf" not in config
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), forward.predict(x, verbose=0), rtol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_bfloat16"])
def test_under_a_mixed_precision_policy(policy: str):
    keras.mixed_precision.set_global_policy(policy)
    try:
        plain, forward = build_pair()
        use_forward_input_gradients(forward)
        x = np.random.default_rng(3).normal(size=(2, 9, 9, 3)).astype("float32")
        for mine, theirs in zip(gradients(forward, x), gradients(plain, x), strict=True):
            assert mine.dtype == theirs.dtype
            np.testing.assert_allclose(mine, theirs, rtol=0.05, atol=0.05 * np.abs(theirs).max())
    finally:
        keras.mixed_precision.set_global_policy("float32")
