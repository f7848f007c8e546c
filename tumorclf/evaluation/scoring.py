"""What `evaluate` asks of a scoring other than one run's model on plain images (`Scoring`): an ensemble of
runs or test-time augmentation (`tumorclf.evaluation.combined`). The run's own model, gate, contamination
check and report stay `evaluate`'s; a `Scoring` gives the probabilities and the operating point."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from tumorclf.data import dataset as data
from tumorclf.gate.quality_gate import Gate
from tumorclf.metrics.calibration import OperatingPoint


class Scoring(Protocol):
    def operating_point(self, model, batch_size: int, target: float | None) -> tuple[OperatingPoint, bool]:
        """The operating point to apply, fitted on validation, and whether it is the one saved in the run;
        `model` is the run's, loaded by `evaluate`. Called once, before `score`."""

    def score(self, model, gate: Gate | None, dataset: data.Dataset, batch_size: int,
              desc: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """As `tumorclf.evaluation.evaluate.score`: the (n, 2) probabilities (column 1 what the operating point
        calibrates), and with `gate` (`model` is then `gated_model`'s) each file's quality code and OOD score."""

    def summary(self) -> dict:
        """The keys it adds to evaluation.json."""
