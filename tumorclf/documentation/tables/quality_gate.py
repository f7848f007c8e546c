"""The tables of docs/quality-gate.md: what the input quality gate refused, and what it changed, on the probe images
and on the two robust runs' test sets, read from the committed predictions and evaluations."""

from __future__ import annotations

from collections import Counter

from tumorclf.documentation.tables.cells import Results, Table, interval, number
from tumorclf.errors import UserError

RUNS = "experiments/runs"
GROUPED_RUN = f"{RUNS}/vgg16_imagenet_grouped_224px_seed42_robust"
LSO_RUN = f"{RUNS}/vgg16_imagenet_lso-figshare+sartaj_224px_seed42_robust"
# (label, results folder, run): the evaluations of the two robust runs with their gates
EVALUATIONS = (("in-source (grouped split)", "gate/evaluate_grouped_robust", GROUPED_RUN),
               ("leave-source-out (sartaj + figshare held out)", "gate/evaluate_lso_robust", LSO_RUN))
PROBES = "/tmp/gate_probes"
# (file, run, extra flags): predictions on the probe images
PROBE_FILES = (("gate/probes_grouped_robust.csv", GROUPED_RUN, ""),
               ("gate/probes_lso_robust.csv", LSO_RUN, ""),
               ("gate/probes_grouped_robust_ungated.csv", GROUPED_RUN, " --no-gate"))
# the folders experiments/gate_probes.py writes, in its order, with what each holds
PROBE_KINDS = {"blank": "blank slices (pixel values 0-2)", "constant": "flat gray images",
               "noise": "uniform gray noise", "colour": "smooth colour images with texture",
               "tiny": "dataset slices shrunk to 64 px"}
METRICS = (("balanced_accuracy", "balanced accuracy"), ("sensitivity", "sensitivity"),
           ("specificity", "specificity"), ("auc", "AUC"), ("ece", "ECE (calibration error)"))


def _evaluate_command() -> str:
    return "; ".join(f"tumorclf gate --run {run}; tumorclf evaluate --run {run} --out experiments/results/{folder} "
                     "--bootstrap 2000" for _, folder, run in EVALUATIONS)


def _probe_command() -> str:
    predict = [f"tumorclf predict --model-file {run}/best.keras --inputs {PROBES}{flags} > experiments/results/{file}"
               for file, run, flags in PROBE_FILES]
    return "; ".join([f"python experiments/gate_probes.py --data ../shared/data/brain_tumor_dataset --out {PROBES}",
                      *predict])


def _kind(path: str) -> str:
    return path.rsplit("/", 2)[-2]  # .../PROBES/KIND/KIND_000.png


def _refused(rows: list[dict[str, str]]) -> str:
    """`98 of 98: blank`: how many of `rows` the gate refused, and for which reasons."""
    reasons = Counter(row["quality"] for row in rows if row["quality"] != "ok")
    refused = sum(reasons.values())
    return f"{refused} of {len(rows)}" + (": " + ", ".join(f"`{r}`" for r in reasons) if refused else "")


def probes(results: Results) -> Table:
    """Each kind of probe image: what the gated models said, and what the ungated model would have decided."""
    gated, lso, ungated = (results.csv(file) for file, _, _ in PROBE_FILES)
    body = []
    for kind, what in PROBE_KINDS.items():
        mine = [[row for row in rows if _kind(row["path"]) == kind] for rows in (gated, lso, ungated)]
        decided = Counter(row["predicted"] for row in mine[2])
        body.append([f"`{kind}/`: {what}", _refused(mine[0]), _refused(mine[1]),
                     f"{decided['Healthy']} Healthy, {decided['Tumor']} Tumor",
                     number(max(float(row["prob_tumor"]) for row in mine[2]))])
    return Table(["probe images", "refused: in-source model", "refused: leave-source-out model",
                  "without the gate: decided", "without the gate: highest P(Tumor)"],
                 body, [results.source(file) for file, _, _ in PROBE_FILES], _probe_command(),
                 "Both models are the robust recipe's ImageNet VGG16; P(Tumor) is calibrated.")


def _intervals(evaluations: list[dict]) -> str:
    """The sentence on the intervals, from the evaluations' own bootstrap settings (which must agree)."""
    settings = {(e["bootstrap"]["level"], e["bootstrap"]["resamples"], e["bootstrap"]["unit"]) for e in evaluations}
    if len(settings) != 1:
        raise UserError(f"the gate's evaluations were bootstrapped differently: {sorted(settings)}")
    level, resamples, unit = settings.pop()
    return f"{level:.0%} intervals from {resamples:,} resamples of {unit}."


def _gate(evaluation: dict, part: str) -> dict:
    return evaluation["gate"]["validation"] if part == "validation" else evaluation["datasets"]["test"]["gate"]


def refusals(results: Results) -> Table:
    """What the gate refused on each run's validation and test split, and balanced accuracy with and without it."""
    body, evaluations = [], [results.json(f"{folder}/evaluation.json") for _, folder, _ in EVALUATIONS]
    for (label, _, _), evaluation in zip(EVALUATIONS, evaluations):
        for part in ("validation", "test"):
            gate = _gate(evaluation, part)
            reasons = ", ".join(f"{n} `{reason}`" for reason, n in gate["rejected"].items() if n)
            refused = sum(gate["rejected"].values())
            images = gate["n"] if part == "validation" else gate["accepted"] + refused
            accuracy = ["", ""]
            if part == "test":
                test = evaluation["datasets"]["test"]
                accuracy = [interval(test, "balanced_accuracy"),
                            interval(gate["accepted_metrics"], "balanced_accuracy")]
            body.append([label, part, number(evaluation["gate"]["ood_threshold"], 1),
                         f"{refused:,} of {images:,}",
                         f"{gate['rejection_rate']:.1%}", reasons or "-", *accuracy])
    return Table(["run", "split", "OOD threshold", "refused", "share", "by reason", "balanced accuracy, all",
                  "balanced accuracy, accepted"],
                 body, [results.source(f"{folder}/evaluation.json") for _, folder, _ in EVALUATIONS],
                 _evaluate_command(),
                 "The OOD threshold is set on the validation split; the test split of the leave-source-out run is "
                 f"the two held-out sources. {_intervals(evaluations)}")


def refusals_by_class(results: Results) -> Table:
    """Refusals on each test set per true class: where the gate sees a shift."""
    body = []
    for label, folder, _ in EVALUATIONS:
        rows = results.csv(f"{folder}/predictions.csv")
        for cls in sorted({row["label"] for row in rows}):
            mine = [row for row in rows if row["label"] == cls]
            refused = sum(row["quality"] != "ok" for row in mine)
            body.append([label, cls, f"{len(mine):,}", f"{refused:,}", f"{refused / len(mine):.1%}"])
    return Table(["run", "true class", "test images", "refused", "share"], body,
                 [results.source(f"{folder}/predictions.csv") for _, folder, _ in EVALUATIONS], _evaluate_command())


def accepted(results: Results) -> Table:
    """The test metrics on every image and on the images the gate accepted, for both runs."""
    evaluations = [results.json(f"{folder}/evaluation.json") for _, folder, _ in EVALUATIONS]
    tests = [evaluation["datasets"]["test"] for evaluation in evaluations]
    body = [[name, *(cell for test in tests for cell in (interval(test, metric),
                                                         interval(test["gate"]["accepted_metrics"], metric)))]
            for metric, name in METRICS]
    header = ["metric", *(f"{label}: {which}" for label, _, _ in EVALUATIONS for which in ("all", "accepted"))]
    return Table(header, body, [results.source(f"{folder}/evaluation.json") for _, folder, _ in EVALUATIONS],
                 _evaluate_command(),
                 f"At each run's operating threshold. {_intervals(evaluations)}")


TABLES = {"quality-gate-probes": probes, "quality-gate-refusals": refusals,
          "quality-gate-refusals-by-class": refusals_by_class, "quality-gate-accepted": accepted}
