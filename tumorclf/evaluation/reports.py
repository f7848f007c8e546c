"""The report files of a finished run: metrics.json, the test ROC curve (CSV and PNG) and the confusion matrix."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tumorclf.utils.files import atomic_write_bytes, atomic_write_text, csv_text, figure_png  # noqa: E402
from tumorclf.metrics.classification import roc_curve  # noqa: E402
from tumorclf.runs.folder import RunDir  # noqa: E402


def write_reports(run: RunDir, metrics: dict, y_true: np.ndarray, probs: np.ndarray, title: str) -> None:
    """The run's metrics.json, roc.csv, roc.png and confusion-matrix PNG, each written atomically
    (metrics.json last: with best.keras it marks the run finished)."""
    fpr, tpr, thresholds = roc_curve(y_true, probs[:, 1])
    atomic_write_text(run.roc_file, csv_text(["threshold", "fpr", "tpr"], zip(thresholds, fpr, tpr)))

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, label=f"AUC = {metrics['auc']:.4f}")
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title=f"ROC: {title}")
    ax.legend(loc="lower right")
    atomic_write_bytes(run.roc_png, figure_png(fig))

    fig, ax = plt.subplots(figsize=(4.5, 4))
    matrix = np.asarray(metrics["confusion_matrix"])
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["Healthy", "Tumor"], yticklabels=["Healthy", "Tumor"])
    ax.set(xlabel="Predicted", ylabel="True", title=f"Confusion matrix: {title}")
    atomic_write_bytes(run.confusion_png, figure_png(fig))

    atomic_write_text(run.metrics_file, json.dumps(metrics, indent=2) + "\n")

