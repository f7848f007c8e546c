"""docs/paper.md: the study of Liaqat et al. as run on a 2-core CPU (experiments/cpu_budget.yaml), the paper's own
numbers beside ours, the first epoch of transfer learning, and how much of the paper split's score is leakage."""

from __future__ import annotations

from tumorclf.documentation.tables.cells import (
    Results,
    Table,
    interval,
    number,
    study_command,
    study_results,
    the_row,
)

STUDY = study_results("cpu_budget")
STUDY_TABLES = "cpu_budget/tables.md"  # the study's own tables: they hold the paper's published numbers
STUDY_COMMAND = study_command("cpu_budget")
MODELS = {"simplecnn": "SimpleCNN", "vgg16": "VGG16", "densenet121": "DenseNet121", "resnet50": "ResNet50",
          "resnet101": "ResNet101", "resnet152": "ResNet152"}
METRICS = ("accuracy", "precision", "recall", "f1", "auc")
NO_INTERVAL = "† no interval: the run folder, which the bootstrap needs, was not kept."


def configuration(row: dict[str, str]) -> str:
    """`VGG16 ImageNet, 224 px, fast recipe, ≤12 epochs`: what a study row trained, from its own columns."""
    weights = "ImageNet" if row["imagenet"] == "True" else "scratch"
    budget = f"≤{row['epochs']} epochs" + (f" or ~{number(row['max_minutes'], 0)} min" if row["max_minutes"] else "")
    return f"{MODELS[row['model']]} {weights}, {row['image_size']} px, {row['recipe']} recipe, {budget}"


def protocol(name: str) -> str:
    """The protocol column in words (`leave-source-out:figshare+sartaj` names the held-out sources)."""
    kind, _, held_out = name.partition(":")
    return f"{kind} ({held_out.replace('+', ', ')} held out)" if held_out else kind


def cell(row: dict[str, str], metric: str) -> str:
    """A metric with its interval, or marked † when the row has none."""
    return interval(row, metric) + ("" if row[f"{metric}_lo"] else "†")


def study(results: Results) -> Table:
    """Every finished row of the CPU study, so a reader sees what each configuration reached on this budget."""
    rows = results.csv(STUDY)
    finished = [row for row in rows if row["status"].startswith("finished")]
    body = [[configuration(row), protocol(row["protocol"]), f"{row['epochs_run']} ({row['best_epoch']})",
             *(cell(row, metric) for metric in METRICS), number(row["train_minutes"], 1)] for row in finished]
    missing = dict.fromkeys(MODELS[row["model"]] for row in rows if row["status"].startswith("unavailable"))
    pending = [f"{configuration(row)} on the {row['protocol']} split" for row in rows if row["status"] == "pending"]
    note = (f"Unavailable here (its `status` says why): ImageNet {', '.join(missing)}; pending: "
            f"{'; '.join(pending) or 'none'}. {NO_INTERVAL}")
    return Table(["configuration", "split", "epochs run (best)", "accuracy", "precision", "recall (sensitivity)",
                  "F1", "AUC", "training minutes"], body, [results.source(STUDY)], STUDY_COMMAND, note)


def published(results: Results) -> dict[str, dict[str, str]]:
    """The paper's accuracy and F1 per model, read from the study's tables.md (`paper acc`, `paper F1`)."""
    found: dict[str, dict[str, str]] = {}
    header: list[str] | None = None
    for line in results.path(STUDY_TABLES).read_text().splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [text.strip() for text in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif "paper acc" in header and not set(line.strip()) <= set("|-"):
            row = dict(zip(header, cells))
            if row["paper acc"] != "-":
                found.setdefault(row["model"].split()[0], row)
    return found


def against_paper(results: Results) -> Table:
    """The two architectures the paper reports numbers for, beside our runs of them on both splits."""
    paper, rows = published(results), results.csv(STUDY)
    body = []
    for model, imagenet, recipe in (("simplecnn", "False", "paper"), ("vgg16", "True", "fast")):
        ours = {split: the_row(rows, model=model, imagenet=imagenet, recipe=recipe, protocol=split)
                for split in ("paper", "grouped")}
        body.append([configuration(ours["paper"]), paper[model]["paper acc"], paper[model]["paper F1"],
                     *(cell(ours[split], metric) for split in ("paper", "grouped") for metric in ("accuracy", "f1"))])
    return Table(["configuration here", "paper: accuracy", "paper: F1", "here, paper split: accuracy",
                  "here, paper split: F1", "here, grouped split: accuracy", "here, grouped split: F1"], body,
                 [results.source(STUDY_TABLES), results.source(STUDY)], STUDY_COMMAND,
                 "The paper trained 50 epochs on a GPU and reports no interval.")


FIRST_EPOCH = (("VGG16 ImageNet, 224 px, paper recipe (SGD, full fine-tuning)", "paper",
                "history_vgg16_imagenet_paper_224px_paper_recipe_25min.csv"),
               ("VGG16 ImageNet, 224 px, fast recipe (Adam, block5 and head)", "paper",
                "history_vgg16_imagenet_paper_224px_fast_decoder2.csv"),
               ("VGG16 ImageNet, 224 px, fast recipe (Adam, block5 and head)", "grouped",
                "history_vgg16_imagenet_grouped_224px_fast_decoder2.csv"))
FIRST_EPOCH_COMMAND = (f"{STUDY_COMMAND}; tumorclf train --preset paper --model vgg16 --imagenet --weights-dir "
                       "../shared/weights --split paper --epochs 50 --max-minutes 25 --track-test --data "
                       "../shared/data/brain_tumor_dataset (each run's history.csv, copied)")


def first_epoch(results: Results) -> Table:
    """Epoch 1 of pretrained VGG16 from the runs' histories: what ImageNet weights give before any real training."""
    body = []
    for label, split, history in FIRST_EPOCH:
        row = the_row(results.csv(history), epoch="0")
        body.append([label, split, *(number(row[column]) for column in ("val_f1", "val_precision", "val_recall",
                                                                         "val_accuracy", "test_accuracy")),
                     number(row["elapsed_minutes"], 1)])
    return Table(["run", "split", "val F1", "val precision", "val recall", "val accuracy", "test accuracy",
                  "minutes at its end"], body, [results.source(history) for _, _, history in FIRST_EPOCH],
                 FIRST_EPOCH_COMMAND,
                 "After the first epoch; the fast recipe's minutes include caching the frozen features, and test "
                 "accuracy is logged (`--track-test`) but never chooses the epoch.")


LEAKAGE = (("leakage_paper_split_decoder2.csv", "vgg16_imagenet_paper_224px_seed42_fast",
            "VGG16 ImageNet, 224 px, fast recipe, 12 epochs"),
           ("leakage_paper_split.csv", "vgg16_imagenet_paper_224px_seed42",
            "VGG16 ImageNet, 224 px, paper recipe, 2 epochs (25-minute limit)"),
           ("leakage_paper_split.csv", "vgg16_imagenet_paper_128px_seed42",
            "VGG16 ImageNet, 128 px, paper recipe, 6 epochs"),
           ("leakage_paper_split.csv", "simplecnn_scratch_paper_224px_seed42",
            "SimpleCNN, 224 px, paper recipe, 10 epochs (not the study's row)"))
LEAKAGE_COMMAND = ("tumorclf leakage --run experiments/runs/vgg16_imagenet_paper_224px_seed42_fast "
                   "runs/vgg16_imagenet_paper_224px_seed42 experiments/runs/vgg16_imagenet_paper_128px_seed42 "
                   "runs/simplecnn_scratch_paper_224px_seed42 --out DIR (DIR/leakage.csv, renamed)")


def leakage(results: Results) -> Table:
    """Accuracy on leaked and on clean test images of the paper split: how much of its score is memorisation."""
    body = []
    for file, run, label in LEAKAGE:
        rows = results.csv(file)
        kinds = {kind: the_row(rows, run=run, kind=kind) for kind in
                 ("byte-identical in train", "near-duplicate in train", "leaked", "clean")}
        body.append([label, kinds["byte-identical in train"]["images"], kinds["near-duplicate in train"]["images"],
                     f"{kinds['leaked']['correct']} / {kinds['leaked']['images']}",
                     number(kinds["leaked"]["accuracy"]),
                     f"{kinds['clean']['correct']} / {kinds['clean']['images']}", number(kinds["clean"]["accuracy"])])
    return Table(["run on the paper split", "test images with a byte copy in training", "with a near-duplicate",
                  "leaked: correct", "leaked: accuracy", "clean: correct", "clean: accuracy"], body,
                 [results.source(file) for file in dict.fromkeys(file for file, _, _ in LEAKAGE)], LEAKAGE_COMMAND,
                 "A test image is leaked when training holds a byte-identical copy of it or a near-duplicate "
                 "(perceptual hash within 4 bits); clean otherwise.")


TABLES = {"paper-study": study, "paper-against-paper": against_paper, "paper-first-epoch": first_epoch,
          "paper-leakage": leakage}
