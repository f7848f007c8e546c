"""Lesion-centred zoom (`--lesion-zoom SHARE --boxes FILE.csv`): a share of the training images of each augmented
view is replaced by a square crop, rescaled to the full size, that keeps the image's tumour box in view.

The crop is the same for every class: an image without a box (a healthy slice, or a tumour slice nobody
annotated) is cropped around a box drawn from the training boxes, so a zoomed image says nothing about its
label; what changes for a boxed tumour slice is that its tumour, not an arbitrary part of the head, stays in
view and fills more of it, while the frame, the corners and much of the skull leave it. Boxes are fractions of
the decoded square image (its width and height), the frame every recipe's input starts from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

SIDES = (0.5, 0.8)  # the crop's side as a fraction of the image's: a zoom of 1.25x to 2x
MARGIN = 1.25  # a crop is at least this many times the box's longer side (and at most the whole image)


def union(corners: np.ndarray) -> np.ndarray:
    """The smallest box (x0, y0, x1, y1) that holds every box of an image's (k, 4) corners."""
    corners = np.asarray(corners, dtype="float64").reshape(-1, 4)
    return np.array([corners[:, 0].min(), corners[:, 1].min(), corners[:, 2].max(), corners[:, 3].max()])


def crop_windows(boxes: Sequence[np.ndarray | None], share: float, rng: np.random.Generator) -> np.ndarray:
    """(n, 4) crop windows (x0, y0, x1, y1 as fractions) for n images, NaN for those left as they are: `share`
    of them, drawn at random, get a square window that holds their box (its union), or for an image without
    one a box drawn from the others."""
    pool = [union(b) for b in boxes if b is not None]
    if not pool:
        raise ValueError("a lesion-centred zoom needs at least one image with a box")
    windows = np.full((len(boxes), 4), np.nan)
    for i in np.flatnonzero(rng.random(len(boxes)) < share):
        box = union(boxes[i]) if boxes[i] is not None else pool[rng.integers(len(pool))]
        box = np.clip(box, 0.0, 1.0)
        low = min(1.0, max(SIDES[0], MARGIN * max(box[2] - box[0], box[3] - box[1])))
        side = rng.uniform(low, max(low, SIDES[1]))
        start = []
        for lo_edge, hi_edge in ((box[0], box[2]), (box[1], box[3])):
            # the window [s, s + side] holds [lo_edge, hi_edge] and stays in [0, 1]
            first, last = max(0.0, hi_edge - side), min(lo_edge, 1.0 - side)
            start.append(rng.uniform(first, last) if last > first else min(max(first, 0.0), 1.0 - side))
        windows[i] = [start[0], start[1], start[0] + side, start[1] + side]
    return windows


def _sampled(lo: np.ndarray, hi: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The first and last sample of a window [lo, hi) (fractions) rescaled to `size` pixels, as
    `tf.image.crop_and_resize` takes them: output pixel j covers [lo + j * step, lo + (j + 1) * step), and a
    normalised u samples input index u * (size - 1), whose pixel i covers [i - 0.5, i + 0.5) in fractions * size."""
    step = (hi - lo) / size
    return ((lo + step / 2) * size - 0.5) / (size - 1), ((hi - step / 2) * size - 0.5) / (size - 1)


def zoom_crops(images: np.ndarray, windows: np.ndarray, chunk: int = 256) -> np.ndarray:
    """uint8 `images` (n, h, w, c) with each row that has a window (not NaN) replaced by that crop, bilinearly
    rescaled to (h, w)."""
    out = images.copy()
    rows = np.flatnonzero(~np.isnan(windows[:, 0]))
    height, width = images.shape[1:3]
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        x0, y0, x1, y1 = windows[part].T
        (top, bottom), (left, right) = _sampled(y0, y1, height), _sampled(x0, x1, width)
        boxes = np.stack([top, left, bottom, right], axis=1)
        crops = tf.image.crop_and_resize(tf.cast(images[part], tf.float32), boxes.astype("float32"),
                                         tf.range(len(part)), (height, width), method="bilinear",
                                         extrapolation_value=0.0)
        out[part] = np.clip(np.round(crops.numpy()), 0, 255).astype(images.dtype)
    return out


def lesion_zoom(images: np.ndarray, boxes: Sequence[np.ndarray | None], share: float, seed: int) -> np.ndarray:
    """`images` with `share` of them zoomed around their box (`crop_windows`, drawn from `seed`)."""
    return zoom_crops(images, crop_windows(boxes, share, np.random.default_rng(seed)))
