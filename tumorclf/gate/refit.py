"""Fit the input quality gate (`tumorclf.gate.quality_gate`) of a finished run that has none (`fit_run_gate`; the
command is `tumorclf gate`).

Training fits the gate at its end; runs trained before the gate existed get it here, from their own split
(`split.csv`): the statistics on the train files, the out-of-distribution threshold on the validation files,
decoded as in training (through the same decoded-image cache). The data folder is the one the run was
trained on, or ``data_root`` where it has moved. An existing gate is replaced only with ``overwrite``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tumorclf.data.decoder import DECODER_VERSION
from tumorclf.runs.own_split import own_split
from tumorclf.gate.quality_gate import GATE_ARRAYS, GATE_JSON, Gate, fit_gate
from tumorclf.runs.folder import RunDir, RunError, RunExistsError

log = logging.getLogger(__name__)


def describe(gate: Gate) -> str:
    """One line for the log and the console: the threshold, and what it rejects of the validation split."""
    validation = gate.validation
    return (f"quality gate: out-of-distribution threshold {gate.ood_threshold:.4g}, rejects "
            f"{sum(validation['rejected'].values())} of {validation['n']} validation images "
            f"({validation['rejection_rate']:.1%})")


def fit_run_gate(run: RunDir, data_root: Path | None = None, batch_size: int | None = None,
                 overwrite: bool = False) -> Gate:
    """Fit `run`'s gate on its train and validation files and save it in the run folder."""
    run.require_finished()
    existing = [name for name in (GATE_JSON, GATE_ARRAYS) if (run.path / name).exists()]
    if existing and not overwrite:
        raise RunExistsError(f"gate: {run} already has a quality gate ({', '.join(existing)}); pass --overwrite to "
                             "fit it again")
    record = run.record()
    if record.decoder != DECODER_VERSION:
        log.warning("%s was trained with decoder version %s, this tumorclf decodes with version %s: the gate is "
                    "fitted on images decoded otherwise than in training", run.name, record.decoder, DECODER_VERSION)
    seen = own_split(run, ("train", "val"), needed_for="pass --data DIR where its images are now",
                     changed_means="the gate is fitted on them as they are now", root=data_root)
    where = {row["path"]: row["split"] for row in run.split_rows()}
    split = np.array([where[path] for path in seen.paths])
    train, val = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    if not len(train) or not len(val):
        raise RunError(f"none of the {'train' if not len(train) else 'validation'} files of {run} can be read under "
                       f"{seen.root}: the gate needs both")
    cfg = record.config
    gate = fit_gate(run.load_model(), seen.images(train), seen.labels[train], seen.images(val),
                    batch_size or cfg.batch_size, cfg.image_size // 2)
    try:
        gate.save(run.path)
    except OSError as exc:
        raise RunError(f"cannot write into {run.path}: {exc.strerror or exc}") from None
    log.info("%s: %s", run.name, describe(gate))
    return gate

