"""The model-randomisation sanity check of a heatmap method (Adebayo et al., 2018, "Sanity checks for saliency
maps").

A method that explains the model must give other maps when the model's top is replaced by random weights:
`randomise_top` re-draws every weight above the explained layer (the classifier that weighs its feature map:
the cascading randomisation's steps that leave the feature map itself as trained), and `rank_correlation`
measures how alike the trained and the randomised maps of the same image are. A method whose maps, or whose localisation
scores, survive the randomisation shows the image (edges, bright regions), not the model's evidence.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def randomise_top(model, layer: str, seed: int = 0):
    """`model` (changed in place, and returned) with the weights of every layer after `layer` re-drawn:
    normal, zero mean, each variable's own standard deviation (so activations keep their scale)."""
    names = [item.name for item in model.layers]
    if layer not in names:
        raise ValueError(f"model {model.name} has no layer {layer!r}")
    rng = np.random.default_rng(seed)
    for item in model.layers[names.index(layer) + 1:]:
        for variable in item.trainable_weights:
            values = np.asarray(variable.numpy())
            scale = float(values.std()) or 0.05
            variable.assign(rng.normal(0.0, scale, values.shape).astype(values.dtype))
    return model


def rank_correlation(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation of each pair of maps (n, H, W): 1 for maps that order the pixels alike,
    about 0 for unrelated ones; 0 where a map is flat (it orders nothing)."""
    a = np.asarray(first, dtype="float64").reshape(len(first), -1)
    b = np.asarray(second, dtype="float64").reshape(len(second), -1)
    out = np.zeros(len(a))
    for i, (x, y) in enumerate(zip(a, b)):
        rx, ry = rankdata(x) - (len(x) + 1) / 2, rankdata(y) - (len(y) + 1) / 2
        norm = np.sqrt((rx ** 2).sum() * (ry ** 2).sum())
        out[i] = float((rx * ry).sum() / norm) if norm > 0 else 0.0
    return out
