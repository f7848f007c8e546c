"""The README's headline: the default preset's recipe (ImageNet VGG16, robust, 128 px) under each protocol, run by
run over seeds with each configuration's mean and spread, from one study file (experiments/headline.yaml)."""

from __future__ import annotations

from tumorclf.documentation.tables.cells import (
    ROBUST_RECIPE,
    Results,
    Snippet,
    Table,
    interval,
    number,
    study_command,
    study_results,
    the_row,
)
from tumorclf.studies import seeds

STUDY, COMMAND = study_results("headline_recipe"), study_command("headline")
PROTOCOLS = (("grouped", "in-source, grouped split"),
             ("paper", "the paper's split (duplicates leak)"),
             ("leave-source-out:figshare+sartaj", "leave-source-out: figshare and sartaj never seen"))
METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc")
EXTERNAL = "external_figshare_meningioma_sensitivity"  # at the run's operating point (`train --external`)


def runs_of(rows: list[dict[str, str]], protocol: str) -> list[dict[str, str]]:
    """The finished headline-recipe runs of `protocol` among the study's `rows`, in its order (seed by seed)."""
    return [row for row in rows if row["protocol"] == protocol and row["status"].startswith("finished")
            and all(row[key] == value for key, value in ROBUST_RECIPE.items())]


def headline(results: Results) -> Table:
    study, body = results.csv(STUDY), []
    for protocol, label in PROTOCOLS:
        rows = runs_of(study, protocol)
        for row in rows:
            body.append([label, row["seed"], row["n_test"],
                         *(interval(row, metric) for metric in (*METRICS, EXTERNAL))])
        if len(rows) > 1:
            spread = seeds.across_seeds(rows, (*METRICS, EXTERNAL))[0]
            body.append([label, f"mean ± sd of {len(rows)}", "",
                         *(f"{number(spread[m]['mean'])} ± {number(spread[m]['sd'])}" for m in (*METRICS, EXTERNAL))])
    return Table(["protocol", "seed", "test images", "accuracy", "balanced accuracy", "sensitivity", "specificity",
                  "AUC", "external meningiomas found"],
                 body, [results.source(STUDY)], COMMAND,
                 "ImageNet VGG16, robust recipe, 128 px (the default preset), one row per training run, its test "
                 "split decided at P(tumour) 0.5; the last column is the share of 708 external meningioma slices "
                 "(a tumour type absent from training) found at the run's own operating point. Each interval is a "
                 "95% bootstrap interval (test split: over its duplicate groups); mean ± standard deviation over "
                 "the seeds below each protocol's runs.")


def headline_output(results: Results) -> Snippet:
    """The two lines the headline run printed (its test metrics at 0.5, then its run folder)."""
    row = the_row(results.csv(STUDY), protocol="grouped", seed="42", **ROBUST_RECIPE)
    return Snippet(f"test accuracy {number(row['accuracy'], 4)}, F1 {number(row['f1'], 4)}, AUC "
                   f"{number(row['auc'], 4)} (best epoch {row['best_epoch']} of {row['epochs_run']}, "
                   f"{row['train_minutes']} min of training)\nruns/{row['run_name']}",
                   [results.source(STUDY)], COMMAND)


def headline_time(results: Results) -> Table:
    """Training minutes of the default preset's runs: what a user of a bare `tumorclf train` should expect."""
    study = results.csv(STUDY)
    rows = [row for protocol, _ in PROTOCOLS for row in runs_of(study, protocol)]
    return Table(["protocol", "seed", "epochs run", "best epoch", "training minutes"],
                 [[row["protocol"], row["seed"], row["epochs_run"], row["best_epoch"],
                   number(row["train_minutes"], 1)] for row in rows],
                 [results.source(STUDY)], COMMAND,
                 "Training minutes on 2 CPU cores: building the model, caching the frozen features and the epochs "
                 "(at most 12, early stopping after 4); the grouped and leave-source-out runs read their features "
                 "from the cache of earlier runs with the same views (experiments/transfer.yaml's), the paper-split "
                 "run computed its own. The quality gate's fit and the test come on top (the whole command, cold "
                 "and warm: docs/performance.md).")


TABLES = {"headline": headline, "headline-output": headline_output, "headline-time": headline_time}
