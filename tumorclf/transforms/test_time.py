"""Test-time augmentation (TTA): a model's softmax averaged over a few fixed views of each image.

A classifier's answer should not hinge on a slice being mirrored, turned by a few degrees or framed a little
tighter; averaging over such views smooths answers that do. The views are fixed and deterministic (no random
draw), so a TTA evaluation is repeatable, and few, because each view is one more inference pass over the data
(the cost on a 2-core CPU). `VIEWS` are:

- ``identity``: the image as it is;
- ``hflip``: mirrored left-right (brains are roughly symmetric, tumours are not on a fixed side);
- ``rotate+5``: turned 5 degrees about the centre and magnified 1.05x;
- ``rotate-5``: turned 5 degrees the other way, magnified 1.05x and moved 3% of the side right and down.

The affine views resample bilinearly with black outside the image, as training's `RandomAffine`; the models'
own `ForegroundCrop` then frames the head as usual. `DEFAULT_VIEWS` are all four.

`ViewStack` (the views of a batch, stacked along the batch axis) and `ViewMean` (their softmax averaged
back to one row per image) are registered layers, so `tta_model` is a plain serialisable Keras model that an
export could hold; `tta_predict` scores arrays of images with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import keras
import numpy as np
from keras import ops

from tumorclf.errors import UsageError
from tumorclf.transforms.pipeline import predict_images


@dataclass(frozen=True)
class View:
    """One fixed view: a horizontal flip first, then a rotation (degrees), a magnification and a shift (a
    fraction of the side, right and down), about the image centre."""

    name: str
    flip: bool = False
    rotation: float = 0.0
    zoom: float = 1.0
    shift: float = 0.0

    @property
    def affine(self) -> bool:
        return self.rotation != 0 or self.zoom != 1 or self.shift != 0


VIEWS = {view.name: view for view in (View("identity"), View("hflip", flip=True),
                                      View("rotate+5", rotation=5.0, zoom=1.05),
                                      View("rotate-5", rotation=-5.0, zoom=1.05, shift=0.03))}
DEFAULT_VIEWS = tuple(VIEWS)


def check_views(names: Sequence[str] | None) -> tuple[str, ...]:
    """The views asked for (none: `DEFAULT_VIEWS`), each known and named once; else a one-line UsageError."""
    names = tuple(names or DEFAULT_VIEWS)
    unknown = [name for name in names if name not in VIEWS]
    if unknown:
        raise UsageError(f"unknown test-time view {', '.join(unknown)}: choose from {' '.join(VIEWS)}")
    if len(set(names)) < len(names):
        raise UsageError(f"a test-time view is named twice: {' '.join(names)}")
    return names


def view_transform(view: View, height: int, width: int) -> list[float]:
    """The 8 projective coefficients (`ops.image.affine_transform`'s) of `view`'s rotation, zoom and shift:
    output pixel (x, y) samples the input at centre + R(-angle) (x - centre - shift) / zoom."""
    angle = math.radians(view.rotation)
    cos, sin = math.cos(angle) / view.zoom, math.sin(angle) / view.zoom
    cx, cy = (width - 1) / 2, (height - 1) / 2
    sx, sy = view.shift * width, view.shift * height
    a0, a1, b0, b1 = cos, sin, -sin, cos  # R(-angle) / zoom: output to input undoes the turn and the zoom
    a2 = cx - a0 * (cx + sx) - a1 * (cy + sy)
    b2 = cy - b0 * (cx + sx) - b1 * (cy + sy)
    return [a0, a1, a2, b0, b1, b2, 0.0, 0.0]


@keras.saving.register_keras_serializable(package="tumorclf")
class ViewStack(keras.layers.Layer):
    """The `views` of a batch of n images, stacked view after view along the batch axis: (views * n, h, w, c).
    Deterministic and the same at training and inference (it only ever runs at inference)."""

    def __init__(self, views: Sequence[str] = DEFAULT_VIEWS, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.views = check_views(views)

    def view(self, images, view: View):
        if view.flip:
            images = ops.flip(images, axis=2)
        if view.affine:
            n = ops.shape(images)[0]
            transform = ops.convert_to_tensor([view_transform(view, images.shape[1], images.shape[2])], "float32")
            images = ops.image.affine_transform(images, ops.tile(transform, (n, 1)), interpolation="bilinear",
                                                fill_mode="constant")
        return images

    def call(self, images):
        images = ops.cast(images, "float32")
        return ops.concatenate([self.view(images, VIEWS[name]) for name in self.views], axis=0)

    def compute_output_shape(self, input_shape):
        return (None, *input_shape[1:])

    def get_config(self):
        return {**super().get_config(), "views": list(self.views)}


@keras.saving.register_keras_serializable(package="tumorclf")
class ViewMean(keras.layers.Layer):
    """The mean over `views` of rows stacked as `ViewStack` stacks them: (views * n, k) -> (n, k)."""

    def __init__(self, views: int, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.views = int(views)

    def call(self, outputs):
        outputs = ops.cast(outputs, "float32")
        return ops.mean(ops.reshape(outputs, (self.views, -1, outputs.shape[-1])), axis=0)

    def compute_output_shape(self, input_shape):
        return (None, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "views": self.views}


def tta_model(model: keras.Model, views: Sequence[str] = DEFAULT_VIEWS) -> keras.Model:
    """`model` behind `ViewStack` and before `ViewMean`: each image's softmax averaged over `views`.
    Shares `model`'s weights."""
    views = check_views(views)
    images = keras.Input(model.input_shape[1:], name="images")
    return keras.Model(images, ViewMean(len(views))(model(ViewStack(views)(images), training=False)),
                       name=f"{model.name}_tta")


def tta_predict(model: keras.Model, images: np.ndarray, batch_size: int, views: Sequence[str] = DEFAULT_VIEWS,
                desc: str = "predicting with test-time views") -> np.ndarray:
    """(n, 2) softmax of `model` averaged over `views` on uint8 (or 0-255 float) images. A batch holds
    batch_size // len(views) images, so that the model still sees about `batch_size` inputs at a time."""
    views = check_views(views)
    per_batch = max(1, batch_size // len(views))
    return predict_images(tta_model(model, views), images, np.zeros(len(images), dtype=np.int64), per_batch, desc)
