"""Framing inside the model: crop each image to the head's bounding box before the backbone sees it.

Collections frame their slices differently (wide black borders, tight crops, burnt-in text at the edges,
heads at different scales), and a classifier can learn the framing instead of the anatomy. Cropping
to the foreground in the model itself means training, evaluation and the exported SavedModel all see
the same framing, and a saved model still takes plain images.
"""

from __future__ import annotations

import keras
from keras import ops


def _first_and_last(present, length):
    """Per image: the first and last index where `present` (n, length) is True; (0, length - 1) when none is."""
    index = ops.cast(ops.arange(length), "float32")
    first = ops.min(ops.where(present, index, float(length)), axis=1)
    last = ops.max(ops.where(present, index, -1.0), axis=1)
    empty = last < first
    return ops.where(empty, 0.0, first), ops.where(empty, float(length - 1), last)


@keras.saving.register_keras_serializable(package="tumorclf")
class ForegroundCrop(keras.layers.Layer):
    """Crop each image to a square around its foreground, with a margin, resampled to the input size.

    Foreground: pixels whose channel mean exceeds `threshold` times the image's brightest channel mean
    (relative, so it works at any exposure). The square's side is the longer side of the foreground's
    bounding box plus `margin` of it on each side, at least `min_fraction` of the image; it is centred on
    the box, and what falls outside the image is black. An image without foreground passes unchanged.
    Applied at training and inference alike (it is part of the preprocessor, not an augmentation).
    """

    def __init__(self, threshold: float = 0.1, margin: float = 0.05, min_fraction: float = 0.25, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not 0 <= threshold < 1:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        if not 0 <= margin <= 1:
            raise ValueError(f"margin must be in [0, 1], got {margin}")
        if not 0 < min_fraction <= 1:
            raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction}")
        self.threshold, self.margin, self.min_fraction = threshold, margin, min_fraction

    def boxes(self, images):
        """(centre x, centre y, side) of each image's square crop, in pixels."""
        images = ops.cast(images, "float32")
        height, width = images.shape[1], images.shape[2]
        gray = ops.mean(images, axis=-1)
        peak = ops.max(gray, axis=(1, 2), keepdims=True)
        mask = ops.logical_and(gray > self.threshold * peak, peak > 0)
        top, bottom = _first_and_last(ops.any(mask, axis=2), height)
        left, right = _first_and_last(ops.any(mask, axis=1), width)
        side = ops.maximum(bottom - top + 1, right - left + 1) * (1 + 2 * self.margin)
        side = ops.maximum(side, self.min_fraction * max(height, width))
        return (left + right) / 2, (top + bottom) / 2, side

    def call(self, inputs):
        images = ops.cast(inputs, "float32")
        n, height, width = ops.shape(images)[0], images.shape[1], images.shape[2]
        centre_x, centre_y, side = self.boxes(images)
        # output pixel (x, y) samples the input at centre + (side / width, side / height) * ((x, y) - output
        # centre): a square of `side` input pixels fills the output
        scale_x, scale_y = side / width, side / height
        offset_x = centre_x - scale_x * (width - 1) / 2
        offset_y = centre_y - scale_y * (height - 1) / 2
        zeros = ops.zeros((n,))
        transform = ops.stack([scale_x, zeros, offset_x, zeros, scale_y, offset_y, zeros, zeros], axis=1)
        return ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode="constant")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold, "margin": self.margin,
                "min_fraction": self.min_fraction}
