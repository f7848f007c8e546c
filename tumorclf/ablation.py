"""`tumorclf ablation`: every finished run of a study evaluated at its operating point, in an append-only table.

Usage: ``tumorclf ablation --config experiments/robust.yaml [--data DIR] [--bootstrap N]``

For each configuration of the study file (read as `tumorclf study` reads it) whose run has finished,
`tumorclf evaluate` scores the run's own test split at the run's validation-fitted operating point, with
group-bootstrap intervals, into ``RESULTS/evaluations/RUN_NAME/`` (once: an existing evaluation is
reused). Each evaluation becomes one row of ``RESULTS/ablation.csv``: what was on, the protocol, the
metrics with their 95% intervals, and the training minutes. Rows are only ever appended, never
rewritten or dropped, so every look at a held-out source stays on record, failures included (a run
that cannot be evaluated gets a row whose status is the error). ``RESULTS/ablation.md`` shows the latest
row of each configuration, both protocols side by side.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from datetime import datetime, timezone
from pathlib import Path

from tumorclf.artifacts import atomic_write_text, csv_text
from tumorclf.bootstrap import DEFAULT_RESAMPLES, format_interval
from tumorclf.config import Config, load_yaml
from tumorclf.errors import UsageError, UserError
from tumorclf.rundir import RunDir
from tumorclf.study import protocol, study_configs

log = logging.getLogger(__name__)

ABLATION_FILE = "ablation.csv"
TABLE_FILE = "ablation.md"
EVALUATIONS = "evaluations"
MEASURES = ("intensity", "framing", "acquisition", "elastic")  # the Config fields an ablation switches
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
    row = {"run_name": cfg.run_name, "protocol": protocol(cfg), "recipe": cfg.recipe, "measures": cfg.measures,
           **{key: getattr(cfg, key) for key in MEASURES}, "n_test": test["n"],
           "train_minutes": metrics.get("train_minutes"), "epochs_run": metrics.get("epochs_run"),
           "best_epoch": metrics.get("best_epoch"), "threshold": report["threshold"],
           "temperature": report["temperature"], "evaluation_sha256": hashlib.sha256(text).hexdigest(),
           "status": "evaluated"}
    for metric in METRICS:
        value, (low, high) = test[metric]["value"], test[metric]["ci95"] or (None, None)
        row.update({metric: value, f"{metric}_lo": low, f"{metric}_hi": high})
    return row


def failed_row(cfg: Config, error: Exception) -> dict:
    return {"run_name": cfg.run_name, "protocol": protocol(cfg), "recipe": cfg.recipe, "measures": cfg.measures,
            **{key: getattr(cfg, key) for key in MEASURES}, "status": f"failed: {' '.join(str(error).split())}"}


def evaluate_run(cfg: Config, out: Path, n_bootstrap: int) -> Path:
    """The run's evaluation.json in `out`, evaluating the run first when `out` has none."""
    from tumorclf.evaluate import EVALUATION_FILE, evaluate, write_outputs

    if not (out / EVALUATION_FILE).is_file():
        log.info("ablation: evaluating %s at its operating point", cfg.run_name)
        report, scored, point = evaluate(RunDir(cfg.run_dir), n_bootstrap=n_bootstrap)
        write_outputs(out, report, scored, point)
    return out / EVALUATION_FILE


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def append_rows(path: Path, earlier: list[dict[str, str]], new: list[dict]) -> None:
    """Rewrite `path` atomically as the earlier rows, unchanged and in order, then the new ones."""
    def cells(row):
        return [_text(row.get(column)) for column in COLUMNS]

    atomic_write_text(path, csv_text(COLUMNS, [cells(row) for row in [*earlier, *new]]))


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
        except (UserError, OSError, KeyError, ValueError) as exc:
            log.warning("ablation: %s could not be evaluated: %s", cfg.run_name, exc)
            new.append({"evaluated_at": stamp, **failed_row(cfg, exc)})
            continue
        if (row["run_name"], row["evaluation_sha256"]) not in recorded:
            new.append({"evaluated_at": stamp, **row})
    if new:
        append_rows(table, earlier, new)
    atomic_write_text(results / TABLE_FILE, markdown([*earlier, *({k: _text(v) for k, v in r.items()} for r in new)]))
    return new


def markdown(rows: list[dict[str, str]]) -> str:
    """The latest evaluated row of each configuration, one line per (recipe, measures), protocols side by side."""
    latest: dict[tuple[str, str], dict[str, dict[str, str]]] = {}
    for row in rows:
        if row.get("status") == "evaluated":
            latest.setdefault((row["recipe"], row["measures"]), {})[row["protocol"]] = row
    protocols = sorted({p for by_protocol in latest.values() for p in by_protocol}, key=lambda p: (p != "grouped", p))
    header = ["recipe", "measures"]
    for name in protocols:
        header += [f"{name}: balanced accuracy", f"{name}: AUC", f"{name}: sensitivity / specificity",
                   f"{name}: minutes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (recipe, measure), by_protocol in latest.items():
        cells = [recipe, measure]
        for name in protocols:
            row = by_protocol.get(name)
            if row is None:
                cells += ["", "", "", ""]
                continue
            cells += [_interval(row, "balanced_accuracy"), _interval(row, "auc"),
                      f"{float(row['sensitivity']):.3f} / {float(row['specificity']):.3f}", row["train_minutes"]]
        lines.append("| " + " | ".join(cells) + " |")
    failures = sum(1 for row in rows if row.get("status", "").startswith("failed"))
    notes = ["", f"At each run's operating point (validation-fitted). 95% intervals over duplicate groups. "
             f"{len(rows)} evaluations on record in {ABLATION_FILE}, {failures} failed."]
    return "\n".join(lines + notes) + "\n"


def _interval(row: dict[str, str], metric: str) -> str:
    low, high = row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
    ci = [float(low), float(high)] if low and high else None
    return format_interval({"value": float(row[metric]), "ci95": ci})


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, type=Path, help="the study file (e.g. experiments/robust.yaml)")
    p.add_argument("--data", help="data folder (default: the study file's or $TUMORCLF_DATA)")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES, metavar="N",
                   help=f"bootstrap resamples of duplicate groups (default {DEFAULT_RESAMPLES})")


def run(args) -> int:
    if args.bootstrap < 1:
        raise UsageError(f"ablation: --bootstrap must be >= 1, got {args.bootstrap}")
    spec = load_yaml(args.config)
    if "results" not in spec:
        raise UsageError(f"ablation: {args.config} names no `results` folder")
    results = Path(spec["results"])
    new = record(study_configs(spec, args.data), results, args.bootstrap)
    print(f"{len(new)} new evaluation(s) appended to {results / ABLATION_FILE}")
    print((results / TABLE_FILE).read_text())
    return 0


if __name__ == "__main__":
    from tumorclf.cli import alias

    raise SystemExit(alias("tumorclf.ablation"))
