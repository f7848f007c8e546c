"""docs/serving.md: whether a shipped model answers what `tumorclf predict` answers (the SavedModel's
`serve_bytes`, the ONNX graph) and how fast each scoring path is, from the parity and timing records."""

from __future__ import annotations

from tumorclf.documentation.tables.cells import Results, Table, number

SERVE_PARITY = "serve_parity.json"
SERVE_PARITY_COMMAND = ("python experiments/serve_parity.py "
                        "--run experiments/runs/vgg16_imagenet_grouped_224px_seed42_fast "
                        "--data ../shared/data/brain_tumor_dataset --every 15 "
                        "--out experiments/results/serve_parity.json")
EXPORT = ("tumorclf export --run experiments/runs/vgg16_imagenet_grouped_224px_seed42_fast_percentile "
          "--format savedmodel onnx")
ONNX_PARITY = "onnx/parity.json"
ONNX_PARITY_COMMAND = (f"{EXPORT} --out EXPORT && python experiments/onnx_parity.py --export EXPORT "
                       "--data ../shared/data/brain_tumor_dataset --every 15 "
                       "--out experiments/results/onnx/parity.json")
SPEED = "onnx/inference_speed.json"
TRAINED = "mixed bfloat16, as trained"  # the run of both records trained under mixed_bfloat16
SPEED_COMMAND = f"{EXPORT} --measure 256 --out EXPORT"
ONNX_AGAINST = (("onnx_vs_savedmodel", "the SavedModel, `serve` signature", TRAINED),
                ("onnx_vs_keras", "`model.keras`, as `tumorclf predict` scores it", TRAINED),
                ("onnx_vs_keras_float32", "a float32 copy of `model.keras`", "float32"))
SPEED_PATHS = (("keras_predict_img_per_s", "in-process Keras, as `tumorclf predict` scores a `.keras` file",
                TRAINED),
               ("saved_model_img_per_s", "exported SavedModel, `serve` signature", TRAINED),
               ("onnx_runtime_img_per_s", "`model.onnx` in ONNX Runtime (CPU provider)", "float32"))


def small(value) -> str:
    """A gap between two probabilities, which spans orders of magnitude: `6.5e-07`."""
    return f"{float(value):.1e}"


def serve_bytes_parity(results: Results) -> Table:
    """Encoded files through the SavedModel's own decoder against `predict`: the check that serving decodes alike."""
    record = results.json(SERVE_PARITY)
    refused = ", ".join(f"{count} {kind}" for kind, count in record["refused_by_format"].items()) or "none"
    return Table(["files sent", "scored by `serve_bytes`", "refused (format)", "max abs. difference",
                  "mean abs. difference", "decisions that differ"],
                 [[record["files"], record["accepted"], refused, small(record["max_abs_dp"]),
                   small(record["mean_abs_dp"]), record["decisions_flipped"]]],
                 [results.source(SERVE_PARITY)], SERVE_PARITY_COMMAND,
                 "Calibrated P(tumour) of the exported `serve_bytes` signature against `tumorclf predict` on the "
                 f"same files; both apply the run's temperature {number(record['temperature'], 2)} and threshold "
                 f"{number(record['threshold'])}.")


def onnx_parity(results: Results) -> Table:
    """The ONNX graph against the other scoring paths on the same decoded pixels: what converting it changed."""
    record = results.json(ONNX_PARITY)
    rows = [[label, precision, small(record["compared"][key]["max_abs_dp"]),
             small(record["compared"][key]["mean_abs_dp"]), record["compared"][key]["decisions_differ"]]
            for key, label, precision in ONNX_AGAINST]
    return Table(["`model.onnx` against", "computes in", "max abs. difference", "mean abs. difference",
                  "decisions that differ"], rows, [results.source(ONNX_PARITY)], ONNX_PARITY_COMMAND,
                 f"Raw P(Tumor) on every {record['every']}th file of the dataset ({record['files']} images), decided "
                 f"at the export's temperature {number(record['temperature'], 2)} and threshold "
                 f"{number(record['threshold'])}; the Keras model's layers compute in "
                 f"{' or '.join(record['keras_compute_dtypes'])}.")


def inference_speed(results: Results) -> Table:
    """Images/s of each scoring path of one export, timed side by side: which format to ship for speed."""
    record = results.json(SPEED)
    rows = [[label, precision, number(record[key], 1)] for key, label, precision in SPEED_PATHS]
    return Table(["scoring path (VGG16 with its quality gate; decoding excluded)", "computes in", "images/s"], rows,
                 [results.source(SPEED)], SPEED_COMMAND,
                 f"The same {record['images']} random images of {record['image_size']} px, batches of "
                 f"{record['batch_size']}, one warm-up batch per path, then the paths in turn batch by batch; "
                 f"{record['cpu_count']} CPU cores; the timing is the model card's `inference_speed`.")


TABLES = {"serving-bytes-parity": serve_bytes_parity, "serving-onnx-parity": onnx_parity,
          "serving-speed": inference_speed}
