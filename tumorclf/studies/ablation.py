"""The ablation table: every finished run of a study evaluated at its operating point, rows only ever appended.

For each configuration of the study file (read as `tumorclf.studies.study` reads it) whose run has finished,
`tumorclf.evaluation.evaluate` scores the run's own test split at the run's validation-fitted operating point,
with group-bootstrap intervals, into ``RESULTS/evaluations/RUN_NAME/`` (once: an existing evaluation is reused
while the run's best.keras is the one it evaluated). Each evaluation becomes one row of ``RESULTS/ablation.csv``:
what was on, the protocol, the metrics with their 95% intervals, and the training minutes. Rows are only ever
appended, never rewritten or dropped, so every look at a held-out source stays on record, failures included (a
run that cannot be evaluated gets a row whose status is the error). ``RESULTS/ablation.md`` shows the latest row
of each configuration, both protocols side by side.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
from datetime import datetime, timezone
from pathlib import Path

from tumorclf.utils.files import atomic_write_text
from tumorclf.metrics import DEFAULT_RESAMPLES
from tumorclf.metrics.bootstrap import format_interval
from tumorclf.runs.config import PLAIN, Config
from tumorclf.errors import UsageError
from tumorclf.runs.folder import RunDir
from tumorclf.studies.study import protocol, study_file

log = logging.getLogger(__name__)

ABLATION_FILE = "ablation.csv"
TABLE_FILE = "ablation.md"
MODEL_MARK = "model.sha256"  # in an evaluation folder: which best.keras it evaluated
EVALUATIONS = "evaluations"
MEASURES = tuple(PLAIN)  # the Config fields an ablation switches
METRICS = ("balanced_accuracy", "accuracy", "sensitivity", "specificity", "auc", "ece")
COLUMNS = ["evaluated_at", "run_name", "protocol", "recipe", "measures", *MEASURES, "n_test", "train_minutes",
           "epochs_run", "best_epoch", "threshold", "temperature",
           *[f"{m}{end}" for m in METRICS for end in ("", "_lo", "_hi")], "evaluation_sha256", "status"]


def evaluation_row(cfg: Config, evaluation: Path) -> dict:
    """The ablation row of one evaluation.json (its own test split) of `cfg`'s run."""
    text = evaluation.read_bytes()
    report = json.loads(text)
    test = report["datasets"]["test"]
    metrics = RunDir(cfg.run_dir).metrics()
    row = {**identity(cfg), "n_test": test["n"],
           "train_minutes": metrics.get("train_minutes"), "epochs_run": metrics.get("epochs_run"),
           "best_epoch": metrics.get("best_epoch"), "threshold": report["threshold"],
           "temperature": report["temperature"], "evaluation_sha256": hashlib.sha256(text).hexdigest(),
           "status": "evaluated"}
    for metric in METRICS:
        value, (low, high) = test[metric]["value"], test[metric]["ci95"] or (None, None)  # None: undefined
        row.update({metric: value, f"{metric}_lo": low, f"{metric}_hi": high})
    return row


def identity(cfg: Config) -> dict:
    """What a row says of the run it is about: name, protocol, recipe and each measure."""
    return {"run_name": cfg.run_name, "protocol": protocol(cfg), "recipe": cfg.recipe, "measures": cfg.measures,
            **{key: getattr(cfg, key) for key in MEASURES}}


def failed_row(cfg: Config, error: Exception) -> dict:
    return {**identity(cfg), "status": f"failed: {' '.join(str(error).split())}"}


def evaluate_run(cfg: Config, out: Path, n_bootstrap: int) -> Path:
    """The run's evaluation.json in `out`, evaluating the run first when `out` has none or has one of another
    model (`MODEL_MARK` holds the SHA-256 of the best.keras evaluated; an evaluation without one is taken
    as of the current model and marked)."""
    from tumorclf.evaluation.evaluate import EVALUATION_FILE, evaluate, write_outputs

    run = RunDir(cfg.run_dir)
    model = hashlib.sha256(run.best_model.read_bytes()).hexdigest()
    mark = out / MODEL_MARK
    if (out / EVALUATION_FILE).is_file() and mark.is_file() and mark.read_text().strip() != model:
        log.info("ablation: %s was trained again since its evaluation; evaluating it again", cfg.run_name)
        (out / EVALUATION_FILE).unlink()
    if not (out / EVALUATION_FILE).is_file():
        log.info("ablation: evaluating %s at its operating point", cfg.run_name)
        report, scored, point = evaluate(run, n_bootstrap=n_bootstrap)
        write_outputs(out, report, scored, point)
    if not mark.is_file() or mark.read_text().strip() != model:
        atomic_write_text(mark, model + "\n")
    return out / EVALUATION_FILE


def read_rows(path: Path) -> list[dict[str, str]]:
    """The table's rows; a table with other columns than `COLUMNS` is refused rather than rewritten."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != COLUMNS:
            raise UsageError(f"ablation: {path} has other columns than this tumorclf writes; move it aside "
                             "(its rows are never rewritten)")
        return list(reader)


def append_rows(path: Path, new: list[dict]) -> None:
    """Append `new` to `path`, whose earlier text is kept byte for byte (the whole file is replaced
    atomically, so a crash leaves the old table or the new one, never half a row)."""
    earlier = path.read_text() if path.is_file() else ""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if not earlier:
        writer.writerow(COLUMNS)
    writer.writerows([_text(row.get(column)) for column in COLUMNS] for row in new)
    atomic_write_text(path, earlier + buffer.getvalue())


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def record(configs: list[Config], results: Path, n_bootstrap: int = DEFAULT_RESAMPLES) -> list[dict]:
    """Evaluate the finished runs of `configs` not yet in the table and append their rows; returns the new
    rows. A run already recorded with the same evaluation (by SHA-256) is not added again; a run that
    failed before is tried again (and, if it fails again, recorded again)."""
    table = results / ABLATION_FILE
    earlier = read_rows(table)
    recorded = {(row["run_name"], row["evaluation_sha256"]) for row in earlier if row["status"] == "evaluated"}
    new = []
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    for cfg in configs:
        if not RunDir(cfg.run_dir).finished:
            log.info("ablation: %s has not finished; not evaluated", cfg.run_name)
            continue
        try:
            row = evaluation_row(cfg, evaluate_run(cfg, results / EVALUATIONS / cfg.run_name, n_bootstrap))
        except Exception as exc:  # noqa: BLE001 - any failure is recorded as a row, as the rules ask
            log.warning("ablation: %s could not be evaluated: %s", cfg.run_name, exc)
            new.append({"evaluated_at": stamp, **failed_row(cfg, exc)})
            continue
        if (row["run_name"], row["evaluation_sha256"]) not in recorded:
            new.append({"evaluated_at": stamp, **row})
    if new:
        append_rows(table, new)
    atomic_write_text(results / TABLE_FILE, markdown([*earlier, *({k: _text(v) for k, v in r.items()} for r in new)]))
    return new


def record_study(path: Path, data: str | None = None, n_bootstrap: int = DEFAULT_RESAMPLES) -> tuple[list[dict], Path]:
    """`record` the runs of the study file at `path` (`data` overrides its data folder) in its `results`
    folder, which the file must name: the table is kept there for good. Returns the new rows and the folder."""
    _, configs, results = study_file(path, data, "the ablation table")
    return record(configs, results, n_bootstrap), results


def configuration(run_name: str) -> str:
    """A run's name with its split replaced by `*`: the runs of one configuration on each protocol share it
    (a run named by --name keeps its own)."""
    return re.sub(r"_(grouped|paper|lso-[^_]+)_", "_*_", run_name, count=1)


def markdown(rows: list[dict[str, str]]) -> str:
    """The latest evaluated row of each configuration, protocols side by side."""
    latest: dict[tuple[str, str, str], dict[str, dict[str, str]]] = {}
    for row in rows:
        if row.get("status") == "evaluated":
            key = (configuration(row["run_name"]), row["recipe"], row["measures"])
            latest.setdefault(key, {})[row["protocol"]] = row
    protocols = sorted({p for by_protocol in latest.values() for p in by_protocol}, key=lambda p: (p != "grouped", p))
    header = ["configuration", "recipe", "measures"]
    for name in protocols:
        header += [f"{name}: balanced accuracy", f"{name}: AUC", f"{name}: sensitivity / specificity",
                   f"{name}: minutes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (name, recipe, measure), by_protocol in latest.items():
        cells = [f"`{name}`", recipe, measure]
        for name in protocols:
            row = by_protocol.get(name)
            if row is None:
                cells += ["", "", "", ""]
                continue
            cells += [_interval(row, "balanced_accuracy"), _interval(row, "auc"),
                      f"{_value(row, 'sensitivity')} / {_value(row, 'specificity')}", row["train_minutes"]]
        lines.append("| " + " | ".join(cells) + " |")
    failures = sum(1 for row in rows if row.get("status", "").startswith("failed"))
    notes = ["", f"At each run's operating point (validation-fitted). 95% intervals over duplicate groups. "
             f"{len(rows)} evaluations on record in {ABLATION_FILE}, {failures} failed."]
    return "\n".join(lines + notes) + "\n"


def _value(row: dict[str, str], metric: str) -> str:
    """A metric's value to 3 decimals, `-` where it is undefined (e.g. specificity without healthy images)."""
    return f"{float(row[metric]):.3f}" if row.get(metric) else "-"


def _interval(row: dict[str, str], metric: str) -> str:
    if not row.get(metric):
        return "-"
    low, high = row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
    ci = [float(low), float(high)] if low and high else None
    return format_interval({"value": float(row[metric]), "ci95": ci})

