from __future__ import annotations

from pathlib import Path

import pytest

from tumorclf.cli import config_from_args
from tumorclf.config import Config, ConfigError, build_config


def test_defaults_follow_the_paper():
    cfg = Config()
    assert (cfg.image_size, cfg.batch_size, cfg.learning_rate, cfg.momentum) == (224, 32, 1e-4, 0.9)
    assert cfg.split_fractions == (0.7, 0.15, 0.15) and cfg.seed == 42 and cfg.augment


def test_yaml_then_flags(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("model: vgg16\nimagenet: true\nepochs: 7\nimage-size: 128\nclasses: [normal, glioma]\n")
    cfg = config_from_args(["--config", str(path), "--epochs", "3"])
    assert (cfg.model, cfg.imagenet, cfg.epochs, cfg.image_size) == ("vgg16", True, 3, 128)
    assert cfg.classes == ("normal", "glioma")
    assert cfg.run_name == "vgg16_imagenet_grouped_128px_seed42"
    assert Config.from_dict(cfg.to_dict()) == cfg


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
    ({"colour": "red"}, "unknown config keys: colour"),
])
def test_bad_values_are_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        build_config(**values) if "colour" not in values else Config.from_dict(values)


def test_bad_yaml(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_config(str(path))
    with pytest.raises(ConfigError, match="not found"):
        build_config(str(tmp_path / "missing.yaml"))
