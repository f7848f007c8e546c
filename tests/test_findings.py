"""The audit's checks on arrays whose answers are known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from tumorclf.audit import findings
from tumorclf.audit.findings import Finding
from tumorclf.data.pixel_statistics import pixel_statistics


def by_finding(found: list[Finding], name: str) -> dict[str, float]:
    return {f.path: f.score for f in found if f.finding == name}


def test_duplicates_exact_near_and_across_labels():
    paths = ["a", "b", "c", "d", "e", "f", "g"]
    labels = np.array([0, 1, 0, 0, 1, 1, 1])
    image_index = np.array([0, 0, 1, 2, 3, 4, 4])  # a=b and f=g byte-identical; c, d distinct contents
    groups = np.array([0, 0, 1, 1, 2, 3, 3])  # c and d near copies; e alone
    found = findings.duplicate_findings(paths, labels, image_index, groups)
    assert by_finding(found, "duplicate_across_labels") == {"a": 0.5, "b": 0.5}
    assert by_finding(found, "exact_duplicate") == {"a": 2.0, "b": 2.0, "f": 2.0, "g": 2.0}
    assert by_finding(found, "near_duplicate") == {"c": 2.0, "d": 2.0}
    assert not [f for f in found if f.path == "e"]
    detail = next(f.details for f in found if f.path == "a" and f.finding == "duplicate_across_labels")
    assert "1 Healthy, 1 Tumor" in detail and "filed as Healthy" in detail and "b" in detail


def test_cross_label_score_is_the_share_that_disagrees():
    labels = np.array([0, 1, 1, 1])
    found = findings.duplicate_findings(list("wxyz"), labels, np.zeros(4, np.int64), np.zeros(4, np.int64))
    assert by_finding(found, "duplicate_across_labels") == {"w": 0.75, "x": 0.25, "y": 0.25, "z": 0.25}


def test_label_issues_follow_the_confident_joint_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 1])
    p_tumor = np.array([0.1, 0.2, 0.9, 0.8, 0.7, 0.2])
    probs = np.stack([1 - p_tumor, p_tumor], axis=1)
    # thresholds: P(Healthy) over Healthy files = mean(.9, .8, .1) = .6; P(Tumor) over Tumor files = mean(.8, .7, .2) = .567
    assert findings.label_issues(probs, labels).tolist() == [False, False, True, False, False, True]
    found = findings.label_error_findings(list("abcdef"), labels, probs)
    assert by_finding(found, "likely_label_error") == pytest.approx({"c": 0.9, "f": 0.8})


def test_out_of_fold_probabilities_separate_separable_classes():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 60)
    features = rng.normal(0, 1, (120, 8)) + labels[:, None] * 3.0
    groups = np.arange(120) // 2  # pairs, each pair one label
    probs = findings.out_of_fold_probabilities(features, labels, groups, folds=5)
    assert probs.shape == (120, 2) and np.allclose(probs.sum(axis=1), 1)
    assert np.mean(probs.argmax(axis=1) == labels) > 0.95


def test_out_of_fold_needs_two_groups_per_class():
    with pytest.raises(ValueError, match="two duplicate groups"):
        findings.out_of_fold_probabilities(np.zeros((4, 2)), np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]), 5)


def test_pixel_statistics_spread_and_chroma():
    constant = np.full((16, 16, 3), 7, np.uint8)
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[..., 0], colour[..., 1] = 100, 50
    gradient = np.repeat(np.repeat(np.linspace(0, 255, 16).astype(np.uint8)[None, :, None], 16, 0), 3, 2)
    spread, chroma = pixel_statistics(np.stack([constant, colour, gradient]))
    assert spread[0] == 0 and chroma[0] == 0
    assert chroma[1] == pytest.approx(100) and spread[1] == 0
    assert spread[2] > 200 and chroma[2] == 0


def test_knn_distance_ignores_the_own_duplicate_group():
    rng = np.random.default_rng(1)
    cluster = rng.normal(0, 0.05, (20, 4)) + np.array([1, 0, 0, 0])
    far = np.array([[0, 0, 0, 1.0], [0, 0, 0, 1.0]])  # two copies of one far image
    features = np.concatenate([cluster, far])
    groups = np.concatenate([np.arange(20), [20, 20]])
    distance = findings.knn_distance(features, groups, k=3)
    assert distance[20] == pytest.approx(distance[21]) and distance[20] > 0.9  # its copy does not vouch for it
    assert distance[:20].max() < 0.1
    assert findings.robust_z(distance)[20] > 10


def test_robust_z_by_hand():
    values = np.array([1.0, 2.0, 3.0, 4.0, 100.0])  # median 3, MAD 1
    assert findings.robust_z(values).tolist() == pytest.approx([-2 / 1.4826, -1 / 1.4826, 0, 1 / 1.4826, 97 / 1.4826])


def test_outlier_findings_thresholds():
    paths = ["ok", "blank", "tiny", "wide", "colour"]
    sizes = [(256, 256), (256, 256), (40, 50), (600, 200), (256, 256)]
    spread = np.array([200.0, 3.0, 180, 180, 180])
    chroma = np.array([0.5, 0.0, 0.0, 0.0, 60.0])
    distance = np.array([0.05, 0.06, 0.05, 0.04, 0.05])
    found = findings.outlier_findings(paths, sizes, spread, chroma, distance, min_side=112)
    assert by_finding(found, "blank") == pytest.approx({"blank": 1 - 3 / 255})
    assert by_finding(found, "small_image") == pytest.approx({"tiny": 112 / 40})
    assert by_finding(found, "extreme_aspect") == pytest.approx({"wide": 3.0})
    assert by_finding(found, "colour") == pytest.approx({"colour": 60.0})
    assert not by_finding(found, "feature_outlier") and not [f for f in found if f.path == "ok"]


def test_grouping_accuracy_of_a_label_revealing_and_of_a_random_grouping():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 100)
    groups = np.arange(200)
    revealing = np.where(labels == 1, "png", "jpeg")
    assert findings.grouping_accuracy(revealing, labels, groups, 5) == 1.0
    random = rng.choice(["a", "b", "c"], 200)
    assert findings.grouping_accuracy(random, labels, groups, 5) < 0.7
    unseen = np.array([f"u{i}" for i in range(200)])  # every cluster is new to the other folds: the overall majority
    assert findings.grouping_accuracy(unseen, labels, groups, 5) == pytest.approx(0.5)


def test_shortcut_findings_warn_on_a_revealing_grouping_and_a_pure_cluster():
    labels = np.repeat([0, 1], 50)
    names = np.array(["s1"] * 50 + ["s2"] * 25 + ["s3"] * 25)
    mixed = np.array(["m1", "m2"] * 50)
    found, table, accuracy = findings.shortcut_findings({"source": names, "mixed": mixed}, labels, np.arange(100), 5)
    assert accuracy["source"] == 1.0 and accuracy["mixed"] == pytest.approx(0.5, abs=0.1)
    assert by_finding(found, "shortcut_grouping") == {"source": 1.0}
    assert set(by_finding(found, "shortcut_cluster")) == {"source:s1", "source:s2", "source:s3"}
    s1 = next(c for c in table if c.kind == "source" and c.name == "s1")
    assert (s1.files, s1.per_class, s1.majority, s1.purity) == (50, (50, 0), "Healthy", 1.0)


def test_sort_findings_by_kind_then_score():
    rows = [Finding("b", "blank", 0.9, ""), Finding("a", "exact_duplicate", 2, ""), Finding("c", "blank", 0.99, ""),
            Finding("d", "duplicate_across_labels", 0.5, "")]
    assert [f.path for f in findings.sort_findings(rows)] == ["d", "a", "c", "b"]


def test_robust_z_when_most_values_are_equal():
    values = np.array([0.05, 0.05, 0.05, 0.06, 0.04])  # MAD 0: the mean absolute deviation (0.004) scales
    assert findings.robust_z(values).tolist() == pytest.approx([0, 0, 0, 0.01 / (1.2533 * 0.004), -0.01 / (1.2533 * 0.004)])
    assert findings.robust_z(np.full(4, 0.3)).tolist() == [0, 0, 0, 0]
