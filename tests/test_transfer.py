"""The transfer table (tumorclf.studies.transfer): each run, the ensemble of a configuration's seeds and test-time
augmentation, on the test split and the external folders at every operating point."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import copy_with_operating_point, one_error_line, read_csv, write_blob_dataset
from tumorclf.cli.main import main
from tumorclf.data.dataset import CLASS_NAMES, file_sha256
from tumorclf.runs.config import Config
from tumorclf.runs.ensemble import ensemble_point, member_points
from tumorclf.runs.folder import RunDir
from tumorclf.studies.transfer import TABLE_FILE, TRANSFER_FILE, record_transfer


def tumour_only(root: Path) -> Path:
    write_blob_dataset(root, per_class=10, size=48, seed=21)
    shutil.rmtree(root / "healthy")
    return root


@pytest.fixture
def members(trained_run: Path, tmp_path: Path) -> list[Config]:
    """Two runs of one configuration on one split (copies of the trained run at temperatures 1 and 2.5), with an
    external tumour-only folder."""
    external = tumour_only(tmp_path / "meningioma")
    for seed, temperature in ((1, 1.0), (2, 2.5)):
        copy_with_operating_point(trained_run, tmp_path / "runs" / f"blob_seed{seed}", temperature, 0.5)
    return [Config(name=f"blob_seed{seed}", output=str(tmp_path / "runs"), seed=seed, external=str(external))
            for seed in (1, 2)]


def test_runs_their_ensemble_and_tta_are_tabled_at_every_point(members: list[Config], tmp_path: Path, caplog):
    results = tmp_path / "results"
    rows = record_transfer(members, results, {"views": ["identity", "hflip"], "runs": ["*_seed1"]}, n_bootstrap=50)
    written = read_csv(results / TRANSFER_FILE)
    assert len(written) == len(rows) and all(row["status"] == "evaluated" for row in written)
    kinds = {(r["measure"], r["runs"], r["dataset"]) for r in written}
    assert kinds == {("single", f"blob_seed{s}", d) for s in (1, 2) for d in ("test", "meningioma")} | {
        ("tta", "blob_seed1", "meningioma")} | {
        ("ensemble", "blob_seed1+blob_seed2", d) for d in ("test", "meningioma")}
    assert {r["configuration"] for r in written} == {"blob"}
    points = {r["point"] for r in written}
    assert {"target_sensitivity", "youden", "default_0.5"} <= points
    one_class = [r for r in written if r["dataset"] == "meningioma"]
    assert all(r["specificity"] == "" and r["auc"] == "" and r["n"] == "10" for r in one_class)

    # the ensemble's sensitivity on the external folder, by hand from the members' predictions
    runs = [RunDir(cfg.run_dir) for cfg in members]
    point = ensemble_point(runs)
    raws = []
    for cfg in members:
        predictions = read_csv(results / "evaluations" / cfg.run_name / "external" / "predictions.csv")
        predictions.sort(key=lambda row: row["path"])
        assert all(row["label"] == CLASS_NAMES[1] for row in predictions)
        raws.append(np.array([float(row["prob_tumor_raw"]) for row in predictions]))
    score = np.mean([p.calibrate(raw) for p, raw in zip(member_points(runs), raws)], axis=0)
    ensemble = {r["point"]: r for r in written if r["measure"] == "ensemble" and r["dataset"] == "meningioma"}
    assert float(ensemble["target_sensitivity"]["threshold"]) == pytest.approx(point.threshold, abs=1e-6)
    assert float(ensemble["target_sensitivity"]["sensitivity"]) == pytest.approx(
        np.mean(point.calibrate(score) >= point.threshold))
    assert float(ensemble["default_0.5"]["sensitivity"]) == pytest.approx(np.mean(point.calibrate(score) >= 0.5))

    table = (results / TABLE_FILE).read_text()
    assert "| `blob` | grouped | single | " in table and ", 2 seeds)" in table
    assert "| `blob` | grouped | ensemble | " in table
    assert "(1 seed)" in next(line for line in table.splitlines() if line.startswith("| `blob` | grouped | tta | "))

    # a second call reuses every evaluation on record and gives the same rows
    again = record_transfer(members, results, {"views": ["identity", "hflip"], "runs": ["*_seed1"]}, n_bootstrap=50)
    assert [{k: v for k, v in r.items()} for r in again] == rows

    # an evaluation on record of another model under the run's name (a run trained again) is not reused
    stale = results / "evaluations" / "blob_seed2" / "external" / "evaluation.json"
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "model_sha256": "0" * 64}))
    with caplog.at_level("INFO", logger="tumorclf"):
        assert record_transfer(members, results, n_bootstrap=50)
    assert "is of another model" in caplog.text and "evaluating blob_seed2" in caplog.text
    assert json.loads(stale.read_text())["model_sha256"] == file_sha256(RunDir(members[1].run_dir).best_model)

    # a run whose folder is gone (trained on another machine) keeps its recorded rows; its ensemble, with one
    # member left here, is not formed again
    recorded = [r for r in read_csv(results / TRANSFER_FILE) if r["runs"] == "blob_seed2"]
    shutil.rmtree(members[1].run_dir)
    rows = record_transfer(members, results, n_bootstrap=50)
    kept = [r for r in read_csv(results / TRANSFER_FILE) if r["runs"] == "blob_seed2"]
    assert kept == recorded and {r["runs"] for r in rows} == {"blob_seed1", "blob_seed2"}
    assert "| `blob` | grouped | single | " in (results / TABLE_FILE).read_text()


def test_a_member_of_another_split_fails_its_ensemble_row_only(members: list[Config]):
    split = RunDir(members[1].run_dir).split_file
    split.write_text(split.read_text().replace(",train,", ",val,", 1))
    rows = record_transfer(members, Path(members[0].output).parent / "results", n_bootstrap=20)
    failed = [r for r in rows if r["status"] != "evaluated"]
    assert len(failed) == 1 and failed[0]["measure"] == "ensemble" and "split.csv differs" in failed[0]["status"]
    assert {r["runs"] for r in rows if r["measure"] == "single"} == {"blob_seed1", "blob_seed2"}


def test_a_study_without_external_folders_is_refused_in_one_line(tmp_path: Path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(f"output: {tmp_path / 'runs'}\nresults: {tmp_path / 'results'}\nruns:\n  - {{model: simplecnn}}\n")
    assert main(["transfer", "--config", str(study), "--data", str(tmp_path)]) != 0
    assert "no run names an external folder" in one_error_line(capsys)
    assert not (tmp_path / "results").exists()
