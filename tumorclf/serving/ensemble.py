"""An ensemble of runs as one SavedModel (`export_ensemble`; the command is `tumorclf export --run A B C`).

The SavedModel's `probabilities` are [1 - P, P] with P the mean of the members' calibrated P(Tumor), each at
its own temperature (`EnsembleMean`: the float64 steps of `apply_temperature`, as `evaluate --run A B C`
scores the ensemble, `tumorclf.metrics.ensemble`), and its `prob_tumor` and `decision` apply the ensemble's
operating point (`tumorclf.runs.ensemble.ensemble_point`: fitted on that mean over the shared validation
split) with the serving head of a single run's export (`OperatingPointHead`). Signatures, inputs and the
model card's keys are those of a single run's export (`tumorclf.serving.export`), with ``ensemble`` added.

What a single run's export has and this one has not: no quality gate (the gate scores one model's features;
every image is decided), no ONNX model, no model.keras (predict takes the SavedModel folder), and none of the
members' metrics or evaluations (they are not the ensemble's; evaluate the ensemble with `tumorclf evaluate`).
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Sequence

import keras
import tensorflow as tf

from tumorclf.errors import UsageError
from tumorclf.metrics.calibration import CLIP, OperatingPoint
from tumorclf.runs.ensemble import check_members, ensemble_point, member_points
from tumorclf.runs.folder import RunDir
from tumorclf.serving.export import (GATE_OUTPUTS, OUT_OF_SCOPE, UNGATED_SCOPE, card_markdown, check_destination,
                                     export_saved_model, model_card, replace_folder, signatures_card)
from tumorclf.serving.graph import decision_cutoff
from tumorclf.serving.predictors import MODEL_CARD_FILE
from tumorclf.utils.files import atomic_write_json, atomic_write_text, json_safe

log = logging.getLogger(__name__)


class EnsembleMean(tf.Module):
    """Called like a model on 0-255 RGB images: [1 - P, P] (float32) with P the mean over `models` of each
    one's P(Tumor) calibrated at its temperature, in float64 as `apply_temperature` (T = 1: unchanged)."""

    def __init__(self, models: Sequence[keras.Model], temperatures: Sequence[float]):
        super().__init__(name="ensemble")
        self.members = list(models)
        self.temperatures = [float(t) for t in temperatures]
        self.member_temperatures = tf.Variable(self.temperatures, dtype=tf.float64, trainable=False,
                                               name="member_temperatures")
        self.input_shape = self.members[0].input_shape

    def __call__(self, images, training: bool = False):
        calibrated = []
        for member, temperature in zip(self.members, self.temperatures):
            raw = tf.cast(tf.cast(member(images, training=False), tf.float32)[:, 1], tf.float64)
            if temperature != 1.0:
                p = tf.clip_by_value(raw, CLIP, 1 - CLIP)
                raw = 1.0 / (1.0 + tf.exp(-(tf.math.log(p) - tf.math.log1p(-p)) / temperature))
            calibrated.append(raw)
        mean = tf.cast(tf.reduce_mean(tf.stack(calibrated), axis=0), tf.float32)
        return tf.stack([1.0 - mean, mean], axis=1)


def ensemble_card(runs: Sequence[RunDir], points: Sequence[OperatingPoint], point: OperatingPoint,
                  threshold: float | None) -> dict:
    """The first member's card (`model_card`) with the ensemble's operating point, no gate, no members' metrics
    or evaluations, and ``ensemble``: its members and their temperatures."""
    card = model_card(runs[0], point.threshold if threshold is None else threshold, None, ("savedmodel",))
    chosen = card["threshold"]
    cutoff = decision_cutoff(point.temperature, chosen)
    card.update(json_safe({
        "temperature": point.temperature, "operating_point": point.to_dict(),
        "threshold_source": "the ensemble's operating point" if threshold is None else "--threshold",
        "raw_cutoff": cutoff if math.isfinite(cutoff) else None,
        "quality_gate": None, "out_of_scope": [*OUT_OF_SCOPE, UNGATED_SCOPE], "evaluations": {}, "test_metrics": {},
        "ensemble": {"members": [str(run.path.resolve()) for run in runs],
                     "member_temperatures": [p.temperature for p in points],
                     "probabilities": "[1 - P, P], P the mean of the members' P(Tumor) each calibrated at its own "
                                      "temperature; prob_tumor and decision apply the ensemble's operating point "
                                      "to P"}}))
    card["output"] = {name: text for name, text in card["output"].items() if name not in GATE_OUTPUTS}
    card["output"].update(probabilities="float32 [N, 2], [1 - P, P]: P the mean of the members' calibrated "
                          "P(Tumor) (see ensemble)",
                          decision=card["output"]["decision"].replace("; -1 where quality is not ok", ""))
    card["signatures"] = signatures_card(runs[0].config().image_size, False)
    return card


def export_ensemble(runs: Sequence[str | Path | RunDir], out: str | Path | None = None, threshold: float | None = None,
                    overwrite: bool = False) -> Path:
    """Export the ensemble of `runs` (same split, image size and classes) as one SavedModel with a model card
    in `out` (default ``saved_models/<first run>_ensemble<k>``); returns the folder."""
    runs = [run if isinstance(run, RunDir) else RunDir(run) for run in runs]
    check_members(runs)
    if threshold is not None and not 0 <= threshold <= 1:
        raise UsageError(f"export: --threshold must be in [0, 1], got {threshold}")
    out = Path(out) if out else Path("saved_models") / f"{runs[0].name}_ensemble{len(runs)}"
    for run in runs:
        check_destination(run, out, overwrite)
    points = member_points(runs)
    point = ensemble_point(runs)
    card = ensemble_card(runs, points, point, threshold)
    log.info("ensemble of %d runs: temperature %g, threshold %g (%s)", len(runs), card["temperature"],
             card["threshold"], card["threshold_source"])
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        export_saved_model(EnsembleMean([run.load_model() for run in runs], [p.temperature for p in points]),
                           staging, card["temperature"], card["threshold"])
        atomic_write_json(staging / MODEL_CARD_FILE, card)
        atomic_write_text(staging / "MODEL_CARD.md", card_markdown(card) + ensemble_markdown(card))
        replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def ensemble_markdown(card: dict) -> str:
    """The card's section on the members."""
    ensemble = card["ensemble"]
    members = "\n".join(f"- `{member}` (temperature {temperature:g})"
                        for member, temperature in zip(ensemble["members"], ensemble["member_temperatures"]))
    return (f"\n## Ensemble\n\n{ensemble['probabilities']}. The test metrics above are none: evaluate the "
            f"ensemble with `tumorclf evaluate --run A B C --out DIR`. Members:\n\n{members}\n")
