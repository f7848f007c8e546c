"""Functional metrics from predicted probabilities (each checked against scikit-learn in the tests) and the
one place a threshold is applied (`decide`). NumPy only: the report files are `tumorclf.evaluation.reports`'."""

from __future__ import annotations

import numpy as np

DEFAULT_THRESHOLD = 0.5  # P(Tumor) at or above which Tumor is predicted, unless a run records another
EPSILON = 1e-7  # Keras' clipping in categorical cross-entropy


def decide(prob_tumor, threshold: float) -> np.ndarray:
    """The predicted class of each P(Tumor): 1 (Tumor) where P >= threshold, else 0 (Healthy), as int64.

    The one place a threshold is applied: both sides are compared in float64, so a float32 probability
    is judged by its exact value (NumPy 2 would otherwise compare float32 with a Python float in
    float32, where `np.float32(0.7) >= 0.7` is True although the float32 is below 0.7)."""
    return (np.asarray(prob_tumor, dtype=np.float64) >= np.float64(threshold)).astype(np.int64)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """2x2 counts: rows are true classes (Healthy, Tumor), columns predicted."""
    return np.bincount(2 * np.asarray(y_true, int) + np.asarray(y_pred, int), minlength=4).reshape(2, 2)


def precision_recall_f1(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float, float]:
    """Precision, recall and F1 of the Tumor class (0.0 where undefined)."""
    (_, fp), (fn, tp) = confusion_matrix(y_true, y_pred)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return float(precision), float(recall), float(f1)


def specificity(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """True-negative rate: the share of Healthy images predicted Healthy (NaN without Healthy images)."""
    (tn, fp), _ = confusion_matrix(y_true, y_pred)
    return float(tn / (tn + fp)) if tn + fp else float("nan")


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean of the per-class recalls (sensitivity and specificity) over the classes present, as
    scikit-learn's `balanced_accuracy_score`; NaN for no images."""
    matrix = confusion_matrix(y_true, y_pred)
    totals = matrix.sum(axis=1)
    present = totals > 0
    return float(np.mean(matrix.diagonal()[present] / totals[present])) if present.any() else float("nan")


def brier_score(y_true: np.ndarray, prob_tumor: np.ndarray) -> float:
    """Mean squared difference between P(Tumor) and the true label (0 is perfect, 0.25 is a constant 0.5);
    NaN for no images."""
    y_true, prob_tumor = np.asarray(y_true, dtype=np.float64), np.asarray(prob_tumor, dtype=np.float64)
    return float(np.mean((prob_tumor - y_true) ** 2)) if len(y_true) else float("nan")


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="mergesort")
    score, y_true = np.asarray(score, dtype=np.float64)[order], np.asarray(y_true)[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]
    tps = np.cumsum(y_true)[last_of_value]
    fps = (last_of_value + 1) - tps
    tpr = np.r_[0.0, tps / max(tps[-1], 1)]
    fpr = np.r_[0.0, fps / max(fps[-1], 1)]
    return fpr, tpr, np.r_[np.inf, score[last_of_value]]


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (NaN when only one class is present)."""
    if len(np.unique(y_true)) < 2:
        return float("nan")
    fpr, tpr, _ = roc_curve(y_true, score)
    return float(np.trapezoid(tpr, fpr))


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """All test metrics from (n, 2) softmax outputs; Tumor (1) is the positive class, decided by `decide`."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    y_pred = decide(probs[:, 1], threshold)
    matrix = confusion_matrix(y_true, y_pred)
    precision, recall, f1 = precision_recall_f1(y_true, y_pred)
    per_class = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    picked = np.clip(probs[np.arange(len(y_true)), y_true] / probs.sum(axis=1), EPSILON, 1 - EPSILON)
    return {
        "test_loss": float(-np.mean(np.log(picked))),
        "accuracy": float(np.mean(y_pred == y_true)),
        "per_class_accuracy": {"healthy": float(per_class[0]), "tumor": float(per_class[1])},
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auc": roc_auc(y_true, probs[:, 1]),
        "confusion_matrix": matrix.tolist(),
        "threshold": threshold,
        "n": int(len(y_true)),
    }
