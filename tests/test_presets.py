"""`tumorclf train --preset`: what a bare `train --data DIR` chooses, and the study's exact recipe one flag away."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tumorclf.cli.main import main, parser
from tumorclf.cli.train import config_from_args
from tumorclf.models.registry import spec
from tumorclf.runs.config import Config
from tumorclf.training.presets import PRESETS, describe, resolve


def weights_folder(tmp_path: Path) -> Path:
    """A folder holding a file under VGG16's ImageNet name: presence is all `auto` looks at."""
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / spec("vgg16").weights_file).write_bytes(b"not read")
    return folder


def train_config(*argv: str) -> tuple[str, Config]:
    return config_from_args(parser("train").parse_args(["train", *argv]))


def test_auto_trains_the_robust_recipe_when_the_vgg16_file_is_there(tmp_path: Path):
    preset, cfg = train_config("--data", "d", "--weights-dir", str(weights_folder(tmp_path)))
    assert preset == "robust"
    assert (cfg.model, cfg.imagenet, cfg.recipe, cfg.image_size, cfg.feature_views, cfg.epochs, cfg.patience) == (
        "vgg16", True, "robust", 128, 2, 12, 4)
    _, large = train_config("--data", "d", "--preset", "robust-224")
    assert (large.recipe, large.image_size, large.feature_views, large.epochs, large.patience) == (
        "robust", 224, 3, 12, 4)
    _, quick = train_config("--data", "d", "--preset", "robust-128")
    assert (quick.recipe, quick.image_size, quick.feature_views, quick.epochs, quick.patience) == (
        "robust", 128, 2, 6, 2)


def test_auto_finds_the_file_through_the_environment_and_keras_cache(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TUMORCLF_WEIGHTS_DIR", str(weights_folder(tmp_path)))
    assert train_config("--data", "d")[0] == "robust"
    monkeypatch.delenv("TUMORCLF_WEIGHTS_DIR")
    assert train_config("--data", "d")[0] == "scratch"
    (tmp_path / "home" / "models").mkdir(parents=True)
    (tmp_path / "home" / "models" / spec("vgg16").weights_file).write_bytes(b"x")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home"))
    assert train_config("--data", "d")[0] == "robust"


def test_auto_without_weights_trains_from_scratch_with_early_stopping():
    preset, cfg = train_config("--data", "d")
    assert preset == "scratch"
    assert (cfg.model, cfg.imagenet, cfg.recipe, cfg.epochs, cfg.patience) == ("simplecnn", False, "paper", 20, 4)


def test_a_named_model_keeps_the_study_recipe_with_early_stopping_added():
    preset, cfg = train_config("--data", "d", "--model", "resnet50")
    assert preset == "auto"
    assert (cfg.model, cfg.recipe, cfg.learning_rate, cfg.epochs, cfg.patience) == ("resnet50", "paper", 1e-4, 30, 5)
    assert train_config("--model", "resnet50", "--patience", "2")[1].patience == 2


def test_the_paper_preset_is_the_study_recipe():
    preset, cfg = train_config("--data", "d", "--preset", "paper")
    assert preset == "paper" and PRESETS["paper"].values == {}
    assert cfg.defining() == Config(data="d").defining()
    assert (cfg.model, cfg.recipe, cfg.epochs, cfg.patience) == ("simplecnn", "paper", 50, None)


def test_flags_and_yaml_override_the_preset(tmp_path: Path):
    yaml = tmp_path / "run.yaml"
    yaml.write_text("epochs: 7\n")
    preset, cfg = train_config("--preset", "robust", "--config", str(yaml), "--patience", "2")
    assert preset == "robust" and (cfg.recipe, cfg.epochs, cfg.patience) == ("robust", 7, 2)
    assert resolve("auto", {"recipe": "fast"})[1] == {"epochs": 30, "patience": 5}


def test_the_first_log_line_says_what_it_trains_and_how_long(tmp_path: Path, caplog):
    with caplog.at_level(logging.INFO, logger="tumorclf"):
        code = main(["train", "--data", str(tmp_path / "missing"), "--weights-dir", str(weights_folder(tmp_path))])
    assert code == 2
    first = caplog.records[0].getMessage()
    assert first.startswith("preset robust: vgg16 (ImageNet weights), 128 px, robust recipe, grouped split, at most "
                            "12 epochs")
    assert "early stopping after 4 epochs" in first and "minutes on 2 CPU cores" in first
    assert "--preset paper" in first
    _, short = train_config("--data", "d", "--weights-dir", str(tmp_path / "weights"), "--epochs", "1")
    assert "minutes" not in describe("robust", short)  # the measured time is of the preset's own run only


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_a_valid_config(name):
    cfg = Config(**PRESETS[name].values)
    line = describe(name, cfg)
    assert cfg.model in line and ("no early stopping" in line) == (cfg.patience is None)
