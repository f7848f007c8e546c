"""Frozen ImageNet features: the pooled output of a pretrained backbone, cached on disk by content.

The audit compares images in this space (label errors, outliers, appearance clusters): it is cheap on 2
CPU cores, since each image passes the frozen backbone once, and the cache makes a second audit of the
same contents free. The backbone is the project's own model (`models.build_model`, same preprocessing
and weights resolution as training) cut at its pooled features.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import numpy as np

from tumorclf.utils.files import atomic_write_bytes
from tumorclf.data.dataset import CACHE_FORMATS
from tumorclf.data.decoder import DECODER_VERSION

log = logging.getLogger(__name__)

POOLED_LAYER = "avg_pool"


def backbone(model: str, image_size: int, weights_dir: str | None, precision: str):
    """The ImageNet-pretrained `model` from 0-255 RGB to its global-average-pooled features, computing in
    the Keras dtype policy `precision`. `models.WeightsError` (naming the file to place) when its weights
    cannot be found."""
    import keras

    from tumorclf.models.factory import build_model, resolve_weights

    path, _ = resolve_weights(model, True, weights_dir)
    before = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(precision)
    try:
        full = build_model(model, image_size, path)
    finally:
        keras.mixed_precision.set_global_policy(before)
    return keras.Model(full.input, full.get_layer(POOLED_LAYER).output, name=f"{model}_features")


def pooled_features(images: np.ndarray, keys: list[str], model: str, weights_dir: str | None, cache_dir: Path,
                    batch_size: int = 32) -> np.ndarray:
    """float32 features (n, d) of uint8 images (n, size, size, 3) whose contents `keys` name (e.g. SHA-256),
    from the cache when the same model, size, precision, decoder (with its `CACHE_FORMATS`) and contents were
    seen before. The
    precision is training's `auto` choice: bfloat16 on a CPU that has it, twice as fast as float32."""
    from tumorclf.models.stem import compute_stem_outputs
    from tumorclf.training.loop import select_precision

    size, precision = images.shape[1], select_precision("auto")
    key = f"{model}|{size}|{precision}|{DECODER_VERSION}|{CACHE_FORMATS}|{','.join(keys)}"
    name = hashlib.sha256(key.encode()).hexdigest()[:20]
    entry = Path(cache_dir) / f"features-{model}-{size}px-{name}.npy"
    if entry.is_file():
        log.info("feature cache hit: %s", entry)
        return np.load(entry)
    log.info("computing %s features of %d images at %d px in %s (cache miss: %s)", model, len(images), size,
             precision, entry)
    features = compute_stem_outputs(backbone(model, size, weights_dir, precision), images, batch_size,
                                    f"{model} features")
    features = np.asarray(features, dtype=np.float32)
    buffer = io.BytesIO()
    np.save(buffer, features)
    atomic_write_bytes(entry, buffer.getvalue())
    return features
