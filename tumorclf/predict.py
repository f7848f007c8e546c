"""Batch prediction over image files and folders with a `.keras` model or an exported SavedModel.

Usage: ``python -m tumorclf.predict --model PATH INPUT... [--out preds.csv|preds.json] [--threshold T]``
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from tumorclf.artifacts import atomic_write_json, atomic_write_text, csv_text
from tumorclf.data import CLASS_NAMES, DecodeError, decode_image, expand_inputs

log = logging.getLogger(__name__)

Predictor = Callable[[np.ndarray], np.ndarray]


def load_predictor(path: Path) -> tuple[Predictor, int]:
    """A function from float32 0-255 RGB batches to [Healthy, Tumor] probabilities, and the image size."""
    import tensorflow as tf

    from tumorclf.models import load_model

    if path.is_dir() and (path / "saved_model.pb").is_file():
        serve = tf.saved_model.load(str(path)).signatures["serve"]
        size = int(serve.structured_input_signature[1]["images"].shape[1])
        output = next(iter(serve.structured_outputs))
        return (lambda batch: serve(images=tf.constant(batch))[output].numpy()), size
    if path.is_file() and path.suffix == ".keras":
        model = load_model(path)
        return (lambda batch: model.predict(batch, verbose=0)), int(model.input_shape[1])
    raise FileNotFoundError(f"{path} is neither a .keras file nor a SavedModel folder")


def predict_files(predict: Predictor, size: int, files: list[Path], threshold: float = 0.5,
                  batch_size: int = 32) -> Iterator[dict]:
    """One row per file: path, prob_tumor, predicted, error. Unreadable files get an error, not a stop."""
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        pixels, readable, rows = [], [], []
        for path in chunk:
            row = {"path": str(path), "prob_tumor": None, "predicted": None, "error": ""}
            try:
                pixels.append(decode_image(path, size))
                readable.append(row)
            except (DecodeError, OSError) as exc:
                row["error"] = str(exc)
            rows.append(row)
        if pixels:
            probs = predict(np.stack(pixels).astype("float32"))
            for row, p in zip(readable, probs[:, 1]):
                row["prob_tumor"] = round(float(p), 6)
                row["predicted"] = CLASS_NAMES[int(p >= threshold)]
        done = start + len(chunk)
        if len(files) > batch_size:
            log.info("predicted %d/%d files", done, len(files))
        yield from rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tumorclf.predict", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, type=Path, help="a .keras file or an exported SavedModel folder")
    p.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders (searched recursively)")
    p.add_argument("--out", type=Path, help="preds.csv or preds.json (default: CSV on stdout)")
    p.add_argument("--threshold", type=float, default=0.5, help="P(Tumor) at or above which Tumor is predicted")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not 0 <= args.threshold <= 1 or args.batch_size < 1:
        print("tumorclf.predict: error: --threshold must be in [0, 1] and --batch-size positive", file=sys.stderr)
        return 2
    if args.out and args.out.suffix not in (".csv", ".json"):
        print(f"tumorclf.predict: error: --out must end in .csv or .json, got {args.out}", file=sys.stderr)
        return 2
    missing = [str(i) for i in args.inputs if not i.exists()]
    if missing:
        print(f"tumorclf.predict: error: inputs not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        predictor, size = load_predictor(args.model)
    except (FileNotFoundError, OSError, ValueError) as exc:
        print(f"tumorclf.predict: error: cannot load model {args.model}: {exc}", file=sys.stderr)
        return 2
    rows = list(predict_files(predictor, size, expand_inputs(args.inputs), args.threshold, args.batch_size))
    failed = sum(1 for r in rows if r["error"])
    columns = ["path", "prob_tumor", "predicted", "error"]
    if args.out and args.out.suffix == ".json":
        atomic_write_json(args.out, rows)
    else:
        text = csv_text(columns, ([r[c] for c in columns] for r in rows))
        atomic_write_text(args.out, text) if args.out else sys.stdout.write(text)
    log.info("%d files, %d predicted, %d unreadable%s", len(rows), len(rows) - failed, failed,
             f" -> {args.out}" if args.out else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
