from __future__ import annotations

import csv
import json
from pathlib import Path

import keras
import numpy as np
import pytest

from tumorclf.metrics.bootstrap import bootstrap_intervals, format_interval, point_metrics
from tumorclf.cli.main import main
from tumorclf.runs.config import ConfigError, load_yaml
from tumorclf.runs.folder import RunDir, RunError
from tumorclf.studies.study import INTERVAL_METRICS, _roc_points, kept_row, protocol, run_study, study_configs

LSO_PROTOCOL = "leave-source-out:figshare+sartaj"


def test_study_runs_skips_finished_and_reports_unavailable_weights(blob_dataset: Path, tmp_path: Path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    monkeypatch.delenv("TUMORCLF_WEIGHTS_DIR", raising=False)
    study = tmp_path / "study.yaml"
    study.write_text(f"""
output: {tmp_path / 'runs'}
results: {tmp_path / 'results'}
splits: [paper, grouped]
defaults: {{epochs: 2, image_size: 32, batch_size: 8, learning_rate: 0.01, weights_dir: {tmp_path}}}
runs:
  - {{model: simplecnn, max_minutes: 30}}
  - {{model: resnet50, imagenet: true}}
""")
    args = ["study", "--config", str(study), "--data", str(blob_dataset)]
    assert main([*args, "--status"]) == 0  # reports every row, trains nothing
    with open(tmp_path / "results" / "results.csv") as handle:
        assert [r["status"][:11] for r in csv.DictReader(handle)] == ["pending"] * 2 + ["unavailable"] * 2
    assert main([*args, "--model", "resnet50"]) == 0  # nothing of resnet50 can run; the other rows are kept
    with open(tmp_path / "results" / "results.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 4
    assert main(args) == 0
    with open(tmp_path / "results" / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["model"], r["split"], r["status"][:11]) for r in rows] == [
        ("simplecnn", "paper", "finished"), ("simplecnn", "grouped", "finished"),
        ("resnet50", "paper", "unavailable"), ("resnet50", "grouped", "unavailable")]
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in rows[2]["status"]
    assert 0 <= float(rows[0]["accuracy"]) <= 1 and float(rows[0]["train_minutes"]) >= 0
    assert [r["protocol"] for r in rows] == ["paper", "grouped"] * 2
    assert rows[0]["run_name"] == "simplecnn_scratch_paper_32px_seed42"
    for metric in INTERVAL_METRICS[:1] + ("auc",):  # intervals from the run folder's test predictions
        assert 0 <= float(rows[0][f"{metric}_lo"]) <= float(rows[0][metric]) <= float(rows[0][f"{metric}_hi"]) <= 1
    assert rows[2]["accuracy_lo"] == ""
    assert float(rows[0]["max_minutes"]) == 30 and rows[2]["max_minutes"] == ""
    tables = (tmp_path / "results" / "tables.md").read_text()
    assert "### Table 2" in tables and "| simplecnn (32 px, ≤2 epochs or ~30 min) | 0.7710 |" in tables
    assert (tmp_path / "results" / "roc_paper.png").is_file() and (tmp_path / "results" / "roc_grouped.png").is_file()
    assert list((tmp_path / "results" / "gradcam").glob("compare_*.png"))

    # a second invocation trains nothing: finished runs are kept as they are
    metrics = tmp_path / "runs" / "simplecnn_scratch_paper_32px_seed42" / "metrics.json"
    before = metrics.stat().st_mtime_ns
    assert main(args) == 0
    assert metrics.stat().st_mtime_ns == before


def test_study_file_errors(tmp_path: Path, capsys):
    study = tmp_path / "bad.yaml"
    study.write_text("runs: []\n")
    assert main(["study", "--config", str(study)]) == 2
    assert "non-empty `runs`" in capsys.readouterr().err


def test_study_values_are_coerced_like_config(blob_dataset: Path, tmp_path: Path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(f"""
output: {tmp_path / 'runs'}
results: {tmp_path / 'results'}
defaults: {{learning_rate: 1e-4, image_size: 32}}
runs:
  - {{model: simplecnn, epochs: '3', dropout: 2.5e-1}}
""")
    (cfg,) = study_configs(load_yaml(study), str(blob_dataset))
    assert isinstance(cfg.learning_rate, float) and cfg.learning_rate == 1e-4
    assert cfg.epochs == 3 and cfg.dropout == 0.25 and cfg.resume
    assert main(["study", "--config", str(study), "--data", str(blob_dataset), "--status"]) == 0
    assert "simplecnn" in capsys.readouterr().out


@pytest.mark.parametrize("defaults, entry, where", [
    ("{}", "{model: simplecnn, epochs: ten}", "runs entry 1 (simplecnn"),
    ("{epochs: ten}", "{model: simplecnn}", "defaults: "),
])
def test_bad_study_value_is_one_line_naming_the_key(tmp_path: Path, capsys, defaults, entry, where):
    study = tmp_path / "study.yaml"
    study.write_text(f"output: {tmp_path / 'runs'}\ndefaults: {defaults}\nruns:\n  - {entry}\n")
    capsys.readouterr()
    assert main(["study", "--config", str(study)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("tumorclf: error: ") and where in lines[0]
    assert "epochs: expected an integer, got 'ten'" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_study_model_takes_known_architectures(tmp_path: Path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text("runs:\n  - {model: simplecnn}\n")
    assert main(["study", "--config", str(study), "--model", "vgg"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "invalid choice: 'vgg'" in lines[0], lines


def test_study_only_still_works_with_a_notice(tmp_path: Path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(f"output: {tmp_path / 'runs'}\nresults: {tmp_path / 'results'}\nruns:\n  - {{model: simplecnn}}\n")
    assert main(["study", "--config", str(study), "--only", "simplecnn", "--status"]) == 0
    assert "tumorclf: deprecated: --only will be removed; use --model" in capsys.readouterr().err
    assert main(["study", "--config", str(study), "--only", "vgg"]) == 2  # the same choices as --model
    assert "invalid choice: 'vgg'" in capsys.readouterr().err


def test_roc_points_come_from_the_run_folder_reader(tmp_path: Path):
    run = RunDir(tmp_path)
    run.roc_file.write_text("threshold,fpr,tpr\ninf,0.0,0.0\n0.6,0.25,0.75\n0.2,1.0,1.0\n")
    fpr, tpr = _roc_points(run)
    assert fpr.tolist() == [0.0, 0.25, 1.0] and tpr.tolist() == [0.0, 0.75, 1.0]
    run.roc_file.write_text("fpr,tpr\n0.0,0.0\n")  # a corrupt roc.csv: one line, not a KeyError
    with pytest.raises(RunError, match="no threshold column"):
        _roc_points(run)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_csv(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def fake_finished_run(run_dir: Path, threshold: float = 0.6) -> dict:
    """A finished run folder without a model: metrics.json, test_predictions.csv, split.csv and roc.csv of
    60 test files in 20 duplicate groups of 3 (plus training files). Returns the test labels, P(Tumor),
    groups and the threshold."""
    rng = np.random.default_rng(7)
    groups = np.repeat(np.arange(20), 3)
    labels = groups % 2
    prob = np.clip(0.3 * labels + rng.uniform(0, 0.7, len(labels)), 0, 1).round(6)
    paths = [f"{'tumor' if y else 'healthy'}/img{i:03d}.png" for i, y in enumerate(labels)]
    run_dir.mkdir(parents=True)
    split = [[p, y, "test", g, f"sha{i}"] for i, (p, y, g) in enumerate(zip(paths, labels, groups))]
    split += [[f"train{i}.png", i % 2, "train", 100 + i, f"t{i}"] for i in range(10)]
    order = rng.permutation(len(split))  # split.csv in another order than test_predictions.csv
    write_csv(run_dir / "split.csv", ["path", "label", "split", "group", "sha256"], [split[i] for i in order])
    write_csv(run_dir / "test_predictions.csv", ["path", "label", "prob_tumor"], zip(paths, labels, prob))
    write_csv(run_dir / "roc.csv", ["threshold", "fpr", "tpr"], [["inf", 0, 0], [0.5, 0.2, 0.8], [0, 1, 1]])
    point = point_metrics(labels, prob, threshold)
    metrics = {"test_loss": 0.4, "accuracy": point["accuracy"], "precision": point["precision"],
               "recall": point["sensitivity"], "f1": point["f1"], "auc": point["auc"], "threshold": threshold,
               "n": len(labels), "per_class_accuracy": {"healthy": point["specificity"], "tumor": point["sensitivity"]},
               "best_epoch": 2, "epochs_run": 3, "train_minutes": 1.5}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return {"labels": labels, "prob": prob, "groups": groups, "threshold": threshold}


def test_an_entry_with_its_own_split_runs_once_on_it(tmp_path: Path):
    spec = {"splits": ["paper", "grouped"], "output": str(tmp_path / "runs"), "defaults": {"image_size": 32},
            "runs": [{"model": "simplecnn"},
                     {"model": "simplecnn", "image_size": 48, "split": "source", "sources": "provenance.csv",
                      "holdout_sources": "sartaj, figshare"},
                     {"model": "simplecnn", "image_size": 64, "split": "paper"}]}
    configs = study_configs(spec, None)
    assert [(c.image_size, c.split) for c in configs] == [(32, "paper"), (32, "grouped"), (48, "source"), (64, "paper")]
    source = configs[2]
    assert source.holdout == ("figshare", "sartaj") and source.sources == "provenance.csv"
    assert source.run_name == "simplecnn_scratch_lso-figshare+sartaj_48px_seed42"
    assert [protocol(c) for c in configs] == ["paper", "grouped", "leave-source-out:figshare+sartaj", "paper"]
    # crossed entries still refuse leave-source-out keys, naming the entry
    spec["runs"] = [{"model": "simplecnn", "holdout_sources": "sartaj"}]
    with pytest.raises(ConfigError, match=r"runs entry 1 \(simplecnn, paper split\).*belong to --split source"):
        study_configs(spec, None)
    # `source` among the study's splits, like any split: the leave-source-out keys (of the defaults or of the
    # entry) go to its configuration only, not to the others
    spec = {"splits": ["grouped", "source"], "output": str(tmp_path / "runs"),
            "defaults": {"image_size": 32, "sources": "provenance.csv", "holdout_sources": "sartaj,figshare"},
            "runs": [{"model": "simplecnn"}, {"model": "simplecnn", "image_size": 48, "unlisted_source": "misc"},
                     {"model": "simplecnn", "image_size": 64, "split": "paper"}]}
    configs = study_configs(spec, None)
    assert [(c.image_size, c.split) for c in configs] == [(32, "grouped"), (32, "source"), (48, "grouped"),
                                                           (48, "source"), (64, "paper")]
    for cfg in configs:
        keys = (cfg.sources, cfg.holdout_sources, cfg.unlisted_source)
        if cfg.split == "source":
            assert keys[:2] == ("provenance.csv", "figshare,sartaj") and protocol(cfg) == LSO_PROTOCOL
        else:
            assert keys == (None, None, None) and protocol(cfg) == cfg.split
    assert configs[3].unlisted_source == "misc" and configs[1].unlisted_source is None
    assert configs[1].run_name == "simplecnn_scratch_lso-figshare+sartaj_32px_seed42"
    # an entry of its own other split keeps its leave-source-out keys: an error naming it
    spec["runs"] = [{"model": "simplecnn", "split": "paper", "holdout_sources": "sartaj"}]
    with pytest.raises(ConfigError, match=r"runs entry 1 \(simplecnn, paper split\).*belong to --split source"):
        study_configs(spec, None)
    spec["splits"], spec["runs"] = ["paper", "grouped"], [{"model": "simplecnn"}]  # the defaults' keys: left out
    assert [(c.split, c.sources) for c in study_configs(spec, None)] == [("paper", None), ("grouped", None)]
    # two entries of one run folder are an error, not a silently repeated row
    spec["defaults"] = {"image_size": 32}
    spec["runs"] = [{"model": "simplecnn"}, {"model": "simplecnn", "split": "grouped"}]
    with pytest.raises(ConfigError, match="runs entry 2 .*same run folder simplecnn_scratch_grouped_32px_seed42"):
        study_configs(spec, None)


def test_protocol_column_and_intervals_of_a_finished_run(tmp_path: Path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(f"""
output: {tmp_path / 'runs'}
results: {tmp_path / 'results'}
splits: [paper, grouped]
bootstrap: 300
defaults: {{image_size: 32}}
runs:
  - {{model: simplecnn}}
  - {{model: simplecnn, split: source, sources: provenance.csv, holdout_sources: "sartaj,figshare"}}
""")
    fake = fake_finished_run(tmp_path / "runs" / "simplecnn_scratch_lso-figshare+sartaj_32px_seed42")
    assert main(["study", "--config", str(study), "--status"]) == 0
    assert "leave-source-out:figshare+sartaj" in capsys.readouterr().out
    rows = read_rows(tmp_path / "results" / "results.csv")
    assert [(r["protocol"], r["split"], r["status"]) for r in rows] == [
        ("paper", "paper", "pending"), ("grouped", "grouped", "pending"),
        ("leave-source-out:figshare+sartaj", "source", "finished")]
    assert rows[2]["run_name"] == "simplecnn_scratch_lso-figshare+sartaj_32px_seed42" and rows[2]["n_test"] == "60"

    expected = bootstrap_intervals(fake["labels"], fake["prob"], fake["groups"], fake["threshold"], 300)
    expected["recall"] = expected["sensitivity"]  # the same metric (Tumor positive), the same interval
    source = rows[2]
    assert {"precision", "recall"} <= set(INTERVAL_METRICS)
    for metric in INTERVAL_METRICS:
        assert [float(source[f"{metric}_lo"]), float(source[f"{metric}_hi"])] == expected[metric]["ci95"], metric
    for metric in ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "recall", "f1", "auc"):
        assert float(source[metric]) == pytest.approx(expected[metric]["value"]), metric
    # the duplicate groups of split.csv are the resampling unit (files alone give other intervals), and the
    # run's threshold decides (0.5 gives other intervals)
    assert expected != bootstrap_intervals(fake["labels"], fake["prob"], np.arange(60), fake["threshold"], 300)
    assert expected["accuracy"] != bootstrap_intervals(fake["labels"], fake["prob"], fake["groups"], 0.5, 300)["accuracy"]
    assert rows[0]["accuracy_lo"] == rows[0]["accuracy"] == ""

    tables = (tmp_path / "results" / "tables.md").read_text()
    lso = tables[tables.index("### Leave-source-out"):]
    cells = [format_interval(expected[m]) for m in ("accuracy", "balanced_accuracy", "sensitivity", "specificity",
                                                     "auc")]
    assert "| simplecnn (32 px, ≤50 epochs) | figshare, sartaj | 60 | " + " | ".join(cells) + " |" in lso
    assert format_interval(expected["accuracy"]).count("[") == 1 and "†" not in tables  # every number has one
    assert "| simplecnn (32 px, ≤50 epochs) | 0.7710 | - | pending |" in tables  # not in Table 2's source columns
    assert (tmp_path / "results" / "roc_lso-figshare+sartaj.png").is_file()


def test_numbers_of_an_earlier_results_csv_are_kept_when_the_run_folder_is_absent(tmp_path: Path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    # results.csv as committed before run_name/protocol/intervals existed; no run folder on this machine
    header = ["model", "imagenet", "recipe", "split", "image_size", "epochs", "max_minutes", "test_loss", "accuracy",
              "precision", "recall", "f1", "auc", "train_minutes", "epochs_run", "best_epoch", "status"]
    write_csv(results / "results.csv", header, [
        ["simplecnn", "False", "paper", "paper", 32, 6, 55, 0.42, 0.7956521739130434, 0.76, 0.8992042440318302,
         0.8278388278388278, 0.8919415937153076, 9.26, 5, 3, "finished"],
        ["simplecnn", "False", "paper", "grouped", 32, 6, "", "", "", "", "", "", "", "", "", "", "pending"],
        ["simplecnn", "False", "paper", "paper", 64, 6, "", 0.5, 0.61, 0.6, 0.6, 0.6, 0.6, 3.0, 2, 2, "finished"],
    ])
    study = tmp_path / "study.yaml"
    study.write_text(f"""
output: {tmp_path / 'runs'}
results: {results}
splits: [paper, grouped]
bootstrap: 200
defaults: {{image_size: 32, epochs: 6}}
runs:
  - {{model: simplecnn}}
  - {{model: simplecnn, split: source, sources: provenance.csv, holdout_sources: sartaj}}
""")
    fake = fake_finished_run(tmp_path / "runs" / "simplecnn_scratch_lso-sartaj_32px_seed42")

    def no_training(cfg):
        raise AssertionError(f"{cfg.run_name} should not be trained")

    import tumorclf.training.experiment

    monkeypatch.setattr(tumorclf.training.experiment, "run_experiment", no_training)
    (results / "roc_paper.png").write_bytes(b"a committed figure of runs whose folders are gone")
    for _ in range(2):  # the second pass reads the file the first wrote (matched on run_name then)
        assert main(["study", "--config", str(study), "--status"]) == 0
        rows = read_rows(results / "results.csv")
        assert [r["run_name"] for r in rows] == ["simplecnn_scratch_paper_32px_seed42",
                                                "simplecnn_scratch_grouped_32px_seed42",
                                                "simplecnn_scratch_lso-sartaj_32px_seed42"]
        kept = rows[0]
        assert kept["status"] == "finished (run folder not kept; no interval; measured with max_minutes 55)"
        assert float(kept["accuracy"]) == 0.7956521739130434 and float(kept["auc"]) == 0.8919415937153076
        assert float(kept["f1"]) == 0.8278388278388278 and kept["best_epoch"] == "3" and kept["train_minutes"] == "9.26"
        assert float(kept["sensitivity"]) == float(kept["recall"]) == 0.8992042440318302
        assert kept["max_minutes"] == "" and kept["protocol"] == "paper"
        assert all(kept[f"{m}_{end}"] == "" for m in INTERVAL_METRICS for end in ("lo", "hi"))
        assert rows[1]["status"] == "pending" and rows[1]["accuracy"] == ""  # an unfinished row keeps nothing
        assert rows[2]["status"] == "finished" and rows[2]["accuracy_lo"] != ""
        # a figure over kept rows is not redrawn from the runs that remain; one whose runs are all here is
        assert (results / "roc_paper.png").read_bytes() == b"a committed figure of runs whose folders are gone"
        assert (results / "roc_lso-sartaj.png").read_bytes().startswith(b"\x89PNG")
    # a run with preserved numbers is finished: running the study trains nothing of it (only the pending one)
    configs = study_configs(load_yaml(study), None)
    with pytest.raises(AssertionError, match="simplecnn_scratch_grouped_32px_seed42 should not be trained"):
        run_study(configs, results, run=True, n_resamples=0)

    tables = (results / "tables.md").read_text()
    assert "| simplecnn (32 px, ≤6 epochs) | 0.7710 | - | 0.7957† | 0.8278† | 0.8919† | pending |" in tables
    assert "† no interval: intervals need the run folder" in tables
    expected = bootstrap_intervals(fake["labels"], fake["prob"], fake["groups"], fake["threshold"], 200)
    assert f"| sartaj | 60 | {format_interval(expected['accuracy'])} |" in tables


def test_a_kept_row_from_before_recall_intervals_gets_sensitivitys():
    cfg = study_configs({"runs": [{"model": "simplecnn"}]}, None)[0]
    earlier = {"accuracy": "0.9", "sensitivity": "0.8", "recall": "0.8", "sensitivity_lo": "0.7",
               "sensitivity_hi": "0.85", "epochs": "50", "status": "finished"}
    row = kept_row(earlier, cfg)
    assert (row["recall_lo"], row["recall_hi"]) == (0.7, 0.85) and row["precision_lo"] is None
