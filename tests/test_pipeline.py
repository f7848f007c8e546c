from __future__ import annotations

import numpy as np

from tumorclf.pipeline import make_dataset


def arrays(n=20, size=16):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % 2


def collect(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_eval_pipeline_is_ordered_float_and_one_hot():
    images, labels = arrays()
    x, y = collect(make_dataset(images, labels, batch_size=8))
    assert x.dtype == np.float32 and x.shape == images.shape
    np.testing.assert_array_equal(x, images.astype(np.float32))
    np.testing.assert_array_equal(y, np.eye(2)[labels])


def test_train_pipeline_shuffles_every_epoch_and_keeps_pairs():
    images, labels = arrays()
    images[:, 0, 0, 0] = np.arange(20)  # tag each image so pairs can be checked
    ds = make_dataset(images, labels, batch_size=8, training=True, augment=False)
    first, second = collect(ds), collect(ds)
    assert not np.array_equal(first[0][:, 0, 0, 0], second[0][:, 0, 0, 0])
    for x, y in (first, second):
        tags = x[:, 0, 0, 0].astype(int)
        assert sorted(tags) == list(range(20))
        np.testing.assert_array_equal(y, np.eye(2)[labels[tags]])


def test_augmentation_changes_train_images_only():
    images, labels = arrays(size=32)
    augmented, _ = collect(make_dataset(images, labels, batch_size=20, training=True, augment=True))
    assert augmented.shape == images.shape
    assert np.abs(np.sort(augmented.ravel()) - np.sort(images.astype(np.float32).ravel())).mean() > 1
    plain, _ = collect(make_dataset(images, labels, batch_size=20, training=False, augment=True))
    np.testing.assert_array_equal(plain, images.astype(np.float32))
