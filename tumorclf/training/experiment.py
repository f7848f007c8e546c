"""One run end to end: data, split, training, operating point and quality gate (both fitted on validation), test
evaluation and the run folder. `run_experiment` serves `tumorclf train` and every run of a study.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tumorclf.data.dataset import CLASS_NAMES, DataError, file_sha256, load_dataset
from tumorclf.data.decoder import DECODER_VERSION
from tumorclf.data.splits import check_holdout, make_split, manifest_csv, read_sources
from tumorclf.evaluation.external import check_external, evaluate_external, summary_lines
from tumorclf.evaluation.reports import write_reports
from tumorclf.explain.boxes import match_boxes, read_boxes
from tumorclf.gate.quality_gate import fit_gate
from tumorclf.gate.refit import describe
from tumorclf.metrics.calibration import fit_operating_point
from tumorclf.metrics.classification import classification_metrics, decide
from tumorclf.models.factory import (
    build_model,
    load_model,
    resolve_weights,
    set_trainable,
)
from tumorclf.models.flops import forward_flops
from tumorclf.models.registry import MODELS
from tumorclf.models.stem import feature_cache
from tumorclf.runs.config import Config, ConfigError
from tumorclf.runs.folder import DEFAULT_THRESHOLD, RunDir
from tumorclf.training.feature_cache import predict_from_features
from tumorclf.training.loop import is_chief, select_precision, select_strategy, train
from tumorclf.training.timing import PhaseTimes, table_lines
from tumorclf.transforms.pipeline import predict_images
from tumorclf.utils.array_cache import default_cache_dir
from tumorclf.utils.files import (
    atomic_write_json,
    atomic_write_text,
    csv_text,
    versions,
)
from tumorclf.utils.machine import peak_gflops

log = logging.getLogger(__name__)
# the dense-math limit a phase is compared with: the dtype its matmuls run in
COMPUTE_DTYPE = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16", "float32": "float32"}


def run_experiment(cfg: Config) -> Path:
    """Train and evaluate one configuration; returns the run folder.

    Everything that can fail on bad input (data folder, classes, weights, split sizes, an
    existing run folder) is checked before the first training step.
    """
    started = time.time()
    precision = select_precision(cfg.precision)
    keras.mixed_precision.set_global_policy(precision)
    try:
        strategy = select_strategy(cfg.strategy)  # the first TensorFlow op, as tf.distribute expects
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    weights, weights_origin = resolve_weights(cfg.model, cfg.imagenet, cfg.weights_dir)
    check_external(cfg.external_folders, cfg.resolved_data())
    if cfg.fine_tune == "from_layer":  # layer names are known only from a built model: check before writing
        set_trainable(build_model(cfg.model, cfg.image_size), "from_layer", cfg.unfreeze_from)
    times = PhaseTimes()
    with times.phase("decode"):
        data = load_dataset(cfg.resolved_data(), cfg.image_size, cfg.classes, cfg.cache_dir, cfg.max_files)
    sources = read_sources(Path(cfg.sources), data.paths, cfg.unlisted_source) if cfg.split == "source" else None
    if sources is not None:
        check_holdout(sources, cfg.holdout)
    split = make_split(cfg.split, data.labels, data.image_index, data.unique_images,
                       cfg.split_fractions, cfg.split_seed_used, cfg.near_duplicate_bits, sources, cfg.holdout)
    subsets = {name: split.indices(name) for name in ("train", "val", "test")}
    boxes = None  # the training images' tumour boxes, read before anything is written
    if cfg.boxes:
        boxes = match_boxes(read_boxes(Path(cfg.boxes)), [Path(data.paths[i]) for i in subsets["train"]],
                            cfg.boxes)
    small = {name: len(rows) for name, rows in subsets.items() if len(rows) < cfg.batch_size}
    if small:
        raise DataError(f"fewer images than one batch ({cfg.batch_size}) in split(s) {small}; "
                        "use more data or a smaller --batch-size")
    if is_chief(strategy):
        run = RunDir(cfg.run_dir)
        resuming = run.create(cfg.overwrite, cfg.resume)
    else:  # a non-chief worker trains in step with the chief but writes only to a folder it then removes
        run, resuming = RunDir(tempfile.mkdtemp(prefix="tumorclf_worker_")), False
        log.info("non-chief worker: the chief writes %s", cfg.run_dir)
    if resuming:
        check_same_config(run, cfg)
        resolved = run.record().resolved if run.config_file.is_file() else {}
        for name in ("sources", "boxes"):
            given, recorded = getattr(cfg, name), resolved.get(f"{name}_sha256")
            if given and recorded not in (None, file_sha256(Path(given))):
                raise ConfigError(f"{run} was started with another --{name} file (its SHA-256 differs); resume "
                                  "with the same file or choose another --name")
        if run.metrics_file.is_file():
            log.info("%s is already finished; nothing to resume", run)
            return run.path
    run_dir = run.path
    handler = run.attach_log()
    try:
        log.info("split %s", split.report)
        for path, reason in data.skipped:
            log.warning("skipped %s: %s", path, reason)
        keras.utils.set_random_seed(cfg.seed)
        if cfg.deterministic:
            tf.config.experimental.enable_op_determinism()
        run.write_record(cfg, resolved={
            "data": str(data.root.resolve()),
            "classes": data.folders.how,
            "class_names": list(CLASS_NAMES),
            "weights_origin": weights_origin,
            "precision": precision,
            "strategy": type(strategy).__name__,
            "replicas": strategy.num_replicas_in_sync,
            "decoder": DECODER_VERSION,
            **({"sources": str(Path(cfg.sources).resolve()), "sources_sha256": file_sha256(Path(cfg.sources))}
               if sources is not None else {}),
            **({"boxes": str(Path(cfg.boxes).resolve()), "boxes_sha256": file_sha256(Path(cfg.boxes))}
               if cfg.boxes else {}),
        }, split=split.report, skipped_files=len(data.skipped), versions=versions())
        atomic_write_text(run.split_file, manifest_csv(data.paths, data.labels, data.sha256, split))
        atomic_write_text(run.skipped_file, csv_text(["path", "reason"], data.skipped))
        build = lambda: build_model(cfg.model, cfg.image_size, weights, cfg.dropout, cfg.intensity,
                                     cfg.framing)  # noqa: E731
        images = {name: data.images(rows) for name, rows in subsets.items()}
        labels = {name: data.labels[rows] for name, rows in subsets.items()}
        result = train(cfg, run, build, strategy, images, labels, resume=resuming, times=times,
                       boxes=boxes)  # every recipe

        best = load_model(result.best_checkpoint)

        def predict(name: str) -> tuple[np.ndarray, float]:
            """(outputs, GFLOP) of the best model on split `name`: a cached-feature recipe's through the feature
            cache, so the frozen part does not run again over images it already ran over."""
            if cfg.cached_features:
                return predict_from_features(best, MODELS[cfg.model].fast_cut, images[name], cfg.batch_size, name,
                                             feature_cache(cfg.cache_dir))
            probs = predict_images(best, images[name], labels[name], cfg.batch_size, f"predicting the {name} split")
            return probs, len(labels[name]) * forward_flops(best) / 1e9

        with times.phase("calibration") as phase:
            probs, phase.gflop = predict("val")
            point = save_operating_point(run, cfg, [data.paths[i] for i in subsets["val"]], labels["val"], probs)
        if is_chief(strategy):  # the gate is fitted on the un-augmented train images, its threshold on validation
            with times.phase("gate"):  # a cached-feature recipe's training features are read back, not recomputed
                gate = fit_gate(best, images["train"], labels["train"], images["val"], cfg.batch_size,
                                cfg.image_size // 2, feature_cache(cfg.cache_dir) if cfg.cached_features else None)
            gate.save(run_dir)
            log.info("%s", describe(gate))
        test_labels = labels["test"]
        with times.phase("test") as phase:
            probs, phase.gflop = predict("test")
        metrics = classification_metrics(test_labels, probs, DEFAULT_THRESHOLD)
        metrics.update(best_epoch=result.best_epoch, best_val_f1=result.best_val_f1, epochs_run=result.epochs_run,
                       train_minutes=round(result.train_seconds / 60, 2),
                       wall_minutes=round((time.time() - started) / 60, 2), model=cfg.model, imagenet=cfg.imagenet,
                       split=cfg.split, image_size=cfg.image_size)
        test_paths = [data.paths[i] for i in subsets["test"]]
        atomic_write_text(run.predictions_file, csv_text(
            ["path", "label", "prob_tumor", "predicted"],
            zip(test_paths, test_labels.tolist(), probs[:, 1].round(6).tolist(),
                decide(probs[:, 1], metrics["threshold"]).tolist())))
        write_reports(run, metrics, test_labels, probs, cfg.run_name)
        if cfg.gradcam_per_outcome:
            from tumorclf.explain.gradcam import save_outcome_overlays

            saved = save_outcome_overlays(result.best_checkpoint, images["test"], test_labels, probs[:, 1], test_paths,
                                          cfg.gradcam_per_outcome, run.gradcam_dir, metrics["threshold"])
            log.info("saved %d Grad-CAM overlays in %s", saved, run.gradcam_dir)
        shutil.rmtree(run.backup_dir, ignore_errors=True)  # finished: the resume state is no longer needed
        peak = peak_gflops(COMPUTE_DTYPE.get(precision, "float32"), Path(cfg.cache_dir or default_cache_dir()))
        report = times.report(peak, precision)
        atomic_write_json(run.timing_file, report)
        for line in table_lines(report):
            log.info("timing: %s", line)
        log.info("test: accuracy %.4f, f1 %.4f, auc %.4f at threshold %g (best epoch %s) -> %s; operating point "
                 "(validation): temperature %.3f, threshold %.4f for sensitivity >= %g", metrics["accuracy"],
                 metrics["f1"], metrics["auc"], metrics["threshold"], result.best_epoch, run_dir, point.temperature,
                 point.threshold, point.target_sensitivity)
    finally:
        run.detach_log(handler)
        if run_dir != cfg.run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
    print(f"test accuracy {metrics['accuracy']:.4f}, F1 {metrics['f1']:.4f}, AUC {metrics['auc']:.4f} "
          f"(best epoch {result.best_epoch} of {result.epochs_run}, {metrics['train_minutes']} min of training)")
    if cfg.external and run_dir == cfg.run_dir:
        for line in summary_lines(evaluate_external(RunDir(cfg.run_dir), cfg.external_folders)):
            print(f"external {line}")
    return cfg.run_dir


def save_operating_point(run: RunDir, cfg: Config, paths: list[str], labels: np.ndarray, probs: np.ndarray):
    """Keep the best model's validation outputs `probs` (val_predictions.csv), and fit and save the run's
    operating point on them (operating_point.json): validation only, never the test split."""
    point = fit_operating_point(labels, run.write_val_predictions(paths, labels, probs[:, 1]), cfg.target_sensitivity)
    run.write_operating_point(point)
    return point


def check_same_config(run: RunDir, cfg: Config) -> None:
    """Refuse to resume a run folder that was started with different defining values."""
    if not run.config_file.is_file():
        return  # interrupted before its config was written: nothing trained yet
    saved = run.config().defining()
    changed = sorted(k for k, v in cfg.defining().items() if saved.get(k) != v)
    if changed:
        raise ConfigError(f"{run} was started with other values of {', '.join(changed)}; "
                          "resume with the same options or choose another --name")

