from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from tumorclf.data import decode_image
from tumorclf.export import export_run
from tumorclf.predict import main


@pytest.fixture
def folder(tmp_path: Path, trained_run: Path) -> Path:
    """A nested folder of slices from the run's data, with one broken file among them."""
    source = trained_run.parents[1] / "data"
    target = tmp_path / "incoming"
    shutil.copytree(source / "tumor", target / "a")
    shutil.copytree(source / "healthy", target / "b" / "c")
    (target / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    return target


def read_csv(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_predict_folder_keeps_going_past_a_broken_file(folder: Path, trained_run: Path, tmp_path: Path):
    out = tmp_path / "preds.csv"
    assert main(["--model", str(trained_run / "best.keras"), str(folder), "--out", str(out), "--batch-size", "16"]) == 0
    rows = read_csv(out)
    assert list(rows[0]) == ["path", "prob_tumor", "predicted", "error"]
    assert len(rows) == 121
    broken = [r for r in rows if r["path"].endswith("broken.jpg")]
    assert len(broken) == 1 and broken[0]["error"] and broken[0]["prob_tumor"] == ""
    good = [r for r in rows if not r["error"]]
    assert len(good) == 120 and all(r["predicted"] in ("Healthy", "Tumor") for r in good)

    # same decoding as training: equal to the model on decode_image's pixels
    model = keras.saving.load_model(trained_run / "best.keras")
    first = Path(good[0]["path"])
    expected = model.predict(decode_image(first, 48)[None].astype("float32"), verbose=0)[0, 1]
    assert float(good[0]["prob_tumor"]) == pytest.approx(expected, abs=1e-5)


def test_saved_model_and_keras_agree_and_threshold_applies(folder: Path, trained_run: Path, tmp_path: Path):
    exported = export_run(trained_run, tmp_path / "export")
    assert main(["--model", str(exported), str(folder / "a"), "--out", str(tmp_path / "sm.json")]) == 0
    assert main(["--model", str(trained_run / "best.keras"), str(folder / "a"), "--out", str(tmp_path / "k.json"),
                 "--threshold", "1.0"]) == 0
    saved = json.loads((tmp_path / "sm.json").read_text())
    keras_rows = json.loads((tmp_path / "k.json").read_text())
    np.testing.assert_allclose([r["prob_tumor"] for r in saved], [r["prob_tumor"] for r in keras_rows], atol=1e-5)
    assert {r["predicted"] for r in keras_rows if r["prob_tumor"] < 1.0} == {"Healthy"}


def test_bad_arguments(trained_run: Path, tmp_path: Path, capsys):
    assert main(["--model", str(tmp_path / "nope.keras"), str(tmp_path)]) == 2
    assert "cannot load model" in capsys.readouterr().err
    assert main(["--model", str(trained_run / "best.keras"), str(tmp_path / "missing")]) == 2
    assert "inputs not found" in capsys.readouterr().err
    assert main(["--model", str(trained_run / "best.keras"), str(tmp_path), "--out", "x.txt"]) == 2


def test_a_backbone_model_loads_in_a_fresh_process(tmp_path: Path, trained_run: Path):
    """Custom layers (ImageNetPreprocessing) must be registered wherever a model is loaded."""
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
