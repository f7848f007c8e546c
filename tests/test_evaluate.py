"""`tumorclf evaluate`: the run's own test split again, external class folders, and clean refusals."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import write_blob_dataset
from tumorclf.cli import main

METRIC_KEYS = {"accuracy", "per_class_accuracy", "precision", "recall", "f1", "auc", "confusion_matrix", "n",
               "balanced_accuracy", "sensitivity", "specificity", "brier"}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tumorclf: error:") and "Traceback" not in err[0], err
    return err[0]


def test_test_split_again_equals_the_runs_metrics(trained_run: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)  # the default --out writes into the run folder: not into the shared one
    assert main(["evaluate", "--run", str(run)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == str(run / "evaluation" / "evaluation.json")
    assert [line.split()[0] for line in out[-3:-1]] == ["test", "pooled"]

    report = json.loads((run / "evaluation" / "evaluation.json").read_text())
    expected = json.loads((trained_run / "metrics.json").read_text())
    assert report["run"] == str(run) and report["threshold"] == expected["threshold"]
    assert set(report["datasets"]) == {"test", "pooled"}
    test = report["datasets"]["test"]
    assert METRIC_KEYS <= set(test) and test["skipped"] == 0
    assert test["confusion_matrix"] == expected["confusion_matrix"] and test["n"] == expected["n"]
    for key in ("test_loss", "accuracy", "precision", "recall", "f1", "auc"):
        assert test[key] == pytest.approx(expected[key], abs=1e-6), key
    assert test["per_class_accuracy"] == pytest.approx(expected["per_class_accuracy"])
    assert test["balanced_accuracy"] == pytest.approx(
        (expected["per_class_accuracy"]["healthy"] + expected["per_class_accuracy"]["tumor"]) / 2)
    assert test["specificity"] == pytest.approx(expected["per_class_accuracy"]["healthy"])
    assert 0 <= test["brier"] <= 1
    assert {k: v for k, v in report["datasets"]["pooled"].items() if k != "folder"} == \
        {k: v for k, v in test.items() if k != "folder"}

    rows = read_csv(run / "evaluation" / "predictions.csv")
    saved = {row["path"]: row for row in read_csv(trained_run / "test_predictions.csv")}
    assert len(rows) == len(saved) == expected["n"]
    for row in rows:
        assert row["dataset"] == "test"
        assert float(row["prob_tumor"]) == pytest.approx(float(saved[row["path"]]["prob_tumor"]), abs=2e-6)
        assert row["label"] == ("Healthy", "Tumor")[int(saved[row["path"]]["label"])]
        assert row["predicted"] == ("Healthy", "Tumor")[int(saved[row["path"]]["predicted"])]  # the run's decisions
    assert read_csv(run / "evaluation" / "skipped.csv") == []

    # again: the earlier evaluation is kept unless --overwrite
    before = (run / "evaluation" / "evaluation.json").read_bytes()
    assert main(["evaluate", "--run", str(run)]) == 2
    assert "already holds an evaluation" in one_error_line(capsys)
    assert (run / "evaluation" / "evaluation.json").read_bytes() == before


def test_external_folders_are_reported_each_and_pooled(trained_run: Path, tmp_path: Path, capsys):
    own = trained_run.parents[1] / "data"  # the run's whole data folder, as an external one
    other = write_blob_dataset(tmp_path / "site", per_class=6, size=60, seed=7)
    (other / "healthy").rename(other / "normal")  # other class-folder names, the training rules decide
    (other / "tumor").rename(other / "glioma")
    (other / "glioma" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (other / "normal" / "moved.jpg").symlink_to(tmp_path / "nowhere.jpg")
    Image.new("L", (30, 30), 40).save(other / "normal" / "small.bmp")
    out = tmp_path / "eval"
    assert main(["evaluate", "--run", str(trained_run), "--data", str(own), str(other), "--out", str(out),
                 "--threshold", "0.4", "--batch-size", "5"]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in table[-4:-1]] == ["data", "site", "pooled"]

    report = json.loads((out / "evaluation.json").read_text())
    datasets = report["datasets"]
    assert report["threshold"] == 0.4 and set(datasets) == {"data", "site", "pooled"}
    assert (datasets["data"]["n"], datasets["data"]["skipped"]) == (120, 0)
    assert (datasets["site"]["n"], datasets["site"]["skipped"]) == (13, 2)
    assert datasets["pooled"]["n"] == 133 and datasets["pooled"]["skipped"] == 2
    for name in ("data", "site", "pooled"):
        assert METRIC_KEYS <= set(datasets[name])
        assert sum(map(sum, datasets[name]["confusion_matrix"])) == datasets[name]["n"]
    assert datasets["pooled"]["confusion_matrix"] == [
        [a + b for a, b in zip(row_a, row_b)]
        for row_a, row_b in zip(datasets["data"]["confusion_matrix"], datasets["site"]["confusion_matrix"])]
    assert datasets["site"]["folder"] == str(other)

    rows = read_csv(out / "predictions.csv")
    assert [sum(row["dataset"] == name for row in rows) for name in ("data", "site")] == [120, 13]
    site = {row["path"]: row for row in rows if row["dataset"] == "site"}
    assert site["normal/small.bmp"]["label"] == "Healthy" and site["glioma/img001.png"]["label"] == "Tumor"
    skipped = {row["path"]: row["reason"] for row in read_csv(out / "skipped.csv")}
    assert skipped.keys() == {"glioma/broken.png", "normal/moved.jpg"}
    assert skipped["normal/moved.jpg"] == "dangling symbolic link"

    # the run's test files, scored inside the whole folder, get the probabilities of the test pass
    saved = {row["path"]: float(row["prob_tumor"]) for row in read_csv(trained_run / "test_predictions.csv")}
    own_rows = {row["path"]: float(row["prob_tumor"]) for row in rows if row["dataset"] == "data"}
    assert all(own_rows[path] == pytest.approx(p, abs=2e-6) for path, p in saved.items())


def test_bad_input_stops_with_one_clear_line(trained_run: Path, tmp_path: Path, capsys):
    assert main(["evaluate", "--run", str(tmp_path / "nope")]) == 2
    assert "run folder not found" in one_error_line(capsys)

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text("{}")
    assert main(["evaluate", "--run", str(unfinished)]) == 2
    assert "not a finished run" in one_error_line(capsys)

    assert main(["evaluate", "--run", str(trained_run), "--data", str(tmp_path / "missing"),
                 "--out", str(tmp_path / "out")]) == 2
    assert "data folder not found" in one_error_line(capsys)

    (tmp_path / "one_class" / "healthy").mkdir(parents=True)
    assert main(["evaluate", "--run", str(trained_run), "--data", str(tmp_path / "one_class"),
                 "--out", str(tmp_path / "out")]) == 2
    assert "expected exactly two class folders" in one_error_line(capsys)

    moved = tmp_path / "moved_run"
    shutil.copytree(trained_run, moved, ignore=shutil.ignore_patterns("evaluation"))
    record = json.loads((moved / "config.json").read_text())
    record["resolved"]["data"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(record))
    assert main(["evaluate", "--run", str(moved)]) == 2
    assert "data folder of" in one_error_line(capsys)
    assert main(["evaluate", "--run", str(moved), "--out", str(moved)]) == 2
    assert "--out must not be a run folder" in one_error_line(capsys)

    assert main(["evaluate", "--run", str(trained_run), "--threshold", "1.5", "--out", str(tmp_path / "out")]) == 2
    assert "--threshold" in one_error_line(capsys)
    assert main(["evaluate"]) == 2
    assert "--run" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_out_is_never_a_run_folder_and_replaces_an_evaluation_only_with_overwrite(trained_run: Path, tmp_path: Path,
                                                                               capsys):
    other = tmp_path / "other_run"
    shutil.copytree(trained_run, other, ignore=shutil.ignore_patterns("evaluation"))
    files = {path.name: path.read_bytes() for path in other.iterdir() if path.is_file()}
    for overwrite in ([], ["--overwrite"]):
        assert main(["evaluate", "--run", str(trained_run), "--out", str(other), *overwrite]) == 2
        assert "--out must not be a run folder" in one_error_line(capsys)
    assert {path.name: path.read_bytes() for path in other.iterdir() if path.is_file()} == files

    (tmp_path / "a_file").write_text("mine")
    assert main(["evaluate", "--run", str(trained_run), "--out", str(tmp_path / "a_file")]) == 2
    assert "is not a folder" in one_error_line(capsys)

    out = tmp_path / "eval"
    out.mkdir()
    (out / "predictions.csv").write_text("an earlier evaluation, cut short\n")
    assert main(["evaluate", "--run", str(trained_run), "--out", str(out)]) == 2
    assert "already holds an evaluation (predictions.csv)" in one_error_line(capsys)
    (out / "evaluation.json").write_text("{}")
    assert main(["evaluate", "--run", str(trained_run), "--out", str(out)]) == 2
    assert "pass --overwrite" in one_error_line(capsys)
    assert (out / "evaluation.json").read_text() == "{}"
    assert main(["evaluate", "--run", str(trained_run), "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "evaluation.json").read_text())["datasets"]["test"]["n"] > 0
    assert read_csv(out / "predictions.csv")[0]["dataset"] == "test"
    assert not (trained_run / "evaluation").exists()
