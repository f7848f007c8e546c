"""ONNX parity on real files: an export's `model.onnx` against its SavedModel, its `model.keras` as trained
and a float32 copy of it.

    python experiments/onnx_parity.py --export EXPORT --data ../shared/data/brain_tumor_dataset \
        --every 15 --out experiments/results/onnx/parity.json

EXPORT is a folder written by `tumorclf export --format savedmodel onnx`. Every `--every`-th file of the
dataset is decoded once (`tumorclf.data.decoder.decode_image`) and scored by the four paths; the record holds
max/mean |dP(Tumor)| (raw softmax) between them and the decisions that differ at the export's operating
point. The ONNX graph computes in float32 (`tumorclf.serving.onnx_export.export_onnx`); a run trained under
mixed_bfloat16 computes in bfloat16 in Keras and in the SavedModel, so those differ by bfloat16's rounding.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tensorflow as tf

from tumorclf.utils.files import atomic_write_json
from tumorclf.metrics.calibration import apply_temperature
from tumorclf.data.dataset import files_below
from tumorclf.data.decoder import DecodeError, decode_image
from tumorclf.metrics.classification import decide
from tumorclf.models.factory import load_model, to_float32

BATCH = 32


def batched(score, images: np.ndarray) -> np.ndarray:
    """P(Tumor) of `images` by `score` (a batch of float32 pixels to [N, 2] probabilities), batch by batch."""
    return np.concatenate([np.asarray(score(images[i : i + BATCH]))[:, 1] for i in range(0, len(images), BATCH)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--every", type=int, default=15)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    card = json.loads((args.export / "model_card.json").read_text())
    temperature, threshold = card["temperature"], card["threshold"]
    keras_model = load_model(args.export / "model.keras")
    size = int(keras_model.input_shape[1])
    images, names = [], []
    for path in files_below(args.data)[:: args.every]:
        try:
            images.append(decode_image(path, size))
            names.append(str(path.relative_to(args.data)))
        except (DecodeError, OSError):
            continue
    pixels = np.stack(images).astype("float32")
    serve = tf.saved_model.load(str(args.export)).signatures["serve"]
    session = ort.InferenceSession(str(args.export / "model.onnx"), providers=["CPUExecutionProvider"])
    float32_copy = to_float32(keras_model)
    probabilities = {
        "onnx": batched(lambda x: session.run(["probabilities"], {"images": x})[0], pixels),
        "savedmodel": batched(lambda x: serve(images=tf.constant(x))["probabilities"].numpy(), pixels),
        "keras": batched(lambda x: keras_model.predict(x, verbose=0), pixels),
        "keras_float32": batched(lambda x: float32_copy.predict(x, verbose=0), pixels),
    }
    decisions = {name: decide(apply_temperature(p, temperature), threshold) for name, p in probabilities.items()}
    compared = {}
    for other in ("savedmodel", "keras", "keras_float32"):
        gap = np.abs(probabilities["onnx"] - probabilities[other])
        compared[f"onnx_vs_{other}"] = {"max_abs_dp": float(gap.max()), "mean_abs_dp": float(gap.mean()),
                                        "decisions_differ": int(np.sum(decisions["onnx"] != decisions[other]))}
    record = {"export": str(args.export), "files": len(names), "every": args.every,
              "keras_compute_dtypes": sorted({layer.dtype_policy.compute_dtype for layer in keras_model.layers}),
              "temperature": temperature, "threshold": threshold, "compared": compared}
    atomic_write_json(args.out, record)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
