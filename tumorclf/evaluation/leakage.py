"""How much of a run's test accuracy rests on copies of training images (`leakage_rows`; the command is
`tumorclf leakage`).

Each test image of a finished run is put in one of three kinds, from the run's `split.csv`: it has a
byte-identical copy in training, a near-duplicate (same duplicate group, `--near-duplicate-bits`) in
training, or neither (clean). Accuracy is reported per kind. On the grouped split every test image is
clean by construction; on the paper split a large gap between leaked and clean images is memorisation.
"""

from __future__ import annotations

from pathlib import Path

from tumorclf.utils.files import atomic_write_text, csv_text
from tumorclf.metrics.classification import decide
from tumorclf.runs.folder import RunDir, RunError

KINDS = ("byte-identical in train", "near-duplicate in train", "clean")
COLUMNS = ["run", "kind", "images", "correct", "accuracy"]


def leakage_rows(run_dir: Path | RunDir) -> list[dict]:
    """One row per kind of test image (and `leaked`, the first two together) with its accuracy at the
    run's operating threshold: the `predicted` class test_predictions.csv records (the decisions behind
    metrics.json), or, in runs older than that column, the recorded P(Tumor) (rounded to 6 decimals) at
    the threshold."""
    run = RunDir(run_dir) if not isinstance(run_dir, RunDir) else run_dir
    rows = run.split_rows()
    predictions = {row["path"]: row for row in run.test_predictions()}
    threshold = run.metrics_threshold()  # the decisions behind metrics.json, on raw P(Tumor)
    missing = [row["path"] for row in rows if row["split"] == "test" and row["path"] not in predictions]
    if missing:
        raise RunError(f"{run}: {len(missing)} test images of split.csv have no prediction, e.g. {missing[0]}")
    train_sha = {row["sha256"] for row in rows if row["split"] == "train"}
    train_groups = {row["group"] for row in rows if row["split"] == "train"}
    counts = {kind: [0, 0] for kind in (*KINDS, "leaked")}
    for row in rows:
        if row["split"] != "test":
            continue
        prediction = predictions[row["path"]]
        try:
            correct = predicted_class(prediction, threshold) == int(prediction["label"])
        except ValueError as exc:
            raise RunError(f"{run.predictions_file} is corrupt: {exc}") from None
        kind = KINDS[0] if row["sha256"] in train_sha else KINDS[1] if row["group"] in train_groups else KINDS[2]
        for key in (kind, "leaked") if kind != KINDS[2] else (kind,):
            counts[key][0] += correct
            counts[key][1] += 1
    return [{"run": run.name, "kind": kind, "images": n, "correct": ok,
             "accuracy": round(ok / n, 4) if n else ""} for kind, (ok, n) in counts.items()]


def predicted_class(prediction: dict[str, str], threshold: float) -> int:
    """A test_predictions.csv row's predicted class (0 Healthy, 1 Tumor): its `predicted` column, else
    (older runs) `decide` on its rounded probability."""
    recorded = (prediction.get("predicted") or "").strip()
    if recorded:
        if recorded not in ("0", "1"):
            raise ValueError(f"predicted {recorded!r} of {prediction['path']} is not 0 or 1")
        return int(recorded)
    return int(decide(float(prediction["prob_tumor"]), threshold))


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows of `leakage_rows` (of one run or several) as a CSV file with the `COLUMNS`, written atomically."""
    atomic_write_text(path, csv_text(COLUMNS, ([row[column] for column in COLUMNS] for row in rows)))
