"""Test accuracy split by whether a test image has a copy in training."""

from __future__ import annotations

import csv
from pathlib import Path

from tumorclf.cli import main
from tumorclf.leakage import leakage_rows


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
    assert main(["leakage", str(run), "--out", str(tmp_path / "leak.csv")]) == 0
    assert "clean" in capsys.readouterr().out and (tmp_path / "leak.csv").read_text().count("\n") == 5


def test_unfinished_run_is_refused(tmp_path: Path, capsys):
    assert main(["leakage", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert str(tmp_path) in line and "split.csv" in line
    assert main(["leakage", str(tmp_path / "missing")]) == 2
    assert "run folder not found" in one_error_line(capsys)


def test_predictions_that_do_not_match_the_split_are_refused(tmp_path: Path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    write_csv(run / "split.csv", ["path", "label", "split", "group", "sha256"], [["a.png", 1, "test", 0, "s1"]])
    write_csv(run / "test_predictions.csv", ["path", "label", "prob_tumor"], [["other.png", 1, 0.9]])
    assert main(["leakage", str(run)]) == 2
    assert "1 test images of split.csv have no prediction, e.g. a.png" in one_error_line(capsys)


def test_no_run_is_a_usage_error(capsys):
    assert main(["leakage"]) == 2
    assert "leakage: the following arguments are required: runs" in one_error_line(capsys)
