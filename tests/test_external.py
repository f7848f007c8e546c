"""External validation (`train --external`, tumorclf.evaluation.external): folders checked before anything is
trained, a finished run evaluated on them at every operating point into its evaluation_external folder, which
the study's results.csv and the model card read."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import copy_with_operating_point, one_error_line, read_csv, write_blob_dataset
from tumorclf.cli.main import main
from tumorclf.evaluation.external import evaluate_external, summary_lines
from tumorclf.runs.folder import RunDir
from tumorclf.serving.export import run_evaluations
from tumorclf.studies.study import external_columns


def test_external_folders_are_checked_before_anything_is_trained(blob_dataset: Path, tmp_path: Path, capsys):
    train = ["train", "--data", str(blob_dataset), "--out", str(tmp_path / "runs"), "--epochs", "1",
             "--image-size", "32"]
    assert main([*train, "--external", str(tmp_path / "nowhere")]) != 0
    assert "--external " in (line := one_error_line(capsys)) and "no such folder" in line
    for inside in (blob_dataset / "tumor", blob_dataset, blob_dataset.parent):
        assert main([*train, "--external", str(inside)]) != 0
        assert "overlaps the training data folder" in one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


def tumour_only(root: Path) -> Path:
    """Blob tumour slices alone, in a class folder named as figshare_meningioma's."""
    write_blob_dataset(root, per_class=10, size=48, seed=11)
    shutil.rmtree(root / "healthy")
    (root / "tumor").rename(root / "Brain Tumor")
    return root


def test_a_finished_run_is_evaluated_on_its_external_folders(trained_run: Path, tmp_path: Path):
    run = RunDir(copy_with_operating_point(trained_run, tmp_path / "run", 1.5, 0.4))
    tumour = tumour_only(tmp_path / "tumour")
    both = write_blob_dataset(tmp_path / "both", per_class=6, size=48, seed=12)
    report = evaluate_external(run, [tumour, both], n_bootstrap=50)

    written = run.external_report()
    assert written["datasets"].keys() == report["datasets"].keys() and written["run"] == str(run.path)
    assert set(report["datasets"]) == {"tumour", "both", "pooled"}
    entry = written["datasets"]["tumour"]
    assert entry["n"] == 10 and entry["specificity"]["value"] is None and "specificity" in entry["not_reportable"]
    rows = [row for row in read_csv(run.external_dir / "predictions.csv") if row["dataset"] == "tumour"]
    prob = np.array([float(row["prob_tumor"]) for row in rows])
    assert set(entry["operating_points"]) >= {"target_sensitivity", "youden", "default_0.5"}
    for point in entry["operating_points"].values():  # the share of tumour slices at or above each threshold
        assert np.all(np.abs(prob - point["threshold"]) > 1e-6)
        assert point["sensitivity"]["value"] == pytest.approx(np.mean(prob >= point["threshold"]))

    lines = summary_lines(report)
    assert [line.split(" (")[0] for line in lines] == ["tumour", "both"]
    assert lines[0].startswith("tumour (10 slices): sensitivity ") and "specificity" not in lines[0]
    assert "specificity" in lines[1] and "at default_0.5 (0.5)" in lines[1]

    columns = external_columns(written)
    assert columns["external_tumour_n"] == 10 and columns["external_tumour_specificity"] is None
    assert columns["external_both_sensitivity"] == written["datasets"]["both"]["sensitivity"]["value"]
    assert (columns["external_both_specificity_lo"], columns["external_both_specificity_hi"]) == tuple(
        written["datasets"]["both"]["specificity"]["ci95"])
    assert not any("pooled" in name for name in columns)
    assert "evaluation_external" in run_evaluations(run)  # the model card lists it
    assert external_columns(None) == {}
