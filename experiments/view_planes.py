"""How much of each source looks like an axial/coronal slice (left-right symmetric) or a sagittal one (not), and
how the leave-source-out model does on each kind. docs/robustness.md shows the result.

    python experiments/view_planes.py --data ../shared/data/brain_tumor_dataset \
        --sources ../shared/data/provenance.csv \
        --predictions RUN_EVALUATION/predictions.csv [...] --out experiments/results/robust/view_planes.json

Symmetry: the Pearson correlation of the foreground-cropped grey image (`framing.ForegroundCrop`, 128 px)
with its left-right mirror. Axial and coronal slices of a head are close to mirror-symmetric; sagittal ones
are not. `--cut` is the symmetry below which a slice counts as sagittal-like (a heuristic, not a label; a
large lesion also breaks the symmetry of an axial slice). Decisions are the evaluation's (its operating
point); AUC is computed from `prob_tumor_raw`, which predictions.csv rounds to 6 decimals, so it can differ
from evaluation.json's in the third decimal where scores saturate.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from tumorclf.utils.files import atomic_write_json
from tumorclf.metrics.bootstrap import point_metrics
from tumorclf.data.dataset import load_dataset
from tumorclf.transforms.framing import ForegroundCrop


def symmetry(images: np.ndarray, batch: int = 256) -> np.ndarray:
    crop = ForegroundCrop()
    out = []
    for start in range(0, len(images), batch):
        gray = np.asarray(crop(images[start:start + batch].astype("float32"))).mean(-1)
        flat, mirror = gray.reshape(len(gray), -1), gray[:, :, ::-1].reshape(len(gray), -1)
        flat, mirror = flat - flat.mean(1, keepdims=True), mirror - mirror.mean(1, keepdims=True)
        denominator = np.sqrt((flat ** 2).sum(1) * (mirror ** 2).sum(1))
        out.append(np.where(denominator > 0, (flat * mirror).sum(1) / np.maximum(denominator, 1e-9), 1.0))
    return np.concatenate(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--sources", required=True)
    p.add_argument("--predictions", nargs="*", default=[], help="evaluation predictions.csv files")
    p.add_argument("--cut", type=float, default=0.6)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args()
    data = load_dataset(args.data, 128)
    with open(args.sources, newline="") as f:
        source_of = {row["path"]: row["source"] for row in csv.DictReader(f)}
    score = symmetry(data.images())
    by_path = dict(zip(data.paths, score))
    report = {"cut": args.cut, "sources": {}, "predictions": {}}
    for source in sorted(set(source_of.values())):
        for label, name in enumerate(("Healthy", "Tumor")):
            rows = [i for i, path in enumerate(data.paths) if source_of.get(path) == source and data.labels[i] == label]
            if rows:
                s = score[rows]
                report["sources"][f"{source}/{name}"] = {
                    "n": len(rows), "sagittal_like": float(np.mean(s < args.cut)),
                    "symmetry_quartiles": [round(float(q), 3) for q in np.quantile(s, [0.25, 0.5, 0.75])]}
    for path in args.predictions:
        with open(path, newline="") as f:
            rows = [row for row in csv.DictReader(f)]
        labels = np.array([row["label"] == "Tumor" for row in rows], int)
        prob = np.array([float(row["prob_tumor_raw"]) for row in rows])  # AUC on the raw scores, as evaluate
        decided = np.array([row["predicted"] == "Tumor" for row in rows])
        kind = np.array([by_path[row["path"]] < args.cut for row in rows])
        entry = {}
        for name, mask in (("all", np.ones(len(rows), bool)), ("symmetric", ~kind), ("sagittal_like", kind)):
            m = point_metrics(labels[mask], decided[mask].astype(float), 0.5)
            m["auc"] = point_metrics(labels[mask], prob[mask], 0.5)["auc"]
            entry[name] = {"n": int(mask.sum()), "tumor": int(labels[mask].sum()),
                           **{k: round(float(m[k]), 4) for k in ("balanced_accuracy", "sensitivity", "specificity",
                                                                 "auc")}}
        report["predictions"][path] = entry
    atomic_write_json(args.out, report)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
