"""`tumorclf predict`: P(tumour) of image files and folders with a `.keras` model or an exported SavedModel.

Usage: ``tumorclf predict --model PATH INPUT... [--out preds.csv|preds.json] [--threshold T] [--batch-size N]``
(``python -m tumorclf.predict`` is an alias.)

Files are decoded by `tumorclf.decoder.decode_image`, the decoder training uses, and scored in batches
(a SavedModel through the ``probabilities`` output of its ``serve`` signature). A file that cannot be
decoded gets an error in its row and the others are still scored.

Each row: ``path, prob_tumor, predicted, error, prob_tumor_raw``. ``prob_tumor`` is the **calibrated**
P(Tumor), sigmoid(logit(P) / T) (`tumorclf.calibration.apply_temperature`), ``prob_tumor_raw`` the
model's softmax P(Tumor), and
``predicted`` is Tumor where the calibrated P(Tumor) is at or above the threshold
(`tumorclf.evaluation.decide`). The temperature T and the threshold are the ones recorded with the model
(`recorded_operating_point`): the ``temperature`` and ``threshold`` of ``model_card.json`` beside it
(written by `tumorclf export`), else, for a SavedModel, the operating point saved inside it, else the
run folder's (`RunDir.temperature()`, `RunDir.threshold()`) for a run's ``best.keras``, else T = 1 and
``tumorclf.rundir.DEFAULT_THRESHOLD``. T = 1 means uncalibrated: ``prob_tumor`` equals
``prob_tumor_raw``. ``--threshold`` replaces the threshold only. For an export, these rows equal the
SavedModel's own ``prob_tumor`` and ``decision`` outputs.
"""

from __future__ import annotations

import json
import logging
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from tumorclf.artifacts import atomic_write_json, atomic_write_text, csv_text
from tumorclf.calibration import apply_temperature
from tumorclf.data import CLASS_NAMES, expand_inputs
from tumorclf.decoder import DECODER_VERSION, DecodeError, decode_image
from tumorclf.errors import UsageError, UserError
from tumorclf.evaluation import decide
from tumorclf.progress import Progress
from tumorclf.rundir import DEFAULT_THRESHOLD, RunDir, RunError

log = logging.getLogger(__name__)

Predictor = Callable[[np.ndarray], np.ndarray]
MODEL_CARD_FILE = "model_card.json"  # written by tumorclf.export beside the SavedModel and its model.keras
# prob_tumor: calibrated P(Tumor); prob_tumor_raw: the model's softmax P(Tumor) (last, so older readers of
# path,prob_tumor,predicted,error keep their columns)
COLUMNS = ["path", "prob_tumor", "predicted", "error", "prob_tumor_raw"]
SAVED_MODEL_OUTPUT = "probabilities"  # the raw softmax output of an export's signatures


class ModelError(UserError, ValueError):
    """The model path is neither a loadable .keras file nor a SavedModel folder, or its card is unreadable."""


class SavedModelPredictor:
    """An exported SavedModel's `serve` signature as a predictor of raw [Healthy, Tumor] probabilities.

    `operating_point` is (temperature, threshold) as saved inside the SavedModel by `tumorclf export`
    (None for SavedModels without them); its `prob_tumor` and `decision` outputs apply them."""

    def __init__(self, loaded, path: Path):
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

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.serve(images=self._tf.constant(batch))[self.output].numpy()


def load_predictor(path: Path) -> tuple[Predictor, int]:
    """A function from float32 0-255 RGB batches to raw [Healthy, Tumor] probabilities, and the image size.
    For a SavedModel it is a `SavedModelPredictor` (which also tells the operating point saved in it)."""
    import tensorflow as tf

    from tumorclf.models import load_model

    path = Path(path)
    try:
        if path.is_dir() and (path / "saved_model.pb").is_file():
            predictor = SavedModelPredictor(tf.saved_model.load(str(path)), path)
            return predictor, predictor.size
        if path.is_file() and path.suffix == ".keras":
            model = load_model(path)
            return (lambda batch: model.predict(batch, verbose=0)), int(model.input_shape[1])
    except ModelError:
        raise
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, zipfile.BadZipFile,
            tf.errors.OpError) as exc:
        raise ModelError(f"cannot load model {path}: {exc}") from None
    raise ModelError(f"cannot load model {path}: neither a .keras file nor a SavedModel folder")


def _card_number(card: Path, values: dict, key: str, default: float | None, valid) -> float:
    value = values.get(key, default)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not valid(float(value)):
        raise ModelError(f"{card} holds no valid {key} ({value!r}); re-export the model"
                         + (" or pass --threshold" if key == "threshold" else ""))
    return float(value)


def recorded_operating_point(model_path: Path, need_threshold: bool = True) -> tuple[float, float, str] | None:
    """(temperature, threshold, where they came from) recorded with a model: `model_card.json` beside it (a
    SavedModel folder, or the folder of its model.keras; a card without `temperature`, from before
    operating points, means 1), else the run folder of a best.keras (its operating_point.json, else its
    metrics.json threshold and temperature 1); None when neither records them. Without `need_threshold`
    (--threshold given) a card's missing or invalid threshold is no error (`DEFAULT_THRESHOLD` stands in)."""
    model_path = Path(model_path)
    folder = model_path if model_path.is_dir() else model_path.parent
    card = folder / MODEL_CARD_FILE
    if card.is_file():
        try:
            values = json.loads(card.read_text())
            if not isinstance(values, dict):
                raise ValueError("not a JSON object")
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ModelError(f"{card} is unreadable ({' '.join(str(exc).split())}); re-export the model or pass "
                             "--threshold") from None
        try:
            threshold = _card_number(card, values, "threshold", None, lambda v: 0 <= v <= 1)
        except ModelError:
            if need_threshold:
                raise
            threshold = DEFAULT_THRESHOLD
        temperature = _card_number(card, values, "temperature", 1.0, lambda v: np.isfinite(v) and v > 0)
        return temperature, threshold, str(card)
    run = RunDir(folder)
    if model_path.is_file() and model_path == run.best_model and run.metrics_file.is_file():
        try:
            point = run.operating_point()
            return run.temperature(), run.threshold(), str(run.operating_point_file if point else run.metrics_file)
        except RunError as exc:
            raise ModelError(str(exc)) from None
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


def _decode(path: Path, size: int) -> tuple[np.ndarray | None, str]:
    try:
        return decode_image(path, size), ""
    except (DecodeError, OSError) as exc:
        return None, str(exc)


def predict_files(predict: Predictor, size: int, files: list[Path], threshold: float = DEFAULT_THRESHOLD,
                  batch_size: int = 32, workers: int = 2, temperature: float = 1.0) -> Iterator[dict]:
    """One row per file: path, prob_tumor (calibrated with `temperature`, `apply_temperature`), predicted (at
    `threshold` on the calibrated P(Tumor)), error, prob_tumor_raw (the model's). Unreadable files get an
    error, not a stop. More files than one batch show progress (a bar on a terminal, log lines otherwise)."""
    progress = Progress(len(files), "predict", unit="files") if len(files) > batch_size else None
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for start in range(0, len(files), batch_size):
                chunk = files[start : start + batch_size]
                pixels, readable, rows = [], [], []
                for path, (image, error) in zip(chunk, pool.map(lambda p: _decode(p, size), chunk)):
                    row = {"path": str(path), "prob_tumor": None, "predicted": None, "error": error,
                           "prob_tumor_raw": None}
                    if image is not None:
                        pixels.append(image)
                        readable.append(row)
                    rows.append(row)
                if pixels:
                    raw = np.asarray(predict(np.stack(pixels).astype("float32")))[:, 1]
                    calibrated = apply_temperature(raw, temperature)
                    for row, p, r, decision in zip(readable, calibrated, raw, decide(calibrated, threshold)):
                        row["prob_tumor"] = round(float(p), 6)
                        row["prob_tumor_raw"] = round(float(r), 6)
                        row["predicted"] = CLASS_NAMES[int(decision)]
                if progress is not None:
                    progress.update(len(chunk))
                yield from rows
    finally:
        if progress is not None:
            progress.close()


def operating_point_for(model_path: Path, recorded: tuple[float, float, str] | None, predictor: Predictor,
                        threshold_given: bool = False) -> tuple[float, float, str]:
    """The temperature and threshold predict applies: `recorded` (the model card or run folder), else the
    operating point saved in a SavedModel, else 1 and `DEFAULT_THRESHOLD`. A model card whose temperature is
    not the one its SavedModel applies is refused: predict's prob_tumor would differ from the SavedModel's."""
    saved = getattr(predictor, "operating_point", None)
    if recorded is None:
        if saved is not None:
            return saved[0], saved[1], f"the SavedModel {model_path}"
        return 1.0, DEFAULT_THRESHOLD, "default"
    temperature, threshold, source = recorded
    if saved is not None:
        if saved[0] != temperature:
            raise ModelError(f"{source} says temperature {temperature:g} but the SavedModel {model_path} calibrates "
                             f"with {saved[0]:g}: re-export the run")
        if saved[1] != threshold and not threshold_given:
            log.warning("%s sets threshold %g; the SavedModel's own decision output uses %g", source, threshold,
                        saved[1])
    return temperature, threshold, source


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, type=Path, help="a .keras file or an exported SavedModel folder")
    p.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders (searched recursively)")
    p.add_argument("--out", type=Path, help="preds.csv or preds.json (default: CSV on stdout)")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="calibrated P(Tumor) at or above which Tumor is predicted; replaces the threshold only, "
                        "the temperature stays the model's (default: the model card's threshold, or the run's "
                        f"for a best.keras, else {DEFAULT_THRESHOLD:g})")
    p.add_argument("--batch-size", type=int, default=32, metavar="N")


def run(args) -> int:
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise UsageError(f"predict: --threshold must be in [0, 1], got {args.threshold}")
    if args.batch_size < 1:
        raise UsageError(f"predict: --batch-size must be a positive integer, got {args.batch_size}")
    if args.out and args.out.suffix not in (".csv", ".json"):
        raise UsageError(f"predict: --out must end in .csv or .json, got {args.out}")
    missing = [str(i) for i in args.inputs if not i.exists()]
    if missing:
        raise UsageError(f"predict: inputs not found: {', '.join(missing)}")
    if not args.model.exists():
        raise ModelError(f"cannot load model {args.model}: not found")
    # a bad card stops here, before the model is loaded
    recorded = recorded_operating_point(args.model, need_threshold=args.threshold is None)
    trained_with = trained_decoder(args.model)
    if trained_with not in (None, DECODER_VERSION):
        log.warning("%s was trained with decoder version %s; predict decodes with version %s (slightly different "
                    "pixels): retrain for exact agreement", args.model, trained_with, DECODER_VERSION)
    predictor, size = load_predictor(args.model)
    temperature, threshold, source = operating_point_for(args.model, recorded, predictor, args.threshold is not None)
    if args.threshold is None:
        log.info("temperature %g and threshold %g (from %s)", temperature, threshold, source)
    else:
        threshold = args.threshold
        log.info("temperature %g (from %s), threshold %g (from --threshold)", temperature, source, threshold)
    rows = list(predict_files(predictor, size, expand_inputs(args.inputs), threshold, args.batch_size,
                              temperature=temperature))
    failed = sum(1 for r in rows if r["error"])
    if args.out and args.out.suffix == ".json":
        atomic_write_json(args.out, rows)
    else:
        text = csv_text(COLUMNS, ([r[c] for c in COLUMNS] for r in rows))
        atomic_write_text(args.out, text) if args.out else sys.stdout.write(text)
    log.info("%d files, %d predicted, %d unreadable, temperature %g, threshold %g%s", len(rows), len(rows) - failed,
             failed, temperature, threshold, f" -> {args.out}" if args.out else "")
    return 0


if __name__ == "__main__":
    from tumorclf.cli import alias

    raise SystemExit(alias("tumorclf.predict"))
