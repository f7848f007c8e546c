"""Time-to-accuracy curves from run histories, and the history every training path writes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tumorclf.training.callbacks import HISTORY_COLUMNS
from tumorclf.cli.main import main
from tumorclf.evaluation.curves import read_curve


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
    out = tmp_path / "out"
    assert main(["curves", "--run", str(fast), str(paper), "--out", str(out), "--target", "0.9783"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out / "curves.png") and not captured.err
    assert sorted(path.name for path in out.iterdir()) == ["curves.csv", "curves.png"]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "curves.csv") as handle:
        points = list(csv.DictReader(handle))
    assert [(p["run"], p["epoch"], p["test_accuracy"]) for p in points] == [
        ("fast", "1", "0.951"), ("fast", "2", "0.979"), ("paper", "1", "")]


def test_earlier_spellings_still_work_with_a_notice(tmp_path: Path, capsys):
    """Run folders without --run, and --out naming the figure itself (its CSV beside it)."""
    run = write_history(tmp_path / "fast", [{"epoch": 0, "elapsed_minutes": 9.5, "val_accuracy": 0.95}])
    out = tmp_path / "results" / "time_to_accuracy.png"
    assert main(["curves", str(run), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    notices = captured.err.strip().splitlines()
    assert len(notices) == 2 and all(line.startswith("tumorclf: deprecated:") for line in notices)
    assert f"use --run {run}" in notices[0] and "--out names the output folder" in notices[1]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.with_suffix(".csv").is_file()
    assert sorted(path.name for path in out.parent.iterdir()) == ["time_to_accuracy.csv", "time_to_accuracy.png"]


def test_runs_without_elapsed_time_are_refused(tmp_path: Path, capsys):
    old = write_history(tmp_path / "old", [{"epoch": 0, "val_accuracy": 0.9}])
    assert main(["curves", "--run", str(old), "--out", str(tmp_path / "c")]) == 2
    assert "no elapsed_minutes" in capsys.readouterr().err
    assert main(["curves", "--run", str(tmp_path / "missing"), "--out", str(tmp_path / "c")]) == 2
    assert not (tmp_path / "c").exists()
    assert main(["curves", "--out", str(tmp_path / "c")]) == 2
    assert "curves: the following arguments are required: --run" in capsys.readouterr().err
    assert main(["curves", "--run", str(old)]) == 2
    assert "curves: the following arguments are required: --out" in capsys.readouterr().err


def test_every_training_path_writes_the_same_history_columns_and_curves_reads_them(tmp_path: Path):
    """The paper recipe (Keras fit on two replicas) and the fast recipe (cached features) write the same
    columns; the multi-worker loop is checked in test_reliability's two-worker test."""
    from conftest import blob_image

    from tumorclf.runs.config import Config
    from tumorclf.models.factory import build_model
    from tumorclf.runs.folder import RunDir
    from tumorclf.training.loop import select_strategy, train

    rng = np.random.default_rng(0)
    labels = {name: np.arange(n) % 2 for name, n in (("train", 24), ("val", 8), ("test", 8))}
    images = {name: np.stack([blob_image(rng, 32, bool(y)) for y in y_all]) for name, y_all in labels.items()}
    paths = {
        "paper": (Config(epochs=2, image_size=32, batch_size=8, learning_rate=1e-2), "simplecnn", "mirrored"),
        "fast": (Config(model="vgg16", imagenet=True, recipe="fast", feature_views=1, epochs=2, image_size=32,
                        batch_size=8, learning_rate=1e-3, track_test=True), "vgg16", "default"),
    }
    for name, (cfg, model, strategy) in paths.items():
        train(cfg, RunDir(tmp_path / name), lambda: build_model(model, 32), select_strategy(strategy), images, labels)
        with open(tmp_path / name / "history.csv", newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
        assert reader.fieldnames == list(HISTORY_COLUMNS) and len(rows) == 2
        filled = {column for column in HISTORY_COLUMNS if all(row[column] for row in rows)}
        unlogged = {"outside_share"} | ({"test_accuracy", "test_f1"} if not cfg.track_test else set())
        assert filled == set(HISTORY_COLUMNS) - unlogged
        assert all(0 <= float(row[key]) <= 1 for row in rows for key in ("accuracy", "val_accuracy", "val_f1"))
        assert all(float(row["loss"]) > 0 and float(row["val_loss"]) > 0 for row in rows)

    out = tmp_path / "curves"
    assert main(["curves", "--run", str(tmp_path / "paper"), str(tmp_path / "fast"), "--out", str(out)]) == 0
    with open(out / "curves.csv") as handle:
        points = list(csv.DictReader(handle))
    assert [(p["run"], p["epoch"], bool(p["val_accuracy"]), bool(p["test_accuracy"])) for p in points] == [
        ("paper", "1", True, False), ("paper", "2", True, False), ("fast", "1", True, True), ("fast", "2", True, True)]
    assert read_curve(tmp_path / "fast")[1]["elapsed_minutes"] >= read_curve(tmp_path / "fast")[0]["elapsed_minutes"]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
