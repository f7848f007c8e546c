from __future__ import annotations

import keras
import numpy as np

from tumorclf.pipeline import make_dataset, make_train_dataset
from tumorclf.training import EpochSeeding


def arrays(n=20, size=16):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)  # tag each image so pairs and order can be checked
    return images, np.arange(n) % 2


def collect(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_eval_pipeline_is_ordered_float_and_one_hot():
    images, labels = arrays()
    x, y = collect(make_dataset(images, labels, batch_size=8))
    assert x.dtype == np.float32 and x.shape == images.shape
    np.testing.assert_array_equal(x, images.astype(np.float32))
    np.testing.assert_array_equal(y, np.eye(2)[labels])


def test_train_order_is_a_function_of_seed_and_epoch():
    images, labels = arrays()
    data = make_train_dataset(images, labels, batch_size=8, seed=1, augment=False)
    orders = {}
    for epoch in (0, 1, 0):
        data.epoch.assign(epoch)
        x, y = collect(data.dataset)
        tags = x[:, 0, 0, 0].astype(int)
        assert sorted(tags) == list(range(20))
        np.testing.assert_array_equal(y, np.eye(2)[labels[tags]])  # pairs kept
        orders.setdefault(epoch, []).append(tags.tolist())
    assert orders[0][0] == orders[0][1] and orders[0][0] != orders[1][0]
    other_seed = make_train_dataset(images, labels, batch_size=8, seed=2, augment=False)
    assert collect(other_seed.dataset)[0][:, 0, 0, 0].astype(int).tolist() != orders[0][0]


def test_augmentation_is_reproducible_per_epoch_and_train_only():
    images, labels = arrays(size=32)
    data = make_train_dataset(images, labels, batch_size=20, seed=3, augment=True, deterministic=True)
    seeding = EpochSeeding(3, data)
    inputs = keras.Input((2,))
    seeding.set_model(keras.Model(inputs, keras.layers.Dropout(0.5)(inputs)))
    runs = []
    for epoch in (0, 1, 0):
        seeding.on_epoch_begin(epoch)
        runs.append(collect(data.dataset)[0])
    assert runs[0].shape == images.shape
    assert np.abs(np.sort(runs[0].ravel()) - np.sort(images.astype(np.float32).ravel())).mean() > 1
    np.testing.assert_array_equal(runs[0], runs[2])  # same epoch, same augmentation
    assert not np.array_equal(runs[0], runs[1])
    plain, _ = collect(make_dataset(images, labels, batch_size=20))
    np.testing.assert_array_equal(plain, images.astype(np.float32))
