from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.special import expit
from scipy.stats import norm
from sklearn import exceptions as skm_exceptions
from sklearn import metrics as skm

from tumorclf.metrics.bootstrap import (
    METRICS,
    NEEDS_BOTH_CLASSES,
    bootstrap_intervals,
    format_interval,
    group_multiplicities,
    not_reportable,
    point_metrics,
    weighted_metrics,
)

# --- coverage on a synthetic population of duplicate groups ----------------------------------------------
# Each group is one "scan": a label (Tumor with PRIOR), a latent logit drawn from N(MU[label], 1) and 1-5
# near-copies that share the label and differ from the group's logit by N(0, NOISE) only. Group size is
# independent of label and score, so the file-level population metrics at threshold 0.5 (logit 0) are:
PRIOR, MU0, MU1, NOISE = 0.4, -1.0, 0.8, 0.05
SD = np.hypot(1.0, NOISE)  # spread of a file's logit around its class mean
TRUE_SENSITIVITY = norm.cdf(MU1 / SD)
TRUE_SPECIFICITY = norm.cdf(-MU0 / SD)
TRUTH = {
    "accuracy": PRIOR * TRUE_SENSITIVITY + (1 - PRIOR) * TRUE_SPECIFICITY,
    "balanced_accuracy": (TRUE_SENSITIVITY + TRUE_SPECIFICITY) / 2,
    "sensitivity": TRUE_SENSITIVITY,
    "specificity": TRUE_SPECIFICITY,
    "auc": norm.cdf((MU1 - MU0) / (SD * np.sqrt(2))),  # P(tumor file scores above a healthy file)
}
N_DATASETS, N_GROUPS, N_RESAMPLES = 150, 200, 200


def duplicate_group_dataset(rng: np.random.Generator, n_groups: int):
    label = (rng.random(n_groups) < PRIOR).astype(np.int64)
    latent = np.where(label == 1, MU1, MU0) + rng.standard_normal(n_groups)
    group = np.repeat(np.arange(n_groups), rng.integers(1, 6, n_groups))
    rng.shuffle(group)  # files of a group need not be adjacent
    return label[group], expit(latent[group] + NOISE * rng.standard_normal(len(group))), group


def hits_and_widths(datasets: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]) -> tuple[dict, dict]:
    """For each kind of bootstrap (group, file): how many of `datasets` ((seed, y, p, group) each) have a 95%
    interval that contains the true value, and the sum of the interval widths, per metric."""
    hits = {kind: dict.fromkeys(TRUTH, 0) for kind in ("group", "file")}
    widths = {kind: dict.fromkeys(TRUTH, 0.0) for kind in ("group", "file")}
    for i, y, p, group in datasets:
        for kind, groups in (("group", group), ("file", np.arange(len(y)))):
            intervals = bootstrap_intervals(y, p, groups, 0.5, n_resamples=N_RESAMPLES, seed=i)
            for name, truth in TRUTH.items():
                lo, hi = intervals[name]["ci95"]
                hits[kind][name] += int(lo <= truth <= hi)
                widths[kind][name] += hi - lo
    return hits, widths


@pytest.fixture(scope="module")
def coverage():
    """Share of datasets whose 95% interval contains the true value, and mean interval width, for the
    group (cluster) bootstrap and for a file-level bootstrap of the same datasets."""
    rng = np.random.default_rng(20240611)
    hits, widths = hits_and_widths([(i, *duplicate_group_dataset(rng, N_GROUPS)) for i in range(N_DATASETS)])
    return ({kind: {name: hits[kind][name] / N_DATASETS for name in TRUTH} for kind in hits},
            {kind: {name: widths[kind][name] / N_DATASETS for name in TRUTH} for kind in widths})


def test_group_bootstrap_intervals_cover_the_truth_at_about_the_nominal_rate(coverage):
    # The percentile interval from 200 groups covers ~0.93-0.95 here (mean over 6 data seeds: 0.936); with
    # 150 datasets one coverage rate has a Monte Carlo SD of ~0.02, so each metric gets a wide band and their
    # mean a tighter one. (This seed: 0.92-0.94; the file-level bootstrap: 0.65-0.74.)
    rates, _ = coverage
    for name, rate in rates["group"].items():
        assert 0.85 <= rate <= 0.99, (name, rate)
    assert 0.89 <= np.mean(list(rates["group"].values())) <= 0.98, rates["group"]


def test_file_level_bootstrap_of_correlated_files_under_covers(coverage):
    rates, widths = coverage
    for name in TRUTH:
        assert rates["file"][name] < 0.85, (name, rates["file"][name])
        assert rates["group"][name] - rates["file"][name] > 0.1, (name, rates)
        # ~3 near-copies per group: resampling files shrinks the interval by about sqrt(E[m^2]/E[m]) ~ 1.9
        assert widths["group"][name] > 1.5 * widths["file"][name], (name, widths)


# --- group_multiplicities --------------------------------------------------------------------------------------


def scattered_groups():
    """Group names of 11 files in 5 groups of sizes 1-4, interleaved."""
    return np.array(["c", "a", "b", "a", "d", "c", "a", "e", "b", "c", "a"])


def reference_resamples(groups, n_resamples: int, seed: int):
    """The file indices of each group resample, drawn as the library draws (one `integers(0, G, G)` call per
    resample) but built as index lists: the reference the weighted computation must equal."""
    _, group_of = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = group_of.max() + 1
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        drawn = rng.integers(0, n_groups, n_groups)
        yield np.concatenate([np.flatnonzero(group_of == g) for g in drawn])


def all_multiplicities(groups, n_resamples: int, seed: int, chunk: int = 250) -> np.ndarray:
    return np.concatenate(list(group_multiplicities(groups, n_resamples, seed, chunk)))


def test_group_multiplicities_draw_whole_groups():
    groups = scattered_groups()
    names, group_of = np.unique(groups, return_inverse=True)
    weights = all_multiplicities(groups, 300, seed=5, chunk=70)  # chunks of unequal size
    assert weights.shape == (300, len(groups))
    saw_repeat = saw_missing = False
    for row in weights:
        multiplicity = np.zeros(len(names))
        for g in range(len(names)):
            counts = np.unique(row[group_of == g])
            assert len(counts) == 1, "a group was drawn only in part"
            multiplicity[g] = counts[0]
        assert multiplicity.sum() == len(names)  # as many group draws as there are groups
        saw_repeat |= multiplicity.max() > 1
        saw_missing |= multiplicity.min() == 0
    assert saw_repeat and saw_missing  # with replacement
    for row, rows in zip(weights, reference_resamples(groups, 300, seed=5), strict=True):
        np.testing.assert_array_equal(row, np.bincount(rows, minlength=len(groups)))


def test_group_multiplicities_draw_groups_uniformly_not_by_size():
    groups = np.repeat(np.arange(6), [1, 1, 1, 2, 10, 30])  # sizes differ a lot
    first_of_group = np.r_[0, np.cumsum(np.bincount(groups))[:-1]]
    draws = all_multiplicities(groups, 3000, 1)[:, first_of_group]
    np.testing.assert_allclose(draws.mean(axis=0), 1.0, atol=0.07)  # each group drawn once per resample on average


def test_group_multiplicities_are_deterministic_per_seed_whatever_the_chunk():
    groups = scattered_groups()
    first = all_multiplicities(groups, 20, seed=3)
    np.testing.assert_array_equal(first, all_multiplicities(groups, 20, seed=3, chunk=3))
    assert not np.array_equal(first, all_multiplicities(groups, 20, seed=4))


def test_one_file_per_group_resamples_files():
    weights = all_multiplicities(np.arange(50), 1, seed=0)
    assert weights.sum() == 50 and np.count_nonzero(weights) < 50


def test_weighted_metrics_equal_point_metrics_of_the_resampled_files():
    rng = np.random.default_rng(8)
    groups = rng.integers(0, 40, 150)
    y = rng.integers(0, 2, 150)
    p = np.round(rng.random(150), 1)  # many ties: the AUC's half-counted ties matter
    weights = all_multiplicities(groups, 50, seed=2)
    got = weighted_metrics(y, p, 0.5, weights)
    want = [[point_metrics(y[rows], p[rows], 0.5)[name] for name in METRICS]
            for rows in reference_resamples(groups, 50, seed=2)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# --- point_metrics ----------------------------------------------------------------------------------------


def random_predictions(seed: int, n: int = 400):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.round(np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1), 2)  # rounded: ties


def ece_reference(y, p, bins=15):
    """Binary ECE by a plain loop over equal-width bins, the last bin closed at 1."""
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (p >= lo) & ((p < hi) if b < bins - 1 else (p <= hi))
        if inside.any():
            total += inside.sum() * abs(y[inside].mean() - p[inside].mean())
    return total / len(y)


@pytest.mark.parametrize("seed, threshold", [(0, 0.35), (1, 0.62), (2, 0.5)])
def test_point_metrics_equal_sklearn(seed, threshold):
    y, p = random_predictions(seed)
    pred = (p >= threshold).astype(int)
    m = point_metrics(y, p, threshold)
    assert set(m) == set(METRICS)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    assert m["ece"] == pytest.approx(ece_reference(y, p))


def test_point_metrics_threshold_is_inclusive():
    y, p = np.array([0, 1, 0, 1]), np.array([0.2, 0.7, 0.7, 0.9])
    assert point_metrics(y, p, 0.7)["specificity"] == 0.5  # 0.7 >= 0.7 is Tumor
    assert point_metrics(y, p, 0.71)["specificity"] == 1.0


def test_ece_by_hand():
    # bins of width 1/15: 0.05 -> bin 0 (mean 0.05, rate 1/2), 0.95 -> bin 14 (0.95, 1), 0.5 -> bin 7 (0.5, 0)
    y, p = np.array([0, 1, 1, 1, 0]), np.array([0.05, 0.05, 0.95, 0.95, 0.5])
    assert point_metrics(y, p, 0.5)["ece"] == pytest.approx((2 * 0.45 + 2 * 0.05 + 1 * 0.5) / 5)
    assert point_metrics(np.array([1, 0]), np.array([1.0, 0.0]), 0.5)["ece"] == 0.0  # 1.0 is in the last bin


def test_undefined_metrics_are_nan():
    healthy = point_metrics(np.zeros(6, int), np.linspace(0.1, 0.9, 6), 0.5)
    assert np.isnan(healthy["sensitivity"]) and np.isnan(healthy["auc"])
    assert healthy["specificity"] == 0.5 and healthy["accuracy"] == 0.5
    assert all(np.isnan(healthy[name]) for name in NEEDS_BOTH_CLASSES)  # not sklearn's one-class recall
    no_tumor_decision = point_metrics(np.array([0, 1, 1]), np.array([0.1, 0.2, 0.3]), 0.5)
    assert np.isnan(no_tumor_decision["precision"]) and no_tumor_decision["f1"] == 0.0
    assert no_tumor_decision["sensitivity"] == 0.0 and no_tumor_decision["auc"] == 1.0
    assert all(np.isnan(v) for v in point_metrics([], [], 0.5).values())


# --- bootstrap_intervals and format_interval ----------------------------------------------------------------


def test_intervals_are_percentiles_of_the_group_resamples_and_skip_nan():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(20), rng.integers(1, 4, 20))
    y = (groups == 7).astype(int)  # one tumor group: ~36% of resamples have no tumor image
    p = np.clip(0.5 * y + 0.5 * rng.random(len(y)), 0, 1)
    out = bootstrap_intervals(y, p, groups, 0.4, n_resamples=400, seed=11)
    samples = [point_metrics(y[rows], p[rows], 0.4) for rows in reference_resamples(groups, 400, seed=11)]
    sens = np.array([m["sensitivity"] for m in samples])
    assert 0.2 < np.isnan(sens).mean() < 0.5
    finite = sens[np.isfinite(sens)]
    assert out["sensitivity"]["ci95"] == pytest.approx(list(np.percentile(finite, [2.5, 97.5])))
    assert np.all(np.isfinite(out["auc"]["ci95"]))
    for name in METRICS:
        column = np.array([m[name] for m in samples])
        column = column[np.isfinite(column)]
        assert out[name]["value"] == pytest.approx(point_metrics(y, p, 0.4)[name], nan_ok=True)
        assert out[name]["ci95"] == pytest.approx(list(np.percentile(column, [2.5, 97.5])))
        assert out[name]["ci95"][0] <= out[name]["ci95"][1]


def test_intervals_of_a_metric_undefined_everywhere_are_none():
    y, p = np.zeros(8, int), np.linspace(0.05, 0.95, 8)
    out = bootstrap_intervals(y, p, np.arange(8) // 2, 0.5, n_resamples=50, seed=0)
    assert np.isnan(out["sensitivity"]["value"]) and out["sensitivity"]["ci95"] is None
    assert out["auc"]["ci95"] is None and format_interval(out["auc"]) == "-"
    assert out["specificity"]["ci95"] is not None


def test_no_resamples_gives_values_without_intervals():
    y, p = random_predictions(4, n=60)
    out = bootstrap_intervals(y, p, np.arange(60) // 3, 0.5, n_resamples=0)
    assert set(out) == set(METRICS)
    assert all(out[name]["ci95"] is None for name in METRICS)
    assert out["accuracy"]["value"] == pytest.approx(point_metrics(y, p, 0.5)["accuracy"])
    empty = bootstrap_intervals([], [], [], 0.5, n_resamples=10)
    assert all(np.isnan(v["value"]) and v["ci95"] is None for v in empty.values())


def test_intervals_are_deterministic_per_seed():
    y, p = random_predictions(5, n=90)
    groups = np.arange(90) // 3
    a = bootstrap_intervals(y, p, groups, 0.5, n_resamples=100, seed=1)
    assert a == bootstrap_intervals(y, p, groups, 0.5, n_resamples=100, seed=1)
    assert a != bootstrap_intervals(y, p, groups, 0.5, n_resamples=100, seed=2)


def test_format_interval():
    assert format_interval({"value": 0.9613, "ci95": [0.9461, 0.97449]}) == "0.961 [0.946, 0.974]"
    assert format_interval({"value": 0.9613, "ci95": [0.9461, 0.97449]}, digits=2) == "0.96 [0.95, 0.97]"
    assert format_interval({"value": 0.5, "ci95": None}) == "0.500"
    assert format_interval({"value": float("nan"), "ci95": None}) == "-"
    assert format_interval({"value": None, "ci95": None}) == "-"


# --- one class: an external folder of tumour slices alone ---------------------------------------------------


@pytest.mark.parametrize("label", [1, 0])
def test_one_class_gives_its_recall_with_an_interval_and_nothing_degenerate(label):
    rng = np.random.default_rng(9)
    groups = np.repeat(np.arange(60), rng.integers(1, 4, 60))
    y = np.full(len(groups), label)
    p = np.round(rng.random(len(y)), 2)
    pred = (p >= 0.5).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division-by-zero or empty-slice warnings
        out = bootstrap_intervals(y, p, groups, 0.5, n_resamples=300, seed=4)
    recall = "sensitivity" if label else "specificity"
    assert out[recall]["value"] == pytest.approx(skm.recall_score(y, pred, pos_label=label))
    assert out["accuracy"]["value"] == pytest.approx(skm.accuracy_score(y, pred)) == out[recall]["value"]
    assert out["brier"]["value"] == pytest.approx(skm.brier_score_loss(y, p, pos_label=1))
    for name in (recall, "accuracy", "brier"):
        lo, hi = out[name]["ci95"]
        assert lo <= out[name]["value"] <= hi and lo < hi, name
    with pytest.warns(skm_exceptions.UndefinedMetricWarning):  # sklearn has no AUC of one class either
        assert np.isnan(skm.roc_auc_score(y, p))
    other = "specificity" if label else "sensitivity"
    for name in (other, *NEEDS_BOTH_CLASSES):
        assert np.isnan(out[name]["value"]) and out[name]["ci95"] is None, name
    assert format_interval(out["auc"]) == "-"


def test_resamples_that_draw_one_class_leave_the_two_class_metrics_out():
    y, p = np.array([0, 1, 1, 1]), np.array([0.2, 0.4, 0.6, 0.9])
    weights = np.array([[1.0, 1, 1, 1], [0, 2, 1, 1], [4, 0, 0, 0]])  # both classes, tumours only, healthy only
    got = dict(zip(METRICS, weighted_metrics(y, p, 0.5, weights).T))
    for name in NEEDS_BOTH_CLASSES:
        assert np.isfinite(got[name][0]) and np.isnan(got[name][1:]).all(), name
    assert got["sensitivity"].tolist()[:2] == [2 / 3, 0.5] and np.isnan(got["sensitivity"][2])
    assert got["specificity"][2] == 1.0 and np.isnan(got["specificity"][1])
    assert got["brier"][1] == pytest.approx(np.mean([0.36, 0.36, 0.16, 0.01]))


def test_not_reportable_names_each_missing_metric_and_why():
    tumour = not_reportable(np.ones(5, int))
    assert set(tumour) == {"specificity", *NEEDS_BOTH_CLASSES}
    assert tumour["specificity"] == "only Tumor slices: no Healthy slices"
    assert all(why.startswith("only Tumor slices: ") for why in tumour.values())
    assert "auc" in tumour and "sensitivity" not in tumour and "brier" not in tumour
    healthy = not_reportable([0, 0])
    assert set(healthy) == {"sensitivity", *NEEDS_BOTH_CLASSES} and healthy["sensitivity"].startswith("only Healthy")
    assert not_reportable([0, 1, 1]) == {} and not_reportable([]) == {}
