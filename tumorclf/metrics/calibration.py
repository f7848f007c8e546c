"""Operating point and calibration of a run, fitted on its validation split only.

A run's raw P(Tumor) is over-confident after fine-tuning, and a threshold of 0.5 fixes no clinical
trade-off. From the validation predictions this module fits one temperature T (calibrated P(Tumor) =
sigmoid(logit(P) / T), the binary form of temperature scaling, Guo et al. 2017) and two thresholds on the
calibrated probability: the highest that still reaches a target sensitivity, and the one of Youden's J; and
a third, the highest that reaches `HIGH_SENSITIVITY_TARGET` (a point for settings where a missed tumour costs
far more than a false alarm). Files written before it existed lack it (`high_sensitivity_threshold` None);
`with_high_sensitivity` fits it from the same validation predictions.
The result (`OperatingPoint`) is saved in the run folder and applied unchanged to test and external data,
by `predict`, by both export signatures and by `evaluate`. Temperature scaling is monotonic and keeps 0.5
at 0.5, so decisions at 0.5 and (but for ties that float64 saturation creates at extreme temperatures)
AUC do not change.

Each threshold lies halfway (in logit space) between the validation score that decides it and the next
lower validation score, not on a score: it takes the same decisions on validation, and a rounding of the
deciding image's probability cannot flip it. A temperature fitted at the edge of `TEMPERATURE_RANGE`
means the validation split is (nearly) separable and the likelihood has no finite optimum; the fit then
keeps T = 1 and says so (`validation["temperature_fit"]`).

ECE here is the binary expected calibration error of P(Tumor): equal-width bins over [0, 1], the
count-weighted mean |observed tumor rate - mean predicted P(Tumor)|.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy.optimize import minimize_scalar

from tumorclf.errors import UserError
from tumorclf.metrics.classification import decide, roc_curve, specificity

log = logging.getLogger(__name__)

ECE_BINS = 15
CLIP = 1e-7  # probabilities are clipped to [CLIP, 1 - CLIP] before the logit (as Keras clips its losses)
TEMPERATURE_RANGE = (0.05, 20.0)
DEFAULT_TARGET_SENSITIVITY = 0.95
HIGH_SENSITIVITY_TARGET = 0.99  # the target of `OperatingPoint.high_sensitivity_threshold`


class CalibrationError(UserError, ValueError):
    """Validation predictions cannot give an operating point (one class, non-finite probabilities)."""


def logit(prob_tumor) -> np.ndarray:
    """log(P / (1 - P)) in float64, with P clipped to [CLIP, 1 - CLIP]."""
    p = np.clip(np.asarray(prob_tumor, dtype=np.float64), CLIP, 1 - CLIP)
    return np.log(p) - np.log1p(-p)


def apply_temperature(prob_tumor, temperature: float) -> np.ndarray:
    """Calibrated P(Tumor): sigmoid(logit(P) / T), float64. T = 1 (uncalibrated: runs without an operating
    point) returns P unchanged, unclipped. The SavedModel's `prob_tumor` output computes the same."""
    if float(temperature) == 1.0:
        return np.asarray(prob_tumor, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-logit(prob_tumor) / float(temperature)))


def fit_temperature(labels, prob_tumor) -> float:
    """The temperature in `TEMPERATURE_RANGE` that minimises the labels' NLL (searched over log T)."""
    z, y = logit(prob_tumor), np.asarray(labels, dtype=np.float64)
    if len(y) == 0 or len(np.unique(y)) < 2:
        raise CalibrationError("fitting a temperature needs validation images of both classes")

    def nll(log_t: float) -> float:
        scaled = z / np.exp(log_t)  # -log sigmoid(s) = logaddexp(0, -s), stable for large |s|
        return float(np.mean(y * np.logaddexp(0, -scaled) + (1 - y) * np.logaddexp(0, scaled)))

    bounds = np.log(TEMPERATURE_RANGE)
    result = minimize_scalar(nll, bounds=tuple(bounds), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(result.x))


def reliability(labels, prob_tumor, bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of P(Tumor): mean predicted P, observed tumor rate (NaN where empty) and count."""
    p = np.asarray(prob_tumor, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    which = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(which, weights=p, minlength=bins) / counts
        rate = np.bincount(which, weights=y, minlength=bins) / counts
    return mean_p, rate, counts


def expected_calibration_error(labels, prob_tumor, bins: int = ECE_BINS) -> float:
    """Binary ECE of P(Tumor) over `bins` equal-width bins (NaN for no images)."""
    mean_p, rate, counts = reliability(labels, prob_tumor, bins)
    if counts.sum() == 0:
        return float("nan")
    filled = counts > 0
    return float(np.sum(counts[filled] * np.abs(rate[filled] - mean_p[filled])) / counts.sum())


def margin_below(score: float, scores) -> float:
    """The point halfway, in logit space, between `score` and the next lower of `scores` (or 0): a threshold
    that decides `scores` exactly as `score` itself does, with a margin on both sides."""
    lower = np.asarray(scores, dtype=np.float64)
    lower = lower[lower < score]
    below = float(lower.max()) if len(lower) else 0.0
    return float(1.0 / (1.0 + np.exp(-(logit(score)[()] + logit(below)[()]) / 2)))


def threshold_for_sensitivity(labels, prob_tumor, target: float) -> float:
    """The highest threshold at which sensitivity reaches `target` (the most specific operating point that
    keeps the sensitivity asked for), moved halfway down to the next lower score (`margin_below`)."""
    y, p = np.asarray(labels), np.asarray(prob_tumor, dtype=np.float64)
    tumor = np.sort(p[y == 1])[::-1]
    if not len(tumor):
        raise CalibrationError("choosing a threshold for a sensitivity needs tumor images")
    needed = int(np.ceil(target * len(tumor) - 1e-9))  # tumor images that must score at or above it
    return margin_below(tumor[max(needed, 1) - 1], p)


def youden_threshold(labels, prob_tumor) -> float:
    """The threshold that maximises sensitivity + specificity - 1 (the highest score on ties), moved halfway
    down to the next lower score (`margin_below`)."""
    fpr, tpr, thresholds = roc_curve(labels, prob_tumor)  # thresholds descending, the first is +inf
    return margin_below(thresholds[1:][int(np.argmax((tpr - fpr)[1:]))], prob_tumor)


def sensitivity(labels, predicted) -> float:
    """True-positive rate (NaN without tumor images)."""
    y, predicted = np.asarray(labels), np.asarray(predicted)
    return float(np.mean(predicted[y == 1] == 1)) if np.any(y == 1) else float("nan")


@dataclass(frozen=True)
class OperatingPoint:
    """What a run applies to every new image: calibrated P = sigmoid(logit(P) / temperature), Tumor where
    calibrated P >= threshold. Both were fitted on the validation split (`fitted_on`)."""

    temperature: float
    threshold: float  # on calibrated P(Tumor): the highest reaching target_sensitivity on validation
    target_sensitivity: float
    youden_threshold: float  # on calibrated P(Tumor)
    fitted_on: str
    n: int  # validation images
    validation: dict  # ece before/after, sensitivity and specificity at each threshold, on validation
    # on calibrated P(Tumor): the highest reaching HIGH_SENSITIVITY_TARGET on validation; None in files from before it
    high_sensitivity_threshold: float | None = None

    def calibrate(self, prob_tumor) -> np.ndarray:
        return apply_temperature(prob_tumor, self.temperature)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "OperatingPoint":
        optional = {"high_sensitivity_threshold"}  # absent from files written before it existed
        return cls(**{key: values[key] for key in cls.__dataclass_fields__ if key not in optional or key in values})


def with_high_sensitivity(point: OperatingPoint, labels, prob_tumor) -> OperatingPoint:
    """`point` with its high-sensitivity threshold (and its validation sensitivity and specificity) fitted from
    the validation labels and raw P(Tumor) it was fitted on, for points saved before that threshold existed."""
    y = np.asarray(labels, dtype=np.int64)
    calibrated = point.calibrate(prob_tumor)
    threshold = threshold_for_sensitivity(y, calibrated, HIGH_SENSITIVITY_TARGET)
    decided = decide(calibrated, threshold)
    return replace(point, high_sensitivity_threshold=threshold, validation={
        **point.validation, "sensitivity_at_high_sensitivity": sensitivity(y, decided),
        "specificity_at_high_sensitivity": specificity(y, decided)})


def fit_operating_point(labels, prob_tumor, target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
                        fitted_on: str = "validation") -> OperatingPoint:
    """Temperature and thresholds from validation labels and raw P(Tumor); nothing else is looked at."""
    if not 0 < target_sensitivity <= 1:
        raise CalibrationError(f"target sensitivity must be in (0, 1], got {target_sensitivity}")
    y = np.asarray(labels, dtype=np.int64)
    raw = np.asarray(prob_tumor, dtype=np.float64)
    bad = ~np.isfinite(raw) | (raw < 0) | (raw > 1)
    if bad.any() or len(raw) != len(y):
        raise CalibrationError(f"{int(bad.sum())} of {len(raw)} validation probabilities are not in [0, 1] (NaN: a "
                               "diverged model?), or labels and probabilities differ in number")
    temperature, fit = fit_temperature(y, raw), "maximum likelihood"
    if not TEMPERATURE_RANGE[0] * 1.01 < temperature < TEMPERATURE_RANGE[1] / 1.01:
        fit = (f"at the bound ({temperature:.3g}): the validation split is (nearly) separable, so the likelihood "
               "has no finite optimum; kept 1.0")
        log.warning("temperature fit %s", fit)
        temperature = 1.0
    calibrated = apply_temperature(raw, temperature)
    threshold = threshold_for_sensitivity(y, calibrated, target_sensitivity)
    youden = youden_threshold(y, calibrated)
    at = {name: (sensitivity(y, decide(calibrated, t)), specificity(y, decide(calibrated, t)))
          for name, t in (("target", threshold), ("youden", youden))}
    return with_high_sensitivity(OperatingPoint(
        temperature=temperature, threshold=threshold, target_sensitivity=float(target_sensitivity),
        youden_threshold=youden, fitted_on=fitted_on, n=int(len(y)),
        validation={"temperature_fit": fit, "ece_before": expected_calibration_error(y, raw),
                    "ece_after": expected_calibration_error(y, calibrated),
                    "sensitivity_at_threshold": at["target"][0], "specificity_at_threshold": at["target"][1],
                    "sensitivity_at_youden": at["youden"][0], "specificity_at_youden": at["youden"][1]}), y, raw)
