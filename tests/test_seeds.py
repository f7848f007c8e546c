"""Seeds as an axis: several seeds per configuration in `train` and in a study, and results read as a mean with
its spread (`tumorclf.studies.seeds`)."""

from __future__ import annotations

import numpy as np
import pytest

from tumorclf.cli.main import parser
from tumorclf.cli.train import configs_from_args
from tumorclf.runs.config import ConfigError
from tumorclf.studies import seeds
from tumorclf.studies.study import study_configs, tables_markdown


def row(name: str, accuracy: float, status: str = "finished", **extra) -> dict:
    return {"run_name": name, "protocol": "grouped", "status": status, "accuracy": accuracy,
            "accuracy_lo": accuracy - 0.02, "accuracy_hi": accuracy + 0.02, "split": "grouped", "imagenet": False,
            "model": "simplecnn", "recipe": "paper", "measures": "none", "image_size": 32, "epochs": 2,
            "max_minutes": None, **extra}


def test_a_configuration_is_a_run_name_without_its_seed():
    assert seeds.configuration("vgg16_imagenet_grouped_224px_seed42_robust") == "vgg16_imagenet_grouped_224px_robust"
    assert seeds.configuration("simplecnn_scratch_paper_32px_seed7") == "simplecnn_scratch_paper_32px"


def test_summary_equals_numpy():
    values = [0.91, 0.95, 0.93, 0.97]
    s = seeds.summary(values)
    assert s["n"] == 4 and s["mean"] == pytest.approx(np.mean(values))
    assert s["sd"] == pytest.approx(np.std(values, ddof=1)) and (s["min"], s["max"]) == (0.91, 0.97)
    assert seeds.summary([0.9])["sd"] is None
    assert seeds.format_summary(seeds.summary([0.9])) == "0.900 (1 seed)"
    assert seeds.format_summary(s) == "0.940 ± 0.026 (0.910-0.970, 4 seeds)"


def test_runs_are_grouped_by_configuration_and_unfinished_runs_left_out():
    rows = [row("a_seed1", 0.90), row("a_seed2", 0.92), row("b_seed1", 0.80), row("a_seed3", 0.5, status="pending")]
    entries = {e["configuration"]: e for e in seeds.across_seeds(rows, ("accuracy",))}
    assert set(entries) == {"a", "b"} and entries["a"]["runs"] == ["a_seed1", "a_seed2"]
    assert entries["a"]["accuracy"]["n"] == 2 and entries["a"]["accuracy"]["mean"] == pytest.approx(0.91)
    assert entries["a"]["accuracy_runs"][0] == pytest.approx((0.90, 0.88, 0.92))


def test_a_difference_counts_only_beyond_the_seed_spread():
    a = seeds.across_seeds([row("a_seed1", 0.90), row("a_seed2", 0.94)], ("accuracy",))[0]
    overlapping = seeds.across_seeds([row("b_seed1", 0.93), row("b_seed2", 0.97)], ("accuracy",))[0]
    apart = seeds.across_seeds([row("c_seed1", 0.96), row("c_seed2", 0.98)], ("accuracy",))[0]
    one_seed = seeds.across_seeds([row("d_seed1", 0.99)], ("accuracy",))[0]
    assert seeds.compare(a, overlapping, "accuracy")["exceeds_seed_spread"] is False
    result = seeds.compare(a, apart, "accuracy")
    assert result["exceeds_seed_spread"] is True and result["difference"] == pytest.approx(0.05)
    assert seeds.compare(a, one_seed, "accuracy")["exceeds_seed_spread"] is False  # one seed has no spread


def test_the_study_tables_gain_an_across_seeds_section_only_with_two_seeds():
    same = {"balanced_accuracy": 0.9, "sensitivity": 0.9, "specificity": 0.9, "auc": 0.95}
    rows = [row("a_seed1", 0.90, **same), row("a_seed2", 0.92, **same),
            row("b_seed1", 0.96, **same), row("b_seed2", 0.98, **same)]
    text = tables_markdown(rows, 0)
    assert "### Across seeds" in text and "0.910 ± 0.014" in text
    assert "- b against a: accuracy +0.060 (beyond the seed spread); balanced accuracy +0.000 (within the seed " in text
    assert "### Across seeds" not in tables_markdown(rows[:1], 0)


def test_a_study_runs_each_configuration_once_per_seed(tmp_path):
    spec = {"splits": ["grouped"], "seeds": [1, 2], "output": str(tmp_path),
            "runs": [{"model": "simplecnn"}, {"model": "simplecnn", "image_size": 64, "seeds": [3]}]}
    configs = study_configs(spec, str(tmp_path))
    assert [(c.seed, c.image_size) for c in configs] == [(1, 224), (2, 224), (3, 64)]
    assert len({c.run_name for c in configs}) == 3
    with pytest.raises(ConfigError, match="repeats a seed"):
        study_configs({**spec, "seeds": [1, 1]}, str(tmp_path))
    with pytest.raises(ConfigError, match="empty list"):
        study_configs({**spec, "seeds": []}, str(tmp_path))


def test_train_takes_several_seeds_one_run_each(tmp_path):
    args = parser("train").parse_args(["train", "--data", str(tmp_path), "--preset", "paper", "--seed", "1", "2",
                                       "--name", "trial"])
    _, configs = configs_from_args(args)
    assert [(c.seed, c.name) for c in configs] == [(1, "trial_seed1"), (2, "trial_seed2")]
    one = parser("train").parse_args(["train", "--data", str(tmp_path), "--preset", "paper", "--seed", "5"])
    assert [c.seed for c in configs_from_args(one)[1]] == [5]
    with pytest.raises(ConfigError, match="repeats a seed"):
        configs_from_args(parser("train").parse_args(["train", "--data", str(tmp_path), "--seed", "1", "1"]))
