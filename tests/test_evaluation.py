from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from tumorclf.metrics.classification import (balanced_accuracy, brier_score, classification_metrics, confusion_matrix, decide,
                                 roc_auc, roc_curve, specificity)
from tumorclf.evaluation.reports import write_reports
from tumorclf.runs.folder import DEFAULT_THRESHOLD, RunDir


def predictions(seed: int, n: int = 300, rounding: int | None = None):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.35 * y + rng.random(n) * 0.65, 0, 1)
    if rounding is not None:
        p = np.round(p, rounding)  # many ties
    return y, np.stack([1 - p, p], axis=1)


@pytest.mark.parametrize("seed, rounding", [(0, None), (1, 1), (2, 2)])
def test_metrics_equal_sklearn(seed, rounding):
    y, probs = predictions(seed, rounding=rounding)
    pred = (probs[:, 1] >= 0.5).astype(int)
    m = classification_metrics(y, probs)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, probs[:, 1]))
    assert m["test_loss"] == pytest.approx(skm.log_loss(y, probs), rel=1e-6)
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    per_class = skm.recall_score(y, pred, average=None)
    assert [m["per_class_accuracy"]["healthy"], m["per_class_accuracy"]["tumor"]] == pytest.approx(per_class)


def test_roc_curve_equals_sklearn_with_ties():
    y, probs = predictions(3, rounding=1)
    fpr, tpr, thresholds = roc_curve(y, probs[:, 1])
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, probs[:, 1], drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thresholds[1:], sk_thr[1:])


def test_edge_cases():
    assert np.isnan(roc_auc(np.zeros(5, int), np.linspace(0, 1, 5)))
    m = classification_metrics(np.array([0, 0, 1]), np.array([[0.9, 0.1]] * 3))
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert confusion_matrix(np.array([0, 1, 1]), np.array([1, 1, 0])).tolist() == [[0, 1], [1, 1]]


def test_write_reports(tmp_path: Path):
    y, probs = predictions(4)
    m = classification_metrics(y, probs)
    write_reports(RunDir(tmp_path), m, y, probs, "test")
    assert json.loads((tmp_path / "metrics.json").read_text())["f1"] == pytest.approx(m["f1"])
    rows = (tmp_path / "roc.csv").read_text().splitlines()
    assert rows[0] == "threshold,fpr,tpr" and rows[-1].endswith(",1.0,1.0")
    for png in ("roc.png", "confusion_matrix.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize("seed, threshold", [(0, 0.5), (1, 0.3), (2, 0.8)])
def test_specificity_balanced_accuracy_and_brier_equal_sklearn(seed, threshold):
    y, probs = predictions(seed, rounding=2)
    pred = (probs[:, 1] >= threshold).astype(int)
    assert specificity(y, pred) == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert balanced_accuracy(y, pred) == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert brier_score(y, probs[:, 1]) == pytest.approx(skm.brier_score_loss(y, probs[:, 1]))


def test_specificity_and_balanced_accuracy_with_one_class():
    tumours = np.ones(4, int)
    assert np.isnan(specificity(tumours, np.array([1, 0, 1, 1])))
    assert balanced_accuracy(tumours, np.array([1, 0, 1, 1])) == 0.75
    assert np.isnan(brier_score(np.zeros(0), np.zeros(0)))


def test_decide_compares_float32_probabilities_in_float64():
    below = np.float32(0.7)  # 0.699999988..., the float32 nearest 0.7, is below the float 0.7
    assert float(below) < 0.7
    p = np.array([np.nextafter(below, np.float32(0)), below, np.nextafter(below, np.float32(1)), 0.0, 1.0],
                 dtype=np.float32)
    decisions = decide(p, 0.7)
    assert decisions.dtype == np.int64
    assert decisions.tolist() == [0, 0, 1, 0, 1]
    # at or above the threshold is Tumor, in float64 as in float32 where the value is exact
    assert decide(np.float32([0.5, np.nextafter(np.float32(0.5), np.float32(0))]), 0.5).tolist() == [1, 0]
    assert decide([0.7], 0.7).tolist() == [1]
    # classification_metrics takes the same decisions from float32 softmax outputs
    probs = np.stack([1 - p, p], axis=1).astype(np.float32)
    y = np.array([0, 1, 1, 0, 1])
    assert classification_metrics(y, probs, 0.7)["confusion_matrix"] == confusion_matrix(y, decisions).tolist()


def test_classification_metrics_default_threshold_is_the_run_default():
    m = classification_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]))
    assert m["threshold"] == DEFAULT_THRESHOLD
