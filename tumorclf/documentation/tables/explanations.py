"""The tables of docs/explanations.md: where the models' Grad-CAM maps lie against the tumour boxes, read from
the localisation.json files of experiments/localisation.sh."""

from __future__ import annotations

from tumorclf.documentation.tables.cells import DATA, Results, Table, interval, number

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


TABLES = {"localisation": localisation, "localisation-by-collection": localisation_by_collection}
