"""A run's best model as a TensorFlow SavedModel with two serving signatures and/or an ONNX model, and a
model card (`export_run`; the command is `tumorclf export`).

`export_run`'s ``formats`` are one or more of `tumorclf.serving.formats.FORMATS` (default ``savedmodel``):
``savedmodel`` writes the SavedModel files described below, ``onnx`` writes ``model.onnx``, the ``serve``
signature as an ONNX graph (same input, same outputs; no ``serve_bytes``: `tumorclf.serving.onnx_export`,
which needs the ``onnx`` extra).

Signatures (inputs):

- ``serve``: ``images`` float32 [N, S, S, 3], 0-255 RGB already decoded and resized (for example by
  `tumorclf.data.decoder.decode_image`); preprocessing is inside the model.
- ``serve_bytes``: ``image_bytes`` string [N] of encoded files, decoded and resized in the graph by
  `tumorclf.data.decoder.decode_bytes_graph`: the same pixels as `tumorclf predict` for the formats in
  `decoder.GRAPH_FORMATS`. Other formats (TIFF, WebP, 16-bit PNG, CMYK JPEG, paletted or compressed BMP)
  make the call fail with an InvalidArgumentError naming the format; decode those with `tumorclf predict`.

Both return the same dict (`tumorclf.serving.graph.OperatingPointHead`), with the run's operating point applied
in the graph:

- ``probabilities`` float32 [N, 2]: the model's softmax [P(Healthy), P(Tumor)], uncalibrated (as before);
- ``prob_tumor`` float32 [N]: calibrated P(Tumor) = sigmoid(logit(P) / T) with P clipped to
  [1e-7, 1 - 1e-7], the float64 steps of `tumorclf.metrics.calibration.apply_temperature` (clip, log - log1p,
  divide by T, 1 / (1 + exp(-x)); within 1e-15 of NumPy before the cast to float32); T = 1: the raw
  P(Tumor) unchanged;
- ``decision`` int64 [N]: 1 (Tumor) where calibrated P(Tumor) >= threshold, else 0: the decision
  `tumorclf.metrics.classification.decide` takes on `tumorclf predict`'s float64 calibrated probability, bit for bit
  (see `decision_cutoff`).

A run with a quality gate (`tumorclf.gate.quality_gate`: ``gate.npz`` and ``gate.json`` in the run folder) adds, in both
signatures (`QualityHead`), the gate's answer to whether the model may answer at all:

- ``quality_code`` int32 [N]: the index in `tumorclf.gate.quality_gate.REASONS` (0 ok, 1 too_small, 2 blank,
  3 not_grayscale_mri, 4 out_of_distribution);
- ``quality`` string [N]: that reason's name, as the ``quality`` column of `tumorclf predict`;
- ``ood_score`` float32 [N]: the Mahalanobis distance of the model's pooled features to the training data;
- and ``decision`` is -1 wherever ``quality`` is not ok.

``serve_bytes`` says too_small where the file's short side (as decoded, before the resize:
`decoder.decode_bytes_graph_with_shape`) is under the gate's ``min_side``; ``serve`` receives pixels
already resized to S x S, cannot know the file's size and never says too_small. The gate's min side, OOD
threshold, blank spread and colour chroma are kept in the SavedModel (variable collection
``quality_gate``, in that order), its facts in ``model_card.json``, and ``gate.npz`` / ``gate.json`` are
copied beside ``model.keras`` so `tumorclf predict` gates that file too. A run without a gate exports as
before: no quality outputs, every image decided.

The temperature and threshold are those of the run's chosen operating point (`tumorclf.runs.points.chosen`:
``--operating-point NAME``, else the one ``calibrate --select`` chose, else ``validation``, its
``operating_point.json`` fitted on validation; runs without one: T = 1 and the threshold of its
``metrics.json``); a given ``threshold`` replaces the threshold only. The card's ``operating_point_in_use``
names the point and says what it was fitted on; `tumorclf predict` reads it from there. Temperature and
threshold are also kept in the SavedModel (variable collection ``operating_point``: temperature, threshold,
raw cutoff), in ``model.onnx``'s ``metadata_props`` and in ``model_card.json``.

The folder also holds ``model.keras``, ``model_card.json`` (read by `tumorclf predict` for its default
temperature and threshold; its ``formats`` list the model files, ``onnx`` the ONNX model's opset,
converter, outputs and metadata) and ``MODEL_CARD.md``: intended and out-of-scope use, the operating point, the
quality gate, every evaluation found in the run folder (``evaluation*/``) or given in ``evaluations``
(folders of evaluations of this run written elsewhere, e.g. by ``tumorclf evaluate --run RUN --out DIR``)
and the known limitations (`KNOWN_LIMITATIONS`).

``measure`` > 0 times in-process Keras and every exported format side by side on that many random images
(`measure_inference`: img/s in batches of 32, warm-up excluded) and writes the result to the card's
``inference_speed``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tumorclf.data import decoder
from tumorclf.utils.files import atomic_write_json, atomic_write_text, json_safe, versions
from tumorclf.metrics.bootstrap import format_interval
from tumorclf.errors import UsageError, one_line
from tumorclf.gate.quality_gate import VALIDATION_REJECTION, Gate, gated_model
from tumorclf.serving.formats import DEFAULT_FORMATS, FORMATS
from tumorclf.serving.onnx_export import ONNX_FILE, export_onnx
from tumorclf.serving.onnx_export import require as require_onnx
from tumorclf.serving.predictors import MODEL_CARD_FILE  # the card's file name predict reads its defaults from
from tumorclf.serving.predictors import KerasPredictor, OnnxPredictor, SavedModelPredictor
from tumorclf.runs.folder import DEFAULT_THRESHOLD, RunDir, RunExistsError
from tumorclf.runs.points import NamedPoint, chosen
from tumorclf.serving.graph import OperatingPointHead, QualityHead, decision_cutoff, pixel_spec, serving_functions

log = logging.getLogger(__name__)


INTENDED_USE = ("Research and teaching: comparing and explaining (e.g. Grad-CAM) classifiers of single 2-D brain "
                "MRI slices, Healthy vs Tumor, trained on public data; studying leakage, shortcut learning and "
                "calibration.")
OUT_OF_SCOPE = (
    "Not a diagnostic device: not cleared, certified or clinically validated; its output must not be used to "
    "diagnose, screen, triage or treat anyone.",
    "No clinical decisions of any kind, alone or as a second reader.",
    "Not validated on other scanners, MRI sequences, field strengths, institutions or patient populations than "
    "the public collections it was trained on; expect much worse results there (see the leave-source-out "
    "limitation).",
    "3-D volumes only slice-wise: it scores one 2-D slice at a time and gives no volume- or patient-level answer.",
    "No localisation, segmentation, tumour type or grade; other pathologies were not learned. Grad-CAM maps "
    "are explanations of the classifier, not segmentations.",
)
# the last out-of-scope item, by whether the export has a quality gate
UNGATED_SCOPE = "No out-of-distribution detection: any image, MRI or not, gets a probability."
GATED_SCOPE = ("Out-of-distribution detection is limited to the quality gate: it refuses tiny, blank, colour and "
               "far-from-training images, but an image close to the training data (another MRI sequence, scanner "
               "or collection) can pass it and still gets a probability; passing the gate is no evidence that the "
               "probability is right.")
# The leave-source-out sentence, on its own so tests can find it: the numbers are those of one recipe's
# measurement (experiments/results/robust/ablation.csv, which a test checks them against), stated as such, not
# the exported model's.
LEAVE_SOURCE_OUT_LIMITATION = (
    "This project's leave-source-out measurement of the fast VGG16 recipe (docs/evaluation.md, 'Leave-source-out'), "
    "trained on {br35h, unattributed} and tested on the 1,092 files of {sartaj, "
    "figshare} (2026-11-26), gave balanced accuracy 0.648 [95% interval 0.601, 0.694], sensitivity 0.760 "
    "[0.726, 0.794] and specificity 0.537 [0.450, 0.621] at its validation operating point (chosen for "
    "sensitivity 0.95), AUC 0.674 [0.615, 0.731], and ECE 0.22, against balanced accuracy 0.950 [0.916, 0.976] "
    "and AUC 0.991 on the grouped split's in-source test: on collections not seen in training that model was "
    "far less accurate, missed the sensitivity it was tuned for, and its probabilities were not calibrated. "
    "The robust recipe (docs/robustness.md), measured the same way, reached balanced "
    "accuracy 0.716 [0.671, 0.759], sensitivity 0.875, specificity 0.557 [0.473, 0.639] and AUC 0.810 [0.771, "
    "0.848]: better, still far below its in-source 0.969; most held-out healthy sagittal slices were called "
    "tumour (the training collections hold axial slices). "
    "These are those recipes' numbers, not necessarily this model's: other models were not measured this way "
    "and should be assumed to degrade similarly until they are."
)
VALIDATION_REUSE_LIMITATION = (
    "One validation split does two jobs: it picks the best epoch (by validation F1) and it fits the temperature "
    "and threshold, so the validation sensitivity, specificity and ECE at the operating point are optimistic; "
    "judge the operating point by the test split or external data (`tumorclf evaluate`)."
)
KNOWN_LIMITATIONS = (
    "The dataset is stitched from public collections (br35h, sartaj, figshare, unattributed; "
    "../shared/data/provenance.csv) whose source almost determines the label (br35h and sartaj are Healthy, "
    "figshare and nearly all unattributed files Tumor): a model can score well by recognising the collection "
    "(size, contrast, sequence, cropping) rather than the tumour.",
    LEAVE_SOURCE_OUT_LIMITATION,
    "2-D slices only: single slices, no volumes, no patient-level result.",
    "Near-duplicate images in the source data: 544 byte-identical copies and about 2,000 further re-encoded or "
    "contrast-changed copies (about 2,000 duplicate groups among 4,600 files). The grouped split keeps each "
    "group in one split, but the effective number of independent images is far below the file count, and a "
    "split over files (the study's `paper` split) overstates accuracy.",
    "Small recipe trained on a 2-core CPU (small models or frozen ImageNet features, a few epochs, one seed, "
    "no tuning, no ensembling): not the best these architectures can do.",
    "The temperature and threshold were fitted on a validation split of the same collections; they need not "
    "hold on other data, where calibration and the sensitivity reached can differ.",
    VALIDATION_REUSE_LIMITATION,
)
EVALUATION_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc", "ece")


def export_saved_model(model: keras.Model, path: Path, temperature: float = 1.0,
                       threshold: float = DEFAULT_THRESHOLD, gate: Gate | None = None) -> None:
    """Write `model` as a SavedModel with signatures `serve` (0-255 RGB) and `serve_bytes` (encoded images),
    both returning `OperatingPointHead`'s outputs at `temperature` and `threshold`, and with a `gate` also
    `QualityHead`'s (one forward pass of `gated_model` gives the probabilities and the gate's score)."""
    head = OperatingPointHead(temperature, threshold)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(head)
    archive.add_variable_collection("operating_point", head.variables_in_order)
    gated = None
    if gate is not None:
        gated = gated_model(model, gate), QualityHead(gate)
        archive.track(gated[0])
        archive.track(gated[1])
        archive.add_variable_collection("quality_gate", gated[1].variables_in_order)
    serve, serve_bytes = serving_functions(model, head, gated)
    archive.add_endpoint(name="serve", fn=serve, input_signature=[pixel_spec(int(model.input_shape[1]))])
    archive.add_endpoint(name="serve_bytes", fn=serve_bytes,
                         input_signature=[tf.TensorSpec((None,), tf.string, name="image_bytes")])
    archive.write_out(str(path), verbose=False)


def _metric(values: dict, name: str) -> dict:
    """{value, ci95} of one metric of an evaluation.json dataset: `{"value", "ci95"}` (with intervals) or a
    plain number (evaluations before intervals)."""
    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    item = values.get(name)
    if isinstance(item, dict):
        value, ci = item.get("value"), item.get("ci95")
        return {"value": value if number(value) else None,
                "ci95": ci if isinstance(ci, list) and len(ci) == 2 and all(map(number, ci)) else None}
    return {"value": item if number(item) else None, "ci95": None}


def _read_evaluation(path: Path) -> dict:
    """An evaluation.json as written by `tumorclf evaluate` (raises OSError, ValueError, KeyError or
    TypeError when it is not one)."""
    report = json.loads(path.read_text())
    if not isinstance(report, dict) or not isinstance(report["datasets"], dict):
        raise TypeError("datasets is not an object")
    return report


def _summary(report: dict) -> dict:
    """What a card reader needs of one evaluation.json: its threshold and temperature, and per dataset n,
    contaminated and `EVALUATION_METRICS` with their 95% intervals."""
    return {
        "threshold": report.get("threshold"), "temperature": report.get("temperature"),
        "datasets": {name: {"n": values.get("n"), "contaminated": values.get("contaminated"),
                            **{metric: _metric(values, metric) for metric in EVALUATION_METRICS}}
                     for name, values in report["datasets"].items() if isinstance(values, dict)},
    }


def run_evaluations(run: RunDir) -> dict:
    """Every `evaluation.json` in the run's `evaluation*` subfolders, keyed by the subfolder's name and
    reduced by `_summary`. An unreadable file is left out with a warning."""
    found = {}
    for folder in sorted(p for p in run.path.glob("evaluation*") if p.is_dir()):
        path = folder / "evaluation.json"
        if not path.is_file():
            continue
        try:
            found[folder.name] = _summary(_read_evaluation(path))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            log.warning("left %s out of the model card: unreadable (%s)", path, one_line(exc))
    return found


def external_evaluations(run: RunDir, folders: list[Path], known: dict | None = None) -> dict:
    """The `evaluation.json` of each folder of `tumorclf export --evaluation` (evaluations written with
    `tumorclf evaluate --out` outside the run folder), keyed by the folder's name and reduced by `_summary`,
    with the folder as given (`folder`). Each must be readable and an evaluation of `run` (its `run`, a
    relative path taken from the current directory, resolves to the run folder); otherwise a one-line
    UsageError. A folder already in the card (one of the run's own subfolders `known`, from
    `run_evaluations`, or one given twice) is not added again; two different folders of one name are an
    error."""
    found, where = {}, {name: run.path / name for name in known or {}}
    for folder in folders:
        folder = Path(folder)
        name = folder.name
        if name in where and where[name].resolve() == folder.resolve():
            continue  # the run's own evaluation subfolder, or a folder given twice: already in the card
        path = folder / "evaluation.json"
        if not path.is_file():
            raise UsageError(f"export: --evaluation {folder} holds no evaluation.json (write one with tumorclf "
                             f"evaluate --run {run.path} --out {folder})")
        try:
            report = _read_evaluation(path)
            evaluated = report.get("run")
            if not isinstance(evaluated, str) or not evaluated:
                raise TypeError("it names no run")
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"export: --evaluation {folder}: unreadable evaluation.json "
                             f"({one_line(exc)})") from None
        if Path(evaluated).resolve() != run.path.resolve():
            raise UsageError(f"export: --evaluation {folder} is an evaluation of the run {evaluated}, not of "
                             f"{run.path}")
        if name in where:
            raise UsageError(f"export: --evaluation {folder}: the card already has an evaluation named {name!r} "
                             f"({where[name]}); rename one of the folders")
        found[name] = {"folder": str(folder), **_summary(report)}
        where[name] = folder
    return found


GATE_OUTPUTS = {
    "quality_code": "int32 [N], index in tumorclf.gate.quality_gate.REASONS of the image's quality (0 ok)",
    "quality": "string [N], ok or the first reason that applies: too_small, blank, not_grayscale_mri, "
               "out_of_distribution (serve never says too_small: it receives pixels already resized)",
    "ood_score": "float32 [N], Mahalanobis distance of the model's pooled features to the training images'",
}


def gate_card(gate: Gate | None) -> dict | None:
    """The model card's `quality_gate`: the gate's facts (`Gate.summary()`) and each reason's rule in words,
    with its threshold; None for a run without a gate (predictions are not gated)."""
    if gate is None:
        return None
    facts = gate.summary()
    return {**facts, "rules": {
        "too_small": f"the file's short side is under {gate.min_side} px; serve_bytes and tumorclf predict only: "
                     "serve receives pixels already resized and never says too_small",
        "blank": f"the 1st-99th percentile gray range is at most {gate.blank_spread:g} of 255",
        "not_grayscale_mri": f"the mean per-pixel channel spread (max - min) is above {gate.colour_chroma:g} of 255",
        "out_of_distribution": f"the Mahalanobis distance of the model's pooled `{gate.layer}` features to the nearest "
                               "training class mean (one Ledoit-Wolf covariance for both classes) is above "
                               f"{gate.ood_threshold:.4g}, the smallest threshold rejecting at most "
                               f"{VALIDATION_REJECTION:.0%} of the validation split",
    }}


def signatures_card(size: int, gated: bool) -> dict:
    """The model card's words on the SavedModel's two signatures."""
    gate_outputs = ", quality_code, quality, ood_score" if gated else ""
    return {"serve": f"images float32 [N, {size}, {size}, 3] 0-255 RGB, decoded and resized by "
                     "tumorclf.data.decoder.decode_image; returns probabilities, prob_tumor, decision"
                     + (f"{gate_outputs} (never too_small: the file's size is not known)" if gated else ""),
            "serve_bytes": f"image_bytes string [N] ({decoder.GRAPH_FORMATS}), decoded and resized in the graph "
                           "exactly as tumorclf predict does; returns probabilities, prob_tumor, decision"
                           + gate_outputs}


def model_card(run: RunDir, threshold: float | None = None, evaluations: list[Path] | None = None,
               formats: tuple[str, ...] = DEFAULT_FORMATS, point_name: str | None = None) -> dict:
    """What a user of the export needs to know, from the run's record, metrics, operating point, quality gate
    and evaluations (its `evaluation*` subfolders and the folders `evaluations`, see `external_evaluations`).
    The threshold is that of the run's chosen point (`tumorclf.runs.points.chosen`: `point_name`, else the one
    selected, else the validation one; ``operating_point_in_use`` names it); a given `threshold` replaces it.
    `formats` (of `FORMATS`) are the model
    files the export holds beside model.keras; the SavedModel's signatures are described when it is one of
    them (`export_run` adds the ONNX file's facts). A run's unreadable gate is a `GateError`."""
    record, metrics = run.record(), run.metrics()
    gate = Gate.load(run.path)
    cfg, resolved = record.config, record.resolved
    size = cfg.image_size
    trained_decoder = record.decoder
    point = run.operating_point()
    in_use = chosen(run, point_name)
    temperature = in_use.temperature
    if threshold is None:
        threshold = in_use.threshold
        threshold_source = (run.calibrated_points_file.name if in_use.provenance else
                            run.operating_point_file.name if point else
                            run.metrics_file.name if "threshold" in metrics else "default")
    else:
        threshold = float(threshold)
        threshold_source = "--threshold" + (f" (the operating point's is {in_use.threshold:g})" if point else "")
        in_use = NamedPoint("--threshold", temperature, threshold, f"given on the command line ({threshold_source})")
    holdout = getattr(cfg, "holdout_sources", None)
    found_evaluations = run_evaluations(run)
    found_evaluations.update(external_evaluations(run, evaluations or [], found_evaluations))
    cutoff = decision_cutoff(temperature, threshold)
    return json_safe({
        "model": cfg.model,
        "weights_origin": resolved.get("weights_origin"),
        "input": f"{size}x{size} RGB, float 0-255 (preprocessing is inside the model)",
        "output": {"probabilities": "float32 [N, 2], softmax [P(Healthy), P(Tumor)], uncalibrated",
                   "prob_tumor": "float32 [N], calibrated P(Tumor) = sigmoid(logit(P(Tumor)) / temperature), "
                                 "P(Tumor) clipped to [1e-7, 1 - 1e-7] (temperature 1: P(Tumor) unchanged)",
                   "decision": "int64 [N], 1 (Tumor) where calibrated P(Tumor) >= threshold (compared in float64 "
                               "as tumorclf.metrics.classification.decide), else 0 (Healthy)"
                               + ("; -1 where quality is not ok" if gate else ""),
                   **(GATE_OUTPUTS if gate else {})},
        "intended_use": INTENDED_USE,
        "out_of_scope": [*OUT_OF_SCOPE, GATED_SCOPE if gate else UNGATED_SCOPE],
        "temperature": temperature,
        "threshold": threshold,
        "threshold_source": threshold_source,
        "raw_cutoff": cutoff if math.isfinite(cutoff) else None,
        "operating_point": point.to_dict() if point else None,
        "operating_point_in_use": in_use.to_dict(),
        "quality_gate": gate_card(gate),
        "leave_source_out": None if cfg.split != "source" else {
            "held_out_sources": holdout.split(",") if holdout else [],
            "sources": {key[len("source_"):]: value for key, value in record.split.items()
                        if key.startswith("source_")},
            "note": "a leave-source-out run: its test split is every file of the held-out sources, none of which "
                    "(nor any near-copy) was used for training or validation",
        },
        "known_limitations": list(KNOWN_LIMITATIONS),
        "evaluations": found_evaluations,
        "classes": resolved.get("class_names"),
        "data": resolved.get("data"),
        "split_protocol": cfg.split,
        "split": record.split,
        "recipe": {k: getattr(cfg, k) for k in ("recipe", "intensity", "framing", "acquisition", "elastic", "epochs",
                                                "batch_size", "learning_rate", "momentum", "fine_tune", "seed")},
        "best_epoch": metrics.get("best_epoch"),
        "test_metrics": {k: metrics.get(k) for k in ("accuracy", "precision", "recall", "f1", "auc", "test_loss",
                                                     "confusion_matrix", "per_class_accuracy")},
        "decoder": {
            "version": decoder.DECODER_VERSION,
            "trained_with": trained_decoder,
            "steps": "full-resolution decode (EXIF orientation, transparency on black, 16-bit stretch) to RGB "
                     "uint8, then tf.image.resize bilinear antialias=True, rounded to uint8",
            "serve_bytes_accepts": decoder.GRAPH_FORMATS,
            "serve_bytes_refuses": "TIFF, WebP and other formats, 16-bit PNG, CMYK/YCCK JPEG, compressed or "
                                   "paletted BMP, images over " f"{decoder.MAX_PIXELS} px: InvalidArgumentError "
                                   f"starting '{decoder.GRAPH_ERROR_PREFIX}'",
            "serve_bytes_known_differences": "EXIF orientation stored only in a PNG text chunk ('Raw profile type "
                                             "exif') or in compressed XMP is not applied",
        },
        "formats": [name for name in FORMATS if name in formats],
        "signatures": signatures_card(size, gate is not None) if "savedmodel" in formats else None,
        "source_run": str(run.path.resolve()),
        "versions": versions(),
    })


def _number(value, digits: int = 4) -> str:
    """A number of the card as `format_interval` writes it (`-` when missing or undefined)."""
    return format_interval({"value": value if isinstance(value, (int, float)) and not isinstance(value, bool)
                            else None}, digits)


def card_markdown(card: dict) -> str:
    m = card["test_metrics"]

    def number(key: str) -> str:
        return _number(m.get(key))

    dec = card["decoder"]
    point = card.get("operating_point")
    lines = [
        f"# Model card: {card['model']}",
        "",
        f"- Task: brain MRI slice, {card['classes'][0]} (0) vs {card['classes'][1]} (1)",
        f"- Weights origin: {card['weights_origin']}",
        f"- Input: {card['input']}",
        f"- Data: {card['data']}, split protocol `{card['split_protocol']}`",
        f"- Recipe: {card['recipe']}",
        f"- Calibration temperature: {card['temperature']:g}; decision threshold on calibrated P(Tumor): "
        f"{card['threshold']:g} (from {card['threshold_source']})",
        f"- Test (metrics.json): accuracy {number('accuracy')}, precision {number('precision')}, recall "
        f"{number('recall')}, F1 {number('f1')}, AUC {number('auc')}, confusion matrix {m.get('confusion_matrix')}",
        f"- Decoder: version {dec['version']} (the run was trained with version {dec['trained_with']}): "
        f"{dec['steps']}",
        *saved_model_lines(card),
        *onnx_lines(card.get("onnx")),
        "- Outputs: " + "; ".join(f"`{name}` {text}" for name, text in card["output"].items()),
        f"- Versions: {card['versions']}",
        "",
        "## Intended use",
        "",
        card["intended_use"],
        "",
        "## Out of scope",
        "",
        *(f"- {item}" for item in card["out_of_scope"]),
        "",
        "## Operating point",
        "",
    ]
    if point:
        validation = point.get("validation") or {}
        lines += [
            f"Fitted on the {point.get('fitted_on')} split ({point.get('n')} images): temperature "
            f"{_number(point.get('temperature'))}, threshold {_number(point.get('threshold'))} on calibrated "
            f"P(Tumor), the highest reaching sensitivity {_number(point.get('target_sensitivity'), 2)} there "
            f"(Youden's threshold {_number(point.get('youden_threshold'))}).",
            "",
            f"- At the threshold on validation: sensitivity {_number(validation.get('sensitivity_at_threshold'))}, "
            f"specificity {_number(validation.get('specificity_at_threshold'))} (optimistic: the same split chose "
            "the epoch and fitted the threshold)",
            f"- ECE on validation: {_number(validation.get('ece_before'))} before, "
            f"{_number(validation.get('ece_after'))} after the temperature",
        ]
        if not card["threshold_source"].startswith(("operating_point", "default")) and \
                card["threshold"] != point.get("threshold"):
            lines.append(f"- This export decides at {card['threshold']:g} instead ({card['threshold_source']}).")
        if card.get("operating_point_in_use"):
            lines.append(f"- This export decides at the {card['operating_point_in_use']['description']}.")
    else:
        lines.append(f"None: the run has no operating_point.json. P(Tumor) is not calibrated (temperature 1) and "
                     f"the threshold {card['threshold']:g} comes from {card['threshold_source']}.")
    lines += ["", "## Quality gate", "", *gate_markdown(card.get("quality_gate"))]
    lines += ["", "## Evaluations", ""]
    if not card["evaluations"]:
        lines.append("None in the run folder or given (run `tumorclf evaluate --run RUN`, or pass "
                     "`--evaluation DIR` for one written elsewhere).")
    for folder, evaluation in card["evaluations"].items():
        temperature = evaluation.get("temperature")
        lines += [f"`{evaluation.get('folder', folder)}/evaluation.json`, threshold {evaluation.get('threshold')}, "
                  f"temperature {'1 (uncalibrated)' if temperature is None else temperature}; value [95% interval]:",
                  "",
                  "| dataset | n | contaminated | " + " | ".join(EVALUATION_METRICS) + " |",
                  "|---|---|---|" + "---|" * len(EVALUATION_METRICS)]
        for name, values in evaluation["datasets"].items():
            cells = [format_interval(values.get(metric) or {}) for metric in EVALUATION_METRICS]
            lines.append(f"| {name} | {values.get('n')} | {values.get('contaminated', 'n/a')} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    lso = card.get("leave_source_out")
    if lso:
        lines += ["", "## Leave-source-out run", "",
                  f"This run held out the source(s) {', '.join(lso['held_out_sources'])}: {lso['note']}. "
                  f"Files per source: {lso['sources']}."]
    lines += ["", "## Known limitations", "", *(f"- {item}" for item in card["known_limitations"]), ""]
    return "\n".join(line for i, line in enumerate(lines) if line or i == 0 or lines[i - 1])  # no double blanks


def saved_model_lines(card: dict) -> list[str]:
    """The card's lines on the SavedModel's two signatures (none when the export has no SavedModel)."""
    signatures, dec = card.get("signatures"), card["decoder"]
    if not signatures:
        return []
    return [f"- SavedModel `serve`: {signatures['serve']}",
            f"- SavedModel `serve_bytes`: {signatures['serve_bytes']}. Refused with an error: "
            f"{dec['serve_bytes_refuses']}. Known difference: {dec['serve_bytes_known_differences']}."]


def onnx_lines(facts: dict | None) -> list[str]:
    """The card's line on model.onnx (none when the export has no ONNX model)."""
    if not facts:
        return []
    return [f"- ONNX `{facts['file']}` (opset {facts['opset']}, {facts['converter']}): {facts['input']}; outputs "
            f"{', '.join(facts['outputs'])}; metadata_props {', '.join(facts['metadata_props'])}. Not in it: "
            f"{facts['not_included']}."]


def gate_markdown(gate: dict | None) -> list[str]:
    """The card's quality gate section: what each reason means, its threshold and how often the gate refused
    validation images."""
    if not gate:
        return ["None: predictions are not gated. Every image, MRI or not, blank or tiny, gets a probability and "
                "a decision (fit a gate with `tumorclf gate --run RUN`, then export again)."]
    validation = gate.get("validation") or {}
    rejected = validation.get("rejected") or {}
    counts = ", ".join(f"{reason} {count}" for reason, count in rejected.items()) or "none"
    rate = validation.get("rejection_rate")
    rate = f"{rate:.1%}" if isinstance(rate, (int, float)) else "-"
    return [
        "Before its probability counts, each image gets a `quality`: `ok`, or the first of these reasons that "
        "applies. Where it is not `ok`, `tumorclf predict` leaves `predicted` empty and the exported "
        "`decision` output (SavedModel, model.onnx) is -1 (the probabilities are still reported).",
        "",
        *(f"- `{reason}`: {rule}" for reason, rule in (gate.get("rules") or {}).items()),
        f"- On the validation split ({validation.get('n')} images) the gate refused {rate} of them: {counts}.",
    ]


SPEEDS = {"keras": "keras_predict_img_per_s", "savedmodel": "saved_model_img_per_s",
          "onnx": "onnx_runtime_img_per_s"}  # the card's inference_speed keys, per scoring path


def predictors(model: keras.Model, gate: Gate | None, folder: Path, formats: tuple[str, ...]) -> dict:
    """The `tumorclf predict` predictor of each scoring path of an export in `folder`: the .keras model
    (gated as predict gates it) and each of `formats` there."""
    found = {"keras": KerasPredictor(model, gate)}
    if "savedmodel" in formats:
        found["savedmodel"] = SavedModelPredictor(tf.saved_model.load(str(folder)), folder)
    if "onnx" in formats:
        found["onnx"] = OnnxPredictor(folder / ONNX_FILE)
    return found


def measure_inference(model: keras.Model, folder: Path, n: int, formats: tuple[str, ...] = DEFAULT_FORMATS,
                      gate: Gate | None = None, batch_size: int = 32) -> dict:
    """Images/s of in-process Keras and of each exported format of `folder`, as `tumorclf predict` scores
    with them (`predictors`; decoding excluded), on the same `n` random 0-255 images in batches of
    `batch_size`. Each path scores one batch first (warm-up, not timed); then the paths take turns batch by
    batch, so a change in the machine's load falls on all of them alike."""
    size = int(model.input_shape[1])
    images = np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)).astype("float32")
    batches = [images[i : i + batch_size] for i in range(0, n, batch_size)]
    paths = predictors(model, gate, folder, formats)
    seconds = dict.fromkeys(paths, 0.0)
    for predict in paths.values():
        predict(batches[0])
    for k, batch in enumerate(batches):
        for name in list(paths)[k % len(paths):] + list(paths)[: k % len(paths)]:  # each path first in turn
            start = time.perf_counter()
            paths[name](batch)
            seconds[name] += time.perf_counter() - start
    log.info("inference on %d images of %d px, batch %d: %s", n, size, batch_size,
             ", ".join(f"{name} {n / s:.1f} img/s" for name, s in seconds.items()))
    return {"images": n, "image_size": size, "batch_size": batch_size, "cpu_count": os.cpu_count(),
            "method": "tumorclf predict's scoring step per path (decoding excluded), one warm-up batch each, then "
                      "the paths in turn batch by batch",
            **{SPEEDS[name]: round(n / s, 2) for name, s in seconds.items()}}


def export_run(run_dir: str | Path | RunDir, out: str | Path | None = None, threshold: float | None = None,
               overwrite: bool = False, measure: int = 0, evaluations: list[Path] | None = None,
               formats: tuple[str, ...] | list[str] = DEFAULT_FORMATS, point_name: str | None = None) -> Path:
    """Export the run's best model to `out` (default `saved_models/<run name>`) in `formats` (of `FORMATS`);
    returns the folder.

    The run's temperature and `threshold` (default: the threshold of the run's chosen point, `point_name` or
    the one selected, `tumorclf.runs.points.chosen`) are applied in every
    signature and graph and recorded in the model card, with the run's evaluations and those of the folders
    `evaluations` (`external_evaluations`). The run's quality gate, when it has one, adds its outputs to them
    and is copied beside model.keras. `measure` > 0 times every format and Keras (`measure_inference`)."""
    formats = check_formats(formats)
    if "onnx" in formats:
        require_onnx()  # a missing package is a one-line error before anything is read or written
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    run.require_finished()
    if threshold is not None and not 0 <= threshold <= 1:
        raise UsageError(f"export: --threshold must be in [0, 1], got {threshold}")
    out = Path(out) if out else Path("saved_models") / run.name
    check_destination(run, out, overwrite)
    card = model_card(run, threshold, evaluations, formats, point_name)  # reads every run file before the slow part
    gate = Gate.load(run.path)
    log.info("%s: %s; temperature %g, threshold %g (from %s)", run, card["operating_point_in_use"]["description"],
             card["temperature"], card["threshold"], card["threshold_source"])
    if gate is None:
        log.warning("%s has no quality gate (fit one with `tumorclf gate --run %s`): the export's predictions are "
                    "not gated", run, run.path)
    else:
        log.info("quality gate: too_small under %d px, OOD threshold %.4g", gate.min_side, gate.ood_threshold)
    if card["decoder"]["trained_with"] != decoder.DECODER_VERSION:
        log.warning("%s was trained with decoder version %s; this export and tumorclf predict decode with "
                    "version %s (slightly different pixels)", run, card["decoder"]["trained_with"],
                    decoder.DECODER_VERSION)
    model = run.load_model()
    if gate is not None:
        gate.check(model, run.path)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if "savedmodel" in formats:
            export_saved_model(model, staging, card["temperature"], card["threshold"], gate)
        if "onnx" in formats:
            card["onnx"] = export_onnx(model, staging / ONNX_FILE, card["temperature"], card["threshold"], gate)
            log.info("ONNX: %s, opset %d, %s", ONNX_FILE, card["onnx"]["opset"], card["onnx"]["converter"])
        shutil.copy2(run.best_model, staging / "model.keras")
        if gate is not None:  # beside model.keras, so `tumorclf predict --model EXPORT/model.keras` gates too
            gate.save(staging)
        if measure:
            card["inference_speed"] = measure_inference(model, staging, measure, formats, gate)
        atomic_write_json(staging / MODEL_CARD_FILE, card)
        atomic_write_text(staging / "MODEL_CARD.md", card_markdown(card))
        replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def check_formats(formats) -> tuple[str, ...]:
    """`formats` in `FORMATS` order without repeats; a one-line UsageError for an unknown or missing one."""
    unknown = [name for name in formats if name not in FORMATS]
    if unknown or not formats:
        raise UsageError(f"export: --format takes one or more of {', '.join(FORMATS)}, got "
                         f"{', '.join(map(str, formats)) or 'none'}")
    return tuple(name for name in FORMATS if name in formats)


def check_destination(run: RunDir, out: Path, overwrite: bool) -> None:
    """Refuse an `out` that is a run folder or holds the source run (replacing it would delete the run),
    an existing one without `overwrite`, and, with it, anything but an earlier export or an empty folder."""
    if RunDir(out).config_file.is_file():
        raise RunExistsError(f"--out {out} is a run folder; choose another --out (default saved_models/<run name>)")
    if out.exists() and run.path.resolve().is_relative_to(out.resolve()):
        raise RunExistsError(f"--out {out} holds the run {run}; choose another --out")
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise RunExistsError(f"{out} already exists; pass --overwrite to replace it or --out to choose another")
    if not out.is_dir() or not ((out / MODEL_CARD_FILE).is_file() or not any(out.iterdir())):
        raise RunExistsError(f"{out} exists and is not a tumorclf export (no {MODEL_CARD_FILE}); --overwrite "
                             "replaces only an earlier export: choose another --out")


def replace_folder(new: Path, out: Path) -> None:
    """Move folder `new` to `out`. An existing `out` is first renamed aside and deleted only once `new` is in
    place, so a crash leaves the old folder (at `out` or, renamed, beside it) or the new one, never neither."""
    if not (out.exists() or out.is_symlink()):
        os.replace(new, out)
        return
    aside = out.with_name(f".{out.name}.old")
    k = 1
    while aside.exists() or aside.is_symlink():
        k += 1
        aside = out.with_name(f".{out.name}.old{k}")
    os.replace(out, aside)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(aside, out)
        raise
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)
    if aside.exists():
        log.warning("could not delete the replaced export %s; delete it by hand", aside)

