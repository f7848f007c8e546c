from __future__ import annotations

import keras
import numpy as np

from tumorclf.transforms.pipeline import RandomAffine, make_dataset, make_train_dataset
from tumorclf.training.callbacks import EpochSeeding


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


def square(size=33, half=4):
    image = np.zeros((1, size, size, 3), np.float32)
    image[:, size // 2 - half:size // 2 + half + 1, size // 2 - half:size // 2 + half + 1] = 255.0
    return np.repeat(image, 64, axis=0)


def test_random_affine_with_zero_ranges_is_the_identity_or_a_flip():
    images, _ = arrays(n=64)
    x = images.astype(np.float32)
    still = RandomAffine(rotation=0, zoom=0, shift=0, flip=False, seed=0)
    np.testing.assert_allclose(still(x, training=True), x, atol=1e-3)
    flipped = np.asarray(RandomAffine(rotation=0, zoom=0, shift=0, flip=True, seed=0)(x, training=True))
    is_flip = [np.allclose(f, i[:, ::-1], atol=1e-3) for f, i in zip(flipped, x)]
    is_same = [np.allclose(f, i, atol=1e-3) for f, i in zip(flipped, x)]
    assert all(a or b for a, b in zip(is_flip, is_same)) and 10 < sum(is_flip) < 54
    np.testing.assert_array_equal(RandomAffine(seed=0)(x, training=False), x)  # inference: untouched


def test_random_affine_ranges_move_and_scale_a_square_as_configured():
    x = square()
    area = (x[0, ..., 0] > 127).sum()

    def moments(out):
        mask = np.asarray(out)[..., 0] > 127
        ys, xs = np.indices(mask.shape[1:])
        counts = mask.sum(axis=(1, 2))
        return counts, (mask * xs).sum(axis=(1, 2)) / counts, (mask * ys).sum(axis=(1, 2)) / counts

    counts, cx, cy = moments(RandomAffine(rotation=0, zoom=0, shift=0.1, seed=1)(x, training=True))
    assert np.abs(counts - area).max() <= 9 and np.abs(cx - 16).max() <= 3.4 and np.abs(cy - 16).max() <= 3.4
    assert np.abs(cx - 16).max() > 1.5  # it does move
    counts, cx, cy = moments(RandomAffine(rotation=0, zoom=0.2, shift=0, flip=False, seed=2)(x, training=True))
    assert np.allclose(cx, 16) and np.allclose(cy, 16)
    assert counts.min() >= area / 1.2**2 - 2 * 9 and counts.max() <= area / 0.8**2 + 2 * 9 and counts.std() > 5
    counts, cx, cy = moments(RandomAffine(rotation=0.25, zoom=0, shift=0, flip=False, seed=3)(x, training=True))
    assert np.allclose(cx, 16, atol=0.2) and np.allclose(cy, 16, atol=0.2)  # rotation about the centre


def test_random_affine_round_trips_through_its_config():
    layer = RandomAffine(rotation=0.1, zoom=0.2, shift=0.03, flip=False, seed=5)
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(clone, RandomAffine)
    assert (clone.rotation, clone.zoom, clone.shift, clone.flip, clone.seed) == (0.1, 0.2, 0.03, False, 5)


def test_pipelines_run_without_the_tf_data_autotuner():
    # its optimisation thread stalls every iterator release for seconds
    images, labels = arrays()
    for dataset in (make_dataset(images, labels, 8), make_train_dataset(images, labels, 8, seed=0).dataset):
        assert dataset.options().autotune.enabled is False
