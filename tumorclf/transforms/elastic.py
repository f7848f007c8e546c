"""Elastic deformation: training slices whose two hemispheres no longer mirror each other, tumour or not.

In the training sources every healthy slice is an axial one, nearly mirror-symmetric, while a tumour
breaks the symmetry; the held-out sources' healthy slices include sagittal ones, which are not
symmetric at all (docs/robustness.md, the view-plane table). A classifier that reads asymmetry as tumour fails there. A smooth random deformation of
every training image makes asymmetry common to both classes, so that only the lesion itself tells
them apart.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tumorclf")
class RandomElastic(keras.layers.Layer):
    """A smooth random displacement of each image of a batch (0-255 RGB); identity outside training.

    The displacement field is drawn on a coarse `grid` x `grid` lattice, uniform up to `magnitude` times the
    image size per axis, and interpolated bilinearly to every pixel: large, smooth, non-mirrored warps
    rather than pixel noise. Each image is deformed with probability `probability` (the others pass
    unchanged); pixels are resampled bilinearly, black outside the image.
    """

    def __init__(self, magnitude: float = 0.06, grid: int = 4, probability: float = 0.5, seed: int | None = None,
                 **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not 0 <= magnitude <= 0.5:
            raise ValueError(f"magnitude must be in [0, 0.5] (a fraction of the image size), got {magnitude}")
        if grid < 2:
            raise ValueError(f"grid must be at least 2 control points per axis, got {grid}")
        if not 0 <= probability <= 1:
            raise ValueError(f"probability must be in [0, 1], got {probability}")
        self.magnitude, self.grid, self.probability, self.seed = magnitude, grid, probability, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training: bool = True):
        if not training or self.magnitude == 0 or self.probability == 0:
            return images
        x = ops.cast(images, "float32")
        n, height, width = ops.shape(x)[0], x.shape[1], x.shape[2]
        coarse = keras.random.uniform((n, self.grid, self.grid, 2), -1.0, 1.0, seed=self.seed_generator)
        on = ops.cast(keras.random.uniform((n,), seed=self.seed_generator) < self.probability, "float32")
        scale = ops.convert_to_tensor([self.magnitude * height, self.magnitude * width], "float32")
        field = ops.image.resize(coarse, (height, width), interpolation="bilinear") * scale
        field = field * ops.reshape(on, (-1, 1, 1, 1))
        rows = ops.reshape(ops.cast(ops.arange(height), "float32"), (1, height, 1)) + field[..., 0]
        cols = ops.reshape(ops.cast(ops.arange(width), "float32"), (1, 1, width)) + field[..., 1]
        return ops.cast(_bilinear(x, rows, cols), images.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "magnitude": self.magnitude, "grid": self.grid,
                "probability": self.probability, "seed": self.seed}


def _bilinear(images, rows, cols):
    """`images` (n, h, w, c) sampled at fractional (rows, cols) (n, h, w) each; zero outside the image."""
    n, height, width, channels = ops.shape(images)[0], images.shape[1], images.shape[2], images.shape[3]
    flat = ops.reshape(images, (-1, channels))
    base = ops.reshape(ops.arange(n) * (height * width), (-1, 1, 1))
    top, left = ops.floor(rows), ops.floor(cols)
    out = 0.0
    for d_row in (0.0, 1.0):
        for d_col in (0.0, 1.0):
            r, c = top + d_row, left + d_col
            weight = (1 - ops.abs(rows - r)) * (1 - ops.abs(cols - c))
            inside = (r >= 0) & (r <= height - 1) & (c >= 0) & (c <= width - 1)
            index = base + ops.cast(ops.clip(r, 0, height - 1), "int32") * width \
                + ops.cast(ops.clip(c, 0, width - 1), "int32")
            values = ops.take(flat, ops.reshape(index, (-1,)), axis=0)
            values = ops.reshape(values, (n, height, width, channels))
            out = out + values * ops.expand_dims(ops.where(inside, weight, 0.0), -1)
    return out
