"""Frozen ImageNet features: the backbone's pooled output, computed once per content and cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tumorclf.audit import embeddings as features

WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights"
pytestmark = pytest.mark.skipif(not (WEIGHTS / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5").is_file(),
                                reason="shared VGG16 ImageNet weights not found")


def test_features_are_cached_by_content(tmp_path, monkeypatch):
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    keys = [f"k{i}" for i in range(5)]
    first = features.pooled_features(images, keys, "vgg16", str(WEIGHTS), tmp_path)
    assert first.shape == (5, 512) and first.dtype == np.float32 and np.all(np.isfinite(first))
    assert len(list(tmp_path.glob("features-vgg16-32px-*.npy"))) == 1

    def no_backbone(*args):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(features, "backbone", no_backbone)
    assert np.array_equal(features.pooled_features(images, keys, "vgg16", str(WEIGHTS), tmp_path), first)
    with pytest.raises(AssertionError, match="cache should have answered"):  # other contents: computed anew
        features.pooled_features(images, keys[::-1], "vgg16", str(WEIGHTS), tmp_path)


def test_backbone_restores_the_global_policy():
    import keras

    before = keras.mixed_precision.global_policy().name
    model = features.backbone("vgg16", 32, str(WEIGHTS), "mixed_bfloat16")
    assert keras.mixed_precision.global_policy().name == before
    assert model.output.shape == (None, 512) and model.get_layer("block1_conv1").compute_dtype == "bfloat16"
    rows = features.backbone("vgg16", 32, str(WEIGHTS), "float32").predict(np.zeros((2, 32, 32, 3)), verbose=0)
    assert rows.shape == (2, 512) and np.allclose(rows[0], rows[1], atol=1e-5)  # float32: a batch row may round apart
