"""End to end through the command line: outputs of a run, and clean refusals of bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import keras

from tumorclf.cli.main import main

METRIC_KEYS = {"test_loss", "accuracy", "per_class_accuracy", "precision", "recall", "f1", "auc", "confusion_matrix"}
RUN_FILES = {"config.json", "split.csv", "skipped.csv", "history.csv", "best.keras", "metrics.json", "roc.csv",
             "roc.png", "confusion_matrix.png", "test_predictions.csv", "run.log", "tensorboard", "gate.json",
             "gate.npz"}


def quick_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--epochs", "2", "--image-size", "32", "--batch-size", "8",
            "--learning-rate", "0.01", *extra]


def test_run_writes_a_self_describing_folder(blob_dataset: Path, tmp_path: Path, capsys):
    (blob_dataset / "tumor" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert main(quick_args(blob_dataset, tmp_path / "runs", "--name", "demo")) == 0
    run = tmp_path / "runs" / "demo"
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(run)
    assert RUN_FILES <= {p.name for p in run.iterdir()}

    metrics = json.loads((run / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics) and 0 <= metrics["accuracy"] <= 1
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["n"]

    config = json.loads((run / "config.json").read_text())
    assert config["config"]["epochs"] == 2 and config["resolved"]["weights_origin"].startswith("random")
    assert {"tensorflow", "keras", "numpy"} <= set(config["versions"]) or "tensorflow-cpu" in config["versions"]
    assert config["skipped_files"] == 1

    with open(run / "split.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {"path", "label", "split"} <= set(rows[0]) and len(rows) == 80
    assert "tumor/broken.png" in (run / "skipped.csv").read_text()
    assert "skipped tumor/broken.png: unreadable image" in (run / "run.log").read_text()

    # the quality gate, fitted on this run's train images with its threshold on validation
    gate = json.loads((run / "gate.json").read_text())
    assert gate["validation"]["n"] == sum(row["split"] == "val" for row in rows) and gate["min_side"] == 16
    assert "quality gate: out-of-distribution threshold" in (run / "run.log").read_text()

    # the best checkpoint is a loadable model that takes raw 0-255 images
    assert keras.saving.load_model(run / "best.keras").input_shape == (None, 32, 32, 3)


def test_existing_run_is_never_overwritten_unless_asked(blob_dataset: Path, tmp_path: Path, capsys, monkeypatch):
    run = tmp_path / "runs" / "kept"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    assert main(quick_args(blob_dataset, tmp_path / "runs", "--name", "kept")) == 2
    assert "already exists" in capsys.readouterr().err
    assert (run / "metrics.json").read_text() == "{}"
    # the data folder from the environment (test_data_folder_from_environment, merged here: one training fewer)
    monkeypatch.setenv("TUMORCLF_DATA", str(blob_dataset))
    args = ["train", *quick_args(blob_dataset, tmp_path / "runs", "--name", "kept", "--overwrite", "--epochs", "1")[3:]]
    assert "--data" not in args
    assert main(args) == 0
    assert (run / "metrics.json").read_text() != "{}"


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tumorclf: error:") and "Traceback" not in err[0]
    return err[0]


def test_bad_input_stops_with_one_clear_line(tmp_path: Path, blob_dataset: Path, capsys, monkeypatch):
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "data folder not found" in one_error_line(capsys)

    monkeypatch.delenv("TUMORCLF_DATA", raising=False)
    assert main(["train", "--out", str(tmp_path)]) == 2
    assert "TUMORCLF_DATA" in one_error_line(capsys)

    def no_network(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    assert main(quick_args(blob_dataset, tmp_path / "runs", "--model", "resnet50", "--imagenet",
                           "--weights-dir", str(tmp_path))) == 2
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in one_error_line(capsys)
    assert not (tmp_path / "runs").exists()  # stopped before anything was written

    assert main(quick_args(blob_dataset, tmp_path / "runs", "--epochs", "0")) == 2
    assert "epochs" in one_error_line(capsys)

    assert main(quick_args(blob_dataset, tmp_path / "runs", "--fine-tune", "from_layer", "--unfreeze-from", "nope")) == 2
    assert "unfreeze_from: no layer of simplecnn is named 'nope'" in one_error_line(capsys)
    assert not (tmp_path / "runs").exists()

    (tmp_path / "model.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe binary")
    assert main(["train", "--config", str(tmp_path / "model.yaml")]) == 2
    assert "cannot be read as text" in one_error_line(capsys)


def test_module_entry_point_and_unknown_model():
    result = subprocess.run([sys.executable, "-m", "tumorclf.run", "--model", "alexnet"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "invalid choice: 'alexnet'" in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line, no TensorFlow start-up noise
