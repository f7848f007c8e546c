"""Interruption and resume: kill -9 mid-training, then --resume, equals an uninterrupted run."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import one_error_line, write_blob_dataset
from tumorclf.training.callbacks import HISTORY_COLUMNS
from tumorclf.cli.main import main

EPOCHS = 5


def train_args(data: Path, out: Path, name: str, *extra: str) -> list[str]:
    return ["--data", str(data), "--out", str(out), "--name", name, "--epochs", str(EPOCHS), "--image-size", "32",
            "--batch-size", "16", "--learning-rate", "0.01", "--deterministic", "--cache-dir", str(out.parent / "cache"),
            *extra]


def without_elapsed(path: Path) -> list[dict]:
    """history.csv rows without the wall-clock column, which no two runs share."""
    with open(path) as handle:
        return [{k: v for k, v in row.items() if k != "elapsed_minutes"} for row in csv.DictReader(handle)]


def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path: Path, capsys, caplog):
    """The killed run is a process of its own (`python -m tumorclf.run`, killed with SIGKILL after its second
    epoch); the uninterrupted run, the refusal and the resume run in this process through the same `main`."""
    data = write_blob_dataset(tmp_path / "data", per_class=60, size=32, seed=5)
    out = tmp_path / "runs"
    assert main(["train", *train_args(data, out, "straight")]) == 0

    victim = subprocess.Popen([sys.executable, "-m", "tumorclf.run", *train_args(data, out, "killed")],
                              env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    progress = out / "killed" / "progress.json"
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        if progress.is_file() and json.loads(progress.read_text())["epochs_done"] >= 2:
            os.kill(victim.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = json.loads(progress.read_text())["epochs_done"]
    assert 2 <= done < EPOCHS and not (out / "killed" / "metrics.json").exists()

    # without --resume the interrupted folder is not touched
    capsys.readouterr()
    before = sorted((path.relative_to(out), path.stat().st_mtime_ns) for path in (out / "killed").rglob("*"))
    assert main(["train", *train_args(data, out, "killed")]) == 2
    assert "--resume" in one_error_line(capsys)
    assert sorted((path.relative_to(out), path.stat().st_mtime_ns) for path in (out / "killed").rglob("*")) == before

    caplog.clear()
    with caplog.at_level("INFO", logger="tumorclf"):
        assert main(["train", *train_args(data, out, "killed", "--resume")]) == 0
    assert f"resuming after epoch {done}" in caplog.text

    straight, killed = out / "straight", out / "killed"
    assert json.loads((killed / "metrics.json").read_text())["f1"] == json.loads(
        (straight / "metrics.json").read_text())["f1"]
    assert (killed / "test_predictions.csv").read_text() == (straight / "test_predictions.csv").read_text()
    history = without_elapsed(killed / "history.csv")
    assert len(history) == EPOCHS
    assert history == without_elapsed(straight / "history.csv")
    assert not (killed / "backup").exists()


def test_resume_refuses_a_different_config_and_skips_finished_runs(blob_dataset: Path, tmp_path: Path, capsys):
    args = ["train", "--data", str(blob_dataset), "--out", str(tmp_path), "--name", "r", "--epochs", "1",
            "--image-size", "32", "--batch-size", "8"]
    assert main(args) == 0
    finished = (tmp_path / "r" / "metrics.json").read_text()
    assert main(args + ["--resume"]) == 0
    assert (tmp_path / "r" / "metrics.json").read_text() == finished
    assert main(args + ["--resume", "--learning-rate", "0.5"]) == 2
    assert "other values of learning_rate" in capsys.readouterr().err


def test_fewer_images_than_a_batch_stops_before_training(blob_dataset: Path, tmp_path: Path, capsys):
    args = ["train", "--data", str(blob_dataset), "--out", str(tmp_path / "runs"), "--image-size", "32",
            "--batch-size", "64"]
    assert main(args) == 2
    assert "fewer images than one batch" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_multiworker_without_tf_config_stops_cleanly(blob_dataset: Path, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert main(["train", "--data", str(blob_dataset), "--out", str(tmp_path / "runs"),
                 "--strategy", "multiworker"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TF_CONFIG" in err[0]
    assert not (tmp_path / "runs").exists()


REFUSED_WITH_MULTIWORKER = (["--resume"], ["--model", "vgg16", "--imagenet", "--recipe", "fast"])


@pytest.mark.parametrize("extra", REFUSED_WITH_MULTIWORKER, ids=["resume", "fast"])
def test_multiworker_refuses_resume_and_the_fast_recipe(blob_dataset: Path, tmp_path: Path, capsys, monkeypatch,
                                                        extra):
    # refused while the settings are checked, before a collective-ops strategy (which would stay set up in
    # this process) exists, so it runs in process
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"not read before the refusal")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": [f"127.0.0.1:{free_port()}"]},
                                                "task": {"type": "worker", "index": 0}}))
    args = ["train", "--data", str(blob_dataset), "--out", str(tmp_path / "runs"), "--strategy", "multiworker",
            "--image-size", "32", "--batch-size", "8", "--weights-dir", str(weights)]
    assert main(args + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tumorclf: error: --strategy multiworker supports neither --resume nor the cached-feature "
                   "recipes (fast, robust)"]
    assert not (tmp_path / "runs").exists()


def test_two_workers_on_localhost_train_together_and_only_the_chief_writes(tmp_path: Path):
    data = write_blob_dataset(tmp_path / "data", per_class=24, size=32, seed=2)
    out = tmp_path / "runs"
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    workers = []
    for index in range(2):
        env = {**os.environ, "TUMORCLF_CACHE": str(tmp_path / f"cache{index}"), "TMPDIR": str(tmp_path),
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        args = [sys.executable, "-m", "tumorclf.run", "--data", str(data), "--out", str(out), "--name", "mw",
                "--strategy", "multiworker", "--epochs", "2", "--image-size", "32", "--batch-size", "8",
                "--learning-rate", "0.01", "--precision", "float32"]
        workers.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [worker.communicate(timeout=400) for worker in workers]
    for worker, (_, err) in zip(workers, results):
        assert worker.returncode == 0, err[-3000:]
    assert "non-chief worker" in results[1][1] and "non-chief worker" not in results[0][1]
    assert [p.name for p in out.iterdir()] == ["mw"]  # one run folder, the chief's
    assert not list(tmp_path.glob("tumorclf_worker_*"))  # the non-chief removed its scratch folder
    run = out / "mw"
    assert json.loads((run / "config.json").read_text())["resolved"]["replicas"] == 2
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 2
    with open(run / "history.csv") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == list(HISTORY_COLUMNS)  # the same columns as Keras fit's paths
    assert len(rows) == 2 and all(0 <= float(row["val_f1"]) <= 1 and float(row["loss"]) > 0 for row in rows)
    assert all(row["val_loss"] and row["val_accuracy"] and not row["test_accuracy"] for row in rows)
    assert main(["curves", "--run", str(run), "--out", str(tmp_path)]) == 0
    for index in range(2):  # both workers ran every epoch
        assert results[index][1].count("epoch 2/2") == 1
