"""The headline metrics of a set of predictions, each with a 95% bootstrap interval over duplicate groups.

Near-copies of one scan are not independent evidence: resampling files would count a group of ten
near-copies ten times and give intervals that are too narrow. Each resample therefore draws duplicate
groups with replacement (a cluster bootstrap) and takes all files of every drawn group; the interval is
the percentile interval of the resampled metric (resamples where it is undefined, e.g. no tumor image
for sensitivity, are left out).
"""

from __future__ import annotations

import numpy as np

from tumorclf.metrics import DEFAULT_RESAMPLES
from tumorclf.metrics.calibration import expected_calibration_error, sensitivity
from tumorclf.metrics.classification import balanced_accuracy, brier_score, decide, precision_recall_f1, roc_auc, specificity

METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "f1", "auc", "brier", "ece")


def point_metrics(labels, prob_tumor, threshold: float) -> dict[str, float]:
    """The nine `METRICS` of P(Tumor) decided at `threshold` (NaN where undefined)."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(prob_tumor, dtype=np.float64)
    if not len(y):
        return dict.fromkeys(METRICS, float("nan"))
    predicted = decide(p, threshold)
    precision, _, f1 = precision_recall_f1(y, predicted)
    if not np.any(predicted == 1):
        precision = float("nan")  # no Tumor decision: undefined (not 0) in an interval
    return {"accuracy": float(np.mean(predicted == y)), "balanced_accuracy": balanced_accuracy(y, predicted),
            "sensitivity": sensitivity(y, predicted), "specificity": specificity(y, predicted),
            "precision": float(precision), "f1": f1, "auc": roc_auc(y, p), "brier": brier_score(y, p),
            "ece": expected_calibration_error(y, p)}


def group_resamples(groups, n_resamples: int, seed: int = 0):
    """Yield the file indices of each resample: as many groups as there are, drawn with replacement,
    each contributing all of its files."""
    _, group_of = np.unique(np.asarray(groups), return_inverse=True)
    order = np.argsort(group_of, kind="stable")
    sizes = np.bincount(group_of)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        drawn = rng.integers(0, len(sizes), len(sizes))
        lengths = sizes[drawn]
        offsets = np.repeat(starts[drawn] - np.r_[0, np.cumsum(lengths)[:-1]], lengths)
        yield order[np.arange(lengths.sum()) + offsets]


def bootstrap_intervals(labels, prob_tumor, groups, threshold: float, n_resamples: int = DEFAULT_RESAMPLES,
                        seed: int = 0) -> dict[str, dict]:
    """`{metric: {"value": v, "ci95": [lo, hi]}}` for the `METRICS`; `n_resamples=0` gives no intervals
    (`ci95` None)."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(prob_tumor, dtype=np.float64)
    if not len(y) == len(p) == len(groups):
        raise ValueError(f"labels, probabilities and groups differ in length: {len(y)}, {len(p)}, {len(groups)}")
    values = point_metrics(y, p, threshold)
    if n_resamples <= 0 or not len(y):
        return {name: {"value": values[name], "ci95": None} for name in METRICS}
    samples = np.array([[m[name] for name in METRICS]
                        for m in (point_metrics(y[rows], p[rows], threshold)
                                  for rows in group_resamples(groups, n_resamples, seed))])
    tail = 2.5  # percent in each tail: a 95% interval
    out = {}
    for j, name in enumerate(METRICS):
        column = samples[:, j][np.isfinite(samples[:, j])]
        ci = [float(np.percentile(column, tail)), float(np.percentile(column, 100 - tail))] if len(column) else None
        out[name] = {"value": values[name], "ci95": ci}
    return out


def format_interval(metric: dict, digits: int = 3) -> str:
    """`0.961 [0.946, 0.974]` (or just the value without an interval; `-` when undefined)."""
    value, ci = metric.get("value"), metric.get("ci95")
    if value is None or not np.isfinite(value):
        return "-"
    text = f"{value:.{digits}f}"
    return f"{text} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else text
