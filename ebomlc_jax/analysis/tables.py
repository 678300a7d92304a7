"""The paper's Tables I-II from run directories, as GitHub markdown.

python -m ebomlc_jax.analysis.tables RUN_DIR [RUN_DIR ...] [--with-paper] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
from collections.abc import Mapping, Sequence

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


def _setting_key(setting: Setting) -> tuple[int, str, float]:
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
    """Tables I-II layout in markdown: one table per dataset, rows = methods, cells = mean ± std."""
    cells, times, skipped = collect(runs)
    out: list[str] = []
    for dataset in sorted(cells):
        rows = sorted(cells[dataset], key=_row_key)
        settings = sorted(
            set(PAPER_SETTINGS) | {s for r in rows for s in cells[dataset][r]}, key=_setting_key
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


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: prints the table and, with --out, writes it to a file."""
    parser = argparse.ArgumentParser(
        prog="python -m ebomlc_jax.analysis.tables", description=__doc__.splitlines()[0]
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories")
    parser.add_argument("--with-paper", action="store_true", help="add the paper's numbers")
    parser.add_argument("--out", default=None, help="also write the markdown to this file")
    args = parser.parse_args(argv)
    try:
        table = paper_table(runs_lib.find_runs(args.run_dirs), with_paper=args.with_paper)
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    print(table, end="")
    if args.out:
        pathlib.Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
