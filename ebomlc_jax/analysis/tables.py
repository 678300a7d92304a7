"""The paper's Tables I-II from run directories (Markdown or LaTeX), the paper's numbers beside
ours, and paired differences from a baseline row over seeds.

python -m ebomlc_jax.analysis.tables RUN_DIR [RUN_DIR ...] [--format markdown|latex]
    [--with-paper] [--compare] [--paired-against ROW] [--out FILE]

Each RUN_DIR is searched recursively for run directories (those holding metrics.jsonl); runs are
grouped by their summary.json and config, never by directory names. One table per dataset: rows
are method[/variant] in the paper's order (CE floors first), columns the noise settings, cells
test_accuracy_at_best_clean over seeds, best and second best marked, an average rank and the
training time relative to EBOMLC. Runs of one method and variant whose configs differ (an
ablation's rho, a shorter protocol) are rows of their own, named by the differing fields.
--with-paper adds the paper's rows; --compare adds, per CIFAR dataset, ours / paper (ours - paper)
per cell; --paired-against ROW (e.g. ce) adds the paired difference of every row from ROW over the
seeds both have, with a 95% Student-t interval.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pathlib
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ebomlc_jax.analysis import runs as runs_lib

# The paper's column order; settings it does not have are appended after these.
PAPER_SETTINGS = (
    ("uniform", 0.0),
    ("uniform", 0.2),
    ("uniform", 0.4),
    ("uniform", 0.6),
    ("uniform", 0.8),
    ("flip", 0.2),
    ("flip", 0.4),
)
# Row order: the floor first, then the paper's row order; unknown methods go last.
METHOD_ORDER = (
    "ce",
    "coteaching_plus",
    "dividemix",
    "glc",
    "l2rw",
    "mwnet",
    "pmwnet",
    "mlc",
    "mlc_d",
    "ebomlc",
)
REFERENCE_METHOD = "ebomlc"
METRIC = "test_accuracy_at_best_clean"

# Paper Tables I (CIFAR-10) and II (CIFAR-100): accuracies in PAPER_SETTINGS order, and
# training time relative to EBOMLC (T4 GPU).
PAPER_NAMES = {
    "coteaching_plus": "Co-teaching+",
    "dividemix": "DivideMix",
    "glc": "GLC",
    "l2rw": "L2RW",
    "mwnet": "MW-Net",
    "pmwnet": "PMW-Net",
    "mlc": "MLC",
    "mlc_d": "MLC-D",
    "ebomlc": "EBOMLC",
}
PAPER_TABLE_NAMES = {"cifar10": "Table I", "cifar100": "Table II"}
PAPER_RESULTS: dict[str, dict[str, tuple[tuple[float, ...], float]]] = {
    "cifar10": {
        "coteaching_plus": ((89.14, 85.79, 82.98, 56.37, 44.85, 77.56, 72.93), 0.51),
        "dividemix": ((91.32, 87.15, 85.16, 82.45, 77.69, 82.90, 78.38), 1.12),
        "glc": ((92.25, 89.31, 86.20, 74.27, 64.38, 90.97, 89.75), 0.33),
        "l2rw": ((85.16, 82.51, 78.01, 72.19, 55.81, 84.49, 80.86), 1.69),
        "mwnet": ((88.91, 80.61, 71.55, 64.02, 48.36, 87.11, 84.75), 1.89),
        "pmwnet": ((90.74, 88.94, 86.80, 81.56, 45.30, 88.79, 87.36), 1.95),
        "mlc": ((92.76, 89.01, 86.08, 82.08, 74.10, 89.39, 87.12), 2.28),
        "mlc_d": ((67.75, 66.84, 67.56, 67.14, 67.58, 66.18, 62.57), 2.32),
        "ebomlc": ((92.92, 92.18, 89.58, 83.51, 76.02, 90.74, 90.54), 1.00),
    },
    "cifar100": {
        "coteaching_plus": ((56.28, 50.49, 46.80, 34.96, 9.14, 49.15, 36.69), 0.51),
        "dividemix": ((66.34, 61.92, 56.14, 48.59, 11.18, 54.14, 48.12), 1.12),
        "glc": ((68.28, 63.48, 56.82, 46.80, 23.27, 66.64, 47.59), 0.33),
        "l2rw": ((58.84, 52.90, 45.19, 37.71, 18.96, 53.57, 48.59), 1.69),
        "mwnet": ((63.91, 55.07, 52.55, 45.17, 18.87, 58.99, 45.41), 1.89),
        "pmwnet": ((66.98, 63.52, 56.12, 47.12, 20.53, 56.12, 47.73), 1.95),
        "mlc": ((65.03, 48.73, 39.06, 25.26, 15.58, 58.98, 57.46), 2.28),
        "mlc_d": ((17.02, 13.26, 15.98, 14.91, 12.06, 15.47, 15.58), 2.32),
        "ebomlc": ((67.13, 62.92, 58.15, 50.04, 35.41, 64.86, 58.11), 1.00),
    },
}

Setting = tuple[str, float]


@dataclasses.dataclass(frozen=True)
class Cell:
    """Seed statistics of one (method, setting): accuracies in percent."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        """Number of seeds."""
        return len(self.values)

    @property
    def mean(self) -> float:
        """Mean over seeds."""
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (ddof=1); 0 for a single seed."""
        return float(np.std(self.values, ddof=1)) if self.n > 1 else 0.0

    def format(self) -> str:
        """'mean ± std (n=k)', or 'mean (n=1)' for a single seed."""
        if self.n == 1:
            return f"{self.mean:.2f} (n=1)"
        return f"{self.mean:.2f} ± {self.std:.2f} (n={self.n})"


def setting_of(summary: Mapping) -> Setting:
    """(noise kind, rate) of a run; every 0% setting is the paper's uniform-0% column."""
    rate = round(float(summary["noise_rate"]), 6)
    return ("uniform", 0.0) if rate == 0.0 else (str(summary["noise_kind"]), rate)


def setting_name(setting: Setting) -> str:
    """'uniform-40%' etc., as in the paper's column headers."""
    return f"{setting[0]}-{setting[1] * 100:g}%"


def row_name(summary: Mapping) -> str:
    """'method/variant', or 'method' when the method has no variant."""
    variant = summary.get("variant")
    return f"{summary['method']}/{variant}" if variant else str(summary["method"])


def _row_key(name: str) -> tuple[int, str]:
    """Sort key: METHOD_ORDER position of the method part, then the name."""
    method = name.split("/")[0]
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return rank, name


def setting_order(setting: Setting) -> tuple[int, str, float]:
    """Sort key: paper columns first in their order, then the rest by kind and rate."""
    if setting in PAPER_SETTINGS:
        return PAPER_SETTINGS.index(setting), "", 0.0
    return len(PAPER_SETTINGS), setting[0], setting[1]


def collect(
    runs: Sequence[runs_lib.Run],
) -> tuple[dict[str, dict[str, dict[Setting, Cell]]], dict[str, dict[str, float]], list[str]]:
    """dataset -> row -> setting -> Cell; dataset -> row -> mean wall time; skipped-run notes."""
    values: dict[str, dict[str, dict[Setting, list[float]]]] = {}
    times: dict[str, dict[str, list[float]]] = {}
    skipped = []
    for run in runs:
        summary = run.summary
        if summary is None:
            skipped.append(f"{run.path} (unfinished: no summary.json)")
            continue
        if summary.get(METRIC) is None:
            skipped.append(f"{run.path} (summary.json has no {METRIC})")
            continue
        dataset, row = str(summary.get("dataset", "?")), row_name(summary)
        cells = values.setdefault(dataset, {}).setdefault(row, {})
        cells.setdefault(setting_of(summary), []).append(100.0 * float(summary[METRIC]))
        if summary.get("wall_time_s") is not None:
            times.setdefault(dataset, {}).setdefault(row, []).append(float(summary["wall_time_s"]))
    cells = {
        d: {r: {s: Cell(tuple(v)) for s, v in by_s.items()} for r, by_s in rows.items()}
        for d, rows in values.items()
    }
    mean_times = {d: {r: float(np.mean(t)) for r, t in rows.items()} for d, rows in times.items()}
    return cells, mean_times, skipped


def _reference_row(rows: Sequence[str], times: Mapping[str, float]) -> str | None:
    """The row whose wall time is 1.00x: ebomlc/paper if present, else the first ebomlc row."""
    candidates = [r for r in rows if r.split("/")[0] == REFERENCE_METHOD and r in times]
    preferred = [r for r in candidates if r == f"{REFERENCE_METHOD}/paper"]
    return (preferred or candidates or [None])[0]


def _markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """GitHub markdown table lines; the first column left-aligned, the rest right-aligned."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":--"] + ["--:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return lines


def paper_table(runs: Sequence[runs_lib.Run], *, with_paper: bool = False) -> str:
    """Plain Tables I-II layout in markdown (no marks, ranks or config-split rows): see report()."""
    cells, times, skipped = collect(runs)
    out: list[str] = []
    for dataset in sorted(cells):
        rows = sorted(cells[dataset], key=_row_key)
        settings = sorted(
            set(PAPER_SETTINGS) | {s for r in rows for s in cells[dataset][r]}, key=setting_order
        )
        row_times = times.get(dataset, {})
        reference = _reference_row(rows, row_times)
        time_header = f"Training Time (× {reference})" if reference else "Training Time (s)"
        body = []
        for row in rows:
            line = [row] + [
                cells[dataset][row][s].format() if s in cells[dataset][row] else "–"
                for s in settings
            ]
            if row not in row_times:
                line.append("–")
            elif reference:
                line.append(f"{row_times[row] / row_times[reference]:.2f}×")
            else:
                line.append(f"{row_times[row]:.0f}")
            body.append(line)
            paper = PAPER_RESULTS.get(dataset, {})
            method = row.split("/")[0]
            # One reference row per method, after its last variant.
            next_method = rows[rows.index(row) + 1].split("/")[0] if row != rows[-1] else None
            if with_paper and method in paper and next_method != method:
                accuracies, time = paper[method]
                by_setting = dict(zip(PAPER_SETTINGS, accuracies, strict=True))
                name = f"*{PAPER_NAMES[method]} (paper, {PAPER_TABLE_NAMES[dataset]})*"
                body.append(
                    [name]
                    + [f"{by_setting[s]:.2f}" if s in by_setting else "–" for s in settings]
                    + [f"{time:.2f}×"]
                )
        title = f"### {dataset}"
        if dataset in PAPER_TABLE_NAMES:
            title += f" (paper {PAPER_TABLE_NAMES[dataset]})"
        out += [title, ""]
        out += _markdown(["Method"] + [setting_name(s) for s in settings] + [time_header], body)
        out.append("")
    if not cells:
        out += ["No finished runs.", ""]
    out.append(
        f"Cells: {METRIC} in %, mean ± sample std (ddof=1) over n seeds. "
        "Training time: mean wall_time_s of the row's runs."
        + (" Paper rows: Tables I-II, mean of 3 seeds, T4 GPU." if with_paper else "")
    )
    if skipped:
        out += ["", "Skipped runs:"] + [f"- {s}" for s in skipped]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# Runs below a root, grouped by summary and config.

# Config fields that do not change what a run computes (train.SETUP_ONLY and more: how it is fed,
# parallelised, checkpointed and evaluated); a field is ignored with everything below it.
IGNORED_FIELDS = (
    "seed",
    "num_parallel_seeds",
    "noise.kind",
    "noise.rate",
    "data.dataset",
    "data.download",
    "data.data_dir",
    "data.input",
    "data.scan_epochs",
    "parallel",
    "checkpoint",
    "eval",
    "log_every_steps",
    "figures",
    "resume_with_changed_config",
)
# Variant order inside a method (None: the method's default, no variant in its name).
VARIANT_ORDER = {"ce": (None, "noisy", "clean"), "ebomlc": ("paper", "reference")}
FORMATS = ("markdown", "latex")
CONFIDENCE = 0.95
_ABSENT = "<absent>"


def _path_key(path: pathlib.Path) -> tuple[tuple[Any, ...], ...]:
    """Sort key putting seed2 before seed10 at every level of a path."""
    return tuple(
        tuple(int(t) if i % 2 else t for i, t in enumerate(re.split(r"(\d+)", part)))
        for part in path.parts
    )


def find_runs_under(paths: Iterable[str | pathlib.Path]) -> list[runs_lib.Run]:
    """Every run directory (holding metrics.jsonl) at or below each path, loaded once each."""
    found: list[pathlib.Path] = []
    seen: set[pathlib.Path] = set()
    for path in map(pathlib.Path, paths):
        if not path.is_dir():
            raise ValueError(f"{path}: no such run directory")
        dirs = sorted(
            (pathlib.Path(d) for d, _, files in os.walk(path) if runs_lib.METRICS in files),
            key=_path_key,
        )
        if not dirs:
            raise ValueError(f"{path}: no {runs_lib.METRICS} in it or below it")
        for d in dirs:
            if d.resolve() not in seen:
                seen.add(d.resolve())
                found.append(d)
    return [runs_lib.load_run(d) for d in found]


def _hashable(value: Any) -> Any:
    """A config value usable as part of a dict key (lists become tuples)."""
    return tuple(_hashable(v) for v in value) if isinstance(value, list | tuple) else value


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as {"dotted.field": value}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = _hashable(value)
    return out


def is_ignored(field: str) -> bool:
    """Whether a dotted field is, or lies below, one of IGNORED_FIELDS."""
    return any(field == f or field.startswith(f + ".") for f in IGNORED_FIELDS)


def experiment_fields(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The run's config as dotted fields that define the experiment: without IGNORED_FIELDS (the
    seed, the setting, setup), method.name and the blocks of the other methods."""
    own = f"method.{summary.get('method')}."
    return {
        field: value
        for field, value in flatten(summary.get("config") or {}).items()
        if not is_ignored(field) and (not field.startswith("method.") or field.startswith(own))
    }


def value_text(value: Any) -> str:
    """A config value as it appears in a row or figure name."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def field_label(field: str, value: Any) -> str:
    """'rho=0.4' for a method's own field, 'num_epochs=12' for the rest."""
    name = field.rsplit(".", 1)[-1] if field.startswith("method.") else field
    return f"{name}={value_text(value)}"


def differences(fields: Mapping[str, Any], other: Mapping[str, Any]) -> list[str]:
    """Labels of the fields whose value in `fields` differs from `other`'s, in field order."""
    return [
        field_label(f, fields.get(f, _ABSENT))
        for f in sorted(set(fields) | set(other))
        if fields.get(f, _ABSENT) != other.get(f, _ABSENT)
    ]


def _method_of(row: str) -> str:
    """The method part of a row name ('ebomlc' of 'ebomlc/paper (rho=0.4)')."""
    return re.split(r"[/ ]", row, maxsplit=1)[0]


def row_order(row: str) -> tuple[Any, ...]:
    """Sort key: METHOD_ORDER, then VARIANT_ORDER, the main config before its config-split rows."""
    base, _, suffix = row.partition(" (")
    method, _, variant = base.partition("/")
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    order = VARIANT_ORDER.get(method, (None,))
    v = order.index(variant or None) if (variant or None) in order else len(order)
    return rank, method, v, variant, bool(suffix), row


@dataclasses.dataclass(frozen=True)
class Entry:
    """One finished run as the tables see it; `accuracy` is test_accuracy_at_best_clean in %."""

    path: pathlib.Path
    dataset: str
    row: str
    setting: Setting
    seed: int | None
    accuracy: float
    wall_time_s: float | None

    @property
    def main(self) -> bool:
        """Whether the run has its method/variant's main config (no field suffix)."""
        return " (" not in self.row


def entries(runs: Sequence[runs_lib.Run]) -> tuple[list[Entry], list[str]]:
    """The finished runs as Entry, and notes on the runs left out (unfinished, duplicates).

    Runs of one dataset and method/variant with different experiment_fields are separate rows:
    the config covering the most settings (then the most runs, then the first found) keeps the
    plain name; the others are named by the fields where they differ from it. A second run of
    one row, setting and seed (a rerun) is left out: a seed counts once.
    """
    usable, notes = [], []
    for run in runs:
        summary = run.summary
        if summary is None:
            notes.append(f"{run.path} (unfinished: no summary.json)")
        elif summary.get(METRIC) is None:
            notes.append(f"{run.path} (summary.json has no {METRIC})")
        else:
            usable.append((run, summary, experiment_fields(summary)))
    # (dataset, method/variant) -> config key -> [settings, run count, first index, fields]
    configs: dict[tuple[str, str], dict[tuple, list[Any]]] = {}
    for i, (_, summary, fields) in enumerate(usable):
        group = configs.setdefault((str(summary.get("dataset", "?")), row_name(summary)), {})
        stats = group.setdefault(tuple(sorted(fields.items())), [set(), 0, i, fields])
        stats[0].add(setting_of(summary))
        stats[1] += 1
    main = {
        group: min(stats.values(), key=lambda s: (-len(s[0]), -s[1], s[2]))[3]
        for group, stats in configs.items()
    }
    out: list[Entry] = []
    seen: dict[tuple[Any, ...], pathlib.Path] = {}
    for run, summary, fields in usable:
        dataset, base = str(summary.get("dataset", "?")), row_name(summary)
        diffs = differences(fields, main[dataset, base])
        row = f"{base} ({', '.join(diffs)})" if diffs else base
        seed = summary.get("seed")
        key = (dataset, row, setting_of(summary), seed)
        if seed is not None and key in seen:
            notes.append(f"{run.path} (same row, setting and seed as {seen[key]}: counted once)")
            continue
        seen[key] = run.path
        wall = summary.get("wall_time_s")
        out.append(
            Entry(
                path=run.path,
                dataset=dataset,
                row=row,
                setting=setting_of(summary),
                seed=seed,
                accuracy=100.0 * float(summary[METRIC]),
                wall_time_s=float(wall) if wall is not None else None,
            )
        )
    return out, notes


# ---------------------------------------------------------------------------------------------
# Tables I-II: cells, marks, ranks, time.


@dataclasses.dataclass(frozen=True)
class ResultTable:
    """One dataset's rows x settings: seed statistics and mean wall time per cell."""

    dataset: str
    rows: tuple[str, ...]
    settings: tuple[Setting, ...]
    cells: Mapping[tuple[str, Setting], Cell]
    wall: Mapping[tuple[str, Setting], float]

    def column(self, setting: Setting) -> dict[str, float]:
        """row -> mean of the cell at the shown precision (0.01 points), for rows that have it."""
        return {
            row: float(f"{self.cells[row, setting].mean:.2f}")
            for row in self.rows
            if (row, setting) in self.cells
        }


def build_tables(items: Sequence[Entry]) -> list[ResultTable]:
    """One ResultTable per dataset (sorted); CIFAR tables keep all of the paper's columns."""
    tables = []
    for dataset in sorted({e.dataset for e in items}):
        mine = [e for e in items if e.dataset == dataset]
        values: dict[tuple[str, Setting], list[float]] = {}
        walls: dict[tuple[str, Setting], list[float]] = {}
        for e in mine:
            values.setdefault((e.row, e.setting), []).append(e.accuracy)
            if e.wall_time_s is not None:
                walls.setdefault((e.row, e.setting), []).append(e.wall_time_s)
        settings = {e.setting for e in mine}
        if dataset in PAPER_RESULTS:
            settings |= set(PAPER_SETTINGS)
        tables.append(
            ResultTable(
                dataset=dataset,
                rows=tuple(sorted({e.row for e in mine}, key=row_order)),
                settings=tuple(sorted(settings, key=setting_order)),
                cells={k: Cell(tuple(v)) for k, v in values.items()},
                wall={k: float(np.mean(v)) for k, v in walls.items()},
            )
        )
    return tables


def column_ranks(values: Mapping[str, float]) -> dict[str, float]:
    """Rank of each row in one column, 1 = highest; tied rows share the mean of their ranks."""
    return {
        row: 1
        + sum(w > v for w in values.values())
        + (sum(w == v for w in values.values()) - 1) / 2
        for row, v in values.items()
    }


def column_marks(values: Mapping[str, float]) -> dict[str, str]:
    """'best' on the rows with the highest value, 'second' on those with the next distinct one;
    no marks in a column of one row."""
    if len(values) < 2:
        return {}
    distinct = sorted(set(values.values()), reverse=True)
    marks = {row: "best" for row, v in values.items() if v == distinct[0]}
    if len(distinct) > 1:
        marks |= {row: "second" for row, v in values.items() if v == distinct[1]}
    return marks


def average_ranks(columns: Iterable[Mapping[str, float]]) -> dict[str, tuple[float, int]]:
    """row -> (mean of its column_ranks over the columns it has, how many columns those are)."""
    ranks: dict[str, list[float]] = {}
    for column in columns:
        for row, rank in column_ranks(column).items():
            ranks.setdefault(row, []).append(rank)
    return {row: (float(np.mean(r)), len(r)) for row, r in ranks.items()}


def paper_ranks(dataset: str) -> dict[str, float]:
    """The paper's Avg. Rank column recomputed from PAPER_RESULTS (ranks among its 9 methods)."""
    paper = PAPER_RESULTS[dataset]
    columns = [{m: acc[i] for m, (acc, _) in paper.items()} for i in range(len(PAPER_SETTINGS))]
    return {m: rank for m, (rank, _) in average_ranks(columns).items()}


def reference_row(table: ResultTable) -> str | None:
    """The row times are relative to: ebomlc/paper, else the first ebomlc row with a time."""
    timed = [r for r in table.rows if _method_of(r) == REFERENCE_METHOD and _has_time(table, r)]
    preferred = [r for r in timed if r == f"{REFERENCE_METHOD}/paper"]
    main = [r for r in timed if " (" not in r]
    return (preferred or main or timed or [None])[0]


def _has_time(table: ResultTable, row: str) -> bool:
    """Whether any run of the row reported wall_time_s."""
    return any((row, s) in table.wall for s in table.settings)


def time_ratios(table: ResultTable, reference: str) -> dict[str, float]:
    """row -> mean wall time over the settings it shares with `reference`, divided by the
    reference's mean over the same settings (per-setting means first); rows sharing none: absent."""
    out = {}
    for row in table.rows:
        common = [
            s for s in table.settings if (row, s) in table.wall and (reference, s) in table.wall
        ]
        if common:
            mine = np.mean([table.wall[row, s] for s in common])
            out[row] = float(mine / np.mean([table.wall[reference, s] for s in common]))
    return out


def mean_times(table: ResultTable) -> dict[str, float]:
    """row -> mean over its settings of the per-setting mean wall time, in seconds."""
    out = {}
    for row in table.rows:
        times = [table.wall[row, s] for s in table.settings if (row, s) in table.wall]
        if times:
            out[row] = float(np.mean(times))
    return out


# ---------------------------------------------------------------------------------------------
# Paired differences from a baseline row.


class UnknownRow(ValueError):
    """A baseline row that has no finished runs."""


@dataclasses.dataclass(frozen=True)
class Paired:
    """row - baseline of test_accuracy_at_best_clean (points) over the seeds both have."""

    row: str
    setting: Setting
    seeds: tuple[int, ...]
    differences: tuple[float, ...]

    @property
    def n(self) -> int:
        """Number of seeds both rows have."""
        return len(self.differences)

    @property
    def mean(self) -> float:
        """Mean paired difference."""
        return float(np.mean(self.differences))

    def interval(self, level: float = CONFIDENCE) -> tuple[float, float] | None:
        """Student-t interval of the mean difference, mean ± t(n-1) s/sqrt(n); None for n < 2."""
        if self.n < 2:
            return None
        from scipy import stats  # scipy comes with scikit-learn; only this needs it

        half = stats.t.ppf(0.5 + level / 2, self.n - 1) * np.std(self.differences, ddof=1)
        half /= math.sqrt(self.n)
        return self.mean - half, self.mean + half


def paired_differences(items: Sequence[Entry], baseline: str) -> dict[str, list[Paired]]:
    """dataset -> Paired of every other row at every setting where it shares a seed with the
    baseline row; ValueError naming the rows present if the baseline has no runs."""
    by_cell: dict[tuple[str, str, Setting], dict[int, float]] = {}
    for e in items:
        if e.seed is not None:
            by_cell.setdefault((e.dataset, e.row, e.setting), {})[e.seed] = e.accuracy
    datasets = sorted({d for d, r, _ in by_cell if r == baseline})
    if not datasets:
        rows = ", ".join(sorted({e.row for e in items}, key=row_order)) or "none"
        raise UnknownRow(f"no finished runs of row {baseline!r}; rows present: {rows}")
    out: dict[str, list[Paired]] = {}
    for dataset in datasets:
        pairs = []
        rows = sorted({r for d, r, _ in by_cell if d == dataset and r != baseline}, key=row_order)
        for row in rows:
            for setting in sorted({s for d, _, s in by_cell if d == dataset}, key=setting_order):
                base = by_cell.get((dataset, baseline, setting), {})
                mine = by_cell.get((dataset, row, setting), {})
                seeds = tuple(sorted(set(base) & set(mine)))
                if seeds:
                    diffs = tuple(mine[s] - base[s] for s in seeds)
                    pairs.append(Paired(row, setting, seeds, diffs))
        out[dataset] = pairs
    return out


# ---------------------------------------------------------------------------------------------
# Rendering: Markdown and LaTeX.


class _Markdown:
    """GitHub Markdown cells and tables."""

    dash = "–"

    def esc(self, text: str) -> str:
        return text.replace("|", "\\|")

    def mark(self, text: str, mark: str | None) -> str:
        return {"best": f"**{text}**", "second": f"<u>{text}</u>"}.get(mark or "", text)

    def pm(self, mean: float, std: float) -> str:
        return f"{mean:.2f} ± {std:.2f}"

    def n(self, n: int) -> str:
        return f" (n={n})"

    def times(self, x: float) -> str:
        return f"{x:.2f}×"

    def italic(self, text: str) -> str:
        return f"*{text}*"

    def table(self, title: str, header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
        return [f"### {title}", "", *_markdown(header, body)]

    def notes(self, notes: Sequence[str], heading: str = "") -> list[str]:
        return ([heading] if heading else []) + [f"- {note}" for note in notes]


class _Latex:
    """LaTeX tables (booktabs) whose cells are escaped text."""

    dash = "--"
    _ESCAPES = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
        "±": r"$\pm$",
        "×": r"$\times$",
        "–": "--",
        "Δ": r"$\Delta$",
    }

    def esc(self, text: str) -> str:
        return "".join(self._ESCAPES.get(c, c) for c in text)

    def mark(self, text: str, mark: str | None) -> str:
        return {"best": rf"\textbf{{{text}}}", "second": rf"\underline{{{text}}}"}.get(
            mark or "", text
        )

    def pm(self, mean: float, std: float) -> str:
        return rf"{mean:.2f} $\pm$ {std:.2f}"

    def n(self, n: int) -> str:
        return rf" {{\scriptsize (n={n})}}"

    def times(self, x: float) -> str:
        return rf"{x:.2f}$\times$"

    def italic(self, text: str) -> str:
        return rf"\textit{{{text}}}"

    def table(self, title: str, header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
        return [
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{{self.esc(title)}}}",
            r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}",
            r"\toprule",
            " & ".join(header) + r" \\",
            r"\midrule",
            *(" & ".join(row) + r" \\" for row in body),
            r"\bottomrule",
            r"\end{tabular}",
            r"\end{table}",
        ]

    def notes(self, notes: Sequence[str], heading: str = "") -> list[str]:
        return ([f"% {heading}"] if heading else []) + [f"% - {note}" for note in notes]


def _formatter(fmt: str) -> _Markdown | _Latex:
    """The renderer of a --format value."""
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r} is not allowed; allowed values: {', '.join(FORMATS)}")
    return _Markdown() if fmt == "markdown" else _Latex()


def _cell_text(f: _Markdown | _Latex, cell: Cell, mark: str | None) -> str:
    """'mean ± std (n=k)' (one seed: 'mean (n=1)'), the number part marked."""
    number = f"{cell.mean:.2f}" if cell.n == 1 else f.pm(cell.mean, cell.std)
    return f.mark(number, mark) + f.n(cell.n)


def _title(dataset: str, what: str) -> str:
    """'cifar10 (paper Table I): what' / 'digits: what'."""
    paper = f" (paper {PAPER_TABLE_NAMES[dataset]})" if dataset in PAPER_TABLE_NAMES else ""
    return f"{dataset}{paper}: {what}"


def results_table(table: ResultTable, fmt: str = "markdown", *, with_paper: bool = False) -> str:
    """Tables I-II layout of one dataset: cells, best/second marks, Avg. Rank, training time."""
    f = _formatter(fmt)
    columns = {s: table.column(s) for s in table.settings}
    marks = {s: column_marks(c) for s, c in columns.items()}
    ranks = average_ranks(c for c in columns.values() if c)
    ranked = sum(1 for c in columns.values() if c)
    reference = reference_row(table)
    times = time_ratios(table, reference) if reference else mean_times(table)
    paper = PAPER_RESULTS.get(table.dataset, {}) if with_paper else {}
    time_header = f"Training Time (× {reference})" if reference else "Training Time (s)"
    header = ["Method", *(setting_name(s) for s in table.settings), "Avg. Rank", time_header]
    body = []
    for i, row in enumerate(table.rows):
        line = [f.esc(row)]
        for s in table.settings:
            cell = table.cells.get((row, s))
            line.append(f.dash if cell is None else _cell_text(f, cell, marks[s].get(row)))
        rank, k = ranks.get(row, (math.nan, 0))
        line.append(f.dash if not k else f"{rank:.2f}" + (f" ({k}/{ranked})" if k < ranked else ""))
        if row not in times:
            line.append(f.dash)
        else:
            line.append(f.times(times[row]) if reference else f"{times[row]:.0f} s")
        body.append(line)
        method = _method_of(row)
        last_of_method = i + 1 == len(table.rows) or _method_of(table.rows[i + 1]) != method
        if method in paper and last_of_method:
            accuracies, time = paper[method]
            by_setting = dict(zip(PAPER_SETTINGS, accuracies, strict=True))
            name = f"{PAPER_NAMES[method]} (paper, {PAPER_TABLE_NAMES[table.dataset]})"
            body.append(
                [f.italic(f.esc(name))]
                + [f"{by_setting[s]:.2f}" if s in by_setting else f.dash for s in table.settings]
                + [f"{paper_ranks(table.dataset)[method]:.2f}", f.times(time)]
            )
    title = _title(table.dataset, "test accuracy (%) at the best clean-set epoch")
    return "\n".join(f.table(title, [f.esc(h) for h in header], body))


def results_notes(tables: Sequence[ResultTable], *, with_paper: bool = False) -> list[str]:
    """What the cells, marks, ranks and times of results_table mean."""
    references = sorted({r for t in tables if (r := reference_row(t))})
    notes = [
        f"Cells: {METRIC} (test accuracy at the epoch of best clean-set accuracy) in %, "
        "mean ± sample std (ddof=1) over n seeds.",
        "Best / second best of each column in bold / underlined (Markdown: <u>), among this "
        "table's rows (paper rows excluded), comparing means at the shown 0.01 precision; tied "
        "rows all get the mark, and the second best is the next distinct value.",
        "Avg. Rank: each column ranks the rows that have it (1 = highest; tied rows share the "
        "mean of their ranks), averaged over the columns a row has; a missing cell is skipped, "
        "not ranked last, and (k/m) says the row was ranked in k of the m columns with results.",
        "Training time: the row's mean wall_time_s divided by the reference row's, both over the "
        "settings the two share (per-setting means first)"
        + (f"; reference row: {', '.join(references)}." if references else "; no EBOMLC row: s."),
    ]
    if any(" (" in r for t in tables for r in t.rows):
        notes.append(
            "A row 'm (field=value, ...)' holds runs of m whose config differs in those fields "
            "from m's main config (the one that covers the most settings)."
        )
    if with_paper:
        notes.append(
            "Paper rows: Tables I-II as printed (mean of 3 seeds; Avg. Rank recomputed among "
            "the paper's 9 methods, which reproduces its column; time on a T4 GPU)."
        )
    return notes


def comparison_table(table: ResultTable, fmt: str = "markdown") -> str | None:
    """Ours / paper (ours - paper) per cell for the main rows of the paper's methods; None for a
    dataset the paper does not have."""
    paper = PAPER_RESULTS.get(table.dataset)
    if paper is None:
        return None
    f = _formatter(fmt)
    reference = reference_row(table)
    ratios = time_ratios(table, reference) if reference else {}
    header = ["Method", *(setting_name(s) for s in PAPER_SETTINGS), "Mean Δ", "Time ×"]
    body = []
    for row in table.rows:
        if " (" in row or _method_of(row) not in paper:
            continue
        accuracies, paper_time = paper[_method_of(row)]
        line, diffs = [f.esc(row)], []
        for setting, theirs in zip(PAPER_SETTINGS, accuracies, strict=True):
            cell = table.cells.get((row, setting))
            if cell is None:
                line.append(f"{f.dash} / {theirs:.2f}")
                continue
            ours = float(f"{cell.mean:.2f}")  # the difference of the numbers shown
            diffs.append(ours - theirs)
            line.append(f"{ours:.2f} / {theirs:.2f} ({diffs[-1]:+.2f})")
        k = len(diffs)
        line.append(f"{np.mean(diffs):+.2f} ({k}/{len(PAPER_SETTINGS)})" if k else f.dash)
        ours_time = f.times(ratios[row]) if row in ratios else f.dash
        line.append(f"{ours_time} / {f.times(paper_time)}")
        body.append(line)
    if not body:
        return None
    title = _title(table.dataset, "ours / paper (ours - paper), test accuracy (%)")
    return "\n".join(f.table(title, [f.esc(h) for h in header], body))


COMPARISON_NOTES = (
    "Comparison: our mean over seeds (as in the table above) / the paper's number (ours - paper) "
    "per cell, in points; Mean Δ: mean of the differences over the k of 7 settings we have. "
    "Time: ours / the paper's, each relative to its EBOMLC row (ours: the reference row above). "
    "Only the main config of each method (no field suffix) is compared.",
)


def paired_table(
    dataset: str, pairs: Sequence[Paired], baseline: str, fmt: str = "markdown"
) -> str:
    """Rows x settings of mean paired difference from `baseline`, its interval and n."""
    f = _formatter(fmt)
    settings = sorted({p.setting for p in pairs}, key=setting_order)
    rows = sorted({p.row for p in pairs}, key=row_order)
    by_key = {(p.row, p.setting): p for p in pairs}
    body = []
    for row in rows:
        line = [f.esc(row)]
        for setting in settings:
            p = by_key.get((row, setting))
            if p is None:
                line.append(f.dash)
                continue
            interval = p.interval()
            text = f"{p.mean:+.2f}"
            if interval is not None:
                text += f" [{interval[0]:+.2f}, {interval[1]:+.2f}]"
            line.append(text + f.n(p.n))
        body.append(line)
    title = _title(dataset, f"paired difference from {baseline} (points)")
    header = ["Method", *(setting_name(s) for s in settings)]
    return "\n".join(f.table(title, [f.esc(h) for h in header], body or [[f.dash]]))


def paired_notes(baseline: str) -> list[str]:
    """What the paired_table cells mean."""
    return [
        f"Paired: row - {baseline} of {METRIC} (points) over the seeds both rows have at that "
        "setting (one seed is one noise draw and one clean/noisy split, shared by both runs): "
        f"mean [{CONFIDENCE:.0%} Student-t interval, mean ± t(0.975, n-1) s / sqrt(n), s the "
        "sample std of the differences] (n = paired seeds); with n < 2 no interval is given.",
    ]


def report(
    runs: Sequence[runs_lib.Run],
    *,
    fmt: str = "markdown",
    with_paper: bool = False,
    compare: bool = False,
    paired_against: str | None = None,
) -> str:
    """Tables I-II of every dataset, then (optionally) the paper comparison and the paired
    differences from a baseline row, then the runs left out."""
    f = _formatter(fmt)
    items, left_out = entries(runs)
    tables = build_tables(items)
    blocks = [r"% LaTeX tables: \usepackage{booktabs}"] if fmt == "latex" else []
    blocks += [results_table(t, fmt, with_paper=with_paper) for t in tables]
    blocks.append(
        "\n".join(f.notes(results_notes(tables, with_paper=with_paper)))
        if tables
        else "\n".join(f.notes(["No finished runs."]))
    )
    if compare:
        compared = [c for t in tables if (c := comparison_table(t, fmt)) is not None]
        notes = list(COMPARISON_NOTES) if compared else []
        without = [t.dataset for t in tables if t.dataset not in PAPER_RESULTS]
        if without:
            notes.append(f"No paper numbers for {', '.join(without)} (the paper has CIFAR only).")
        blocks += [*compared, "\n".join(f.notes(notes))]
    if paired_against is not None:
        for dataset, pairs in paired_differences(items, paired_against).items():
            blocks.append(paired_table(dataset, pairs, paired_against, fmt))
        blocks.append("\n".join(f.notes(paired_notes(paired_against))))
    if left_out:
        blocks.append("\n".join(f.notes(left_out, "Left out:")))
    return "\n\n".join(b for b in blocks if b) + "\n"


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line: 'prog: error: message'."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: prints the tables and, with --out, writes them to a file."""
    parser = OneLineParser(
        prog="python -m ebomlc_jax.analysis.tables", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="run directories or roots (recursive)"
    )
    parser.add_argument("--format", choices=FORMATS, default="markdown", help="table markup")
    parser.add_argument("--with-paper", action="store_true", help="add the paper's rows")
    parser.add_argument(
        "--compare", action="store_true", help="add ours / paper (ours - paper) per cell"
    )
    parser.add_argument(
        "--paired-against",
        metavar="ROW",
        default=None,
        help="add the paired difference of every row from this row, e.g. ce",
    )
    parser.add_argument("--out", default=None, help="also write the output to this file")
    args = parser.parse_args(argv)
    try:
        runs = find_runs_under(args.run_dirs)
    except ValueError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    try:
        text = report(
            runs,
            fmt=args.format,
            with_paper=args.with_paper,
            compare=args.compare,
            paired_against=args.paired_against,
        )
    except UnknownRow as e:
        parser.exit(2, f"{parser.prog}: error: --paired-against={args.paired_against}: {e}\n")
    print(text, end="")
    if args.out:
        pathlib.Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
