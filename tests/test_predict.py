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

import tumorclf.predict as predict
from tumorclf.cli import main
from tumorclf.decoder import DECODER_VERSION, decode_image
from tumorclf.export import export_run
from tumorclf.predict import default_threshold
from tumorclf.rundir import DEFAULT_THRESHOLD, RunDir


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


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_run(trained_run, tmp_path_factory.mktemp("export") / "model", threshold=EXPORT_THRESHOLD)


def read_csv(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_predict_folder_keeps_going_past_a_broken_file(folder: Path, trained_run: Path, tmp_path: Path, caplog):
    out = tmp_path / "preds.csv"
    with caplog.at_level("INFO", logger="tumorclf"):
        assert main(["predict", "--model", str(trained_run / "best.keras"), str(folder), "--out", str(out),
                     "--batch-size", "16"]) == 0
    rows = read_csv(out)
    assert list(rows[0]) == ["path", "prob_tumor", "predicted", "error"]
    assert len(rows) == 121
    broken = [r for r in rows if r["path"].endswith("broken.jpg")]
    assert len(broken) == 1 and broken[0]["error"] and broken[0]["prob_tumor"] == ""
    good = [r for r in rows if not r["error"]]
    assert len(good) == 120 and all(r["predicted"] in ("Healthy", "Tumor") for r in good)
    # progress of a batch larger than one batch: at least the closing line
    assert any(r.getMessage().startswith("predict: 121/121 files") for r in caplog.records)

    # same decoding as training: equal to the model on decode_image's pixels
    model = keras.saving.load_model(trained_run / "best.keras")
    first = Path(good[0]["path"])
    expected = model.predict(decode_image(first, 48)[None].astype("float32"), verbose=0)[0, 1]
    assert float(good[0]["prob_tumor"]) == pytest.approx(expected, abs=1e-5)


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


def known_predictor(batch: np.ndarray) -> np.ndarray:
    """[Healthy, Tumor] float32 probabilities: `KNOWN` by each image's grey level."""
    index = np.rint((batch[:, 0, 0, 0] - 20) / 40).astype(int)
    assert ((batch - batch[:, :1, :1, :1]) == 0).all() and (0 <= index).all() and (index < len(KNOWN)).all()
    p = KNOWN[index]
    return np.stack([1 - p, p], axis=1)


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
    assert decisions(rows) == KNOWN_DECISIONS[threshold]


def test_predict_files_default_threshold(tmp_path: Path):
    files = known_images(tmp_path)
    expected = "".join("T" if float(p) >= DEFAULT_THRESHOLD else "H" for p in KNOWN)
    assert decisions(list(predict.predict_files(known_predictor, 8, files))) == expected
    assert "H" in expected and "T" in expected


def test_cli_threshold_and_model_card_on_known_probabilities(tmp_path: Path, monkeypatch):
    """The CLI passes --threshold, else the card's threshold, to the decisions (the model is a stub)."""
    files = known_images(tmp_path / "in")
    monkeypatch.setattr(predict, "load_predictor", lambda path: (known_predictor, 8))
    model = tmp_path / "model" / "model.keras"
    model.parent.mkdir()
    model.write_bytes(b"stub")  # only has to exist: load_predictor is the stub
    for threshold in (0.3, 0.6, 0.7):
        out = tmp_path / f"t{threshold}.json"
        assert main(["predict", "--model", str(model), *map(str, files), "--out", str(out),
                     "--threshold", str(threshold)]) == 0
        assert decisions(json.loads(out.read_text())) == KNOWN_DECISIONS[threshold]
    (model.parent / "model_card.json").write_text(json.dumps({"threshold": 0.7}))
    out = tmp_path / "card.csv"
    assert main(["predict", "--model", str(model), *map(str, files), "--out", str(out)]) == 0
    assert decisions(read_csv(out)) == KNOWN_DECISIONS[0.7]


@pytest.fixture(scope="module")
def unsaturated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An untrained SimpleCNN (probabilities spread around 0.5, not saturated) as a folder like an export's:
    a SavedModel with model.keras beside it (no model card yet); and a folder of blob images."""
    from conftest import write_blob_dataset

    from tumorclf.export import export_saved_model
    from tumorclf.models import build_model

    root = tmp_path_factory.mktemp("unsaturated")
    keras.utils.set_random_seed(0)
    model = build_model("simplecnn", 32)
    export_saved_model(model, root / "model")
    model.save(root / "model" / "model.keras")
    return root / "model", write_blob_dataset(root / "data", per_class=12, size=48, seed=3)


def run_predict(model: Path, inputs: Path, out: Path, *extra: str) -> list[dict]:
    assert main(["predict", "--model", str(model), str(inputs), "--out", str(out), *extra]) == 0
    rows = json.loads(out.read_text())
    assert rows and not any(r["error"] for r in rows)
    return rows


def expected_decisions(rows: list[dict], threshold: float) -> list[str]:
    return ["Tumor" if r["prob_tumor"] >= threshold else "Healthy" for r in rows]


def test_saved_model_and_keras_agree_and_threshold_applies(unsaturated, tmp_path: Path):
    folder, images = unsaturated
    keras_rows = run_predict(folder / "model.keras", images, tmp_path / "k.json")
    saved_rows = run_predict(folder, images, tmp_path / "sm.json")
    probs = np.array([r["prob_tumor"] for r in keras_rows])
    np.testing.assert_allclose([r["prob_tumor"] for r in saved_rows], probs, atol=1e-5)

    # thresholds well clear (>= 5e-5) of every probability, so the 6-decimal rounding cannot flip a decision
    distinct = np.unique(probs)
    candidates = [(lo + hi) / 2 for lo, hi in zip(distinct, distinct[1:]) if hi - lo > 1e-4]
    assert len(candidates) >= 3, f"the model's outputs are saturated or constant: {distinct}"
    for threshold in (candidates[len(candidates) // 4], candidates[len(candidates) // 2],
                      candidates[3 * len(candidates) // 4]):
        for model in (folder / "model.keras", folder):
            rows = run_predict(model, images, tmp_path / "t.json", "--threshold", repr(float(threshold)))
            predicted = [r["predicted"] for r in rows]
            assert predicted == expected_decisions(rows, threshold)
            assert {"Healthy", "Tumor"} <= set(predicted)


def test_default_threshold_is_the_one_recorded_with_the_model(unsaturated, trained_run: Path, tmp_path: Path):
    assert default_threshold(trained_run / "best.keras") == (RunDir(trained_run).threshold(),
                                                            str(RunDir(trained_run).metrics_file))
    lone = tmp_path / "lone" / "model.keras"
    lone.parent.mkdir()
    shutil.copy(trained_run / "best.keras", lone)
    assert default_threshold(lone) == (DEFAULT_THRESHOLD, "default")

    folder, images = unsaturated
    carded = tmp_path / "carded"
    shutil.copytree(folder, carded)
    assert default_threshold(carded) == (DEFAULT_THRESHOLD, "default")
    probs = np.unique([r["prob_tumor"] for r in run_predict(carded, images, tmp_path / "p.json")])
    gaps = [(hi - lo, (lo + hi) / 2) for lo, hi in zip(probs, probs[1:])]
    middle = gaps[len(gaps) // 4 : 3 * len(gaps) // 4 + 1]  # the widest gap of the middle half: both classes
    width, threshold = max(middle)
    assert width > 1e-4 and threshold != DEFAULT_THRESHOLD, probs
    card = carded / predict.MODEL_CARD_FILE
    card.write_text(json.dumps({"threshold": float(threshold), "decoder": {"trained_with": DECODER_VERSION}}))
    for model in (carded, carded / "model.keras"):  # the SavedModel and the .keras file beside its card
        assert default_threshold(model) == (threshold, str(card))
        rows = run_predict(model, images, tmp_path / "carded.json")
        predicted = [r["predicted"] for r in rows]
        assert predicted == expected_decisions(rows, threshold)
        assert {"Healthy", "Tumor"} <= set(predicted)


def test_an_export_records_the_threshold_predict_uses(exported: Path):
    card = exported / predict.MODEL_CARD_FILE
    assert json.loads(card.read_text())["threshold"] == EXPORT_THRESHOLD
    for model in (exported, exported / "model.keras"):
        assert default_threshold(model) == (EXPORT_THRESHOLD, str(card))


def test_help_states_the_default_threshold():
    parser = argparse.ArgumentParser()
    predict.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert f"else {DEFAULT_THRESHOLD:g})" in text


def test_bad_arguments_give_one_line(trained_run: Path, tmp_path: Path, capsys):
    def error(args: list[str]) -> str:
        assert main(["predict", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("tumorclf: error:") and err.count("\n") == 1, err
        return err

    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    assert "cannot load model" in error(["--model", str(tmp_path / "nope.keras"), str(tmp_path)])
    assert "cannot load model" in error(["--model", str(tmp_path / "junk.keras"), str(tmp_path)])
    assert "inputs not found" in error(["--model", str(trained_run / "best.keras"), str(tmp_path / "missing")])
    assert "--out must end in .csv or .json" in error(["--model", str(trained_run / "best.keras"), str(tmp_path),
                                                       "--out", "x.txt"])
    assert "--threshold must be in [0, 1]" in error(["--model", str(trained_run / "best.keras"), str(tmp_path),
                                                     "--threshold", "2"])
    assert "--batch-size must be a positive integer" in error(["--model", str(trained_run / "best.keras"),
                                                               str(tmp_path), "--batch-size", "0"])


def test_a_backbone_model_loads_in_a_fresh_process(tmp_path: Path, trained_run: Path):
    """Custom layers (ImageNetPreprocessing) must be registered wherever a model is loaded; the
    `python -m tumorclf.predict` alias runs `tumorclf predict`."""
    import subprocess
    import sys

    from tumorclf.models import build_model

    build_model("resnet50", 48).save(tmp_path / "resnet.keras")
    image = sorted((trained_run.parents[1] / "data" / "tumor").iterdir())[0]
    out = tmp_path / "p.csv"
    result = subprocess.run([sys.executable, "-m", "tumorclf.predict", "--model", str(tmp_path / "resnet.keras"),
                             str(image), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-1500:]
    assert read_csv(out)[0]["error"] == "" and float(read_csv(out)[0]["prob_tumor"]) >= 0
