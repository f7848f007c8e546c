"""`evaluate`'s scoring of an ensemble of runs and/or with test-time augmentation (`Combined`, a `Scoring`).

- **Ensemble** (several runs; `tumorclf.runs.ensemble.check_members`: one split, image size and classes): an
  image's score is the mean of the members' calibrated P(Tumor), each at its own temperature
  (`tumorclf.metrics.ensemble`); the operating point is fitted on that mean over the shared validation split
  (the members' val_predictions.csv), for this evaluation only.
- **Test-time augmentation** (`tumorclf.transforms.test_time`): each member's softmax is averaged over the
  views, on every dataset and on the validation split, and the operating point is refitted on the validation
  split's averaged predictions (a single run's saved operating point is that of plain images; it is left
  unchanged). The ensemble of TTA members calibrates each member's averaged P(Tumor) with its saved temperature.

The contamination check, bootstrap groups and quality gate are the first member's (`evaluate`'s run): the
members share its split, so its train/val images are theirs. With a gate, quality codes and OOD scores come
from the first member's gated pass on plain images; with TTA that pass is one more than the views'.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from tumorclf.data import dataset as data
from tumorclf.evaluation.evaluate import operating_point, score, validation_predictions
from tumorclf.gate.quality_gate import Gate
from tumorclf.metrics.calibration import OperatingPoint, fit_operating_point
from tumorclf.metrics.ensemble import ensemble_operating_point, ensemble_probabilities
from tumorclf.runs.ensemble import check_members, member_validation
from tumorclf.runs.folder import RunDir
from tumorclf.runs.own_split import own_split
from tumorclf.transforms.pipeline import predict_images
from tumorclf.transforms.test_time import check_views, tta_predict

log = logging.getLogger(__name__)

TTA_POINT = ("refitted on the validation split's test-time augmented predictions for this evaluation; not saved in "
             "the run")
ENSEMBLE_POINT = "fitted on the mean of the members' calibrated validation predictions for this evaluation"


class Combined:
    """The probabilities and operating point of `runs` (an ensemble when several) with test-time `views`
    (None: plain images). Checks the members at once: a RunError names the one that differs."""

    def __init__(self, runs: Sequence[RunDir], views: Sequence[str] | None = None):
        if len(runs) < 2 and views is None:
            raise ValueError("Combined scores an ensemble or test-time views: give several runs or views")
        check_members(runs)
        self.runs = list(runs)
        self.views = check_views(views) if views is not None else None
        self.models: list = []
        self.points: list[OperatingPoint] = []

    @property
    def ensemble(self) -> bool:
        return len(self.runs) > 1

    def operating_point(self, model, batch_size: int, target: float | None) -> tuple[OperatingPoint, bool]:
        """Loads the other members; each keeps its own saved operating point (fitted and saved once for runs
        without); the combined point is fitted on validation at `target` (default: the first member's)."""
        self.models = [model, *(run.load_model() for run in self.runs[1:])]
        self.points = [operating_point(run, member, batch_size, None)[0]
                       for run, member in zip(self.runs, self.models)]
        target = self.points[0].target_sensitivity if target is None else target
        if self.views is None:
            for run, member in zip(self.runs, self.models):
                validation_predictions(run, member, batch_size)  # runs from before val_predictions.csv: once
            _, labels, raws = member_validation(self.runs)
        else:
            val = own_split(self.runs[0], ("val",), needed_for="test-time views refit the operating point on the "
                            "validation split", changed_means="the operating point is fitted on them as they are now")
            labels = val.labels
            raws = [tta_predict(member, val.images(), batch_size, self.views,
                                f"predicting the validation split of {run.name} ({len(self.views)} views)")[:, 1]
                    for run, member in zip(self.runs, self.models)]
        if self.ensemble:
            return ensemble_operating_point(labels, raws, self.points, target), False
        return fit_operating_point(labels, raws[0], target, f"validation ({len(self.views)} test-time views)"), False

    def score(self, model, gate: Gate | None, dataset: data.Dataset, batch_size: int,
              desc: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Column 1: the ensemble's P(Tumor) (`ensemble_probabilities`), or the single run's TTA softmax."""
        quality = ood = None
        if gate is not None:
            gated, quality, ood = score(model, gate, dataset, batch_size, f"{desc} (gate)")
        raws = []
        for i, (run, member) in enumerate(zip(self.runs, self.models)):
            if self.views is not None:
                raws.append(tta_predict(member, dataset.images(), batch_size, self.views,
                                        f"{desc}: {run.name} ({len(self.views)} views)")[:, 1])
            elif i == 0 and gate is not None:
                raws.append(gated[:, 1])  # the first member's plain pass is the gate's
            else:
                raws.append(predict_images(member, dataset.images(), dataset.labels, batch_size,
                                           f"{desc}: {run.name}")[:, 1])
        prob = ensemble_probabilities(raws, self.points) if self.ensemble else raws[0]
        return np.stack([1 - prob, prob], axis=1), quality, ood

    def summary(self) -> dict:
        """evaluation.json's ``ensemble`` (members and their own operating points) and ``tta`` (views)."""
        summary = {}
        if self.ensemble:
            summary["ensemble"] = {
                "members": [str(run.path) for run in self.runs],
                "member_operating_points": [{"temperature": point.temperature, "threshold": point.threshold}
                                            for point in self.points],
                "score": "mean of the members' calibrated P(Tumor) (prob_tumor_raw of predictions.csv)",
                "operating_point": ENSEMBLE_POINT,
                "reference": "contamination check, bootstrap groups and quality gate of the first member"}
        if self.views is not None:
            summary["tta"] = {"views": list(self.views), "operating_point": TTA_POINT}
        return summary
