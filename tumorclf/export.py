"""Export a run's best model as a TensorFlow SavedModel with two serving signatures and a model card.

Usage: ``python -m tumorclf.export --run RUN_DIR [--out saved_models/NAME] [--measure N]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tumorclf.artifacts import RunExistsError, atomic_write_json, atomic_write_text, versions
from tumorclf.models import load_model

log = logging.getLogger(__name__)


def decode_bytes_in_graph(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP strings (batch) to float32 0-255 RGB at the model's size, in the graph."""

    def one(data: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        return tf.image.resize(tf.cast(image, tf.float32), (image_size, image_size), method="bilinear")

    return tf.map_fn(one, encoded, fn_output_signature=tf.TensorSpec((image_size, image_size, 3), tf.float32))


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
        fn=lambda image_bytes: model(decode_bytes_in_graph(image_bytes, size), training=False),
        input_signature=[tf.TensorSpec((None,), tf.string, name="image_bytes")],
    )
    archive.write_out(str(path), verbose=False)


def model_card(run_dir: Path, threshold: float) -> dict:
    """What a user of the export needs to know, from the run's config and metrics."""
    config = json.loads((run_dir / "config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cfg, resolved = config["config"], config["resolved"]
    return {
        "model": cfg["model"],
        "weights_origin": resolved["weights_origin"],
        "input": f"{cfg['image_size']}x{cfg['image_size']} RGB, float 0-255 (preprocessing is inside the model)",
        "output": "softmax probabilities [Healthy, Tumor]",
        "classes": resolved["class_names"],
        "data": resolved["data"],
        "split_protocol": cfg["split"],
        "split": config["split"],
        "recipe": {k: cfg[k] for k in ("epochs", "batch_size", "learning_rate", "momentum", "fine_tune", "seed")},
        "best_epoch": metrics.get("best_epoch"),
        "test_metrics": {k: metrics[k] for k in ("accuracy", "precision", "recall", "f1", "auc", "test_loss",
                                                 "confusion_matrix", "per_class_accuracy")},
        "threshold": threshold,
        "signatures": {"serve": "images float32 [N, S, S, 3] 0-255 RGB",
                       "serve_bytes": "image_bytes string [N] JPEG/PNG/GIF/BMP, decoded and resized in the graph"},
        "source_run": str(run_dir.resolve()),
        "versions": versions(),
    }


def card_markdown(card: dict) -> str:
    m = card["test_metrics"]
    return "\n".join([
        f"# Model card: {card['model']}",
        "",
        f"- Task: brain MRI slice, {card['classes'][0]} (0) vs {card['classes'][1]} (1)",
        f"- Weights origin: {card['weights_origin']}",
        f"- Input: {card['input']}",
        f"- Data: {card['data']}, split protocol `{card['split_protocol']}`",
        f"- Recipe: {card['recipe']}",
        f"- Decision threshold on P(Tumor): {card['threshold']}",
        f"- Test: accuracy {m['accuracy']:.4f}, precision {m['precision']:.4f}, recall {m['recall']:.4f}, "
        f"F1 {m['f1']:.4f}, AUC {m['auc']:.4f}, confusion matrix {m['confusion_matrix']}",
        f"- Signatures: {card['signatures']}",
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


def export_run(run_dir: Path, out: Path | None = None, threshold: float = 0.5, overwrite: bool = False,
               measure: int = 0) -> Path:
    """Export `run_dir/best.keras` to `out` (default `saved_models/<run name>`); returns the folder."""
    run_dir = Path(run_dir)
    best = run_dir / "best.keras"
    if not best.is_file() or not (run_dir / "metrics.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a finished run (best.keras and metrics.json needed)")
    out = Path(out) if out else Path("saved_models") / run_dir.name
    if out.exists():
        if not overwrite:
            raise RunExistsError(f"{out} already exists; pass --overwrite to replace it or --out to choose another")
        shutil.rmtree(out)
    model = load_model(best)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    export_saved_model(model, staging)
    shutil.copy2(best, staging / "model.keras")
    card = model_card(run_dir, threshold)
    if measure:
        card["inference_speed"] = measure_inference(model, staging, measure)
    atomic_write_json(staging / "model_card.json", card)
    atomic_write_text(staging / "MODEL_CARD.md", card_markdown(card))
    os.replace(staging, out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tumorclf.export", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, type=Path, help="a finished run folder")
    p.add_argument("--out", type=Path, help="destination (default saved_models/<run name>)")
    p.add_argument("--threshold", type=float, default=0.5, help="decision threshold recorded in the model card")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--measure", type=int, default=0, metavar="N",
                   help="time the SavedModel against in-process predict on N images; result in the card")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = export_run(args.run, args.out, args.threshold, args.overwrite, args.measure)
    except (FileNotFoundError, RunExistsError) as exc:
        print(f"tumorclf.export: error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
