"""One typed configuration: the `Config` dataclass that flags, YAML files, studies and `config.json` derive from.

Each field carries its help text, its choices, and whether it defines the run's result or only how it
is launched (`launch=True`). Values from any source go through `coerce`, so YAML's `1e-4` (a string to
PyYAML) is a float and `epochs: ten` is a one-line `ConfigError` naming the key and the expected type.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from tumorclf.errors import ConfigError
from tumorclf.models.registry import MODELS

SPLITS = ("grouped", "paper", "source")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "default", "mirrored", "multiworker")
FINE_TUNE = ("full", "frozen", "from_layer", "two_phase")
RECIPES = ("paper", "fast", "robust")
CACHED_RECIPES = ("fast", "robust")  # recipes that train the top of the model on cached stem features
INTENSITIES = ("raw", "percentile")
FRAMINGS = ("full", "foreground")
# The source-robust measures (docs/robustness.md): the values their fields take when left
# unset, for every recipe (PLAIN) and what `robust` turns on. An explicit value (flag, YAML, study entry)
# wins, so the ablation can switch one measure on or off.
PLAIN = {"intensity": "raw", "framing": "full", "acquisition": False, "elastic": False}
ROBUST = {**PLAIN, "intensity": "percentile", "framing": "foreground", "acquisition": True}


def option(default: Any, help: str, *, choices: tuple[str, ...] | None = None, launch: bool = False,
           flag: str | None = None, metavar: str | None = None, shown_default: str | None = None,
           many: bool = False, per_run: bool = False) -> Any:
    """A Config field with what the CLI and the run folder need to know about it: `shown_default` is how
    --help states a default whose value (None) means something else; `many` makes the flag take names
    separated by spaces, which the field holds comma-separated; `per_run` makes the flag take several values,
    one run each (`train --seed 1 2 3`)."""
    return field(default=default, metadata={"help": help, "choices": choices, "launch": launch, "flag": flag,
                                            "metavar": metavar, "shown_default": shown_default, "many": many,
                                            "per_run": per_run})


@dataclass
class Config:
    """Everything that defines a run, and how it is launched. Defaults follow the paper's recipe."""

    model: str = option("simplecnn", "architecture", choices=tuple(MODELS))
    data: str | None = option(None, "folder with two class folders", launch=True, metavar="DIR",
                              shown_default="$TUMORCLF_DATA")
    imagenet: bool = option(False, "start from ImageNet weights")
    recipe: str = option("paper", "paper (the study's SGD recipe), fast (with --imagenet: cached frozen "
                         "features, then the last stage and head) or robust (fast, with percentile intensity, "
                         "foreground framing and acquisition augmentation)", choices=RECIPES)
    feature_views: int = option(3, "with --recipe fast or robust: cached views of each training image (the first "
                                "unaugmented)", metavar="N")
    weights_dir: str | None = option(None, "folder holding Keras' ImageNet weight files", launch=True, metavar="DIR",
                                     shown_default="$TUMORCLF_WEIGHTS_DIR, else Keras' cache and download")
    fine_tune: str = option("full", "fine-tuning policy", choices=FINE_TUNE)
    unfreeze_from: str | None = option(None, "with --fine-tune from_layer: first layer/block to train, e.g. block5",
                                       metavar="LAYER")
    head_epochs: int = option(1, "with --fine-tune two_phase: epochs of head-only training", metavar="N")
    fine_tune_lr_factor: float = option(0.1, "with --fine-tune two_phase: learning-rate factor of the second phase",
                                        metavar="F")
    epochs: int = option(50, "maximum number of epochs", metavar="N")
    patience: int | None = option(None, "stop after this many epochs without a better validation F1", metavar="N",
                                  shown_default="no early stopping")
    max_minutes: float | None = option(None, "stop after the epoch that passes this much training time",
                                       metavar="MINUTES", shown_default="no time limit")
    track_test: bool = option(False, "log test accuracy each epoch for time-to-accuracy curves "
                              "(never used to choose the epoch)")
    image_size: int = option(224, "square input size in px", metavar="PX")
    batch_size: int = option(32, "global batch size", metavar="N")
    learning_rate: float = option(1e-4, "learning rate (SGD for the paper recipe, Adam for the fast one)",
                                  metavar="LR")
    momentum: float = option(0.9, "SGD momentum", metavar="F")
    dropout: float = option(0.5, "dropout before the classifier", metavar="F")
    augment: bool = option(True, "train-time augmentation (--no-augment turns it off)")
    # None: the recipe's choice (robust: see ROBUST; the others: raw, full, off), resolved at construction
    intensity: str | None = option(None, "in the model: raw, or percentile (each image scaled by its own 0.5th "
                                   "and 99.5th percentiles)", choices=INTENSITIES, shown_default="the recipe's")
    framing: str | None = option(None, "in the model: full image, or foreground (cropped to a square around the "
                                 "head)", choices=FRAMINGS, shown_default="the recipe's")
    acquisition: bool | None = option(None, "train-time acquisition augmentation: bias field, gamma, contrast, "
                                      "blur/sharpening, resampling, Rician noise", shown_default="the recipe's")
    elastic: bool | None = option(None, "train-time elastic deformation (smooth random warps that break the "
                                  "hemispheres' symmetry)", shown_default="the recipe's")
    boxes: str | None = option(None, "with --attention-prior or --lesion-zoom: CSV of tumour boxes (path,x0,y0,x1,y1 "
                               "as fractions of width and height; paths as in the data folder)",
                               launch=True, metavar="FILE.csv")
    attention_prior: float = option(0.0, "with --recipe fast or robust and --boxes: weight of the share of a boxed "
                                    "training tumour slice's Grad-CAM map outside its box, added to the loss",
                                    metavar="WEIGHT", shown_default="0, off")
    lesion_zoom: float = option(0.0, "with --recipe fast or robust and --boxes: share of each augmented view's "
                                "training images replaced by a zoomed crop that keeps the tumour box in view (an "
                                "image without a box is cropped around a box drawn from the others)",
                                metavar="SHARE", shown_default="0, off")
    split: str = option("grouped", "grouped (leak-free), paper (over files) or source (leave-source-out: test on "
                        "--holdout-sources, train and validate on the others)", choices=SPLITS)
    sources: str | None = option(None, "with --split source: CSV of path,source (path relative to the data "
                                 "folder)", launch=True, metavar="FILE.csv")
    holdout_sources: str | None = option(None, "with --split source: the sources to test on", metavar="NAME",
                                         many=True)
    unlisted_source: str | None = option(None, "with --split source: the source of files the CSV does not list",
                                         metavar="NAME", shown_default="none, they are an error")
    seed: int = option(42, "seed of the split, the data order, augmentation and initialisation; several seeds "
                       "train one run each and report the mean and spread", metavar="N", per_run=True)
    split_seed: int | None = option(None, "seed of the split alone: runs of several --seed values that share one "
                                    "split can be evaluated as an ensemble", metavar="N", shown_default="--seed")
    split_fractions: tuple[float, float, float] = option((0.70, 0.15, 0.15), "train, val and test fractions",
                                                         metavar="F")
    near_duplicate_bits: int = option(4, "pHash distance that counts as a near-duplicate (-1: byte identity only)",
                                      metavar="BITS")
    # launch: training does not depend on it (the operating point is fitted at the end of the run, from the
    # validation predictions), so a run can be resumed with another target
    target_sensitivity: float = option(0.95, "the operating point: the highest threshold on calibrated P(Tumor) "
                                       "that reaches this sensitivity on the validation split", launch=True,
                                       metavar="F")
    external: str | None = option(None, "folders of labelled slices from collections the model never trains on "
                                  "(one-class folders allowed), evaluated after the test at every operating point "
                                  "into the run's evaluation_external folder", launch=True, metavar="DIR",
                                  many=True)
    classes: tuple[str, str] | None = option(None, "name the two class folders: HEALTHY TUMOR", metavar="DIR",
                                             shown_default="told apart by their names")
    cache_dir: str | None = option(None, "decoded-image cache", launch=True, metavar="DIR",
                                   shown_default="$TUMORCLF_CACHE, else ~/.cache/tumorclf")
    precision: str = option("auto", "Keras dtype policy (auto: bf16 on bf16 CPUs, float16 on GPUs)",
                            choices=PRECISIONS)
    jit_compile: bool = option(False, "compile the train step with XLA (measure first: tumorclf bench --jit-compile)")
    strategy: str = option("auto", "tf.distribute strategy (auto: mirrored on several GPUs)", choices=STRATEGIES)
    output: str = option("runs", "parent folder of run folders", launch=True, flag="--out", metavar="DIR")
    name: str | None = option(None, "run folder name", launch=True, metavar="NAME",
                              shown_default="derived from the settings, e.g. simplecnn_scratch_grouped_224px_seed42")
    overwrite: bool = option(False, "replace an existing run folder", launch=True)
    resume: bool = option(False, "continue an interrupted run from its last completed epoch", launch=True)
    deterministic: bool = option(False, "TensorFlow op determinism and sequential augmentation: same seed, same "
                                 "result")
    max_files: int | None = option(None, "use a random subset of this many files (quick trials)", metavar="N",
                                   shown_default="all files")
    gradcam_per_outcome: int = option(0, "after testing, save Grad-CAM overlays of N test images per outcome",
                                      flag="--gradcam", metavar="N")

    def __post_init__(self) -> None:
        hints = _hints()
        for f in fields(self):
            setattr(self, f.name, coerce(f.name, getattr(self, f.name), hints[f.name]))
        self.model = self.model.lower()
        for key, value in (ROBUST if self.recipe == "robust" else PLAIN).items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.holdout_sources is not None:  # one spelling of a set of names: sorted, comma-separated
            self.holdout_sources = ",".join(sorted({n.strip() for n in self.holdout_sources.split(",") if n.strip()}))
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` with one clear line for the first invalid value."""
        for f in fields(self):
            choices = f.metadata["choices"]
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"unknown {f.name} {getattr(self, f.name)!r}; choose one of: {', '.join(choices)}")
        for name in ("epochs", "image_size", "batch_size", "head_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.image_size < 32:
            raise ConfigError(f"image_size must be at least 32 px, got {self.image_size}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if abs(sum(self.split_fractions) - 1) > 1e-6 or min(self.split_fractions) <= 0:
            raise ConfigError(
                f"split_fractions must be three positive numbers summing to 1, got {self.split_fractions}"
            )
        if not -1 <= self.near_duplicate_bits <= 32:
            raise ConfigError(
                f"near_duplicate_bits must be in [-1, 32] (-1: byte-identical only), got {self.near_duplicate_bits}"
            )
        if self.split == "source" and not (self.sources and self.holdout_sources):
            raise ConfigError("--split source needs --sources FILE.csv and --holdout-sources NAME [NAME ...]")
        if self.split != "source" and (self.sources or self.holdout_sources or self.unlisted_source):
            raise ConfigError("--sources, --holdout-sources and --unlisted-source belong to --split source")
        if self.fine_tune == "from_layer" and not self.unfreeze_from:
            raise ConfigError("fine_tune=from_layer needs unfreeze_from (a layer or block name)")
        if self.fine_tune == "two_phase" and self.epochs <= self.head_epochs:
            raise ConfigError(f"fine_tune=two_phase needs epochs ({self.epochs}) > head_epochs ({self.head_epochs})")
        if self.imagenet and not MODELS[self.model].pretrainable:
            raise ConfigError(f"{self.model} has no ImageNet weights; drop --imagenet")
        if self.cached_features:
            if not MODELS[self.model].fast_cut:
                raise ConfigError(f"recipe {self.recipe} fine-tunes a pretrained backbone; {self.model} has none")
            if not self.imagenet:
                raise ConfigError(f"recipe {self.recipe} fine-tunes a pretrained backbone: add --imagenet")
            if self.fine_tune != "full":
                raise ConfigError(f"recipe {self.recipe} sets its own fine-tuning (the top stage and head); "
                                  "drop --fine-tune")
        for name in ("acquisition", "elastic"):
            if getattr(self, name) and not self.augment:
                raise ConfigError(f"{name} is train-time augmentation, which --no-augment turns off: keep "
                                  f"augmentation, or turn {name} off too (--no-{name})")
        if self.attention_prior < 0:
            raise ConfigError(f"attention_prior must be >= 0, got {self.attention_prior}")
        if self.attention_prior and not (self.boxes and self.cached_features):
            raise ConfigError("--attention-prior needs --boxes FILE.csv and a cached-feature recipe (--recipe fast "
                              "or robust)")
        if not 0 <= self.lesion_zoom <= 1:
            raise ConfigError(f"lesion_zoom is a share of the training images, in [0, 1]; got {self.lesion_zoom}")
        if self.lesion_zoom and not (self.boxes and self.cached_features and self.augment):
            raise ConfigError("--lesion-zoom needs --boxes FILE.csv, a cached-feature recipe (--recipe fast or "
                              "robust) and augmentation (it replaces images of the augmented views)")
        if self.boxes and not (self.attention_prior or self.lesion_zoom):
            raise ConfigError("--boxes is read by --attention-prior and --lesion-zoom only; add one of them")
        if not 0 < self.target_sensitivity <= 1:
            raise ConfigError(f"target_sensitivity must be in (0, 1], got {self.target_sensitivity}")
        if self.feature_views < 1:
            raise ConfigError(f"feature_views must be a positive integer, got {self.feature_views}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"max_minutes must be > 0, got {self.max_minutes}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be a positive number of epochs, got {self.patience}")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; choose one")
        if self.strategy == "multiworker" and (self.resume or self.cached_features):
            raise ConfigError("--strategy multiworker supports neither --resume nor the cached-feature recipes "
                              "(fast, robust)")
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
        recipe = "" if self.recipe == "paper" else f"_{self.recipe}"
        split = f"lso-{self.holdout_sources.replace(',', '+')}" if self.split == "source" else self.split
        return (f"{self.model}_{weights}_{split}_{self.image_size}px_seed{self.seed}{self._split_seed_suffix()}"
                f"{recipe}{self._measures()}")

    @property
    def split_seed_used(self) -> int:
        """The seed the split is drawn with: --split-seed, else --seed."""
        return self.seed if self.split_seed is None else self.split_seed

    def _split_seed_suffix(self) -> str:
        return "" if self.split_seed_used == self.seed else f"-split{self.split_seed}"

    def _differences(self, reference: dict[str, Any]) -> list[str]:
        """The measures whose value differs from `reference`, as words: a value (`percentile`), or a switch's
        name (`acquisition`, or `no-acquisition` when it is off and `reference` has it on); then the box-guided
        measures with their value (`attention0.5`, `lesionzoom0.5`), which no recipe turns on."""
        parts = [(key if value else f"no-{key}") if isinstance(value, bool) else value
                 for key, value in ((key, getattr(self, key)) for key in reference) if value != reference[key]]
        return (parts + ([f"attention{self.attention_prior:g}"] if self.attention_prior else [])
                + ([f"lesionzoom{self.lesion_zoom:g}"] if self.lesion_zoom else []))

    def _measures(self) -> str:
        """The run name's suffix for measures that differ from the recipe's own (e.g. `_fast_percentile` or
        `_robust_no-acquisition`), so that an ablation's runs get folders of their own."""
        return "".join(f"_{part}" for part in self._differences(ROBUST if self.recipe == "robust" else PLAIN))

    @property
    def measures(self) -> str:
        """What is on beyond the plain image and the basic augmentation, e.g. `percentile+foreground+acquisition`
        (the robust recipe), or `none`."""
        return "+".join(self._differences(PLAIN)) or "none"

    @property
    def cached_features(self) -> bool:
        """Whether the recipe trains the model's top on cached stem features (`tumorclf.training.feature_cache`)."""
        return self.recipe in CACHED_RECIPES

    @property
    def holdout(self) -> tuple[str, ...]:
        """The held-out source names (split source), sorted."""
        return tuple(self.holdout_sources.split(",")) if self.holdout_sources else ()

    @property
    def external_folders(self) -> list[Path]:
        """The external validation folders (--external), in the order given."""
        return [Path(folder) for folder in self.external.split(",")] if self.external else []

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
        return {key: list(value) if isinstance(value, tuple) else value for key, value in out.items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Config":
        """A Config from a mapping of field names (dashes or underscores), each value coerced to its type."""
        values = {str(k).replace("-", "_"): v for k, v in values.items()}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**values)

    def defining(self) -> dict[str, Any]:
        """The values that define the run's result (not how it is launched); the split seed as used, so that
        `--split-seed 42 --seed 42` is the run of `--seed 42`."""
        values = {f.name: v for f, v in zip(fields(self), self.to_dict().values()) if not f.metadata["launch"]}
        return {**values, "split_seed": self.split_seed_used}


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(Config)


def type_name(hint: Any) -> str:
    """How an expected type reads in an error message."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if _is_optional(hint):
        return f"{type_name(args[0])} or null"
    if typing.get_origin(hint) is tuple:
        return f"a list of {len(args)} {_PLURAL[args[0]]}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[hint]


_PLURAL = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}


def _is_optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def coerce(key: str, value: Any, hint: Any) -> Any:
    """`value` as the type `hint` says, or a ConfigError naming `key` and the expected type."""
    if _is_optional(hint):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            return None
        return coerce(key, value, next(a for a in typing.get_args(hint) if a is not type(None)))

    def bad() -> ConfigError:
        return ConfigError(f"{key}: expected {type_name(hint)}, got {value!r}")

    if typing.get_origin(hint) is tuple:
        items = typing.get_args(hint)
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or len(value) != len(items):
            raise bad()
        try:
            return tuple(coerce(key, v, t) for v, t in zip(value, items))
        except ConfigError:
            raise bad() from None
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise bad()
    if hint is int:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip())
        except ValueError:
            raise bad() from None
    if hint is float:
        if isinstance(value, bool):
            raise bad()
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad() from None
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad()
    raise TypeError(f"no coercion for {hint!r}")


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping (keys with dashes or underscores); values are coerced later, by `Config`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read as text: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def build_config(yaml_path: str | None = None, **overrides: Any) -> Config:
    """Defaults, then the YAML file, then explicit overrides (the CLI's given flags)."""
    values: dict[str, Any] = {}
    if yaml_path:
        values.update(load_yaml(yaml_path))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Config.from_dict(values)


def flag_of(f: dataclasses.Field) -> str:
    """The command-line flag of a Config field: its own, else its name with dashes."""
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def shown_default(f: dataclasses.Field) -> str:
    """A field's default as --help states it: as it would be typed on the command line, or what None means."""
    if f.metadata["shown_default"]:
        return f.metadata["shown_default"]
    if isinstance(f.default, bool):
        return "on" if f.default else "off"
    if isinstance(f.default, tuple):
        return " ".join(map(str, f.default))
    return "none" if f.default is None else str(f.default)


def add_config_flags(parser) -> None:
    """One flag per Config field, derived from its type, help and choices. Flags default to None
    (not given), so a YAML file's values are overridden only by flags that were given. A `many` field's
    flag gives a list of names, to be joined with commas before it reaches `build_config`."""
    import argparse

    hints = _hints()
    for f in fields(Config):
        hint, meta = hints[f.name], f.metadata
        help_text = f"{meta['help']} (default: {shown_default(f)})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        inner = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if _is_optional(hint) else hint
        if inner is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            if meta["choices"]:
                kwargs["choices"] = meta["choices"]
            if typing.get_origin(inner) is tuple:
                kwargs["nargs"] = len(typing.get_args(inner))
            elif meta["many"] or meta["per_run"]:
                kwargs["nargs"] = "+"
            kwargs["metavar"] = meta["metavar"] or (None if meta["choices"] else f.name.upper())
        parser.add_argument(flag_of(f), **kwargs)


__all__ = ["Config", "ConfigError", "add_config_flags", "build_config", "coerce", "flag_of", "load_yaml"]
