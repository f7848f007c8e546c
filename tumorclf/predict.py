"""`tumorclf predict`: P(tumour) of image files and folders with a `.keras` model or an exported SavedModel.

Usage: ``tumorclf predict --model PATH INPUT... [--out preds.csv|preds.json] [--threshold T] [--batch-size N]``
(``python -m tumorclf.predict`` is an alias.)

Files are decoded by `tumorclf.decoder.decode_image`, the decoder training uses, and scored in batches
(a SavedModel through its ``serve`` signature). A file that cannot be decoded gets an error in its row
and the others are still scored. The default threshold is the one recorded with the model: the
``threshold`` of ``model_card.json`` beside it (written by `tumorclf export`), else the operating
threshold of the run folder holding a ``best.keras``, else ``tumorclf.rundir.DEFAULT_THRESHOLD``.
P(Tumor) at or above the threshold predicts Tumor (`tumorclf.evaluation.decide`).
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
from tumorclf.data import CLASS_NAMES, expand_inputs
from tumorclf.decoder import DECODER_VERSION, DecodeError, decode_image
from tumorclf.errors import UsageError, UserError
from tumorclf.evaluation import decide
from tumorclf.progress import Progress
from tumorclf.rundir import DEFAULT_THRESHOLD, RunDir

log = logging.getLogger(__name__)

Predictor = Callable[[np.ndarray], np.ndarray]
MODEL_CARD_FILE = "model_card.json"  # written by tumorclf.export beside the SavedModel and its model.keras
COLUMNS = ["path", "prob_tumor", "predicted", "error"]


class ModelError(UserError, ValueError):
    """The model path is neither a loadable .keras file nor a SavedModel folder, or its card is unreadable."""


def load_predictor(path: Path) -> tuple[Predictor, int]:
    """A function from float32 0-255 RGB batches to [Healthy, Tumor] probabilities, and the image size."""
    import tensorflow as tf

    from tumorclf.models import load_model

    path = Path(path)
    try:
        if path.is_dir() and (path / "saved_model.pb").is_file():
            signatures = tf.saved_model.load(str(path)).signatures
            if "serve" not in signatures:
                raise ModelError(f"cannot load model {path}: the SavedModel has no 'serve' signature")
            serve = signatures["serve"]
            size = int(serve.structured_input_signature[1]["images"].shape[1])
            output = next(iter(serve.structured_outputs))
            return (lambda batch: serve(images=tf.constant(batch))[output].numpy()), size
        if path.is_file() and path.suffix == ".keras":
            model = load_model(path)
            return (lambda batch: model.predict(batch, verbose=0)), int(model.input_shape[1])
    except ModelError:
        raise
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, tf.errors.OpError) as exc:
        raise ModelError(f"cannot load model {path}: {exc}") from None
    raise ModelError(f"cannot load model {path}: neither a .keras file nor a SavedModel folder")


def default_threshold(model_path: Path) -> tuple[float, str]:
    """The threshold recorded with a model, and where it came from: `model_card.json` beside it (a
    SavedModel folder, or the folder of its model.keras), else the run folder of a best.keras, else
    `DEFAULT_THRESHOLD`."""
    model_path = Path(model_path)
    folder = model_path if model_path.is_dir() else model_path.parent
    card = folder / MODEL_CARD_FILE
    if card.is_file():
        try:
            threshold = float(json.loads(card.read_text())["threshold"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{card} holds no valid threshold ({exc}); pass --threshold") from None
        return threshold, str(card)
    run = RunDir(folder)
    if model_path.is_file() and model_path == run.best_model and run.metrics_file.is_file():
        return run.threshold(), str(run.metrics_file)
    return DEFAULT_THRESHOLD, "default"


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
                  batch_size: int = 32, workers: int = 2) -> Iterator[dict]:
    """One row per file: path, prob_tumor, predicted, error. Unreadable files get an error, not a stop.
    More files than one batch show progress (a bar on a terminal, log lines otherwise)."""
    progress = Progress(len(files), "predict", unit="files") if len(files) > batch_size else None
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for start in range(0, len(files), batch_size):
                chunk = files[start : start + batch_size]
                pixels, readable, rows = [], [], []
                for path, (image, error) in zip(chunk, pool.map(lambda p: _decode(p, size), chunk)):
                    row = {"path": str(path), "prob_tumor": None, "predicted": None, "error": error}
                    if image is not None:
                        pixels.append(image)
                        readable.append(row)
                    rows.append(row)
                if pixels:
                    probs = predict(np.stack(pixels).astype("float32"))
                    prob_tumor = np.asarray(probs)[:, 1]
                    for row, p, decision in zip(readable, prob_tumor, decide(prob_tumor, threshold)):
                        row["prob_tumor"] = round(float(p), 6)
                        row["predicted"] = CLASS_NAMES[int(decision)]
                if progress is not None:
                    progress.update(len(chunk))
                yield from rows
    finally:
        if progress is not None:
            progress.close()


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, type=Path, help="a .keras file or an exported SavedModel folder")
    p.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders (searched recursively)")
    p.add_argument("--out", type=Path, help="preds.csv or preds.json (default: CSV on stdout)")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="P(Tumor) at or above which Tumor is predicted (default: the model card's threshold, "
                        f"or the run's for a best.keras, else {DEFAULT_THRESHOLD:g})")
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
    if args.threshold is None:
        threshold, source = default_threshold(args.model)
        log.info("threshold %g (from %s)", threshold, source)
    else:
        threshold = args.threshold
    trained_with = trained_decoder(args.model)
    if trained_with not in (None, DECODER_VERSION):
        log.warning("%s was trained with decoder version %s; predict decodes with version %s (slightly different "
                    "pixels): retrain for exact agreement", args.model, trained_with, DECODER_VERSION)
    predictor, size = load_predictor(args.model)
    rows = list(predict_files(predictor, size, expand_inputs(args.inputs), threshold, args.batch_size))
    failed = sum(1 for r in rows if r["error"])
    if args.out and args.out.suffix == ".json":
        atomic_write_json(args.out, rows)
    else:
        text = csv_text(COLUMNS, ([r[c] for c in COLUMNS] for r in rows))
        atomic_write_text(args.out, text) if args.out else sys.stdout.write(text)
    log.info("%d files, %d predicted, %d unreadable, threshold %g%s", len(rows), len(rows) - failed, failed,
             threshold, f" -> {args.out}" if args.out else "")
    return 0


if __name__ == "__main__":
    from tumorclf.cli import alias

    raise SystemExit(alias("tumorclf.predict"))
