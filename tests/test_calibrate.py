"""`tumorclf calibrate`: a run's operating point fitted on a site's own folder, stored with its provenance,
refused with one line (nothing written) when the folder cannot resolve the target; and the chosen point
used and named by predict and the model card (`tumorclf.runs.points`)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from conftest import one_error_line, read_csv, write_blob_dataset
from tumorclf.cli.main import main
from tumorclf.data.dataset import load_dataset
from tumorclf.metrics.calibration import threshold_for_sensitivity
from tumorclf.metrics.classification import decide
from tumorclf.runs.folder import RunDir
from tumorclf.runs.points import BUILTIN, chosen
from tumorclf.serving.export import card_markdown, model_card
from tumorclf.serving.predictors import recorded_operating_point
from tumorclf.transforms.pipeline import predict_images

CLASS = ("Healthy", "Tumor")


def copy_run(trained_run: Path, where: Path) -> Path:
    """A private copy of the shared run: calibrate writes into the run folder."""
    shutil.copytree(trained_run, where, ignore=shutil.ignore_patterns("evaluation*"))
    return where


def tumour_folder(root: Path, per_class: int, seed: int = 5) -> Path:
    """A folder holding only a tumour class folder (a collection of tumour slices alone)."""
    write_blob_dataset(root / "both", per_class, seed=seed)
    shutil.copytree(root / "both" / "tumor", root / "tumours" / "tumor")
    return root / "tumours"


def files_sha256(folder: Path) -> str:
    """SHA-256 of the sorted `relative path<TAB>SHA-256 of its bytes` lines, computed here from the files."""
    lines = sorted(f"{path.relative_to(folder).as_posix()}\t{hashlib.sha256(path.read_bytes()).hexdigest()}"
                   for path in folder.rglob("*") if path.is_file())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(path.relative_to(run)): path.read_bytes() for path in run.rglob("*") if path.is_file()}


def test_a_site_point_is_stored_with_its_provenance_and_replaced_only_with_overwrite(trained_run: Path,
                                                                                      tmp_path: Path, capsys):
    run = copy_run(trained_run, tmp_path / "run")
    site = write_blob_dataset(tmp_path / "site_a", per_class=25, seed=5)
    assert main(["calibrate", "--run", str(run), "--data", str(site), "--batch-size", "5"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith("operating point site_a: threshold "), printed
    assert "on the folder: sensitivity " in printed[0] and ", specificity " in printed[0]
    assert printed[0].endswith(f"stored in {run / 'operating_points.json'}")

    stored = json.loads((run / "operating_points.json").read_text())
    assert stored["selected"] is None and set(stored["points"]) == {"site_a"}
    entry = stored["points"]["site_a"]
    provenance = entry["provenance"]
    point = RunDir(run).operating_point()
    assert provenance["folder"] == str(site.resolve()) and provenance["slices"] == {"Healthy": 25, "Tumor": 25}
    assert provenance["target_sensitivity"] == entry["target_sensitivity"] == point.target_sensitivity  # the run's
    assert provenance["files_sha256"] == files_sha256(site) and provenance["tumorclf"]
    assert datetime.fromisoformat(provenance["created_utc"]).utcoffset().total_seconds() == 0
    assert entry["temperature"] == point.temperature  # the run's validation temperature, kept

    # the threshold is threshold_for_sensitivity on the folder's calibrated P(Tumor)
    dataset = load_dataset(site, 48, one_class=True)
    raw = predict_images(RunDir(run).load_model(), dataset.images(), dataset.labels, 5, "test")[:, 1]
    calibrated = point.calibrate(raw)
    assert entry["threshold"] == pytest.approx(threshold_for_sensitivity(dataset.labels, calibrated, 0.95), rel=1e-5)
    decided = decide(calibrated, entry["threshold"])
    assert entry["sensitivity"] == pytest.approx(np.mean(decided[dataset.labels == 1])) and entry["sensitivity"] >= 0.95
    assert entry["specificity"] == pytest.approx(np.mean(decided[dataset.labels == 0] == 0))
    assert chosen(RunDir(run)).name == "validation"  # stored, not selected

    # evaluate reports it beside the run's own points, on every folder: here the site's own, where it was fitted
    assert main(["evaluate", "--run", str(run), "--data", str(site), "--out", str(tmp_path / "eval"),
                 "--bootstrap", "20"]) == 0
    points = json.loads((tmp_path / "eval" / "evaluation.json").read_text())["datasets"]["site_a"]["operating_points"]
    assert set(points) == {*BUILTIN[1:], "target_sensitivity", "site_a"}
    assert points["site_a"]["threshold"] == entry["threshold"]
    assert points["site_a"]["sensitivity"]["value"] == pytest.approx(entry["sensitivity"])
    assert f"at site_a {entry['threshold']:.3f}: sensitivity " in capsys.readouterr().out

    # an existing name is replaced only with --overwrite
    before = (run / "operating_points.json").read_bytes()
    assert main(["calibrate", "--run", str(run), "--data", str(site), "--target-sensitivity", "0.9"]) == 2
    assert "already has an operating point 'site_a'" in one_error_line(capsys)
    assert (run / "operating_points.json").read_bytes() == before
    assert main(["calibrate", "--run", str(run), "--data", str(site), "--target-sensitivity", "0.9",
                 "--overwrite"]) == 0
    assert json.loads((run / "operating_points.json").read_text())["points"]["site_a"]["target_sensitivity"] == 0.9


def test_folders_that_cannot_resolve_the_target_are_refused_with_one_line_and_nothing_written(
        trained_run: Path, tmp_path: Path, capsys):
    run = copy_run(trained_run, tmp_path / "run")
    before = snapshot(run)
    few = write_blob_dataset(tmp_path / "few", per_class=10, seed=6)
    healthy_only = tmp_path / "healthy_only"
    shutil.copytree(few / "healthy", healthy_only / "healthy")
    site = write_blob_dataset(tmp_path / "site", per_class=25, seed=7)
    cases = [(["--data", str(few)], "has 10 tumour slices; sensitivity 0.95 needs at least 20"),
             (["--data", str(site), "--target-sensitivity", "0.99"], "has 25 tumour slices; sensitivity 0.99 needs "
                                                                     "at least 100"),
             (["--data", str(healthy_only)], "has no tumour slices"),
             (["--data", str(site), "--name", "youden"], "none of " + ", ".join(BUILTIN)),
             (["--data", str(site), "--target-sensitivity", "1"], "--target-sensitivity must be in (0, 1)")]
    for flags, message in cases:
        assert main(["calibrate", "--run", str(run), *flags]) == 2
        assert message in one_error_line(capsys), flags
    assert snapshot(run) == before


def test_a_one_class_point_selected_is_what_predict_and_the_model_card_apply(trained_run: Path, tmp_path: Path,
                                                                             capsys, caplog):
    run = copy_run(trained_run, tmp_path / "run")
    folder = tumour_folder(tmp_path, per_class=25)
    seen = next(row["path"] for row in read_csv(run / "split.csv") if row["split"] == "train" and row["label"] == "1")
    shutil.copy(RunDir(run).data_root() / seen, folder / "tumor" / f"copy{Path(seen).suffix}")
    caplog.set_level(logging.INFO, logger="tumorclf")
    assert main(["calibrate", "--run", str(run), "--data", str(folder), "--name", "site_b", "--select"]) == 0
    printed = capsys.readouterr().out
    assert "specificity n/a (no healthy slices)" in printed and printed.strip().endswith("(selected)")
    entry = json.loads((run / "operating_points.json").read_text())["points"]["site_b"]
    assert entry["provenance"]["slices"] == {"Healthy": 0, "Tumor": 26} and entry["specificity"] is None
    assert entry["provenance"]["contaminated"] >= 1 and "copies of run's training or validation files" in caplog.text
    validation = RunDir(run).operating_point()
    assert chosen(RunDir(run)).threshold == entry["threshold"]

    # predict applies the selected point and names it
    images = write_blob_dataset(tmp_path / "images", per_class=4, seed=8)
    assert main(["predict", "--model-file", str(run / "best.keras"), "--inputs", str(images), "--out",
                 str(tmp_path / "p"), "--no-gate"]) == 0
    assert "operating point site_b: threshold" in caplog.text
    assert "fitted on tumours (0 Healthy, 26 Tumor)" in caplog.text
    rows = read_csv(tmp_path / "p" / "predictions.csv")
    prob = np.array([float(row["prob_tumor"]) for row in rows])
    sure = np.abs(prob - entry["threshold"]) > 1e-5
    assert np.array_equal(np.array([CLASS.index(row["predicted"]) for row in rows])[sure],
                          decide(prob, entry["threshold"])[sure])

    # --operating-point picks another of the run's points; an unknown name lists them
    recorded = recorded_operating_point(run / "best.keras", point_name="youden")
    assert (recorded.temperature, recorded.threshold) == (validation.temperature, validation.youden_threshold)
    assert recorded.description.startswith("operating point youden: ")
    assert main(["predict", "--model-file", str(run / "best.keras"), "--inputs", str(images), "--operating-point",
                 "nope"]) == 2
    assert ("has no operating point 'nope'; it has: validation, high_sensitivity, youden, default_0.5, site_b"
            in one_error_line(capsys))
    assert main(["predict", "--model-file", str(run / "best.keras"), "--inputs", str(images), "--operating-point",
                 "youden", "--threshold", "0.3"]) == 2
    assert "give --threshold or --operating-point, not both" in one_error_line(capsys)

    # the model card names the point it was made with; an export carries that one only
    card = model_card(RunDir(run))
    assert card["threshold"] == entry["threshold"] and card["threshold_source"] == "operating_points.json"
    assert card["operating_point_in_use"]["name"] == "site_b"
    assert card["operating_point_in_use"]["provenance"]["files_sha256"] == entry["provenance"]["files_sha256"]
    assert "This export decides at the operating point site_b: threshold" in card_markdown(card)
    high = model_card(RunDir(run), point_name="high_sensitivity")
    assert high["operating_point_in_use"]["name"] == "high_sensitivity"
    assert high["operating_point_in_use"]["description"].endswith("for sensitivity >= 0.99")
    export = tmp_path / "export"
    export.mkdir()
    shutil.copy(run / "best.keras", export / "model.keras")
    (export / "model_card.json").write_text(json.dumps(high))
    recorded = recorded_operating_point(export / "model.keras")
    assert recorded.threshold == high["threshold"] and recorded.description.startswith("operating point high_sens")
    assert recorded_operating_point(export / "model.keras", point_name="high_sensitivity") == recorded
    assert main(["predict", "--model-file", str(export / "model.keras"), "--inputs", str(images),
                 "--operating-point", "site_b"]) == 2
    assert "carries no operating point 'site_b'; it has: high_sensitivity" in one_error_line(capsys)


def test_export_and_the_page_apply_and_name_the_point_asked_for(trained_run: Path, tmp_path: Path):
    from tumorclf.serving.predictors import SavedModelPredictor
    from tumorclf.serving.web import create_app

    run = copy_run(trained_run, tmp_path / "run")
    high = chosen(RunDir(run), "high_sensitivity")
    out = tmp_path / "export"
    assert main(["export", "--run", str(run), "--out", str(out), "--operating-point", "high_sensitivity"]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["threshold"] == high.threshold and card["operating_point_in_use"]["description"] == high.describe()
    import tensorflow as tf

    assert SavedModelPredictor(tf.saved_model.load(str(out)), out).operating_point == (high.temperature,
                                                                                      high.threshold)
    about = create_app(out).test_client().get("/api/model").get_json()["operating_point"]
    assert about["threshold"] == high.threshold and about["description"].startswith("operating point high_sens")
    about = create_app(run / "best.keras", point_name="youden").test_client().get("/api/model").get_json()
    assert about["operating_point"]["description"].startswith("operating point youden: threshold ")
    assert about["card"]["threshold"] == RunDir(run).operating_point().youden_threshold


def test_named_points_of_a_run_folder_and_their_refusals(tmp_path: Path):
    from tumorclf.metrics.calibration import OperatingPoint
    from tumorclf.runs.folder import RunError
    from tumorclf.runs.points import available

    run = RunDir(tmp_path)
    run.write_operating_point(OperatingPoint(2.0, 0.6, 0.95, 0.5, "validation", 10, {}, 0.4))
    provenance = {"folder": "/somewhere/site", "slices": {"Healthy": 1, "Tumor": 30}, "target_sensitivity": 0.95}
    run.write_calibrated_points({"selected": "site", "points": {
        "site": {"threshold": 0.3, "temperature": 2.0, "provenance": provenance}}})
    points = available(run)
    assert {name: p.threshold for name, p in points.items()} == {
        "validation": 0.6, "high_sensitivity": 0.4, "youden": 0.5, "default_0.5": 0.5, "site": 0.3}
    assert {p.temperature for p in points.values()} == {2.0}  # one calibrated scale per run
    assert chosen(run).describe() == ("operating point site: threshold 0.3 on calibrated P(Tumor), fitted on site "
                                      "(1 Healthy, 30 Tumor) for sensitivity >= 0.95")  # no folder of the disk
    assert chosen(run, "validation").describe().endswith("fitted on validation (10 slices) for sensitivity >= 0.95")

    run.write_operating_point(OperatingPoint(1.5, 0.6, 0.95, 0.5, "validation", 10, {}, 0.4))  # refitted since
    with pytest.raises(RunError, match="fitted at temperature 2.0, the run's is now 1.5; calibrate it again"):
        chosen(run)
    run.calibrated_points_file.write_text(json.dumps({"selected": "gone", "points": {}}))
    with pytest.raises(RunError, match="selected 'gone' is none of its points"):
        chosen(run)
