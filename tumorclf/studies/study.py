"""A study: every configuration of a YAML file on each split, resumable, then tables and figures.

Each run entry of the file, over `defaults`, is read as a `Config` (values coerced to the field's type,
so `learning_rate: 1e-4` is a number; a bad value is one error line naming the entry and the key). An
entry runs once on each of the study's `splits`, unless it sets its own `split` (e.g. `split: source`
with `sources` and `holdout_sources`): then it runs once, on that split. `source` can also be one of the
`splits`, like any split: `sources`, `holdout_sources` and `unlisted_source` (in `defaults` or the entry)
then apply to its runs only and are left out of the others.

Finished runs are skipped, an interrupted one resumes from its last completed epoch, and `results.csv`
is rewritten (atomically) after every run, so the study can be stopped at any time. Each row names its
run folder (`run_name`) and its protocol (`paper`, `grouped`, `leave-source-out:figshare+sartaj`), and a
finished run whose folder holds test_predictions.csv and split.csv gets 95% intervals of its headline
metrics (`<metric>_lo`, `<metric>_hi`): a bootstrap over the test split's duplicate groups
(`tumorclf.metrics.bootstrap`; `bootstrap: N` resamples in the study file, default 2000, 0 for none).

Run folders are not kept in git: a configuration whose folder has no metrics.json but that has a finished
row in the existing results.csv keeps that row's numbers (status `finished (run folder not kept...)`) and
is not run again; delete the row to measure it again.
"""

from __future__ import annotations

import csv
import logging
import math
import typing
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tumorclf.utils.files import atomic_write_bytes, atomic_write_text, csv_text, figure_png  # noqa: E402
from tumorclf.metrics import DEFAULT_RESAMPLES  # noqa: E402
from tumorclf.metrics.bootstrap import bootstrap_intervals, format_interval  # noqa: E402
from tumorclf.runs.config import Config, ConfigError, coerce, load_yaml  # noqa: E402
from tumorclf.utils.progress import Progress  # noqa: E402
from tumorclf.runs.folder import DEFAULT_THRESHOLD, RunDir, RunError  # noqa: E402
from tumorclf.studies import seeds  # noqa: E402

log = logging.getLogger(__name__)

# metrics with a 95% interval in results.csv: columns <metric>_lo and <metric>_hi (recall is sensitivity, Tumor
# positive: it gets sensitivity's interval)
INTERVAL_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "recall", "f1", "auc")
SAME_AS = {"recall": "sensitivity"}  # an interval metric under another name in `bootstrap_intervals`
INTERVAL_COLUMNS = [f"{metric}_{end}" for metric in INTERVAL_METRICS for end in ("lo", "hi")]
# what a run measured (kept from an earlier results.csv when its folder is gone)
MEASURED = ["test_loss", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "recall", "f1",
            "auc", *INTERVAL_COLUMNS, "n_test", "train_minutes", "epochs_run", "best_epoch"]
INTEGERS = ("n_test", "epochs_run", "best_epoch")
COLUMNS = ["run_name", "protocol", "model", "imagenet", "recipe", "measures", "split", "image_size", "epochs",
           "max_minutes", "seed",
           *MEASURED, "status"]
EXTERNAL = "external_"  # the prefix of the columns of a run's external folders (`external_columns`)
EXTERNAL_METRICS = ("sensitivity", "specificity")
LSO = "leave-source-out"
BARE = "†"  # marks a table value without its interval
STUDY_KEYS = {"defaults", "runs", "splits", "output", "results", "data", "bootstrap", "seeds", "tta"}
SOURCE_KEYS = ("sources", "holdout_sources", "unlisted_source")  # Config keys of the source split only
# The study's own numbers, where this project's issues quote them (accuracy as a fraction).
PAPER = {("simplecnn", False): {"accuracy": 0.771}, ("vgg16", True): {"accuracy": 0.9783, "f1": 0.9759}}


def study_configs(spec: dict, data: str | None) -> list[Config]:
    """One Config per (run entry, split), from the study file's defaults, runs and splits; an entry that
    sets its own `split` gives one Config, on that split. A Config of another split than `source` leaves
    out the `SOURCE_KEYS` of `defaults` and of an entry that also runs on `source`."""
    unknown = sorted(set(spec) - STUDY_KEYS)
    if unknown:
        raise ConfigError(f"unknown study keys: {', '.join(unknown)}")
    runs = spec.get("runs")
    if not runs or not isinstance(runs, list):
        raise ConfigError("a study file needs a non-empty `runs` list")
    defaults = spec.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError("study `defaults` must be a mapping of config keys to values")
    defaults = {str(k).replace("-", "_"): v for k, v in defaults.items()}
    _check_defaults(defaults)
    splits = spec.get("splits") or ["grouped"]
    splits = [splits] if isinstance(splits, str) else splits
    if not isinstance(splits, list):
        raise ConfigError(f"study `splits` must be a list of splits, got {splits!r}")
    configs, seen = [], {}
    for i, entry in enumerate(runs, start=1):
        if not isinstance(entry, dict):
            raise ConfigError(f"runs entry {i} must be a mapping of config keys to values, got {entry!r}")
        entry = {str(k).replace("-", "_"): v for k, v in entry.items()}
        entry_seeds = seeds.seed_list(entry.pop("seeds", spec.get("seeds")), f"runs entry {i}")
        entry_splits = [entry["split"]] if "split" in entry else splits
        for split, seed in ((split, seed) for split in entry_splits for seed in entry_seeds):
            values = {**defaults, **entry, "split": split, "output": spec.get("output", "experiments/runs"),
                      "resume": True, **({"seed": seed} if seed is not None else {})}
            if split != "source":  # leave-source-out keys of `defaults`, or of an entry also run on the source
                for key in SOURCE_KEYS:  # split, are for that split only; an entry never run on it keeps them
                    if key not in entry or "source" in entry_splits:  # (an error naming the entry)
                        values.pop(key, None)
            values["data"] = data or values.get("data") or spec.get("data")
            where = f"runs entry {i} ({values.get('model', 'simplecnn')}, {split} split)"
            try:
                cfg = Config.from_dict(values)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            if cfg.run_name in seen:
                raise ConfigError(f"{where}: the same run folder {cfg.run_name} as {seen[cfg.run_name]}")
            seen[cfg.run_name] = where
            configs.append(cfg)
    return configs


def _check_defaults(defaults: dict) -> None:
    """A bad key or value of `defaults` is reported as a default, not as an error of the first run entry.
    (Only keys and types: combinations are checked per entry, where the entry may complete them.)"""
    hints = typing.get_type_hints(Config)
    unknown = sorted(set(defaults) - set(hints))
    if unknown:
        raise ConfigError(f"defaults: unknown config keys: {', '.join(unknown)}")
    for key, value in defaults.items():
        try:
            coerce(key, value, hints[key])
        except ConfigError as exc:
            raise ConfigError(f"defaults: {exc}") from None


def bootstrap_resamples(spec: dict) -> int:
    """The study file's `bootstrap` (resamples per interval; 0: none), default `DEFAULT_RESAMPLES`."""
    n = coerce("bootstrap", spec.get("bootstrap", DEFAULT_RESAMPLES), int)
    if n < 0:
        raise ConfigError(f"bootstrap must be a number of resamples >= 0, got {n}")
    return n


def protocol(cfg: Config) -> str:
    """`paper`, `grouped` or `leave-source-out:NAME+NAME` (the held-out sources, sorted)."""
    return f"{LSO}:{'+'.join(cfg.holdout)}" if cfg.split == "source" else cfg.split


def _slug(protocol_name: str) -> str:
    """A protocol as part of a file name: `paper`, `grouped`, `lso-figshare+sartaj`."""
    return protocol_name.replace(f"{LSO}:", "lso-")


class EarlierResults:
    """The finished rows of an existing results.csv, so that a configuration whose run folder is absent
    (run folders are not kept in git) keeps its measured numbers. A row is matched on `run_name` when it
    has one, else (files written before that column) on model, imagenet, recipe, split and image size,
    preferring a row with the same epochs and time limit; each row is kept for one configuration only."""

    KEY = ("model", "imagenet", "recipe", "split", "image_size")

    def __init__(self, rows: list[dict[str, str]]):
        self.rows = [row for row in rows if (row.get("status") or "").startswith("finished") and row.get("accuracy")]
        self.used: set[int] = set()

    @classmethod
    def read(cls, path: Path) -> "EarlierResults":
        if not path.is_file():
            return cls([])
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                return cls(list(csv.DictReader(handle)))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            log.warning("cannot read the earlier %s (%s): no earlier numbers are kept", path, exc)
            return cls([])

    def match(self, cfg: Config) -> dict[str, str] | None:
        key = tuple(str(getattr(cfg, name)) for name in self.KEY)
        candidates = [i for i, row in enumerate(self.rows) if i not in self.used and (
            row["run_name"] == cfg.run_name if row.get("run_name")
            else tuple(str(row.get(name)) for name in self.KEY) == key)]
        if not candidates:
            return None
        same_budget = [i for i in candidates if not _budget_differences(self.rows[i], cfg)]
        chosen = (same_budget or candidates)[0]
        self.used.add(chosen)
        return self.rows[chosen]


def _number(text: str | None, integer: bool = False) -> float | int | None:
    if text is None or str(text).strip() in ("", "None", "nan"):
        return None
    value = float(text)
    return int(value) if integer and value.is_integer() else value


def _budget_differences(row: dict[str, str], cfg: Config) -> list[str]:
    """How the earlier row's epochs and time limit differ from the configuration's, as text."""
    out = []
    for name in ("epochs", "max_minutes"):
        then = _number(row.get(name))
        now = getattr(cfg, name)
        if (then is None) != (now is None) or (then is not None and not math.isclose(then, now)):
            out.append(f"{name} {then:g}" if then is not None else f"no {name}")
    return out


def kept_row(earlier: dict[str, str], cfg: Config) -> dict:
    """The measured numbers of an earlier finished row, and a status that says where they come from."""
    row = {name: _number(earlier.get(name), name in INTEGERS) for name in MEASURED}
    row.update({name: _number(value) for name, value in earlier.items() if name.startswith(EXTERNAL)})
    if row["sensitivity"] is None:  # the same number (Tumor positive) under its older name
        row["sensitivity"] = row["recall"]
    for name, same in SAME_AS.items():  # rows written before recall had its own interval columns
        for end in ("lo", "hi"):
            if row[f"{name}_{end}"] is None:
                row[f"{name}_{end}"] = row[f"{same}_{end}"]
    notes = ["run folder not kept"]
    if not all(row[column] is not None for column in INTERVAL_COLUMNS):
        notes.append("no interval")
    differences = _budget_differences(earlier, cfg)
    if differences:
        notes.append(f"measured with {', '.join(differences)}")
    else:  # a row kept before: its note of how it was measured
        notes += [note for note in _status_notes(earlier.get("status", "")) if note.startswith("measured with")]
    row["status"] = f"finished ({'; '.join(notes)})"
    return row


def _status_notes(status: str) -> list[str]:
    """The notes of a status `finished (note; note)`."""
    inside = status.partition("(")[2].rpartition(")")[0]
    return [note.strip() for note in inside.split(";") if note.strip()]


def measured_row(run: RunDir, n_resamples: int = DEFAULT_RESAMPLES) -> dict:
    """The numbers of a finished run folder: metrics.json, plus the intervals of `run_intervals`."""
    metrics = run.metrics()
    row = {name: metrics.get(name) for name in MEASURED if name in metrics}
    row["n_test"] = metrics.get("n")
    per_class = metrics.get("per_class_accuracy") or {}
    row.setdefault("sensitivity", per_class.get("tumor", metrics.get("recall")))
    row.setdefault("specificity", per_class.get("healthy"))
    if row.get("balanced_accuracy") is None and None not in (row["sensitivity"], row["specificity"]):
        row["balanced_accuracy"] = (row["sensitivity"] + row["specificity"]) / 2
    intervals = run_intervals(run, metrics, n_resamples)
    if intervals:
        intervals.update({name: intervals[same] for name, same in SAME_AS.items()})
    for name, metric in (intervals or {}).items():
        if name in INTERVAL_METRICS and metric["ci95"]:
            row[f"{name}_lo"], row[f"{name}_hi"] = metric["ci95"]
        if name in MEASURED and row.get(name) is None:
            row[name] = metric["value"]
    return row


def run_intervals(run: RunDir, metrics: dict, n_resamples: int = DEFAULT_RESAMPLES) -> dict | None:
    """`bootstrap_intervals` of a finished run: its test_predictions.csv probabilities decided at its
    metrics.json threshold, resampling the duplicate groups split.csv gives the test files. None when
    the folder lacks either file (or `n_resamples` is 0); an unreadable one is logged, not fatal."""
    if n_resamples <= 0 or not run.predictions_file.is_file() or not run.split_file.is_file():
        return None
    try:
        threshold = metrics.get("threshold", DEFAULT_THRESHOLD)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise RunError(f"threshold {threshold!r} in metrics.json is not a number in [0, 1]")
        group_of = {row["path"]: row.get("group") for row in run.split_rows()}
        predictions = run.test_predictions()
        labels = [int(row["label"]) for row in predictions]
        prob = [float(row["prob_tumor"]) for row in predictions]
        groups = [int(group_of[row["path"]]) for row in predictions]
    except KeyError as exc:
        log.warning("%s: no intervals: test file %s is not in split.csv", run.name, exc)
        return None
    except (RunError, TypeError, ValueError) as exc:
        log.warning("%s: no intervals: %s", run.name, exc)
        return None
    return bootstrap_intervals(labels, prob, groups, float(threshold), n_resamples)


def row_for(cfg: Config, status: str, earlier: EarlierResults | None = None,
            n_resamples: int = DEFAULT_RESAMPLES) -> dict:
    row = {"run_name": cfg.run_name, "protocol": protocol(cfg), "model": cfg.model, "imagenet": cfg.imagenet,
           "recipe": cfg.recipe, "measures": cfg.measures, "split": cfg.split, "image_size": cfg.image_size,
           "epochs": cfg.epochs, "max_minutes": cfg.max_minutes, "seed": cfg.seed, "status": status}
    run = RunDir(cfg.run_dir)
    if run.metrics_file.is_file():
        row.update(measured_row(run, n_resamples))
        row.update(external_columns(run.external_report()))
        row["status"] = "finished"
    elif earlier is not None:
        previous = earlier.match(cfg)
        if previous is not None:
            row.update(kept_row(previous, cfg))
    return row


def external_columns(report: dict | None) -> dict:
    """`external_NAME_n` and `external_NAME_{sensitivity,specificity}` with `_lo`/`_hi`, at the run's operating
    point, of each folder of the run's external evaluation (`train --external`); none without one."""
    row: dict = {}
    for name, entry in (report or {}).get("datasets", {}).items():
        if entry.get("folder") is None:  # all folders pooled
            continue
        row[f"{EXTERNAL}{name}_n"] = entry["n"]
        for metric in EXTERNAL_METRICS:
            low, high = entry[metric]["ci95"] or (None, None)
            row.update({f"{EXTERNAL}{name}_{metric}": entry[metric]["value"], f"{EXTERNAL}{name}_{metric}_lo": low,
                        f"{EXTERNAL}{name}_{metric}_hi": high})
    return row


def is_finished(row: dict) -> bool:
    return str(row.get("status", "")).startswith("finished")


def study_file(path: str | Path, data: str | None, kept: str) -> tuple[dict, list[Config], Path]:
    """The study file at `path`: its spec, its configurations (`data` overrides its data folder) and its
    `results` folder, which it must name because `kept` is kept there for good."""
    spec = load_yaml(path)
    if "results" not in spec:
        raise ConfigError(f"{path} names no `results` folder, where {kept} is kept")
    return spec, study_configs(spec, data), Path(spec["results"])


def run_study_file(path: str | Path, data: str | None = None, train: bool = True,
                   only: list[str] | None = None) -> list[dict]:
    """The study of the file at `path` (`data` overrides its data folder): report every configuration, train
    those not finished (see `run_study`), then write results.csv, tables and figures; returns results.csv's
    rows. An error in the file's contents names the file."""
    spec = load_yaml(path)
    try:
        configs = study_configs(spec, data)
        n_resamples = bootstrap_resamples(spec)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    results = Path(spec.get("results", "experiments/results"))
    rows = run_study(configs, results, run=train, only=only, n_resamples=n_resamples)
    write_report(configs, rows, results, n_resamples)
    return rows


def run_study(configs: list[Config], results: Path, run: bool = True, only: list[str] | None = None,
              n_resamples: int = DEFAULT_RESAMPLES) -> list[dict]:
    """Report every configuration, run those not finished (of models in `only`, when given; none with
    `run=False`), and rewrite results.csv after each run, so an interrupted study loses no row. Finished
    rows of the existing results.csv are kept for configurations whose run folder is absent."""
    from tumorclf.models.factory import WeightsError, resolve_weights
    from tumorclf.training.experiment import run_experiment

    earlier = EarlierResults.read(results / "results.csv")

    def status(cfg: Config) -> dict:
        try:
            resolve_weights(cfg.model, cfg.imagenet, cfg.weights_dir)
        except WeightsError as exc:
            return row_for(cfg, f"unavailable: {exc}", earlier, n_resamples)
        return row_for(cfg, "partial" if RunDir(cfg.run_dir).progress_file.is_file() else "pending", earlier,
                       n_resamples)

    rows = [status(cfg) for cfg in configs]
    write_results(rows, results)
    todo = [i for i, cfg in enumerate(configs) if run and rows[i]["status"] in ("pending", "partial")
            and (only is None or cfg.model in only)]
    log.info("study: %d configurations, %d finished (%d of them kept from the earlier results.csv), %d to run now",
             len(configs), sum(map(is_finished, rows)), len(earlier.used), len(todo))
    if not todo:
        return rows
    # one log line per finished run with the ETA of the rest (never a bar: each run logs and draws its own)
    with Progress(len(todo), "study", unit="runs", every=0, bar=False) as progress:
        for i in todo:
            cfg = configs[i]
            log.info("study %d/%d: %s", i + 1, len(configs), cfg.run_name)
            run_experiment(cfg)
            rows[i] = status(cfg)
            write_results(rows, results)
            progress.update()
    return rows


def write_results(rows: list[dict], results: Path) -> None:
    def text(value):
        return "" if value is None else value

    external = list(dict.fromkeys(key for row in rows for key in row if key.startswith(EXTERNAL)))
    columns = [*COLUMNS[:-1], *external, COLUMNS[-1]]
    atomic_write_text(results / "results.csv",
                      csv_text(columns, ([text(row.get(c)) for c in columns] for row in rows)))


def _cell(row: dict | None, key: str) -> str:
    """A run's number with its interval, `0.961 [0.946, 0.974]`; without one, the bare value and `BARE`."""
    if row is None:
        return "not run"
    if not is_finished(row):
        return row["status"].split(":")[0]
    value = row.get(key)
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return "-"
    lo, hi = row.get(f"{key}_lo"), row.get(f"{key}_hi")
    if lo not in (None, "") and hi not in (None, ""):
        return format_interval({"value": float(value), "ci95": [float(lo), float(hi)]})
    return f"{float(value):.4f}{BARE}"


def _footnotes(lines: list[str]) -> list[str]:
    if not any(BARE in line for line in lines):
        return []
    return ["", f"{BARE} no interval: intervals need the run folder (its test_predictions.csv and split.csv), "
                "which is not on this machine; the value is the one measured when the run finished."]


def _name(row: dict) -> str:
    model, recipe, measures, size, epochs, minutes = _variant(row)
    budget = f"≤{epochs} epochs" + (f" or ~{float(minutes):g} min" if minutes not in (None, "") else "")
    label = "" if recipe == "paper" else f"{recipe} recipe{f' ({measures})' if measures != 'none' else ''}, "
    return f"{model} ({size} px, {label}{budget})"


def tables_markdown(rows: list[dict], n_resamples: int = DEFAULT_RESAMPLES) -> str:
    """Table 2 (from scratch) and Table 3 (ImageNet, fine-tuned), each split side by side with the paper's,
    then the leave-source-out runs. Each run's number carries its 95% interval where the run folder allows."""
    out = [f"Each number of a run is `value [95% interval]`: a percentile bootstrap over the duplicate groups of "
           f"its test split ({n_resamples} resamples), at the threshold of its metrics.json (0.5 on the raw "
           "P(Tumor), as the paper decided; `tumorclf evaluate` adds the operating point fitted on validation).", ""]
    for number, imagenet, title in ((2, False, "trained from scratch"), (3, True, "ImageNet-pretrained, fine-tuned")):
        table = [f"### Table {number}: {title}", "",
                 "| model | paper acc | paper F1 | paper-split acc | paper-split F1 | paper-split AUC "
                 "| grouped acc | grouped F1 | grouped AUC |", "|---" * 9 + "|"]
        mine = [r for r in rows if r["imagenet"] == imagenet and r["split"] != "source"]
        for variant in dict.fromkeys(_variant(r) for r in mine):
            by_split = {r["split"]: r for r in mine if _variant(r) == variant}
            paper = PAPER.get((variant[0], imagenet), {})
            cells = [f"{paper[k]:.4f}" if k in paper else "-" for k in ("accuracy", "f1")]
            for split in ("paper", "grouped"):
                cells += [_cell(by_split.get(split), k) for k in ("accuracy", "f1", "auc")]
            table.append(f"| {_name(next(iter(by_split.values())))} | " + " | ".join(cells) + " |")
        unavailable = {r["model"]: r["status"] for r in mine if r["status"].startswith("unavailable")}
        out += table + _footnotes(table) + [""] + [f"- {m}: {s}" for m, s in unavailable.items()] + [""]
    out += leave_source_out_markdown(rows)
    out += seeds.markdown(rows)
    return "\n".join(out)


def leave_source_out_markdown(rows: list[dict]) -> list[str]:
    """The table of leave-source-out runs (none: no lines)."""
    source = [r for r in rows if r["split"] == "source"]
    if not source:
        return []
    table = ["### Leave-source-out: tested on held-out source collections", "",
             "Trained and validated on the other sources; files of a duplicate group that reaches into a held-out "
             "source are left out of training. Compare with the grouped split of the same model above.", "",
             "| model | held-out sources | test images | accuracy | balanced accuracy | sensitivity | specificity "
             "| AUC |", "|---" * 8 + "|"]
    for row in source:
        held = str(row.get("protocol", "")).partition(":")[2].replace("+", ", ") or "?"
        n = row.get("n_test")
        cells = [held, f"{int(n)}" if n not in (None, "") else "-"]
        cells += [_cell(row, k) for k in ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc")]
        table.append(f"| {_name(row)} | " + " | ".join(cells) + " |")
    return table + _footnotes(table) + [""]


def _variant(row: dict) -> tuple:
    """What distinguishes one table line from another of the same model."""
    return (row["model"], row.get("recipe") or "paper", row.get("measures") or "none", row["image_size"],
            row["epochs"], row.get("max_minutes"))


def roc_figure(configs: list[Config], protocol_name: str) -> bytes | None:
    """All finished runs of one protocol on one ROC plot (the paper's Figs. 1-2)."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    plotted = 0
    for cfg in configs:
        run = RunDir(cfg.run_dir)
        if protocol(cfg) != protocol_name or not run.metrics_file.is_file() or not run.roc_file.is_file():
            continue
        fpr, tpr = _roc_points(run)
        auc = run.metrics()["auc"]
        recipe = "" if cfg.recipe == "paper" else f" {cfg.recipe}" + (
            f" ({cfg.measures})" if cfg.measures != "none" else "")
        label = f"{cfg.model}{' ImageNet' if cfg.imagenet else ''} {cfg.image_size}px{recipe}"
        ax.plot(fpr, tpr, label=f"{label}: AUC {auc:.3f}")
        plotted += 1
    if not plotted:
        plt.close(fig)
        return None
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    held = protocol_name.partition(":")[2].replace("+", ", ")
    title = f"ROC, leave-source-out (held out: {held})" if held else f"ROC, {protocol_name} split"
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title=title)
    ax.legend(loc="lower right", fontsize=7)
    return figure_png(fig)


def _roc_points(run: RunDir) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of a run's roc.csv."""
    rows = run.roc()
    return np.array([fpr for _, fpr, _ in rows]), np.array([tpr for _, _, tpr in rows])


def write_report(configs: list[Config], rows: list[dict], results: Path,
                 n_resamples: int = DEFAULT_RESAMPLES) -> None:
    """tables.md, ROC figures per protocol, the VGG16 confusion matrix and a Grad-CAM comparison."""
    atomic_write_text(results / "tables.md", tables_markdown(rows, n_resamples))
    if any(len(e["runs"]) > 1 for e in seeds.across_seeds(rows, seeds.SEED_METRICS)):
        atomic_write_text(results / "seeds.csv", csv_text(*seeds.csv_rows(rows)))
    # a figure over runs is redrawn only when every finished run it covers still has its folder: rows kept
    # from an earlier results.csv (folders not kept) would otherwise vanish from a committed figure
    kept = {protocol(cfg) for cfg, row in zip(configs, rows)
            if row.get("status", "").startswith("finished") and not RunDir(cfg.run_dir).metrics_file.is_file()}
    for name in dict.fromkeys(["paper", "grouped", *map(protocol, configs)]):
        if name in kept:
            log.info("roc_%s.png left as it is: some of its runs' folders were not kept", _slug(name))
            continue
        png = roc_figure(configs, name)
        if png:
            atomic_write_bytes(results / f"roc_{_slug(name)}.png", png)
    finished = [c for c in configs if RunDir(c.run_dir).metrics_file.is_file()]
    for cfg in finished:
        confusion_png = RunDir(cfg.run_dir).confusion_png
        if cfg.model == "vgg16" and cfg.imagenet and confusion_png.is_file():
            atomic_write_bytes(results / f"confusion_matrix_{cfg.run_name}.png", confusion_png.read_bytes())
    grouped = [c for c in finished if c.split == "grouped" and RunDir(c.run_dir).finished]  # with best.keras
    if "grouped" in kept:
        log.info("Grad-CAM comparison left as it is: some grouped-split runs' folders were not kept")
    elif grouped:
        from tumorclf.explain.gradcam import compare_runs

        tumor_test = _first_test_file(grouped[0].run_dir, label=1)
        if tumor_test is not None:
            for path in compare_runs([c.run_dir for c in grouped], [tumor_test], results / "gradcam"):
                log.info("Grad-CAM comparison: %s", path)


def _first_test_file(run_dir: Path | RunDir, label: int) -> Path | None:
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    for row in run.split_rows():
        if row["split"] == "test" and int(row["label"]) == label:
            return run.data_root() / row["path"]
    return None

