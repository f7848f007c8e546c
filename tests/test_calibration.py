from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit
from sklearn import metrics as skm

from tumorclf.metrics.calibration import (CLIP, HIGH_SENSITIVITY_TARGET, CalibrationError, OperatingPoint,
                                          apply_temperature, expected_calibration_error,
                                  fit_operating_point, fit_temperature, logit, margin_below, reliability, sensitivity,
                                  threshold_for_sensitivity, youden_threshold)
from tumorclf.metrics.classification import decide, roc_auc, specificity


def tempered(seed: int, true_temperature: float, n: int = 20000, spread: float = 3.0):
    """A model's raw P(Tumor) = sigmoid(z) and labels drawn from the true P = sigmoid(z / T_true): the raw
    probabilities are over-confident for T_true > 1 and under-confident for T_true < 1."""
    rng = np.random.default_rng(seed)
    z = spread * rng.standard_normal(n)
    y = (rng.random(n) < expit(z / true_temperature)).astype(np.int64)
    return y, expit(z)


def validation_like(seed: int, n: int = 300):
    """Over-confident P(Tumor) of a separable-ish problem, with ties (rounded to 3 decimals)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    z = 2.0 * (2 * y - 1) + 1.5 * rng.standard_normal(n)
    return y, np.round(expit(2.5 * z), 3)


# --- logit, temperature, NLL ------------------------------------------------------------------------------


def test_logit_inverts_sigmoid_and_clips():
    z = np.linspace(-10, 10, 41)
    np.testing.assert_allclose(logit(expit(z)), z, atol=1e-6)
    assert np.all(np.isfinite(logit([0.0, 1.0])))
    np.testing.assert_allclose(logit([0.0, 1.0]), [np.log(CLIP / (1 - CLIP)), np.log((1 - CLIP) / CLIP)])


def test_temperature_one_is_the_identity():
    """T = 1 (runs without an operating point) leaves P(Tumor) exactly as the model gave it, unclipped."""
    p = np.r_[0.0, 1e-9, np.linspace(0.001, 0.999, 101), 1 - 1e-9, 1.0]
    np.testing.assert_array_equal(apply_temperature(p, 1.0), p)
    assert apply_temperature(np.float32([0.3]), 1.0).dtype == np.float64
    # any other temperature clips before the logit, so 0 and 1 stay finite
    assert np.all(np.isfinite(logit(p))) and apply_temperature([0.0, 1.0], 1.0001)[0] > 0


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5, 10.0])
def test_temperature_keeps_order_and_one_half(temperature):
    y, p = validation_like(0)
    calibrated = apply_temperature(p, temperature)
    assert apply_temperature([0.5], temperature)[0] == pytest.approx(0.5, abs=1e-15)
    assert np.all(np.diff(calibrated[np.argsort(p, kind="stable")]) >= 0)  # monotonic
    assert roc_auc(y, calibrated) == pytest.approx(roc_auc(y, p))
    assert np.array_equal(decide(calibrated, 0.5), decide(p, 0.5))
    if temperature > 1:  # a higher temperature pulls probabilities towards 0.5
        assert np.all(np.abs(calibrated - 0.5) <= np.abs(np.clip(p, CLIP, 1 - CLIP) - 0.5) + 1e-12)


@pytest.mark.parametrize("true_temperature", [2.5, 1.6, 0.5])
def test_fit_temperature_recovers_a_known_temperature(true_temperature):
    y, p = tempered(seed=int(10 * true_temperature), true_temperature=true_temperature)
    fitted = fit_temperature(y, p)
    assert fitted == pytest.approx(true_temperature, rel=0.1)
    # it is the minimum of the NLL
    for nearby in (0.9 * fitted, 1.1 * fitted):
        assert skm.log_loss(y, apply_temperature(p, fitted)) < skm.log_loss(y, apply_temperature(p, nearby))


def test_calibration_lowers_ece_of_overconfident_probabilities():
    y, p = tempered(seed=7, true_temperature=2.5)
    before = expected_calibration_error(y, p)
    after = expected_calibration_error(y, apply_temperature(p, fit_temperature(y, p)))
    assert before > 0.08
    assert after < 0.03 and after < before / 3


@pytest.mark.parametrize("labels", [np.ones(10, int), np.zeros(10, int), np.zeros(0, int)])
def test_fit_temperature_needs_both_classes(labels):
    with pytest.raises(ValueError):
        fit_temperature(labels, np.linspace(0.05, 0.95, len(labels)))
    with pytest.raises(ValueError):
        fit_operating_point(labels, np.linspace(0.05, 0.95, len(labels)))


# --- reliability and ECE ----------------------------------------------------------------------------------


def test_reliability_bins_and_ece_by_hand():
    y, p = np.array([0, 1, 1, 1, 0]), np.array([0.05, 0.05, 0.95, 0.95, 0.5])
    mean_p, rate, counts = reliability(y, p)
    assert len(counts) == 15 and counts.sum() == 5
    assert counts[0] == 2 and counts[7] == 1 and counts[14] == 2
    assert rate[0] == 0.5 and rate[7] == 0.0 and rate[14] == 1.0
    assert mean_p[0] == pytest.approx(0.05) and mean_p[14] == pytest.approx(0.95)
    assert np.all(np.isnan(rate[counts == 0]))
    assert expected_calibration_error(y, p) == pytest.approx((2 * 0.45 + 1 * 0.5 + 2 * 0.05) / 5)
    assert expected_calibration_error(y, p, bins=1) == pytest.approx(abs(0.6 - p.mean()))
    assert expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0  # 1.0 falls in the last bin
    assert np.isnan(expected_calibration_error([], []))


# --- thresholds -------------------------------------------------------------------------------------------


def check_highest_threshold(y, p, target):
    threshold = threshold_for_sensitivity(y, p, target)
    deciding = p[(y == 1) & (p >= threshold)].min()  # the tumor score the threshold stands for
    assert sensitivity(y, decide(p, threshold)) >= target - 1e-12
    np.testing.assert_array_equal(decide(p, threshold), decide(p, deciding))  # the same decisions on validation
    below = p[p < deciding]
    assert threshold < deciding and (not len(below) or threshold > below.max())  # a margin on both sides
    higher = p[(y == 1) & (p > deciding)]
    if len(higher):  # the next higher distinct tumor score misses the target: it is the highest threshold
        assert sensitivity(y, decide(p, higher.min())) < target
    return deciding


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 0.99, 1.0])
def test_threshold_for_sensitivity_is_the_highest_reaching_the_target(seed, target):
    y, p = validation_like(seed, n=157)  # ties from rounding
    threshold = check_highest_threshold(y, p, target)
    if target == 1.0:
        assert threshold == p[y == 1].min()


def test_threshold_for_sensitivity_exact_fractions_and_ties():
    y = np.ones(100, int)
    p = np.arange(1, 101) / 100  # the k-th highest score is (101 - k) / 100
    assert 0.55 * 100 > 55  # 55.00000000000001 in floats, yet 55 of 100 tumor images reach 0.55
    assert 0.45 < threshold_for_sensitivity(y, p, 0.55) < 0.46  # 55 reach 0.46, halfway down to 0.45
    assert 0.44 < threshold_for_sensitivity(y, p, 0.551) < 0.45
    y, p = np.array([1, 1, 1, 1, 0]), np.array([0.9, 0.6, 0.6, 0.3, 0.8])
    assert threshold_for_sensitivity(y, p, 0.5) == pytest.approx(margin_below(0.6, p))  # 3 of 4 reach 0.6
    assert 0.3 < threshold_for_sensitivity(y, p, 0.5) < 0.6
    assert 0.8 < threshold_for_sensitivity(y, p, 0.01) < 0.9  # 0.9 alone; above the healthy 0.8
    with pytest.raises(ValueError):
        threshold_for_sensitivity(np.zeros(3, int), [0.1, 0.2, 0.3], 0.9)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_youden_threshold_is_argmax_of_sklearn_roc(seed):
    y, p = validation_like(seed, n=200)
    p = np.round(p, 2)  # many ties
    fpr, tpr, thresholds = skm.roc_curve(y, p, drop_intermediate=False)
    threshold = youden_threshold(y, p)
    assert threshold == pytest.approx(margin_below(thresholds[np.argmax(tpr - fpr)], p))
    pred = decide(p, threshold)
    j = sensitivity(y, pred) + specificity(y, pred) - 1
    assert j == pytest.approx(np.max(tpr - fpr))


def test_youden_threshold_prefers_the_highest_on_ties():
    # thresholds 0.4 and 0.2 both give J = 0.5
    assert 0.3 < youden_threshold(np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4])) < 0.4


def test_sensitivity():
    assert sensitivity([1, 1, 0, 1], [1, 0, 1, 1]) == pytest.approx(2 / 3)
    assert np.isnan(sensitivity([0, 0], [1, 0]))


# --- the operating point of a run -------------------------------------------------------------------------


def test_fit_operating_point_is_consistent_with_its_parts():
    y, p = validation_like(4)
    op = fit_operating_point(y, p, target_sensitivity=0.95)
    calibrated = apply_temperature(p, op.temperature)
    assert op.temperature == fit_temperature(y, p) and op.temperature > 1  # raw P is over-confident
    assert op.threshold == threshold_for_sensitivity(y, calibrated, 0.95)
    assert op.youden_threshold == youden_threshold(y, calibrated)
    assert op.n == len(y) and op.fitted_on == "validation" and op.target_sensitivity == 0.95
    v = op.validation
    assert v["sensitivity_at_threshold"] >= 0.95
    assert v["sensitivity_at_threshold"] == sensitivity(y, decide(calibrated, op.threshold))
    assert v["specificity_at_youden"] == specificity(y, decide(calibrated, op.youden_threshold))
    assert v["ece_before"] == expected_calibration_error(y, p)
    assert v["ece_after"] == expected_calibration_error(y, calibrated) and v["ece_after"] < v["ece_before"]
    np.testing.assert_array_equal(op.calibrate(p), calibrated)


def test_fit_operating_point_sees_only_validation_data():
    y_val, p_val = validation_like(5)
    y_test, p_test = validation_like(6)
    op = fit_operating_point(y_val, p_val).to_dict()

    # the test set's labels can be anything: what was fitted on validation does not move
    flipped = 1 - y_test
    fitted_on_test = fit_operating_point(flipped, p_test).to_dict()
    assert fit_operating_point(y_val, p_val).to_dict() == op  # no state carried over from another fit
    assert fitted_on_test["threshold"] != op["threshold"]  # were test labels to leak in, it would show

    # the result depends on its inputs only: same inputs, same dict; other validation labels, other result
    assert fit_operating_point(y_val.copy(), p_val.copy()).to_dict() == op
    changed = y_val.copy()
    changed[np.argsort(p_val)[-20:]] = 0  # the most confident Tumor images relabelled Healthy
    other = fit_operating_point(changed, p_val).to_dict()
    assert other["temperature"] != op["temperature"] and other != op


def test_operating_point_round_trips_through_json():
    y, p = validation_like(7)
    op = fit_operating_point(y, p, target_sensitivity=0.9, fitted_on="val")
    restored = OperatingPoint.from_dict(json.loads(json.dumps(op.to_dict())))
    assert restored == op and restored.to_dict() == op.to_dict()
    assert OperatingPoint.from_dict({**op.to_dict(), "extra": 1}) == op  # unknown keys are ignored
    np.testing.assert_array_equal(restored.calibrate(p), op.calibrate(p))


@pytest.mark.parametrize("target", [0.0, -0.1, 1.01])
def test_fit_operating_point_rejects_impossible_targets(target):
    y, p = validation_like(8, n=50)
    with pytest.raises(ValueError):
        fit_operating_point(y, p, target_sensitivity=target)


def test_a_separable_validation_split_keeps_temperature_one():
    """Separable validation data have no finite maximum-likelihood temperature (it runs to the bound):
    the fit keeps T = 1 and says why, instead of saturating every probability to 0 or 1."""
    y = np.array([0] * 20 + [1] * 20)
    p = np.r_[np.linspace(0.05, 0.4, 20), np.linspace(0.6, 0.95, 20)]
    op = fit_operating_point(y, p, target_sensitivity=1.0)
    assert op.temperature == 1.0 and "separable" in op.validation["temperature_fit"]
    assert 0.4 < op.threshold < 0.6 and 0.4 < op.youden_threshold < 0.6  # between the classes, not on a score
    assert fit_operating_point(*validation_like(4)).validation["temperature_fit"] == "maximum likelihood"


@pytest.mark.parametrize("bad", [np.nan, -0.1, 1.5])
def test_non_finite_or_out_of_range_probabilities_are_refused(bad):
    y, p = validation_like(2)
    p = p.copy()
    p[7] = bad
    with pytest.raises(CalibrationError, match="not in \\[0, 1\\]"):
        fit_operating_point(y, p)


def test_the_high_sensitivity_point_is_the_highest_threshold_reaching_its_target():
    y, p = validation_like(4)
    op = fit_operating_point(y, p, target_sensitivity=0.95)
    calibrated = op.calibrate(p)
    assert op.high_sensitivity_threshold == threshold_for_sensitivity(y, calibrated, HIGH_SENSITIVITY_TARGET)
    assert op.high_sensitivity_threshold <= op.threshold  # a higher target never needs a higher threshold
    decided = decide(calibrated, op.high_sensitivity_threshold)
    assert op.validation["sensitivity_at_high_sensitivity"] == sensitivity(y, decided) >= HIGH_SENSITIVITY_TARGET
    assert op.validation["specificity_at_high_sensitivity"] == specificity(y, decided)


def test_an_operating_point_json_from_before_the_high_sensitivity_point_still_loads(tmp_path):
    from tumorclf.runs.folder import RunDir
    from tumorclf.runs.points import HIGH_SENSITIVITY, available

    y, p = validation_like(8)
    old = fit_operating_point(y, p).to_dict()
    del old["high_sensitivity_threshold"]
    old["validation"] = {k: v for k, v in old["validation"].items() if not k.endswith("_high_sensitivity")}
    run = RunDir(tmp_path)
    run.operating_point_file.write_text(json.dumps(old))
    rows = "".join(f"f{i},{label},{float(prob)!r}\n" for i, (label, prob) in enumerate(zip(y, p)))
    run.val_predictions_file.write_text("path,label,prob_tumor\n" + rows)
    point = run.operating_point()
    assert point.high_sensitivity_threshold is None and point.threshold == old["threshold"]
    before = run.operating_point_file.read_bytes()
    high = available(run)[HIGH_SENSITIVITY]  # fitted from val_predictions.csv, the file left as it is
    assert high.threshold == threshold_for_sensitivity(y, point.calibrate(p), HIGH_SENSITIVITY_TARGET)
    assert run.operating_point_file.read_bytes() == before
    assert set(available(run)) == {"validation", "high_sensitivity", "youden", "default_0.5"}
