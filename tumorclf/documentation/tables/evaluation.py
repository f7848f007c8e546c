"""The tables of docs/evaluation.md: one recipe measured under three split protocols, what its operating point
and calibration do in source and out of source, and how many test images of the paper's split are copies of
training images. Read from the committed evaluations, so the page cannot drift from them."""

from __future__ import annotations

import csv

from tumorclf.documentation.tables.cells import (
    Results,
    Table,
    interval,
    number,
    study_command,
    study_results,
    the_row,
)

STUDY, STUDY_COMMAND = study_results("cpu_budget"), study_command("cpu_budget")
# (column title, split as in the run's name) of the fast VGG16 recipe's evaluations
SPLITS = (("paper split", "paper"), ("grouped split", "grouped"),
          ("leave-source-out", "lso-figshare+sartaj"))
EVALUATION = "evaluate_vgg16_imagenet_{split}_224px_fast/evaluation.json"
EVALUATE_COMMAND = ("tumorclf evaluate --run experiments/runs/vgg16_imagenet_SPLIT_224px_seed42_fast --bootstrap 2000 "
                    "--out experiments/results/evaluate_vgg16_imagenet_SPLIT_224px_fast")
EVALUATE_NOTE = "ImageNet VGG16, fast recipe, seed 42; SPLIT is paper, grouped or lso-figshare+sartaj."
PAPER_SPLIT = "evaluate_vgg16_imagenet_paper_224px_fast"
LEAKAGE = "leakage_paper_split_decoder2.csv"
LEAKAGE_RUN = "vgg16_imagenet_paper_224px_seed42_fast"
ABLATION_COMMAND = "tumorclf ablation --config experiments/robust.yaml"
ABLATION_EVALUATION = "robust/evaluations/vgg16_imagenet_{split}_224px_seed42_{suffix}/evaluation.json"
# (label, suffix of the run name) of the robust study's configurations
CONFIGURATIONS = (("fast", "fast"), ("fast + percentile intensity", "fast_percentile"),
                  ("fast + foreground framing", "fast_foreground"),
                  ("fast + acquisition augmentation", "fast_acquisition"),
                  ("fast + elastic deformation", "fast_elastic"), ("robust", "robust"),
                  ("robust + elastic deformation", "robust_elastic"))
ABLATION_SPLITS = (("grouped", "grouped"), ("leave-source-out", "lso-figshare+sartaj"))
METRICS = (("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"), ("sensitivity", "sensitivity"),
           ("specificity", "specificity"), ("precision", "precision"), ("F1", "f1"), ("AUC", "auc"),
           ("Brier score", "brier"), ("ECE", "ece"))


def own_test(evaluation: dict) -> dict:
    """The scored dataset of an evaluation of a run's own test split."""
    return evaluation["datasets"]["test"]


def pair(first, second, digits: int = 3, sep: str = " / ") -> str:
    """Two numbers in one cell (sensitivity / specificity, before -> after), so a protocol stays one column."""
    return f"{number(first, digits)}{sep}{number(second, digits)}"


def protocols(results: Results) -> Table:
    """The same recipe's test metrics at 0.5 under each protocol: why the protocol decides what a number means."""
    rows = results.csv(STUDY)
    body = []
    for label, protocol in (("the paper's split (random files)", "paper"),
                            ("grouped split (duplicate groups kept whole)", "grouped"),
                            ("leave-source-out: figshare and sartaj held out", "leave-source-out:figshare+sartaj")):
        row = the_row(rows, protocol=protocol, model="vgg16", recipe="fast")
        body.append([label, row["n_test"], *(interval(row, metric) for metric in
                                             ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc"))])
    return Table(["protocol", "test images", "accuracy", "balanced accuracy", "sensitivity", "specificity", "AUC"],
                 body, [results.source(STUDY)], STUDY_COMMAND,
                 "ImageNet VGG16, fast recipe, seed 42, at the threshold 0.5 on the raw P(Tumor); 95% intervals "
                 "from 2,000 resamples of duplicate groups.")


def evaluations(results: Results) -> list[dict]:
    """The fast recipe's evaluations, in the order of `SPLITS`."""
    return [results.json(EVALUATION.format(split=split)) for _, split in SPLITS]


def evaluation_sources(results: Results) -> list[str]:
    """The files `evaluations` reads, for a table's provenance."""
    return [results.source(EVALUATION.format(split=split)) for _, split in SPLITS]


def metrics(results: Results) -> Table:
    """Every metric of `tumorclf evaluate` with its interval, one column per protocol."""
    tests = [own_test(e) for e in evaluations(results)]
    body = [["test images (duplicate groups)", *(f"{t['n']} ({t['groups']})" for t in tests)],
            ["healthy / tumour test images", *(f"{sum(t['confusion_matrix'][0])} / {sum(t['confusion_matrix'][1])}"
                                               for t in tests)],
            ["copies of a train or validation image", *(str(t["contaminated"]) for t in tests)]]
    body += [[label, *(interval(t, metric) for t in tests)] for label, metric in METRICS]
    return Table(["", *(label for label, _ in SPLITS)], body, evaluation_sources(results), EVALUATE_COMMAND,
                 EVALUATE_NOTE + " At the operating point fitted on validation; AUC on the raw scores; 95% intervals "
                 "over duplicate groups.")


def operating_points(results: Results) -> Table:
    """The operating point and the temperature fitted on validation, and what they give on test."""
    runs = evaluations(results)
    points = [e["operating_point"] for e in runs]
    tests = [own_test(e) for e in runs]
    target = " or ".join(sorted({number(p["target_sensitivity"], 2) for p in points}))

    def at(name: str) -> list[str]:
        return [pair(t["operating_points"][name]["sensitivity"]["value"],
                     t["operating_points"][name]["specificity"]["value"]) for t in tests]

    body = [["temperature T", *(number(p["temperature"], 2) for p in points)],
            [f"threshold for sensitivity >= {target} on validation", *(number(p["threshold"]) for p in points)],
            ["its validation sensitivity / specificity",
             *(pair(p["validation"]["sensitivity_at_threshold"], p["validation"]["specificity_at_threshold"])
               for p in points)],
            ["its test sensitivity / specificity", *at("target_sensitivity")],
            ["Youden threshold", *(number(p["youden_threshold"]) for p in points)],
            ["its test sensitivity / specificity", *at("youden")],
            ["threshold 0.5: test sensitivity / specificity", *at("default_0.5")],
            ["ECE on validation, raw -> calibrated",
             *(pair(p["validation"]["ece_before"], p["validation"]["ece_after"], sep=" -> ") for p in points)],
            ["ECE on test, raw -> calibrated",
             *(pair(t["ece_uncalibrated"]["value"], t["ece"]["value"], sep=" -> ") for t in tests)],
            ["Brier score on test, raw -> calibrated",
             *(pair(t["brier_uncalibrated"]["value"], t["brier"]["value"], sep=" -> ") for t in tests)]]
    return Table(["", *(label for label, _ in SPLITS)], body, evaluation_sources(results), EVALUATE_COMMAND,
                 EVALUATE_NOTE + " Thresholds are on the calibrated P(Tumor).")


def contamination(results: Results) -> Table:
    """The paper split's test set scored on all images and on those with no copy in train or validation."""
    source = f"{PAPER_SPLIT}/evaluation.json"
    test = own_test(results.json(source))
    clean = test["clean"]
    body = [[label, str(part["n"]), *(interval(part, metric) for metric in
                                      ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc"))]
            for label, part in (("all", test), ("clean: no copy in train or validation", clean))]
    with results.path(f"{PAPER_SPLIT}/contaminated.csv").open(newline="") as f:
        kinds = [row["kind"] for row in csv.DictReader(f)]
    return Table(["test images of the paper's split", "images", "accuracy", "balanced accuracy", "sensitivity",
                  "specificity", "AUC"], body,
                 [results.source(source), results.source(f"{PAPER_SPLIT}/contaminated.csv")],
                 EVALUATE_COMMAND.replace("SPLIT", "paper"),
                 f"ImageNet VGG16, fast recipe, seed 42, at its operating point. {test['contaminated']} of "
                 f"{test['n']} test images are copies: {kinds.count('exact')} byte-identical (`exact`), "
                 f"{kinds.count('near')} within the perceptual-hash distance (`near`).")


def leakage(results: Results) -> Table:
    """`tumorclf leakage` on the paper-split run: accuracy by what a test image has in training."""
    rows = [row for row in results.csv(LEAKAGE) if row["run"] == LEAKAGE_RUN]
    body = [[row["kind"], row["images"], row["correct"], number(row["accuracy"])] for row in rows]
    return Table(["test image", "images", "correct", "accuracy"], body, [results.source(LEAKAGE)],
                 f"tumorclf leakage --run experiments/runs/{LEAKAGE_RUN} --out DIR",
                 f"ImageNet VGG16, fast recipe, seed 42, at 0.5 on the raw P(Tumor); `DIR/leakage.csv` is kept as "
                 f"`{LEAKAGE}`.")


def transfer(results: Results) -> Table:
    """Each configuration of the robust study: the operating point's sensitivity and specificity on validation
    and on test, in source (grouped) and out of source (leave-source-out)."""
    body, targets = [], set()
    for split_label, split in ABLATION_SPLITS:
        for label, suffix in CONFIGURATIONS:
            evaluation = results.json(ABLATION_EVALUATION.format(split=split, suffix=suffix))
            point, test = evaluation["operating_point"], own_test(evaluation)
            targets.add(number(point["target_sensitivity"], 2))
            body.append([label, split_label, number(point["temperature"], 2), number(point["threshold"]),
                         number(point["validation"]["sensitivity_at_threshold"]), interval(test, "sensitivity"),
                         number(point["validation"]["specificity_at_threshold"]), interval(test, "specificity")])
    return Table(["configuration", "test split", "T", "threshold", "validation sensitivity", "test sensitivity",
                  "validation specificity", "test specificity"], body,
                 [f"experiments/results/{ABLATION_EVALUATION.format(split='*', suffix='*')}"], ABLATION_COMMAND,
                 f"ImageNet VGG16, seed 42, threshold for sensitivity >= {' or '.join(sorted(targets))} on "
                 "validation; 95% intervals over duplicate groups.")


TABLES = {"evaluation-protocols": protocols, "evaluation-metrics": metrics,
          "evaluation-operating-points": operating_points, "evaluation-contamination": contamination,
          "evaluation-leakage": leakage, "evaluation-transfer": transfer}
