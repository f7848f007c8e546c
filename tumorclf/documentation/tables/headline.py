"""The README's headline: the robust recipe (ImageNet VGG16) under the three protocols, from one study file."""

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

STUDY, COMMAND = study_results("robust"), study_command("robust")
PROTOCOLS = (("grouped", "in-source, grouped split (no duplicate across splits)"),
             ("paper", "the paper's split (random files; duplicates leak)"),
             ("leave-source-out:figshare+sartaj", "leave-source-out: figshare and sartaj never seen"))
METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc")


def headline(results: Results) -> Table:
    rows = results.csv(STUDY)
    body = []
    for protocol, label in PROTOCOLS:
        row = the_row(rows, protocol=protocol, **ROBUST_RECIPE)
        body.append([label, row["n_test"], *(interval(row, metric) for metric in METRICS)])
    return Table(["protocol", "test images", "accuracy", "balanced accuracy", "sensitivity", "specificity", "AUC"],
                 body, [results.source(STUDY)], COMMAND,
                 "ImageNet VGG16, robust recipe, one training run (seed 42), decided at P(tumour) 0.5; each "
                 "interval is a 95% bootstrap interval over the test split's duplicate groups.")


def headline_output(results: Results) -> Snippet:
    """The two lines the headline run printed (its test metrics at 0.5, then its run folder)."""
    row = the_row(results.csv(STUDY), protocol="grouped", **ROBUST_RECIPE)
    return Snippet(f"test accuracy {number(row['accuracy'], 4)}, F1 {number(row['f1'], 4)}, AUC "
                   f"{number(row['auc'], 4)} (best epoch {row['best_epoch']} of {row['epochs_run']}, "
                   f"{row['train_minutes']} min of training)\nruns/{row['run_name']}",
                   [results.source(STUDY)], COMMAND)


def headline_time(results: Results) -> Table:
    """Training minutes of the robust recipe's runs: what a user of the default preset should expect."""
    rows = [row for row in results.csv(STUDY) if row["recipe"] == "robust"]
    return Table(["protocol", "what was on", "epochs run", "best epoch", "training minutes"],
                 [[row["protocol"], row["measures"], row["epochs_run"], row["best_epoch"],
                   number(row["train_minutes"], 1)] for row in rows],
                 [results.source(STUDY)], COMMAND,
                 "Training minutes on 2 CPU cores: building the model, caching the frozen features and the "
                 "epochs (at most 12, early stopping after 4); the quality gate's fit and the test come after.")


TABLES = {"headline": headline, "headline-output": headline_output, "headline-time": headline_time}
