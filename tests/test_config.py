"""The typed config: defaults, YAML then flags, coercion to each field's type, one-line errors."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from tumorclf.cli.main import Parser, main, parser
from tumorclf.cli.train import add_arguments, config_from_args
from tumorclf.runs.config import Config, ConfigError, build_config, flag_of


def flags(*argv: str) -> Config:
    """The Config of `tumorclf train ARGV` (the preset it applies is tested in test_presets.py)."""
    return config_from_args(parser("train").parse_args(["train", *argv]))[1]


def test_defaults_follow_the_paper():
    cfg = Config()
    assert (cfg.image_size, cfg.batch_size, cfg.learning_rate, cfg.momentum) == (224, 32, 1e-4, 0.9)
    assert cfg.split_fractions == (0.7, 0.15, 0.15) and cfg.seed == 42 and cfg.augment


def test_yaml_then_flags(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("model: vgg16\nimagenet: true\nepochs: 7\nimage-size: 128\nclasses: [normal, glioma]\n")
    cfg = flags("--config", str(path), "--epochs", "3")
    assert (cfg.model, cfg.imagenet, cfg.epochs, cfg.image_size) == ("vgg16", True, 3, 128)
    assert cfg.classes == ("normal", "glioma")
    assert cfg.run_name == "vgg16_imagenet_grouped_128px_seed42"
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_every_field_has_a_flag_with_its_help():
    train = Parser(prog="tumorclf train")
    add_arguments(train)
    flags = set(train._option_string_actions)
    for field in dataclasses.fields(Config):
        assert flag_of(field) in flags, field.name
        assert field.metadata["help"]
    assert {"--no-augment", "--gradcam", "--imagenet", "--no-imagenet", "--out"} <= flags


def test_help_states_each_default_once_and_speaks_of_flags():
    train = Parser(prog="tumorclf train")
    add_arguments(train)
    helps = {action.option_strings[0]: action.help for action in train._actions
             if action.option_strings[0] not in ("-h", "--config") and action.help != "==SUPPRESS=="}
    field_names = [field.name for field in dataclasses.fields(Config) if "_" in field.name]
    for flag, text in helps.items():
        assert text.count("default") == 1, (flag, text)
        assert not [name for name in field_names if name in text], (flag, text)  # config keys, not flags
    assert helps["--data"] == "folder with two class folders (default: $TUMORCLF_DATA)"
    assert helps["--head-epochs"].startswith("with --fine-tune two_phase:")
    assert helps["--out"] == "parent folder of run folders (default: runs)"
    assert helps["--split-fractions"].endswith("(default: 0.7 0.15 0.15)")
    assert "--output" not in train.format_help()  # the deprecated spelling is not offered


def test_old_output_flag_still_works_with_a_notice(capsys):
    assert flags("--out", "elsewhere").output == "elsewhere"
    assert capsys.readouterr().err == ""
    assert flags("--output", "elsewhere").output == "elsewhere"
    assert capsys.readouterr().err.startswith("tumorclf: deprecated: --output will be removed; use --out")


def test_yaml_values_are_coerced_to_the_field_types(tmp_path: Path):
    path = tmp_path / "run.yaml"
    # PyYAML reads 1e-4 (no dot) as a string; quoted numbers and yes/no are strings or bools too
    path.write_text("learning_rate: 1e-4\nepochs: '7'\nmomentum: 0.8\naugment: 'no'\nsplit_fractions: [0.8, 0.1, 0.1]\n"
                    "patience: null\nmax_minutes: 30\n")
    cfg = build_config(str(path))
    assert cfg.learning_rate == 1e-4 and isinstance(cfg.learning_rate, float)
    assert cfg.epochs == 7 and isinstance(cfg.epochs, int)
    assert cfg.augment is False and cfg.patience is None and cfg.max_minutes == 30.0
    assert cfg.split_fractions == (0.8, 0.1, 0.1)


@pytest.mark.parametrize("yaml_text, message", [
    ("epochs: ten\n", "epochs: expected an integer, got 'ten'"),
    ("epochs: 2.5\n", "epochs: expected an integer"),
    ("learning_rate: fast\n", "learning_rate: expected a number, got 'fast'"),
    ("imagenet: maybe\n", "imagenet: expected true or false"),
    ("epochs: true\n", "epochs: expected an integer"),
    ("split_fractions: 0.7\n", "split_fractions: expected a list of 3 numbers"),
    ("classes: [a, b, c]\n", "classes: expected a list of 2 strings, got"),
    ("model: [vgg16]\n", "model: expected a string"),
])
def test_yaml_type_errors_name_the_key_and_the_type(tmp_path: Path, yaml_text: str, message: str):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match="^" + message.replace("[", r"\[")):
        build_config(str(path))


@pytest.mark.parametrize("values, message", [
    ({"model": "alexnet"}, "unknown model"),
    ({"epochs": 0}, "epochs must be a positive"),
    ({"split_fractions": [0.5, 0.5, 0.5]}, "split_fractions"),
    ({"momentum": 1.5}, "momentum"),
    ({"model": "simplecnn", "imagenet": True}, "no ImageNet weights"),
    ({"fine_tune": "from_layer"}, "unfreeze_from"),
    ({"model": "vgg16", "fine_tune": "two_phase", "epochs": 1}, "head_epochs"),
    ({"max_minutes": 0}, "max_minutes must be > 0"),
    ({"feature_views": 0}, "feature_views must be a positive"),
    ({"recipe": "quick"}, "unknown recipe"),
    ({"intensity": "zscore"}, "unknown intensity 'zscore'; choose one of: raw, percentile"),
    ({"framing": "tight"}, "unknown framing 'tight'; choose one of: full, foreground"),
    ({"acquisition": True, "augment": False}, "acquisition is train-time augmentation"),
    ({"recipe": "robust", "model": "vgg16", "imagenet": True, "augment": False},
     r"turn acquisition off too \(--no-acq"),
    ({"elastic": True, "augment": False}, r"keep augmentation, or turn elastic off too \(--no-elastic\)"),
    ({"colour": "red"}, "unknown config keys: colour"),
    ({"target_sensitivity": 0}, r"target_sensitivity must be in \(0, 1\], got 0"),
    ({"target_sensitivity": -0.5}, "target_sensitivity must be in"),
    ({"target_sensitivity": 1.01}, "target_sensitivity must be in"),
    ({"target_sensitivity": float("nan")}, "target_sensitivity must be in"),
    ({"split": "source"}, "split source needs --sources FILE.csv and --holdout-sources"),
    ({"split": "source", "sources": "s.csv"}, "needs --sources FILE.csv and --holdout-sources"),
    ({"split": "source", "sources": "s.csv", "holdout_sources": " , "}, "needs --sources FILE.csv and --holdout"),
    ({"holdout_sources": "a"}, "belong to --split source"),
    ({"sources": "s.csv", "unlisted_source": "misc"}, "belong to --split source"),
    ({"sources": "s.csv"}, "--sources, --holdout-sources and --unlisted-source belong to --split source"),
    ({"split": "paper", "sources": "s.csv"}, "belong to --split source"),
])
def test_bad_values_are_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_dict(values)


def test_target_sensitivity():
    assert Config().target_sensitivity == 0.95
    assert Config(target_sensitivity=1).target_sensitivity == 1.0
    assert flags("--target-sensitivity", "0.9").target_sensitivity == 0.9
    # a launch option: training does not use it (the operating point is refitted from the validation
    # predictions at the end of the run), so a run can be resumed with another target
    assert Config(target_sensitivity=0.9).defining() == Config().defining()
    assert "target_sensitivity" not in Config().defining()


def test_holdout_sources_are_one_sorted_spelling():
    cfg = Config(split="source", sources="s.csv", holdout_sources="b, a")
    assert cfg.holdout_sources == "a,b" and cfg.holdout == ("a", "b")
    assert cfg.run_name == "simplecnn_scratch_lso-a+b_224px_seed42"
    assert Config(split="source", sources="s.csv", holdout_sources=" b,a,,b ").holdout_sources == "a,b"
    assert cfg.defining() == Config(split="source", sources="s.csv", holdout_sources="a,b").defining()
    assert Config.from_dict(cfg.to_dict()) == cfg
    cfg = flags("--split", "source", "--sources", "s.csv", "--holdout-sources", "figshare", "br35h",
                "--unlisted-source", "misc", "--model", "vgg16", "--image-size", "64")
    assert (cfg.holdout, cfg.unlisted_source) == (("br35h", "figshare"), "misc")
    assert cfg.run_name == "vgg16_scratch_lso-br35h+figshare_64px_seed42"


def test_comma_separated_holdout_sources_still_work_with_a_notice(capsys):
    cfg = flags("--split", "source", "--sources", "s.csv", "--holdout-sources", "figshare, br35h")
    assert cfg.holdout == ("br35h", "figshare")
    assert capsys.readouterr().err.startswith("tumorclf: deprecated: comma-separated lists will not be accepted")
    assert Config(holdout_sources=None).holdout == () and Config().run_name == "simplecnn_scratch_grouped_224px_seed42"


def test_launch_options_do_not_define_the_run():
    a, b = Config(), Config(output="elsewhere", resume=True, name="x", data="d", cache_dir="c", weights_dir="w")
    assert a.defining() == b.defining()
    assert Config(epochs=3).defining() != a.defining()


def test_bad_yaml(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_config(str(path))
    with pytest.raises(ConfigError, match="not found"):
        build_config(str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "ten"], "epochs: expected an integer, got 'ten'"),
    (["train", "--learning-rate", "1e-4x"], "learning_rate: expected a number"),
    (["train", "--model", "alexnet"], "invalid choice: 'alexnet'"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "--target-sensitivity", "0"], "target_sensitivity must be in (0, 1], got 0"),
    (["train", "--target-sensitivity", "high"], "target_sensitivity: expected a number, got 'high'"),
    (["train", "--split", "leave-one-out"], "invalid choice: 'leave-one-out'"),
    (["train", "--sources", "s.csv"], "--sources, --holdout-sources and --unlisted-source belong to --split source"),
    (["nonsense"], "invalid choice: 'nonsense'"),
    (["predict"], "required"),  # its model file
])
def test_cli_errors_are_one_line_and_exit_2(argv, message, capsys, tmp_path: Path):
    assert main([*argv, *(["--data", str(tmp_path)] if argv[0] == "train" else [])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tumorclf: error:") and message in err[0], err


def test_yaml_error_through_the_cli(tmp_path: Path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: ten\n")
    assert main(["train", "--config", str(path), "--data", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "tumorclf: error: epochs: expected an integer, got 'ten'"


def test_console_command_lists_the_subcommands():
    result = subprocess.run(["tumorclf", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("train", "evaluate", "predict", "explain", "export", "study", "bench", "leakage", "curves"):
        assert f"    {command} " in result.stdout


@pytest.mark.parametrize("argv, command", [*((["tumorclf", c], c) for c in ("train", "study", "ablation", "predict",
                                                                              "leakage")), (["tumorclf.run"], "train")])
def test_python_m_entry_points(argv: list[str], command: str):
    """`python -m tumorclf COMMAND` for every command, and `python -m tumorclf.run` (the study's way to train)."""
    result = subprocess.run([sys.executable, "-m", *argv, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith(f"usage: tumorclf {command}"), result.stderr


def test_robust_recipe_presets_its_measures_and_an_explicit_value_wins():
    """`--recipe robust` turns on percentile intensity, foreground framing and acquisition augmentation; a value
    given explicitly (flag, YAML, study entry) wins, and each such difference names the run folder."""
    robust = Config(model="vgg16", imagenet=True, recipe="robust")
    assert (robust.intensity, robust.framing, robust.acquisition) == ("percentile", "foreground", True)
    assert robust.run_name == "vgg16_imagenet_grouped_224px_seed42_robust"
    fast = Config(model="vgg16", imagenet=True, recipe="fast")
    assert (fast.intensity, fast.framing, fast.acquisition) == ("raw", "full", False)
    assert Config(model="vgg16", imagenet=True, recipe="robust", acquisition=False).run_name.endswith(
        "_robust_no-acquisition")
    one = Config(model="vgg16", imagenet=True, recipe="fast", framing="foreground", acquisition=True)
    assert one.run_name.endswith("_fast_foreground_acquisition")
    assert Config().run_name == "simplecnn_scratch_grouped_224px_seed42"  # the paper recipe: no suffix


def test_a_config_json_written_before_the_measures_reads_as_the_fast_recipe():
    """Run folders from before these fields existed resolve to raw, full, no acquisition: the same run name
    and the same defining values as when they were trained."""
    old = Config(model="vgg16", imagenet=True, recipe="fast").to_dict()
    for key in ("intensity", "framing", "acquisition", "elastic"):
        old.pop(key)
    cfg = Config.from_dict(old)
    assert (cfg.intensity, cfg.framing, cfg.acquisition) == ("raw", "full", False)
    assert cfg.run_name == "vgg16_imagenet_grouped_224px_seed42_fast"
    assert Config.from_dict(Config(model="vgg16", imagenet=True, recipe="robust").to_dict()).acquisition is True


def test_measure_flags_parse(tmp_path):
    """--intensity, --framing and --acquisition/--no-acquisition reach the config."""
    import argparse

    from tumorclf.runs.config import add_config_flags

    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    args = parser.parse_args(["--model", "vgg16", "--imagenet", "--recipe", "robust", "--intensity", "raw",
                              "--no-acquisition"])
    cfg = build_config(**vars(args))
    assert (cfg.intensity, cfg.framing, cfg.acquisition) == ("raw", "foreground", False)


def test_external_folders_are_a_list_that_does_not_change_the_run():
    cfg = flags("--external", "a/b", "c")
    assert cfg.external == "a/b,c" and cfg.external_folders == [Path("a/b"), Path("c")]
    assert cfg.run_name == flags().run_name and "external" not in cfg.defining()
    assert flags().external_folders == []


def test_a_split_seed_names_the_run_and_defines_it_as_used():
    assert Config(seed=43, split_seed=42).run_name.endswith("_seed43-split42")
    assert Config(seed=42, split_seed=42).run_name == Config(seed=42).run_name
    assert Config(seed=42, split_seed=42).defining() == Config(seed=42).defining()
    assert Config(seed=43, split_seed=42).defining()["split_seed"] == 42
    assert Config(seed=43).split_seed_used == 43
