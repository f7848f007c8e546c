"""Acquisition augmentation: training images made to look as if another scanner, sequence or export made them.

Each collection of the dataset comes with its own intensity curve, sharpness, noise, coil shading and
resolution, and a classifier trained on a few collections learns those as cues. `RandomAcquisition`
varies them at random during training so that they stop being cues: a smooth multiplicative bias field,
gamma, contrast and brightness, blur or sharpening, down-then-up resampling, and Rician noise.
"""

from __future__ import annotations

import math

import keras
from keras import ops


def _gaussian_kernel(sigma: float = 1.0, radius: int = 2):
    """A (2r+1, 2r+1, 3, 1) normalised Gaussian for a depthwise convolution of RGB images."""
    taps = [math.exp(-(i * i) / (2 * sigma * sigma)) for i in range(-radius, radius + 1)]
    one_d = ops.convert_to_tensor(taps, "float32") / sum(taps)
    two_d = ops.outer(one_d, one_d)
    return ops.tile(ops.reshape(two_d, (2 * radius + 1, 2 * radius + 1, 1, 1)), (1, 1, 3, 1))


@keras.saving.register_keras_serializable(package="tumorclf")
class RandomAcquisition(keras.layers.Layer):
    """Random acquisition changes of a batch of 0-255 RGB images; identity outside training.

    Each change is applied to each image with probability `probability`, with a magnitude drawn
    uniformly up to its limit times `strength` (0: the layer is the identity):

    - bias field: exp of a random quadratic in the image coordinates, up to `bias` per term;
    - gamma: exponent exp(u), |u| <= `gamma`;
    - contrast about the image mean by exp(u), |u| <= `contrast`, and brightness +-`brightness` x 255;
    - blur or sharpening: x + k (x - gaussian(x)), |k| <= `sharpness` (k < 0 blurs);
    - resampling: blended towards the image downsampled by 2 and upsampled back, by up to `resample`;
    - Rician noise of standard deviation up to `noise` x 255.
    """

    def __init__(self, strength: float = 1.0, probability: float = 0.5, bias: float = 0.3, gamma: float = 0.4,
                 contrast: float = 0.3, brightness: float = 0.1, sharpness: float = 1.0, resample: float = 1.0,
                 noise: float = 0.03, seed: int | None = None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not 0 <= strength <= 1:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        if not 0 <= probability <= 1:
            raise ValueError(f"probability must be in [0, 1], got {probability}")
        limits = {"bias": bias, "gamma": gamma, "contrast": contrast, "brightness": brightness,
                  "sharpness": sharpness, "resample": resample, "noise": noise}
        negative = [name for name, value in limits.items() if value < 0]
        if negative:
            raise ValueError(f"limits must be >= 0: {', '.join(negative)}")
        if resample > 1:
            raise ValueError(f"resample is a blend weight in [0, 1], got {resample}")
        self.strength, self.probability, self.seed = strength, probability, seed
        self.limits = limits
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _magnitude(self, n, limit: float, signed: bool = True):
        """Per image: a uniform draw up to `limit * strength` (symmetric if `signed`), zero where the change is off."""
        bound = limit * self.strength
        value = keras.random.uniform((n,), -bound if signed else 0.0, bound, seed=self.seed_generator)
        on = keras.random.uniform((n,), seed=self.seed_generator) < self.probability
        return ops.where(on, value, 0.0)

    def call(self, images, training: bool = True):
        if not training or self.strength == 0 or self.probability == 0:
            return images
        x = ops.cast(images, "float32")
        n, height, width = ops.shape(x)[0], x.shape[1], x.shape[2]

        def per_image(values):
            return ops.reshape(values, (-1, 1, 1, 1))

        # bias field
        ys = ops.reshape(ops.linspace(-1.0, 1.0, height), (1, height, 1, 1))
        xs = ops.reshape(ops.linspace(-1.0, 1.0, width), (1, 1, width, 1))
        on = keras.random.uniform((n,), seed=self.seed_generator) < self.probability
        terms = [ops.where(on, keras.random.uniform((n,), -1.0, 1.0, seed=self.seed_generator), 0.0)
                 * self.limits["bias"] * self.strength for _ in range(5)]
        field = (per_image(terms[0]) * xs + per_image(terms[1]) * ys + per_image(terms[2]) * xs * xs
                 + per_image(terms[3]) * ys * ys + per_image(terms[4]) * xs * ys)
        x = ops.clip(x * ops.exp(field), 0.0, 255.0)
        # gamma
        gamma = ops.exp(per_image(self._magnitude(n, self.limits["gamma"])))
        x = 255.0 * ops.power(x / 255.0, gamma)
        # contrast and brightness
        mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
        contrast = ops.exp(per_image(self._magnitude(n, self.limits["contrast"])))
        brightness = per_image(self._magnitude(n, self.limits["brightness"])) * 255.0
        x = ops.clip((x - mean) * contrast + mean + brightness, 0.0, 255.0)
        # blur or sharpening
        blurred = ops.depthwise_conv(x, _gaussian_kernel(), padding="same")
        x = ops.clip(x + per_image(self._magnitude(n, self.limits["sharpness"])) * (x - blurred), 0.0, 255.0)
        # down-then-up resampling
        coarse = ops.image.resize(ops.image.resize(x, (max(height // 2, 1), max(width // 2, 1))), (height, width))
        x = x + per_image(self._magnitude(n, self.limits["resample"], signed=False)) * (coarse - x)
        # Rician noise: the magnitude of a complex signal with Gaussian noise on both parts
        sigma = per_image(self._magnitude(n, self.limits["noise"], signed=False)) * 255.0
        real = x + sigma * keras.random.normal(ops.shape(x), seed=self.seed_generator)
        imaginary = sigma * keras.random.normal(ops.shape(x), seed=self.seed_generator)
        x = ops.sqrt(real * real + imaginary * imaginary)
        return ops.cast(ops.clip(x, 0.0, 255.0), images.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "strength": self.strength, "probability": self.probability,
                "seed": self.seed, **self.limits}
