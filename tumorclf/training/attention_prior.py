"""Box-guided training (`--attention-prior WEIGHT --boxes FILE.csv`): "right for the right reasons" (Ross et al.,
2017) with Grad-CAM as the attention. For training tumour slices that have a tumour box, the share of the
Grad-CAM map that lies outside the box is added to the cross-entropy, times WEIGHT, so that the model is pushed to
find its evidence for a tumour on the tumour instead of on the frame, the skull or a collection's texture.

Only the cached-feature recipes (fast, robust): their fitted model is the top (last stage and head), which holds
the Grad-CAM layer (VGG16 block5_conv3). The share is computed on each image's unaugmented cached view, where the
box is known in the model's frame (`explain.boxes.frame_boxes` follows the resize and the robust recipe's
foreground crop): the augmented views, whose random warps move the tumour, feed the cross-entropy only.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tumorclf.explain.boxes import Boxes, box_mask, frame_boxes
from tumorclf.explain.gradcam import target_layer
from tumorclf.training.feature_cache import CachedFeatures

log = logging.getLogger(__name__)


def outside_weights(model: keras.Model, images: np.ndarray, labels: np.ndarray, boxes: Sequence[Boxes | None],
                    grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(outside, guided): per image, the share of each cell of the Grad-CAM `grid` that lies outside its boxes
    in the frame `model` sees (n, h, w), and whether the image is a tumour slice with a box (n,); an image
    that is not has zero weights."""
    size = images.shape[1]
    rows = [i for i, found in enumerate(boxes) if found is not None and labels[i] == 1]
    outside = np.zeros((len(images), *grid), dtype="float32")
    guided = np.zeros(len(images), dtype=bool)
    edges_y = np.linspace(0, size, grid[0] + 1).round().astype(int)
    edges_x = np.linspace(0, images.shape[2], grid[1] + 1).round().astype(int)
    if not rows:
        return outside, guided
    framed = frame_boxes(model, images[rows], [boxes[i].corners for i in rows])
    for i, pixels in zip(rows, framed):
        inside = box_mask(size, images.shape[2], pixels).astype("float64")
        cells = np.add.reduceat(np.add.reduceat(inside, edges_y[:-1], axis=0), edges_x[:-1], axis=1)
        area = np.diff(edges_y)[:, None] * np.diff(edges_x)[None, :]
        outside[i] = 1.0 - cells / area
        guided[i] = inside.any()
    return outside, guided


class GuidedFeatures(CachedFeatures):
    """`CachedFeatures` whose batches also carry, for the same images, the unaugmented view and the outside
    weights: ((view features, unaugmented features, outside, guided), one-hot labels)."""

    def __init__(self, views: list[np.ndarray], labels: np.ndarray, batch_size: int, seed: int,
                 outside: np.ndarray, guided: np.ndarray):
        super().__init__(views, labels, batch_size, seed)
        self.outside = outside
        self.guided = guided.astype("float32")

    def __getitem__(self, index: int):
        rows = self.rows(index)
        return (self.view()[rows], self.views[0][rows], self.outside[rows], self.guided[rows]), self.one_hot[rows]


class AttentionPrior(keras.Model):
    """`model` from the output of its layer `cut` on (the top of `stem.split_model`), trained with the outside
    share as a second loss term; it shares the model's layers, so the whole model (which `callbacks.Validation`
    saves) is what trains. Predicting takes the features alone. The epoch's mean outside share is logged as
    `outside_share`."""

    def __init__(self, model: keras.Model, cut: str, layer: str, weight: float):
        features = model.get_layer(cut).output
        super().__init__(inputs=features, outputs=model.output, name="top")
        # its own functional graph: Keras gives a model that starts inside another one copies of the tensors
        self.probe = keras.Model(features, [model.get_layer(layer).output, model.output])
        self.weight = float(weight)
        self.share_tracker = keras.metrics.Mean(name="outside_share")
        self.guide = None  # the batch's (unaugmented features, outside, guided) while a train step is traced

    def outside_share(self, features, outside, guided):
        """Mean over the guided images of the share of their Grad-CAM map (on the log-odds of Tumor, as
        `explain.gradcam` computes it) that lies outside their boxes (1 for a map with no positive value); 0 for
        a batch without a guided image."""
        with tf.GradientTape() as tape:
            maps, probs = self.probe(features, training=False)
            probs = ops.clip(ops.cast(probs, "float32"), 1e-7, 1.0)
            log_odds = ops.sum(ops.log(probs[:, 1]) - ops.log(probs[:, 0]))
        gradients = tape.gradient(log_odds, maps)
        maps = ops.cast(maps, "float32")
        channel_weights = ops.mean(ops.cast(gradients, "float32"), axis=(1, 2), keepdims=True)
        cam = ops.relu(ops.sum(channel_weights * maps, axis=-1))
        # a map without positive evidence anywhere counts as all outside, or killing the map would be a way out
        share = (ops.sum(cam * outside, axis=(1, 2)) + 1e-6) / (ops.sum(cam, axis=(1, 2)) + 1e-6)
        return ops.sum(share * guided) / ops.maximum(ops.sum(guided), 1.0)

    def train_step(self, data):
        (features, *self.guide), labels = data
        try:
            return super().train_step((features, labels))
        finally:
            self.guide = None

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        if not training or self.guide is None:
            return loss
        share = self.outside_share(*self.guide)
        self.share_tracker.update_state(share)
        return loss + self.weight * share


def guide(model: keras.Model, cut: str, views: list[np.ndarray], images: np.ndarray, labels: np.ndarray,
          boxes: Sequence[Boxes | None], batch_size: int, seed: int, weight: float
          ) -> tuple[AttentionPrior, GuidedFeatures]:
    """The fitted model and feed of a box-guided cached-feature run: `model`'s top (from layer `cut` on) as an
    `AttentionPrior`, and the training views with each image's outside weights on its Grad-CAM layer's grid."""
    layer = target_layer(model)
    grid = tuple(int(n) for n in model.get_layer(layer).output.shape[1:3])
    outside, guided = outside_weights(model, images, labels, boxes, grid)
    kinds = Counter(boxes[i].source for i in np.flatnonzero(guided))
    log.info("attention prior (weight %g): %d of %d training tumour slices have a box (%s); Grad-CAM at %s, "
             "%dx%d", weight, guided.sum(), int((labels == 1).sum()),
             ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "none", layer, *grid)
    return AttentionPrior(model, cut, layer, weight), GuidedFeatures(views, labels, batch_size, seed, outside, guided)
