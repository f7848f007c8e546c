"""`RunDir`, the run-folder contract: creation without clobbering, the schema, and readers that fail with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tumorclf.cli.main import main
from tumorclf.runs.config import Config
from tumorclf.errors import UserError
from tumorclf.runs.folder import DEFAULT_THRESHOLD, SCHEMA_VERSION, RunDir, RunError, RunExistsError


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert isinstance(exc.value, UserError) and "\n" not in message, message
    return message


def recorded_run(path: Path, **record) -> RunDir:
    """A run folder whose config.json is `record` over a valid one."""
    run = RunDir(path)
    run.create()
    run.write_record(Config(model="simplecnn", image_size=32), resolved={"data": str(path / "data"), "decoder": "2"},
                     split={"test": 3}, skipped_files=1, versions={"keras": "3"})
    if record:
        raw = json.loads(run.config_file.read_text())
        run.config_file.write_text(json.dumps({**raw, **record}))
    return run


def test_create_never_clobbers_without_being_asked(tmp_path: Path):
    run = RunDir(tmp_path / "runs" / "a")
    assert run.create() is False and run.path.is_dir()
    (run.path / "keep.txt").write_text("x")
    with pytest.raises(RunExistsError) as exc:
        run.create()
    assert "--resume" in one_line(exc) and (run.path / "keep.txt").is_file()
    assert run.create(resume=True) is True and (run.path / "keep.txt").is_file()
    assert run.create(overwrite=True) is False and run.path.is_dir() and not any(run.path.iterdir())


@pytest.mark.parametrize("flags", [{}, {"overwrite": True}, {"resume": True}])
def test_create_on_a_file_is_one_line_and_keeps_the_file(tmp_path: Path, flags: dict):
    path = tmp_path / "a_file"
    path.write_text("not a run")
    with pytest.raises(RunExistsError) as exc:
        RunDir(path).create(**flags)
    assert "is not a folder" in one_line(exc) and path.read_text() == "not a run"


def test_create_under_a_file_is_one_line(tmp_path: Path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(RunError) as exc:
        RunDir(tmp_path / "a_file" / "run").create(overwrite=True)
    assert "cannot create run folder" in one_line(exc)


def test_record_round_trip(tmp_path: Path):
    record = recorded_run(tmp_path / "run").record()
    assert record.config.model == "simplecnn" and record.config.image_size == 32
    assert record.schema == SCHEMA_VERSION and record.decoder == "2" and record.skipped_files == 1
    assert record.split == {"test": 3} and record.versions == {"keras": "3"}
    assert RunDir(tmp_path / "run").data_root() == tmp_path / "run" / "data"


def test_a_run_from_before_the_schema_reads_as_schema_1(tmp_path: Path):
    run = recorded_run(tmp_path / "run")
    raw = json.loads(run.config_file.read_text())
    del raw["schema"], raw["versions"]
    run.config_file.write_text(json.dumps(raw))
    assert run.record().schema == 1 and run.record().versions == {}


def test_a_newer_schema_is_refused(tmp_path: Path):
    run = recorded_run(tmp_path / "run", schema=SCHEMA_VERSION + 1)
    with pytest.raises(RunError) as exc:
        run.record()
    assert "newer tumorclf" in one_line(exc) and f"schema {SCHEMA_VERSION + 1}" in str(exc.value)


@pytest.mark.parametrize("text, says", [
    ("{not json", "is unreadable"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('"config"', "expected a JSON object, got str"),
    ("{}", "`config` is missing"),
    ('{"config": ["model", "vgg16"]}', "`config` is not a JSON object"),
    ('{"config": "simplecnn"}', "`config` is not a JSON object"),
    ('{"config": {"no_such_key": 1}}', "unknown config keys: no_such_key"),
    ('{"config": {"epochs": "ten"}}', "holds no valid config"),
    ('{"schema": "two", "config": {}}', "schema 'two' is not an integer"),
    ('{"config": {}, "resolved": ["data"]}', "`resolved` is not a JSON object"),
    ('{"config": {}, "skipped_files": "3"}', "skipped_files '3' is not an integer"),
])
def test_a_corrupt_config_json_is_one_line(tmp_path: Path, text: str, says: str):
    run = RunDir(tmp_path)
    run.config_file.write_text(text)
    with pytest.raises(RunError) as exc:
        run.record()
    assert says in one_line(exc)


def test_a_binary_config_json_is_one_line(tmp_path: Path):
    RunDir(tmp_path).config_file.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(RunError) as exc:
        RunDir(tmp_path).config()
    assert "is unreadable" in one_line(exc)


def test_no_data_folder_recorded_is_one_line(tmp_path: Path):
    run = recorded_run(tmp_path / "run", resolved={})
    with pytest.raises(RunError) as exc:
        run.data_root()
    assert "records no data folder" in one_line(exc)


def test_threshold_default_recorded_and_corrupt(tmp_path: Path):
    run = RunDir(tmp_path)
    assert run.threshold() == DEFAULT_THRESHOLD  # no metrics.json
    run.metrics_file.write_text(json.dumps({"accuracy": 0.9}))
    assert run.threshold() == DEFAULT_THRESHOLD  # metrics.json from before thresholds were recorded
    run.metrics_file.write_text(json.dumps({"threshold": 0.3}))
    assert run.threshold() == 0.3
    for bad in ("high", None, 1.5, True):
        run.metrics_file.write_text(json.dumps({"threshold": bad}))
        with pytest.raises(RunError) as exc:
            run.threshold()
        assert "threshold" in one_line(exc)
    run.metrics_file.write_text("[0.5]")
    with pytest.raises(RunError) as exc:
        run.threshold()
    assert "expected a JSON object" in one_line(exc)


def test_operating_point_round_trip_defaults_and_corruption(tmp_path: Path):
    from tumorclf.metrics.calibration import OperatingPoint

    run = RunDir(tmp_path)
    run.metrics_file.write_text(json.dumps({"threshold": 0.3}))
    assert run.operating_point() is None and run.temperature() == 1.0
    assert run.threshold() == run.metrics_threshold() == 0.3  # a run from before operating points
    point = OperatingPoint(2.5, 0.62, 0.95, 0.41, "validation", 10, {"ece_before": float("nan")})
    run.write_operating_point(point)
    assert "NaN" not in run.operating_point_file.read_text()  # strict JSON: NaN is written as null
    assert run.operating_point().temperature == 2.5 and run.temperature() == 2.5
    assert run.threshold() == 0.62 and run.metrics_threshold() == 0.3  # calibrated vs raw P(Tumor)
    for bad in ({"temperature": 0}, {"threshold": 1.5}, {"threshold": "high"}):
        run.operating_point_file.write_text(json.dumps({**point.to_dict(), **bad}))
        with pytest.raises(RunError) as exc:
            run.threshold()
        assert "operating_point.json is corrupt" in one_line(exc)
    run.operating_point_file.write_text(json.dumps({"temperature": 2.0}))
    with pytest.raises(RunError) as exc:
        run.operating_point()
    assert "missing" in one_line(exc)


def test_val_predictions_keep_float32_precision_and_a_write_error_is_one_line(tmp_path: Path):
    import numpy as np

    run = RunDir(tmp_path)
    probs = np.float32([0.123456789, 1e-9, 0.99999994])
    kept = run.write_val_predictions(["a.png", "b.png", "c.png"], np.array([0, 1, 1]), probs)
    assert np.array_equal(np.float32(kept), probs)  # read back as the same float32
    assert [float(r["prob_tumor"]) for r in run.val_predictions()] == kept
    assert [r["label"] for r in run.val_predictions()] == ["0", "1", "1"]
    with pytest.raises(RunError) as exc:
        RunDir(tmp_path / "val_predictions.csv").write_val_predictions(["a"], [0], [0.5])  # a file, not a folder
    assert "cannot write into" in one_line(exc)


def test_missing_folder_and_files_are_one_line(tmp_path: Path):
    with pytest.raises(RunError) as exc:
        RunDir(tmp_path / "nope").split_rows()
    assert "run folder not found" in one_line(exc)
    for reader, name in ((RunDir.split_rows, "split.csv"), (RunDir.test_predictions, "test_predictions.csv"),
                         (RunDir.history, "history.csv"), (RunDir.roc, "roc.csv"), (RunDir.metrics, "metrics.json"),
                         (RunDir.record, "config.json")):
        with pytest.raises(RunError) as exc:
            reader(RunDir(tmp_path))
        assert f"has no {name}" in one_line(exc)
    with pytest.raises(RunError) as exc:
        RunDir(tmp_path).require_finished()
    assert "not a finished run" in one_line(exc)
    assert RunDir(tmp_path).progress() is None


@pytest.mark.parametrize("text, says", [
    ("", "no path, label, split column"),
    ("path,label\na.png,1\n", "no split column"),
    ("path,label,split,group,sha256\na.png,1,test,0,s1\nb.png,0\n", "line 3 is cut short"),
])
def test_a_corrupt_csv_is_one_line(tmp_path: Path, text: str, says: str):
    run = RunDir(tmp_path)
    run.split_file.write_text(text)
    with pytest.raises(RunError) as exc:
        run.split_rows()
    assert says in one_line(exc)


def test_csv_readers(tmp_path: Path):
    run = RunDir(tmp_path)
    run.split_file.write_text("path,label,split,group,sha256\na.png,1,test,0,s1\n")
    assert run.split_rows() == [{"path": "a.png", "label": "1", "split": "test", "group": "0", "sha256": "s1"}]
    run.history_file.write_text("epoch,loss\n")
    assert run.history() == []
    run.roc_file.write_text("threshold,fpr,tpr\ninf,0.0,0.0\n0.7,0.25,0.5\n0.1,1.0,1.0\n")
    assert run.roc() == [(float("inf"), 0.0, 0.0), (0.7, 0.25, 0.5), (0.1, 1.0, 1.0)]
    run.roc_file.write_text("threshold,fpr,tpr\n0.7,x,0.5\n")
    with pytest.raises(RunError) as exc:
        run.roc()
    assert "roc.csv is corrupt" in one_line(exc)


def test_progress_without_its_keys_is_one_line(tmp_path: Path):
    run = RunDir(tmp_path)
    run.progress_file.write_text(json.dumps({"epochs_done": 2}))
    with pytest.raises(RunError) as exc:
        run.progress()
    assert "no backup, best_val_f1, best_epoch" in one_line(exc)


def test_file_names(tmp_path: Path):
    run = RunDir(tmp_path)
    assert run.evaluation_dir == tmp_path / "evaluation"
    assert run.backup_file(3) == tmp_path / "backup" / "epoch_0003.weights.h5"
    assert run.backup_files() == []
    run.backup_dir.mkdir()
    for epoch in (12, 2):
        run.backup_file(epoch).write_bytes(b"")
    (run.backup_dir / "other.h5").write_bytes(b"")
    assert run.backup_files() == [run.backup_file(2), run.backup_file(12)]


def test_a_corrupt_run_folder_is_one_cli_line(tmp_path: Path, capsys):
    run = RunDir(tmp_path / "run")
    run.create()
    run.best_model.write_bytes(b"")
    run.metrics_file.write_text(json.dumps({"threshold": 0.5}))
    run.config_file.write_text(json.dumps({"schema": SCHEMA_VERSION, "config": "simplecnn"}))
    assert main(["evaluate", "--run", str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tumorclf: error:") and "holds no valid config" in err[0], err
