"""Test accuracy split by whether a test image has a copy in training."""

from __future__ import annotations

import csv
from pathlib import Path

from tumorclf.leakage import leakage_rows, main


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
    assert main([str(run), "--out", str(tmp_path / "leak.csv")]) == 0
    assert "clean" in capsys.readouterr().out and (tmp_path / "leak.csv").read_text().count("\n") == 5


def test_unfinished_run_is_refused(tmp_path: Path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "not a finished run" in capsys.readouterr().err


def test_predictions_that_do_not_match_the_split_are_refused(tmp_path: Path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    write_csv(run / "split.csv", ["path", "label", "split", "group", "sha256"], [["a.png", 1, "test", 0, "s1"]])
    write_csv(run / "test_predictions.csv", ["path", "label", "prob_tumor"], [["other.png", 1, 0.9]])
    assert main([str(run)]) == 2
    assert "1 test images of split.csv have no prediction, e.g. a.png" in capsys.readouterr().err
