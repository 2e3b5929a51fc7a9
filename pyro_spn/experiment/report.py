"""The protocol's results: the grid-search selection, ``results.csv`` and the Markdown ``summary.md``."""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path
from typing import Any

from .. import atomic
from ..data import IMAGE_DATASETS
from .config import ExperimentConfig
from .methods import METHODS

COLUMNS = ("dataset", "method", "lr", "batch_size", "seed", "split", "error", "nll", "bpd", "fid", "kid", "kid_std",
           "features", "ll_gap", "mmd2", "mode_coverage", "reconstruction", "accuracy", "num_parameters", "epochs",
           "train_seconds")
# Per kind of data set: (column, header) of the summary tables.
IMAGE_TABLE = (("nll", "NLL (nats)"), ("bpd", "bits/dim"), ("fid", "FID"), ("kid", "KID"),
               ("reconstruction", "reconstruction BCE"), ("accuracy", "classifier on samples"))
PLANAR_TABLE = (("nll", "NLL (nats)"), ("ll_gap", "gap to true LL"), ("mmd2", "MMD²"),
                ("mode_coverage", "mode coverage"))


def criterion(method: str, dataset: str) -> str:
    """The result column the grid search minimizes for ``method`` on ``dataset``."""
    selection = METHODS[method].selection
    if selection == "samples":
        return "fid" if dataset in IMAGE_DATASETS else "mmd2"
    return selection


def _value(row: dict[str, Any], column: str) -> float | None:
    value = row.get(column)
    if value is None or isinstance(value, str) or not math.isfinite(float(value)):
        return None
    return float(value)


def select(rows: list[dict[str, Any]], config: ExperimentConfig) -> dict[tuple[str, str], tuple[float, int]]:
    """The selected ``(lr, batch_size)`` of every (data set, method): the grid setting whose validation
    criterion (:func:`criterion`) is lowest; pairs all of whose settings failed are left out."""
    selected: dict[tuple[str, str], tuple[float, int]] = {}
    for dataset, method in config.pairs():
        column = criterion(method.name, dataset)
        scored = [(value, row["lr"], row["batch_size"]) for row in rows
                  if row["dataset"] == dataset and row["method"] == method.name and row["split"] == "val"
                  and (value := _value(row, column)) is not None]
        if scored:
            _, lr, batch_size = min(scored)
            selected[(dataset, method.name)] = (lr, batch_size)
    return selected


def write_results(root: Path, rows: list[dict[str, Any]], selected: dict[tuple[str, str], tuple[float, int]],
                  config: ExperimentConfig) -> None:
    """Writes ``results.csv`` (every row) and ``summary.md`` (selection, test tables, grid)."""
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: (r["split"], r["dataset"], r["method"], r["lr"], r["batch_size"], r["seed"])):
        writer.writerow({column: row.get(column) for column in COLUMNS})
    atomic.write_text(root / "results.csv", table.getvalue())
    atomic.write_text(root / "summary.md", summary(rows, selected, config))


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.4g}"
    return f"{mean:.4g} ± {statistics.pstdev(values):.2g}"


def summary(rows: list[dict[str, Any]], selected: dict[tuple[str, str], tuple[float, int]],
            config: ExperimentConfig) -> str:
    """The Markdown report: the selected settings, a test table per data set (mean ± std over seeds), the grid."""
    features = sorted({row["features"] for row in rows if row.get("features")})
    lines = ["# Experiment results", "",
             f"Grid: learning rates {', '.join(f'{lr:g}' for lr in config.lrs)} × batch sizes "
             f"{', '.join(map(str, config.batch_sizes))} on the validation split (seed 0); the selected setting "
             f"over {config.seeds} seed(s) on the test split; {config.epochs} epochs per run. "
             f"FID / KID features: {', '.join(features) if features else 'none (no image data set)'}. "
             "Lower is better except for mode coverage and classifier accuracy.", "",
             "## Selected settings", "", "| data set | method | lr | batch size | criterion (validation) | value |",
             "|---|---|---:|---:|---|---:|"]
    for (dataset, method), (lr, batch_size) in selected.items():
        column = criterion(method, dataset)
        value = next(_value(r, column) for r in rows if r["split"] == "val" and r["dataset"] == dataset
                     and r["method"] == method and r["lr"] == lr and r["batch_size"] == batch_size)
        lines.append(f"| {dataset} | {method} | {lr:g} | {batch_size} | {column} | {value:.4g} |")
    failed = [f"{d}/{m.name}" for d, m in config.pairs() if (d, m.name) not in selected]
    if failed:
        lines += ["", f"Every grid setting failed for: {', '.join(failed)}."]
    for dataset in config.datasets:
        lines += ["", *_test_table(rows, dataset, config)]
    lines += ["", "## Grid search (validation split, seed 0)", "",
              "| data set | method | lr | batch size | criterion | value | error |", "|---|---|---:|---:|---|---:|---|"]
    for row in sorted((r for r in rows if r["split"] == "val"),
                      key=lambda r: (r["dataset"], r["method"], r["lr"], r["batch_size"])):
        column = criterion(row["method"], row["dataset"])
        value = _value(row, column)
        lines.append(f"| {row['dataset']} | {row['method']} | {row['lr']:g} | {row['batch_size']} | {column} | "
                     f"{'—' if value is None else f'{value:.4g}'} | {row.get('error') or ''} |")
    return "\n".join(lines) + "\n"


def _test_table(rows: list[dict[str, Any]], dataset: str, config: ExperimentConfig) -> list[str]:
    table = IMAGE_TABLE if dataset in IMAGE_DATASETS else PLANAR_TABLE
    test = [r for r in rows if r["split"] == "test" and r["dataset"] == dataset]
    seeds = config.seeds
    lines = [f"## {dataset}: test split, mean ± std over {seeds} seed(s)", "",
             "| method | " + " | ".join(header for _, header in table) + " | parameters | seconds per run | failed |",
             "|---|" + "---:|" * (len(table) + 3)]
    for method in dict.fromkeys(r["method"] for r in test):
        mine = [r for r in test if r["method"] == method]
        ok = [r for r in mine if not r.get("error")]
        cells = [_mean_std([v for r in ok if (v := _value(r, column)) is not None]) for column, _ in table]
        parameters = _mean_std([v for r in ok if (v := _value(r, "num_parameters")) is not None])
        seconds = _mean_std([v for r in ok if (v := _value(r, "train_seconds")) is not None])
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {parameters} | {seconds} | "
                     f"{len(mine) - len(ok)} of {len(mine)} |")
    return lines
