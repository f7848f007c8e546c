"""`tumorclf evaluate`: score a finished run on its own test split, or on other folders of class folders.

Usage: ``tumorclf evaluate --run RUN [--data DIR ...] [--out DIR] [--overwrite] [--threshold T] [--batch-size N]``

Without ``--data`` the run's own test split is scored again (the files `split.csv` assigns to test,
under the run's data folder), with the decoder training used and the run's operating threshold: the
result equals the test metrics in the run's `metrics.json`. With ``--data``, each folder holds two
class folders, named as for training (or ``--classes HEALTHY TUMOR``); each folder is reported on its
own and all of them pooled. Files that cannot be read or decoded are skipped and counted.

Writes, atomically, into ``--out`` (default ``RUN/evaluation``; never a run folder, and an earlier
evaluation there is replaced only with ``--overwrite``):

- ``evaluation.json``: ``{"run", "threshold", "decoder", "datasets": {NAME: {...}, "pooled": {...}}}``,
  each dataset with its folder, n, skipped and the metrics of `dataset_metrics`;
- ``predictions.csv``: ``dataset,path,label,prob_tumor,predicted`` (path relative to the dataset's folder);
- ``skipped.csv``: ``dataset,path,reason``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tumorclf import data
from tumorclf.artifacts import atomic_write_json, atomic_write_text, csv_text
from tumorclf.decoder import DECODER_VERSION
from tumorclf.errors import UsageError
from tumorclf.evaluation import balanced_accuracy, brier_score, classification_metrics, decide, specificity
from tumorclf.pipeline import predict_images
from tumorclf.rundir import RunDir, RunError, RunExistsError

log = logging.getLogger(__name__)

TEST_SPLIT = "test"  # the dataset name of the run's own test split
POOLED = "pooled"  # the dataset name of all datasets together
EVALUATION_FILE, PREDICTIONS_FILE, SKIPPED_FILE = "evaluation.json", "predictions.csv", "skipped.csv"
PREDICTION_COLUMNS = ["dataset", "path", "label", "prob_tumor", "predicted"]
TABLE_COLUMNS = [("n", "n", "d"), ("skipped", "skipped", "d"), ("accuracy", "acc", ".4f"),
                 ("balanced_accuracy", "bal_acc", ".4f"), ("sensitivity", "sens", ".4f"),
                 ("specificity", "spec", ".4f"), ("precision", "prec", ".4f"), ("f1", "f1", ".4f"),
                 ("auc", "auc", ".4f"), ("brier", "brier", ".4f")]


@dataclass
class Scored:
    """One dataset and the run's predictions on it: file i is `dataset.paths[i]` with `probs[i]`."""

    name: str
    dataset: data.Dataset  # decoded images, labels, SHA-256 and the skipped files
    probs: np.ndarray  # (n, 2) softmax outputs: P(Healthy), P(Tumor)

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.labels

    @property
    def prob_tumor(self) -> np.ndarray:
        return self.probs[:, 1]


def dataset_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict:
    """`classification_metrics` (accuracy, per-class accuracy, precision, recall, F1, AUC, confusion matrix,
    n, loss) plus sensitivity (= recall), specificity, balanced accuracy and the Brier score of P(Tumor)."""
    metrics = classification_metrics(labels, probs, threshold)
    predicted = decide(np.asarray(probs)[:, 1], threshold)  # the decisions classification_metrics took
    metrics.update(sensitivity=metrics["recall"], specificity=specificity(labels, predicted),
                   balanced_accuracy=balanced_accuracy(labels, predicted), brier=brier_score(labels, probs[:, 1]))
    return metrics


def own_test_split(run: RunDir) -> data.Dataset:
    """The run's test files (split.csv) under its data folder, decoded as in training."""
    cfg = run.config()
    rows = [row for row in run.split_rows() if row["split"] == "test"]
    if not rows:
        raise RunError(f"{run.split_file} assigns no file to the test split")
    root = run.data_root()
    if not root.is_dir():
        raise RunError(f"the data folder of {run} is gone: {root}; pass --data to score other folders")
    folders = data.find_class_folders(root, cfg.classes)
    dataset = data.load_files(root, folders, [(root / row["path"], int(row["label"])) for row in rows],
                              cfg.image_size, cfg.cache_dir)
    if not dataset.paths:
        raise RunError(f"none of the {len(rows)} test files of {run} can be read under {root}, e.g. "
                       f"{dataset.skipped[0][0]}: {dataset.skipped[0][1]}")
    recorded = {row["path"]: row.get("sha256") for row in rows}
    changed = sum(1 for path, sha in zip(dataset.paths, dataset.sha256) if recorded[path] not in (None, "", sha))
    if changed or dataset.skipped:
        log.warning("%d test files changed and %d unreadable since %s was trained: the result will differ from "
                    "its metrics.json", changed, len(dataset.skipped), run.name)
    return dataset


def external(folder: Path, image_size: int, classes: tuple[str, str] | None, cache_dir) -> data.Dataset:
    """A folder of two class folders (training's naming rules), decoded as in training."""
    return data.load_dataset(folder, image_size, classes, cache_dir)


def dataset_names(folders: list[Path]) -> list[str]:
    """A distinct name for each folder: its own name, with -2, -3... on repeats (and never "pooled")."""
    names: list[str] = []
    for folder in folders:
        base = folder.resolve().name or "data"
        name, k = base, 1
        while name in names or name == POOLED:
            k += 1
            name = f"{base}-{k}"
        names.append(name)
    return names


def evaluate(run: RunDir, data_dirs: list[Path] | None = None, threshold: float | None = None,
             batch_size: int | None = None, classes: tuple[str, str] | None = None) -> tuple[dict, list[Scored]]:
    """Score `run` on its test split (no `data_dirs`) or on each folder of `data_dirs`; returns the report
    (the content of evaluation.json) and the scored datasets."""
    run.require_finished()
    record = run.record()
    cfg = record.config
    threshold = run.threshold() if threshold is None else threshold
    batch_size = batch_size or cfg.batch_size
    if record.decoder != DECODER_VERSION:
        log.warning("%s was trained with decoder version %s, this tumorclf decodes with version %s: "
                    "results may differ from its metrics.json", run.name, record.decoder, DECODER_VERSION)
    if data_dirs:
        datasets = dict(zip(dataset_names(data_dirs),
                            (external(folder, cfg.image_size, classes, cfg.cache_dir) for folder in data_dirs)))
    else:
        datasets = {TEST_SPLIT: own_test_split(run)}
    model = run.load_model()
    scored = [Scored(name, dataset, predict_images(model, dataset.images(), dataset.labels, batch_size,
                                                  f"predicting {name}"))
              for name, dataset in datasets.items()]
    report = {"run": str(run.path), "threshold": threshold, "decoder": DECODER_VERSION, "datasets": {}}
    for item in scored:
        report["datasets"][item.name] = {"folder": str(item.dataset.root), "skipped": len(item.dataset.skipped),
                                         **dataset_metrics(item.labels, item.probs, threshold)}
    report["datasets"][POOLED] = {
        "folder": None, "skipped": sum(len(item.dataset.skipped) for item in scored),
        **dataset_metrics(np.concatenate([item.labels for item in scored]),
                          np.concatenate([item.probs for item in scored]), threshold)}
    return report, scored


def json_safe(value):
    """`value` with NaN and infinities as None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_outputs(out: Path, report: dict, scored: list[Scored]) -> None:
    """predictions.csv, skipped.csv, then evaluation.json (last, so its presence means complete)."""
    threshold = report["threshold"]
    predictions = ((item.name, path, data.CLASS_NAMES[label], round(float(p), 6), data.CLASS_NAMES[int(decision)])
                   for item in scored
                   for path, label, p, decision in zip(item.dataset.paths, item.labels, item.prob_tumor,
                                                       decide(item.prob_tumor, threshold)))
    atomic_write_text(out / PREDICTIONS_FILE, csv_text(PREDICTION_COLUMNS, predictions))
    skipped = ((item.name, path, reason) for item in scored for path, reason in item.dataset.skipped)
    atomic_write_text(out / SKIPPED_FILE, csv_text(["dataset", "path", "reason"], skipped))
    atomic_write_json(out / EVALUATION_FILE, json_safe(report))


def table(report: dict) -> str:
    """The datasets of a report as a fixed-width text table, one row each."""
    width = max(len("dataset"), *(len(name) for name in report["datasets"]))
    lines = [f"{'dataset':<{width}}" + "".join(f" {title:>7}" for _, title, _ in TABLE_COLUMNS)]
    for name, metrics in report["datasets"].items():
        cells = []
        for key, _, fmt in TABLE_COLUMNS:
            value = metrics.get(key)
            cells.append(f" {'-':>7}" if value is None or (isinstance(value, float) and math.isnan(value))
                         else f" {value:>7{fmt}}")
        lines.append(f"{name:<{width}}" + "".join(cells))
    return "\n".join(lines)


def add_arguments(p) -> None:
    p.add_argument("--run", required=True, type=Path, help="a finished run folder")
    p.add_argument("--data", nargs="+", type=Path, metavar="DIR",
                   help="folders of two class folders to score, each on its own and pooled "
                        "(default: the run's own test split)")
    p.add_argument("--classes", nargs=2, metavar=("HEALTHY", "TUMOR"),
                   help="with --data: the class folder names, where the folder names do not tell")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="folder for evaluation.json, predictions.csv and skipped.csv (default: RUN/evaluation)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in --out")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="P(Tumor) at or above which Tumor is predicted (default: the run's operating threshold)")
    p.add_argument("--batch-size", type=int, metavar="N", help="prediction batch size (default: the run's)")


def check_out(out: Path, run: RunDir, overwrite: bool) -> None:
    """Refuse an `--out` that is a run folder (its skipped.csv would be replaced) or not a folder, and one
    holding an earlier evaluation unless `overwrite`."""
    if RunDir(out).config_file.is_file() or out.resolve() == run.path.resolve():
        raise UsageError(f"evaluate: --out must not be a run folder ({out} is one: its skipped.csv would be "
                         "replaced); choose another --out")
    if out.exists() and not out.is_dir():
        raise UsageError(f"evaluate: --out {out} exists and is not a folder")
    earlier = [name for name in (EVALUATION_FILE, PREDICTIONS_FILE, SKIPPED_FILE) if (out / name).exists()]
    if earlier and not overwrite:
        raise RunExistsError(f"evaluate: {out} already holds an evaluation ({', '.join(earlier)}); pass --overwrite "
                             "to replace it or --out to choose another folder")


def run(args) -> int:
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise UsageError(f"evaluate: --threshold must be in [0, 1], got {args.threshold}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"evaluate: --batch-size must be a positive integer, got {args.batch_size}")
    if args.classes and not args.data:
        raise UsageError("evaluate: --classes names the class folders of --data folders; give --data too")
    run_dir = RunDir(args.run)
    out = args.out or run_dir.evaluation_dir
    check_out(out, run_dir, args.overwrite)
    report, scored = evaluate(run_dir, args.data, args.threshold, args.batch_size,
                              tuple(args.classes) if args.classes else None)
    (out / EVALUATION_FILE).unlink(missing_ok=True)  # replaced: absent until the new outputs are complete
    write_outputs(out, report, scored)
    print(f"{run_dir.name} at threshold {report['threshold']:g}")
    print(table(report))
    print(out / EVALUATION_FILE)
    return 0


if __name__ == "__main__":
    from tumorclf.cli import alias

    raise SystemExit(alias("tumorclf.evaluate"))
