"""tf.data input pipelines over decoded images, with train-only Keras augmentation.

Training randomness is keyed by (seed, epoch): the order is a stateless shuffle of an epoch
variable, and `training.EpochSeeding` resets the augmentation layers' seed states at each epoch
start. An epoch therefore sees the same data whatever ran before it, which is what lets a resumed
run continue exactly as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class TrainData:
    dataset: tf.data.Dataset
    epoch: tf.Variable  # set at each epoch start by training.EpochSeeding
    augmentation: keras.Sequential | None


def _gather(images: np.ndarray, labels: np.ndarray):
    pixels = tf.constant(np.ascontiguousarray(images))
    one_hot = tf.one_hot(np.asarray(labels, dtype=np.int64), 2)
    return lambda idx: (tf.cast(tf.gather(pixels, idx), tf.float32), tf.gather(one_hot, idx))


def make_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Evaluation batches of (float32 0-255 RGB, one-hot labels), in file order."""
    return (
        tf.data.Dataset.range(len(labels))
        .batch(batch_size)
        .map(_gather(images, labels), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


def make_train_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    seed: int,
    augment: bool = True,
    deterministic: bool = False,
) -> TrainData:
    """Training batches: reshuffled each epoch by (seed, epoch), gathered, cast, augmented, prefetched.

    With `deterministic`, augmentation runs in one sequential map so its seeds are drawn in a fixed order.
    """
    n = len(labels)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_epoch")

    def epoch_order(_):
        key = tf.stack([tf.constant(seed, tf.int64), epoch.read_value()])
        return tf.data.Dataset.from_tensor_slices(tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), key))

    n_batches = -(-n // batch_size)
    ds = tf.data.Dataset.range(1).flat_map(epoch_order).batch(batch_size)
    ds = ds.apply(tf.data.experimental.assert_cardinality(n_batches))
    ds = ds.map(_gather(images, labels), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    augmentation = augmenter(seed) if augment else None
    if augmentation is not None:
        ds = ds.map(
            lambda x, y: (augmentation(x, training=True), y),
            num_parallel_calls=None if deterministic else tf.data.AUTOTUNE,
        )
    return TrainData(ds.prefetch(tf.data.AUTOTUNE), epoch, augmentation)
