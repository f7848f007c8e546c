"""Intensity standardisation inside the model: each image rescaled by its own percentiles.

MRI intensities have no absolute scale: scanners, sequences and each collection's export to JPEG leave
images brighter, darker or flatter, and that is a source's signature, not the anatomy's. Rescaling
each image by its own percentiles in the model itself means training, evaluation and the exported
SavedModel apply the same standardisation, and a saved model still takes plain images.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tumorclf")
class PercentileScaling(keras.layers.Layer):
    """Map each image's `low` percentile to 0 and its `high` percentile to 255, clipping outside.

    The percentiles are over all of the image's pixels and channels (the black background included, so
    `low` is usually 0 and `high` sets the brightness of the tissue). An image whose two percentiles are
    equal (flat) passes unchanged. Applied at training and inference alike.
    """

    def __init__(self, low: float = 0.5, high: float = 99.5, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not 0 <= low < high <= 100:
            raise ValueError(f"need 0 <= low < high <= 100 percentiles, got low={low}, high={high}")
        self.low, self.high = low, high

    def call(self, inputs):
        images = ops.cast(inputs, "float32")
        flat = ops.reshape(images, (ops.shape(images)[0], -1))
        bounds = ops.quantile(flat, [self.low / 100, self.high / 100], axis=1)  # (2, n)
        low = ops.reshape(bounds[0], (-1, 1, 1, 1))
        span = ops.reshape(bounds[1] - bounds[0], (-1, 1, 1, 1))
        scaled = ops.clip((images - low) / ops.maximum(span, 1e-6), 0.0, 1.0) * 255.0
        return ops.where(span > 0, scaled, images)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "low": self.low, "high": self.high}
