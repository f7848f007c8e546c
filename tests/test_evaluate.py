"""`tumorclf evaluate`: the run's own test split again, external class folders, the operating point fitted on
validation only, the contamination check, group-bootstrap intervals, and clean refusals."""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import blob_image, one_error_line, read_csv, write_blob_dataset
from tumorclf.metrics.bootstrap import METRICS, bootstrap_intervals
from tumorclf.metrics.calibration import (HIGH_SENSITIVITY_TARGET, OperatingPoint, apply_temperature,
                                          fit_operating_point, threshold_for_sensitivity)
from tumorclf.cli.main import main
from tumorclf.evaluation.evaluate import dataset_report, table
from tumorclf.metrics.classification import confusion_matrix, decide, roc_auc
from tumorclf.gate.quality_gate import REASONS

BOOTSTRAP = ["--bootstrap", "200"]
REPORT_KEYS = {"n", "groups", "threshold", "skipped", "folder", "contaminated", "clean", "confusion_matrix",
               "operating_points", "ece_uncalibrated", "brier_uncalibrated", *METRICS}
CLASS = ("Healthy", "Tumor")


def assert_auc_of_rounded(auc: float, labels: np.ndarray, rounded: np.ndarray) -> None:
    """`auc` is the AUC of probabilities that predictions.csv holds rounded to 6 decimals: rounding keeps every
    strict order and may create ties, so it lies between the shares of (tumour, healthy) pairs ordered strictly
    and ordered or tied."""
    pairs = rounded[labels == 1][:, None] - rounded[labels == 0][None, :]
    assert np.mean(pairs > 0) - 1e-9 <= auc <= np.mean(pairs >= 0) + 1e-9, (auc, np.mean(pairs > 0),
                                                                           np.mean(pairs >= 0))


def table_lines(out: str) -> list[str]:
    """The printed lines without the gate's and the high-sensitivity point's lines under each dataset."""
    return [line for line in out.strip().splitlines() if not line.startswith(("  gate: ", "  at high_sensitivity "))]


def copy_run(trained_run: Path, where: Path) -> Path:
    """A private copy of the shared run, for anything that may write into the run folder."""
    shutil.copytree(trained_run, where, ignore=shutil.ignore_patterns("evaluation"))
    return where


def value(metric: dict) -> float:
    assert set(metric) == {"value", "ci95"}, metric
    return metric["value"]


def assert_intervals(entry: dict) -> None:
    """Every metric is {"value", "ci95": [lo, hi]} with lo <= hi."""
    for name in (*METRICS, "ece_uncalibrated", "brier_uncalibrated"):
        metric = entry[name]
        assert set(metric) == {"value", "ci95"}, name
        if metric["value"] is not None:
            lo, hi = metric["ci95"]
            assert lo <= hi, name


def val_rows(run: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = read_csv(run / "val_predictions.csv")
    return (np.array([int(row["label"]) for row in rows]), np.array([float(row["prob_tumor"]) for row in rows]))


def assert_calibrated(rows: list[dict[str, str]], temperature: float, threshold: float) -> None:
    """prob_tumor is the raw P(Tumor) at `temperature` and predicted is it decided at `threshold`. Both columns
    are rounded to 6 decimals, so the calibrated value is bounded by that of the raw value's rounding interval
    (temperature scaling is monotonic)."""
    raw = np.array([float(row["prob_tumor_raw"]) for row in rows])
    calibrated = np.array([float(row["prob_tumor"]) for row in rows])
    low, high = apply_temperature(raw - 5e-7, temperature), apply_temperature(raw + 5e-7, temperature)
    assert np.all((low - 5e-7 <= calibrated) & (calibrated <= high + 5e-7)), (raw, calibrated)
    sure = np.abs(calibrated - threshold) > 1e-6
    assert np.array_equal(np.array([CLASS.index(row["predicted"]) for row in rows])[sure],
                          decide(calibrated, threshold)[sure])


def test_test_split_again_equals_the_runs_metrics(trained_run: Path, tmp_path: Path, capsys):
    run = copy_run(trained_run, tmp_path / "run")  # the default --out writes into the run folder
    point = OperatingPoint.from_dict(json.loads((trained_run / "operating_point.json").read_text()))
    expected = json.loads((trained_run / "metrics.json").read_text())
    split = {row["path"]: row for row in read_csv(trained_run / "split.csv")}
    saved = {row["path"]: row for row in read_csv(trained_run / "test_predictions.csv")}

    # by default: the run's operating point (fitted on validation), applied to calibrated P(Tumor)
    assert main(["evaluate", "--run", str(run), *BOOTSTRAP]) == 0
    printed = capsys.readouterr().out
    out = table_lines(printed)
    assert out[-1] == str(run / "evaluation" / "evaluation.json")
    assert [line.split()[0] for line in out[-3:-1]] == ["dataset", "test"]  # one dataset: no pooled entry
    assert printed.strip().splitlines()[-2].startswith("  gate: rejected ")  # the run has a gate: its line
    report = json.loads((run / "evaluation" / "evaluation.json").read_text())
    assert report["run"] == str(run)
    assert report["threshold"] == point.threshold and report["temperature"] == point.temperature
    assert report["operating_point"]["saved_in_run"] is True and report["bootstrap"]["resamples"] == 200
    assert set(report["datasets"]) == {"test"}
    test = report["datasets"]["test"]
    assert REPORT_KEYS <= set(test) and test["skipped"] == 0 and test["n"] == expected["n"]
    assert test["threshold"] == point.threshold
    assert test["operating_points"]["target_sensitivity"]["threshold"] == point.threshold
    assert test["operating_points"]["youden"]["threshold"] == point.youden_threshold
    assert test["operating_points"]["default_0.5"]["threshold"] == 0.5
    high = test["operating_points"]["high_sensitivity"]  # the highest reaching 0.99 on validation: never above
    assert high["threshold"] == point.high_sensitivity_threshold <= point.threshold
    assert high["sensitivity"]["value"] >= test["sensitivity"]["value"]
    assert f"  at high_sensitivity {high['threshold']:.3f}: sensitivity " in printed
    assert_intervals(test)
    rows = read_csv(run / "evaluation" / "predictions.csv")
    assert list(rows[0]) == ["dataset", "path", "label", "prob_tumor_raw", "prob_tumor", "predicted", "group",
                             "contaminated", "quality", "ood_score"]
    assert_calibrated(rows, point.temperature, point.threshold)
    # the run's own test slices: nothing blank, colour or too small; what the gate rejects is in its counts
    gate = test["gate"]
    assert {key: gate["rejected"][key] for key in ("too_small", "blank", "not_grayscale_mri")} == \
        dict.fromkeys(("too_small", "blank", "not_grayscale_mri"), 0)
    assert gate["rejected_total"] == sum(row["quality"] != "ok" for row in rows) == test["n"] - gate["accepted"]
    threshold = report["gate"]["ood_threshold"]
    assert all((row["quality"] == "out_of_distribution") == (float(row["ood_score"]) > threshold) for row in rows)

    # bootstrap groups: the duplicate groups split.csv records
    assert [row["group"] for row in rows] == [split[row["path"]]["group"] for row in rows]
    assert test["groups"] == len({split[path]["group"] for path in saved})
    # the own test split holds no copy of a train/val image (the grouped split)
    assert test["contaminated"] == 0 and test["clean"] == {"n": test["n"], "same_as_all": True}
    assert all(row["contaminated"] == "" for row in rows)
    assert read_csv(run / "evaluation" / "contaminated.csv") == []
    assert read_csv(run / "evaluation" / "skipped.csv") == []
    for name in ("reliability.png", "roc.png"):
        assert (run / "evaluation" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # again: the earlier evaluation is kept unless --overwrite
    before = (run / "evaluation" / "evaluation.json").read_bytes()
    assert main(["evaluate", "--run", str(run), *BOOTSTRAP]) == 2
    assert "already holds an evaluation" in one_error_line(capsys)
    assert (run / "evaluation" / "evaluation.json").read_bytes() == before

    # at 0.5 it is the run's metrics.json: temperature scaling keeps 0.5 at 0.5 and the order of the scores
    assert main(["evaluate", "--run", str(run), "--threshold", "0.5", "--overwrite", *BOOTSTRAP]) == 0
    capsys.readouterr()
    report = json.loads((run / "evaluation" / "evaluation.json").read_text())
    assert report["threshold"] == expected["threshold"] == 0.5
    test = report["datasets"]["test"]
    assert test["confusion_matrix"] == expected["confusion_matrix"] and test["n"] == expected["n"]
    for key, theirs in (("accuracy", "accuracy"), ("precision", "precision"), ("sensitivity", "recall"),
                        ("f1", "f1"), ("auc", "auc")):
        assert value(test[key]) == pytest.approx(expected[theirs], abs=1e-6), key
    assert value(test["sensitivity"]) == pytest.approx(expected["per_class_accuracy"]["tumor"])
    assert value(test["specificity"]) == pytest.approx(expected["per_class_accuracy"]["healthy"])
    assert value(test["balanced_accuracy"]) == pytest.approx(
        (expected["per_class_accuracy"]["healthy"] + expected["per_class_accuracy"]["tumor"]) / 2)
    assert 0 <= value(test["brier"]) <= 1 and 0 <= value(test["ece"]) <= 1

    rows = read_csv(run / "evaluation" / "predictions.csv")
    assert len(rows) == len(saved) == expected["n"]
    for row in rows:
        assert row["dataset"] == "test"
        assert float(row["prob_tumor_raw"]) == pytest.approx(float(saved[row["path"]]["prob_tumor"]), abs=2e-6)
        assert row["label"] == CLASS[int(saved[row["path"]]["label"])]
        assert row["predicted"] == CLASS[int(saved[row["path"]]["predicted"])]  # the run's decisions
        assert row["group"] == split[row["path"]]["group"]


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
                 "--threshold", "0.4", "--batch-size", "5", *BOOTSTRAP]) == 0
    table = table_lines(capsys.readouterr().out)
    assert [line.split()[0] for line in table[-4:-1]] == ["data", "site", "pooled"]

    report = json.loads((out / "evaluation.json").read_text())
    datasets = report["datasets"]
    assert report["threshold"] == 0.4 and set(datasets) == {"data", "site", "pooled"}
    assert (datasets["data"]["n"], datasets["data"]["skipped"]) == (120, 0)
    assert (datasets["site"]["n"], datasets["site"]["skipped"]) == (13, 2)
    assert datasets["pooled"]["n"] == 133 and datasets["pooled"]["skipped"] == 2
    for name in ("data", "site", "pooled"):
        assert REPORT_KEYS <= set(datasets[name]) and datasets[name]["threshold"] == 0.4
        assert_intervals(datasets[name])
        assert sum(map(sum, datasets[name]["confusion_matrix"])) == datasets[name]["n"]
    assert datasets["pooled"]["confusion_matrix"] == [
        [a + b for a, b in zip(row_a, row_b)]
        for row_a, row_b in zip(datasets["data"]["confusion_matrix"], datasets["site"]["confusion_matrix"])]
    assert datasets["pooled"]["contaminated"] == datasets["data"]["contaminated"] + datasets["site"]["contaminated"]
    assert datasets["pooled"]["groups"] <= datasets["data"]["groups"] + datasets["site"]["groups"]
    assert datasets["site"]["folder"] == str(other)

    rows = read_csv(out / "predictions.csv")
    assert [sum(row["dataset"] == name for row in rows) for name in ("data", "site")] == [120, 13]
    site = {row["path"]: row for row in rows if row["dataset"] == "site"}
    assert site["normal/small.bmp"]["label"] == "Healthy" and site["glioma/img001.png"]["label"] == "Tumor"
    assert site["normal/small.bmp"]["quality"] == "blank"  # one gray value; 30 px is not under half of 48
    for reason in REASONS[1:]:  # the pooled gate counts are those of its folders
        assert datasets["pooled"]["gate"]["rejected"][reason] == \
            datasets["data"]["gate"]["rejected"][reason] + datasets["site"]["gate"]["rejected"][reason]
    skipped = {row["path"]: row["reason"] for row in read_csv(out / "skipped.csv")}
    assert skipped.keys() == {"glioma/broken.png", "normal/moved.jpg"}
    assert skipped["normal/moved.jpg"] == "dangling symbolic link"

    # the run's own data folder: exactly its train and val files are byte copies of what it trained on
    split = {row["path"]: row["split"] for row in read_csv(trained_run / "split.csv")}
    data_rows = {row["path"]: row for row in rows if row["dataset"] == "data"}
    assert {path: row["contaminated"] for path, row in data_rows.items()} == \
        {path: "" if where == "test" else "exact" for path, where in split.items()}
    assert datasets["data"]["contaminated"] == sum(where != "test" for where in split.values())
    assert datasets["data"]["clean"]["n"] == sum(where == "test" for where in split.values())

    # the run's test files, scored inside the whole folder, get the probabilities of the test pass
    saved = {row["path"]: float(row["prob_tumor"]) for row in read_csv(trained_run / "test_predictions.csv")}
    assert all(float(data_rows[path]["prob_tumor_raw"]) == pytest.approx(p, abs=2e-6) for path, p in saved.items())


def test_the_operating_point_is_fitted_on_validation_only(trained_run: Path, tmp_path: Path, capsys):
    run = copy_run(trained_run, tmp_path / "run")
    original = json.loads((trained_run / "operating_point.json").read_text())
    split = read_csv(trained_run / "split.csv")
    # train fitted its operating point on exactly its validation predictions
    assert [row["path"] for row in read_csv(run / "val_predictions.csv")] == \
        [row["path"] for row in split if row["split"] == "val"]
    assert fit_operating_point(*val_rows(run), original["target_sensitivity"]).to_dict() == original

    # a run from before operating points: its validation split is predicted, and the point fitted and saved at
    # the run's target sensitivity (another --target-sensitivity is for this evaluation only)
    (run / "operating_point.json").unlink()
    (run / "val_predictions.csv").unlink()
    assert main(["evaluate", "--run", str(run), "--out", str(tmp_path / "old"), "--bootstrap", "0",
                 "--target-sensitivity", "0.5"]) == 0
    capsys.readouterr()
    recreated = {row["path"]: row for row in read_csv(run / "val_predictions.csv")}
    for row in read_csv(trained_run / "val_predictions.csv"):
        assert recreated[row["path"]]["label"] == row["label"]
        assert float(recreated[row["path"]]["prob_tumor"]) == pytest.approx(float(row["prob_tumor"]), abs=2e-6)
    refitted = json.loads((run / "operating_point.json").read_text())
    assert refitted["temperature"] == pytest.approx(original["temperature"], rel=1e-3)
    assert refitted["target_sensitivity"] == original["target_sensitivity"] == 0.95
    assert refitted["fitted_on"] == "validation" and refitted["n"] == original["n"]
    report = json.loads((tmp_path / "old" / "evaluation.json").read_text())
    assert report["operating_point"] == {**fit_operating_point(*val_rows(run), 0.5).to_dict(), "saved_in_run": False}
    assert all(report["datasets"]["test"][name]["ci95"] is None for name in METRICS)  # --bootstrap 0

    # crafted validation predictions, no saved point: the point is fitted on them, and saved
    labels = np.array([int(row["label"]) for row in read_csv(run / "val_predictions.csv")])
    rng = np.random.default_rng(5)
    # overlapping classes: a temperature well above 1, far from what the trained model's own test predictions give
    crafted = np.where(labels == 1, rng.uniform(0.10, 0.99, len(labels)), rng.uniform(0.01, 0.90, len(labels)))
    crafted = crafted.round(6)
    rows = read_csv(run / "val_predictions.csv")
    with open(run / "val_predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "prob_tumor"])
        writer.writerows((row["path"], row["label"], repr(float(p))) for row, p in zip(rows, crafted))
    (run / "operating_point.json").unlink()
    want = fit_operating_point(labels, crafted, original["target_sensitivity"])
    test = read_csv(run / "test_predictions.csv")
    leaked = fit_operating_point([int(row["label"]) for row in test], [float(row["prob_tumor"]) for row in test],
                                 original["target_sensitivity"], fitted_on="test")
    assert abs(leaked.temperature - want.temperature) > 0.05 and leaked.threshold != want.threshold
    assert main(["evaluate", "--run", str(run), "--out", str(tmp_path / "crafted"), "--bootstrap", "50"]) == 0
    capsys.readouterr()
    report = json.loads((tmp_path / "crafted" / "evaluation.json").read_text())
    on_disk = json.loads((run / "operating_point.json").read_text())
    assert on_disk == want.to_dict() and on_disk["n"] == len(labels)
    assert report["operating_point"] == {**want.to_dict(), "saved_in_run": True}
    assert (report["threshold"], report["temperature"]) == (want.threshold, want.temperature)
    assert (report["threshold"], report["temperature"]) != (leaked.threshold, leaked.temperature)
    assert report["datasets"]["test"]["operating_points"]["youden"]["threshold"] == want.youden_threshold
    assert_calibrated(read_csv(tmp_path / "crafted" / "predictions.csv"), want.temperature, want.threshold)

    # another target sensitivity: refitted on validation for this evaluation only, the run is left as it is
    saved_bytes = (run / "operating_point.json").read_bytes()
    other = fit_operating_point(labels, crafted, 0.5)
    assert other.threshold != want.threshold
    assert main(["evaluate", "--run", str(run), "--out", str(tmp_path / "half"), "--target-sensitivity", "0.5",
                 "--bootstrap", "50"]) == 0
    assert "sensitivity >= 0.5 on validation" in capsys.readouterr().out
    report = json.loads((tmp_path / "half" / "evaluation.json").read_text())
    assert report["operating_point"] == {**other.to_dict(), "saved_in_run": False}
    assert report["threshold"] == other.threshold
    assert (run / "operating_point.json").read_bytes() == saved_bytes

    # a saved operating point is applied unchanged: neither refitted nor rewritten (no validation needed)
    mine = OperatingPoint(temperature=2.5, threshold=0.7, target_sensitivity=original["target_sensitivity"],
                          youden_threshold=0.4, fitted_on="validation", n=3, validation={})
    (run / "operating_point.json").write_text(json.dumps(mine.to_dict()))
    saved_bytes = (run / "operating_point.json").read_bytes()
    (run / "val_predictions.csv").unlink()
    assert main(["evaluate", "--run", str(run), "--out", str(tmp_path / "saved"), "--bootstrap", "50"]) == 0
    capsys.readouterr()
    report = json.loads((tmp_path / "saved" / "evaluation.json").read_text())
    assert report["operating_point"] == {**mine.to_dict(), "saved_in_run": True}
    assert (report["threshold"], report["temperature"]) == (0.7, 2.5)
    assert (run / "operating_point.json").read_bytes() == saved_bytes
    assert not (run / "val_predictions.csv").exists()
    assert_calibrated(read_csv(tmp_path / "saved" / "predictions.csv"), 2.5, 0.7)


def test_an_operating_point_from_before_the_high_sensitivity_point_gets_it_for_the_report(trained_run: Path,
                                                                                          tmp_path: Path, capsys):
    run = copy_run(trained_run, tmp_path / "run")
    old = json.loads((run / "operating_point.json").read_text())
    del old["high_sensitivity_threshold"]
    (run / "operating_point.json").write_text(json.dumps(old))
    before = (run / "operating_point.json").read_bytes()
    assert main(["evaluate", "--run", str(run), "--out", str(tmp_path / "eval"), "--bootstrap", "0"]) == 0
    capsys.readouterr()
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    labels, raw = val_rows(run)
    point = OperatingPoint.from_dict(old)
    expected = threshold_for_sensitivity(labels, point.calibrate(raw), HIGH_SENSITIVITY_TARGET)
    assert report["datasets"]["test"]["operating_points"]["high_sensitivity"]["threshold"] == expected
    assert (run / "operating_point.json").read_bytes() == before  # fitted for the report, the file unchanged


def test_intervals_resample_duplicate_groups_not_files():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 0, 1, 1, 0], 10)  # six slices, ten near-copies of each
    raw = np.repeat(np.array([0, 1, 0, 1, 1, 0]) * 0.3 + rng.uniform(0, 0.7, 6), 10) + rng.uniform(0, 0.01, 60)
    point = OperatingPoint(temperature=1.0, threshold=0.5, target_sensitivity=0.95, youden_threshold=0.5,
                           fitted_on="validation", n=60, validation={})
    one_group = dataset_report(labels, raw, np.zeros(len(labels), dtype=np.int64), point, 0.5, 200, 0)
    per_file = dataset_report(labels, raw, np.arange(len(labels)), point, 0.5, 200, 0)
    six_groups = dataset_report(labels, raw, np.arange(len(labels)) // 10, point, 0.5, 200, 0)
    assert (one_group["groups"], per_file["groups"], six_groups["groups"]) == (1, 60, 6)
    for name in ("accuracy", "sensitivity", "brier", "auc"):
        assert one_group[name]["value"] == per_file[name]["value"] == six_groups[name]["value"]
    # one group: every resample is the whole set (the same mean, summed in another order: equal to rounding);
    # ten copies per group: as wide as six files, wider than 60
    assert one_group["brier"]["ci95"] == pytest.approx([one_group["brier"]["value"]] * 2, rel=1e-12, abs=0)
    width = {name: report["brier"]["ci95"][1] - report["brier"]["ci95"][0]
             for name, report in (("per_file", per_file), ("six_groups", six_groups))}
    assert width["six_groups"] > 1.5 * width["per_file"] > 0
    assert dataset_report(labels, raw, np.arange(len(labels)), point, 0.5, 0, 0)["accuracy"]["ci95"] is None


def test_auc_is_the_raw_scores_even_where_a_small_temperature_saturates_them():
    rng = np.random.default_rng(1)
    # a strongly sharpening temperature (a fit never keeps one at its bound, but a saved file may hold one)
    point = OperatingPoint(0.06, 0.5, 0.95, 0.5, "validation", 40, {})
    labels = np.repeat([0, 1], 30)
    raw = np.where(labels == 1, rng.uniform(0.3, 0.999, 60), rng.uniform(0.001, 0.99, 60))
    assert roc_auc(labels, point.calibrate(raw)) != roc_auc(labels, raw)  # float64 ties at 1.0
    report = dataset_report(labels, raw, np.arange(60), point, 0.5, 100, 0)
    assert report["auc"]["value"] == roc_auc(labels, raw)
    assert report["auc"] == bootstrap_intervals(labels, raw, np.arange(60), 0.5, 100, 0)["auc"]
    assert report["confusion_matrix"] == confusion_matrix(labels, decide(raw, 0.5)).tolist()  # 0.5 stays 0.5


def unrelated_images(size: int) -> list[np.ndarray]:
    """Checkerboards, stripes and gradients: nothing like the blob slices the run trained on."""
    yy, xx = np.mgrid[:size, :size]
    patterns = [((yy // 4 + xx // 4) % 2) * 255, ((yy // 8 + xx // 8) % 2) * 255, (xx // 6 % 2) * 255,
                ((xx + yy) // 5 % 2) * 255, xx * 255 / (size - 1), 255 - (xx + yy) * 255 / (2 * size - 2)]
    return [np.repeat(np.asarray(p, dtype=np.uint8)[..., None], 3, axis=-1) for p in patterns]


def test_contamination_check_finds_exact_and_near_copies_of_training_images(trained_run: Path, tmp_path: Path,
                                                                           capsys):
    data = trained_run.parents[1] / "data"
    train = [row for row in read_csv(trained_run / "split.csv") if row["split"] == "train"]
    pngs = [row for row in train if row["path"].endswith(".png")]
    jpgs = [row for row in train if row["path"].endswith(".jpg")]
    planted = tmp_path / "planted"
    for folder in ("healthy", "tumor"):
        (planted / folder).mkdir(parents=True)
    kinds: dict[str, str] = {}
    for row in pngs[:2] + jpgs[:2]:  # byte copies
        name = f"{Path(row['path']).parent.name}/exact_{Path(row['path']).name}"
        shutil.copyfile(data / row["path"], planted / name)
        kinds[name] = "exact"
    for row in pngs[2:4] + pngs[-2:]:  # PNG re-encoded as JPEG at quality 85
        name = f"{Path(row['path']).parent.name}/q85_{Path(row['path']).stem}.jpg"
        Image.open(data / row["path"]).convert("RGB").save(planted / name, "JPEG", quality=85)
        kinds[name] = "near"
    for row in jpgs[2:4]:  # JPEG slightly enlarged, saved as PNG
        name = f"{Path(row['path']).parent.name}/big_{Path(row['path']).stem}.png"
        Image.open(data / row["path"]).convert("RGB").resize((52, 52), Image.Resampling.BILINEAR).save(planted / name)
        kinds[name] = "near"
    for i, image in enumerate(unrelated_images(48)):
        name = f"{('healthy', 'tumor')[i % 2]}/pattern{i}.png"
        Image.fromarray(image).save(planted / name)
        kinds[name] = ""
    for name in kinds:
        assert (planted / name).read_bytes() != b""
    copied = {name for name, kind in kinds.items() if kind == "exact"}
    assert all((planted / name).read_bytes() == (data / name.replace("exact_", "")).read_bytes() for name in copied)

    out = tmp_path / "eval"
    assert main(["evaluate", "--run", str(trained_run), "--data", str(planted), "--out", str(out), *BOOTSTRAP]) == 0
    assert "planted" in capsys.readouterr().out
    rows = read_csv(out / "predictions.csv")
    assert {row["path"]: row["contaminated"] for row in rows} == kinds
    listed = {row["path"]: row for row in read_csv(out / "contaminated.csv")}
    assert listed.keys() == {name for name, kind in kinds.items() if kind}
    train_paths = {row["path"] for row in train}
    for name, row in listed.items():
        assert row["dataset"] == "planted" and row["kind"] == kinds[name]
        assert row["train_or_val_file"] in train_paths
        assert 0 <= int(row["hash_distance"]) <= 4
        if row["kind"] == "exact":
            assert row["train_or_val_file"] == name.replace("exact_", "") and row["hash_distance"] == "0"

    report = json.loads((out / "evaluation.json").read_text())
    assert report["contamination_check"] == {"sha256": True, "perceptual_hash_bits": 4, "near_copies": True}
    entry = report["datasets"]["planted"]
    assert entry["n"] == len(kinds) and entry["contaminated"] == 10
    clean = entry["clean"]
    assert clean["n"] == 6 and clean["same_as_all"] is False and set(METRICS) <= set(clean)
    # the clean metrics are those of the clean files alone
    mine = [row for row in rows if row["contaminated"] == ""]
    labels = np.array([CLASS.index(row["label"]) for row in mine])
    predicted = np.array([CLASS.index(row["predicted"]) for row in mine])
    assert value(clean["accuracy"]) == pytest.approx(np.mean(predicted == labels))
    assert value(clean["brier"]) == pytest.approx(np.mean((np.array([float(row["prob_tumor"]) for row in mine])
                                                            - labels) ** 2), abs=1e-5)
    assert_auc_of_rounded(value(clean["auc"]), labels, np.array([float(row["prob_tumor_raw"]) for row in mine]))
    everything = np.array([CLASS.index(row["label"]) == CLASS.index(row["predicted"]) for row in rows])
    assert value(entry["accuracy"]) == pytest.approx(everything.mean())


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

    (tmp_path / "no_class").mkdir()
    assert main(["evaluate", "--run", str(trained_run), "--data", str(tmp_path / "no_class"),
                 "--out", str(tmp_path / "out")]) == 2
    assert "expected one or two class folders" in one_error_line(capsys)
    (tmp_path / "one_class" / "healthy").mkdir(parents=True)
    assert main(["evaluate", "--run", str(trained_run), "--data", str(tmp_path / "one_class"),
                 "--out", str(tmp_path / "out")]) == 2
    assert "holds no files" in one_error_line(capsys)
    (tmp_path / "one_class" / "healthy" / "notes.txt").write_text("not an image")
    assert main(["evaluate", "--run", str(trained_run), "--data", str(tmp_path / "one_class"),
                 "--out", str(tmp_path / "out")]) == 2
    assert "no readable images in" in one_error_line(capsys)

    moved = copy_run(trained_run, tmp_path / "moved_run")
    record = json.loads((moved / "config.json").read_text())
    record["resolved"]["data"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(record))
    assert main(["evaluate", "--run", str(moved)]) == 2
    assert "data folder of" in one_error_line(capsys)
    assert main(["evaluate", "--run", str(moved), "--out", str(moved)]) == 2
    assert "--out must not be a run folder" in one_error_line(capsys)

    corrupt = copy_run(trained_run, tmp_path / "corrupt_run")
    (corrupt / "operating_point.json").write_text(json.dumps({"temperature": 1.0}))
    assert main(["evaluate", "--run", str(corrupt), "--out", str(tmp_path / "out")]) == 2
    assert "operating_point.json is corrupt" in one_error_line(capsys)

    for flags, message in ((["--threshold", "1.5"], "--threshold"), (["--target-sensitivity", "0"],
                           "--target-sensitivity must be in (0, 1]"), (["--bootstrap", "-1"], "--bootstrap"),
                           (["--batch-size", "0"], "--batch-size"), (["--classes", "a", "b"], "give --data too")):
        assert main(["evaluate", "--run", str(trained_run), *flags, "--out", str(tmp_path / "out")]) == 2
        assert message in one_error_line(capsys)
    assert main(["evaluate"]) == 2
    assert "--run" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_out_is_never_a_run_folder_and_replaces_an_evaluation_only_with_overwrite(trained_run: Path, tmp_path: Path,
                                                                               capsys):
    other = copy_run(trained_run, tmp_path / "other_run")
    files = {path.name: path.read_bytes() for path in other.iterdir() if path.is_file()}
    for overwrite in ([], ["--overwrite"]):
        assert main(["evaluate", "--run", str(trained_run), "--out", str(other), *overwrite]) == 2
        assert "--out must not be a run folder" in one_error_line(capsys)
    assert {path.name: path.read_bytes() for path in other.iterdir() if path.is_file()} == files

    (tmp_path / "a_file").write_text("mine")
    assert main(["evaluate", "--run", str(trained_run), "--out", str(tmp_path / "a_file")]) == 2
    assert "is not a folder" in one_error_line(capsys)

    shared = {path.name: path.read_bytes() for path in trained_run.iterdir() if path.is_file()}
    out = tmp_path / "eval"
    out.mkdir()
    (out / "predictions.csv").write_text("an earlier evaluation, cut short\n")
    assert main(["evaluate", "--run", str(trained_run), "--out", str(out)]) == 2
    assert "already holds an evaluation (predictions.csv)" in one_error_line(capsys)
    (out / "evaluation.json").write_text("{}")
    assert main(["evaluate", "--run", str(trained_run), "--out", str(out)]) == 2
    assert "pass --overwrite" in one_error_line(capsys)
    assert (out / "evaluation.json").read_text() == "{}"
    assert main(["evaluate", "--run", str(trained_run), "--out", str(out), "--overwrite", *BOOTSTRAP]) == 0
    assert json.loads((out / "evaluation.json").read_text())["datasets"]["test"]["n"] > 0
    assert read_csv(out / "predictions.csv")[0]["dataset"] == "test"
    assert {path.name for path in out.iterdir()} == {"evaluation.json", "predictions.csv", "skipped.csv",
                                                    "contaminated.csv", "reliability.png", "roc.png"}
    assert not (trained_run / "evaluation").exists()
    assert {path.name: path.read_bytes() for path in trained_run.iterdir() if path.is_file()} == shared


def test_pooled_groups_span_folders_and_a_folder_counts_once(trained_run: Path, tmp_path: Path, capsys):
    first = write_blob_dataset(tmp_path / "first", per_class=4, size=60, seed=21)
    second = tmp_path / "second"
    shutil.copytree(first, second)  # the same images again: in the pooled bootstrap they are one group each
    out = tmp_path / "eval"
    assert main(["evaluate", "--run", str(trained_run), "--data", str(first), str(second), "--out", str(out),
                 "--bootstrap", "50"]) == 0
    datasets = json.loads((out / "evaluation.json").read_text())["datasets"]
    assert datasets["pooled"]["n"] == 2 * datasets["first"]["n"] == 16
    assert datasets["pooled"]["groups"] == datasets["first"]["groups"] == datasets["second"]["groups"]
    rows = read_csv(out / "predictions.csv")
    assert {row["dataset"] for row in rows} == {"first", "second"}

    capsys.readouterr()
    assert main(["evaluate", "--run", str(trained_run), "--data", str(first), str(tmp_path / "." / "first"),
                 "--out", str(tmp_path / "again")]) == 2
    assert "the same folder more than once" in one_error_line(capsys)


def write_odd_folder(root: Path) -> dict[str, str]:
    """Class folders of blob slices plus images the gate must reject; returns the reason of each planted one."""
    write_blob_dataset(root, per_class=6, size=48, seed=31)
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:48, :48]
    planted = {"healthy/blank.png": (np.full((48, 48, 3), 1, np.uint8), "blank"),
               "healthy/tiny.png": (blob_image(rng, 16, False), "too_small"),
               "tumor/colour.png": (rng.integers(0, 256, (48, 48, 3), dtype=np.uint8), "not_grayscale_mri"),
               "tumor/gray.jpg": (np.full((48, 48, 3), 128, np.uint8), "blank"),
               "tumor/checker.png": (np.repeat((((yy // 4 + xx // 4) % 2) * 255).astype(np.uint8)[..., None], 3, -1),
                                     "out_of_distribution")}
    for name, (pixels, _) in planted.items():
        Image.fromarray(pixels).save(root / name)
    return {name: reason for name, (_, reason) in planted.items()}


def test_the_gate_reports_what_the_model_cannot_assess(trained_run: Path, tmp_path: Path, capsys, caplog):
    odd = tmp_path / "odd"
    planted = write_odd_folder(odd)
    out = tmp_path / "eval"
    assert main(["evaluate", "--run", str(trained_run), "--data", str(odd), "--out", str(out), *BOOTSTRAP]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "evaluation.json").read_text())
    assert report["gate"]["min_side"] == 24 and report["gate"]["ood_threshold"] > 0
    entry = report["datasets"]["odd"]
    rows = read_csv(out / "predictions.csv")
    quality = {row["path"]: row["quality"] for row in rows}
    assert {name: quality[name] for name in planted} == planted
    assert all(quality[row["path"]] in ("ok", "out_of_distribution") for row in rows if row["path"] not in planted)
    gate = entry["gate"]
    assert gate["rejected"] == {reason: sum(q == reason for q in quality.values()) for reason in REASONS[1:]}
    assert gate["rejected"]["blank"] == 2 and gate["rejected"]["too_small"] == 1
    accepted = [row for row in rows if row["quality"] == "ok"]
    assert gate["accepted"] == len(accepted) == entry["n"] - gate["rejected_total"] >= 10
    assert gate["rejection_rate"] == pytest.approx(gate["rejected_total"] / entry["n"])
    assert f"  gate: rejected {gate['rejected_total']} of {entry['n']} (" in printed and "blank 2" in printed

    # the accepted metrics are those of the accepted rows alone; the all-image metrics are unchanged
    metrics = gate["accepted_metrics"]
    assert set(METRICS) <= set(metrics)
    labels = np.array([CLASS.index(row["label"]) for row in accepted])
    predicted = np.array([CLASS.index(row["predicted"]) for row in accepted])
    prob = np.array([float(row["prob_tumor"]) for row in accepted])
    assert value(metrics["accuracy"]) == pytest.approx(np.mean(predicted == labels))
    assert value(metrics["sensitivity"]) == pytest.approx(np.mean(predicted[labels == 1] == 1))
    assert value(metrics["specificity"]) == pytest.approx(np.mean(predicted[labels == 0] == 0))
    assert value(metrics["brier"]) == pytest.approx(np.mean((prob - labels) ** 2), abs=1e-5)
    assert_auc_of_rounded(value(metrics["auc"]), labels, np.array([float(row["prob_tumor_raw"]) for row in accepted]))
    everything = np.array([row["label"] == row["predicted"] for row in rows])
    assert value(entry["accuracy"]) == pytest.approx(everything.mean())

    # --no-gate: no gate section, empty quality cells, the same all-image metrics
    assert main(["evaluate", "--run", str(trained_run), "--data", str(odd), "--out", str(tmp_path / "plain"),
                 "--no-gate", *BOOTSTRAP]) == 0
    assert "gate:" not in capsys.readouterr().out
    plain = json.loads((tmp_path / "plain" / "evaluation.json").read_text())
    assert "gate" not in plain and "gate" not in plain["datasets"]["odd"]
    assert all(row["quality"] == row["ood_score"] == "" for row in read_csv(tmp_path / "plain" / "predictions.csv"))
    for name in METRICS:
        assert plain["datasets"]["odd"][name]["value"] == pytest.approx(entry[name]["value"], abs=1e-6, nan_ok=True)

    # a run without a gate: evaluated as before, and the log says how to fit one
    old = tmp_path / "old_run"
    shutil.copytree(trained_run, old, ignore=shutil.ignore_patterns("gate.*", "evaluation*"))
    with caplog.at_level("INFO", logger="tumorclf"):
        assert main(["evaluate", "--run", str(old), "--data", str(odd), "--out", str(tmp_path / "old"),
                     "--bootstrap", "0"]) == 0
    assert f"tumorclf gate --run {old}" in caplog.text
    assert "gate" not in json.loads((tmp_path / "old" / "evaluation.json").read_text())["datasets"]["odd"]


ONE_CLASS_GAPS = {"tumour": {"specificity", "balanced_accuracy", "precision", "f1", "auc", "ece", "ece_uncalibrated"},
                  "normals": {"sensitivity", "balanced_accuracy", "precision", "f1", "auc", "ece", "ece_uncalibrated"}}


def one_class_folder(root: Path, keep: str, name: str, seed: int) -> Path:
    """Blob slices of one class only, in a class folder called `name` (as figshare_meningioma's `Brain Tumor/`)."""
    write_blob_dataset(root, per_class=10, size=48, seed=seed)
    shutil.rmtree(root / ("tumor" if keep == "healthy" else "healthy"))
    (root / keep).rename(root / name)
    return root


def assert_recall_at(rows: list[dict[str, str]], point: dict, recall: str) -> None:
    """`recall` at an operating point is the share of the rows decided as their class at its threshold, from
    predictions.csv's calibrated P(Tumor) (rounded to 6 decimals: no row lies that close to a threshold)."""
    prob = np.array([float(row["prob_tumor"]) for row in rows])
    assert np.all(np.abs(prob - point["threshold"]) > 1e-6)
    called_tumour = np.mean(prob >= point["threshold"])
    assert point[recall]["value"] == pytest.approx(called_tumour if recall == "sensitivity" else 1 - called_tumour)
    lo, hi = point[recall]["ci95"]
    assert lo <= point[recall]["value"] <= hi


def test_a_one_class_folder_gets_the_metrics_its_class_allows(trained_run: Path, tmp_path: Path, capsys, caplog):
    tumour = one_class_folder(tmp_path / "tumour", "tumor", "Brain Tumor", seed=41)
    normals = one_class_folder(tmp_path / "normals", "healthy", "no", seed=42)
    out = tmp_path / "eval"
    with caplog.at_level("INFO", logger="tumorclf"):
        assert main(["evaluate", "--run", str(trained_run), "--data", str(tumour), str(normals), "--out", str(out),
                     *BOOTSTRAP]) == 0
    printed = capsys.readouterr().out
    assert "roc.png: tumour holds only Tumor slices, so it has no ROC curve" in caplog.text
    assert "roc.png: normals holds only Healthy slices" in caplog.text
    report = json.loads((out / "evaluation.json").read_text())
    rows = read_csv(out / "predictions.csv")
    for name, recall in (("tumour", "sensitivity"), ("normals", "specificity")):
        entry = report["datasets"][name]
        mine = [row for row in rows if row["dataset"] == name]
        assert entry["n"] == len(mine) == 10 and {row["label"] for row in mine} == {CLASS[recall == "sensitivity"]}
        assert set(entry["not_reportable"]) == ONE_CLASS_GAPS[name]
        assert entry["not_reportable"]["auc"].startswith(f"only {CLASS[recall == 'sensitivity']} slices: ")
        assert all(entry[key]["value"] is None and entry[key]["ci95"] is None for key in ONE_CLASS_GAPS[name])
        # its one recall: the share of its slices decided as their class, at the threshold and every operating point
        right = np.mean([row["predicted"] == row["label"] for row in mine])
        assert value(entry[recall]) == pytest.approx(right) == value(entry["accuracy"])
        assert entry["operating_points"].keys() == {"target_sensitivity", "high_sensitivity", "youden", "default_0.5"}
        for point in entry["operating_points"].values():
            assert_recall_at(mine, point, recall)
            assert point[{"sensitivity": "specificity", "specificity": "sensitivity"}[recall]]["value"] is None
        assert entry["operating_points"]["target_sensitivity"][recall] == entry[recall]
        assert 0 <= value(entry["brier"]) <= 1 and entry["brier"]["ci95"] is not None
        assert entry["gate"]["accepted_metrics"]["not_reportable"].keys() <= ONE_CLASS_GAPS[name]
    pooled = report["datasets"]["pooled"]  # both classes again: every metric
    assert pooled["not_reportable"] == {} and pooled["n"] == 20
    assert all(pooled[key]["value"] is not None for key in ONE_CLASS_GAPS["tumour"])

    # the table: n/a where a class is missing, a line with the one recall at each operating point, no nan
    lines = printed.strip().splitlines()
    row = {line.split()[0]: i for i, line in enumerate(lines) if line.split()[0] in ("tumour", "normals", "pooled")}
    assert lines[row["tumour"]].count("n/a") == 5 and lines[row["normals"]].count("n/a") == 5
    assert "n/a" not in lines[row["pooled"]] and "nan" not in printed.lower()
    assert lines[row["tumour"] + 1].startswith("  only Tumor slices (n/a: needs both classes); sensitivity at "
                                               "target_sensitivity ")
    assert "youden" in lines[row["tumour"] + 1] and "default_0.5 0.500: " in lines[row["tumour"] + 1]
    assert lines[row["normals"] + 1].startswith("  only Healthy slices (n/a: needs both classes); specificity at ")
    assert lines[row["tumour"] + 2].startswith("  gate: ") and "AUC n/a" in lines[row["tumour"] + 2]
    for name in ("predictions.csv", "reliability.png", "roc.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the tumour folder alone: no pooled entry, a ROC plot without a curve, and no warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["evaluate", "--run", str(trained_run), "--data", str(tumour), "--out", str(tmp_path / "alone"),
                     "--bootstrap", "0"]) == 0
    assert not [w for w in caught if issubclass(w.category, (RuntimeWarning, UserWarning))], \
        [str(w.message) for w in caught]
    alone = json.loads((tmp_path / "alone" / "evaluation.json").read_text())["datasets"]
    assert set(alone) == {"tumour"} and value(alone["tumour"]["sensitivity"]) == value(
        report["datasets"]["tumour"]["sensitivity"])
    assert (tmp_path / "alone" / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "n/a" in capsys.readouterr().out


def test_one_class_report_and_table_without_a_model():
    rng = np.random.default_rng(2)
    raw = rng.uniform(0.3, 1.0, 40)
    point = OperatingPoint(temperature=1.0, threshold=0.6, target_sensitivity=0.95, youden_threshold=0.45,
                           fitted_on="validation", n=40, validation={})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        entry = dataset_report(np.ones(40, int), raw, np.arange(40) // 2, point, 0.6, 200, 0)
    assert set(entry["not_reportable"]) == ONE_CLASS_GAPS["tumour"]
    for name, at in (("target_sensitivity", 0.6), ("youden", 0.45), ("default_0.5", 0.5)):
        assert entry["operating_points"][name]["sensitivity"]["value"] == pytest.approx(np.mean(raw >= at))
    assert entry["confusion_matrix"][0] == [0, 0]
    text = table({"datasets": {"tumours": {**entry, "contaminated": 0}}})
    assert text.splitlines()[1].split()[:4] == ["tumours", "40", "0", "n/a"]
    assert f"sensitivity at target_sensitivity 0.600: {np.mean(raw >= 0.6):.3f} [" in text.splitlines()[2]


def test_roc_figure_marks_the_applied_youden_and_high_sensitivity_points(monkeypatch):
    """Where each of the run's points sits on the ROC curve: the applied threshold, Youden's, the high-sensitivity
    one (its FPR and TPR as decide() gives them)."""
    from types import SimpleNamespace

    from tumorclf.evaluation import evaluate as module

    figures = []
    monkeypatch.setattr(module, "figure_png", lambda fig: figures.append(fig) or b"png")
    labels = np.repeat([0, 1], 50)
    raw = np.clip(np.linspace(0.05, 0.95, 100) + np.random.default_rng(0).normal(0, 0.2, 100), 0, 1)
    point = OperatingPoint(temperature=1.0, threshold=0.6, target_sensitivity=0.95, youden_threshold=0.5,
                           fitted_on="validation", n=100, validation={}, high_sensitivity_threshold=0.2)
    item = SimpleNamespace(name="test", labels=labels, prob_tumor=raw)
    assert module.roc_png([item], point, 0.6) == b"png"
    marks = {line.get_label(): (line.get_xdata()[0], line.get_ydata()[0]) for line in figures[0].axes[0].lines
             if line.get_marker() in ("o", "s", "^")}
    assert set(marks) == {"test: threshold 0.600", "test: Youden 0.500", "test: high sensitivity 0.200"}
    (tn, fp), (fn, tp) = confusion_matrix(labels, decide(point.calibrate(raw), 0.2))
    assert marks["test: high sensitivity 0.200"] == pytest.approx((fp / (tn + fp), tp / (tp + fn)))
