"""Run a study: every configuration of a YAML file on each split, resumable, then tables and figures.

Usage: ``tumorclf study --config experiments/paper.yaml [--data DIR] [--only MODEL ...] [--status]``
(``python -m tumorclf.study`` is an alias).

Each run entry of the file, over `defaults`, is read as a `Config` (values coerced to the field's type,
so `learning_rate: 1e-4` is a number; a bad value is one error line naming the entry and the key).
Finished runs are skipped, an interrupted one resumes from its last completed epoch, and
`results.csv` is rewritten (atomically) after every run, so the study can be stopped at any time.
"""

from __future__ import annotations

import logging
import typing
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tumorclf.artifacts import atomic_write_bytes, atomic_write_text, csv_text, figure_png  # noqa: E402
from tumorclf.config import Config, ConfigError, coerce, load_yaml  # noqa: E402
from tumorclf.progress import Progress  # noqa: E402
from tumorclf.registry import MODELS  # noqa: E402
from tumorclf.rundir import RunDir  # noqa: E402

log = logging.getLogger(__name__)

COLUMNS = ["model", "imagenet", "recipe", "split", "image_size", "epochs", "max_minutes", "test_loss", "accuracy", "precision", "recall",
           "f1", "auc", "train_minutes", "epochs_run", "best_epoch", "status"]
# The study's own numbers, where this project's issues quote them (accuracy as a fraction).
PAPER = {("simplecnn", False): {"accuracy": 0.771}, ("vgg16", True): {"accuracy": 0.9783, "f1": 0.9759}}


def study_configs(spec: dict, data: str | None) -> list[Config]:
    """One Config per (run entry, split), from the study file's defaults, runs and splits."""
    unknown = sorted(set(spec) - {"defaults", "runs", "splits", "output", "results", "data"})
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
    configs = []
    for i, entry in enumerate(runs, start=1):
        if not isinstance(entry, dict):
            raise ConfigError(f"runs entry {i} must be a mapping of config keys to values, got {entry!r}")
        for split in splits:
            values = {**defaults, **entry, "split": split, "output": spec.get("output", "experiments/runs"),
                      "resume": True}
            values["data"] = data or values.get("data") or spec.get("data")
            try:
                configs.append(Config.from_dict(values))
            except ConfigError as exc:
                where = f"runs entry {i} ({values.get('model', 'simplecnn')}, {split} split)"
                raise ConfigError(f"{where}: {exc}") from None
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


def row_for(cfg: Config, status: str) -> dict:
    row = {"model": cfg.model, "imagenet": cfg.imagenet, "recipe": cfg.recipe, "split": cfg.split,
           "image_size": cfg.image_size, "epochs": cfg.epochs, "max_minutes": cfg.max_minutes, "status": status}
    run = RunDir(cfg.run_dir)
    if run.metrics_file.is_file():
        metrics = run.metrics()
        row.update({k: metrics.get(k) for k in COLUMNS if k in metrics and k not in row})
        row["status"] = "finished"
    return row


def run_study(configs: list[Config], results: Path, run: bool = True, only: list[str] | None = None) -> list[dict]:
    """Report every configuration, run those not finished (of models in `only`, when given; none with
    `run=False`), and rewrite results.csv after each run, so an interrupted study loses no row."""
    from tumorclf.models import WeightsError, resolve_weights
    from tumorclf.run import run_experiment

    def status(cfg: Config) -> dict:
        try:
            resolve_weights(cfg.model, cfg.imagenet, cfg.weights_dir)
        except WeightsError as exc:
            return row_for(cfg, f"unavailable: {exc}")
        return row_for(cfg, "partial" if RunDir(cfg.run_dir).progress_file.is_file() else "pending")

    rows = [status(cfg) for cfg in configs]
    write_results(rows, results)
    todo = [i for i, cfg in enumerate(configs) if run and rows[i]["status"] in ("pending", "partial")
            and (only is None or cfg.model in only)]
    log.info("study: %d configurations, %d finished, %d to run now", len(configs),
             sum(row["status"] == "finished" for row in rows), len(todo))
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
    atomic_write_text(results / "results.csv", csv_text(COLUMNS, ([row.get(c, "") for c in COLUMNS] for row in rows)))


def tables_markdown(rows: list[dict]) -> str:
    """Table 2 (from scratch) and Table 3 (ImageNet, fine-tuned), each split side by side with the paper's."""

    def cell(row: dict | None, key: str) -> str:
        if row is None:
            return "not run"
        if row["status"] != "finished":
            return row["status"].split(":")[0]
        return f"{row[key]:.4f}"

    out = []
    for number, imagenet, title in ((2, False, "trained from scratch"), (3, True, "ImageNet-pretrained, fine-tuned")):
        out += [f"### Table {number}: {title}", "",
                "| model | paper acc | paper F1 | paper-split acc | paper-split F1 | paper-split AUC "
                "| grouped acc | grouped F1 | grouped AUC |", "|---" * 9 + "|"]
        variants = dict.fromkeys(_variant(r) for r in rows if r["imagenet"] == imagenet)
        for variant in variants:
            by_split = {r["split"]: r for r in rows if _variant(r) == variant and r["imagenet"] == imagenet}
            model, recipe, size, epochs, minutes = variant
            paper = PAPER.get((model, imagenet), {})
            cells = [f"{paper[k]:.4f}" if k in paper else "-" for k in ("accuracy", "f1")]
            for split in ("paper", "grouped"):
                cells += [cell(by_split.get(split), k) for k in ("accuracy", "f1", "auc")]
            budget = f"≤{epochs} epochs" + (f" or ~{minutes:g} min" if minutes else "")
            name = f"{model} ({size} px, {'fast recipe, ' if recipe == 'fast' else ''}{budget})"
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        unavailable = {r["model"]: r["status"] for r in rows if r["imagenet"] == imagenet
                       and r["status"].startswith("unavailable")}
        out += [""] + [f"- {m}: {s}" for m, s in unavailable.items()] + [""]
    return "\n".join(out)


def _variant(row: dict) -> tuple:
    """What distinguishes one table line from another of the same model."""
    return row["model"], row.get("recipe", "paper"), row["image_size"], row["epochs"], row.get("max_minutes")


def roc_figure(configs: list[Config], split: str) -> bytes | None:
    """All finished runs of one split on one ROC plot (the paper's Figs. 1-2)."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    plotted = 0
    for cfg in configs:
        run = RunDir(cfg.run_dir)
        if cfg.split != split or not run.metrics_file.is_file():
            continue
        fpr, tpr = _roc_points(run)
        auc = run.metrics()["auc"]
        label = f"{cfg.model}{' ImageNet' if cfg.imagenet else ''} {cfg.image_size}px{' fast' if cfg.recipe == 'fast' else ''}"
        ax.plot(fpr, tpr, label=f"{label}: AUC {auc:.3f}")
        plotted += 1
    if not plotted:
        plt.close(fig)
        return None
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title=f"ROC, {split} split")
    ax.legend(loc="lower right", fontsize=7)
    return figure_png(fig)


def _roc_points(run: RunDir) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of a run's roc.csv."""
    rows = run.roc()
    return np.array([fpr for _, fpr, _ in rows]), np.array([tpr for _, _, tpr in rows])


def write_report(configs: list[Config], rows: list[dict], results: Path) -> None:
    """tables.md, ROC figures per split, the VGG16 confusion matrix and a Grad-CAM comparison."""
    atomic_write_text(results / "tables.md", tables_markdown(rows))
    for split in ("paper", "grouped"):
        png = roc_figure(configs, split)
        if png:
            atomic_write_bytes(results / f"roc_{split}.png", png)
    finished = [c for c in configs if RunDir(c.run_dir).metrics_file.is_file()]
    for cfg in finished:
        confusion_png = RunDir(cfg.run_dir).confusion_png
        if cfg.model == "vgg16" and cfg.imagenet and confusion_png.is_file():
            atomic_write_bytes(results / f"confusion_matrix_{cfg.run_name}.png", confusion_png.read_bytes())
    grouped = [c for c in finished if c.split == "grouped"]
    if grouped:
        from tumorclf.explain import compare_runs

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


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="study YAML (defaults, runs, splits, output, results)")
    p.add_argument("--data", help="dataset folder (default: the file's `data`, else $TUMORCLF_DATA)")
    p.add_argument("--only", nargs="+", choices=tuple(MODELS), metavar="MODEL",
                   help=f"run only these models ({', '.join(MODELS)})")
    p.add_argument("--status", action="store_true", help="report what is finished/partial/pending; train nothing")


def run(args) -> int:
    spec = load_yaml(args.config)
    try:
        configs = study_configs(spec, args.data)
    except ConfigError as exc:
        raise ConfigError(f"{args.config}: {exc}") from None
    results = Path(spec.get("results", "experiments/results"))
    rows = run_study(configs, results, run=not args.status, only=args.only)
    write_report(configs, rows, results)
    for row in rows:
        accuracy = f"{row['accuracy']:.4f}" if row.get("accuracy") is not None else "-"
        print(f"{row['model']:<12} {'imagenet' if row['imagenet'] else 'scratch':<9} {row['recipe']:<6} {row['split']:<8} "
              f"acc {accuracy:<7} {row['status'][:90]}")
    return 0


if __name__ == "__main__":
    from tumorclf.cli import alias

    raise SystemExit(alias("tumorclf.study"))
