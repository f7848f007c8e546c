"""Time-to-accuracy curves from run histories."""

from __future__ import annotations

import csv
from pathlib import Path

from tumorclf.curves import main, read_curve


def write_history(run: Path, rows: list[dict]) -> Path:
    run.mkdir(parents=True)
    with open(run / "history.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return run


def test_curves_figure_and_points(tmp_path: Path, capsys):
    fast = write_history(tmp_path / "fast", [
        {"epoch": 0, "elapsed_minutes": 9.5, "val_accuracy": 0.95, "val_f1": 0.96, "test_accuracy": 0.951},
        {"epoch": 1, "elapsed_minutes": 11.0, "val_accuracy": 0.97, "val_f1": 0.975, "test_accuracy": 0.979}])
    paper = write_history(tmp_path / "paper", [
        {"epoch": 0, "elapsed_minutes": 14.0, "val_accuracy": 0.80, "val_f1": 0.82}])
    assert read_curve(fast)[1] == {"run": "fast", "epoch": 2, "elapsed_minutes": 11.0, "val_accuracy": 0.97,
                                   "val_f1": 0.975, "test_accuracy": 0.979}
    out = tmp_path / "out" / "curve.png"
    assert main([str(fast), str(paper), "--out", str(out), "--target", "0.9783"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out.with_suffix(".csv")) as handle:
        points = list(csv.DictReader(handle))
    assert [(p["run"], p["epoch"], p["test_accuracy"]) for p in points] == [
        ("fast", "1", "0.951"), ("fast", "2", "0.979"), ("paper", "1", "")]


def test_runs_without_elapsed_time_are_refused(tmp_path: Path, capsys):
    old = write_history(tmp_path / "old", [{"epoch": 0, "val_accuracy": 0.9}])
    assert main([str(old), "--out", str(tmp_path / "c.png")]) == 2
    assert "no elapsed_minutes" in capsys.readouterr().err
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "c.png")]) == 2
    assert not (tmp_path / "c.png").exists()
