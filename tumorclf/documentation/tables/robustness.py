"""The tables of docs/robustness.md: what each source-robust measure does in source and on held-out collections,
from the study experiments/robust.yaml, its ablation and the view-plane breakdown of its held-out predictions."""

from __future__ import annotations

from tumorclf.documentation.tables.cells import (
    DATA,
    Results,
    Table,
    interval,
    number,
    study_command,
    study_results,
    the_row,
)
from tumorclf.errors import UserError

ABLATION = "robust/ablation.csv"
STUDY = study_results("robust")
VIEW_PLANES = "robust/view_planes.json"
ABLATION_COMMAND = f"tumorclf ablation --config experiments/robust.yaml --data {DATA} --bootstrap 2000"
STUDY_COMMAND = study_command("robust")
VIEW_PLANES_COMMAND = (f"python experiments/view_planes.py --data {DATA} --sources ../shared/data/provenance.csv "
                       "--predictions experiments/results/robust/evaluations/*lso*/predictions.csv "
                       "--out experiments/results/robust/view_planes.json")
HELD_OUT = ("figshare", "sartaj")
GROUPED, LSO = "grouped", "lso-figshare+sartaj"
# (label, the end of the run's name): the seed-42 runs of experiments/robust.yaml, named so that runs of other
# seeds added to the study later do not silently replace them here
CONFIGURATIONS = (("fast (baseline)", "fast"),
                  ("fast + foreground framing", "fast_foreground"),
                  ("fast + percentile intensity", "fast_percentile"),
                  ("fast + acquisition augmentation", "fast_acquisition"),
                  ("fast + elastic deformation", "fast_elastic"),
                  ("**robust** (framing + intensity + acquisition)", "robust"),
                  ("robust + elastic deformation", "robust_elastic"))
OPERATING_POINT = ("at each run's operating point (the highest threshold on calibrated P(tumour) reaching 95% "
                   "sensitivity on validation)")
INTERVALS = "95% intervals over 2,000 resamples of the test split's duplicate groups, not over training runs"


def run_name(protocol: str, suffix: str) -> str:
    """The study's name of a run: it is the key of every results file read here."""
    return f"vgg16_imagenet_{protocol}_224px_seed42_{suffix}"


def latest(rows: list[dict[str, str]], name: str) -> dict[str, str]:
    """The last evaluated row of a run: ablation.csv only ever appends, so a re-evaluated run has several rows and
    the newest counts, as in the ablation's own ablation.md."""
    found = [row for row in rows if row["run_name"] == name and row["status"] == "evaluated"]
    if not found:
        raise UserError(f"{ABLATION} has no evaluated row of run {name}; run `{ABLATION_COMMAND}`")
    return max(found, key=lambda row: row["evaluated_at"])


def pair(row: dict, first: str, second: str) -> str:
    """`0.875 / 0.557`: two point values of one row (e.g. sensitivity / specificity)."""
    values = [row[key]["value"] if isinstance(row[key], dict) else row[key] for key in (first, second)]
    return " / ".join(number(value) for value in values)


def ablation(results: Results) -> Table:
    """Each measure alone and together, in source and held out: the page's main result."""
    rows = results.csv(ABLATION)
    baseline_auc = float(latest(rows, run_name(LSO, "fast"))["auc"])
    body = []
    for label, suffix in CONFIGURATIONS:
        grouped, held_out = latest(rows, run_name(GROUPED, suffix)), latest(rows, run_name(LSO, suffix))
        gain = "baseline" if suffix == "fast" else f"{float(held_out['auc']) - baseline_auc:+.3f}"
        body.append([label, interval(grouped, "balanced_accuracy"), interval(grouped, "auc"),
                     interval(held_out, "balanced_accuracy"), interval(held_out, "auc"), gain,
                     pair(held_out, "sensitivity", "specificity")])
    return Table(["configuration", "grouped: balanced accuracy", "grouped: AUC", "held out: balanced accuracy",
                  "held out: AUC", "held out: AUC minus the baseline's", "held out: sensitivity / specificity"],
                 body, [results.source(ABLATION)], ABLATION_COMMAND,
                 f"ImageNet VGG16, one training run per cell (seed 42), {OPERATING_POINT}; {INTERVALS}. "
                 "Held out: every image of figshare and sartaj, collections the run never saw.")


def default_threshold(results: Results) -> Table:
    """The same runs at 0.5: shows which conclusions depend on the fitted threshold."""
    rows = results.csv(STUDY)
    body = []
    for label, suffix in CONFIGURATIONS:
        grouped = the_row(rows, run_name=run_name(GROUPED, suffix))
        held_out = the_row(rows, run_name=run_name(LSO, suffix))
        body.append([label, interval(grouped, "accuracy"), interval(grouped, "balanced_accuracy"),
                     interval(held_out, "accuracy"), interval(held_out, "balanced_accuracy"),
                     pair(held_out, "sensitivity", "specificity")])
    return Table(["configuration", "grouped: accuracy", "grouped: balanced accuracy", "held out: accuracy",
                  "held out: balanced accuracy", "held out: sensitivity / specificity"],
                 body, [results.source(STUDY)], STUDY_COMMAND,
                 f"The same runs at the fixed threshold 0.5 on the raw (uncalibrated) P(tumour); {INTERVALS}.")


def operating_point(results: Results) -> Table:
    """The threshold fitted on the training collections against what it delivers on the held-out ones."""
    rows = results.csv(ABLATION)
    body, sources = [], [results.source(ABLATION)]
    for label, suffix in CONFIGURATIONS:
        path = f"robust/evaluations/{run_name(LSO, suffix)}/evaluation.json"
        report, sources = results.json(path), sources + [results.source(path)]
        validation, test = report["operating_point"]["validation"], report["datasets"]["test"]
        body.append([label, number(report["threshold"]),
                     pair(validation, "sensitivity_at_threshold", "specificity_at_threshold"),
                     pair(test, "sensitivity", "specificity"), interval(test, "ece"), interval(test, "brier"),
                     interval(latest(rows, run_name(GROUPED, suffix)), "ece")])
    return Table(["configuration", "threshold", "validation: sensitivity / specificity",
                  "held out: sensitivity / specificity", "held out: ECE", "held out: Brier score", "grouped: ECE"],
                 body, sources, ABLATION_COMMAND,
                 "Leave-source-out runs: the threshold is fitted on the validation split (training collections), "
                 "then applied to the held-out ones; ECE and Brier score of the calibrated P(tumour), with the "
                 f"same configuration's in-source (grouped split) ECE for comparison; {INTERVALS}.")


def sources(results: Results) -> Table:
    """How the view plane (by the symmetry proxy) differs between the training and the held-out collections."""
    report = results.json(VIEW_PLANES)
    body = []
    for key in sorted(report["sources"], key=lambda key: (key.split("/")[0] in HELD_OUT, key)):
        source, label = key.split("/")
        found = report["sources"][key]
        role = "held out" if source in HELD_OUT else "training and validation"
        body.append([source, label, role, found["n"], f"{100 * found['sagittal_like']:.1f}%",
                     number(found["symmetry_quartiles"][1])])
    return Table(["source", "class", "in the leave-source-out split", "images", "sagittal-like",
                  "median symmetry"],
                 body, [results.source(VIEW_PLANES)], VIEW_PLANES_COMMAND,
                 f"Sagittal-like: left-right symmetry below {report['cut']}.")


def view_planes(results: Results) -> Table:
    """Held-out results split by the symmetry proxy: where the remaining errors are."""
    report = results.json(VIEW_PLANES)
    body, breakdowns = [], []
    for label, suffix in CONFIGURATIONS:
        key = f"experiments/results/robust/evaluations/{run_name(LSO, suffix)}/predictions.csv"
        if key not in report["predictions"]:
            raise UserError(f"{VIEW_PLANES} has no breakdown of {key}; rerun `{VIEW_PLANES_COMMAND}`")
        found = report["predictions"][key]
        breakdowns.append(found)
        body.append([label, *(number(found[kind][metric]) for kind in ("symmetric", "sagittal_like")
                              for metric in ("balanced_accuracy", "specificity", "auc"))])
    # every run is tested on the same held-out images, so the first run's counts are every run's
    (n_sym, t_sym), (n_sag, t_sag) = ((breakdowns[0][kind]["n"], breakdowns[0][kind]["tumor"])
                                      for kind in ("symmetric", "sagittal_like"))
    return Table(["configuration", "symmetric: balanced accuracy", "symmetric: specificity", "symmetric: AUC",
                  "sagittal-like: balanced accuracy", "sagittal-like: specificity", "sagittal-like: AUC"],
                 body, [results.source(VIEW_PLANES)], VIEW_PLANES_COMMAND,
                 f"Held-out images split at symmetry {report['cut']}: {n_sym} symmetric ({t_sym} tumour), {n_sag} "
                 f"sagittal-like ({t_sag} tumour). Decisions {OPERATING_POINT}; AUC from predictions.csv's scores, "
                 "which are rounded to 6 decimals, so where scores saturate it is lower than the evaluation's.")


TRANSFER = "transfer/transfer.csv"
TRANSFER_COMMAND = f"tumorclf transfer --config experiments/transfer.yaml --data {DATA}"
HEADLINE_TRANSFER = "headline_recipe/transfer.csv"
HEADLINE_TRANSFER_COMMAND = f"tumorclf transfer --config experiments/headline.yaml --data {DATA}"


def transfer_table(results: Results, file: str, command: str) -> Table:
    """A transfer study's runs (`tumorclf.studies.transfer.summary`) on the external meningiomas and on their test
    split, alone, with test-time augmentation and as an ensemble of their seeds, at every point."""
    from tumorclf.studies.transfer import ABOUT, summary

    rows = results.csv(file)
    header, table = summary(rows)
    failed = sum(1 for row in rows if row["status"].startswith("failed"))
    note = (f"{ABOUT} The points: target_sensitivity (validation, 0.95), high_sensitivity (validation, 0.99), "
            f"0.5. {failed} of {len(rows)} rows of {file} failed (its status column says why).")
    return Table(header, table, [results.source(file)], command, note)


def transfer(results: Results) -> Table:
    """The fast and robust recipes at the transfer study's budget (at most 6 epochs, early stopping after 2)."""
    return transfer_table(results, TRANSFER, TRANSFER_COMMAND)


def transfer_headline(results: Results) -> Table:
    """The default preset's recipe (at most 12 epochs, early stopping after 4) over its study's seeds."""
    return transfer_table(results, HEADLINE_TRANSFER, HEADLINE_TRANSFER_COMMAND)


TRANSFER_STUDY = study_results("transfer")


def transfer_seeds(results: Results) -> Table:
    """The transfer study's runs at 0.5 on their own test split, each configuration's mean and spread over seeds."""
    from tumorclf.studies import seeds

    rows = results.csv(TRANSFER_STUDY)
    table = [[f"`{e['configuration']}`", e["protocol"], str(len(e["runs"])),
              *(seeds.format_summary(e[m]) for m in seeds.SEED_METRICS)]
             for e in seeds.across_seeds(rows, seeds.SEED_METRICS)]
    return Table(["configuration", "protocol", "runs", *(m.replace("_", " ") for m in seeds.SEED_METRICS)], table,
                 [results.source(TRANSFER_STUDY)], study_command("transfer"),
                 "At P(tumour) 0.5 on each run's own test split (the held-out collections for leave-source-out); mean "
                 "± standard deviation over seeds (min-max).")


TABLES = {"robustness-ablation": ablation,
          "transfer": transfer,
          "transfer-headline": transfer_headline,
          "transfer-seeds": transfer_seeds,
          "robustness-default-threshold": default_threshold,
          "robustness-operating-point": operating_point,
          "robustness-sources": sources,
          "robustness-view-planes": view_planes}
