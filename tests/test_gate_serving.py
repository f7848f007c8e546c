"""The input quality gate where a model is used: `tumorclf predict` (a run's best.keras, an export's SavedModel
and its model.keras) and the exported `serve` / `serve_bytes` signatures refuse the same images for the same
reasons, and give the same OOD score."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import blob_image, read_csv, shared_once
from tumorclf.data import decoder
from tumorclf.serving import export
from tumorclf.cli.main import main
from tumorclf.serving.export import export_run
from tumorclf.gate.quality_gate import GATE_ARRAYS, GATE_JSON, REASONS, Gate, fit_gate

SIZE = 48  # the trained run's input
MIN_SIDE = SIZE // 2  # as training fits it: too_small below half the input
# probe file name -> the quality every path must give it
EXPECTED = {"blank.png": "blank", "gray.png": "blank", "tiny.png": "too_small", "colour.png": "not_grayscale_mri",
            "noise.png": "out_of_distribution"}


@pytest.fixture(scope="module")
def gated_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained run with a gate fitted here (whatever training left): statistics on the run's
    own 120 training files, the OOD threshold on 100 fresh blob images (so at most 1 is rejected)."""
    def write(folder: Path) -> None:
        run = folder / "run"
        shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("evaluation*"))
        files = sorted((trained_run.parents[1] / "data").rglob("*.*"))
        train = np.stack([decoder.decode_image(f, SIZE) for f in files])
        labels = np.array([int(f.parent.name == "tumor") for f in files])
        rng = np.random.default_rng(2)
        val = np.stack([blob_image(rng, SIZE, tumor=bool(i % 2)) for i in range(100)])
        fit_gate(keras.saving.load_model(run / "best.keras"), train, labels, val, 16, MIN_SIDE).save(run)

    return shared_once(tmp_path_factory, "gate_serving_run", write) / "run"


@pytest.fixture(scope="module")
def probes(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file per reason (`EXPECTED`) and six of the run's training slices (in distribution: `ok`)."""
    folder = tmp_path_factory.mktemp("probes")
    rng = np.random.default_rng(5)

    def gray(values: np.ndarray) -> np.ndarray:
        return np.repeat(values.astype(np.uint8)[..., None], 3, axis=-1)

    images = {"blank.png": np.full((SIZE, SIZE, 3), 1, np.uint8),
              "gray.png": np.full((80, 64, 3), 128, np.uint8),
              "tiny.png": blob_image(rng, 16, tumor=True),  # a slice, but upscaled 3x
              "colour.png": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
              "noise.png": gray(rng.integers(0, 2, (SIZE, SIZE)) * 255)}  # salt-and-pepper gray noise
    for name, pixels in images.items():
        Image.fromarray(pixels).save(folder / name)
    data = trained_run.parents[1] / "data"
    for label in ("healthy", "tumor"):
        for source in sorted((data / label).iterdir())[:3]:  # a JPEG and PNGs
            shutil.copy(source, folder / f"{label}-{source.name}")
    return folder


def predict_json(model: Path, inputs: Path, out: Path, *extra: str) -> dict[str, dict]:
    """`tumorclf predict`'s rows of `inputs`, written as predictions.json into the folder `out`, by file name."""
    assert main(["predict", "--model-file", str(model), "--inputs", str(inputs), "--out", str(out), "--format", "json",
                 *extra]) == 0
    rows = json.loads((out / "predictions.json").read_text())
    assert rows and not any(r["error"] for r in rows)
    return {Path(r["path"]).name: r for r in rows}


def expected_quality(name: str) -> str:
    return EXPECTED.get(name, "ok")


@pytest.fixture(scope="module")
def predicted(gated_run: Path, probes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    return predict_json(gated_run / "best.keras", probes, tmp_path_factory.mktemp("predicted"))


@pytest.fixture(scope="module")
def exported(gated_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_once(tmp_path_factory, "gate_serving_exported",
                       lambda folder: export_run(gated_run, folder / "model")) / "model"


def test_predict_refuses_each_bad_image_for_its_reason(predicted: dict[str, dict], gated_run: Path):
    gate = Gate.load(gated_run)
    assert {name: r["quality"] for name, r in predicted.items()} == {name: expected_quality(name) for name in predicted}
    for name, row in predicted.items():
        assert 0 <= row["prob_tumor"] <= 1 and isinstance(row["ood_score"], float)  # a refused image keeps both
        assert row["ood_score"] == round(row["ood_score"], 4)
        if row["quality"] == "ok":
            assert row["predicted"] in ("Healthy", "Tumor") and row["ood_score"] <= gate.ood_threshold, name
        else:
            assert row["predicted"] is None, name
    assert predicted["noise.png"]["ood_score"] > gate.ood_threshold
    assert {predicted[n]["predicted"] for n in predicted if n.startswith("tumor-")} == {"Tumor"}  # not vacuous


def test_no_gate_decides_every_image(gated_run: Path, probes: Path, predicted: dict[str, dict], tmp_path: Path,
                                     caplog):
    with caplog.at_level("INFO", logger="tumorclf"):
        assert main(["predict", "--model-file", str(gated_run / "best.keras"), "--inputs", str(probes), "--out",
                     str(tmp_path), "--no-gate"]) == 0
    rows = {Path(r["path"]).name: r for r in read_csv(tmp_path / "predictions.csv")}
    assert rows.keys() == predicted.keys()
    assert all(r["quality"] == r["ood_score"] == "" and r["predicted"] in ("Healthy", "Tumor") for r in rows.values())
    assert {n: float(r["prob_tumor"]) for n, r in rows.items()} == {n: r["prob_tumor"] for n, r in predicted.items()}
    assert "not gated" in caplog.text and "no quality gate" not in caplog.text  # asked for: no warning


def signatures(saved_model: Path, files: list[Path]) -> dict[str, dict[str, np.ndarray]]:
    """`serve` on decode_image's pixels and `serve_bytes` on the files' bytes."""
    loaded = tf.saved_model.load(str(saved_model)).signatures
    pixels = np.stack([decoder.decode_image(f, SIZE) for f in files]).astype("float32")
    outputs = {"serve": loaded["serve"](images=tf.constant(pixels)),
               "serve_bytes": loaded["serve_bytes"](image_bytes=tf.constant([f.read_bytes() for f in files]))}
    return {name: {key: value.numpy() for key, value in out.items()} for name, out in outputs.items()}


def test_both_signatures_gate_as_predict(exported: Path, probes: Path, predicted: dict[str, dict]):
    files = sorted(probes.iterdir())
    rows = [predicted[f.name] for f in files]
    for name, out in signatures(exported, files).items():
        assert out["quality_code"].dtype == np.int32 and out["ood_score"].dtype == np.float32
        quality = [q.decode() for q in out["quality"]]
        assert quality == [REASONS[c] for c in out["quality_code"]], name
        np.testing.assert_allclose(out["ood_score"], [r["ood_score"] for r in rows], atol=1e-4, rtol=0, err_msg=name)
        np.testing.assert_allclose(out["prob_tumor"], [r["prob_tumor"] for r in rows], atol=1e-5, rtol=0,
                                   err_msg=name)
        decided = [{-1: None, 0: "Healthy", 1: "Tumor"}[d] for d in out["decision"]]
        for file, said, decision, row in zip(files, quality, decided, rows):
            if name == "serve" and row["quality"] == "too_small":  # resized pixels: the file's size is unknown
                assert said != "too_small" and (decision is None) == (said != "ok"), file.name
            else:  # predict's quality, and its class where the gate passes the image (-1 where it refuses it)
                assert (said, decision) == (row["quality"], row["predicted"]), (name, file.name)


def test_predict_with_the_export_agrees_with_the_run(exported: Path, probes: Path, predicted: dict[str, dict],
                                                     tmp_path: Path):
    assert (exported / GATE_ARRAYS).is_file() and (exported / GATE_JSON).is_file()  # beside model.keras
    assert int(tf.saved_model.load(str(exported)).quality_gate[0].numpy()) == MIN_SIDE
    for i, model in enumerate((exported, exported / "model.keras")):
        rows = predict_json(model, probes, tmp_path / f"p{i}")
        assert rows.keys() == predicted.keys()
        for name, row in rows.items():
            expected = predicted[name]
            assert (row["quality"], row["predicted"]) == (expected["quality"], expected["predicted"]), (model, name)
            assert row["ood_score"] == pytest.approx(expected["ood_score"], abs=1e-4), (model, name)
            assert row["prob_tumor"] == pytest.approx(expected["prob_tumor"], abs=1e-5), (model, name)


def test_model_card_states_the_gate(exported: Path, gated_run: Path):
    gate = Gate.load(gated_run)
    card = json.loads((exported / "model_card.json").read_text())
    facts = card["quality_gate"]
    assert facts["ood_threshold"] == pytest.approx(gate.ood_threshold) and facts["min_side"] == MIN_SIDE
    assert (facts["blank_spread"], facts["colour_chroma"]) == (gate.blank_spread, gate.colour_chroma)
    assert facts["validation"] == gate.validation and facts["validation"]["n"] == 100
    assert facts["validation"]["rejected"]["out_of_distribution"] <= 1  # at most 1% of validation
    assert list(facts["rules"]) == list(REASONS[1:]) and facts["reasons"] == list(REASONS)
    assert {"quality_code", "quality", "ood_score"} <= set(card["output"]) and "-1" in card["output"]["decision"]
    assert card["out_of_scope"][-1] == export.GATED_SCOPE
    assert "never too_small" in card["signatures"]["serve"]
    markdown = (exported / "MODEL_CARD.md").read_text()
    section = markdown.split("## Quality gate\n", 1)[1].split("\n## ", 1)[0]
    assert all(f"`{reason}`" in section for reason in REASONS[1:])
    assert f"above {gate.ood_threshold:.4g}" in section and "at most 1% of the validation split" in section
    assert f"under {MIN_SIDE} px" in section and "at most 20 of 255" in section and "above 8 of 255" in section
    rejected = facts["validation"]["rejected"]
    assert (f"On the validation split (100 images) the gate refused {facts['validation']['rejection_rate']:.1%} of "
            f"them: blank {rejected['blank']}, not_grayscale_mri {rejected['not_grayscale_mri']}, "
            f"out_of_distribution {rejected['out_of_distribution']}.") in section


def test_a_run_without_a_gate_exports_and_predicts_ungated(gated_run: Path, probes: Path, tmp_path: Path, caplog):
    run = tmp_path / "run"
    shutil.copytree(gated_run, run)
    for name in (GATE_ARRAYS, GATE_JSON):
        (run / name).unlink()
    out = export_run(run, tmp_path / "export")
    assert not (out / GATE_ARRAYS).exists()
    assert json.loads((out / "model_card.json").read_text())["quality_gate"] is None
    files = sorted(probes.iterdir())
    for name, outputs in signatures(out, files).items():
        assert set(outputs) == {"probabilities", "prob_tumor", "decision"}, name
        assert set(outputs["decision"].tolist()) <= {0, 1}
    for model, where in ((out, "in"), (run / "best.keras", "beside")):
        caplog.clear()
        with caplog.at_level("WARNING", logger="tumorclf"):
            rows = predict_json(model, probes, tmp_path / "p")
        assert f"no quality gate {where} {model} (fit one with `tumorclf gate --run RUN`" in caplog.text
        assert "predictions are not gated" in caplog.text
        assert all(r["quality"] is None and r["predicted"] in ("Healthy", "Tumor") for r in rows.values())


def test_a_broken_or_foreign_gate_is_one_line(gated_run: Path, probes: Path, tmp_path: Path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(gated_run / "best.keras", folder / "best.keras")
    shutil.copy(gated_run / GATE_ARRAYS, folder / GATE_ARRAYS)
    facts = json.loads((gated_run / GATE_JSON).read_text())
    image = str(probes / "blank.png")
    for text, says in (("{not json", "is unreadable"), (json.dumps({**facts, "layer": "avg_pool"}),
                                                         "does not fit the model beside it")):
        (folder / GATE_JSON).write_text(text)
        assert main(["predict", "--model-file", str(folder / "best.keras"), "--inputs", image]) == 2
        err = capsys.readouterr().err
        assert err.startswith("tumorclf: error:") and says in err and err.count("\n") == 1, err
        # --no-gate does not read the gate
        assert main(["predict", "--model-file", str(folder / "best.keras"), "--inputs", image, "--no-gate"]) == 0
        capsys.readouterr()
