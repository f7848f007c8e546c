"""Score a finished run on its own test split, or on other folders of class folders, with the run's
validation-fitted operating point, a contamination check, and group-bootstrap intervals (`evaluate`; the
command is `tumorclf evaluate`).

Without ``data_dirs`` the run's own test split is scored again (the files `split.csv` assigns to test, under
the run's data folder, with the decoder training used). With ``data_dirs``, each folder holds two class
folders named as for training (or ``classes``), or only one of them (a collection of tumour slices alone);
each is reported on its own and, with several, all of them pooled (duplicate groups formed across the
folders). A dataset of one class gets the metrics that class allows (sensitivity or specificity, accuracy,
Brier score, at every operating point); the others are None and its ``not_reportable`` says why.

- **Operating point** (`tumorclf.metrics.calibration`): a temperature and thresholds fitted on the run's
  validation predictions only (``val_predictions.csv``), then applied unchanged here. A run trained
  before operating points existed gets its validation split predicted and its operating point saved in
  the run folder (once). A ``target_sensitivity`` other than the run's refits for this evaluation only.
  Each dataset reports sensitivity and specificity at every point (``operating_points``: target_sensitivity,
  high_sensitivity, youden, default_0.5, and each point `tumorclf calibrate` fitted on a site's folder, by its
  name; not for an ensemble or test-time views); an operating_point.json from before ``high_sensitivity`` gets it
  fitted from val_predictions.csv for the report, the file left unchanged (without that file it is absent).
- **Contamination check**: every scored image is matched against the images the run trained and
  validated on, by SHA-256 and by perceptual hash within the run's near-duplicate distance. Metrics are
  reported on all images and on the clean ones; ``contaminated.csv`` lists the matches.
- **Intervals**: every metric has a 95% bootstrap interval that resamples duplicate groups
  (`tumorclf.metrics.bootstrap`): for the own test split the groups of ``split.csv``, for other folders the
  groups the run's near-duplicate rule forms among their images.
- **Quality gate** (`tumorclf.gate.quality_gate`; runs with ``gate.json``, with ``use_gate``): each image also gets
  a quality (``ok`` or why the model cannot assess it) in the same pass. Metrics stay those of all images;
  each dataset adds the rejections by reason and the metrics of the accepted images alone.

A `Scoring` (`tumorclf.evaluation.combined`: an ensemble of runs, test-time augmentation) replaces the run's
probabilities and operating point; the rest (contamination check, groups, gate, report) stays the run's.

`write_outputs` writes, atomically, `OUTPUT_FILES` into a folder: ``predictions.csv``, ``skipped.csv``,
``contaminated.csv``, ``reliability.png``, ``roc.png`` and, last, ``evaluation.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tumorclf.data import dataset as data  # noqa: E402
from tumorclf.utils.files import (atomic_write_bytes, atomic_write_json, atomic_write_text, csv_text,  # noqa: E402
                                figure_png, json_safe)
from tumorclf.metrics import DEFAULT_RESAMPLES  # noqa: E402
from tumorclf.metrics.bootstrap import bootstrap_intervals, format_interval, not_reportable  # noqa: E402
from tumorclf.metrics.calibration import OperatingPoint, fit_operating_point, reliability  # noqa: E402
from tumorclf.data.decoder import DECODER_VERSION  # noqa: E402
from tumorclf.errors import UsageError  # noqa: E402
from tumorclf.metrics.classification import confusion_matrix, decide, roc_curve  # noqa: E402
from tumorclf.gate.quality_gate import OK, REASONS, Gate, gated_model, reasons, with_size  # noqa: E402
from tumorclf.transforms.pipeline import make_dataset, predict_images  # noqa: E402
from tumorclf.utils.progress import keras_progress  # noqa: E402
from tumorclf.runs.folder import DEFAULT_THRESHOLD, RunDir, RunError  # noqa: E402
from tumorclf.runs.own_split import own_split  # noqa: E402
from tumorclf.runs.points import calibrated, saved_point  # noqa: E402
from tumorclf.evaluation.scoring import Scoring  # noqa: E402
from tumorclf.data.splits import group_duplicates, perceptual_hash  # noqa: E402

log = logging.getLogger(__name__)

TEST_SPLIT = "test"  # the dataset name of the run's own test split
POOLED = "pooled"  # the dataset name of all datasets together
OUTPUT_FILES = ("evaluation.json", "predictions.csv", "skipped.csv", "contaminated.csv", "reliability.png",
                "roc.png")
EVALUATION_FILE, PREDICTIONS_FILE, SKIPPED_FILE, CONTAMINATED_FILE, RELIABILITY_PNG, ROC_PNG = OUTPUT_FILES
PREDICTION_COLUMNS = ["dataset", "path", "label", "prob_tumor_raw", "prob_tumor", "predicted", "group",
                      "contaminated", "quality", "ood_score"]  # the last two empty without a gate
NOT_REPORTABLE_CELL = "n/a"  # a table cell of a metric the dataset's one class cannot give
TABLE_METRICS = [("balanced_accuracy", "balanced acc"), ("sensitivity", "sensitivity"),
                 ("specificity", "specificity"), ("auc", "AUC"), ("ece", "ECE")]


@dataclass
class Contamination:
    """Per file: "exact" (same SHA-256 as a train/val file), "near" (perceptual hash within the run's
    near-duplicate distance) or "" (clean), the train/val file matched, and the hash distance (-1: none)."""

    kind: list[str]
    match: list[str]
    distance: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return np.array([bool(kind) for kind in self.kind], dtype=bool)


@dataclass
class Scored:
    """One dataset and the run's raw predictions on it: file i is `dataset.paths[i]` with `probs[i]`."""

    name: str
    dataset: data.Dataset  # decoded images, labels, SHA-256 and the skipped files
    probs: np.ndarray  # (n, 2) softmax outputs: P(Healthy), P(Tumor)
    groups: np.ndarray  # duplicate group of each file (bootstrap unit)
    contamination: Contamination
    quality: np.ndarray | None = None  # the gate's code of each file (index into gate.REASONS); None: not gated
    ood_score: np.ndarray | None = None  # the gate's out-of-distribution score of each file

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.labels

    @property
    def prob_tumor(self) -> np.ndarray:
        return self.probs[:, 1]


@dataclass
class Reference:
    """What the run trained and validated on: SHA-256 to path, and (when its data folder is still there) the
    perceptual hashes of its images."""

    sha_to_path: dict[str, str]
    paths: list[str]
    hashes: np.ndarray | None


def external(folder: Path, image_size: int, classes: tuple[str, str] | None, cache_dir) -> data.Dataset:
    """A folder of two class folders, or of one (training's naming rules), decoded as in training: a collection
    of one tumour type alone can still say how many of its tumours the model finds."""
    return data.load_dataset(folder, image_size, classes, cache_dir, one_class=True)


def dataset_names(folders: list[Path]) -> list[str]:
    """A distinct name for each folder: its own name, with -2, -3... on repeats (and never "pooled")."""
    names: list[str] = []
    for folder in folders:
        base = folder.resolve().name or "data"
        name, k = base, 1
        while name in names or name == POOLED:
            k += 1
            name = f"{base}-{k}"
        names.append(name)
    return names


def reference_set(run: RunDir) -> Reference:
    """The run's train and validation images, for the contamination check. Without the run's data folder
    only byte-identical copies can be found (logged)."""
    rows = [row for row in run.split_rows() if row["split"] in ("train", "val")]
    sha_to_path = {row["sha256"]: row["path"] for row in rows if row.get("sha256")}
    if not run.data_root().is_dir():
        log.warning("the data folder of %s is gone (%s): the contamination check finds exact copies only",
                    run.name, run.data_root())
        return Reference(sha_to_path, [], None)
    seen = own_split(run, ("train", "val"), changed_means="the contamination check compares with them as they are now")
    hashes = perceptual_hash(seen.unique_images)[seen.image_index]
    return Reference(sha_to_path, seen.paths, hashes)


def check_contamination(dataset: data.Dataset, reference: Reference, max_bits: int) -> Contamination:
    """Match each file of `dataset` against the run's train/val images (see `Contamination`)."""
    n = len(dataset.paths)
    kind, match, distance = [""] * n, [""] * n, np.full(n, -1, dtype=np.int64)
    for i, sha in enumerate(dataset.sha256):
        if sha in reference.sha_to_path:
            kind[i], match[i], distance[i] = "exact", reference.sha_to_path[sha], 0
    if reference.hashes is not None and len(reference.hashes) and max_bits >= 0 and n:
        own = perceptual_hash(dataset.unique_images)
        nearest = np.empty(len(own), dtype=np.int64)
        closest = np.empty(len(own), dtype=np.int64)
        for start in range(0, len(own), 512):
            bits = np.bitwise_count(own[start:start + 512, None] ^ reference.hashes[None, :])
            closest[start:start + 512] = np.argmin(bits, axis=1)
            nearest[start:start + 512] = bits[np.arange(len(bits)), closest[start:start + 512]]
        for i, row in enumerate(dataset.image_index):
            if not kind[i] and nearest[row] <= max_bits:
                kind[i], match[i], distance[i] = "near", reference.paths[closest[row]], nearest[row]
    return Contamination(kind, match, distance)


def pooled_groups(scored: list[Scored], max_bits: int) -> np.ndarray:
    """Duplicate groups over the files of several datasets at once (byte copies and near copies across
    folders share a group), in the order of their files."""
    images = np.concatenate([item.dataset.unique_images for item in scored])
    offsets = np.cumsum([0] + [len(item.dataset.unique_images) for item in scored])
    index = np.concatenate([item.dataset.image_index + offset for item, offset in zip(scored, offsets)])
    return group_duplicates(index, images, max_bits)[0]


def test_groups(run: RunDir, dataset: data.Dataset) -> np.ndarray:
    """The duplicate groups split.csv records for the run's test files."""
    group_of = {row["path"]: row.get("group") for row in run.split_rows()}
    try:
        return np.array([int(group_of[path]) for path in dataset.paths], dtype=np.int64)
    except (TypeError, ValueError, KeyError):
        raise RunError(f"{run.split_file} has no valid group column for its test files") from None


def validation_predictions(run: RunDir, model, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and raw P(Tumor) of the run's validation split: val_predictions.csv, or (runs from before it
    was written) predicted now and saved in the run folder."""
    if not run.val_predictions_file.is_file():
        log.info("%s has no val_predictions.csv (trained before operating points): predicting its validation "
                 "split once and saving it", run.name)
        val = own_split(run, ("val",), needed_for="it holds the validation split, needed once to fit the operating "
                        "point of a run trained before operating points", changed_means="the operating point is "
                        "fitted on them as they are now")
        probs = predict_images(model, val.images(), val.labels, batch_size, "predicting the validation split")
        run.write_val_predictions(val.paths, val.labels, probs[:, 1])
    return run.validation_scores()


def operating_point(run: RunDir, model, batch_size: int, target: float | None) -> tuple[OperatingPoint, bool]:
    """The run's operating point, fitted on validation, and whether it is the one saved in the run folder.

    A run without one gets it fitted and saved (at its config's target sensitivity); a different `target` is
    fitted for this evaluation only and leaves the saved one unchanged."""
    saved = saved_point(run)  # one saved before the high-sensitivity point gets it for this evaluation
    if saved is None:  # saved at the config's target: `target` must not change the run's operating point
        labels, prob = validation_predictions(run, model, batch_size)
        saved = fit_operating_point(labels, prob, run.config().target_sensitivity)
        run.write_operating_point(saved)
        log.info("saved the operating point fitted on validation in %s", run.operating_point_file)
    if target is None or target == saved.target_sensitivity:
        return saved, True
    labels, prob = validation_predictions(run, model, batch_size)
    return fit_operating_point(labels, prob, target), False


def score(model, gate: Gate | None, dataset: data.Dataset, batch_size: int,
          desc: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The (n, 2) softmax outputs on `dataset` and, with a gate (`model` is then `gated_model`'s), each file's
    quality code (too_small from its header) and OOD score, from one pass."""
    if gate is None:
        return predict_images(model, dataset.images(), dataset.labels, batch_size, desc), None, None
    out = model.predict(make_dataset(dataset.images(), dataset.labels, batch_size), verbose=0,
                        callbacks=[keras_progress(-(-len(dataset) // batch_size), desc)])
    sizes, _ = data.header_facts(dataset.root, dataset.paths)
    codes = with_size(out["quality_code"], np.array([min(size) for size in sizes]), gate.min_side)
    return np.asarray(out["probabilities"]), codes, np.asarray(out["ood_score"], dtype=np.float64)


def subset_metrics(labels: np.ndarray, raw: np.ndarray, groups: np.ndarray, point: OperatingPoint,
                   threshold: float, n_bootstrap: int, seed: int) -> dict:
    """The bootstrap METRICS of some of a dataset's files, as `dataset_report` computes them: on calibrated
    P(Tumor) at `threshold`, the AUC on the raw scores; and those its files' one class cannot give."""
    return {**bootstrap_intervals(labels, point.calibrate(raw), groups, threshold, n_bootstrap, seed),
            "auc": bootstrap_intervals(labels, raw, groups, threshold, n_bootstrap, seed)["auc"],
            "not_reportable": not_reportable(labels)}


def gate_report(labels: np.ndarray, raw: np.ndarray, groups: np.ndarray, codes: np.ndarray, point: OperatingPoint,
                threshold: float, n_bootstrap: int, seed: int) -> dict:
    """What the gate did on one dataset: rejections per reason, and the metrics of the images it accepted."""
    accepted = codes == OK
    return {"rejected": {reason: int(np.sum(codes == code)) for code, reason in enumerate(REASONS) if code != OK},
            "rejected_total": int((~accepted).sum()), "rejection_rate": float(np.mean(~accepted)),
            "accepted": int(accepted.sum()),
            "accepted_metrics": subset_metrics(labels[accepted], raw[accepted], groups[accepted], point, threshold,
                                               n_bootstrap, seed)}


def dataset_report(labels: np.ndarray, raw: np.ndarray, groups: np.ndarray, point: OperatingPoint,
                   threshold: float, n_bootstrap: int, seed: int, site_points: dict[str, float] | None = None) -> dict:
    """Every metric with its group-bootstrap interval, on calibrated P(Tumor) decided at `threshold`, plus
    the uncalibrated ECE and Brier score and sensitivity/specificity at each operating point: `point`'s and
    `site_points` (name -> threshold on the same calibrated scale, those `tumorclf calibrate` stored). Images of
    one class leave some of them None; `not_reportable` names those, with why (empty with both classes)."""
    calibrated = point.calibrate(raw)

    def intervals(prob: np.ndarray, at: float) -> dict:
        return bootstrap_intervals(labels, prob, groups, at, n_bootstrap, seed)

    main = intervals(calibrated, threshold)
    uncalibrated = intervals(raw, DEFAULT_THRESHOLD)
    main["auc"] = uncalibrated["auc"]  # same resamples; raw order, as a small temperature saturates ties into 0/1
    missing = not_reportable(labels)
    if "ece" in missing:
        missing["ece_uncalibrated"] = missing["ece"]
    report = {"n": int(len(labels)), "groups": int(len(np.unique(groups))), "threshold": threshold, **main,
              "ece_uncalibrated": uncalibrated["ece"], "brier_uncalibrated": uncalibrated["brier"],
              "confusion_matrix": confusion_matrix(labels, decide(calibrated, threshold)).tolist(),
              "not_reportable": missing}
    points = {"target_sensitivity": point.threshold, "high_sensitivity": point.high_sensitivity_threshold,
              "youden": point.youden_threshold, "default_0.5": DEFAULT_THRESHOLD, **(site_points or {})}
    report["operating_points"] = {}
    for name, at in points.items():
        if at is None:  # a point saved before high_sensitivity existed, given here as it is
            continue
        metrics = main if at == threshold else intervals(calibrated, at)
        report["operating_points"][name] = {"threshold": at, "sensitivity": metrics["sensitivity"],
                                            "specificity": metrics["specificity"]}
    return report


def evaluate(run: RunDir, data_dirs: list[Path] | None = None, threshold: float | None = None,
             batch_size: int | None = None, classes: tuple[str, str] | None = None,
             target_sensitivity: float | None = None, n_bootstrap: int = DEFAULT_RESAMPLES,
             seed: int = 0, use_gate: bool = True,
             scoring: Scoring | None = None) -> tuple[dict, list[Scored], OperatingPoint]:
    """Score `run` on its test split (no `data_dirs`) or on each folder of `data_dirs`, through the run's
    quality gate when it has one and `use_gate`; returns the report (the content of evaluation.json), the
    scored datasets and the operating point applied. A `scoring` gives the probabilities and operating point
    instead of the run's model alone."""
    run.require_finished()
    record = run.record()
    cfg = record.config
    batch_size = batch_size or cfg.batch_size
    if record.decoder != DECODER_VERSION:
        log.warning("%s was trained with decoder version %s, this tumorclf decodes with version %s: "
                    "results may differ from its metrics.json", run.name, record.decoder, DECODER_VERSION)
    if data_dirs:
        repeated = sorted({str(f) for f in data_dirs if [g.resolve() for g in data_dirs].count(f.resolve()) > 1})
        if repeated:
            raise UsageError(f"evaluate: --data names the same folder more than once ({', '.join(repeated)})")
        datasets = dict(zip(dataset_names(data_dirs),
                            (external(folder, cfg.image_size, classes, cfg.cache_dir) for folder in data_dirs)))
    else:
        datasets = {TEST_SPLIT: own_split(run, ("test",))}
    gate = Gate.load(run.path) if use_gate else None
    if use_gate and gate is None:
        log.info("%s has no quality gate: every image is scored (`tumorclf gate --run %s` fits one)", run.name,
                 run.path)
    model = run.load_model()
    if gate is not None:
        gate.check(model, run.path)
    point, saved = (scoring.operating_point(model, batch_size, target_sensitivity) if scoring
                    else operating_point(run, model, batch_size, target_sensitivity))
    site = {} if scoring else {  # points fitted on a site's own folder, on the temperature just read
        name: calibrated(run, name, entry, point.temperature).threshold
        for name, entry in run.calibrated_points()["points"].items()}
    threshold = point.threshold if threshold is None else threshold
    reference = reference_set(run)
    scorer = gated_model(model, gate) if gate else model
    scored = []
    for name, dataset in datasets.items():
        probs, quality, ood = (scoring.score if scoring else score)(scorer, gate, dataset, batch_size,
                                                                    f"predicting {name}")
        groups = (test_groups(run, dataset) if not data_dirs
                  else group_duplicates(dataset.image_index, dataset.unique_images, cfg.near_duplicate_bits)[0])
        scored.append(Scored(name, dataset, probs, groups,
                             check_contamination(dataset, reference, cfg.near_duplicate_bits), quality, ood))
    report = {"run": str(run.path), "model_sha256": data.file_sha256(run.best_model), "decoder": DECODER_VERSION,
              "threshold": threshold,
              "temperature": point.temperature,
              "operating_point": {**point.to_dict(), "saved_in_run": saved},
              "bootstrap": {"resamples": n_bootstrap, "unit": "duplicate groups", "level": 0.95, "seed": seed,
                            "interval": "percentile"},
              "contamination_check": {"sha256": True, "perceptual_hash_bits": cfg.near_duplicate_bits,
                                      "near_copies": reference.hashes is not None},
              **({"gate": gate.summary()} if gate else {}), **(scoring.summary() if scoring else {}),
              "datasets": {}}
    checked = "sha256 and perceptual hash" if reference.hashes is not None else "sha256 only (data folder gone)"
    parts = [(item.name, str(item.dataset.root), len(item.dataset.skipped), item.labels, item.prob_tumor,
              item.groups, item.contamination.mask, item.quality) for item in scored]
    if len(scored) > 1:  # pooled, with groups formed over all folders together: copies across them count once
        parts.append((POOLED, None, sum(p[2] for p in parts), np.concatenate([p[3] for p in parts]),
                      np.concatenate([p[4] for p in parts]), pooled_groups(scored, cfg.near_duplicate_bits),
                      np.concatenate([p[6] for p in parts]), np.concatenate([p[7] for p in parts]) if gate else None))
    for name, folder, skipped, labels, raw, groups, dirty, codes in parts:
        entry = {"folder": folder, "skipped": skipped, "contaminated": int(dirty.sum()), "contamination_check": checked,
                 **dataset_report(labels, raw, groups, point, threshold, n_bootstrap, seed, site)}
        clean = ~dirty
        entry["clean"] = ({"n": entry["n"], "same_as_all": True} if not dirty.any() else
                          {"n": int(clean.sum()), "same_as_all": False,
                           **({} if not clean.any() else
                              subset_metrics(labels[clean], raw[clean], groups[clean], point, threshold, n_bootstrap,
                                             seed))})
        if codes is not None:
            entry["gate"] = gate_report(labels, raw, groups, codes, point, threshold, n_bootstrap, seed)
        report["datasets"][name] = entry
    return report, scored, point


def reliability_png(scored: list[Scored], point: OperatingPoint) -> bytes:
    """Reliability diagram of each dataset: observed tumor rate against mean P(Tumor) per bin, before and
    after the temperature."""
    fig, axes = plt.subplots(1, len(scored), figsize=(4.5 * len(scored), 4.5), squeeze=False)
    for ax, item in zip(axes[0], scored):
        ax.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="perfect")
        for prob, label in ((item.prob_tumor, "raw"), (point.calibrate(item.prob_tumor), f"T = {point.temperature:.2f}")):
            mean_p, rate, counts = reliability(item.labels, prob)
            filled = counts > 0
            ax.plot(mean_p[filled], rate[filled], "o-", label=label)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted P(Tumor)", ylabel="observed tumor rate",
               title=f"Reliability: {item.name} (n={len(item.labels)})")
        ax.legend(loc="upper left")
    return figure_png(fig)


def roc_png(scored: list[Scored], point: OperatingPoint, threshold: float) -> bytes:
    """ROC curve of each dataset with the operating points (chosen on validation) marked. A dataset of one
    class has no ROC curve (one of its axes has no images) and is left out, with a note in the log."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    for item in scored:
        if not_reportable(item.labels):
            log.info("roc.png: %s holds only %s slices, so it has no ROC curve; left out", item.name,
                     data.CLASS_NAMES[int(item.labels[0])])
            continue
        calibrated = point.calibrate(item.prob_tumor)
        fpr, tpr, _ = roc_curve(item.labels, item.prob_tumor)  # the raw order: the reported AUC's curve
        line, = ax.plot(fpr, tpr, label=item.name)
        marks = [(threshold, "o", "threshold"), (point.youden_threshold, "s", "Youden")]
        if point.high_sensitivity_threshold is not None:
            marks.append((point.high_sensitivity_threshold, "^", "high sensitivity"))
        for at, marker, what in marks:
            (tn, fp), (fn, tp) = confusion_matrix(item.labels, decide(calibrated, at))
            ax.plot(fp / max(tn + fp, 1), tp / max(tp + fn, 1), marker, color=line.get_color(), markersize=8,
                    label=f"{item.name}: {what} {at:.3f}")
    ax.set(xlabel="False positive rate", ylabel="True positive rate",
           title=f"ROC, operating point for sensitivity >= {point.target_sensitivity:g} on validation")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=7)
    else:
        ax.text(0.5, 0.25, "no dataset holds both classes:\nno ROC curve", ha="center")
    return figure_png(fig)


def write_outputs(out: Path, report: dict, scored: list[Scored], point: OperatingPoint) -> None:
    """The CSVs and figures, then evaluation.json (last, so its presence means complete)."""
    threshold = report["threshold"]
    predictions = ((item.name, path, data.CLASS_NAMES[label], round(float(raw), 6), round(float(p), 6),
                    data.CLASS_NAMES[int(decision)], int(group), kind, *gated)
                   for item in scored
                   for path, label, raw, p, decision, group, kind, gated in zip(
                       item.dataset.paths, item.labels, item.prob_tumor, point.calibrate(item.prob_tumor),
                       decide(point.calibrate(item.prob_tumor), threshold), item.groups, item.contamination.kind,
                       gate_columns(item)))
    atomic_write_text(out / PREDICTIONS_FILE, csv_text(PREDICTION_COLUMNS, predictions))
    skipped = ((item.name, path, reason) for item in scored for path, reason in item.dataset.skipped)
    atomic_write_text(out / SKIPPED_FILE, csv_text(["dataset", "path", "reason"], skipped))
    contaminated = ((item.name, path, kind, match, int(distance))
                    for item in scored
                    for path, kind, match, distance in zip(item.dataset.paths, item.contamination.kind,
                                                           item.contamination.match, item.contamination.distance)
                    if kind)
    atomic_write_text(out / CONTAMINATED_FILE, csv_text(["dataset", "path", "kind", "train_or_val_file",
                                                         "hash_distance"], contaminated))
    atomic_write_bytes(out / RELIABILITY_PNG, reliability_png(scored, point))
    atomic_write_bytes(out / ROC_PNG, roc_png(scored, point, threshold))
    atomic_write_json(out / EVALUATION_FILE, json_safe(report))


def gate_columns(item: Scored):
    """Each file's (quality, OOD score) cells of predictions.csv: empty without a gate."""
    if item.quality is None:
        return [("", "")] * len(item.dataset.paths)
    return [(quality, round(float(ood), 4)) for quality, ood in zip(reasons(item.quality), item.ood_score)]


def metric_cell(metrics: dict, key: str) -> str:
    """`metrics[key]` as `format_interval` writes it, or n/a where the dataset's one class cannot give it."""
    return NOT_REPORTABLE_CELL if key in metrics.get("not_reportable", {}) else format_interval(metrics[key])


def table(report: dict) -> str:
    """The datasets of a report as text: n, contaminated, and each headline metric with its interval; under a
    dataset of one class, a line with its one recall at each operating point, under one of both classes its
    sensitivity and specificity at the high-sensitivity point and at each site's point; with a gate, a line under
    each dataset with its rejections and the metrics of the accepted images."""
    width = max(len("dataset"), *(len(name) for name in report["datasets"]))
    cells = [["dataset", "n", "contam."] + [title for _, title in TABLE_METRICS] + ["ECE raw"]]
    for name, metrics in report["datasets"].items():
        cells.append([name, str(metrics["n"]), str(metrics["contaminated"])]
                     + [metric_cell(metrics, key) for key, _ in TABLE_METRICS]
                     + [metric_cell(metrics, "ece_uncalibrated")])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    widths[0] = width
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in cells]
    out = lines[:1]
    for line, metrics in zip(lines[1:], report["datasets"].values()):
        out += ([line] + ([f"  {one_class_line(metrics)}"] if metrics.get("not_reportable") else
                          [f"  {point_line(name, at)}" for name, at in metrics["operating_points"].items()
                           if name not in REPORT_POINTS])
                + ([f"  {gate_line(metrics['n'], metrics['gate'])}"] if "gate" in metrics else []))
    return "\n".join(out)


def one_class_line(metrics: dict) -> str:
    """`only Tumor slices (n/a: needs both classes); sensitivity at target_sensitivity 0.894: 0.650 [...], ...`"""
    only, recall = (("Tumor", "sensitivity") if "specificity" in metrics["not_reportable"]
                    else ("Healthy", "specificity"))
    at = ", ".join(f"{name} {point['threshold']:.3f}: {format_interval(point[recall])}"
                   for name, point in metrics["operating_points"].items())
    return f"only {only} slices ({NOT_REPORTABLE_CELL}: needs both classes); {recall} at {at}"


# points whose metrics the table's row already shows, or that it leaves to evaluation.json
REPORT_POINTS = ("target_sensitivity", "youden", "default_0.5")


def point_line(name: str, point: dict) -> str:
    """`at high_sensitivity 0.012: sensitivity 1.000 [...], specificity 0.310 [...]` (also for a site's point)"""
    return (f"at {name} {point['threshold']:.3f}: sensitivity {format_interval(point['sensitivity'])}, "
            f"specificity {format_interval(point['specificity'])}")


def gate_line(n: int, gate: dict) -> str:
    """`gate: rejected 12 of 690 (1.7%): out_of_distribution 10, blank 2; accepted: balanced acc 0.970 ...`"""
    why = ", ".join(f"{reason} {count}" for reason, count in sorted(gate["rejected"].items(), key=lambda kv: -kv[1])
                    if count)
    accepted = ", ".join(f"{title} {metric_cell(gate['accepted_metrics'], key)}" for key, title in TABLE_METRICS)
    rejected = f"gate: rejected {gate['rejected_total']} of {n} ({gate['rejection_rate']:.1%})"
    return f"{rejected}{f': {why}' if why else ''}; accepted: {accepted}"

