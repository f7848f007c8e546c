"""`tumorclf explain --boxes`: a run's heatmaps scored against tumour boxes, with the randomisation check, and
the one-line refusals of box files and options it cannot use."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from conftest import BLOB_CENTRE, BLOB_RADIUS, one_error_line
from tumorclf.cli.main import main
from tumorclf.explain.boxes import SCORES


def blob_boxes(run: Path, dest: Path, row: str | None = None) -> Path:
    """The tumour blob's box (conftest.blob_image) for every tumour file of the run's data, as paths relative
    to the data folder; or a file with `row` alone."""
    (cy, cx), r = BLOB_CENTRE, BLOB_RADIUS
    files = sorted((run.parents[1] / "data" / "tumor").iterdir())
    rows = [row] if row else [f"tumor/{f.name},blob,{cx - r},{cy - r},{cx + r},{cy + r}" for f in files]
    dest.write_text("path,box_source,x0,y0,x1,y1\n" + "\n".join(rows) + "\n")
    return dest


def test_localisation_of_the_trained_run_on_its_test_split(trained_run: Path, tmp_path: Path, capsys):
    boxes, out = blob_boxes(trained_run, tmp_path / "boxes.csv"), tmp_path / "scores"
    assert main(["explain", "--run", str(trained_run), "--boxes", str(boxes), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "gradcam++" in printed and str(out) in printed

    test_tumours = [r["path"] for r in csv.DictReader(open(trained_run / "split.csv"))
                    if r["split"] == "test" and r["label"] == "1"]
    with open(out / "localisation.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(Path(r["path"]).name for r in rows) == sorted(Path(p).name for p in test_tumours * 2)
    assert {r["method"] for r in rows} == {"gradcam", "gradcam++"}
    assert all(0 <= float(r[k]) <= 1 for r in rows for k in SCORES)
    assert all(-1 <= float(r["rank_correlation"]) <= 1 for r in rows)

    summary = json.loads((out / "localisation.json").read_text())
    assert summary["images"] == len(test_tumours) and summary["layer"] == "relu3"
    for method, scores in summary["methods"].items():
        assert scores["n"] == len(test_tumours) and isinstance(scores["explains_model"], bool)
        low, high = scores["energy_share"]["ci95"]
        assert low <= scores["energy_share"]["value"] <= high
        # a model that found the blob puts its tumour evidence there: far more than the box's share of the image
        assert scores["energy_share"]["value"] > 2 * scores["area_share"]["value"], method
        assert set(scores["randomised"]) == set(SCORES)
        assert list(scores["by_box_source"]) == ["blob"] and scores["by_box_source"]["blob"]["n"] == scores["n"]
    for method in ("gradcam", "gradcam++"):
        assert (out / f"localisation_{method}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the validation split on request
    assert main(["explain", "--run", str(trained_run), "--boxes", str(boxes), "--out", str(tmp_path / "val"),
                 "--subset", "val", "--method", "gradcam"]) == 0
    val_tumours = [r for r in csv.DictReader(open(trained_run / "split.csv"))
                   if r["split"] == "val" and r["label"] == "1"]
    assert json.loads((tmp_path / "val" / "localisation.json").read_text())["images"] == len(val_tumours)

    # an earlier result is not replaced unless asked
    assert main(["explain", "--run", str(trained_run), "--boxes", str(boxes), "--out", str(out)]) == 2
    assert "--overwrite" in one_error_line(capsys)


def test_a_folder_is_scored_with_byte_copies_as_one_group(trained_run: Path, tmp_path: Path):
    folder = tmp_path / "folder" / "tumor"
    folder.mkdir(parents=True)
    sources = sorted((trained_run.parents[1] / "data" / "tumor").iterdir())[:3]
    for source in sources:
        shutil.copy(source, folder / source.name)
    shutil.copy(sources[0], folder / f"copy{sources[0].suffix}")
    boxes = blob_boxes(trained_run, tmp_path / "boxes.csv")
    boxes.write_text(boxes.read_text() + f"tumor/copy{sources[0].suffix},blob,0.18,0.18,0.42,0.42\n")
    out = tmp_path / "scores"
    assert main(["explain", "--run", str(trained_run), "--boxes", str(boxes), "--inputs", str(folder.parent),
                 "--out", str(out), "--method", "gradcam"]) == 0
    summary = json.loads((out / "localisation.json").read_text())
    assert summary["images"] == 4 and summary["groups"] == 3 and list(summary["methods"]) == ["gradcam"]


@pytest.mark.parametrize("row, message", [
    ("tumor/img001.png,blob,0.1,0.1,1.2,0.3", "are outside [0, 1]"),
    ("tumor/img001.png,blob,0.4,0.1,0.2,0.3", "is inverted or empty"),
    ("elsewhere/nothing.png,blob,0.1,0.1,0.2,0.3", "names one of the"),
])
def test_bad_box_files_are_one_line(trained_run: Path, tmp_path: Path, capsys, row: str, message: str):
    boxes = blob_boxes(trained_run, tmp_path / "boxes.csv", row)
    assert main(["explain", "--run", str(trained_run), "--boxes", str(boxes), "--out", str(tmp_path / "o")]) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "o" / "localisation.json").exists()


def test_options_boxes_cannot_use_are_one_line(trained_run: Path, tmp_path: Path, capsys):
    boxes = blob_boxes(trained_run, tmp_path / "boxes.csv")
    out = str(tmp_path / "o")
    assert main(["explain", "--run", str(trained_run), "--boxes", str(boxes), "--out", out, "--target",
                 "healthy"]) == 2
    assert "--target must be tumor" in one_error_line(capsys)
    assert main(["explain", "--run", str(trained_run), "--boxes", str(tmp_path / "none.csv"), "--out", out]) == 2
    assert "inputs not found" in one_error_line(capsys)
