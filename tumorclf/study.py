"""Run a study: every configuration of a YAML file on each split, resumable, then tables and figures.

Usage: ``python -m tumorclf.study --config experiments/paper.yaml [--data DIR] [--only MODEL ...] [--status]``

Finished runs are skipped, an interrupted one resumes from its last completed epoch, and
`results.csv` is rewritten (atomically) after every run, so the study can be stopped at any time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tumorclf.artifacts import atomic_write_bytes, atomic_write_text, csv_text, figure_png  # noqa: E402
from tumorclf.config import Config, ConfigError, load_yaml  # noqa: E402

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
    if not spec.get("runs"):
        raise ConfigError("a study file needs a non-empty `runs` list")
    defaults = dict(spec.get("defaults") or {})
    configs = []
    for entry in spec["runs"]:
        for split in spec.get("splits") or ["grouped"]:
            values = {**defaults, **entry, "split": split, "output": spec.get("output", "experiments/runs"),
                      "resume": True}
            values["data"] = data or values.get("data") or spec.get("data")
            configs.append(Config.from_dict(values))
    return configs


def row_for(cfg: Config, status: str) -> dict:
    row = {"model": cfg.model, "imagenet": cfg.imagenet, "recipe": cfg.recipe, "split": cfg.split,
           "image_size": cfg.image_size, "epochs": cfg.epochs, "max_minutes": cfg.max_minutes, "status": status}
    metrics_path = cfg.run_dir / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
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
        return row_for(cfg, "partial" if (cfg.run_dir / "progress.json").is_file() else "pending")

    rows = [status(cfg) for cfg in configs]
    write_results(rows, results)
    for i, cfg in enumerate(configs):
        if run and rows[i]["status"] in ("pending", "partial") and (only is None or cfg.model in only):
            log.info("study %d/%d: %s", i + 1, len(configs), cfg.run_name)
            run_experiment(cfg)
            rows[i] = status(cfg)
            write_results(rows, results)
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
        roc, metrics = cfg.run_dir / "roc.csv", cfg.run_dir / "metrics.json"
        if cfg.split != split or not metrics.is_file():
            continue
        fpr, tpr = np.loadtxt(roc, delimiter=",", skiprows=1, usecols=(1, 2), unpack=True)
        auc = json.loads(metrics.read_text())["auc"]
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


def write_report(configs: list[Config], rows: list[dict], results: Path) -> None:
    """tables.md, ROC figures per split, the VGG16 confusion matrix and a Grad-CAM comparison."""
    atomic_write_text(results / "tables.md", tables_markdown(rows))
    for split in ("paper", "grouped"):
        png = roc_figure(configs, split)
        if png:
            atomic_write_bytes(results / f"roc_{split}.png", png)
    finished = [c for c in configs if (c.run_dir / "metrics.json").is_file()]
    for cfg in finished:
        if cfg.model == "vgg16" and cfg.imagenet:
            atomic_write_bytes(results / f"confusion_matrix_{cfg.run_name}.png",
                               (cfg.run_dir / "confusion_matrix.png").read_bytes())
    grouped = [c for c in finished if c.split == "grouped"]
    if grouped:
        from tumorclf.explain import compare_runs

        tumor_test = _first_test_file(grouped[0].run_dir, label=1)
        if tumor_test is not None:
            for path in compare_runs([c.run_dir for c in grouped], [tumor_test], results / "gradcam"):
                log.info("Grad-CAM comparison: %s", path)


def _first_test_file(run_dir: Path, label: int) -> Path | None:
    import csv

    config = json.loads((run_dir / "config.json").read_text())
    with open(run_dir / "split.csv") as handle:
        for row in csv.DictReader(handle):
            if row["split"] == "test" and int(row["label"]) == label:
                return Path(config["resolved"]["data"]) / row["path"]
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tumorclf.study", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="study YAML (defaults, runs, splits, output, results)")
    p.add_argument("--data", help="dataset folder (default: the file's `data`, else $TUMORCLF_DATA)")
    p.add_argument("--only", nargs="+", help="run only these models")
    p.add_argument("--status", action="store_true", help="report what is finished/partial/pending; train nothing")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from tumorclf.artifacts import RunExistsError
    from tumorclf.data import DataError

    try:
        spec = load_yaml(args.config)
        configs = study_configs(spec, args.data)
        results = Path(spec.get("results", "experiments/results"))
        rows = run_study(configs, results, run=not args.status, only=args.only)
        write_report(configs, rows, results)
    except (ConfigError, DataError, RunExistsError) as exc:
        print(f"tumorclf.study: error: {exc}", file=sys.stderr)
        return 2
    for row in rows:
        accuracy = f"{row['accuracy']:.4f}" if row.get("accuracy") is not None else "-"
        print(f"{row['model']:<12} {'imagenet' if row['imagenet'] else 'scratch':<9} {row['recipe']:<6} {row['split']:<8} "
              f"acc {accuracy:<7} {row['status'][:90]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
