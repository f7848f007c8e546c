"""`tumorclf export`: a run's best model as a TensorFlow SavedModel with two serving signatures and a model card.

Usage: ``tumorclf export --run RUN [--out saved_models/NAME] [--threshold T] [--overwrite] [--measure N]``
(``python -m tumorclf.export`` is an alias.)

Signatures:

- ``serve``: ``images`` float32 [N, S, S, 3], 0-255 RGB already decoded and resized (for example by
  `tumorclf.decoder.decode_image`); preprocessing is inside the model.
- ``serve_bytes``: ``image_bytes`` string [N] of encoded files, decoded and resized in the graph by
  `tumorclf.decoder.decode_bytes_graph`: the same pixels as `tumorclf predict` for the formats in
  `decoder.GRAPH_FORMATS`. Other formats (TIFF, WebP, 16-bit PNG, CMYK JPEG, paletted or compressed BMP)
  make the call fail with an InvalidArgumentError naming the format; decode those with `tumorclf predict`.

The folder also holds ``model.keras``, ``model_card.json`` (read by `tumorclf predict` for its default
threshold) and ``MODEL_CARD.md``. The default decision threshold is the run's operating threshold.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tumorclf import decoder
from tumorclf.artifacts import atomic_write_json, atomic_write_text, versions
from tumorclf.errors import UsageError
from tumorclf.predict import MODEL_CARD_FILE  # the name predict reads its default threshold from
from tumorclf.rundir import RunDir, RunExistsError

log = logging.getLogger(__name__)


def export_saved_model(model: keras.Model, path: Path) -> None:
    """Write `model` as a SavedModel with signatures `serve` (0-255 RGB) and `serve_bytes` (encoded images)."""
    size = int(model.input_shape[1])
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serve",
        fn=lambda images: model(images, training=False),
        input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32, name="images")],
    )
    archive.add_endpoint(
        name="serve_bytes",
        fn=lambda image_bytes: model(decoder.decode_bytes_graph(image_bytes, size), training=False),
        input_signature=[tf.TensorSpec((None,), tf.string, name="image_bytes")],
    )
    archive.write_out(str(path), verbose=False)


def model_card(run: RunDir, threshold: float) -> dict:
    """What a user of the export needs to know, from the run's record and metrics."""
    record, metrics = run.record(), run.metrics()
    cfg, resolved = record.config, record.resolved
    size = cfg.image_size
    trained_decoder = record.decoder
    return {
        "model": cfg.model,
        "weights_origin": resolved.get("weights_origin"),
        "input": f"{size}x{size} RGB, float 0-255 (preprocessing is inside the model)",
        "output": "softmax probabilities [Healthy, Tumor]",
        "classes": resolved.get("class_names"),
        "data": resolved.get("data"),
        "split_protocol": cfg.split,
        "split": record.split,
        "recipe": {k: getattr(cfg, k) for k in ("recipe", "epochs", "batch_size", "learning_rate", "momentum",
                                                "fine_tune", "seed")},
        "best_epoch": metrics.get("best_epoch"),
        "test_metrics": {k: metrics.get(k) for k in ("accuracy", "precision", "recall", "f1", "auc", "test_loss",
                                                     "confusion_matrix", "per_class_accuracy")},
        "threshold": threshold,
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
        "signatures": {"serve": f"images float32 [N, {size}, {size}, 3] 0-255 RGB, decoded and resized by "
                                "tumorclf.decoder.decode_image",
                       "serve_bytes": f"image_bytes string [N] ({decoder.GRAPH_FORMATS}), decoded and resized "
                                      "in the graph exactly as tumorclf predict does"},
        "source_run": str(run.path.resolve()),
        "versions": versions(),
    }


def card_markdown(card: dict) -> str:
    m = card["test_metrics"]

    def number(key: str) -> str:
        return "n/a" if m.get(key) is None else f"{m[key]:.4f}"

    dec = card["decoder"]
    return "\n".join([
        f"# Model card: {card['model']}",
        "",
        f"- Task: brain MRI slice, {card['classes'][0]} (0) vs {card['classes'][1]} (1)",
        f"- Weights origin: {card['weights_origin']}",
        f"- Input: {card['input']}",
        f"- Data: {card['data']}, split protocol `{card['split_protocol']}`",
        f"- Recipe: {card['recipe']}",
        f"- Decision threshold on P(Tumor): {card['threshold']}",
        f"- Test: accuracy {number('accuracy')}, precision {number('precision')}, recall {number('recall')}, "
        f"F1 {number('f1')}, AUC {number('auc')}, confusion matrix {m.get('confusion_matrix')}",
        f"- Decoder: version {dec['version']} (the run was trained with version {dec['trained_with']}): "
        f"{dec['steps']}",
        f"- serve: {card['signatures']['serve']}",
        f"- serve_bytes: {card['signatures']['serve_bytes']}. Refused with an error: {dec['serve_bytes_refuses']}. "
        f"Known difference: {dec['serve_bytes_known_differences']}.",
        f"- Versions: {card['versions']}",
        "",
    ])


def measure_inference(model: keras.Model, saved_model_dir: Path, n: int, batch_size: int = 32) -> dict:
    """Images/s of the exported `serve` signature against in-process `model.predict`, same images."""
    size = int(model.input_shape[1])
    images = np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)).astype("float32")
    serve = tf.saved_model.load(str(saved_model_dir)).signatures["serve"]
    batches = [tf.constant(images[i : i + batch_size]) for i in range(0, n, batch_size)]
    model.predict(images[:batch_size], verbose=0)
    serve(images=batches[0])  # warm-up both
    start = time.perf_counter()
    model.predict(images, batch_size=batch_size, verbose=0)
    keras_s = time.perf_counter() - start
    start = time.perf_counter()
    for batch in batches:
        serve(images=batch)
    saved_s = time.perf_counter() - start
    return {"images": n, "batch_size": batch_size, "keras_predict_img_per_s": round(n / keras_s, 2),
            "saved_model_img_per_s": round(n / saved_s, 2)}


def export_run(run_dir: str | Path | RunDir, out: str | Path | None = None, threshold: float | None = None,
               overwrite: bool = False, measure: int = 0) -> Path:
    """Export the run's best model to `out` (default `saved_models/<run name>`); returns the folder.

    `threshold` (default: the run's operating threshold) is recorded in the model card."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    run.require_finished()
    threshold = run.threshold() if threshold is None else float(threshold)
    if not 0 <= threshold <= 1:
        raise UsageError(f"export: --threshold must be in [0, 1], got {threshold}")
    out = Path(out) if out else Path("saved_models") / run.name
    check_destination(run, out, overwrite)
    card = model_card(run, threshold)  # reads every run file before the slow part
    if card["decoder"]["trained_with"] != decoder.DECODER_VERSION:
        log.warning("%s was trained with decoder version %s; this export and tumorclf predict decode with "
                    "version %s (slightly different pixels)", run, card["decoder"]["trained_with"],
                    decoder.DECODER_VERSION)
    model = run.load_model()
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        export_saved_model(model, staging)
        shutil.copy2(run.best_model, staging / "model.keras")
        if measure:
            card["inference_speed"] = measure_inference(model, staging, measure)
        atomic_write_json(staging / MODEL_CARD_FILE, card)
        atomic_write_text(staging / "MODEL_CARD.md", card_markdown(card))
        replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


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


def add_arguments(p) -> None:
    p.add_argument("--run", required=True, type=Path, help="a finished run folder")
    p.add_argument("--out", type=Path, help="destination (default saved_models/<run name>)")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="decision threshold on P(Tumor) recorded in the model card (default: the run's operating "
                        "threshold)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier export at --out (never a run folder or other files)")
    p.add_argument("--measure", type=int, default=0, metavar="N",
                   help="time the SavedModel against in-process predict on N images; result in the card")


def run(args) -> int:
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise UsageError(f"export: --threshold must be in [0, 1], got {args.threshold}")
    if args.measure < 0:
        raise UsageError(f"export: --measure must be 0 or a positive number of images, got {args.measure}")
    out = export_run(args.run, args.out, args.threshold, args.overwrite, args.measure)
    print(out)
    return 0


if __name__ == "__main__":
    from tumorclf.cli import alias

    raise SystemExit(alias("tumorclf.export"))
