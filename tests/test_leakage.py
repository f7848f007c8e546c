"""Test accuracy split by whether a test image has a copy in training."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from tumorclf.cli.main import main
from tumorclf.evaluation.leakage import leakage_rows


def one_error_line(capsys) -> str:
    """The command's stderr, which must be exactly one `tumorclf: error: ...` line."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tumorclf: error: "), lines
    return lines[0]


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_kinds_and_accuracies(tmp_path: Path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    write_csv(run / "split.csv", ["path", "label", "split", "group", "sha256"], [
        ["a.png", 1, "train", 0, "s1"], ["b.png", 0, "train", 1, "s2"],
        ["a_copy.png", 1, "test", 0, "s1"],  # byte-identical to a training image
        ["b_near.png", 0, "test", 1, "s3"],  # same group as a training image
        ["c.png", 1, "test", 2, "s4"], ["d.png", 0, "test", 3, "s5"], ["e.png", 0, "val", 3, "s6"]])
    write_csv(run / "test_predictions.csv", ["path", "label", "prob_tumor"], [
        ["a_copy.png", 1, 0.9], ["b_near.png", 0, 0.7], ["c.png", 1, 0.6], ["d.png", 0, 0.1]])
    rows = {row["kind"]: (row["correct"], row["images"]) for row in leakage_rows(run)}
    assert rows == {"byte-identical in train": (1, 1), "near-duplicate in train": (0, 1), "clean": (2, 2),
                    "leaked": (1, 2)}
    assert main(["leakage", "--run", str(run), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "clean" in captured.out and not captured.err
    assert (tmp_path / "out" / "leakage.csv").read_text().count("\n") == 5


def test_earlier_spellings_still_work_with_a_notice(tmp_path: Path, capsys):
    """Run folders without --run, and --out naming the CSV file itself."""
    run = tmp_path / "run"
    run.mkdir()
    write_csv(run / "split.csv", ["path", "label", "split", "group", "sha256"], [
        ["a.png", 1, "train", 0, "s1"], ["c.png", 1, "test", 2, "s4"], ["d.png", 0, "test", 3, "s5"]])
    write_csv(run / "test_predictions.csv", ["path", "label", "prob_tumor"], [["c.png", 1, 0.6], ["d.png", 0, 0.1]])
    assert main(["leakage", str(run)]) == 0
    captured = capsys.readouterr()
    assert "clean" in captured.out
    assert captured.err.startswith("tumorclf: deprecated:") and f"use --run {run}" in captured.err

    assert main(["leakage", "--run", str(run), "--out", str(tmp_path / "leak.csv")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("tumorclf: deprecated:") and "--out names the output folder" in err
    assert (tmp_path / "leak.csv").read_text().count("\n") == 5 and not (tmp_path / "leak.csv").is_dir()


def test_recorded_decisions_are_used_not_the_rounded_probabilities(tmp_path: Path, capsys):
    """P(Tumor) = float32(0.7) < 0.7 is Healthy at threshold 0.7 in metrics.json, but its 6-decimal rounding
    in test_predictions.csv reads 0.7: the `predicted` column keeps the run's decision."""
    p = np.float32(0.7)
    assert float(p) < 0.7 and round(float(p), 6) == 0.7
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"threshold": 0.7}))
    write_csv(run / "split.csv", ["path", "label", "split", "group", "sha256"], [
        ["a.png", 0, "train", 0, "s1"], ["a_copy.png", 0, "test", 0, "s1"], ["c.png", 1, "test", 2, "s4"]])
    write_csv(run / "test_predictions.csv", ["path", "label", "prob_tumor", "predicted"], [
        ["a_copy.png", 0, round(float(p), 6), 0], ["c.png", 1, 0.9, 1]])
    rows = {row["kind"]: (row["correct"], row["images"]) for row in leakage_rows(run)}
    assert rows["byte-identical in train"] == (1, 1) and rows["clean"] == (1, 1)

    # an older run, without the column: the rounded probability at the threshold
    write_csv(run / "test_predictions.csv", ["path", "label", "prob_tumor"], [
        ["a_copy.png", 0, round(float(p), 6)], ["c.png", 1, 0.9]])
    rows = {row["kind"]: (row["correct"], row["images"]) for row in leakage_rows(run)}
    assert rows["byte-identical in train"] == (0, 1) and rows["clean"] == (1, 1)

    write_csv(run / "test_predictions.csv", ["path", "label", "prob_tumor", "predicted"], [
        ["a_copy.png", 0, 0.1, "Tumor"], ["c.png", 1, 0.9, 1]])
    assert main(["leakage", "--run", str(run)]) == 2
    line = one_error_line(capsys)
    assert "test_predictions.csv is corrupt" in line and "'Tumor' of a_copy.png is not 0 or 1" in line


def test_unfinished_run_is_refused(tmp_path: Path, capsys):
    assert main(["leakage", "--run", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert str(tmp_path) in line and "split.csv" in line
    assert main(["leakage", "--run", str(tmp_path / "missing")]) == 2
    assert "run folder not found" in one_error_line(capsys)


def test_predictions_that_do_not_match_the_split_are_refused(tmp_path: Path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    write_csv(run / "split.csv", ["path", "label", "split", "group", "sha256"], [["a.png", 1, "test", 0, "s1"]])
    write_csv(run / "test_predictions.csv", ["path", "label", "prob_tumor"], [["other.png", 1, 0.9]])
    assert main(["leakage", "--run", str(run)]) == 2
    assert "1 test images of split.csv have no prediction, e.g. a.png" in one_error_line(capsys)


def test_no_run_is_a_usage_error(capsys):
    assert main(["leakage"]) == 2
    assert "leakage: the following arguments are required: --run" in one_error_line(capsys)
    assert main(["leakage", "--run"]) == 2
    assert "leakage: argument --run: expected at least one argument" in one_error_line(capsys)


def test_a_run_records_the_decisions_of_its_metrics(trained_run: Path):
    from tumorclf.metrics.classification import confusion_matrix
    from tumorclf.runs.folder import RunDir

    run = RunDir(trained_run)
    metrics = run.metrics()
    rows = run.test_predictions()
    assert rows and all(row["predicted"] in ("0", "1") for row in rows)
    labels = np.array([int(row["label"]) for row in rows])
    predicted = np.array([int(row["predicted"]) for row in rows])
    assert confusion_matrix(labels, predicted).tolist() == metrics["confusion_matrix"]
    kinds = {row["kind"]: row for row in leakage_rows(trained_run)}
    correct = sum(kinds[kind]["correct"] for kind in ("byte-identical in train", "near-duplicate in train", "clean"))
    assert correct == round(metrics["accuracy"] * metrics["n"]) == int((labels == predicted).sum())
