from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from tumorclf.cli import main
from tumorclf.decoder import decode_image
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


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_run(trained_run, tmp_path_factory.mktemp("export") / "model")


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


def thresholds_between(probs: list[float]) -> list[float]:
    """Thresholds strictly between observed probabilities (clear of the 6-decimal rounding), plus 0."""
    distinct = sorted(set(probs))
    return [0.0] + [(lo + hi) / 2 for lo, hi in zip(distinct, distinct[1:]) if hi - lo > 1e-5]


def test_saved_model_and_keras_agree_and_threshold_applies(folder: Path, trained_run: Path, exported: Path,
                                                           tmp_path: Path):
    assert main(["predict", "--model", str(exported), str(folder / "a"), "--out", str(tmp_path / "sm.json")]) == 0
    assert main(["predict", "--model", str(trained_run / "best.keras"), str(folder / "a"),
                 "--out", str(tmp_path / "k.json")]) == 0
    saved = json.loads((tmp_path / "sm.json").read_text())
    keras_rows = json.loads((tmp_path / "k.json").read_text())
    probs = [r["prob_tumor"] for r in keras_rows]
    np.testing.assert_allclose([r["prob_tumor"] for r in saved], probs, atol=1e-5)

    # whatever the probabilities are (a tiny model may saturate), the decision is prob >= threshold
    candidates = thresholds_between(probs)
    for threshold in (candidates[0], candidates[len(candidates) // 2], candidates[-1]):
        out = tmp_path / f"t{threshold}.json"
        assert main(["predict", "--model", str(trained_run / "best.keras"), str(folder / "a"), "--out", str(out),
                     "--threshold", repr(threshold)]) == 0
        rows = json.loads(out.read_text())
        assert [r["predicted"] for r in rows] == ["Tumor" if r["prob_tumor"] >= threshold else "Healthy"
                                                  for r in rows]


def test_default_threshold_is_the_one_recorded_with_the_model(folder: Path, trained_run: Path, exported: Path,
                                                              tmp_path: Path):
    assert default_threshold(trained_run / "best.keras") == (RunDir(trained_run).threshold(),
                                                            str(RunDir(trained_run).metrics_file))
    lone = tmp_path / "lone" / "model.keras"
    lone.parent.mkdir()
    shutil.copy(trained_run / "best.keras", lone)
    assert default_threshold(lone) == (DEFAULT_THRESHOLD, "default")

    assert main(["predict", "--model", str(exported), str(folder / "a"), "--out", str(tmp_path / "p.json")]) == 0
    probs = [r["prob_tumor"] for r in json.loads((tmp_path / "p.json").read_text())]
    candidates = thresholds_between(probs)
    threshold = candidates[len(candidates) // 2]
    carded = tmp_path / "carded"
    shutil.copytree(exported, carded)
    card = json.loads((carded / "model_card.json").read_text())
    (carded / "model_card.json").write_text(json.dumps({**card, "threshold": threshold}))
    for model in (carded, carded / "model.keras"):  # the SavedModel and the .keras file beside its card
        assert default_threshold(model)[0] == threshold
        out = tmp_path / "carded.json"
        assert main(["predict", "--model", str(model), str(folder / "a"), "--out", str(out)]) == 0
        rows = json.loads(out.read_text())
        assert [r["predicted"] for r in rows] == ["Tumor" if r["prob_tumor"] >= threshold else "Healthy"
                                                  for r in rows]


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
