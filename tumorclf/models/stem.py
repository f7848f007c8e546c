"""The frozen part of a model (its stem) and its outputs for a set of images, kept on disk between runs.

The cached-feature recipes train only the last stage and the head; the stem's outputs for every image and
augmented view are what takes long to compute. `stem_outputs` stores them in an `ArrayCache` under a key
that names everything they depend on (the stem's layers and their settings, its weights, the images'
pixels, the augmentation, its seed and the batch size, the library versions), so training, the quality
gate's fit, a resumed run or a rerun with other epochs compute them once. The training loop, the gate and
the audit call it; a cache hit is logged with its key.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import keras
import numpy as np

from tumorclf.transforms.pipeline import PARALLEL_CALLS, PREFETCH_BATCHES, make_dataset
from tumorclf.utils.array_cache import (
    FEATURES_FOLDER,
    ArrayCache,
    cache_key,
    default_cache_dir,
)
from tumorclf.utils.files import versions
from tumorclf.utils.progress import keras_progress

log = logging.getLogger(__name__)


def feature_cache(cache_dir: str | Path | None) -> ArrayCache:
    """The feature cache beside the decoded-image cache (`cache_dir`, else $TUMORCLF_CACHE or its default)."""
    return ArrayCache(Path(cache_dir or default_cache_dir()) / FEATURES_FOLDER)


def split_model(model: keras.Model, cut: str) -> tuple[keras.Model, keras.Model]:
    """(stem, top): the model up to layer `cut`, and from its output to the model's output.
    Both share the model's layers, so training `top` trains `model`."""
    tensor = model.get_layer(cut).output
    return keras.Model(model.input, tensor, name="stem"), keras.Model(tensor, model.output, name="top")


def _digest(arrays) -> str:
    hasher = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        hasher.update(f"{array.dtype}{array.shape}".encode())
        hasher.update(memoryview(array).cast("B"))
    return hasher.hexdigest()


def _layers(model: keras.Model) -> str:
    """Each layer's class and settings in graph order, without names (Keras numbers the names of unnamed
    layers per process, so a stem rebuilt or loaded elsewhere would otherwise get another key) and without the
    trainable flag (a phase of training freezes the stem; its outputs are the same)."""
    described = []
    for layer in model.layers:
        config = {k: v for k, v in layer.get_config().items() if k not in ("name", "trainable")}
        described.append([type(layer).__name__, config])
    return json.dumps(described, sort_keys=True, default=str)


def _augmentation(augmentation: keras.Sequential) -> str:
    """The augmentation's layers and their settings, without the per-process layer names (a second augmentation
    built in the same process is `random_affine_1`, and would otherwise miss the first one's cache entries)."""
    config = augmentation.get_config()
    config.pop("name", None)
    for layer in config["layers"]:
        layer["config"].pop("name", None)
    return json.dumps(config, sort_keys=True, default=str)


def stem_key(stem: keras.Model, images: np.ndarray, batch_size: int, augmentation: keras.Sequential | None,
             seed: int | None) -> str:
    """The cache key of `stem`'s outputs for `images`: equal only when every input to them is equal."""
    library = versions()
    return cache_key({
        "stem": _layers(stem),
        "weights": _digest(stem.get_weights()),
        "images": _digest([images]),
        "augmentation": None if augmentation is None else _augmentation(augmentation),
        "seed": seed,
        "batch_size": batch_size,
        "libraries": {name: library.get(name) for name in ("tensorflow", "keras", "numpy")},
    })


def compute_stem_outputs(stem: keras.Model, images: np.ndarray, batch_size: int, desc: str,
                         augmentation: keras.Sequential | None = None, deterministic: bool = False) -> np.ndarray:
    """The stem's outputs for uint8 images, optionally through the (seeded) augmentation first, in parallel
    unless `deterministic` (then its seeds are drawn in a fixed order). Progress is reported as `desc`."""
    ds = make_dataset(images, np.zeros(len(images), np.int64), batch_size).map(lambda x, y: x)
    if augmentation is not None:
        ds = ds.map(lambda x: augmentation(x, training=True),
                    num_parallel_calls=None if deterministic else PARALLEL_CALLS).prefetch(PREFETCH_BATCHES)
    batches = -(-len(images) // batch_size)
    return stem.predict(ds, verbose=0, callbacks=[keras_progress(batches, desc)])


def stem_outputs(stem: keras.Model, images: np.ndarray, batch_size: int, desc: str, cache: ArrayCache | None,
                 augmentation: keras.Sequential | None = None, seed: int | None = None,
                 deterministic: bool = False) -> tuple[np.ndarray, bool]:
    """(outputs, whether they were computed): `compute_stem_outputs`, or read from `cache` when an earlier run
    computed the same (None: no cache). `seed` is the augmentation's seed, part of the key."""
    if cache is None:
        return compute_stem_outputs(stem, images, batch_size, desc, augmentation, deterministic), True
    key = stem_key(stem, images, batch_size, augmentation, seed)
    found = cache.get(key)
    if found is not None:
        log.info("feature cache hit %s: %s (%d images)", key[:16], desc, len(images))
        return found, False
    outputs = compute_stem_outputs(stem, images, batch_size, desc, augmentation, deterministic)
    cache.put(key, outputs)
    log.info("feature cache: stored %s: %s (%.0f MB)", key[:16], desc, outputs.nbytes / 1e6)
    return outputs, True
