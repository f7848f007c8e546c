"""Named recipes for `tumorclf train --preset`, and the choice a bare `tumorclf train --data DIR` makes.

A preset is a set of configuration values beneath the ones a user gives (a `--config` file, then flags): it
chooses, it never overrides. `auto`, the default, trains the best recipe the weights on this machine allow,
with early stopping; `paper` is the study's exact recipe (the `Config` defaults: SGD, 50 epochs, no early
stopping), which the study files under experiments/ build on. Light: imports no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tumorclf.models.registry import local_weights


@dataclass(frozen=True)
class Preset:
    values: dict[str, Any]
    about: str
    # wall minutes of one run on a 2-core CPU, as measured (each entry names its results file)
    minutes_on_2_cores: tuple[float, float] | None


PRESETS: dict[str, Preset] = {
    # experiments/results/headline/: the README's command with these settings took 9.0 and 10.9 minutes cold on
    # 2 cores, and over 3 seeds (experiments/results/headline_recipe/) its in-source accuracy held as at 224 px
    "robust": Preset({"model": "vgg16", "imagenet": True, "recipe": "robust", "image_size": 128,
                      "feature_views": 2, "epochs": 12, "patience": 4},
                     "ImageNet VGG16 at 128 px, robust recipe (cached frozen features of 2 views, block5 and head), "
                     "at most 12 epochs, early stopping after 4 without a better validation F1", (9, 11)),
    # experiments/results/robust/results.csv: the robust recipe took 25.5-45.6 minutes per run on 2 cores
    "robust-224": Preset({"model": "vgg16", "imagenet": True, "recipe": "robust", "image_size": 224,
                          "feature_views": 3, "epochs": 12, "patience": 4},
                         "ImageNet VGG16 at 224 px, robust recipe (cached frozen features of 3 views, block5 and "
                         "head), at most 12 epochs, early stopping after 4 without a better validation F1",
                         (25, 46)),
    # the budget of experiments/transfer.yaml (3 seeds a split in experiments/results/transfer/results.csv); the
    # README's command with these settings took 6-7 minutes cold on 2 cores (experiments/results/headline_6_epochs/)
    "robust-128": Preset({"model": "vgg16", "imagenet": True, "recipe": "robust", "image_size": 128,
                          "feature_views": 2, "epochs": 6, "patience": 2},
                         "ImageNet VGG16 at 128 px, robust recipe (cached frozen features of 2 views, block5 and "
                         "head), at most 6 epochs, early stopping after 2: the transfer study's budget, quicker and "
                         "less steady over seeds", (6, 7)),
    # experiments/results/cpu_budget/results.csv and robust/results.csv: 31.4-41.9 minutes
    "fast": Preset({"model": "vgg16", "imagenet": True, "recipe": "fast", "image_size": 224, "epochs": 12,
                    "patience": 4},
                   "ImageNet VGG16 at 224 px, fast recipe (cached frozen features, block5 and head), at most 12 "
                   "epochs, early stopping after 4 without a better validation F1", (31, 42)),
    # experiments/results/cpu_budget/results.csv: SimpleCNN took about 2 minutes an epoch at 224 px on 2 cores
    "scratch": Preset({"model": "simplecnn", "recipe": "paper", "epochs": 20, "patience": 4},
                      "SimpleCNN from scratch, the study's SGD recipe, at most 20 epochs, early stopping after 4 "
                      "without a better validation F1", (10, 40)),
    "paper": Preset({}, "the study's exact recipe: SGD 1e-4, momentum 0.9, batch 32, 50 epochs, no early stopping, "
                    "best epoch by validation F1", None),
}
PRESET_NAMES = ("auto", *PRESETS)
# What a user's choice of these keys means: they chose the model, so `auto` adds early stopping only.
MODEL_KEYS = ("model", "imagenet", "recipe")
EARLY_STOPPING = {"epochs": 30, "patience": 5}


def resolve(preset: str, given: dict[str, Any], weights_dir: str | None = None) -> tuple[str, dict[str, Any]]:
    """(the preset's name as applied, its values) for the values `given` by a `--config` file and flags.

    `auto` picks `robust` when the VGG16 ImageNet file lies in a weights folder or Keras' cache and the user named
    no model or recipe, `scratch` when the file is missing; with a model named, it adds early stopping only.
    """
    if preset != "auto":
        return preset, dict(PRESETS[preset].values)
    if any(given.get(key) is not None for key in MODEL_KEYS):
        return "auto", {key: value for key, value in EARLY_STOPPING.items() if given.get(key) is None}
    has_weights = local_weights("vgg16", weights_dir) is not None
    return ("robust", dict(PRESETS["robust"].values)) if has_weights else ("scratch", dict(PRESETS["scratch"].values))


def describe(name: str, cfg) -> str:
    """The first log line of a run: what it trains and about how long it takes here."""
    weights = "ImageNet weights" if cfg.imagenet else "from scratch"
    stopping = (f"early stopping after {cfg.patience} epochs without a better validation F1" if cfg.patience
                else "no early stopping")
    line = (f"preset {name}: {cfg.model} ({weights}), {cfg.image_size} px, {cfg.recipe} recipe, {cfg.split} split, "
            f"at most {cfg.epochs} epochs, {stopping}")
    known = PRESETS.get(name)
    as_measured = known and all(getattr(cfg, key) == value for key, value in known.values.items())
    if as_measured and known.minutes_on_2_cores and cfg.max_files is None:  # a shorter run: no estimate
        low, high = known.minutes_on_2_cores
        line += f"; about {low:g}-{high:g} minutes on 2 CPU cores (less with more cores or a GPU)"
    if name != "paper":
        line += "; --preset paper for the study's exact recipe"
    return line
