"""An ensemble of runs as one model (`export_ensemble`; the command is `tumorclf export --run A B C`): a SavedModel
and/or model.onnx.

Its `probabilities` are [1 - P, P] with P the mean of the members' calibrated P(Tumor), each at its own
temperature (`tumorclf.serving.graph.EnsembleMean`: the float64 steps of `apply_temperature`, as `evaluate --run
A B C` scores the ensemble, `tumorclf.metrics.ensemble`), and its `prob_tumor` and `decision` apply the
ensemble's operating point (`tumorclf.runs.ensemble.ensemble_point`: fitted on that mean over the shared
validation split) with the serving head of a single run's export (`OperatingPointHead`). Signatures, the ONNX
graph's inputs and outputs and the model card's keys are those of a single run's export
(`tumorclf.serving.export`, `tumorclf.serving.onnx_export`), with ``ensemble`` added.

What a single run's export has and this one has not: no quality gate (the gate scores one model's features;
every image is decided), no model.keras (predict takes the SavedModel folder or model.onnx), and none of the
members' metrics or evaluations (they are not the ensemble's; evaluate the ensemble with `tumorclf evaluate`).
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Sequence

from tumorclf.errors import UsageError
from tumorclf.metrics.calibration import OperatingPoint
from tumorclf.runs.ensemble import check_members, ensemble_point, member_points
from tumorclf.runs.folder import RunDir
from tumorclf.serving.export import (GATE_OUTPUTS, OUT_OF_SCOPE, UNGATED_SCOPE, card_markdown, check_destination,
                                     check_formats, export_saved_model, model_card, replace_folder, require_onnx,
                                     signatures_card)
from tumorclf.serving.formats import DEFAULT_FORMATS
from tumorclf.serving.graph import EnsembleMean, decision_cutoff
from tumorclf.serving.onnx_export import ONNX_FILE, export_onnx
from tumorclf.serving.predictors import MODEL_CARD_FILE
from tumorclf.utils.files import atomic_write_json, atomic_write_text, json_safe

log = logging.getLogger(__name__)


def ensemble_card(runs: Sequence[RunDir], points: Sequence[OperatingPoint], point: OperatingPoint,
                  threshold: float | None, formats: tuple[str, ...] = DEFAULT_FORMATS) -> dict:
    """The first member's card (`model_card`) with the ensemble's operating point, no gate, no members' metrics
    or evaluations, and ``ensemble``: its members and their temperatures."""
    card = model_card(runs[0], point.threshold if threshold is None else threshold, None, formats)
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
    card["signatures"] = signatures_card(runs[0].config().image_size, False) if "savedmodel" in formats else None
    return card


def export_ensemble(runs: Sequence[str | Path | RunDir], out: str | Path | None = None, threshold: float | None = None,
                    overwrite: bool = False, formats: Sequence[str] = DEFAULT_FORMATS) -> Path:
    """Export the ensemble of `runs` (same split, image size and classes) as one model in `formats` (a SavedModel
    and/or model.onnx) with a model card in `out` (default ``saved_models/<first run>_ensemble<k>``); returns
    the folder."""
    formats = check_formats(formats)
    if "onnx" in formats:
        require_onnx()  # a missing package is a one-line error before anything is read or written
    runs = [run if isinstance(run, RunDir) else RunDir(run) for run in runs]
    check_members(runs)
    if threshold is not None and not 0 <= threshold <= 1:
        raise UsageError(f"export: --threshold must be in [0, 1], got {threshold}")
    out = Path(out) if out else Path("saved_models") / f"{runs[0].name}_ensemble{len(runs)}"
    for run in runs:
        check_destination(run, out, overwrite)
    points = member_points(runs)
    point = ensemble_point(runs)
    card = ensemble_card(runs, points, point, threshold, formats)
    log.info("ensemble of %d runs: temperature %g, threshold %g (%s)", len(runs), card["temperature"],
             card["threshold"], card["threshold_source"])
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        ensemble = EnsembleMean([run.load_model() for run in runs], [p.temperature for p in points])
        if "savedmodel" in formats:
            export_saved_model(ensemble, staging, card["temperature"], card["threshold"])
        if "onnx" in formats:
            card["onnx"] = export_onnx(ensemble, staging / ONNX_FILE, card["temperature"], card["threshold"])
            log.info("ONNX: %s, opset %d, %s", ONNX_FILE, card["onnx"]["opset"], card["onnx"]["converter"])
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
