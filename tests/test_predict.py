from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

import tumorclf.cli.predict as predict_command
import tumorclf.serving.predictors as predict
from tumorclf.metrics.calibration import apply_temperature
from tumorclf.cli.main import main
from tumorclf.data.decoder import DECODER_VERSION, decode_image
from tumorclf.metrics.classification import decide
from tumorclf.serving.export import export_run
from tumorclf.gate.quality_gate import BLANK, GATE_ARRAYS, GATE_JSON, OK, OUT_OF_DISTRIBUTION
from tumorclf.serving.predictors import recorded_operating_point
from tumorclf.runs.folder import DEFAULT_THRESHOLD, RunDir
from conftest import copy_with_operating_point, shared_once


@pytest.fixture
def folder(tmp_path: Path, trained_run: Path) -> Path:
    """A nested folder of slices from the run's data, with one broken file among them."""
    source = trained_run.parents[1] / "data"
    target = tmp_path / "incoming"
    shutil.copytree(source / "tumor", target / "a")
    shutil.copytree(source / "healthy", target / "b" / "c")
    (target / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    return target


EXPORT_THRESHOLD = 0.37  # not the default, so the card is seen to be read
RUN_TEMPERATURE, RUN_THRESHOLD = 2.5, 0.62  # the operating point of `calibrated_run`


@pytest.fixture(scope="module")
def calibrated_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained run with an operating point and without a quality gate (should training fit one): these
    tests are about the operating point, every readable image is decided (the gate: test_gate_serving.py)."""
    def write(folder: Path) -> None:
        run = copy_with_operating_point(trained_run, folder / "run", RUN_TEMPERATURE, RUN_THRESHOLD)
        for name in (GATE_ARRAYS, GATE_JSON):
            (run / name).unlink(missing_ok=True)

    return shared_once(tmp_path_factory, "predict_calibrated", write) / "run"


@pytest.fixture(scope="module")
def exported(calibrated_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The calibrated run exported with --threshold: the temperature stays the run's."""
    return shared_once(tmp_path_factory, "predict_exported", lambda folder: export_run(
        calibrated_run, folder / "model", threshold=EXPORT_THRESHOLD)) / "model"


def read_csv(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_predict_folder_keeps_going_past_a_broken_file(folder: Path, calibrated_run: Path, tmp_path: Path, caplog):
    out = tmp_path / "preds"
    with caplog.at_level("INFO", logger="tumorclf"):
        assert main(["predict", "--model-file", str(calibrated_run / "best.keras"), "--inputs", str(folder),
                     "--out", str(out), "--batch-size", "16"]) == 0
    rows = read_csv(out / "predictions.csv")
    assert list(rows[0]) == ["path", "prob_tumor", "predicted", "error", "prob_tumor_raw", "quality", "ood_score",
                             "slice"]
    assert all(r["slice"] == "" for r in rows)  # 2-D images have no slice index
    assert all(r["quality"] == r["ood_score"] == "" for r in rows)  # a run without a gate: not gated, and said so
    assert (f"no quality gate beside {calibrated_run / 'best.keras'} (fit one with `tumorclf gate --run RUN`): "
            "predictions are not gated") in caplog.text
    assert len(rows) == 121
    broken = [r for r in rows if r["path"].endswith("broken.jpg")]
    assert len(broken) == 1 and broken[0]["error"] and broken[0]["prob_tumor"] == broken[0]["prob_tumor_raw"] == ""
    good = [r for r in rows if not r["error"]]
    assert len(good) == 120 and all(r["predicted"] in ("Healthy", "Tumor") for r in good)
    # progress of a batch larger than one batch: at least the closing line
    assert any(r.getMessage().startswith("predict: 121/121 files") for r in caplog.records)
    # where the temperature and threshold came from: the run's operating point
    assert (f"temperature 2.5 and threshold 0.62 (from {calibrated_run / 'operating_point.json'})"
            in caplog.text)

    # same decoding as training: equal to the model on decode_image's pixels; prob_tumor is calibrated
    model = keras.saving.load_model(calibrated_run / "best.keras")
    first = Path(good[0]["path"])
    expected = model.predict(decode_image(first, 48)[None].astype("float32"), verbose=0)[0, 1]
    assert float(good[0]["prob_tumor_raw"]) == pytest.approx(expected, abs=1e-5)
    assert float(good[0]["prob_tumor"]) == pytest.approx(apply_temperature(expected, RUN_TEMPERATURE), abs=1e-5)
    raw = model.predict(np.stack([decode_image(Path(r["path"]), 48) for r in good]).astype("float32"), verbose=0)[:, 1]
    calibrated = np.array([float(r["prob_tumor"]) for r in good])
    np.testing.assert_allclose([float(r["prob_tumor_raw"]) for r in good], raw, atol=1e-5, rtol=0)
    np.testing.assert_allclose(calibrated, apply_temperature(raw, RUN_TEMPERATURE), atol=1e-5, rtol=0)
    assert np.max(np.abs(calibrated - raw)) > 0.05  # the temperature is applied, not only recorded
    clear = np.abs(calibrated - RUN_THRESHOLD) > 1e-5  # decided at the run's threshold on calibrated P(Tumor)
    assert [r["predicted"] for r, c in zip(good, clear) if c] == [
        "Tumor" if p >= RUN_THRESHOLD else "Healthy" for p, c in zip(calibrated, clear) if c]


# --- thresholds: on known probabilities, and on a model whose outputs are not saturated ---------------------

KNOWN = np.array([0.1, 0.3, 0.5, 0.7, 0.9], dtype=np.float32)  # float32 as a model gives them: 0.7, 0.9 lie below
# the decision at each threshold, P >= T in float64 (float32(0.1) and float32(0.3) lie above 0.1 and 0.3)
KNOWN_DECISIONS = {0.0: "TTTTT", 0.1: "TTTTT", 0.2: "HTTTT", 0.3: "HTTTT", 0.5: "HHTTT", 0.6: "HHHTT",
                   0.7: "HHHHT", 0.9: "HHHHH", 1.0: "HHHHH"}


def known_images(folder: Path) -> list[Path]:
    """Five flat images whose grey level (20, 60, ..., 180) says which of `KNOWN` the stub predictor answers,
    and a broken file among them (third)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(len(KNOWN)):
        files.append(folder / f"known{i}.png")
        Image.fromarray(np.full((16, 16, 3), 20 + 40 * i, np.uint8)).save(files[-1])
    (folder / "broken.png").write_bytes(b"not an image")
    return files[:2] + [folder / "broken.png"] + files[2:]


def known_index(batch: np.ndarray) -> np.ndarray:
    """Which of `KNOWN` each flat image of `known_images` stands for, by its grey level."""
    index = np.rint((batch[:, 0, 0, 0] - 20) / 40).astype(int)
    assert ((batch - batch[:, :1, :1, :1]) == 0).all() and (0 <= index).all() and (index < len(KNOWN)).all()
    return index


def known_predictor(batch: np.ndarray) -> dict[str, np.ndarray]:
    """[Healthy, Tumor] float32 probabilities: `KNOWN` by each image's grey level."""
    p = KNOWN[known_index(batch)]
    return {"probabilities": np.stack([1 - p, p], axis=1)}


KNOWN_CODES = np.array([OK, BLANK, OK, OUT_OF_DISTRIBUTION, OK], np.int32)  # what the gated stub says per image


def gated_known_predictor(batch: np.ndarray) -> dict[str, np.ndarray]:
    """`known_predictor` with a gate's outputs: `KNOWN_CODES` and an OOD score of 1.234567 per index."""
    index = known_index(batch)
    return {**known_predictor(batch), "quality_code": KNOWN_CODES[index],
            "ood_score": (1.234567 * index).astype(np.float32)}


def decisions(rows: list[dict]) -> str:
    return "".join(r["predicted"][0] for r in rows if not r["error"])


@pytest.mark.parametrize("threshold", sorted(KNOWN_DECISIONS))
def test_predict_files_decides_at_the_threshold(tmp_path: Path, threshold: float):
    files = known_images(tmp_path)
    rows = list(predict.predict_files(known_predictor, 8, files, threshold, batch_size=2))
    assert [r["path"] for r in rows] == list(map(str, files))
    assert rows[2]["error"] and rows[2]["prob_tumor"] is None and rows[2]["predicted"] is None
    readable = [r for r in rows if not r["error"]]
    assert [r["prob_tumor"] for r in readable] == [round(float(p), 6) for p in KNOWN]
    assert [r["prob_tumor_raw"] for r in readable] == [round(float(p), 6) for p in KNOWN]  # temperature 1
    assert decisions(rows) == KNOWN_DECISIONS[threshold]


@pytest.mark.parametrize("temperature", [0.5, 3.0])
def test_predict_files_calibrates_then_decides(tmp_path: Path, temperature: float):
    files = known_images(tmp_path)
    calibrated = apply_temperature(KNOWN, temperature)
    for threshold in (0.3, 0.5, float(calibrated[3])):  # the last: exactly a calibrated value, so Tumor there
        rows = list(predict.predict_files(known_predictor, 8, files, threshold, batch_size=2,
                                          temperature=temperature))
        readable = [r for r in rows if not r["error"]]
        assert [r["prob_tumor_raw"] for r in readable] == [round(float(p), 6) for p in KNOWN]
        assert [r["prob_tumor"] for r in readable] == [round(float(p), 6) for p in calibrated]
        assert decisions(rows) == "".join("HT"[d] for d in decide(calibrated, threshold))
    assert decisions(rows)[3] == "T"
    # a temperature changes decisions at thresholds other than 0.5 (it keeps 0.5 at 0.5)
    assert decisions(list(predict.predict_files(known_predictor, 8, files, 0.3, temperature=temperature))) != \
        KNOWN_DECISIONS[0.3]


def test_predict_files_gated_leaves_refused_images_undecided(tmp_path: Path):
    """With a gate (`min_side`): quality from the predictor's code, too_small first where the file's short side
    (16 px here) is under min_side; a refused image keeps its probability but gets no decision."""
    files = known_images(tmp_path)
    ungated = list(predict.predict_files(known_predictor, 8, files, 0.5, batch_size=2))
    assert all(r["quality"] is None and r["ood_score"] is None for r in ungated)
    rows = list(predict.predict_files(gated_known_predictor, 8, files, 0.5, batch_size=2, min_side=16))
    readable = [r for r in rows if not r["error"]]
    assert [r["quality"] for r in readable] == ["ok", "blank", "ok", "out_of_distribution", "ok"]
    assert [r["ood_score"] for r in readable] == [round(float(np.float32(1.234567 * i)), 4) for i in range(5)]
    decided = [r["predicted"] for r in ungated if not r["error"]]
    assert [r["predicted"] for r in readable] == [d if r["quality"] == "ok" else None
                                                  for r, d in zip(readable, decided)]
    assert decided == ["Healthy", "Healthy", "Tumor", "Tumor", "Tumor"]
    assert [r["prob_tumor"] for r in readable] == [r["prob_tumor"] for r in ungated if not r["error"]]
    assert rows[2]["error"] and rows[2]["quality"] is None and rows[2]["ood_score"] is None
    small = [r for r in predict.predict_files(gated_known_predictor, 8, files, 0.5, min_side=17) if not r["error"]]
    assert [r["quality"] for r in small] == ["too_small"] * 5 and not any(r["predicted"] for r in small)


def test_predict_files_default_threshold(tmp_path: Path):
    files = known_images(tmp_path)
    expected = "".join("T" if float(p) >= DEFAULT_THRESHOLD else "H" for p in KNOWN)
    assert decisions(list(predict.predict_files(known_predictor, 8, files))) == expected
    assert "H" in expected and "T" in expected


def test_cli_threshold_and_model_card_on_known_probabilities(tmp_path: Path, monkeypatch):
    """The CLI passes --threshold, else the card's threshold, to the decisions (the model is a stub)."""
    files = known_images(tmp_path / "in")
    monkeypatch.setattr(predict, "load_predictor", lambda path, gated: (known_predictor, 8))
    model = tmp_path / "model" / "model.keras"
    model.parent.mkdir()
    model.write_bytes(b"stub")  # only has to exist: load_predictor is the stub
    for threshold in (0.3, 0.6, 0.7):
        out = tmp_path / f"t{threshold}"
        assert main(["predict", "--model-file", str(model), "--inputs", *map(str, files), "--out", str(out),
                     "--format", "json", "--threshold", str(threshold)]) == 0
        assert decisions(json.loads((out / "predictions.json").read_text())) == KNOWN_DECISIONS[threshold]
    (model.parent / "model_card.json").write_text(json.dumps({"threshold": 0.7}))  # a card from before temperatures
    out = tmp_path / "card"
    assert main(["predict", "--model-file", str(model), "--inputs", *map(str, files), "--out", str(out)]) == 0
    assert decisions(read_csv(out / "predictions.csv")) == KNOWN_DECISIONS[0.7]
    assert all(r["prob_tumor"] == r["prob_tumor_raw"] for r in read_csv(out / "predictions.csv"))


def test_cli_temperature_from_the_card_and_threshold_override(tmp_path: Path, monkeypatch, caplog, capsys):
    """The card's temperature always applies; --threshold replaces only the card's threshold."""
    files = known_images(tmp_path / "in")
    monkeypatch.setattr(predict, "load_predictor", lambda path, gated: (known_predictor, 8))
    model = tmp_path / "model" / "model.keras"
    model.parent.mkdir()
    model.write_bytes(b"stub")
    card = model.parent / "model_card.json"
    card.write_text(json.dumps({"temperature": 3.0, "threshold": 0.55}))
    calibrated = apply_temperature(KNOWN, 3.0)
    for extra, threshold in (([], 0.55), (["--threshold", "0.4"], 0.4)):
        out = tmp_path / "out"
        caplog.clear()
        with caplog.at_level("INFO", logger="tumorclf"):
            assert main(["predict", "--model-file", str(model), "--inputs", *map(str, files), "--out", str(out),
                         "--format", "json", *extra]) == 0
        rows = [r for r in json.loads((out / "predictions.json").read_text()) if not r["error"]]
        assert [r["prob_tumor"] for r in rows] == [round(float(p), 6) for p in calibrated]
        assert decisions(rows) == "".join("HT"[d] for d in decide(calibrated, threshold))
        said = (f"temperature 3 and threshold 0.55 (from {card})" if not extra else
                f"temperature 3 (from {card}), threshold 0.4 (from --threshold)")
        assert said in caplog.text
    assert decisions(rows) != "".join("HT"[d] for d in decide(KNOWN, 0.4))  # calibrated, not raw, is decided

    for bad, says in (({"temperature": 0, "threshold": 0.5}, "no valid temperature"),
                      ({"temperature": "hot", "threshold": 0.5}, "no valid temperature"),
                      ({"temperature": 2.0}, "no valid threshold"), ([0.5], "unreadable")):
        card.write_text(json.dumps(bad))
        assert main(["predict", "--model-file", str(model), "--inputs", str(files[0])]) == 2
        err = capsys.readouterr().err
        assert err.startswith("tumorclf: error:") and says in err and err.count("\n") == 1, err
    # with --threshold, a card without a valid threshold still gives its temperature
    card.write_text(json.dumps({"temperature": 2.0}))
    assert main(["predict", "--model-file", str(model), "--inputs", *map(str, files), "--out", str(tmp_path / "t"),
                 "--format", "json", "--threshold", "0.5"]) == 0
    rows = [r for r in json.loads((tmp_path / "t" / "predictions.json").read_text()) if not r["error"]]
    assert [r["prob_tumor"] for r in rows] == [round(float(p), 6) for p in apply_temperature(KNOWN, 2.0)]


@pytest.fixture(scope="module")
def unsaturated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An untrained SimpleCNN (probabilities spread around 0.5, not saturated) as a folder like an export's:
    a SavedModel with model.keras beside it (no model card yet); and a folder of blob images. Once per session:
    under pytest-xdist the workers share it (`shared_once`; no test changes it)."""
    from conftest import shared_once, write_blob_dataset

    from tumorclf.serving.export import export_saved_model
    from tumorclf.models.factory import build_model

    def make(root: Path) -> None:
        keras.utils.set_random_seed(0)
        model = build_model("simplecnn", 32)
        export_saved_model(model, root / "model")
        model.save(root / "model" / "model.keras")
        write_blob_dataset(root / "data", per_class=12, size=48, seed=3)

    root = shared_once(tmp_path_factory, "predict_unsaturated", make)
    return root / "model", root / "data"


def run_predict(model: Path, inputs: Path, out: Path, *extra: str) -> list[dict]:
    """The rows `tumorclf predict` writes into the folder `out` as predictions.json."""
    assert main(["predict", "--model-file", str(model), "--inputs", str(inputs), "--out", str(out),
                 "--format", "json", *extra]) == 0
    rows = json.loads((out / "predictions.json").read_text())
    assert rows and not any(r["error"] for r in rows)
    return rows


def expected_decisions(rows: list[dict], threshold: float) -> list[str]:
    return ["Tumor" if r["prob_tumor"] >= threshold else "Healthy" for r in rows]


def test_saved_model_and_keras_agree_and_threshold_applies(unsaturated, tmp_path: Path):
    folder, images = unsaturated
    keras_rows = run_predict(folder / "model.keras", images, tmp_path / "k-preds")
    saved_rows = run_predict(folder, images, tmp_path / "sm-preds")
    probs = np.array([r["prob_tumor"] for r in keras_rows])
    np.testing.assert_allclose([r["prob_tumor"] for r in saved_rows], probs, atol=1e-5)

    # thresholds well clear (>= 5e-5) of every probability, so the 6-decimal rounding cannot flip a decision
    distinct = np.unique(probs)
    candidates = [(lo + hi) / 2 for lo, hi in zip(distinct, distinct[1:]) if hi - lo > 1e-4]
    assert len(candidates) >= 3, f"the model's outputs are saturated or constant: {distinct}"
    for threshold in (candidates[len(candidates) // 4], candidates[len(candidates) // 2],
                      candidates[3 * len(candidates) // 4]):
        for model in (folder / "model.keras", folder):
            rows = run_predict(model, images, tmp_path / "t-preds", "--threshold", repr(float(threshold)))
            predicted = [r["predicted"] for r in rows]
            assert predicted == expected_decisions(rows, threshold)
            assert {"Healthy", "Tumor"} <= set(predicted)


def test_default_threshold_is_the_one_recorded_with_the_model(unsaturated, calibrated_run: Path, trained_run: Path,
                                                              tmp_path: Path):
    run = RunDir(calibrated_run)
    recorded = recorded_operating_point(run.best_model)
    assert recorded[:3] == (RUN_TEMPERATURE, RUN_THRESHOLD, str(run.operating_point_file))
    assert recorded.description.startswith(f"operating point validation: threshold {RUN_THRESHOLD:.4g} on calibrated")
    old = RunDir(copy_with_operating_point(trained_run, tmp_path / "old_run", None))  # a run from before operating points
    assert recorded_operating_point(old.best_model)[:3] == (1.0, old.threshold(), str(old.metrics_file))
    lone = tmp_path / "lone" / "model.keras"
    lone.parent.mkdir()
    shutil.copy(trained_run / "best.keras", lone)
    assert recorded_operating_point(lone) is None  # predict falls back to T = 1 and DEFAULT_THRESHOLD

    folder, images = unsaturated
    carded = tmp_path / "carded"
    shutil.copytree(folder, carded)
    assert recorded_operating_point(carded) is None
    probs = np.unique([r["prob_tumor"] for r in run_predict(carded, images, tmp_path / "p-preds")])
    gaps = [(hi - lo, (lo + hi) / 2) for lo, hi in zip(probs, probs[1:])]
    middle = gaps[len(gaps) // 4 : 3 * len(gaps) // 4 + 1]  # the widest gap of the middle half: both classes
    width, threshold = max(middle)
    assert width > 1e-4 and threshold != DEFAULT_THRESHOLD, probs
    card = carded / predict.MODEL_CARD_FILE
    card.write_text(json.dumps({"threshold": float(threshold), "decoder": {"trained_with": DECODER_VERSION}}))
    for model in (carded, carded / "model.keras"):  # the SavedModel and the .keras file beside its card
        assert recorded_operating_point(model) == (1.0, threshold, str(card), None)  # no temperature: 1; no name
        rows = run_predict(model, images, tmp_path / "carded-preds")
        predicted = [r["predicted"] for r in rows]
        assert predicted == expected_decisions(rows, threshold)
        assert {"Healthy", "Tumor"} <= set(predicted)


def test_an_export_records_the_threshold_predict_uses(exported: Path):
    card = exported / predict.MODEL_CARD_FILE
    assert json.loads(card.read_text())["threshold"] == EXPORT_THRESHOLD
    assert json.loads(card.read_text())["temperature"] == RUN_TEMPERATURE
    for model in (exported, exported / "model.keras"):
        recorded = recorded_operating_point(model)
        assert recorded[:3] == (RUN_TEMPERATURE, EXPORT_THRESHOLD, str(card))
        assert recorded.description == json.loads(card.read_text())["operating_point_in_use"]["description"]


def test_predict_on_an_export_equals_its_own_outputs(exported: Path, calibrated_run: Path, trained_run: Path,
                                                     tmp_path: Path):
    """predict with the SavedModel, with its model.keras and with the run's best.keras (same temperature,
    the export's threshold given) agree, and equal the SavedModel's own prob_tumor and decision."""
    import tensorflow as tf

    folder = trained_run.parents[1] / "data"
    files = sorted(folder.rglob("*.*"))[::6]
    runs = [run_predict(exported, folder, tmp_path / "sm-preds"), run_predict(exported / "model.keras", folder,
                                                                             tmp_path / "k-preds"),
            run_predict(calibrated_run / "best.keras", folder, tmp_path / "run-preds", "--threshold",
                        str(EXPORT_THRESHOLD))]
    by_path = [{r["path"]: r for r in rows} for rows in runs]
    served = tf.saved_model.load(str(exported)).signatures["serve"](
        images=tf.constant(np.stack([decode_image(f, 48) for f in files]).astype("float32")))
    for rows in by_path:
        np.testing.assert_allclose([rows[str(f)]["prob_tumor"] for f in files], served["prob_tumor"].numpy(),
                                   atol=1e-5, rtol=0)
        np.testing.assert_allclose([rows[str(f)]["prob_tumor_raw"] for f in files],
                                   served["probabilities"].numpy()[:, 1], atol=1e-5, rtol=0)
        decided = served["decision"].numpy()
        assert [rows[str(f)]["predicted"] for f in files] == [("Healthy", "Tumor")[d] for d in decided]
    assert {"Healthy", "Tumor"} == {r["predicted"] for r in runs[0]}


def test_a_saved_model_without_its_card_uses_the_operating_point_inside_it(exported: Path, trained_run: Path,
                                                                           tmp_path: Path, caplog):
    folder = trained_run.parents[1] / "data"
    bare = tmp_path / "bare"
    shutil.copytree(exported, bare)
    (bare / predict.MODEL_CARD_FILE).unlink()
    with caplog.at_level("INFO", logger="tumorclf"):
        rows = run_predict(bare, folder, tmp_path / "bare-preds")
    assert f"temperature 2.5 and threshold {EXPORT_THRESHOLD:g} (from the SavedModel {bare})" in caplog.text
    assert rows == run_predict(exported, folder, tmp_path / "carded-preds")


def test_a_card_that_contradicts_its_saved_model_is_refused(exported: Path, trained_run: Path, tmp_path: Path,
                                                            capsys, caplog):
    folder = trained_run.parents[1] / "data"
    edited = tmp_path / "edited"
    shutil.copytree(exported, edited)
    card = edited / predict.MODEL_CARD_FILE
    values = json.loads(card.read_text())
    card.write_text(json.dumps({**values, "temperature": 1.0}))
    assert main(["predict", "--model-file", str(edited), "--inputs", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tumorclf: error:") and "calibrates with 2.5" in err and err.count("\n") == 1, err
    # another threshold in the card is predict's to apply (with a warning that the graph's decision differs)
    card.write_text(json.dumps({**values, "threshold": 0.9}))
    with caplog.at_level("WARNING", logger="tumorclf"):
        rows = run_predict(edited, folder, tmp_path / "t-preds")
    assert "decision output uses 0.37" in caplog.text
    assert [r["predicted"] for r in rows] == ["Tumor" if r["prob_tumor"] >= 0.9 else "Healthy" for r in rows]


def test_an_export_from_before_operating_points_still_predicts(unsaturated, tmp_path: Path):
    """A SavedModel whose `serve` has one unnamed output (the softmax), as exports were before."""
    import tensorflow as tf

    folder, images = unsaturated
    model = keras.saving.load_model(folder / "model.keras")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serve", fn=lambda x: model(x, training=False),
                         input_signature=[tf.TensorSpec((None, 32, 32, 3), tf.float32, name="images")])
    archive.write_out(str(tmp_path / "old"), verbose=False)
    rows = run_predict(tmp_path / "old", images, tmp_path / "old-preds")
    assert all(r["prob_tumor"] == r["prob_tumor_raw"] for r in rows)
    expected = run_predict(folder / "model.keras", images, tmp_path / "k-preds")
    np.testing.assert_allclose([r["prob_tumor"] for r in rows], [r["prob_tumor"] for r in expected], atol=1e-5)


def test_help_states_the_default_threshold():
    parser = argparse.ArgumentParser()
    predict_command.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert f"else {DEFAULT_THRESHOLD:g})" in text


def test_bad_arguments_give_one_line(trained_run: Path, tmp_path: Path, capsys):
    def error(args: list[str]) -> str:
        assert main(["predict", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("tumorclf: error:") and err.count("\n") == 1, err
        return err

    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    (tmp_path / "x.txt").write_text("a file, not a folder")
    model = ["--model-file", str(trained_run / "best.keras")]
    assert "cannot load model" in error(["--model-file", str(tmp_path / "nope.keras"), "--inputs", str(tmp_path)])
    assert "cannot load model" in error(["--model-file", str(tmp_path / "junk.keras"), "--inputs", str(tmp_path)])
    onnx_only = tmp_path / "onnx_export"  # an export in ONNX alone: the error names the file to give
    onnx_only.mkdir()
    (onnx_only / "model.onnx").write_bytes(b"not read")
    assert f"give {onnx_only / 'model.onnx'}" in error(["--model-file", str(onnx_only), "--inputs", str(tmp_path)])
    assert "--model-file is required" in error(["--inputs", str(tmp_path)])
    assert "nothing to score: give the images with --inputs" in error(model)
    assert "inputs not found" in error([*model, "--inputs", str(tmp_path / "missing")])
    assert "--out must be a folder" in error([*model, "--inputs", str(tmp_path), "--out", str(tmp_path / "x.txt")])
    assert main(["predict", *model, "--inputs", str(tmp_path), "--out", str(tmp_path / "p.json"), "--format",
                 "csv"]) == 2  # the earlier --out FILE: its notice, then the error
    notice, line = capsys.readouterr().err.strip().splitlines()
    assert notice.startswith("tumorclf: deprecated: --out names the output folder") and str(tmp_path) in notice
    assert line.startswith("tumorclf: error: predict: --format csv but --out") and line.endswith("--format csv")
    assert "invalid choice: 'xml'" in error([*model, "--inputs", str(tmp_path), "--format", "xml"])
    assert "--threshold must be in [0, 1]" in error([*model, "--inputs", str(tmp_path), "--threshold", "2"])
    assert "--batch-size must be a positive integer" in error([*model, "--inputs", str(tmp_path),
                                                               "--batch-size", "0"])


def test_without_out_the_rows_go_to_stdout(tmp_path: Path, monkeypatch, capsys):
    """CSV on stdout as before --out took a folder, JSON with --format json; the log stays on stderr."""
    files = known_images(tmp_path / "in")
    monkeypatch.setattr(predict, "load_predictor", lambda path, gated: (known_predictor, 8))
    model = tmp_path / "model" / "model.keras"
    model.parent.mkdir()
    model.write_bytes(b"stub")
    assert main(["predict", "--model-file", str(model), "--inputs", *map(str, files)]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["path"] for r in rows] == list(map(str, files)) and decisions(rows) == KNOWN_DECISIONS[0.5]
    assert main(["predict", "--model-file", str(model), "--inputs", *map(str, files), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == list(predict.predict_files(known_predictor, 8, files))
    assert not list(tmp_path.glob("**/predictions.*"))


def test_earlier_spellings_still_work_with_a_notice(tmp_path: Path, monkeypatch, capsys):
    """--model, paths without --inputs and --out FILE.csv|.json give what the new flags give, each with a
    `tumorclf: deprecated:` line on stderr."""
    files = known_images(tmp_path / "in")
    monkeypatch.setattr(predict, "load_predictor", lambda path, gated: (known_predictor, 8))
    model = tmp_path / "model" / "model.keras"
    model.parent.mkdir()
    model.write_bytes(b"stub")
    inputs = ["--inputs", *map(str, files)]
    assert main(["predict", "--model-file", str(model), *inputs, "--out", str(tmp_path / "new")]) == 0
    expected = read_csv(tmp_path / "new" / "predictions.csv")
    assert "deprecated" not in capsys.readouterr().err

    def deprecated(args: list[str], says: str) -> str:
        assert main(["predict", *args]) == 0
        err = capsys.readouterr().err
        assert f"tumorclf: deprecated: {says}" in err, err
        return err

    deprecated(["--model", str(model), *inputs, "--out", str(tmp_path / "old_model")],
               "--model will be removed; use --model-file")
    assert read_csv(tmp_path / "old_model" / "predictions.csv") == expected
    deprecated(["--model-file", str(model), *map(str, files), "--out", str(tmp_path / "positional")],
               "paths without a flag will not be accepted; use --inputs")
    assert read_csv(tmp_path / "positional" / "predictions.csv") == expected
    deprecated(["--model-file", str(model), *inputs, "--out", str(tmp_path / "preds.csv")],
               f"--out names the output folder; {tmp_path / 'preds.csv'} is taken as the file itself")
    assert read_csv(tmp_path / "preds.csv") == expected
    deprecated(["--model-file", str(model), *inputs, "--out", str(tmp_path / "preds.json")],
               f"--out names the output folder; {tmp_path / 'preds.json'} is taken as the file itself")
    assert json.loads((tmp_path / "preds.json").read_text()) == list(predict.predict_files(known_predictor, 8, files))


def test_a_backbone_model_loads_in_a_fresh_process(tmp_path: Path, trained_run: Path):
    """Custom layers (ImageNetPreprocessing) must be registered wherever a model is loaded, also in a fresh
    `python -m tumorclf predict`."""
    import subprocess
    import sys

    from tumorclf.models.factory import build_model

    build_model("vgg16", 48).save(tmp_path / "backbone.keras")
    image = sorted((trained_run.parents[1] / "data" / "tumor").iterdir())[0]
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "tumorclf", "predict", "--model-file",
                             str(tmp_path / "backbone.keras"), "--inputs", str(image), "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-1500:]
    rows = read_csv(out / "predictions.csv")
    assert rows[0]["error"] == "" and float(rows[0]["prob_tumor"]) >= 0
