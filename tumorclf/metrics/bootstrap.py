"""The headline metrics of a set of predictions, each with a 95% bootstrap interval over duplicate groups.

Near-copies of one scan are not independent evidence: resampling files would count a group of ten
near-copies ten times and give intervals that are too narrow. Each resample therefore draws duplicate
groups with replacement (a cluster bootstrap) and takes all files of every drawn group; the interval is
the percentile interval of the resampled metric (resamples where it is undefined, e.g. no tumor image
for sensitivity, are left out).

Images of one class only (an external folder of tumour slices, or a resample that drew one class) have a
sensitivity or a specificity, an accuracy and a Brier score, but none of `NEEDS_BOTH_CLASSES`: those are NaN
there rather than the degenerate values the formulas give (precision 1 or 0 by construction, balanced accuracy
equal to the one recall), and `not_reportable` says why.
"""

from __future__ import annotations

import numpy as np

from tumorclf.metrics import DEFAULT_RESAMPLES
from tumorclf.data.dataset import CLASS_NAMES
from tumorclf.metrics.calibration import (
    ECE_BINS,
    expected_calibration_error,
    sensitivity,
)
from tumorclf.metrics.classification import (
    balanced_accuracy,
    brier_score,
    decide,
    precision_recall_f1,
    roc_auc,
    specificity,
)

METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "f1", "auc", "brier", "ece")
# why each of these means nothing on images of one class
NEEDS_BOTH_CLASSES = {
    "balanced_accuracy": "the mean of sensitivity and specificity needs both classes",
    "precision": "the share of Tumor decisions that are right is 1 or 0 by construction with one class",
    "f1": "it is built on precision",
    "auc": "ranking tumour against healthy slices needs both classes",
    "ece": "the observed tumour rate is the same in every bin, so ECE measures the distance from that class, "
           "not calibration",
}


def not_reportable(labels) -> dict[str, str]:
    """`{metric: why}` for the `METRICS` that labels of one class cannot give (empty with both classes, or none)."""
    present = np.unique(np.asarray(labels, dtype=np.int64))
    if len(present) != 1:
        return {}
    only = CLASS_NAMES[int(present[0])]
    missing = {"specificity" if only == "Tumor" else "sensitivity": f"no {CLASS_NAMES[1 - int(present[0])]} slices"}
    return {name: f"only {only} slices: {why}" for name, why in {**missing, **NEEDS_BOTH_CLASSES}.items()}


def point_metrics(labels, prob_tumor, threshold: float) -> dict[str, float]:
    """The nine `METRICS` of P(Tumor) decided at `threshold` (NaN where undefined: `NEEDS_BOTH_CLASSES` with
    one class)."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(prob_tumor, dtype=np.float64)
    if not len(y):
        return dict.fromkeys(METRICS, float("nan"))
    predicted = decide(p, threshold)
    precision, _, f1 = precision_recall_f1(y, predicted)
    if not np.any(predicted == 1):
        precision = float("nan")  # no Tumor decision: undefined (not 0) in an interval
    values = {"accuracy": float(np.mean(predicted == y)), "balanced_accuracy": balanced_accuracy(y, predicted),
              "sensitivity": sensitivity(y, predicted), "specificity": specificity(y, predicted),
              "precision": float(precision), "f1": f1, "auc": roc_auc(y, p), "brier": brier_score(y, p),
              "ece": expected_calibration_error(y, p)}
    if len(np.unique(y)) == 1:
        values.update(dict.fromkeys(NEEDS_BOTH_CLASSES, float("nan")))
    return values


def group_multiplicities(groups, n_resamples: int, seed: int = 0, chunk: int = 250):
    """Yield (up to `chunk` resamples, files) arrays: how often each file is in each resample. A resample
    draws as many groups as there are, with replacement, and takes all files of every drawn group, so a
    file's count is its group's. Weights instead of index lists let all metrics of a chunk be computed at
    once (`weighted_metrics`)."""
    _, group_of = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(group_of.max()) + 1 if len(group_of) else 0
    rng = np.random.default_rng(seed)
    for first in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - first)
        drawn = np.concatenate([rng.integers(0, n_groups, n_groups) for _ in range(rows)])
        offsets = np.repeat(np.arange(rows) * n_groups, n_groups)
        per_group = np.bincount(drawn + offsets, minlength=rows * n_groups).reshape(rows, n_groups)
        yield per_group[:, group_of].astype(np.float64)


def weighted_metrics(y: np.ndarray, p: np.ndarray, threshold: float, weights: np.ndarray) -> np.ndarray:
    """(resamples, len(METRICS)) array: `point_metrics` of each row of `weights` (a file counted as often as
    its weight), all rows at once. AUC is the Mann-Whitney form of the trapezoid ROC area (ties count half)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        positive = y == 1
        predicted = decide(p, threshold) == 1
        n = weights.sum(axis=1)
        pos = weights @ positive
        neg = n - pos
        tp = weights @ (positive & predicted)
        fp = weights @ (~positive & predicted)
        tn, fn = neg - fp, pos - tp
        sens = np.where(pos > 0, tp / pos, np.nan)
        spec = np.where(neg > 0, tn / neg, np.nan)
        both = (pos > 0) & (neg > 0)  # else NaN for NEEDS_BOTH_CLASSES, as in `point_metrics`
        balanced = (sens + spec) / 2
        precision = np.where(both & (tp + fp > 0), tp / (tp + fp), np.nan)
        f1 = np.where(both, np.where(tp > 0, 2 * tp / (2 * tp + fp + fn), 0.0), np.nan)
        # AUC: each positive file scores the negatives strictly below it plus half of those tied with it
        order = np.argsort(p, kind="stable")
        sorted_p, sorted_w, sorted_pos = p[order], weights[:, order], positive[order]
        tie_start = np.r_[0, np.flatnonzero(np.diff(sorted_p)) + 1]
        tie_of = np.repeat(np.arange(len(tie_start)), np.diff(np.r_[tie_start, len(p)]))
        neg_w = sorted_w * ~sorted_pos
        neg_below = np.concatenate([np.zeros((len(weights), 1)), np.cumsum(neg_w, axis=1)], axis=1)[:, tie_start]
        neg_tied = np.add.reduceat(neg_w, tie_start, axis=1)
        wins = ((sorted_w * sorted_pos) * (neg_below + 0.5 * neg_tied)[:, tie_of]).sum(axis=1)
        auc = np.where(both, wins / (pos * neg), np.nan)
        brier = weights @ (p - y) ** 2 / n
        which = np.clip((p * ECE_BINS).astype(np.int64), 0, ECE_BINS - 1)
        in_bin = np.eye(ECE_BINS)[which]
        ece = np.where(both, np.abs(weights @ (in_bin * (y - p)[:, None])).sum(axis=1) / n, np.nan)
    columns = {"accuracy": (tp + tn) / n, "balanced_accuracy": balanced, "sensitivity": sens, "specificity": spec,
               "precision": precision, "f1": f1, "auc": auc, "brier": brier, "ece": ece}
    return np.stack([columns[name] for name in METRICS], axis=1)


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
    samples = np.concatenate([weighted_metrics(y, p, threshold, weights)
                              for weights in group_multiplicities(groups, n_resamples, seed)])
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
