"""The paper's Tables I-II from run directories (Markdown or LaTeX), the paper's numbers beside
ours, and paired differences from a baseline row over seeds.

python -m ebomlc_jax.analysis.tables RUN_DIR [RUN_DIR ...] [--format markdown|latex]
    [--with-paper] [--compare] [--paired-against ROW] [--metric M] [--out FILE]

Each RUN_DIR is searched recursively for run directories (those holding metrics.jsonl); runs are
grouped by their summary.json and config, never by directory names. One table per dataset: rows
are method[/variant] in the paper's order (CE floors first), columns the noise settings, cells
test_accuracy_at_best_clean over seeds (--metric: another value of summary.json, the final test
accuracy or a meta-model diagnostic, paper.METRICS), best and second best marked, an average
rank and the training time relative to EBOMLC. Runs of one method and variant whose configs
differ (an ablation's rho, a shorter protocol) are rows of their own, named by the differing
fields.
--with-paper adds the paper's rows; --compare adds, per CIFAR dataset, ours / paper (ours - paper)
per cell; --paired-against ROW (e.g. ce) adds the paired difference of every row from ROW over the
seeds both have, with a 95% Student-t interval.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import sys
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ebomlc_jax.analysis import runs as runs_lib
from ebomlc_jax.analysis.cells import Cell, Entry, entries, method_of, row_order
from ebomlc_jax.analysis.paper import (
    METRIC,
    METRICS,
    PAPER_COMPARABLE,
    PAPER_NAMES,
    PAPER_RESULTS,
    PAPER_SETTINGS,
    PAPER_TABLE_NAMES,
    REFERENCE_METHOD,
    Setting,
    setting_name,
    setting_order,
)


def _markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """GitHub markdown table lines; the first column left-aligned, the rest right-aligned."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":--"] + ["--:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return lines


FORMATS = ("markdown", "latex")
CONFIDENCE = 0.95


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
    timed = [r for r in table.rows if method_of(r) == REFERENCE_METHOD and _has_time(table, r)]
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
    """row - baseline of the table's metric (points) over the seeds both have."""

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


def results_table(
    table: ResultTable, fmt: str = "markdown", *, with_paper: bool = False, metric: str = METRIC
) -> str:
    """Tables I-II layout of one dataset: cells (the summaries' `metric`), best/second marks,
    Avg. Rank, training time."""
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
        method = method_of(row)
        last_of_method = i + 1 == len(table.rows) or method_of(table.rows[i + 1]) != method
        if method in paper and last_of_method:
            accuracies, time = paper[method]
            by_setting = dict(zip(PAPER_SETTINGS, accuracies, strict=True))
            name = f"{PAPER_NAMES[method]} (paper, {PAPER_TABLE_NAMES[table.dataset]})"
            body.append(
                [f.italic(f.esc(name))]
                + [f"{by_setting[s]:.2f}" if s in by_setting else f.dash for s in table.settings]
                + [f"{paper_ranks(table.dataset)[method]:.2f}", f.times(time)]
            )
    title = _title(table.dataset, METRICS[metric])
    return "\n".join(f.table(title, [f.esc(h) for h in header], body))


def results_notes(
    tables: Sequence[ResultTable], *, with_paper: bool = False, metric: str = METRIC
) -> list[str]:
    """What the cells, marks, ranks and times of results_table mean."""
    references = sorted({r for t in tables if (r := reference_row(t))})
    notes = [
        f"Cells: {metric} ({METRICS[metric]}), mean ± sample std (ddof=1) over n seeds.",
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
        if " (" in row or method_of(row) not in paper:
            continue
        accuracies, paper_time = paper[method_of(row)]
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


def paired_notes(baseline: str, metric: str = METRIC) -> list[str]:
    """What the paired_table cells mean."""
    return [
        f"Paired: row - {baseline} of {metric} (points) over the seeds both rows have at that "
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
    metric: str = METRIC,
) -> str:
    """Tables I-II of every dataset (cells: the summaries' `metric`, one of paper.METRICS), then
    (optionally) the paper comparison and the paired differences from a baseline row, then the
    runs left out. The paper's numbers go only beside a test accuracy (paper.PAPER_COMPARABLE)."""
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is not allowed; allowed values: {tuple(METRICS)}")
    if (with_paper or compare) and metric not in PAPER_COMPARABLE:
        raise ValueError(
            f"metric={metric!r}: the paper's numbers are test accuracies; with_paper and compare "
            f"allow only {PAPER_COMPARABLE}"
        )
    f = _formatter(fmt)
    items, left_out = entries(runs, metric)
    tables = build_tables(items)
    blocks = [r"% LaTeX tables: \usepackage{booktabs}"] if fmt == "latex" else []
    blocks += [results_table(t, fmt, with_paper=with_paper, metric=metric) for t in tables]
    blocks.append(
        "\n".join(f.notes(results_notes(tables, with_paper=with_paper, metric=metric)))
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
        blocks.append("\n".join(f.notes(paired_notes(paired_against, metric))))
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
    parser.add_argument(
        "--metric",
        choices=tuple(METRICS),
        default=METRIC,
        help="the summary.json value in the cells (default: the paper's protocol)",
    )
    parser.add_argument("--out", default=None, help="also write the output to this file")
    args = parser.parse_args(argv)
    if (args.with_paper or args.compare) and args.metric not in PAPER_COMPARABLE:
        parser.error(
            f"--metric={args.metric}: --with-paper and --compare need a test accuracy, one of "
            f"{', '.join(PAPER_COMPARABLE)}"
        )
    try:
        runs = runs_lib.find_runs(args.run_dirs)
    except ValueError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    try:
        text = report(
            runs,
            fmt=args.format,
            with_paper=args.with_paper,
            compare=args.compare,
            paired_against=args.paired_against,
            metric=args.metric,
        )
    except UnknownRow as e:
        parser.exit(2, f"{parser.prog}: error: --paired-against={args.paired_against}: {e}\n")
    print(text, end="")
    if args.out:
        pathlib.Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
