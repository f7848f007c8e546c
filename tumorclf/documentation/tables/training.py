"""docs/training.md: the presets of `tumorclf train --preset`, each with the training time its measured runs took on
2 CPU cores, so a reader knows what a bare `tumorclf train` costs before starting it."""

from __future__ import annotations

from tumorclf.documentation.tables.cells import (
    ROBUST_RECIPE,
    Results,
    Table,
    number,
    study_command,
    study_results,
)
from tumorclf.documentation.tables.performance import HEADLINE, HEADLINE_COMMAND, HEADLINE_RUNS, wall_seconds
from tumorclf.training.presets import EARLY_STOPPING, PRESETS

# preset -> (results file, the columns its runs match, whether those runs used the preset's epochs and patience)
MEASURED: dict[str, tuple[str, dict[str, str], bool]] = {
    "robust-224": (study_results("robust"), {**ROBUST_RECIPE, "image_size": "224"}, True),
    "robust-128": (study_results("transfer"), {**ROBUST_RECIPE, "image_size": "128"}, True),
    "fast": (study_results("cpu_budget"), {"recipe": "fast"}, True),
    "scratch": (study_results("cpu_budget"), {"model": "simplecnn", "recipe": "paper"}, False),
}
COMMAND = "; ".join([f"/usr/bin/time -v {HEADLINE_COMMAND}",
                     *(study_command(study) for study in ("transfer", "robust", "cpu_budget"))])
DEFAULT = "robust"  # the preset of the README's command: timed as a whole command, cold (HEADLINE_RUNS)


def span(values: list[float]) -> str:
    """`25.5-45.6`, or one value when all are equal."""
    low, high = number(min(values), 1), number(max(values), 1)
    return low if low == high else f"{low}-{high}"


def presets(results: Results) -> Table:
    """The presets with what their measured runs took, so the cost of a bare `tumorclf train` is known."""
    auto = (f"`robust` when the VGG16 ImageNet file is at hand, else `scratch`; with `--model`, `--imagenet` or "
            f"`--recipe` given, early stopping only (at most {EARLY_STOPPING['epochs']} epochs, patience "
            f"{EARLY_STOPPING['patience']})")
    body = [["`auto` (default)", auto, "-", "-"]]
    sources: list[str] = []
    for name, preset in PRESETS.items():
        if name == DEFAULT:
            logs = [f"{HEADLINE}/{folder}/train.log" for folder, label, _ in HEADLINE_RUNS if label.startswith("cold")]
            minutes = [wall_seconds(results.path(log).read_text()) / 60 for log in logs]
            body.append([f"`{name}`", preset.about, str(len(logs)),
                         f"{span(minutes)} min per run (the whole command, empty caches)"])
            sources += [results.source(log) for log in logs]
            continue
        if name not in MEASURED:
            body.append([f"`{name}`", preset.about, "-", "-"])
            continue
        file, match, same_settings = MEASURED[name]
        runs = [row for row in results.csv(file) if all(row[key] == value for key, value in match.items())
                and row["status"].startswith("finished")]
        minutes = [float(row["train_minutes"]) for row in runs]
        took = (f"{span(minutes)} min per run" if same_settings else
                f"{span([m / int(row['epochs_run']) for m, row in zip(minutes, runs, strict=True)])} min per epoch")
        body.append([f"`{name}`", preset.about, str(len(runs)), took])
        sources.append(results.source(file))
    return Table(["preset", "what it trains", "runs measured", "training time on 2 CPU cores"], body,
                 list(dict.fromkeys(sources)), COMMAND,
                 "Training wall time (feature caching included), lowest-highest over the measured runs of every "
                 "split; for the default `robust`, the wall time of the whole command on the grouped split (cold "
                 "runs of docs/performance.md). The SimpleCNN runs behind `scratch` stopped sooner than the preset "
                 "does, so only their time per epoch carries over.")


TABLES = {"training-presets": presets}
