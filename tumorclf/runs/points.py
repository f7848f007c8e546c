"""A run's named operating points, and the one it applies (`chosen`): what `predict`, `export` and `serve`
decide with, and what they name in their log line, model card and page (`NamedPoint.describe`).

Every point of a run shares the run's validation temperature (`operating_point.json`): one calibrated
P(Tumor) per run, so that its points differ in their threshold alone and compare on one scale. The names:

- ``validation``: the highest threshold reaching the run's target sensitivity on validation (evaluate's
  ``target_sensitivity``);
- ``high_sensitivity``: the highest reaching `HIGH_SENSITIVITY_TARGET` on validation (for an
  operating_point.json from before it, fitted from val_predictions.csv here, the file left as it is);
- ``youden``: Youden's J on validation;
- ``default_0.5``: 0.5 on calibrated P(Tumor), fitted on nothing;
- any other name: a point `tumorclf calibrate` fitted on a site's own folder (``operating_points.json``).

The run applies the calibrated point selected with ``calibrate --select``, else ``validation``; a name given
(``--operating-point``) overrides both. A run without operating_point.json has ``validation`` (its
metrics.json threshold, uncalibrated) and ``default_0.5`` only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tumorclf.errors import UsageError
from tumorclf.metrics.calibration import HIGH_SENSITIVITY_TARGET, OperatingPoint, with_high_sensitivity
from tumorclf.metrics.classification import DEFAULT_THRESHOLD
from tumorclf.runs.folder import RunDir, RunError

VALIDATION, HIGH_SENSITIVITY, YOUDEN, DEFAULT = "validation", "high_sensitivity", "youden", "default_0.5"
BUILTIN = (VALIDATION, HIGH_SENSITIVITY, YOUDEN, DEFAULT)


class PointError(UsageError):
    """An operating point name the run (or export) does not have; the message lists the ones it has."""


@dataclass(frozen=True)
class NamedPoint:
    """One operating point of a run: calibrated P = sigmoid(logit(P) / temperature), Tumor at or above
    `threshold`; `fitted_on` says on what (for the log line), `provenance` holds a calibrated point's record."""

    name: str
    temperature: float
    threshold: float
    fitted_on: str
    provenance: dict = field(default_factory=dict)

    def describe(self) -> str:
        """The sentence predict logs and a card and the page show: `operating point high_sensitivity: threshold
        0.1234 on calibrated P(Tumor), fitted on validation (18 slices) for sensitivity >= 0.99`."""
        return f"operating point {self.name}: threshold {self.threshold:.4g} on calibrated P(Tumor), {self.fitted_on}"

    def to_dict(self) -> dict:
        return {**asdict(self), "description": self.describe()}


def saved_point(run: RunDir) -> OperatingPoint | None:
    """The run's operating_point.json, with its high-sensitivity threshold fitted from val_predictions.csv when
    it was saved before that point existed (the file is left as it is); None when the run has none."""
    point = run.operating_point()
    if point is None or point.high_sensitivity_threshold is not None or not run.val_predictions_file.is_file():
        return point
    return with_high_sensitivity(point, *run.validation_scores())


def available(run: RunDir) -> dict[str, NamedPoint]:
    """Every operating point of `run`, by name (`BUILTIN` first, then the calibrated ones)."""
    point = saved_point(run)
    if point is None:
        on = f"from {run.metrics_file.name} (the run has no operating point: uncalibrated)"
        return {VALIDATION: NamedPoint(VALIDATION, 1.0, run.metrics_threshold(), on),
                DEFAULT: NamedPoint(DEFAULT, 1.0, DEFAULT_THRESHOLD, "the default, fitted on nothing")}
    on = f"fitted on {point.fitted_on} ({point.n} slices)"
    points = {VALIDATION: NamedPoint(VALIDATION, point.temperature, point.threshold,
                                     f"{on} for sensitivity >= {point.target_sensitivity:g}")}
    if point.high_sensitivity_threshold is not None:
        points[HIGH_SENSITIVITY] = NamedPoint(HIGH_SENSITIVITY, point.temperature, point.high_sensitivity_threshold,
                                              f"{on} for sensitivity >= {HIGH_SENSITIVITY_TARGET:g}")
    points[YOUDEN] = NamedPoint(YOUDEN, point.temperature, point.youden_threshold, f"{on}, Youden's J")
    points[DEFAULT] = NamedPoint(DEFAULT, point.temperature, DEFAULT_THRESHOLD, "the default, fitted on nothing")
    for name, entry in run.calibrated_points()["points"].items():
        points[name] = calibrated(run, name, entry, point.temperature)
    return points


def calibrated(run: RunDir, name: str, entry: dict, temperature: float) -> NamedPoint:
    """A point of operating_points.json, refused when the run's temperature changed since it was fitted (its
    threshold is on the old calibrated scale)."""
    threshold, provenance = entry.get("threshold"), entry.get("provenance") or {}
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise RunError(f"{run.calibrated_points_file} is corrupt: point {name!r} has no threshold in [0, 1]")
    if not math.isclose(float(entry.get("temperature", np.nan)), temperature, rel_tol=1e-9):
        raise RunError(f"{run.calibrated_points_file}: point {name!r} was fitted at temperature "
                       f"{entry.get('temperature')}, the run's is now {temperature:g}; calibrate it again")
    per_class = ", ".join(f"{n} {label}" for label, n in (provenance.get("slices") or {}).items())
    return NamedPoint(name, temperature, float(threshold),
                      f"fitted on {Path(str(provenance.get('folder'))).name} ({per_class}) for sensitivity >= "
                      f"{provenance.get('target_sensitivity')}", provenance)


def selected(run: RunDir) -> str:
    """The name of the point `run` applies by default: the calibrated one selected, else ``validation``."""
    return run.calibrated_points()["selected"] or VALIDATION


def chosen(run: RunDir, name: str | None = None) -> NamedPoint:
    """The point named `name` (None: `selected`), or a one-line `PointError` listing the run's names."""
    points = available(run)
    name = name or selected(run)
    if name not in points:
        raise PointError(f"{run.name} has no operating point {name!r}; it has: {', '.join(points)}")
    return points[name]
