"""An ensemble of runs as one classifier: its P(Tumor) and its operating point, from the members'
probabilities alone (no model is run here).

Each member's raw P(Tumor) is first calibrated with that member's own temperature (its operating point,
fitted on its validation split), so that an over-confident member does not outvote the others; the
ensemble's score is the mean of these calibrated probabilities. The ensemble then gets its own operating
point (`fit_operating_point`: a temperature on top of the mean, and thresholds) fitted on the same mean over
the validation split, which the members share. A caller that already holds the members' predictions (their
test_predictions.csv, an earlier evaluation's predictions.csv) can build the ensemble's report from these
functions without running a model.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tumorclf.metrics.calibration import CalibrationError, OperatingPoint, fit_operating_point

FITTED_ON = "validation (mean of the members' calibrated P(Tumor))"


def ensemble_probabilities(raws: Sequence[np.ndarray], points: Sequence[OperatingPoint]) -> np.ndarray:
    """The mean over members of `points[i].calibrate(raws[i])`: member i's raw P(Tumor) of the same images,
    at member i's temperature (float64)."""
    if not raws or len(raws) != len(points):
        raise CalibrationError(f"an ensemble needs one operating point per member: {len(raws)} members' "
                               f"probabilities, {len(points)} operating points")
    shapes = {np.shape(raw) for raw in raws}
    if len(shapes) != 1:
        raise CalibrationError(f"the members' probabilities are not of the same images (shapes {sorted(shapes)})")
    return np.mean([point.calibrate(raw) for raw, point in zip(raws, points)], axis=0)


def ensemble_operating_point(labels: np.ndarray, raws: Sequence[np.ndarray], points: Sequence[OperatingPoint],
                             target_sensitivity: float) -> OperatingPoint:
    """The ensemble's operating point: `fit_operating_point` on the validation labels and the ensemble's
    P(Tumor) (`ensemble_probabilities` of the members' raw validation P(Tumor), in the labels' order)."""
    return fit_operating_point(labels, ensemble_probabilities(raws, points), target_sensitivity, FITTED_ON)
