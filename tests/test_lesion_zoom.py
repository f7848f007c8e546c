"""Lesion-centred zoom (tumorclf.transforms.lesion_zoom): the windows hold their box whatever the image's label,
the crop follows the box onto the pixels, and the fast recipe's augmented views are built from the zoomed images."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tumorclf.errors import ConfigError
from tumorclf.explain.boxes import Boxes
from tumorclf.runs.config import Config
from tumorclf.training.feature_cache import cache_features
from tumorclf.transforms.lesion_zoom import MARGIN, SIDES, crop_windows, lesion_zoom, union, zoom_crops
from tumorclf.transforms.pipeline import augmenter

BOX = np.array([0.55, 0.2, 0.75, 0.4])


def holds(window: np.ndarray, box: np.ndarray) -> bool:
    return bool(window[0] <= box[0] + 1e-9 and window[1] <= box[1] + 1e-9 and window[2] >= box[2] - 1e-9
                and window[3] >= box[3] - 1e-9)


def test_union_of_an_images_boxes():
    np.testing.assert_allclose(union([[0.1, 0.5, 0.2, 0.6], [0.3, 0.2, 0.4, 0.3]]), [0.1, 0.2, 0.4, 0.6])


def test_windows_are_squares_in_the_image_that_hold_the_box():
    rng = np.random.default_rng(0)
    boxes = [np.array([BOX]), np.array([[0.0, 0.0, 0.9, 0.2]]), np.array([[0.02, 0.9, 0.1, 1.0]])] * 200
    windows = crop_windows(boxes, 1.0, rng)
    sides = windows[:, 2] - windows[:, 0]
    np.testing.assert_allclose(sides, windows[:, 3] - windows[:, 1])
    assert (windows >= -1e-12).all() and (windows <= 1 + 1e-12).all()
    for window, box in zip(windows, boxes):
        assert holds(window, box[0])
    small = sides[0::3]
    assert SIDES[0] <= small.min() and small.max() <= SIDES[1] and small.std() > 0.05  # drawn, not fixed
    np.testing.assert_allclose(sides[1::3], 1.0)  # 1.25 x a box of side 0.9: the whole image
    assert (sides[2::3] >= SIDES[0]).all()
    assert MARGIN * 0.2 < SIDES[0]  # the first box's margin is the lower side


def test_images_without_a_box_are_cropped_like_the_others_around_a_drawn_box():
    rng = np.random.default_rng(1)
    pool = [np.array([BOX]), np.array([[0.1, 0.6, 0.3, 0.9]])]
    windows = crop_windows([*pool, *[None] * 400], 1.0, rng)
    unboxed = windows[2:]
    held = np.array([[holds(w, p[0]) for p in pool] for w in unboxed])
    assert held.any(axis=1).all()  # every window holds one of the training boxes
    assert 0.35 < held[:, 0].mean() < 0.65 or 0.35 < held[:, 1].mean() < 0.65  # both boxes are drawn


def test_the_share_of_zoomed_images_and_the_seed():
    boxes = [np.array([BOX])] * 2000
    windows = crop_windows(boxes, 0.3, np.random.default_rng(2))
    assert abs(np.mean(~np.isnan(windows[:, 0])) - 0.3) < 0.04
    again = crop_windows(boxes, 0.3, np.random.default_rng(2))
    np.testing.assert_array_equal(np.isnan(windows), np.isnan(again))
    np.testing.assert_allclose(windows[~np.isnan(windows)], again[~np.isnan(again)])
    assert np.isnan(crop_windows(boxes, 0.0, np.random.default_rng(2))).all()
    with pytest.raises(ValueError, match="at least one image with a box"):
        crop_windows([None, None], 0.5, np.random.default_rng(0))


def test_a_full_window_is_the_image_and_no_window_leaves_it():
    images = np.random.default_rng(3).integers(0, 256, (2, 16, 16, 3)).astype("uint8")
    out = zoom_crops(images, np.array([[0.0, 0.0, 1.0, 1.0], [np.nan] * 4]))
    np.testing.assert_array_equal(out, images)
    assert out is not images


def test_the_crop_follows_the_box_onto_the_pixels():
    """A bright square drawn at the box: after the zoom it is still in view, where the box lands in the window,
    and its area grows by the zoom squared."""
    size = 64
    image = np.zeros((1, size, size, 3), dtype="uint8")
    x0, y0, x1, y1 = (BOX * size).astype(int)
    image[0, y0:y1, x0:x1] = 255
    window = np.array([[0.4, 0.1, 0.9, 0.6]])  # side 0.5: a 2x zoom
    zoomed = zoom_crops(image, window)[0, ..., 0] > 127
    side = window[0, 2] - window[0, 0]
    expected = np.zeros((size, size), dtype=bool)
    ex0, ey0 = ((BOX[:2] - window[0, :2]) / side * size).round().astype(int)
    ex1, ey1 = ((BOX[2:] - window[0, :2]) / side * size).round().astype(int)
    expected[ey0:ey1, ex0:ex1] = True
    assert (zoomed ^ expected).sum() <= 2 * (ex1 - ex0 + ey1 - ey0)  # at most a pixel off along the edges
    assert abs(zoomed.sum() / (image[0, ..., 0] > 127).sum() - 1 / side ** 2) < 0.3


def test_the_flags_are_checked_together():
    with pytest.raises(ConfigError, match="--lesion-zoom needs --boxes"):
        Config(model="vgg16", imagenet=True, recipe="fast", lesion_zoom=0.5)
    with pytest.raises(ConfigError, match="a cached-feature recipe"):
        Config(model="simplecnn", lesion_zoom=0.5, boxes="b.csv")
    with pytest.raises(ConfigError, match="and augmentation"):
        Config(model="vgg16", imagenet=True, recipe="fast", lesion_zoom=0.5, boxes="b.csv", augment=False)
    with pytest.raises(ConfigError, match=r"in \[0, 1\]"):
        Config(model="vgg16", imagenet=True, recipe="fast", lesion_zoom=1.5, boxes="b.csv")
    cfg = Config(model="vgg16", imagenet=True, recipe="fast", boxes="b.csv", lesion_zoom=0.5, attention_prior=0.5)
    assert cfg.run_name.endswith("_fast_attention0.5_lesionzoom0.5")


def test_the_augmented_views_start_from_the_zoomed_images(tmp_path):
    """cache_features: view 1 is the stem on the augmentation of the zoomed images, view 0 the images as they are."""
    size, n = 32, 12
    rng = np.random.default_rng(4)
    images = {"train": rng.integers(0, 256, (n, size, size, 3)).astype("uint8"),
              "val": rng.integers(0, 256, (4, size, size, 3)).astype("uint8")}
    boxes = [Boxes(np.array([BOX]), "test") if i % 2 else None for i in range(n)]
    inputs = keras.Input((size, size, 3))
    stem = keras.Model(inputs, keras.layers.AveragePooling2D(4)(inputs))
    cfg = Config(model="vgg16", imagenet=True, recipe="fast", image_size=size, feature_views=2, batch_size=4,
                 boxes="b.csv", lesion_zoom=1.0, cache_dir=str(tmp_path), deterministic=True)
    views, held, _ = cache_features(cfg, stem, images, ("val",), boxes)
    np.testing.assert_allclose(views[0], stem.predict(images["train"].astype("float32"), verbose=0), rtol=1e-6)
    seed = cfg.seed + 10
    zoomed = lesion_zoom(images["train"], [None if b is None else b.corners for b in boxes], 1.0, seed)
    augmented = augmenter(seed, size, cfg.acquisition, cfg.elastic)
    expected = np.concatenate([stem.predict(augmented(zoomed[i:i + 4].astype("float32"), training=True), verbose=0)
                               for i in range(0, n, 4)])
    np.testing.assert_allclose(views[1], expected, rtol=1e-5, atol=1e-3)
    plain = Config(model="vgg16", imagenet=True, recipe="fast", image_size=size, feature_views=2, batch_size=4,
                   cache_dir=str(tmp_path), deterministic=True)
    unzoomed, _, _ = cache_features(plain, stem, images, ("val",))
    assert not np.allclose(unzoomed[1], views[1])
