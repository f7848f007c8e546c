"""P(tumour) of image files and folders with a `.keras` model, an exported SavedModel or an export's
``model.onnx`` (`OnnxPredictor`, onnxruntime): the library of `tumorclf predict`, whose scoring `tumorclf serve`
shares (`open_model`, `score_batch`).

Files are decoded as training decodes them (`tumorclf.data.decoder.decode_slices`: `read_slices`, whose default
middle slice is `read_pixels`'s, then `resize`, i.e. `decode_image`, keeping the slice's own size for the
gate) and scored in batches (a SavedModel through the ``probabilities`` output of its ``serve`` signature).
A file that cannot be decoded gets an error in its row and the others are still scored.

DICOM (``.dcm``, or by content) and NIfTI (``.nii``, ``.nii.gz``) files are decoded by `tumorclf.data.medical`
(windowed to 8 bits). ``slices`` (predict's ``--slices``) says which slices of a volume or multi-frame file
are scored: ``middle`` (the default, ``n // 2``: the one slice training reads per file), ``all`` (one row per
slice with enough brain, `tumorclf.data.medical.has_brain`) or ``K`` (the 0-based slice K; out of range is
that file's error). A 2-D image is scored once whatever ``slices`` says.

Each row: ``path, prob_tumor, predicted, error, prob_tumor_raw, quality, ood_score, slice`` (the columns
added later come last, so readers of the first ones keep them). ``slice`` is the 0-based index of the
scored slice of a volume or multi-frame file (its ``path`` is the file's), empty for a 2-D image.
``prob_tumor`` is the **calibrated** P(Tumor), sigmoid(logit(P) / T)
(`tumorclf.metrics.calibration.apply_temperature`), ``prob_tumor_raw`` the model's softmax P(Tumor), and
``predicted`` is Tumor where the calibrated P(Tumor) is at or above the threshold
(`tumorclf.metrics.classification.decide`), Healthy below it, and empty when the quality gate refused the image.

``quality`` is the input quality gate's answer (`tumorclf.gate.quality_gate`): ``ok``, or the first reason the model
should not answer: ``too_small`` (the file's short side under the gate's min side), ``blank``,
``not_grayscale_mri`` or ``out_of_distribution``; ``ood_score`` is the image's Mahalanobis distance to
the training features (4 decimals). The gate of a ``.keras`` model is the ``gate.npz`` / ``gate.json``
beside it (a run's best.keras, an export's model.keras; `gated_model` scores it in the same forward pass);
a SavedModel's or model.onnx's are its own ``quality_code`` and ``ood_score`` outputs, with the min side
saved inside it.
A model without a gate (older runs and exports) is predicted ungated, with a warning; so is any model
with ``--no-gate`` (without one): ``quality`` and ``ood_score`` are empty and every readable image is
decided.

The temperature T and the threshold are the ones recorded with the model (`recorded_operating_point`):
the ``temperature`` and ``threshold`` of ``model_card.json`` beside it (written by `tumorclf export`),
else, for a SavedModel or model.onnx, the operating point saved inside it, else the run folder's chosen
point (`tumorclf.runs.points.chosen`: ``--operating-point NAME``, else the one ``calibrate --select``
chose, else the validation one) for a run's ``best.keras``, else T = 1 and
``tumorclf.runs.folder.DEFAULT_THRESHOLD``. T = 1 means uncalibrated: ``prob_tumor`` equals
``prob_tumor_raw``. ``--threshold`` replaces the threshold only. For an export, these rows equal the
SavedModel's own ``prob_tumor``, ``decision`` (-1: empty ``predicted``), ``quality`` and ``ood_score``
outputs (its ``serve_bytes`` signature's; ``serve`` cannot say too_small).
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, NamedTuple

import numpy as np

from tumorclf.metrics.calibration import apply_temperature
from tumorclf.data.dataset import CLASS_NAMES
from tumorclf.data.decoder import DECODER_VERSION, DecodeError, decode_slices
from tumorclf.errors import UserError, one_line
from tumorclf.metrics.classification import decide
from tumorclf.utils.progress import Progress
from tumorclf.runs.folder import DEFAULT_THRESHOLD, RunDir, RunError

if TYPE_CHECKING:
    from tumorclf.gate.quality_gate import Gate  # imported where used: it loads Keras, which `predict --help` need not

log = logging.getLogger(__name__)

# float32 0-255 RGB batch -> {"probabilities": [N, 2]}, and from a gated predictor (one with a `min_side`) also
# "quality_code" (without too_small) and "ood_score"
Predictor = Callable[[np.ndarray], dict[str, np.ndarray]]
MODEL_CARD_FILE = "model_card.json"  # written by tumorclf.serving.export beside the SavedModel and its model.keras
# prob_tumor: calibrated P(Tumor); prob_tumor_raw: the model's softmax P(Tumor); quality, ood_score: the gate's
# (each added at the end, so older readers of path,prob_tumor,predicted,error keep their columns); slice: the index
# of a volume's or multi-frame file's slice (None for a 2-D image)
COLUMNS = ["path", "prob_tumor", "predicted", "error", "prob_tumor_raw", "quality", "ood_score", "slice"]
SAVED_MODEL_OUTPUT = "probabilities"  # the raw softmax output of an export's signatures
GATE_OUTPUTS = ("quality_code", "ood_score")  # an export's gate outputs predict reads


class ModelError(UserError, ValueError):
    """The model path is neither a loadable .keras file nor a SavedModel folder, or its card is unreadable."""


class KerasPredictor:
    """A .keras model as a `Predictor`; with a gate, its `gated_model`, so one forward pass gives the
    probabilities and the gate's outputs. `min_side`: the gate's (None: ungated)."""

    def __init__(self, model, gate: "Gate | None"):
        from tumorclf.gate.quality_gate import gated_model

        self.size = int(model.input_shape[1])
        self.min_side = gate.min_side if gate else None
        self.model = gated_model(model, gate) if gate else model

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.model.predict(batch, verbose=0)
        return outputs if self.min_side is not None else {"probabilities": outputs}


class SavedModelPredictor:
    """An exported SavedModel's `serve` signature as a `Predictor` of raw [Healthy, Tumor] probabilities.

    `operating_point` is (temperature, threshold) as saved inside the SavedModel by `tumorclf export`
    (None for SavedModels without them); its `prob_tumor` and `decision` outputs apply them. `min_side` is
    the quality gate's (None for exports without one, or with `gated` False): then the predictor also
    returns the signature's `quality_code` (never too_small: `serve` gets resized pixels) and `ood_score`."""

    def __init__(self, loaded, path: Path, gated: bool = True):
        import tensorflow as tf

        self._tf = tf
        signatures = loaded.signatures
        if "serve" not in signatures:
            raise ModelError(f"cannot load model {path}: the SavedModel has no 'serve' signature")
        self.serve = signatures["serve"]
        self.size = int(self.serve.structured_input_signature[1]["images"].shape[1])
        outputs = list(self.serve.structured_outputs)
        if SAVED_MODEL_OUTPUT in outputs:
            self.output = SAVED_MODEL_OUTPUT
        elif len(outputs) == 1:  # exports before the operating point: the softmax is the only output
            self.output = outputs[0]
        else:
            raise ModelError(f"cannot load model {path}: its 'serve' signature has no '{SAVED_MODEL_OUTPUT}' "
                             f"output (outputs: {', '.join(sorted(outputs))})")
        saved = getattr(loaded, "operating_point", None)
        self.operating_point = (float(saved[0].numpy()), float(saved[1].numpy())) if saved else None
        # the min side is the first of the `quality_gate` variables tumorclf export saves
        gate = getattr(loaded, "quality_gate", None)
        has_gate = gate is not None and set(GATE_OUTPUTS) <= set(outputs)
        self.min_side = int(gate[0].numpy()) if gated and has_gate else None

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.serve(images=self._tf.constant(batch))
        names = (self.output, *GATE_OUTPUTS) if self.min_side is not None else (self.output,)
        return {"probabilities" if name == self.output else name: outputs[name].numpy() for name in names}


class OnnxPredictor:
    """A ``model.onnx`` of `tumorclf export` as a `tumorclf.serving.predictors.Predictor` of raw [Healthy, Tumor]
    probabilities, run by onnxruntime on the CPU.

    `operating_point` is (temperature, threshold) from the model's metadata_props (None when absent); its
    `prob_tumor` and `decision` outputs apply them. `min_side` is the quality gate's (None without a gate in
    the graph, or with `gated` False): then the predictor also returns `quality_code` (never too_small) and
    `ood_score`, as `SavedModelPredictor`."""

    def __init__(self, path: Path, gated: bool = True):
        from tumorclf.serving.onnx_export import INPUT, require, session_errors

        (ort,) = require("onnxruntime")
        self.input = INPUT
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except session_errors(ort) as exc:
            raise ModelError(f"cannot load model {path}: {one_line(exc)}") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if self.input not in inputs or SAVED_MODEL_OUTPUT not in outputs:
            raise ModelError(f"cannot load model {path}: not a tumorclf ONNX export (needs input '{self.input}' and "
                             f"output '{SAVED_MODEL_OUTPUT}'; has {', '.join(inputs)} -> {', '.join(sorted(outputs))})")
        props = self.session.get_modelmeta().custom_metadata_map
        shape = inputs[self.input].shape
        self.size = shape[1] if isinstance(shape[1], int) else int(props["image_size"])
        self.operating_point = ((float(props["temperature"]), float(props["threshold"]))
                                if {"temperature", "threshold"} <= set(props) else None)
        has_gate = set(GATE_OUTPUTS) <= outputs and "min_side" in props
        self.min_side = int(props["min_side"]) if gated and has_gate else None
        self.outputs = [SAVED_MODEL_OUTPUT, *GATE_OUTPUTS] if self.min_side is not None else [SAVED_MODEL_OUTPUT]

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(self.outputs, {self.input: np.asarray(batch, dtype=np.float32)})
        return dict(zip(self.outputs, values))


def load_predictor(path: Path, gated: bool = True) -> tuple[Predictor, int]:
    """A `Predictor` and the image size: a `SavedModelPredictor` or an `OnnxPredictor` (a model.onnx of
    `tumorclf export`; both also tell the operating point saved in them) or a `KerasPredictor` with the gate
    beside the .keras file. All have `min_side`, None when they are not gated (`gated` False, or no gate
    with the model). An unreadable or unfitting gate is a `GateError`."""
    import tensorflow as tf

    from tumorclf.gate.quality_gate import Gate, GateError
    from tumorclf.models.factory import load_model

    path = Path(path)
    gate = Gate.load(path.parent) if gated and path.is_file() and path.suffix == ".keras" else None
    try:
        if path.is_dir() and (path / "saved_model.pb").is_file():
            predictor = SavedModelPredictor(tf.saved_model.load(str(path)), path, gated)
            return predictor, predictor.size
        if path.is_file() and path.suffix == ".keras":
            model = load_model(path)
            if gate is not None:
                gate.check(model, path.parent)
            return KerasPredictor(model, gate), int(model.input_shape[1])
        if path.is_file() and path.suffix == ".onnx":  # its gate and operating point are inside the graph
            predictor = OnnxPredictor(path, gated)
            return predictor, predictor.size
    except (ModelError, GateError):
        raise
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, zipfile.BadZipFile,
            tf.errors.OpError) as exc:
        raise ModelError(f"cannot load model {path}: {exc}") from None
    from tumorclf.serving.onnx_export import ONNX_FILE

    onnx = path / ONNX_FILE  # an export in ONNX alone (e.g. an ensemble's): the file, not its folder
    hint = f"; give {onnx}" if path.is_dir() and onnx.is_file() else ""
    raise ModelError(f"cannot load model {path}: neither a .keras file, a SavedModel folder nor a .onnx file{hint}")


def _card_number(card: Path, values: dict, key: str, default: float | None, valid) -> float:
    value = values.get(key, default)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not valid(float(value)):
        raise ModelError(f"{card} holds no valid {key} ({value!r}); re-export the model"
                         + (" or pass --threshold" if key == "threshold" else ""))
    return float(value)


class RecordedPoint(NamedTuple):
    """The operating point recorded with a model: temperature, threshold, the file they came from, and the
    sentence naming the point (`tumorclf.runs.points.NamedPoint.describe`; None where nothing names it)."""

    temperature: float
    threshold: float
    source: str
    description: str | None = None


def card_point(card: Path, values: dict, point_name: str | None) -> str | None:
    """The description of the point an export was made with (its card's ``operating_point_in_use``); a
    `point_name` other than that one is a `PointError`: an export carries the one point it was exported with."""
    from tumorclf.runs.points import PointError

    in_use = values.get("operating_point_in_use") if isinstance(values.get("operating_point_in_use"), dict) else {}
    if point_name is not None and point_name != in_use.get("name"):
        raise PointError(f"the export {card.parent} carries no operating point {point_name!r}; it has: "
                         f"{in_use.get('name') or 'none named (exported before named points)'} (export the run "
                         "again with --operating-point to change it)")
    return in_use.get("description")


def recorded_operating_point(model_path: Path, need_threshold: bool = True,
                             point_name: str | None = None) -> RecordedPoint | None:
    """The operating point recorded with a model: `model_card.json` beside it (a SavedModel folder, or the
    folder of its model.keras; a card without `temperature`, from before operating points, means 1), else the
    run folder of a best.keras (its chosen point, `tumorclf.runs.points.chosen`: `point_name`, else the one
    selected, else the validation one; its metrics.json threshold and temperature 1 for runs without an
    operating point); None when neither records them. Without `need_threshold` (--threshold given) a card's
    missing or invalid threshold is no error (`DEFAULT_THRESHOLD` stands in). A `point_name` the model does
    not have is a `PointError` listing the ones it has."""
    from tumorclf.runs.points import PointError, chosen

    model_path = Path(model_path)
    folder = model_path if model_path.is_dir() else model_path.parent
    card = folder / MODEL_CARD_FILE
    if card.is_file():
        try:
            values = json.loads(card.read_text())
            if not isinstance(values, dict):
                raise ValueError("not a JSON object")
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ModelError(f"{card} is unreadable ({one_line(exc)}); re-export the model or pass "
                             "--threshold") from None
        try:
            threshold = _card_number(card, values, "threshold", None, lambda v: 0 <= v <= 1)
        except ModelError:
            if need_threshold:
                raise
            threshold = DEFAULT_THRESHOLD
        temperature = _card_number(card, values, "temperature", 1.0, lambda v: np.isfinite(v) and v > 0)
        return RecordedPoint(temperature, threshold, str(card), card_point(card, values, point_name))
    run = RunDir(folder)
    if model_path.is_file() and model_path == run.best_model and run.metrics_file.is_file():
        try:
            point = chosen(run, point_name)
            source = (run.calibrated_points_file if point.provenance else run.operating_point_file
                      if run.operating_point() else run.metrics_file)
            return RecordedPoint(point.temperature, point.threshold, str(source), point.describe())
        except RunError as exc:
            raise ModelError(str(exc)) from None
    if point_name is not None:
        raise PointError(f"{model_path} has no named operating points (--operating-point needs a run's best.keras "
                         "or an export of tumorclf export)")
    return None


def trained_decoder(model_path: Path) -> str | None:
    """The decoder version the model was trained with, when its model card or run folder records it."""
    model_path = Path(model_path)
    folder = model_path if model_path.is_dir() else model_path.parent
    try:
        if (folder / MODEL_CARD_FILE).is_file():
            return json.loads((folder / MODEL_CARD_FILE).read_text()).get("decoder", {}).get("trained_with")
        run = RunDir(folder)
        if model_path == run.best_model and run.config_file.is_file():
            return run.record().decoder
    except (OSError, ValueError, AttributeError, UserError):
        return None
    return None


def _decode(path: Path, size: int, slices: str = "middle") -> tuple[list[tuple[int | None, np.ndarray, int]], str]:
    """(`decode_slices` of the chosen `slices`, error): an unreadable file is its row's error, not a stop."""
    try:
        return decode_slices(path, size, slices), ""
    except (DecodeError, OSError) as exc:
        return [], str(exc)


def _decoded_ahead(pool: ThreadPoolExecutor, decode: Callable, files: list[Path], ahead: int) -> Iterator:
    """`decode` of each file, in order, with at most `ahead` files decoding ahead of the one consumed: the
    workers stay busy and memory stays bounded however many slices a volume gives."""
    pending: deque = deque()
    for path in files:
        pending.append(pool.submit(decode, path))
        if len(pending) > ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def score_batch(predict: Predictor, pixels: np.ndarray, sides: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                temperature: float = 1.0, min_side: int | None = None) -> list[dict]:
    """The scores of decoded images (float32 0-255 RGB [N, S, S, 3], each image's short side (of its file, or of
    its slice) in `sides`): one dict per image with prob_tumor (calibrated with `temperature`,
    `apply_temperature`), prob_tumor_raw (the model's), predicted (at `threshold` on the calibrated P(Tumor);
    None where the gate refused the image) and, with `min_side` (a gated predictor), quality (too_small below
    `min_side`, else the predictor's quality code) and ood_score (else both None). `predict_files` and
    `tumorclf serve` both score with it."""
    from tumorclf.gate.quality_gate import OK, REASONS, reasons, with_size

    outputs = predict(np.asarray(pixels, dtype="float32"))
    raw = np.asarray(outputs["probabilities"])[:, 1]
    calibrated = apply_temperature(raw, temperature)
    scores = [{"prob_tumor": round(float(p), 6), "prob_tumor_raw": round(float(r), 6),
               "predicted": CLASS_NAMES[int(decision)], "quality": None, "ood_score": None}
              for p, r, decision in zip(calibrated, raw, decide(calibrated, threshold))]
    if min_side is not None:
        codes = with_size(outputs["quality_code"], np.asarray(sides), min_side)
        for score, quality, ood in zip(scores, reasons(codes), np.asarray(outputs["ood_score"])):
            score["quality"], score["ood_score"] = quality, round(float(ood), 4)
            if quality != REASONS[OK]:
                score["predicted"] = None
    return scores


def predict_files(predict: Predictor, size: int, files: list[Path], threshold: float = DEFAULT_THRESHOLD,
                  batch_size: int = 32, workers: int = 2, temperature: float = 1.0,
                  min_side: int | None = None, slices: str = "middle") -> Iterator[dict]:
    """One row per file (`COLUMNS`), or per chosen slice of a volume or multi-frame file (`slices`: middle, all
    or K; ``slice`` is its index, None for a 2-D image): path, the scores of `score_batch`, and error
    (unreadable files get an error, not a stop). Images are scored `batch_size` at a time whichever files
    they come from, rows come in file order. More files than one batch show progress (a bar on a terminal,
    log lines otherwise)."""
    progress = Progress(len(files), "predict", unit="files") if len(files) > batch_size else None
    rows: deque[dict] = deque()  # in file order, until their images are scored
    queue: list[tuple[dict, np.ndarray, int]] = []  # (row, pixels, short side) waiting for a batch

    def score(count: int) -> None:
        batch = queue[:count]
        del queue[:count]
        scores = score_batch(predict, np.stack([pixels for _, pixels, _ in batch]),
                             np.array([side for _, _, side in batch]), threshold, temperature, min_side)
        for (row, _, _), result in zip(batch, scores):
            row.update(result)

    def scored() -> Iterator[dict]:
        waiting = {id(row) for row, _, _ in queue}
        while rows and id(rows[0]) not in waiting:
            yield rows.popleft()

    def add_row(path: Path, index: int | None, error: str) -> dict:
        rows.append({"path": str(path), "prob_tumor": None, "predicted": None, "error": error,
                     "prob_tumor_raw": None, "quality": None, "ood_score": None, "slice": index})
        return rows[-1]

    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            decoded = _decoded_ahead(pool, lambda p: _decode(p, size, slices), files, 2 * max(1, workers))
            for path, (images, error) in zip(files, decoded):
                if error:
                    add_row(path, None, error)
                queue.extend((add_row(path, index, ""), pixels, side) for index, pixels, side in images)
                while len(queue) >= batch_size:
                    score(batch_size)
                yield from scored()
                if progress is not None:
                    progress.update()
            if queue:
                score(len(queue))
            yield from scored()
    finally:
        if progress is not None:
            progress.close()


def operating_point_for(model_path: Path, recorded: RecordedPoint | None, predictor: Predictor,
                        threshold_given: bool = False) -> tuple[float, float, str]:
    """The temperature and threshold predict applies: `recorded` (the model card or run folder), else the
    operating point saved in a SavedModel, else 1 and `DEFAULT_THRESHOLD`. A model card whose temperature is
    not the one its SavedModel applies is refused: predict's prob_tumor would differ from the SavedModel's."""
    saved = getattr(predictor, "operating_point", None)
    kind = "ONNX model" if Path(model_path).suffix == ".onnx" else "SavedModel"
    if recorded is None:
        if saved is not None:
            return saved[0], saved[1], f"the {kind} {model_path}"
        return 1.0, DEFAULT_THRESHOLD, "default"
    temperature, threshold, source, _ = recorded
    if saved is not None:
        if saved[0] != temperature:
            raise ModelError(f"{source} says temperature {temperature:g} but the {kind} {model_path} calibrates "
                             f"with {saved[0]:g}: re-export the run")
        if saved[1] != threshold and not threshold_given:
            log.warning("%s sets threshold %g; the %s's own decision output uses %g", source, threshold, kind,
                        saved[1])
    return temperature, threshold, source


@dataclass(frozen=True)
class OpenedModel:
    """A model ready to score as `tumorclf predict` scores: its predictor and image size, the gate's min side
    (None: ungated) and the operating point applied (temperature, threshold, where they came from)."""

    predictor: Predictor
    size: int
    min_side: int | None
    temperature: float
    threshold: float
    source: str
    point: str | None = None  # the sentence naming the operating point applied (None: --threshold, or unnamed)


def open_model(model_path: Path, threshold: float | None = None, gated: bool = True,
               point_name: str | None = None) -> OpenedModel:
    """Load a model as predict and `tumorclf serve` both do: the operating point recorded with it (`point_name`
    picks another of a run's; a bad model card or an unknown name stops here, before the model is loaded;
    `threshold` replaces the threshold only), a warning when it was trained with another decoder or has no
    quality gate, then the predictor. The point applied is logged by name."""
    model_path = Path(model_path)
    if not model_path.exists():
        raise ModelError(f"cannot load model {model_path}: not found")
    recorded = recorded_operating_point(model_path, need_threshold=threshold is None, point_name=point_name)
    trained_with = trained_decoder(model_path)
    if trained_with not in (None, DECODER_VERSION):
        log.warning("%s was trained with decoder version %s; this decodes with version %s (slightly different "
                    "pixels): retrain for exact agreement", model_path, trained_with, DECODER_VERSION)
    predictor, size = load_predictor(model_path, gated=gated)
    min_side = getattr(predictor, "min_side", None)
    if min_side is None and gated:
        log.warning("no quality gate %s %s (fit one with `tumorclf gate --run RUN`%s): predictions are not gated",
                    "in" if model_path.is_dir() else "beside", model_path,
                    ", then export again" if model_path.suffix != ".keras" else "")
    temperature, recorded_threshold, source = operating_point_for(model_path, recorded, predictor,
                                                                  threshold is not None)
    if threshold is None:
        described = recorded.description if recorded else None
        log.info("%s; temperature %g and threshold %g (from %s)", described or "operating point unnamed",
                 temperature, recorded_threshold, source)
        return OpenedModel(predictor, size, min_side, temperature, recorded_threshold, source, described)
    log.info("temperature %g (from %s), threshold %g (from --threshold)", temperature, source, threshold)
    return OpenedModel(predictor, size, min_side, temperature, threshold,
                       f"--threshold (temperature from {source})")
