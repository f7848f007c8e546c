"""Serving parity on real files: the exported `serve_bytes` signature against `tumorclf predict`.

    python experiments/serve_parity.py --run RUN --data ../shared/data/brain_tumor_dataset \
        --every 15 --out experiments/results/serve_parity.json

Exports RUN to a temporary folder, sends every `--every`-th file of the dataset to `serve_bytes` one by
one, runs `tumorclf predict` on the same files, and records max/mean |dP(tumour)|, decisions flipped at
the run's threshold, and the files the signature refused, by format.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import tensorflow as tf
from PIL import Image

from tumorclf.utils.files import atomic_write_json
from tumorclf.runs.folder import RunDir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--every", type=int, default=15)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    run = RunDir(args.run).require_finished()
    threshold, temperature = run.threshold(), run.temperature()
    files = sorted(f for f in args.data.rglob("*") if f.is_file())[:: args.every]
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "export"
        subprocess.run(["tumorclf", "export", "--run", str(run), "--out", str(export)], check=True)
        preds = Path(tmp) / "predictions.csv"
        subprocess.run(["tumorclf", "predict", "--model-file", str(run.best_model), "--inputs", *map(str, files),
                        "--out", tmp], check=True)
        with open(preds) as handle:
            predicted = {row["path"]: (float(row["prob_tumor"]), row["predicted"])
                         for row in csv.DictReader(handle) if not row["error"]}
        serve = tf.saved_model.load(str(export)).signatures["serve_bytes"]
        deltas, flips, refused = [], 0, collections.Counter()
        for path in files:
            try:
                out = serve(image_bytes=tf.constant([path.read_bytes()]))  # calibrated P(Tumor) and decision
                served, decision = float(out["prob_tumor"].numpy()[0]), int(out["decision"].numpy()[0])
            except tf.errors.InvalidArgumentError:
                with Image.open(path) as image:
                    refused[f"{image.format}/{image.mode}"] += 1
                continue
            expected, expected_class = predicted[str(path)]
            deltas.append(abs(served - expected))
            flips += ("Tumor" if decision else "Healthy") != expected_class
    result = {"run": str(run), "files": len(files), "accepted": len(deltas), "refused_by_format": dict(refused),
              "max_abs_dp": max(deltas), "mean_abs_dp": sum(deltas) / len(deltas), "threshold": threshold, "temperature": temperature,
              "decisions_flipped": int(flips), "command": " ".join(["python", *sys.argv])}
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
