"""The tables of docs/explanations.md: where the models' Grad-CAM maps lie against the tumour boxes, read from
the localisation.json files of experiments/localisation.sh, and box-guided training against the baseline across
seeds (experiments/box_guidance.yaml)."""

from __future__ import annotations

from tumorclf.documentation.tables.cells import DATA, Results, Table, interval, number, study_command, study_results
from tumorclf.studies import seeds

FOLDER = "localisation"
COMMAND = (f"tumorclf study --config experiments/localisation.yaml --data {DATA}; "
           "bash experiments/localisation.sh")
# (results subfolder, the model, the images scored): the scorings of experiments/localisation.sh, in its order
SCORINGS = (
    ("fast_test", "VGG16, fast recipe", "its test split (in-source)"),
    ("fast_meningioma", "VGG16, fast recipe", "external meningiomas"),
    ("lso_val", "VGG16, fast, leave-source-out", "its validation split (in-source)"),
    ("lso_heldout", "VGG16, fast, leave-source-out", "held-out figshare gliomas"),
    ("lso_meningioma", "VGG16, fast, leave-source-out", "external meningiomas"),
    ("simplecnn_test", "SimpleCNN, paper recipe", "its test split (in-source)"),
    ("robust_test", "VGG16, robust recipe", "its test split (in-source)"),
    ("robust_meningioma", "VGG16, robust recipe", "external meningiomas"),
)
SCORE_HEADER = ["pointing game", "energy in boxes", "boxes' area", "top-region IoU"]


def _scored(results: Results) -> list[tuple[str, str, str, dict]]:
    """(folder, model, images, summary) of each scoring whose localisation.json is committed."""
    return [(folder, model, images, results.json(f"{FOLDER}/{folder}/localisation.json"))
            for folder, model, images in SCORINGS
            if (results.folder / FOLDER / folder / "localisation.json").is_file()]


def _cells(scores: dict) -> list[str]:
    return [interval(scores, "pointing"), interval(scores, "energy_share"), number(scores["area_share"]["value"]),
            interval(scores, "top_iou")]


def _sources(results: Results, scored) -> list[str]:
    return [results.source(f"{FOLDER}/{folder}/localisation.json") for folder, *_ in scored]


def localisation(results: Results) -> Table:
    """Each model's maps of the tumour class against the boxes, per method, with the randomisation check."""
    scored = _scored(results)
    rows = []
    for _, model, images, summary in scored:
        for method, scores in summary["methods"].items():
            rows.append([model, images, method, f"{scores['n']} ({scores['groups']})", *_cells(scores),
                         number(scores["rank_correlation"]["value"], 2),
                         number(scores["randomised"]["pointing"]["value"]),
                         "yes" if scores["explains_model"] else "**no**"])
    missing = [folder for folder, *_ in SCORINGS if folder not in {f for f, *_ in scored}]
    note = (f"Not scored yet (their runs were not trained): {', '.join(missing)}." if missing else "")
    return Table(["model", "images", "method", "slices (groups)", *SCORE_HEADER,
                  "rank r, randomised top", "pointing, randomised top", "explains the model"],
                 rows, _sources(results, scored), COMMAND, note)


def localisation_by_collection(results: Results) -> Table:
    """The same scores per annotated collection (`box_source`): the figshare gliomas seen in training against
    the same collection held out."""
    scored = _scored(results)
    rows = []
    for _, model, images, summary in scored:
        for method, scores in summary["methods"].items():
            for source, part in scores.get("by_box_source", {}).items():
                if part.get("n"):
                    rows.append([model, images, method, source, f"{part['n']} ({part['groups']})", *_cells(part)])
    return Table(["model", "images", "method", "boxes from", "slices (groups)", *SCORE_HEADER],
                 rows, _sources(results, scored), COMMAND)


GUIDANCE = "box_guidance"
GUIDANCE_METRICS = ("accuracy", "balanced_accuracy", "auc")
GUIDANCE_SEEDS = 3  # what experiments/box_guidance.yaml trains of each configuration
GUIDANCE_MEASURES = {"attention": "attention prior", "lesionzoom": "lesion zoom"}  # run name part: table name
GUIDANCE_BASELINE = "baseline (fast recipe)"


def _guidance_name(configuration: str) -> str:
    """"attention prior 0.5", "lesion zoom 0.5" (both, joined by " + "), or the baseline's name."""
    measures = []
    for part in configuration.split("_"):
        for key, name in GUIDANCE_MEASURES.items():
            if part.startswith(key):
                measures.append(f"{name} {part[len(key):]}")
    return " + ".join(measures) or GUIDANCE_BASELINE


def box_guidance(results: Results) -> Table:
    """Leave-source-out test metrics of the fast recipe with and without each box-guided measure: each run with its
    interval, then each configuration's mean and spread over seeds, and whether a measure's difference exceeds
    the seed-to-seed spread."""
    rows = results.csv(study_results(GUIDANCE))
    entries = seeds.across_seeds(rows, GUIDANCE_METRICS)
    table = []
    for entry in entries:
        name = _guidance_name(entry["configuration"])
        for run, *values in zip(entry["runs"], *(entry[f"{m}_runs"] for m in GUIDANCE_METRICS)):
            seed = run.rpartition("_seed")[2].split("_")[0]
            table.append([name, f"seed {seed}", *(interval({"v": v, "v_lo": lo, "v_hi": hi}, "v")
                                                   for v, lo, hi in values)])
        table.append([f"**{name}**", "**across seeds**", *(seeds.format_summary(entry[m]) for m in GUIDANCE_METRICS)])
    baseline = next((e for e in entries if _guidance_name(e["configuration"]) == GUIDANCE_BASELINE), None)
    verdicts = []
    for entry in entries:
        if baseline is None or entry is baseline:
            continue
        said = []
        for metric in GUIDANCE_METRICS:
            c = seeds.compare(baseline, entry, metric)
            if c["difference"] is None:
                continue
            if min(c["seeds"]) < 2:
                verdict = "no seed spread to compare with yet"
            else:
                verdict = f"{'beyond' if c['exceeds_seed_spread'] else 'within'} the seed spread"
            said.append(f"{metric.replace('_', ' ')} {c['difference']:+.3f} ({verdict})")
        verdicts.append(f"{_guidance_name(entry['configuration'])} minus the baseline: {', '.join(said)}.")
    finished = {e["configuration"]: e[GUIDANCE_METRICS[0]]["n"] for e in entries}
    planned = dict.fromkeys(seeds.configuration(row["run_name"]) for row in rows)  # the study's order
    short = [f"{_guidance_name(name)} has {finished.get(name, 0)}" for name in planned
             if finished.get(name, 0) < GUIDANCE_SEEDS]
    note = " ".join(verdicts + ([f"Seeds still to train: {'; '.join(short)} of {GUIDANCE_SEEDS}."] if short else []))
    return Table(["configuration", "run", "held out: accuracy", "held out: balanced accuracy", "held out: AUC"],
                 table, [results.source(study_results(GUIDANCE))], study_command(GUIDANCE), note)


TABLES = {"localisation": localisation, "localisation-by-collection": localisation_by_collection,
          "box-guidance": box_guidance}
