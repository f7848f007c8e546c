"""The fast fine-tuning recipe (`--recipe fast`) for ImageNet-pretrained backbones.

The backbone is cut after its second-to-last stage (`registry.ModelSpec.fast_cut`). That frozen part runs
once per image, for the validation and test images and for `feature_views` views of each training
image (the first as is, the others through the training augmentation); its outputs are kept in
memory. Each epoch then trains only the last stage and the head on one cached view, so an epoch
costs the last stage's forward and backward pass instead of the whole network's. The best epoch by
validation F1 is saved as the whole model, so evaluation, Grad-CAM and export see a normal model.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from tumorclf.config import Config
from tumorclf.registry import MODELS
from tumorclf.pipeline import PARALLEL_CALLS, PREFETCH_BATCHES, augmenter, make_dataset
from tumorclf.training import TrainResult, start_session

log = logging.getLogger(__name__)


def split_model(model: keras.Model, cut: str) -> tuple[keras.Model, keras.Model]:
    """(stem, top): the model up to layer `cut`, and from its output to the model's output.
    Both share the model's layers, so training `top` trains `model`."""
    tensor = model.get_layer(cut).output
    return keras.Model(model.input, tensor, name="stem"), keras.Model(tensor, model.output, name="top")


def extract_features(stem: keras.Model, images: np.ndarray, batch_size: int,
                     augmentation: keras.Sequential | None = None, deterministic: bool = False) -> np.ndarray:
    """The stem's outputs for uint8 images, optionally through the (seeded) augmentation first,
    in parallel unless `deterministic` (then its seeds are drawn in a fixed order)."""
    ds = make_dataset(images, np.zeros(len(images), np.int64), batch_size).map(lambda x, y: x)
    if augmentation is not None:
        ds = ds.map(lambda x: augmentation(x, training=True),
                    num_parallel_calls=None if deterministic else PARALLEL_CALLS).prefetch(PREFETCH_BATCHES)
    return stem.predict(ds, verbose=0)


class CachedFeatures(keras.utils.PyDataset):
    """Training batches of cached features: view `epoch % views`, shuffled by (seed, epoch).

    `epoch` is set at each epoch start by `training.EpochSeeding`, as for the image pipeline."""

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

    def __getitem__(self, index: int):
        epoch = int(self.epoch.numpy())
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.one_hot))
        rows = np.sort(order[index * self.batch_size:(index + 1) * self.batch_size])
        return self.views[epoch % len(self.views)][rows], self.one_hot[rows]


def compile_top(top: keras.Model, cfg: Config) -> None:
    """Adam at the configured learning rate: on cached features it converges in a few epochs."""
    top.compile(optimizer=keras.optimizers.Adam(learning_rate=cfg.learning_rate),
                loss="categorical_crossentropy", metrics=["accuracy"], jit_compile=cfg.jit_compile)


def train_fast(
    cfg: Config,
    build: Callable[[], keras.Model],
    strategy: tf.distribute.Strategy,
    images: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    run_dir: Path,
    resume: bool = False,
) -> TrainResult:
    """Cache the stem's features of the train/val/test images, then fit the top on them and keep
    the best whole model by validation F1 at `run_dir/best.keras`. Resumable like `training.train`
    (the features are computed again; they depend only on the seed)."""
    with strategy.scope():
        model = build()
        stem, top = split_model(model, MODELS[cfg.model].fast_cut)
    started = time.time()
    views = [extract_features(stem, images["train"], cfg.batch_size)]
    for view in range(1, cfg.feature_views):
        views.append(extract_features(stem, images["train"], cfg.batch_size, augmenter(cfg.seed + 10 * view),
                                      cfg.deterministic))
    val, test = (extract_features(stem, images[name], cfg.batch_size) for name in ("val", "test"))
    log.info("fast recipe: %d train views, val and test features %s (%s) cached in %.1f s; training %s onwards",
             len(views), val.shape[1:], val.dtype, time.time() - started, top.layers[1].name)
    data = CachedFeatures(views, labels["train"], cfg.batch_size, cfg.seed)
    session = start_session(cfg, run_dir, data, val, labels["val"], resume,
                            (test, labels["test"]) if cfg.track_test else None)
    session.checkpoint.save = model
    session.clock.seconds_before += time.time() - started  # caching the features counts as training time
    if session.done < cfg.epochs and not session.finished:
        with strategy.scope():
            compile_top(top, cfg)
            if session.backup is not None:
                top.optimizer.build(top.trainable_variables)
                top.load_weights(session.backup)
            val_one_hot = np.eye(2, dtype="float32")[labels["val"]]
            history = top.fit(data, validation_data=(val, val_one_hot), initial_epoch=session.done,
                              epochs=cfg.epochs, callbacks=session.callbacks, verbose=2)
        session.done += len(history.epoch)
    return session.result()
