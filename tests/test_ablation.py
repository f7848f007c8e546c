"""The ablation table: finished runs of a study evaluated at their operating points, rows only ever appended."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import pytest
import yaml

from conftest import read_csv
from tumorclf.studies.ablation import ABLATION_FILE, EVALUATIONS, TABLE_FILE, markdown, record
from tumorclf.cli.main import main
from tumorclf.runs.config import Config
from tumorclf.errors import UsageError
from tumorclf.studies.study import study_configs

# the configuration of conftest's trained_run, as a study entry
RUN = {"model": "simplecnn", "epochs": 3, "image_size": 48, "batch_size": 8, "learning_rate": 0.01,
       "deterministic": True, "precision": "float32", "strategy": "default"}


def study(tmp_path: Path, trained_run: Path, runs: list[dict]) -> tuple[Path, list[Config]]:
    """A study file over copies of the shared trained run, placed where the study expects each entry's run."""
    spec = {"output": str(tmp_path / "runs"), "results": str(tmp_path / "results"), "splits": ["grouped"],
            "data": json.loads((trained_run / "config.json").read_text())["config"]["data"], "runs": runs}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    configs = study_configs(spec, None)
    return path, configs


def test_rows_are_appended_once_per_evaluation_and_failures_are_kept(tmp_path: Path, trained_run: Path):
    """A finished run gets one evaluated row matching its evaluation.json; asking again adds nothing; a run
    that cannot be evaluated gets a failed row each time; an unfinished run gets none; earlier rows stay."""
    _, configs = study(tmp_path, trained_run, [RUN, {**RUN, "seed": 7}, {**RUN, "seed": 8}])
    good, broken, unfinished = configs
    shutil.copytree(trained_run, good.run_dir, ignore=shutil.ignore_patterns("evaluation*"))
    shutil.copytree(trained_run, broken.run_dir, ignore=shutil.ignore_patterns("evaluation*"))
    (broken.run_dir / "split.csv").write_text("not,a,split\n")
    results = tmp_path / "results"

    first = record(configs, results, n_bootstrap=50)
    assert [row["status"] for row in first] == ["evaluated", f"failed: {first[1]['status'][8:]}"]
    assert "split.csv" in first[1]["status"]
    rows = read_csv(results / ABLATION_FILE)
    assert [row["run_name"] for row in rows] == [good.run_name, broken.run_name]
    report = json.loads((results / EVALUATIONS / good.run_name / "evaluation.json").read_text())["datasets"]["test"]
    assert float(rows[0]["balanced_accuracy"]) == pytest.approx(report["balanced_accuracy"]["value"], rel=1e-5)
    assert float(rows[0]["auc_lo"]) == pytest.approx(report["auc"]["ci95"][0], rel=1e-5)
    assert int(rows[0]["n_test"]) == report["n"] and rows[0]["measures"] == "none"
    assert unfinished.run_name not in {row["run_name"] for row in rows}

    second = record(configs, results, n_bootstrap=50)
    assert [row["run_name"] for row in second] == [broken.run_name]  # tried again, failed again
    again = read_csv(results / ABLATION_FILE)
    assert again[:2] == rows and len(again) == 3
    table = (results / TABLE_FILE).read_text()
    assert "| `simplecnn_scratch_*_48px_seed42` | paper | none |" in table
    assert "3 evaluations on record" in table and "2 failed" in table

    # the run trained again: its evaluation is redone and gets a row of its own; earlier text stays byte for byte
    before = (results / ABLATION_FILE).read_text()
    model = keras.saving.load_model(good.run_dir / "best.keras")
    model.set_weights([w * 0.5 for w in model.get_weights()])
    model.save(good.run_dir / "best.keras")
    third = record(configs, results, n_bootstrap=50)
    assert [row["run_name"] for row in third] == [good.run_name, broken.run_name]
    assert third[0]["evaluation_sha256"] != rows[0]["evaluation_sha256"]
    assert (results / ABLATION_FILE).read_text().startswith(before)


def test_a_table_with_other_columns_is_refused_not_rewritten(tmp_path: Path):
    results = tmp_path / "results"
    results.mkdir()
    (results / ABLATION_FILE).write_text("run_name,accuracy\nold,0.9\n")
    with pytest.raises(UsageError, match="other columns"):
        record([], results)
    assert (results / ABLATION_FILE).read_text() == "run_name,accuracy\nold,0.9\n"


def test_the_table_shows_undefined_metrics_as_a_dash():
    """A held-out side with one class has no specificity or AUC: the table says `-` instead of failing."""
    row = {"run_name": "vgg16_imagenet_lso-figshare_224px_seed42_fast", "protocol": "leave-source-out:figshare",
           "recipe": "fast", "measures": "none", "status": "evaluated", "balanced_accuracy": "0.8",
           "balanced_accuracy_lo": "0.7", "balanced_accuracy_hi": "0.9", "auc": "", "auc_lo": "", "auc_hi": "",
           "sensitivity": "0.8", "specificity": "", "train_minutes": "20"}
    table = markdown([row])
    assert "| 0.800 [0.700, 0.900] | - | 0.800 / - | 20 |" in table


def test_measures_name_what_was_on():
    assert Config(model="vgg16", imagenet=True, recipe="fast").measures == "none"
    assert Config(model="vgg16", imagenet=True, recipe="robust").measures == "percentile+foreground+acquisition"
    assert Config(model="vgg16", imagenet=True, recipe="fast", acquisition=True).measures == "acquisition"


def test_the_command_needs_a_results_folder(tmp_path: Path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"runs": [{"model": "simplecnn"}]}))
    assert main(["ablation", "--config", str(path)]) == 2
    assert "names no `results` folder" in capsys.readouterr().err


def test_the_command_refuses_a_bootstrap_of_no_resamples(tmp_path: Path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"results": str(tmp_path / "results"), "runs": [{"model": "simplecnn"}]}))
    assert main(["ablation", "--config", str(path), "--bootstrap", "0"]) == 2
    assert capsys.readouterr().err.strip() == "tumorclf: error: ablation: --bootstrap must be >= 1, got 0"
    assert not (tmp_path / "results").exists()
