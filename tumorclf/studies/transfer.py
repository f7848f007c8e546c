"""The transfer table: how each configuration of a study does where it was not trained, at every operating point.

A recipe chosen on in-source accuracy can miss the tumours of another collection (docs/robustness.md). For every
finished run of a study, `record_transfer` puts on record, at each operating point the evaluation reports
(the validation-fitted one, the others it stores, and 0.5), sensitivity and specificity with their 95% intervals:

- on the run's own test split (the grouped split's in-source slices, or the held-out collections of a
  leave-source-out run), from the predictions the run saved (test_predictions.csv, its duplicate groups from
  split.csv): no model is run again;
- on each external folder of the study (`external:`), from the run's `evaluation_external` (written by
  `train --external`) or, for a run trained without it, from an evaluation written under RESULTS/evaluations;

and, per configuration, for two measures:

- **ensemble** of its seeds (runs that share one split, `--split-seed`): the mean of the members' calibrated
  P(Tumor), its operating point fitted on their shared validation split (`tumorclf.metrics.ensemble`), built
  from the members' predictions already on record (no model is run again);
- **tta** (test-time augmentation, the study's `tta:` views) of each run on the external folders, with its
  operating point refitted on the validation split's augmented predictions (`tumorclf.evaluation.combined`).

Each row is one (configuration, measure, run or ensemble, dataset, operating point); `transfer.csv` is rewritten
whole from the runs on this machine, keeping the rows of an earlier one whose runs are not here (trained on
another machine or in another session; an ensemble row is kept only when none of its members is here, else
it is formed again from the members that are);
`transfer.md` aggregates the seeds (mean ± sd, min-max) beside the ensemble.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tumorclf.data.dataset import CLASS_NAMES
from tumorclf.errors import ConfigError, UserError
from tumorclf.metrics import DEFAULT_RESAMPLES
from tumorclf.metrics.bootstrap import format_interval
from tumorclf.metrics.calibration import OperatingPoint
from tumorclf.runs.config import Config
from tumorclf.runs.folder import RunDir, RunError
from tumorclf.runs.points import HIGH_SENSITIVITY, saved_point
from tumorclf.studies import seeds
from tumorclf.studies.ablation import EVALUATIONS
from tumorclf.studies.study import protocol, study_file
from tumorclf.utils.files import atomic_write_text, csv_text

log = logging.getLogger(__name__)

TRANSFER_FILE = "transfer.csv"
TABLE_FILE = "transfer.md"
TEST = "test"
MEASURES = ("single", "tta", "ensemble")  # the table's order within a configuration
METRICS = ("sensitivity", "specificity", "auc")
COLUMNS = ["configuration", "protocol", "measure", "runs", "seeds", "dataset", "point", "threshold", "n",
           *[f"{m}{end}" for m in METRICS for end in ("", "_lo", "_hi")], "evaluation", "status"]


def report_rows(report: dict, where: str) -> list[dict]:
    """One row per (dataset, operating point) of an evaluation.json (the pooled dataset left out): n, the
    threshold, sensitivity and specificity at it and the dataset's AUC, each with its interval (None where the
    dataset's one class cannot give it)."""
    rows = []
    for name, entry in report["datasets"].items():
        if entry.get("folder") is None:  # several folders pooled
            continue
        missing = entry.get("not_reportable") or {}
        auc = _metric(entry["auc"], "auc" in missing)
        for point, values in entry["operating_points"].items():
            row = {"dataset": name, "point": point, "threshold": values["threshold"], "n": entry["n"],
                   "evaluation": where, "status": "evaluated"}
            for metric in ("sensitivity", "specificity"):
                row.update(_prefixed(metric, _metric(values[metric], metric in missing)))
            row.update(_prefixed("auc", auc))
            rows.append(row)
    return rows


def _metric(values: dict | None, missing: bool) -> tuple:
    if missing or not values or values.get("value") is None or values["value"] != values["value"]:
        return None, None, None
    low, high = values.get("ci95") or (None, None)
    return values["value"], low, high


def _prefixed(metric: str, values: tuple) -> dict:
    return dict(zip((metric, f"{metric}_lo", f"{metric}_hi"), values))


def external_evaluation(cfg: Config, results: Path, n_bootstrap: int) -> tuple[dict | None, str]:
    """The run's evaluation of the study's external folders: its own (`train --external`) when it covers them,
    else one written (once) under RESULTS/evaluations/RUN/external."""
    from tumorclf.evaluation.evaluate import EVALUATION_FILE, evaluate, write_outputs

    run = RunDir(cfg.run_dir)
    wanted = {str(folder.resolve()) for folder in cfg.external_folders}
    own = run.external_report()  # reused when it covers the folders and has every point (older ones lack one)
    if own is not None and wanted <= {str(Path(e["folder"]).resolve()) for e in own["datasets"].values()
                                      if e.get("folder")} and all(
            HIGH_SENSITIVITY in e["operating_points"] for e in own["datasets"].values()):
        return own, str(run.external_dir / EVALUATION_FILE)
    out = results / EVALUATIONS / cfg.run_name / "external"
    if not of_this_model(out / EVALUATION_FILE, run):
        log.info("transfer: evaluating %s on %s", cfg.run_name, ", ".join(map(str, cfg.external_folders)))
        report, scored, point = evaluate(run, data_dirs=cfg.external_folders, n_bootstrap=n_bootstrap)
        write_outputs(out, report, scored, point)
    return json.loads((out / EVALUATION_FILE).read_text()), str(out / EVALUATION_FILE)


def of_this_model(evaluation: Path, run: RunDir) -> bool:
    """Whether `evaluation` (written under RESULTS, kept between sessions) is of the model now in `run`: a run
    trained again under the same name (another machine, another session) is evaluated again."""
    from tumorclf.data.dataset import file_sha256

    if not evaluation.is_file():
        return False
    recorded = json.loads(evaluation.read_text()).get("model_sha256")
    if recorded != file_sha256(run.best_model):
        log.info("transfer: %s is of another model than %s's best.keras now; evaluating again", evaluation, run)
        return False
    return True


def tta_evaluation(cfg: Config, results: Path, views: list[str], n_bootstrap: int) -> tuple[dict, str]:
    """The run's test-time augmented evaluation on the study's external folders (written once)."""
    from tumorclf.evaluation.combined import Combined
    from tumorclf.evaluation.evaluate import EVALUATION_FILE, evaluate, write_outputs

    out = results / EVALUATIONS / cfg.run_name / f"tta_{'+'.join(views)}"
    run = RunDir(cfg.run_dir)
    if not of_this_model(out / EVALUATION_FILE, run):
        log.info("transfer: evaluating %s with test-time views %s", cfg.run_name, " ".join(views))
        report, scored, point = evaluate(run, data_dirs=cfg.external_folders, n_bootstrap=n_bootstrap,
                                         scoring=Combined([run], views))
        write_outputs(out, report, scored, point)
    return json.loads((out / EVALUATION_FILE).read_text()), str(out / EVALUATION_FILE)


Predictions = dict[str, tuple[int, float, int]]  # path -> (label, raw P(Tumor), duplicate group)


def evaluation_predictions(evaluation: str, dataset: str) -> Predictions:
    """One dataset of an evaluation's predictions.csv."""
    with open(Path(evaluation).parent / "predictions.csv", newline="") as handle:
        return {row["path"]: (CLASS_NAMES.index(row["label"]), float(row["prob_tumor_raw"]), int(row["group"]))
                for row in csv.DictReader(handle) if row["dataset"] == dataset}


def test_predictions(run: RunDir) -> Predictions:
    """The run's own test split as it saved it: test_predictions.csv, groups from split.csv."""
    group = {row["path"]: int(row["group"]) for row in run.split_rows()}
    return {row["path"]: (int(row["label"]), float(row["prob_tumor"]), group[row["path"]])
            for row in run.test_predictions()}


def run_point(run: RunDir) -> OperatingPoint:
    """The run's saved operating point, with its high-sensitivity threshold fitted from val_predictions.csv
    when it was saved before that point existed (the file is left as it is)."""
    point = saved_point(run)
    if point is None:
        raise RunError(f"{run.path} has no operating_point.json (`tumorclf evaluate --run {run.path}` fits it)")
    return point


def report_of(predictions: Predictions, point: OperatingPoint, name: str, n_bootstrap: int) -> dict:
    """An evaluation.json-like report of one dataset's predictions at `point` (`dataset_report`)."""
    from tumorclf.evaluation.evaluate import dataset_report

    paths = sorted(predictions)
    labels, raw, groups = (np.array([predictions[p][i] for p in paths]) for i in range(3))
    entry = dataset_report(labels, raw, groups, point, point.threshold, n_bootstrap, 0)
    return {"datasets": {name: {**entry, "folder": name}}}


def ensemble_rows(cfgs: list[Config], members: dict[str, dict[str, Predictions]], n_bootstrap: int) -> list[dict]:
    """The rows of the ensemble of `cfgs` (one configuration, several seeds) on each dataset all of them were
    scored on (`members`: run name -> dataset -> predictions), at its own operating point."""
    from tumorclf.metrics.ensemble import ensemble_probabilities
    from tumorclf.runs.ensemble import ensemble_point, member_points

    runs = [RunDir(cfg.run_dir) for cfg in cfgs]
    point = ensemble_point(runs)
    points = member_points(runs)  # each member's temperature
    rows = []
    for dataset in sorted(set.intersection(*(set(members[cfg.run_name]) for cfg in cfgs))):
        scored = [members[cfg.run_name][dataset] for cfg in cfgs]
        paths = sorted(scored[0])
        if any(set(member) != set(paths) for member in scored):
            raise UserError(f"the members' {dataset} predictions are not of the same files")
        score = ensemble_probabilities([np.array([m[p][1] for p in paths]) for m in scored], points)
        combined = {p: (scored[0][p][0], float(value), scored[0][p][2]) for p, value in zip(paths, score)}
        rows += report_rows(report_of(combined, point, dataset, n_bootstrap), "from the members' predictions")
    return rows


def record_transfer(configs: list[Config], results: Path, tta: dict | None = None,
                    n_bootstrap: int = DEFAULT_RESAMPLES) -> list[dict]:
    """Write RESULTS/transfer.csv and transfer.md from the finished runs of `configs`; returns the rows. `tta`
    (a study's `tta:`): `views`, and `runs`, shell patterns of the run names to augment (default: all)."""
    tta_views, tta_runs = (tta or {}).get("views"), (tta or {}).get("runs", ["*"])
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    rows: list[dict] = []
    members: dict[str, dict[str, Predictions]] = {}
    finished = [cfg for cfg in configs if RunDir(cfg.run_dir).finished]
    for cfg in finished:
        about = {"configuration": seeds.configuration(cfg.run_name), "protocol": protocol(cfg), "runs": cfg.run_name,
                 "seeds": str(cfg.seed)}
        try:
            run = RunDir(cfg.run_dir)
            members[cfg.run_name] = {TEST: test_predictions(run)}
            rows += [{**about, "measure": "single", **row} for row in report_rows(
                report_of(members[cfg.run_name][TEST], run_point(run), TEST, n_bootstrap),
                str(run.predictions_file))]
            if cfg.external_folders:
                report, where = external_evaluation(cfg, results, n_bootstrap)
                members[cfg.run_name].update({name: evaluation_predictions(where, name) for name, entry
                                              in report["datasets"].items() if entry.get("folder")})
                rows += [{**about, "measure": "single", **row} for row in report_rows(report, where)]
                if tta_views and any(fnmatch.fnmatchcase(cfg.run_name, pattern) for pattern in tta_runs):
                    report, where = tta_evaluation(cfg, results, tta_views, n_bootstrap)
                    rows += [{**about, "measure": "tta", **row} for row in report_rows(report, where)]
        except Exception as exc:  # noqa: BLE001 - a failure is a row, as every measure's failures are recorded
            log.warning("transfer: %s: %s", cfg.run_name, exc)
            rows.append({**about, "measure": "single", "status": f"failed: {' '.join(str(exc).split())}"})
    by_configuration: dict[str, list[Config]] = {}
    for cfg in finished:
        if cfg.run_name in members:
            by_configuration.setdefault(seeds.configuration(cfg.run_name), []).append(cfg)
    for name, group in by_configuration.items():
        if len(group) < 2:
            continue
        about = {"configuration": name, "protocol": protocol(group[0]), "measure": "ensemble",
                 "runs": "+".join(cfg.run_name for cfg in group), "seeds": "+".join(str(c.seed) for c in group)}
        try:
            rows += [{**about, **row} for row in ensemble_rows(group, members, n_bootstrap)]
        except Exception as exc:  # noqa: BLE001
            log.warning("transfer: ensemble of %s: %s", about["runs"], exc)
            rows.append({**about, "status": f"failed: {' '.join(str(exc).split())}"})
    kept = recorded_rows(results / TRANSFER_FILE, {cfg.run_name for cfg in configs},
                         {cfg.run_name for cfg in finished})
    if kept:
        log.info("transfer: %d rows kept from %s: their runs are not on this machine", len(kept),
                 results / TRANSFER_FILE)
    written = [[stamp, *(_text(r.get(c)) for c in COLUMNS)] for r in rows]
    written += [[r["evaluated_at"], *(r.get(c, "") for c in COLUMNS)] for r in kept]
    atomic_write_text(results / TRANSFER_FILE, csv_text(["evaluated_at", *COLUMNS], written))
    atomic_write_text(results / TABLE_FILE, markdown(rows + kept))
    return rows + kept


def recorded_rows(path: Path, configured: set[str], here: set[str]) -> list[dict]:
    """The rows of an earlier transfer.csv to keep: those whose runs are all still configurations of the study
    and none finished on this machine (their folders are gone: another machine or session trained them), as
    results.csv keeps a run's row when its folder is gone. A row of a run found here is computed again."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [row for row in rows if row.get("runs") and set(row["runs"].split("+")) <= configured
            and not set(row["runs"].split("+")) & here]


def _text(value) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None


# the table's columns: (dataset kind, operating point, metric)
TABLE_CELLS = (("external", "target_sensitivity", "sensitivity"), ("external", "high_sensitivity", "sensitivity"),
               ("external", "default_0.5", "sensitivity"), ("test", "target_sensitivity", "sensitivity"),
               ("test", "target_sensitivity", "specificity"), ("test", "high_sensitivity", "sensitivity"),
               ("test", "high_sensitivity", "specificity"))


def summary(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows: per configuration and measure, each cell the mean ± sd over seeds (single,
    tta) or the ensemble's value with its 95% interval, at the operating points of `TABLE_CELLS`."""
    ok = [row for row in rows if row.get("status") == "evaluated"]
    externals = sorted({row["dataset"] for row in ok if row["dataset"] != TEST})
    cells = [(dataset, point, metric) for kind, point, metric in TABLE_CELLS
             for dataset in (externals if kind == "external" else [TEST])]
    cells = [c for c in cells if any(r["dataset"] == c[0] and r["point"] == c[1] for r in ok)]
    header = ["configuration", "protocol", "measure",
              *[f"{'test split' if d == TEST else d}: {m} at {p}" for d, p, m in cells]]
    table = []
    order = list(dict.fromkeys((r["configuration"], r["protocol"]) for r in ok))  # each with its measures
    keys = sorted(dict.fromkeys((r["configuration"], r["protocol"], r["measure"]) for r in ok),
                  key=lambda k: (order.index(k[:2]), MEASURES.index(k[2]) if k[2] in MEASURES else len(MEASURES)))
    for key in keys:
        mine = [r for r in ok if (r["configuration"], r["protocol"], r["measure"]) == key]
        out = [f"`{key[0]}`", key[1], key[2]]
        for dataset, point, metric in cells:
            found = [r for r in mine if r["dataset"] == dataset and r["point"] == point]
            values = [v for v in (_number(r.get(metric)) for r in found) if v is not None]
            if not values:
                out.append("-")
            elif key[2] == "ensemble":
                ci = [_number(found[0].get(f"{metric}_lo")), _number(found[0].get(f"{metric}_hi"))]
                out.append(format_interval({"value": values[0], "ci95": ci if None not in ci else None}))
            else:
                out.append(seeds.format_summary(seeds.summary(values)))
        table.append(out)
    return header, table


ABOUT = ("Single and tta: mean ± standard deviation over seeds (min-max); ensemble: its value with a 95% interval "
         "over duplicate groups.")


def markdown(rows: list[dict]) -> str:
    header, table = summary(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    failed = sum(1 for row in rows if str(row.get("status", "")).startswith("failed"))
    lines += ["", f"{ABOUT} {len(rows)} rows in {TRANSFER_FILE}, {failed} failed."]
    return "\n".join(lines) + "\n"


def record_transfer_study(path: Path, data: str | None = None, n_bootstrap: int = DEFAULT_RESAMPLES
                          ) -> tuple[list[dict], Path]:
    """`record_transfer` of the study file at `path` (`data` overrides its data folder), into its `results`
    folder; its runs must name external folders (`external:`)."""
    spec, configs, results = study_file(path, data, "the transfer table")
    if not any(cfg.external_folders for cfg in configs):
        raise ConfigError(f"{path}: no run names an external folder (`external:` in its defaults or runs)")
    tta = spec.get("tta")
    if tta is not None and (not isinstance(tta, dict) or not tta.get("views") or set(tta) - {"views", "runs"}):
        raise ConfigError(f"{path}: `tta` takes `views` (a list of view names) and optionally `runs` (patterns of "
                          "run names)")
    return record_transfer(configs, results, tta, n_bootstrap), results
