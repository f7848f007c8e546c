"""How much of a run's test accuracy rests on copies of training images.

Usage: ``python -m tumorclf.leakage RUN_DIR [RUN_DIR ...] [--out FILE.csv]``

Each test image of a finished run is put in one of three kinds, from the run's `split.csv`: it has a
byte-identical copy in training, a near-duplicate (same duplicate group, `--near-duplicate-bits`) in
training, or neither (clean). Accuracy is reported per kind. On the grouped split every test image is
clean by construction; on the paper split a large gap between leaked and clean images is memorisation.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from tumorclf.artifacts import atomic_write_text, csv_text

KINDS = ("byte-identical in train", "near-duplicate in train", "clean")
COLUMNS = ["run", "kind", "images", "correct", "accuracy"]


def leakage_rows(run_dir: Path) -> list[dict]:
    """One row per kind of test image (and `leaked`, the first two together) with its accuracy."""
    for name in ("split.csv", "test_predictions.csv"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir} has no {name} (not a finished run)")
    with open(run_dir / "split.csv") as handle:
        rows = list(csv.DictReader(handle))
    with open(run_dir / "test_predictions.csv") as handle:
        predictions = {row["path"]: row for row in csv.DictReader(handle)}
    missing = [row["path"] for row in rows if row["split"] == "test" and row["path"] not in predictions]
    if missing:
        raise ValueError(f"{run_dir}: {len(missing)} test images of split.csv have no prediction, e.g. {missing[0]}")
    train_sha = {row["sha256"] for row in rows if row["split"] == "train"}
    train_groups = {row["group"] for row in rows if row["split"] == "train"}
    counts = {kind: [0, 0] for kind in (*KINDS, "leaked")}
    for row in rows:
        if row["split"] != "test":
            continue
        prediction = predictions[row["path"]]
        correct = (float(prediction["prob_tumor"]) >= 0.5) == (int(prediction["label"]) == 1)
        kind = KINDS[0] if row["sha256"] in train_sha else KINDS[1] if row["group"] in train_groups else KINDS[2]
        for key in (kind, "leaked") if kind != KINDS[2] else (kind,):
            counts[key][0] += correct
            counts[key][1] += 1
    return [{"run": run_dir.name, "kind": kind, "images": n, "correct": ok,
             "accuracy": round(ok / n, 4) if n else ""} for kind, (ok, n) in counts.items()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tumorclf.leakage", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished run folders")
    p.add_argument("--out", type=Path, help="also write the rows as CSV here")
    args = p.parse_args(argv)
    try:
        rows = [row for run in args.runs for row in leakage_rows(run)]
    except (FileNotFoundError, ValueError) as exc:
        print(f"tumorclf.leakage: error: {exc}", file=sys.stderr)
        return 2
    for row in rows:
        print(f"{row['run']:<45} {row['kind']:<24} {row['correct']:>4}/{row['images']:<4} {row['accuracy']}")
    if args.out:
        atomic_write_text(args.out, csv_text(COLUMNS, ([row[c] for c in COLUMNS] for row in rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
