"""The fast fine-tuning recipe's feature cache (`--recipe fast`) for ImageNet-pretrained backbones.

The backbone is cut after its second-to-last stage (`registry.ModelSpec.fast_cut`). That frozen part runs
once per image, for the validation images (and the test images with `--track-test`) and for
`feature_views` views of each training image (the first as is, the others through the training
augmentation); its outputs are kept in memory. `training.train` then trains only the last stage and the
head on one cached view per epoch, through the same loop and callbacks as every recipe, so an epoch costs
the last stage's forward and backward pass instead of the whole network's. The best epoch by validation
F1 is saved as the whole model, so evaluation, Grad-CAM and export see a normal model. The stem's outputs
are kept on disk too (`tumorclf.models.stem`): a rerun, a resume or the gate's fit reads them back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from tumorclf.explain.boxes import Boxes
from tumorclf.models.flops import forward_flops
from tumorclf.models.stem import feature_cache, split_model, stem_outputs
from tumorclf.utils.array_cache import ArrayCache
from tumorclf.runs.config import Config
from tumorclf.transforms.lesion_zoom import lesion_zoom
from tumorclf.transforms.pipeline import augmenter

log = logging.getLogger(__name__)


def cache_features(cfg: Config, stem: keras.Model, images: dict[str, np.ndarray], held_out: tuple[str, ...],
                   boxes: Sequence[Boxes | None] | None = None
                   ) -> tuple[list[np.ndarray], dict[str, np.ndarray], int]:
    """(training views, {subset: features} of the `held_out` subsets, how many images the stem ran on), one
    log line per view; each read from the feature cache on disk when an earlier run computed it
    (`tumorclf.models.stem`). With `cfg.lesion_zoom`, the augmented views start from training images zoomed
    around their `boxes` (`transforms.lesion_zoom`; the zoomed pixels are part of the cache key)."""
    started = time.time()
    cache = feature_cache(cfg.cache_dir)
    views, computed = [], 0
    n_views = cfg.feature_views if cfg.augment else 1  # without augmentation every view would be the same
    for view in range(n_views):
        log.info("fast recipe: caching view %d/%d of %d training images (%s)", view + 1, n_views,
                 len(images["train"]), ("augmented" + (f", {cfg.lesion_zoom:g} of them zoomed around a box"
                                                      if cfg.lesion_zoom else "")) if view else "as is")
        seed = cfg.seed + 10 * view
        augmentation = augmenter(seed, cfg.image_size, cfg.acquisition, cfg.elastic) if view else None
        pixels = images["train"]
        if view and cfg.lesion_zoom:
            pixels = lesion_zoom(pixels, [None if b is None else b.corners for b in boxes], cfg.lesion_zoom, seed)
        features, ran = stem_outputs(stem, pixels, cfg.batch_size, f"features, train view {view + 1}",
                                     cache, augmentation, seed if view else None, cfg.deterministic)
        views.append(features)
        computed += ran * len(images["train"])
    held = {}
    for name in held_out:
        log.info("fast recipe: caching features of %d %s images", len(images[name]), name)
        held[name], ran = stem_outputs(stem, images[name], cfg.batch_size, f"features, {name}", cache)
        computed += ran * len(images[name])
    log.info("fast recipe: %d train views and %s features %s (%s) ready in %.1f s", len(views),
             "/".join(held_out), views[0].shape[1:], views[0].dtype, time.time() - started)
    return views, held, computed


def predict_from_features(model: keras.Model, cut: str, images: np.ndarray, batch_size: int, desc: str,
                          cache: ArrayCache) -> tuple[np.ndarray, float]:
    """((n, 2) outputs of `model` on uint8 images, GFLOP computed): the stem's outputs up to `cut` read from
    the feature cache when training or an earlier run stored them for these images (so validation, which
    training already ran through the frozen part, is not run through it again), else computed and stored
    there (a rerun reads the test split's back), then the model's top on them, in the same batches."""
    if not len(images):
        return np.zeros((0, 2), dtype=np.float32), 0.0
    stem, top = split_model(model, cut)
    features, computed = stem_outputs(stem, images, batch_size, f"features, {desc}", cache)
    probs = np.asarray(top.predict(features, batch_size=batch_size, verbose=0), dtype=np.float32)
    return probs, len(images) * (computed * forward_flops(stem) + forward_flops(top)) / 1e9


class CachedFeatures(keras.utils.PyDataset):
    """Training batches of cached features: view `epoch % views`, shuffled by (seed, epoch).

    `epoch` is set at each epoch start by `callbacks.EpochSeeding`, as for the image pipeline."""

    augmentation = None  # the views were augmented when they were cached

    def __init__(self, views: list[np.ndarray], labels: np.ndarray, batch_size: int, seed: int):
        super().__init__()
        self.views = views
        self.one_hot = np.eye(2, dtype="float32")[np.asarray(labels, np.int64)]
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="feature_epoch")

    def __len__(self) -> int:
        return -(-len(self.one_hot) // self.batch_size)

    def rows(self, index: int) -> np.ndarray:
        """The images of batch `index` of the current epoch, in increasing order."""
        order = np.random.default_rng([self.seed, int(self.epoch.numpy())]).permutation(len(self.one_hot))
        return np.sort(order[index * self.batch_size:(index + 1) * self.batch_size])

    def view(self) -> np.ndarray:
        """The current epoch's view."""
        return self.views[int(self.epoch.numpy()) % len(self.views)]

    def __getitem__(self, index: int):
        rows = self.rows(index)
        return self.view()[rows], self.one_hot[rows]
