"""tf.data input pipelines over decoded images, with train-only Keras augmentation.

Training randomness is keyed by (seed, epoch): the order is a stateless shuffle of an epoch
variable, and `callbacks.EpochSeeding` resets the augmentation layers' seed states at each epoch
start. An epoch therefore sees the same data whatever ran before it, which is what lets a resumed
run continue exactly as an uninterrupted one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tumorclf.transforms.acquisition import RandomAcquisition
from tumorclf.transforms.elastic import RandomElastic


@keras.saving.register_keras_serializable(package="tumorclf")
class RandomAffine(keras.layers.Layer):
    """Random horizontal flip, rotation, zoom and shift of a batch, as one affine resampling.

    The same transforms as Keras' RandomFlip, RandomRotation, RandomZoom and RandomTranslation with
    the same ranges (rotation as a fraction of a full turn, zoom and shift as fractions of the size),
    composed into one matrix per image: one bilinear interpolation instead of three, about 3x less work
    and less blur. Identity outside training.
    """

    def __init__(self, rotation: float = 0.05, zoom: float = 0.1, shift: float = 0.05, flip: bool = True,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rotation, self.zoom, self.shift, self.flip, self.seed = rotation, zoom, shift, flip, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training: bool = True):
        if not training:
            return images
        n = ops.shape(images)[0]
        height, width = ops.cast(ops.shape(images)[1], "float32"), ops.cast(ops.shape(images)[2], "float32")

        def uniform(limit):
            return keras.random.uniform((n,), -limit, limit, seed=self.seed_generator)

        angle = uniform(2 * np.pi * self.rotation)
        scale = 1.0 + uniform(self.zoom)  # > 1 samples a larger area: zooms out
        flip = ops.where(keras.random.uniform((n,), seed=self.seed_generator) < 0.5, -1.0, 1.0) if self.flip \
            else ops.ones((n,))
        shift_x, shift_y = uniform(self.shift) * width, uniform(self.shift) * height
        # output pixel (x, y) samples input centre + M (x - cx, y - cy) + shift, M = scale * R(angle) * diag(flip, 1)
        cos, sin = ops.cos(angle) * scale, ops.sin(angle) * scale
        a0, a1, b0, b1 = cos * flip, -sin, sin * flip, cos
        cx, cy = (width - 1) / 2, (height - 1) / 2
        a2 = cx + shift_x - a0 * cx - a1 * cy
        b2 = cy + shift_y - b0 * cx - b1 * cy
        zeros = ops.zeros((n,))
        transform = ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
        return ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode="constant")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rotation": self.rotation, "zoom": self.zoom, "shift": self.shift,
                "flip": self.flip, "seed": self.seed}


def augmenter(seed: int, image_size: int, acquisition: bool = False, elastic: bool = False) -> keras.Sequential:
    """The train-time augmentation of `image_size` px images: with `elastic` a smooth random warp
    (`RandomElastic`) first, then flips, small rotations, zooms and shifts (one affine resampling), contrast
    changes, and with `acquisition` the changes of another scanner (`RandomAcquisition`).

    Built on its input at once: a Sequential built by its first call runs that call on another path than
    the later ones, and under a mixed-precision policy the first batch would be cast differently."""
    return keras.Sequential(
        [keras.Input((image_size, image_size, 3)), *([RandomElastic(seed=seed + 12)] if elastic else []),
         RandomAffine(rotation=0.05, zoom=0.1, shift=0.05, seed=seed), keras.layers.RandomContrast(0.1, seed=seed + 4),
         *([RandomAcquisition(seed=seed + 8)] if acquisition else [])],
        name="augmentation",
    )


# Fixed parallelism instead of tf.data's autotuner: its optimisation thread makes destroying an
# iterator wait for it, a stall of seconds at the end of every fit, predict and epoch, which on a
# 2-core CPU costs more than tuning gains. Datasets
# derived from these inherit the option.
PARALLEL_CALLS = os.cpu_count() or 1
PREFETCH_BATCHES = 2


def untuned(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` with tf.data autotuning off (see PARALLEL_CALLS)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


@dataclass
class TrainData:
    dataset: tf.data.Dataset
    epoch: tf.Variable  # set at each epoch start by callbacks.EpochSeeding
    augmentation: keras.Sequential | None


def _gather(images: np.ndarray, labels: np.ndarray):
    pixels = tf.constant(np.ascontiguousarray(images))
    one_hot = tf.one_hot(np.asarray(labels, dtype=np.int64), 2)
    return lambda idx: (tf.cast(tf.gather(pixels, idx), tf.float32), tf.gather(one_hot, idx))


def make_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Evaluation batches of (float32 0-255 RGB, one-hot labels), in file order."""
    return untuned(
        tf.data.Dataset.range(len(labels))
        .batch(batch_size)
        .map(_gather(images, labels), num_parallel_calls=PARALLEL_CALLS)
        .prefetch(PREFETCH_BATCHES)
    )


def predict_images(model: keras.Model, images: np.ndarray, labels: np.ndarray, batch_size: int,
                   desc: str) -> np.ndarray:
    """(n, 2) softmax outputs of `model` on uint8 images in evaluation batches, with progress: the test pass
    of `train` and every pass of `evaluate`."""
    from tumorclf.utils.progress import keras_progress

    if len(labels) == 0:
        return np.zeros((0, 2), dtype=np.float32)
    batches = -(-len(labels) // batch_size)
    return np.asarray(model.predict(make_dataset(images, labels, batch_size), verbose=0,
                                    callbacks=[keras_progress(batches, desc)]))


def make_train_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    seed: int,
    augment: bool = True,
    deterministic: bool = False,
    acquisition: bool = False,
    elastic: bool = False,
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
    ds = ds.map(_gather(images, labels), num_parallel_calls=PARALLEL_CALLS, deterministic=True)
    augmentation = augmenter(seed, images.shape[1], acquisition, elastic) if augment else None
    if augmentation is not None:
        ds = ds.map(
            lambda x, y: (augmentation(x, training=True), y),
            num_parallel_calls=None if deterministic else PARALLEL_CALLS,
        )
    return TrainData(untuned(ds.prefetch(PREFETCH_BATCHES)), epoch, augmentation)
