"""tf.data input pipelines over decoded images, with train-only Keras augmentation."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def augmenter(seed: int) -> keras.Sequential:
    """The train-time augmentation: flips, small rotations, zooms, shifts and contrast changes."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(0.05, fill_mode="constant", seed=seed + 1),
            keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 2),
            keras.layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=seed + 3),
            keras.layers.RandomContrast(0.1, seed=seed + 4),
        ],
        name="augmentation",
    )


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    training: bool = False,
    augment: bool = True,
    seed: int = 42,
) -> tf.data.Dataset:
    """Batches of (float32 0-255 RGB, one-hot labels). Training data is shuffled and augmented.

    Images stay uint8 in memory; each batch is gathered by index, cast and (for training)
    augmented in parallel map calls, and prefetched.
    """
    pixels = tf.constant(np.ascontiguousarray(images))
    one_hot = tf.one_hot(np.asarray(labels, dtype=np.int64), 2)
    order = tf.data.Dataset.range(len(labels))
    if training:
        order = order.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    ds = order.batch(batch_size).map(
        lambda idx: (tf.cast(tf.gather(pixels, idx), tf.float32), tf.gather(one_hot, idx)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if training and augment:
        augmentation = augmenter(seed)
        ds = ds.map(
            lambda x, y: (augmentation(x, training=True), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return ds.prefetch(tf.data.AUTOTUNE)
