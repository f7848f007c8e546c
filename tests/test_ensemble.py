"""Ensembles of runs and test-time augmentation (`tumorclf evaluate --run A B --tta`): the ensemble's score is the
mean of the members' calibrated P(Tumor), its operating point is fitted on that mean over validation, members of
another split are refused in one line, and TTA averages the softmax over fixed views."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import copy_with_operating_point, one_error_line, read_csv, write_blob_dataset
from tumorclf.cli.main import main
from tumorclf.errors import UsageError
from tumorclf.evaluation.combined import Combined
from tumorclf.evaluation.evaluate import dataset_report, evaluate
from tumorclf.metrics.calibration import OperatingPoint, apply_temperature, fit_operating_point
from tumorclf.metrics.ensemble import ensemble_operating_point, ensemble_probabilities
from tumorclf.runs.ensemble import ensemble_point, member_validation
from tumorclf.runs.folder import RunDir
from tumorclf.runs.own_split import own_split
from tumorclf.transforms.test_time import DEFAULT_VIEWS, ViewStack, check_views, tta_model, tta_predict

BOOTSTRAP = ["--bootstrap", "50"]


def point(temperature: float) -> OperatingPoint:
    return OperatingPoint(temperature=temperature, threshold=0.5, target_sensitivity=0.95, youden_threshold=0.5,
                          fitted_on="validation", n=0, validation={})


def column(rows: list[dict[str, str]], name: str) -> np.ndarray:
    return np.array([float(row[name]) for row in rows])


def test_ensemble_probabilities_are_the_mean_of_the_members_calibrated_probabilities():
    rng = np.random.default_rng(0)
    raws = [rng.uniform(0, 1, 40) for _ in range(3)]
    points = [point(0.5), point(1.0), point(3.0)]
    by_hand = np.mean([1 / (1 + np.exp(-np.log(raw / (1 - raw)) / t)) for raw, t in zip(raws, (0.5, 1.0, 3.0))],
                      axis=0)
    assert np.allclose(ensemble_probabilities(raws, points), by_hand, rtol=0, atol=1e-12)
    # one member is that member's calibrated probability
    assert np.array_equal(ensemble_probabilities(raws[:1], points[2:]), apply_temperature(raws[0], 3.0))
    # the ensemble's operating point is the one fitted on that mean
    labels = (raws[0] + rng.normal(0, 0.3, 40) > 0.5).astype(np.int64)
    fitted = ensemble_operating_point(labels, raws, points, 0.9)
    assert fitted == fit_operating_point(labels, ensemble_probabilities(raws, points), 0.9, fitted.fitted_on)
    assert fitted.temperature == pytest.approx(fit_operating_point(labels, by_hand, 0.9).temperature, rel=1e-6)
    with pytest.raises(ValueError):
        ensemble_probabilities(raws, points[:2])
    with pytest.raises(ValueError):
        ensemble_probabilities([raws[0], raws[1][:10]], points[:2])


def test_the_views_are_fixed_and_a_flip_of_a_symmetric_image_is_the_image():
    assert check_views(None) == DEFAULT_VIEWS and len(DEFAULT_VIEWS) <= 4
    with pytest.raises(UsageError, match="unknown test-time view"):
        check_views(["identity", "upside_down"])
    with pytest.raises(UsageError, match="named twice"):
        check_views(["hflip", "hflip"])
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    views = np.asarray(ViewStack()(images)).reshape(len(DEFAULT_VIEWS), 3, 32, 32, 3)
    assert np.array_equal(views[0], images) and np.array_equal(views[1], images[:, :, ::-1])
    assert np.array_equal(np.asarray(ViewStack()(images)), np.asarray(ViewStack()(images)))  # no draw

    # a square in the middle: the rotations and the zoom keep its centre, rotate-5's shift moves it 3% right/down
    square = np.zeros((1, 64, 64, 3), np.float32)
    square[:, 24:40, 24:40] = 255
    rows, cols = np.mgrid[0:64, 0:64]
    for name, expected in (("rotate+5", 31.5), ("rotate-5", 31.5 + 0.03 * 64)):
        out = np.asarray(ViewStack([name])(square))[0, :, :, 0]
        assert out.sum() > 0
        assert np.sum(out * cols) / out.sum() == pytest.approx(expected, abs=0.2)
        assert np.sum(out * rows) / out.sum() == pytest.approx(expected, abs=0.2)
        assert not np.array_equal(out, square[0, :, :, 0])

    # a left-right symmetric image: its flipped view is itself, so identity + hflip is the identity alone
    half = rng.uniform(0, 255, (2, 32, 16, 3)).astype(np.float32)
    symmetric = np.concatenate([half, half[:, :, ::-1]], axis=2)
    flipped = np.asarray(ViewStack(["identity", "hflip"])(symmetric))
    assert np.array_equal(flipped[:2], flipped[2:])


def test_tta_predict_averages_the_views_and_the_tta_model_is_serialisable(trained_run: Path, tmp_path: Path):
    import keras

    model = RunDir(trained_run).load_model()
    test = own_split(RunDir(trained_run), ("test",))
    images = test.images()[:12].astype(np.float32)
    plain = model.predict(images, verbose=0)
    by_hand = (plain + model.predict(images[:, :, ::-1], verbose=0)) / 2
    averaged = tta_predict(model, images, 8, ("identity", "hflip"))
    assert averaged.shape == (12, 2) and np.allclose(averaged, by_hand, atol=1e-5)
    assert np.allclose(averaged.sum(axis=1), 1, atol=1e-5)

    symmetric = np.concatenate([images[:, :, :24], images[:, :, :24][:, :, ::-1]], axis=2)
    assert np.allclose(tta_predict(model, symmetric, 8, ("identity", "hflip")),
                       model.predict(symmetric, verbose=0), atol=1e-5)

    # the default views, saved and loaded back as one Keras model: the same answers
    wrapped = tta_model(model)
    path = tmp_path / "tta.keras"
    wrapped.save(path)
    loaded = keras.saving.load_model(path)
    assert np.allclose(loaded.predict(images, verbose=0), wrapped.predict(images, verbose=0), atol=1e-6)
    assert np.allclose(wrapped.predict(images, verbose=0), tta_predict(model, images, 32), atol=1e-5)


def test_evaluate_tta_records_its_views_and_averages_them(trained_run: Path, tmp_path: Path, capsys):
    saved = (trained_run / "operating_point.json").read_bytes()
    out = tmp_path / "tta"
    assert main(["evaluate", "--run", str(trained_run), "--tta", "identity", "hflip", "--out", str(out),
                 *BOOTSTRAP]) == 0
    assert "with test-time views" in capsys.readouterr().out
    report = json.loads((out / "evaluation.json").read_text())
    assert report["tta"]["views"] == ["identity", "hflip"]
    assert "not saved in the run" in report["tta"]["operating_point"]
    assert report["operating_point"]["saved_in_run"] is False and "ensemble" not in report
    assert (trained_run / "operating_point.json").read_bytes() == saved  # the run's own point is left unchanged

    # its raw P(Tumor): the mean of the model on the images and on their mirror images, computed here
    run = RunDir(trained_run)
    model = run.load_model()
    rows = read_csv(out / "predictions.csv")
    test = own_split(run, ("test",))
    assert [row["path"] for row in rows] == test.paths
    images = test.images().astype(np.float32)
    by_hand = (model.predict(images, verbose=0) + model.predict(images[:, :, ::-1], verbose=0))[:, 1] / 2
    assert np.allclose(column(rows, "prob_tumor_raw"), by_hand, atol=2e-6)
    assert {row["quality"] for row in rows} <= {"ok", "out_of_distribution"}  # the run's gate still answers

    # the operating point: refitted on the validation split's averaged predictions
    val = own_split(run, ("val",))
    pixels = val.images().astype(np.float32)
    val_tta = (model.predict(pixels, verbose=0) + model.predict(pixels[:, :, ::-1], verbose=0))[:, 1] / 2
    expected = fit_operating_point(val.labels, val_tta, report["operating_point"]["target_sensitivity"])
    assert report["temperature"] == pytest.approx(expected.temperature, rel=1e-3)
    assert report["operating_point"]["fitted_on"] == "validation (2 test-time views)"


def test_an_ensemble_of_one_run_twice_is_the_run_alone(trained_run: Path, tmp_path: Path, capsys):
    alone, twice = tmp_path / "alone", tmp_path / "twice"
    assert main(["evaluate", "--run", str(trained_run), "--out", str(alone), *BOOTSTRAP]) == 0
    assert main(["evaluate", "--run", str(trained_run), str(trained_run), "--out", str(twice), *BOOTSTRAP]) == 0
    capsys.readouterr()
    one, two = (json.loads((folder / "evaluation.json").read_text()) for folder in (alone, twice))
    assert two["ensemble"]["members"] == [str(trained_run)] * 2 and "tta" not in two
    assert two["operating_point"]["saved_in_run"] is False
    assert set(two) - set(one) == {"ensemble"} and set(two["datasets"]) == set(one["datasets"]) == {"test"}
    # the mean of two equal calibrated probabilities is the calibrated probability; its refit changes ~nothing
    assert two["temperature"] == pytest.approx(1.0, abs=1e-2)
    rows_one, rows_two = read_csv(alone / "predictions.csv"), read_csv(twice / "predictions.csv")
    assert [row["path"] for row in rows_one] == [row["path"] for row in rows_two]
    assert np.allclose(column(rows_two, "prob_tumor_raw"), column(rows_one, "prob_tumor"), atol=2e-6)
    assert np.allclose(column(rows_two, "prob_tumor"), column(rows_one, "prob_tumor"), atol=1e-3)
    assert [row["quality"] for row in rows_one] == [row["quality"] for row in rows_two]  # the first member's gate
    assert two["datasets"]["test"]["confusion_matrix"] == one["datasets"]["test"]["confusion_matrix"]
    assert two["datasets"]["test"]["n"] == one["datasets"]["test"]["n"]


def test_the_ensemble_averages_each_members_calibrated_probability(trained_run: Path, tmp_path: Path):
    first = RunDir(trained_run)
    own = first.operating_point()
    second = RunDir(copy_with_operating_point(trained_run, tmp_path / "hot", temperature=2.5 * own.temperature,
                                              threshold=own.threshold))
    report_one, scored_one, _ = evaluate(first, use_gate=False, n_bootstrap=0)
    report, scored, ensemble = evaluate(first, use_gate=False, n_bootstrap=0, scoring=Combined([first, second]))
    raw = scored_one[0].prob_tumor
    by_hand = (apply_temperature(raw, own.temperature) + apply_temperature(raw, 2.5 * own.temperature)) / 2
    assert np.allclose(scored[0].prob_tumor, by_hand, atol=1e-6)
    assert report["ensemble"]["member_operating_points"][1]["temperature"] == 2.5 * own.temperature

    # its operating point: fitted on the mean of the members' calibrated validation predictions, the same from the
    # members' saved files alone (no model run)
    _, labels, raws = member_validation([first, second])
    assert ensemble == ensemble_operating_point(labels, raws, [own, second.operating_point()],
                                                own.target_sensitivity) == ensemble_point([first, second])
    assert report["threshold"] == ensemble.threshold and report["temperature"] == ensemble.temperature

    # the same report without running a model: the members' test_predictions.csv (6 decimals) and split.csv's groups
    members = [read_csv(run.predictions_file) for run in (first, second)]
    assert [row["path"] for row in members[0]] == scored[0].dataset.paths
    group = {row["path"]: int(row["group"]) for row in read_csv(first.split_file)}
    labels = np.array([int(row["label"]) for row in members[0]])
    mean = ensemble_probabilities([column(rows, "prob_tumor") for rows in members], [own, second.operating_point()])
    offline = dataset_report(labels, mean, np.array([group[row["path"]] for row in members[0]]),
                             ensemble_point([first, second]), ensemble.threshold, 0, 0)
    test = report["datasets"]["test"]
    assert offline["confusion_matrix"] == test["confusion_matrix"] and offline["groups"] == test["groups"]
    assert offline["auc"]["value"] == pytest.approx(test["auc"]["value"], abs=0.01)


def test_ensembles_and_tta_score_other_folders_and_one_class_folders(trained_run: Path, tmp_path: Path, capsys):
    other = RunDir(copy_with_operating_point(trained_run, tmp_path / "other", temperature=1.7, threshold=0.4))
    both = write_blob_dataset(tmp_path / "both", per_class=6, size=48, seed=31)
    tumour = write_blob_dataset(tmp_path / "tumour", per_class=5, size=48, seed=32)
    shutil.rmtree(tumour / "healthy")
    out = tmp_path / "eval"
    assert main(["evaluate", "--run", str(trained_run), str(other.path), "--tta", "identity", "hflip", "--data",
                 str(both), str(tumour), "--out", str(out), *BOOTSTRAP]) == 0
    capsys.readouterr()
    report = json.loads((out / "evaluation.json").read_text())
    assert report["ensemble"]["members"] == [str(trained_run), str(other.path)]
    assert report["tta"]["views"] == ["identity", "hflip"]
    assert set(report["datasets"]) == {"both", "tumour", "pooled"}
    assert report["datasets"]["both"]["n"] == 12 and report["datasets"]["tumour"]["n"] == 5
    assert "specificity" in report["datasets"]["tumour"]["not_reportable"]
    assert report["datasets"]["tumour"]["sensitivity"]["value"] is not None
    rows = read_csv(out / "predictions.csv")
    assert len(rows) == 17 and all(0 <= float(row["prob_tumor"]) <= 1 for row in rows)


def test_members_of_another_split_or_size_are_refused_in_one_line(trained_run: Path, tmp_path: Path, capsys):
    moved = tmp_path / "moved"
    shutil.copytree(trained_run, moved, ignore=shutil.ignore_patterns("evaluation*"))
    rows = (moved / "split.csv").read_text().splitlines()
    at = next(i for i, row in enumerate(rows) if ",val," in row)
    rows[at] = rows[at].replace(",val,", ",test,")
    (moved / "split.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "eval"
    assert main(["evaluate", "--run", str(trained_run), str(moved), "--out", str(out), *BOOTSTRAP]) == 2
    line = one_error_line(capsys)
    assert str(moved) in line and "split.csv differs" in line
    assert not out.exists()

    bigger = tmp_path / "bigger"
    shutil.copytree(trained_run, bigger, ignore=shutil.ignore_patterns("evaluation*"))
    record = json.loads((bigger / "config.json").read_text())
    record["config"]["image_size"] = 64
    (bigger / "config.json").write_text(json.dumps(record))
    assert main(["evaluate", "--run", str(trained_run), str(bigger), "--out", str(out), *BOOTSTRAP]) == 2
    line = one_error_line(capsys)
    assert str(bigger) in line and "image size is 64" in line and not out.exists()

    # an ensemble or TTA is never the run's own evaluation: it needs --out
    assert main(["evaluate", "--run", str(trained_run), "--tta"]) == 2
    assert "give --out" in one_error_line(capsys)
    assert main(["evaluate", "--run", str(trained_run), "--tta", "sideways", "--out", str(out)]) == 2
    assert "unknown test-time view sideways" in one_error_line(capsys) and not out.exists()


def test_export_of_an_ensemble_is_one_model_at_the_ensembles_operating_point(trained_run: Path,
                                                                              tmp_path: Path, capsys):
    import tensorflow as tf

    from tumorclf.metrics.classification import decide

    first = RunDir(trained_run)
    own = first.operating_point()
    second = RunDir(copy_with_operating_point(trained_run, tmp_path / "hot", temperature=2.5 * own.temperature,
                                              threshold=own.threshold))
    out = tmp_path / "export"
    assert main(["export", "--run", str(first.path), str(second.path), "--out", str(out),
                 "--format", "savedmodel", "onnx"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    card = json.loads((out / "model_card.json").read_text())
    expected = ensemble_point([first, second])
    assert card["temperature"] == expected.temperature and card["threshold"] == expected.threshold
    assert card["ensemble"]["member_temperatures"] == [own.temperature, 2.5 * own.temperature]
    assert card["quality_gate"] is None and "quality" not in card["output"] and card["evaluations"] == {}
    assert "## Ensemble" in (out / "MODEL_CARD.md").read_text()

    images = own_split(first, ("test",)).images()[:16].astype(np.float32)
    raw = first.load_model().predict(images, verbose=0)[:, 1]
    mean = ensemble_probabilities([raw, raw], [own, second.operating_point()])
    served = tf.saved_model.load(str(out)).signatures["serve"](images=tf.constant(images))
    assert np.allclose(served["probabilities"].numpy()[:, 1], mean, atol=1e-5)
    calibrated = apply_temperature(mean, expected.temperature)
    assert np.allclose(served["prob_tumor"].numpy(), calibrated, atol=1e-5)
    sure = np.abs(calibrated - expected.threshold) > 1e-4
    assert np.array_equal(served["decision"].numpy()[sure], decide(calibrated, expected.threshold)[sure])
    assert "quality" not in served

    # model.onnx: the same graph in float32, the same outputs, the ensemble's point in its metadata
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    onnx = dict(zip(names, session.run(names, {"images": images})))
    assert set(onnx) == {"probabilities", "prob_tumor", "decision"} and card["formats"] == ["savedmodel", "onnx"]
    assert float(card["onnx"]["metadata_props"]["threshold"]) == expected.threshold
    for name in ("probabilities", "prob_tumor"):
        assert np.allclose(onnx[name], served[name].numpy(), atol=1e-5), name
    assert np.array_equal(onnx["decision"][sure], served["decision"].numpy()[sure])

    # tumorclf predict takes the export's folder: the card's temperature and threshold, the ensemble's mean
    pictures = sorted((Path(json.loads((trained_run / "config.json").read_text())["resolved"]["data"]) / "tumor")
                      .iterdir())[:3]
    assert main(["predict", "--model-file", str(out), "--inputs", *map(str, pictures), "--out",
                 str(tmp_path / "predictions")]) == 0
    capsys.readouterr()
    rows = read_csv(tmp_path / "predictions" / "predictions.csv")
    raw = column(rows, "prob_tumor_raw")
    assert len(rows) == 3 and np.allclose(column(rows, "prob_tumor"), apply_temperature(raw, expected.temperature),
                                          atol=1e-5)
    assert main(["predict", "--model-file", str(out / "model.onnx"), "--inputs", *map(str, pictures), "--out",
                 str(tmp_path / "onnx_predictions")]) == 0
    capsys.readouterr()
    assert np.allclose(column(read_csv(tmp_path / "onnx_predictions" / "predictions.csv"), "prob_tumor"),
                       column(rows, "prob_tumor"), atol=1e-5)

    # what a single run's export adds is refused for an ensemble, in one line, and so is another split
    assert main(["export", "--run", str(first.path), str(second.path), "--out", str(tmp_path / "x"),
                 "--measure", "8"]) == 2
    assert "drop --measure" in one_error_line(capsys) and not (tmp_path / "x").exists()
