"""Two pixel statistics of a slice that say whether a model can assess it at all: its gray spread (blank?) and
its chroma (a colour picture, not a gray scan). One definition, shared by the data audit (`tumorclf.audit`) and
the quality gate (`tumorclf.gate`), whose in-graph `PixelStatistics` layer must agree with it."""

from __future__ import annotations

import numpy as np

BLANK_SPREAD = 20.0  # a slice whose 1st-99th percentile gray range is at most this (of 255) is near-blank
COLOUR_CHROMA = 8.0  # mean per-pixel (max - min channel) above this is colour, not gray (JPEG chroma noise is ~1)


def pixel_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gray spread, chroma) per uint8 RGB image: the 1st-99th percentile range of the channel mean,
    and the mean over pixels of max minus min channel."""
    spread, chroma = np.empty(len(images)), np.empty(len(images))
    for i, image in enumerate(images):
        rgb = np.asarray(image, dtype=np.float32)
        low, high = np.percentile(rgb.mean(axis=-1), [1, 99])
        spread[i] = high - low
        chroma[i] = float(np.mean(rgb.max(axis=-1) - rgb.min(axis=-1)))
    return spread, chroma
