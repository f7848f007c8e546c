"""One typed configuration object shared by the CLI, YAML files and the study runner."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

MODELS = ("simplecnn", "vgg16", "densenet121", "resnet50", "resnet101", "resnet152")
SPLITS = ("grouped", "paper")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "default", "mirrored", "multiworker")
FINE_TUNE = ("full", "frozen", "from_layer", "two_phase")
RECIPES = ("paper", "fast")


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message says which and why."""


@dataclass
class Config:
    """Everything that defines a run. Defaults follow the paper's recipe."""

    model: str = "simplecnn"
    data: str | None = None
    imagenet: bool = False
    recipe: str = "paper"  # "fast": cached frozen features, then the top stage and head (tumorclf.fast)
    feature_views: int = 3  # fast recipe: cached views of each training image (the first unaugmented)
    weights_dir: str | None = None
    fine_tune: str = "full"
    unfreeze_from: str | None = None
    head_epochs: int = 1
    fine_tune_lr_factor: float = 0.1
    epochs: int = 50
    patience: int | None = None
    max_minutes: float | None = None  # stop after the epoch that passes this much training time
    track_test: bool = False  # log test accuracy each epoch, for time-to-accuracy curves (never to choose)
    image_size: int = 224
    batch_size: int = 32
    learning_rate: float = 1e-4
    momentum: float = 0.9
    dropout: float = 0.5
    augment: bool = True
    split: str = "grouped"
    seed: int = 42
    split_fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)
    near_duplicate_bits: int = 4
    classes: tuple[str, str] | None = None
    cache_dir: str | None = None
    precision: str = "auto"
    jit_compile: bool = False  # XLA; optional because it measured slower for VGG16 on a 2-core CPU
    strategy: str = "auto"
    output: str = "runs"
    name: str | None = None
    overwrite: bool = False
    resume: bool = False
    deterministic: bool = False
    max_files: int | None = None
    gradcam_per_outcome: int = 0

    def __post_init__(self) -> None:
        self.model = self.model.lower()
        if self.split_fractions is not None:
            self.split_fractions = tuple(float(f) for f in self.split_fractions)
        if self.classes is not None:
            self.classes = tuple(self.classes)
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` with one clear line for the first invalid value."""
        _choice("model", self.model, MODELS)
        _choice("split", self.split, SPLITS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("strategy", self.strategy, STRATEGIES)
        _choice("fine_tune", self.fine_tune, FINE_TUNE)
        _choice("recipe", self.recipe, RECIPES)
        for name in ("epochs", "image_size", "batch_size", "head_epochs"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.image_size < 32:
            raise ConfigError(f"image_size must be at least 32 px, got {self.image_size}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1) > 1e-6 or min(
            self.split_fractions
        ) <= 0:
            raise ConfigError(
                f"split_fractions must be three positive numbers summing to 1, got {self.split_fractions}"
            )
        if not -1 <= self.near_duplicate_bits <= 32:
            raise ConfigError(
                f"near_duplicate_bits must be in [-1, 32] (-1: byte-identical only), got {self.near_duplicate_bits}"
            )
        if self.classes is not None and len(self.classes) != 2:
            raise ConfigError(f"classes must name two folders (healthy, tumor), got {self.classes}")
        if self.fine_tune == "from_layer" and not self.unfreeze_from:
            raise ConfigError("fine_tune=from_layer needs unfreeze_from (a layer or block name)")
        if self.fine_tune == "two_phase" and self.epochs <= self.head_epochs:
            raise ConfigError(f"fine_tune=two_phase needs epochs ({self.epochs}) > head_epochs ({self.head_epochs})")
        if self.imagenet and self.model == "simplecnn":
            raise ConfigError("simplecnn has no ImageNet weights; drop --imagenet")
        if self.recipe == "fast":
            if self.model == "simplecnn":
                raise ConfigError("recipe fast fine-tunes a pretrained backbone; simplecnn has none")
            if not self.imagenet:
                raise ConfigError("recipe fast fine-tunes a pretrained backbone: add --imagenet")
            if self.fine_tune != "full":
                raise ConfigError("recipe fast sets its own fine-tuning (the top stage and head); drop --fine-tune")
        if self.feature_views < 1:
            raise ConfigError(f"feature_views must be a positive integer, got {self.feature_views}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"max_minutes must be > 0, got {self.max_minutes}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be a positive number of epochs, got {self.patience}")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; choose one")
        if self.gradcam_per_outcome < 0:
            raise ConfigError(f"gradcam_per_outcome must be >= 0, got {self.gradcam_per_outcome}")
        if self.max_files is not None and self.max_files < 4:
            raise ConfigError(f"max_files must be at least 4, got {self.max_files}")

    @property
    def run_name(self) -> str:
        """The run folder's name: explicit, or derived from what defines the run."""
        if self.name:
            return self.name
        weights = "imagenet" if self.imagenet else "scratch"
        if self.model == "simplecnn":
            weights = "scratch"
        recipe = "_fast" if self.recipe == "fast" else ""
        return f"{self.model}_{weights}_{self.split}_{self.image_size}px_seed{self.seed}{recipe}"

    @property
    def run_dir(self) -> Path:
        return Path(self.output) / self.run_name

    def resolved_data(self) -> Path:
        """The data folder: the option, else `$TUMORCLF_DATA`."""
        data = self.data or os.environ.get("TUMORCLF_DATA")
        if not data:
            raise ConfigError("no data folder: pass --data DIR or set TUMORCLF_DATA")
        return Path(data)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Config":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**{k.replace("-", "_"): v for k, v in values.items()})

    def defining(self) -> dict[str, Any]:
        """The values that define the run's result (not how it is launched)."""
        launch = {"resume", "overwrite", "output", "name", "cache_dir", "weights_dir", "data"}
        return {k: v for k, v in self.to_dict().items() if k not in launch}


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping of config keys (dashes or underscores)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return {k.replace("-", "_"): v for k, v in values.items()}


def build_config(yaml_path: str | None = None, **overrides: Any) -> Config:
    """Defaults, then the YAML file, then explicit overrides (the CLI's given flags)."""
    values: dict[str, Any] = {}
    if yaml_path:
        values.update(load_yaml(yaml_path))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Config.from_dict(values)


__all__ = ["Config", "ConfigError", "build_config", "load_yaml", "MODELS", "SPLITS"]
