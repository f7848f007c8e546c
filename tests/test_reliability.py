"""Interruption and resume: kill -9 mid-training, then --resume, equals an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import write_blob_dataset
from tumorclf.cli import main

EPOCHS = 5


def command(data: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tumorclf.run", "--data", str(data), "--output", str(out), "--name", name,
            "--epochs", str(EPOCHS), "--image-size", "64", "--batch-size", "16", "--learning-rate", "0.01",
            "--deterministic", *extra]


def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path: Path):
    data = write_blob_dataset(tmp_path / "data", per_class=120, size=64, seed=5)
    env = {**os.environ, "TUMORCLF_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "runs"
    subprocess.run(command(data, out, "straight"), env=env, check=True, capture_output=True, timeout=600)

    victim = subprocess.Popen(command(data, out, "killed"), env=env, stdout=subprocess.DEVNULL,
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
    refused = subprocess.run(command(data, out, "killed"), env=env, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "--resume" in refused.stderr

    resumed = subprocess.run(command(data, out, "killed", "--resume"), env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {done}" in resumed.stderr

    straight, killed = out / "straight", out / "killed"
    assert json.loads((killed / "metrics.json").read_text())["f1"] == json.loads(
        (straight / "metrics.json").read_text())["f1"]
    assert (killed / "test_predictions.csv").read_text() == (straight / "test_predictions.csv").read_text()
    history = (killed / "history.csv").read_text().splitlines()
    assert len(history) == EPOCHS + 1
    assert history == (straight / "history.csv").read_text().splitlines()
    assert not (killed / "backup").exists()


def test_resume_refuses_a_different_config_and_skips_finished_runs(blob_dataset: Path, tmp_path: Path, capsys):
    args = ["--data", str(blob_dataset), "--output", str(tmp_path), "--name", "r", "--epochs", "1",
            "--image-size", "32", "--batch-size", "8"]
    assert main(args) == 0
    finished = (tmp_path / "r" / "metrics.json").read_text()
    assert main(args + ["--resume"]) == 0
    assert (tmp_path / "r" / "metrics.json").read_text() == finished
    assert main(args + ["--resume", "--learning-rate", "0.5"]) == 2
    assert "other values of learning_rate" in capsys.readouterr().err


def test_fewer_images_than_a_batch_stops_before_training(blob_dataset: Path, tmp_path: Path, capsys):
    args = ["--data", str(blob_dataset), "--output", str(tmp_path / "runs"), "--image-size", "32", "--batch-size", "64"]
    assert main(args) == 2
    assert "fewer images than one batch" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()



def test_multiworker_stops_cleanly_with_the_upstream_reason(blob_dataset: Path, tmp_path: Path, capsys):
    args = ["--data", str(blob_dataset), "--output", str(tmp_path / "runs"), "--strategy", "multiworker"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "keras-team/keras#20585" in err[0]
    assert not (tmp_path / "runs").exists()
