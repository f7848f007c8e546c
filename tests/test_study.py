from __future__ import annotations

import csv
from pathlib import Path

import keras
import pytest

from tumorclf.cli import main
from tumorclf.config import load_yaml
from tumorclf.rundir import RunDir, RunError
from tumorclf.study import _roc_points, study_configs


def test_study_runs_skips_finished_and_reports_unavailable_weights(blob_dataset: Path, tmp_path: Path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    monkeypatch.delenv("TUMORCLF_WEIGHTS_DIR", raising=False)
    study = tmp_path / "study.yaml"
    study.write_text(f"""
output: {tmp_path / 'runs'}
results: {tmp_path / 'results'}
splits: [paper, grouped]
defaults: {{epochs: 2, image_size: 32, batch_size: 8, learning_rate: 0.01, weights_dir: {tmp_path}}}
runs:
  - {{model: simplecnn, max_minutes: 30}}
  - {{model: resnet50, imagenet: true}}
""")
    args = ["study", "--config", str(study), "--data", str(blob_dataset)]
    assert main([*args, "--status"]) == 0  # reports every row, trains nothing
    with open(tmp_path / "results" / "results.csv") as handle:
        assert [r["status"][:11] for r in csv.DictReader(handle)] == ["pending"] * 2 + ["unavailable"] * 2
    assert main([*args, "--only", "resnet50"]) == 0  # nothing of resnet50 can run; the other rows are kept
    with open(tmp_path / "results" / "results.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 4
    assert main(args) == 0
    with open(tmp_path / "results" / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["model"], r["split"], r["status"][:11]) for r in rows] == [
        ("simplecnn", "paper", "finished"), ("simplecnn", "grouped", "finished"),
        ("resnet50", "paper", "unavailable"), ("resnet50", "grouped", "unavailable")]
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in rows[2]["status"]
    assert 0 <= float(rows[0]["accuracy"]) <= 1 and float(rows[0]["train_minutes"]) >= 0
    assert float(rows[0]["max_minutes"]) == 30 and rows[2]["max_minutes"] == ""
    tables = (tmp_path / "results" / "tables.md").read_text()
    assert "### Table 2" in tables and "| simplecnn (32 px, ≤2 epochs or ~30 min) | 0.7710 |" in tables
    assert (tmp_path / "results" / "roc_paper.png").is_file() and (tmp_path / "results" / "roc_grouped.png").is_file()
    assert list((tmp_path / "results" / "gradcam").glob("compare_*.png"))

    # a second invocation trains nothing: finished runs are kept as they are
    metrics = tmp_path / "runs" / "simplecnn_scratch_paper_32px_seed42" / "metrics.json"
    before = metrics.stat().st_mtime_ns
    assert main(args) == 0
    assert metrics.stat().st_mtime_ns == before


def test_study_file_errors(tmp_path: Path, capsys):
    study = tmp_path / "bad.yaml"
    study.write_text("runs: []\n")
    assert main(["study", "--config", str(study)]) == 2
    assert "non-empty `runs`" in capsys.readouterr().err


def test_study_values_are_coerced_like_config(blob_dataset: Path, tmp_path: Path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(f"""
output: {tmp_path / 'runs'}
results: {tmp_path / 'results'}
defaults: {{learning_rate: 1e-4, image_size: 32}}
runs:
  - {{model: simplecnn, epochs: '3', dropout: 2.5e-1}}
""")
    (cfg,) = study_configs(load_yaml(study), str(blob_dataset))
    assert isinstance(cfg.learning_rate, float) and cfg.learning_rate == 1e-4
    assert cfg.epochs == 3 and cfg.dropout == 0.25 and cfg.resume
    assert main(["study", "--config", str(study), "--data", str(blob_dataset), "--status"]) == 0
    assert "simplecnn" in capsys.readouterr().out


@pytest.mark.parametrize("defaults, entry, where", [
    ("{}", "{model: simplecnn, epochs: ten}", "runs entry 1 (simplecnn"),
    ("{epochs: ten}", "{model: simplecnn}", "defaults: "),
])
def test_bad_study_value_is_one_line_naming_the_key(tmp_path: Path, capsys, defaults, entry, where):
    study = tmp_path / "study.yaml"
    study.write_text(f"output: {tmp_path / 'runs'}\ndefaults: {defaults}\nruns:\n  - {entry}\n")
    capsys.readouterr()
    assert main(["study", "--config", str(study)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("tumorclf: error: ") and where in lines[0]
    assert "epochs: expected an integer, got 'ten'" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_study_only_takes_known_models(tmp_path: Path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text("runs:\n  - {model: simplecnn}\n")
    assert main(["study", "--config", str(study), "--only", "vgg"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "invalid choice: 'vgg'" in lines[0], lines


def test_roc_points_come_from_the_run_folder_reader(tmp_path: Path):
    run = RunDir(tmp_path)
    run.roc_file.write_text("threshold,fpr,tpr\ninf,0.0,0.0\n0.6,0.25,0.75\n0.2,1.0,1.0\n")
    fpr, tpr = _roc_points(run)
    assert fpr.tolist() == [0.0, 0.25, 1.0] and tpr.tolist() == [0.0, 0.75, 1.0]
    run.roc_file.write_text("fpr,tpr\n0.0,0.0\n")  # a corrupt roc.csv: one line, not a KeyError
    with pytest.raises(RunError, match="no threshold column"):
        _roc_points(run)
