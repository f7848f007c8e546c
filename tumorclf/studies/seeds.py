"""Results across seeds: one training run is not a result, so runs that differ only in their seed are read as
one configuration, reported as the mean with its spread (standard deviation, min-max) beside each run's own
interval, and two configurations are said to differ only when their seed ranges do not overlap.

A run's bootstrap interval resamples its test images: it says how much the number would move with other test
images, not with another training run. The spread across seeds is the second uncertainty, and on this
project's data it can be the larger one.
"""

from __future__ import annotations

import math
import re

from tumorclf.runs.config import ConfigError, coerce

SEED = re.compile(r"_seed\d+(-split\d+)?")  # a run trained with another --split-seed than its seed: `_seed43-split42`


def seed_list(seeds, where: str) -> list[int | None]:
    """The seeds to train each configuration with (a study's `seeds:`, `train --seed`): [None] when none is
    given (then the configuration's own `seed` holds); an empty list or a repeated seed is an error."""
    if seeds is None:
        return [None]
    values = seeds if isinstance(seeds, list) else [seeds]
    if not values:
        raise ConfigError(f"{where}: `seeds` is an empty list")
    out = [coerce("seeds", value, int) for value in values]
    if len(set(out)) != len(out):
        raise ConfigError(f"{where}: `seeds` repeats a seed: {out}")
    return out


def configuration(run_name: str) -> str:
    """A run's name without its seed: the configuration that runs of several seeds share."""
    return SEED.sub("", run_name)


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def summary(values: list[float]) -> dict:
    """n, mean, sample standard deviation (None for one value), min and max."""
    n = len(values)
    mean = sum(values) / n if n else None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": mean, "sd": sd, "min": min(values) if n else None, "max": max(values) if n else None}


def across_seeds(rows: list[dict], metrics: tuple[str, ...]) -> list[dict]:
    """One row per configuration of the finished `rows` (results.csv rows): its runs, and for each metric the
    `summary` over seeds and each run's value with its interval (`metric_lo`, `metric_hi` where present)."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if str(row.get("status", "")).startswith("finished") and _number(row.get(metrics[0])) is not None:
            groups.setdefault(configuration(str(row["run_name"])), []).append(row)
    out = []
    for name, runs in groups.items():
        entry = {"configuration": name, "protocol": runs[0].get("protocol"), "runs": [r["run_name"] for r in runs]}
        for metric in metrics:
            values = [v for v in (_number(r.get(metric)) for r in runs) if v is not None]
            entry[metric] = summary(values)
            entry[f"{metric}_runs"] = [(_number(r.get(metric)), _number(r.get(f"{metric}_lo")),
                                        _number(r.get(f"{metric}_hi"))) for r in runs]
        out.append(entry)
    return out


def compare(a: dict, b: dict, metric: str) -> dict:
    """b minus a on `metric` (entries of `across_seeds`): the difference of the means, and whether it exceeds
    the seed-to-seed spread (both have at least two seeds and their min-max ranges do not overlap)."""
    x, y = a[metric], b[metric]
    difference = None if x["mean"] is None or y["mean"] is None else y["mean"] - x["mean"]
    separated = (x["n"] >= 2 and y["n"] >= 2 and (y["min"] > x["max"] or x["min"] > y["max"]))
    return {"metric": metric, "difference": difference, "exceeds_seed_spread": bool(separated),
            "seeds": (x["n"], y["n"])}


def format_summary(s: dict, digits: int = 3) -> str:
    """`0.958 ± 0.012 (0.944-0.969, 3 seeds)`, or the value alone for one seed."""
    if s["mean"] is None:
        return "-"
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f} (1 seed)"
    return (f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f}, "
            f"{s['n']} seeds)")


SEED_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc")


def markdown(rows: list[dict], metrics: tuple[str, ...] = SEED_METRICS) -> list[str]:
    """The "Across seeds" table of the configurations run with two seeds or more (none: no lines)."""
    entries = [e for e in across_seeds(rows, metrics) if e[metrics[0]]["n"] >= 2]
    if not entries:
        return []
    about = ("Each cell: mean ± standard deviation over the seeds (min-max); a run's own 95% interval (test images "
             "resampled) is in the rows above. Two configurations differ only where their seed ranges do not overlap.")
    lines = ["### Across seeds", "", about, "",
             "| configuration | protocol | " + " | ".join(m.replace("_", " ") for m in metrics) + " |",
             "|---" * (len(metrics) + 2) + "|"]
    for e in entries:
        lines.append(f"| {e['configuration']} | {e['protocol']} | "
                     + " | ".join(format_summary(e[m]) for m in metrics) + " |")
    lines.append("")
    first: dict[str, dict] = {}
    for e in entries:  # each configuration against the first of its protocol
        base = first.setdefault(str(e["protocol"]), e)
        if base is e:
            continue
        said = []
        for m in metrics:
            c = compare(base, e, m)
            if c["difference"] is not None:
                verdict = "beyond" if c["exceeds_seed_spread"] else "within"
                said.append(f"{m.replace('_', ' ')} {c['difference']:+.3f} ({verdict} the seed spread)")
        lines.append(f"- {e['configuration']} against {base['configuration']}: {'; '.join(said)}")
    return lines + [""]


def csv_rows(rows: list[dict], metrics: tuple[str, ...] = SEED_METRICS) -> tuple[list[str], list[list]]:
    """seeds.csv: per configuration and metric, n, mean, sd, min, max and the runs it covers."""
    header = ["configuration", "protocol", "metric", "n", "mean", "sd", "min", "max", "runs"]
    body = [[e["configuration"], e["protocol"], m, e[m]["n"], e[m]["mean"], e[m]["sd"], e[m]["min"], e[m]["max"],
             " ".join(e["runs"])] for e in across_seeds(rows, metrics) for m in metrics]
    return header, body
